//! Stop under hostile conditions: a dead log reader, a signal in the first milliseconds, a
//! provider that hangs, repeats itself, or mints tokens it answers for wrongly. The built
//! binary against the strict development provider on 127.0.0.1, with real signals.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

fn set(name: &str, scopes: &str, path: &Path, extra: &str) -> String {
    format!(
        "  - name: {name}\n    provider: dev\n    scopes: [{scopes}]\n    file: {{ path: {}{extra} }}\n",
        path.display()
    )
}

/// `tokenkeeper ARGS` with stdout and stderr on `out` (no log file to read back).
fn spawn_with_output(args: &[&str], out: std::os::fd::OwnedFd) -> Daemon {
    let child = Command::new(BIN)
        .args(args)
        .env("TK_TEST_APP_ID", tokenkeeper::devprovider::DEV_APP_ID)
        .env("TK_TEST_APP_TOKEN", tokenkeeper::devprovider::DEV_APP_TOKEN)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap();
    Daemon {
        child,
        log: "/nonexistent/tokenkeeper-test.log".into(),
    }
}

/// The daemon's log goes to `out`, which fails every write; it must still keep and revoke
/// its tokens, and stop with 0.
async fn survives_a_failing_log(out: std::os::fd::OwnedFd) {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.token");
    let b = dir.path().join("b.token");
    let cfg = write_config(
        dir.path(),
        &config(
            &p,
            dir.path(),
            "shutdown_timeout: 10s",
            &(set("a", "api", &a, "") + &set("b", "orders", &b, "")),
        ),
    );
    let mut d = spawn_with_output(&["run", "-c", cfg.to_str().unwrap()], out);
    let up = wait_until(PATIENCE, || {
        (a.exists() && b.exists()) || d.child.try_wait().unwrap().is_some()
    })
    .await;
    assert!(up, "no token files");
    assert_eq!(
        d.child.try_wait().unwrap(),
        None,
        "the daemon died of its log before the stop"
    );
    // Rotation logs a line per set and token; the daemon must live through it.
    let before = p.issued_tokens().len();
    d.signal(Signal::SIGUSR1);
    assert!(
        wait_until(PATIENCE, || p.issued_tokens().len() >= before + 2).await,
        "no rotation"
    );
    d.signal(Signal::SIGTERM);
    let status = d.wait(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(p.live_tokens().is_empty(), "{:?}", p.live_tokens());
    assert!(!a.exists() && !b.exists(), "token files left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_reader_that_died_neither_kills_the_daemon_nor_stops_revocation() {
    let (read, write) = nix::unistd::pipe().unwrap();
    // The `| tee` ended: every write to the pipe is EPIPE (Rust ignores SIGPIPE).
    drop(read);
    survives_a_failing_log(write).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_log_disk_neither_kills_the_daemon_nor_stops_revocation() {
    // Every write to /dev/full is ENOSPC.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    survives_a_failing_log(full.into()).await;
}
