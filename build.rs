//! Names the commit the binary is built from, for `tokenkeeper --version`: an operator with a
//! fleet of VMs needs to tell which build each one runs. Outside a git checkout (a source
//! tarball) the version says so instead of failing the build.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn main() {
    // The commit checked out. Uncommitted edits are not flagged: cargo reruns this script
    // only when HEAD moves, so such a flag would go stale with the first edit after it.
    let commit =
        git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "commit unknown".into());
    println!("cargo:rustc-env=TOKENKEEPER_COMMIT={commit}");
    // Rebuild the version when HEAD moves: HEAD itself (a checkout) and the branch it points
    // at (a commit). Paths from git, so a worktree's separate git folder works too.
    if let Some(path) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={path}");
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(path) = git(&["rev-parse", "--git-path", &branch])
        && Path::new(&path).exists()
    {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
