//! `tokenkeeper --version` names the release and the commit the binary was built from, so an
//! operator can tell which build each VM runs.

use std::process::Command;

#[test]
fn version_names_the_release_and_the_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenkeeper"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let want = format!("tokenkeeper {} (", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&want), "{text}");
    // Built from a git checkout (as the tests are): the commit is HEAD's, abbreviated.
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(head) => assert_eq!(text.trim(), format!("{want}{head})"), "{text}"),
        None => assert_eq!(text.trim(), format!("{want}commit unknown)"), "{text}"),
    }
}
