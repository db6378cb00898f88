//! A restart in place: SIGHUP after the binary on disk was replaced execs the new one with
//! the same PID, which takes every token over; nothing is issued, revoked or missing.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use tokenkeeper::devprovider::DevProvider;

/// Superseded tokens are revoked this long after their replacement: long enough that the
/// handover (milliseconds) is over before they are due, so a revocation seen during it is the
/// handover's doing, not the schedule's.
const TOP: &str = "defaults:\n  revoke_superseded_after: 8s";

/// Held while this test binary writes an executable and while it starts a process. The tests
/// run on threads of one process: a child forked by one thread inherits, until its exec, the
/// descriptor another thread is writing an executable through, and an exec of that file then
/// fails with "Text file busy" (ETXTBSY), ours or the daemon's own of its new binary.
static EXEC_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exec_lock() -> std::sync::MutexGuard<'static, ()> {
    EXEC_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Copy the executable `from` to `to`, with no other thread of this process forking meanwhile.
fn copy_executable(from: &Path, to: &Path) {
    let _held = exec_lock();
    std::fs::copy(from, to).unwrap();
}

/// The daemon run from `exe` (a copy of the real binary, or a stand-in), its output in a file.
fn spawn_from(exe: &Path, dir: &Path, cfg: &Path) -> Daemon {
    // Through the exec: `spawn` returns once the child has exec'd, so it holds nothing then.
    let _held = exec_lock();
    let log = dir.join("daemon.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(exe)
        .args(["run", "-c", cfg.to_str().unwrap()])
        .env("TK_TEST_APP_ID", tokenkeeper::devprovider::DEV_APP_ID)
        .env("TK_TEST_APP_TOKEN", tokenkeeper::devprovider::DEV_APP_TOKEN)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    Daemon { child, log }
}

/// Put `from` at `to` as a new file (a new inode), the way a package manager does: written
/// beside it, then renamed over it.
fn replace_binary(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    copy_executable(from, &tmp);
    std::fs::rename(&tmp, to).unwrap();
}

fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    let _held = exec_lock();
    std::fs::write(&tmp, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn exe_of(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

/// Reads each file every millisecond until stopped, as a legacy application that reads its
/// token per request does; records every time one is missing or empty, and every token read.
struct Reader {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(Vec<String>, HashSet<String>)>>,
}

impl Reader {
    fn start(files: Vec<PathBuf>) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut gaps = Vec::new();
            let mut seen = HashSet::new();
            while !flag.load(Ordering::SeqCst) {
                for f in &files {
                    match std::fs::read_to_string(f) {
                        Ok(t) if !t.trim().is_empty() => {
                            seen.insert(t.trim().to_string());
                        }
                        Ok(_) => gaps.push(format!("{} empty", f.display())),
                        Err(e) => gaps.push(format!("{}: {e}", f.display())),
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (gaps, seen)
        });
        Reader {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (Vec<String>, HashSet<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

struct Setup {
    p: DevProvider,
    dir: tempfile::TempDir,
    exe: PathBuf,
    cfg: PathBuf,
    files: Vec<PathBuf>,
}

async fn setup() -> Setup {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let exe = d.join("tokenkeeper");
    copy_executable(Path::new(BIN), &exe);
    let files = vec![d.join("a.token"), d.join("b.token")];
    let sets = set("a", "api", &files[0], "") + &set("b", "orders", &files[1], "");
    let cfg = write_config(d, &config(&p, d, TOP, &sets));
    Setup {
        p,
        dir,
        exe,
        cfg,
        files,
    }
}

async fn wait_ready(d: &Daemon, times: usize) {
    let needle = "ready: every set has a valid token";
    let ok = wait_until(PATIENCE, || d.output().matches(needle).count() >= times).await;
    assert!(ok, "not ready {times} times:\n{}", d.output());
}

/// Every token the journal in `state` holds, by value.
fn journaled(state: &Path) -> HashSet<String> {
    tokenkeeper::journal::load(state)
        .unwrap()
        .into_iter()
        .map(|e| e.token.expose().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_after_the_binary_changed_carries_every_token_across() {
    let s = setup().await;
    let mut d = spawn_from(&s.exe, s.dir.path(), &s.cfg);
    wait_ready(&d, 1).await;
    let first: Vec<String> = s.files.iter().map(|f| read(f).unwrap()).collect();
    // A rotation, so each set also holds a superseded token awaiting its revocation.
    d.signal(Signal::SIGUSR1);
    let rotated = wait_until(PATIENCE, || {
        s.files
            .iter()
            .zip(&first)
            .all(|(f, old)| read(f).is_some_and(|t| &t != old))
    })
    .await;
    assert!(rotated, "{}", d.output());
    let current: Vec<String> = s.files.iter().map(|f| read(f).unwrap()).collect();
    let (issued, revoked) = (s.p.issued_tokens(), s.p.revoked_tokens());
    assert_eq!(issued.len(), 4);
    assert!(revoked.is_empty(), "{revoked:?}");

    let reader = Reader::start(s.files.clone());
    let pid = d.child.id();
    let old_exe = exe_of(pid);
    replace_binary(Path::new(BIN), &s.exe);
    let new_ino = std::fs::metadata(&s.exe).unwrap().ino();
    d.signal(Signal::SIGHUP);
    d.wait_for_log("taking over from the previous binary").await;
    wait_ready(&d, 2).await;
    // The state directory's lock never left the process.
    assert!(d.output().contains("lock_kept=true"), "{}", d.output());

    // The same process, running the new binary.
    assert!(d.child.try_wait().unwrap().is_none(), "{}", d.output());
    assert_eq!(exe_of(pid), old_exe, "not \" (deleted)\": {}", d.output());
    assert_eq!(
        std::fs::metadata(format!("/proc/{pid}/exe")).unwrap().ino(),
        new_ino
    );
    // Nothing issued or revoked by the handover; the files hold the same tokens.
    assert_eq!(s.p.issued_tokens(), issued, "{}", d.output());
    assert_eq!(s.p.revoked_tokens(), revoked, "{}", d.output());
    let now: Vec<String> = s.files.iter().map(|f| read(f).unwrap()).collect();
    assert_eq!(now, current);
    assert!(current.iter().all(|t| s.p.is_live(t)));
    // The superseded tokens are still revoked, on their schedule, by the new binary.
    let revoked_on_time = wait_until(PATIENCE, || {
        let r = s.p.revoked_tokens();
        first.iter().all(|t| r.contains(t))
    })
    .await;
    assert!(revoked_on_time, "{}", d.output());
    assert!(current.iter().all(|t| s.p.is_live(t)));

    let (gaps, seen) = reader.finish();
    assert!(gaps.is_empty(), "the reader found: {gaps:?}");
    assert!(seen.iter().all(|t| current.contains(t)), "{seen:?}");

    stop_clean(&mut d).await;
    assert!(s.p.live_tokens().is_empty(), "{}", d.output());
    assert!(s.files.iter().all(|f| !f.exists()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_successor_that_cannot_start_loses_nothing() {
    let s = setup().await;
    let state = s.dir.path().join("state");
    let mut d = spawn_from(&s.exe, s.dir.path(), &s.cfg);
    wait_ready(&d, 1).await;
    let tokens: Vec<String> = s.files.iter().map(|f| read(f).unwrap()).collect();
    let issued = s.p.issued_tokens();
    let pid = d.child.id();

    // A new binary that fails its check: the old one keeps serving, nothing changes.
    write_script(&s.exe, "echo 'cannot load the config' >&2; exit 1");
    d.signal(Signal::SIGHUP);
    d.wait_for_log("the new binary cannot take over").await;
    d.wait_for_log("cannot load the config").await;
    // The config is reloaded by the old binary as usual.
    d.wait_for_log("reloaded the configuration").await;
    assert!(d.child.try_wait().unwrap().is_none(), "{}", d.output());
    let exe = exe_of(pid);
    assert!(exe.to_string_lossy().ends_with(" (deleted)"), "{exe:?}");
    assert_eq!(s.p.issued_tokens(), issued);
    assert!(s.p.revoked_tokens().is_empty(), "{}", d.output());
    let still: Vec<String> = s.files.iter().map(|f| read(f).unwrap()).collect();
    assert_eq!(still, tokens);

    // A new binary that passes the check but dies once it runs: every live token is in the
    // journal and in its file, and the next start (systemd's restart) takes them over.
    write_script(
        &s.exe,
        &format!("if [ \"$1\" = check ]; then exec {BIN} \"$@\"; fi\necho 'crashed' >&2; exit 1"),
    );
    d.signal(Signal::SIGHUP);
    let status = d.wait(PATIENCE).await;
    assert_eq!(status.code(), Some(1), "{}", d.output());
    assert!(d.output().contains("crashed"), "{}", d.output());
    let live: HashSet<String> = s.p.live_tokens().into_iter().collect();
    assert_eq!(live, tokens.iter().cloned().collect(), "{}", d.output());
    assert!(live.is_subset(&journaled(&state)));
    let still: Vec<String> = s.files.iter().map(|f| read(f).unwrap()).collect();
    assert_eq!(still, tokens);

    replace_binary(Path::new(BIN), &s.exe);
    let mut again = spawn_from(&s.exe, s.dir.path(), &s.cfg);
    wait_ready(&again, 1).await;
    assert_eq!(s.p.issued_tokens(), issued, "{}", again.output());
    stop_clean(&mut again).await;
    assert!(s.p.live_tokens().is_empty(), "{}", again.output());
    assert!(journaled(&state).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_the_handover_revokes_everything() {
    let s = setup().await;
    let state = s.dir.path().join("state");
    let mut d = spawn_from(&s.exe, s.dir.path(), &s.cfg);
    wait_ready(&d, 1).await;
    // A rotation whose answer takes a while: the handover waits for it, and the stop comes
    // meanwhile, before the exec.
    s.p.set_issue_delay(Duration::from_secs(3));
    d.signal(Signal::SIGUSR1);
    let asked = wait_until(PATIENCE, || s.p.requests().token >= 4).await;
    assert!(asked, "{}", d.output());
    replace_binary(Path::new(BIN), &s.exe);
    d.signal(Signal::SIGHUP);
    d.wait_for_log("handing every token over to the new binary")
        .await;
    d.signal(Signal::SIGTERM);
    let status = d.wait(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{}", d.output());
    // The new binary took over, then stopped as asked: every token revoked, even the one
    // the rotation brought during the handover.
    assert!(
        d.output().contains("taking over from the previous binary")
            && d.output().contains("lock_kept=true"),
        "{}",
        d.output()
    );
    assert!(s.p.live_tokens().is_empty(), "{}", d.output());
    assert!(journaled(&state).is_empty());
    assert!(s.files.iter().all(|f| !f.exists()));
}
