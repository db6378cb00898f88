//! The man pages and shell completions under `packaging/`, which the Debian package installs,
//! are exactly what the binary generates from its own clap definitions: a new option or
//! subcommand cannot ship without them. `packaging/generate.sh` regenerates them.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tokenkeeper(args: &[&str]) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenkeeper"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn same(shipped: &Path, generated: &[u8]) -> Result<(), String> {
    match std::fs::read(shipped) {
        Ok(bytes) if bytes == generated => Ok(()),
        Ok(_) => Err(format!("{} is out of date", shipped.display())),
        Err(e) => Err(format!("{}: {e}", shipped.display())),
    }
}

#[test]
fn shipped_man_pages_and_completions_are_what_the_binary_generates() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_tokenkeeper"))
        .args(["manpage", "--dir"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let mut problems = Vec::new();
    let shipped_man = root().join("packaging/man");
    let mut generated: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    generated.sort();
    let mut shipped: Vec<String> = std::fs::read_dir(&shipped_man)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    shipped.sort();
    if generated != shipped {
        problems.push(format!(
            "man pages: shipped {shipped:?}, generated {generated:?}"
        ));
    }
    for name in &generated {
        let bytes = std::fs::read(dir.path().join(name)).unwrap();
        if let Err(e) = same(&shipped_man.join(name), &bytes) {
            problems.push(e);
        }
    }
    for (shell, file) in [
        ("bash", "tokenkeeper.bash"),
        ("zsh", "_tokenkeeper"),
        ("fish", "tokenkeeper.fish"),
    ] {
        let bytes = tokenkeeper(&["completions", shell]);
        if let Err(e) = same(&root().join("packaging/completions").join(file), &bytes) {
            problems.push(e);
        }
    }
    assert!(
        problems.is_empty(),
        "{}\nrun packaging/generate.sh and commit the result",
        problems.join("\n")
    );
}

#[test]
fn the_man_page_lists_every_command_and_completion_knows_them() {
    // roff escapes each hyphen (`dev\-provider`).
    let page = String::from_utf8(tokenkeeper(&["manpage"]))
        .unwrap()
        .replace('\\', "");
    let bash = String::from_utf8(tokenkeeper(&["completions", "bash"])).unwrap();
    for command in [
        "run",
        "check",
        "revoke",
        "once",
        "exec",
        "status",
        "demo",
        "dev-provider",
    ] {
        assert!(page.contains(command), "man page lacks {command}");
        assert!(bash.contains(command), "bash completion lacks {command}");
    }
}
