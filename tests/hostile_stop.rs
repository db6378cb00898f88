//! Stop under hostile conditions: a dead log reader, closed standard streams, a signal in the
//! first milliseconds, a provider that hangs, repeats itself, or mints tokens it answers for
//! wrongly. The built binary against the strict development provider on 127.0.0.1, with real
//! signals.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

/// `tokenkeeper ARGS` with the test provider's keys and none of the environment that would
/// change what it does (log level, systemd's sockets and credentials).
fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("TK_TEST_APP_ID", tokenkeeper::devprovider::DEV_APP_ID)
        .env("TK_TEST_APP_TOKEN", tokenkeeper::devprovider::DEV_APP_TOKEN)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY");
    cmd
}

/// `tokenkeeper ARGS` with stdout and stderr on `out` (no log file to read back).
fn spawn_with_output(args: &[&str], out: std::os::fd::OwnedFd) -> Daemon {
    let child = command(args)
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

/// Started with its standard streams closed (`2>&-` in a script, a careless supervisor): were
/// the first files the daemon opens to take descriptors 0 to 2, its log lines would land in a
/// token file or the journal. Rust's start-up code opens `/dev/null` on them before `main`;
/// this pins that the daemon keeps that guarantee (no entry point or start-up step of its own
/// that closes them), and that it keeps, writes and revokes its tokens as usual.
#[tokio::test(flavor = "multi_thread")]
async fn closed_standard_streams_never_carry_the_log_into_a_token_file_or_the_journal() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.token");
    let cfg = write_config(
        dir.path(),
        &config(&p, dir.path(), "log_level: debug", &set("a", "api", &a, "")),
    );
    let mut cmd = command(&["run", "-c", cfg.to_str().unwrap()]);
    // SAFETY: only close(2), which is async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            for fd in 0..3 {
                libc::close(fd);
            }
            Ok(())
        });
    }
    let mut d = Daemon {
        child: cmd.spawn().unwrap(),
        log: "/nonexistent/tokenkeeper-test.log".into(),
    };
    assert!(wait_until(PATIENCE, || a.exists()).await, "no token file");
    // A rotation logs at every level; each line must go nowhere, not into a file.
    d.signal(Signal::SIGUSR1);
    assert!(
        wait_until(PATIENCE, || p.issued_tokens().len() >= 2
            && read(&a).is_some_and(|t| t.trim() == p.issued_tokens()[1]))
        .await,
        "the rotated token is not (alone) in its file: {:?}",
        read(&a)
    );
    let journal_is_json = || {
        let journal = read(&dir.path().join("state/journal.log")).unwrap();
        for line in journal.lines() {
            assert!(
                serde_json::from_str::<serde_json::Value>(line).is_ok(),
                "not a journal line: {line:?}"
            );
        }
    };
    journal_is_json();
    d.signal(Signal::SIGTERM);
    let status = d.wait(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    // The stop logs the most, and writes its removals last.
    journal_is_json();
    assert!(p.live_tokens().is_empty(), "{:?}", p.live_tokens());
    assert!(!a.exists(), "token file left behind");
}

/// SIGTERM while the config is being read. A secret that is a FIFO no longer holds the load
/// open (it is refused at once, see `tests/hostile_files.rs`), so the load is made long
/// instead, and the signal is sent the moment the kernel shows the early handler in place
/// (`SigCgt` in `/proc/PID/status`), milliseconds into a load that takes far longer. The
/// daemon is never killed by it, and exits having issued nothing.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_the_config_load_never_kills() {
    /// Enough sets that checking them takes about 1.7 s in a debug build (and a few hundred
    /// ms in a release one): far longer than the poll between the handler and the signal.
    const SETS: usize = 30_000;
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let sets: String = (0..SETS)
        .map(|i| {
            set(
                &format!("s{i}"),
                "api",
                &dir.path().join(format!("t{i}.token")),
                "",
            )
        })
        .collect();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, config(&p, dir.path(), "", &sets)).unwrap();
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[],
    );
    let status_file = format!("/proc/{}/status", d.child.id());
    let catches_sigterm = || {
        std::fs::read_to_string(&status_file)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
    };
    let start = Instant::now();
    while !catches_sigterm() {
        assert!(
            start.elapsed() < PATIENCE,
            "the daemon never caught SIGTERM:\n{}",
            d.output()
        );
        assert_eq!(d.child.try_wait().unwrap(), None, "{}", d.output());
        std::thread::sleep(Duration::from_millis(1));
    }
    d.signal(Signal::SIGTERM);
    let status = d.wait(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", d.output());
    assert!(
        d.output().contains("stop signal received before the start"),
        "{}",
        d.output()
    );
    assert!(p.issued_tokens().is_empty(), "{}", d.output());
    assert!(!dir.path().join("t0.token").exists());
}

/// Start `tokenkeeper ARGS` with SIGTERM blocked (a blocked signal stays pending across
/// exec), and send it SIGTERM at once: the signal waits for the daemon instead of racing the
/// dynamic loader, so it lands before the daemon's first line of its own, every time.
fn spawn_and_sigterm(args: &[&str]) -> std::process::Child {
    let mut cmd = command(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: sigprocmask(2) is async-signal-safe and touches only the child's mask.
    unsafe {
        cmd.pre_exec(|| {
            let mut term = SigSet::empty();
            term.add(Signal::SIGTERM);
            pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&term), None)?;
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    child
}

/// Wait up to `limit` for `child`; its status and what it wrote to stderr.
async fn wait_child(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<(std::process::ExitStatus, String)> {
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    Some((status, err))
}

/// SIGTERM sent the moment the process exists, before it runs a line of its own (see
/// [`spawn_and_sigterm`]): it must be taken as a stop, never die of it, and never be lost.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_in_the_first_milliseconds_never_kills_and_is_never_lost() {
    /// Enough starts to catch a window of a few hundred microseconds.
    const STARTS: usize = 50;
    /// Far beyond a start that stops at once (tens of milliseconds), far below a hang.
    const LIMIT: Duration = Duration::from_secs(10);
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = write_config(
        dir.path(),
        &config(&p, dir.path(), "", &set("s", "api", &f, "")),
    );
    for i in 0..STARTS {
        let mut child = spawn_and_sigterm(&["run", "-c", cfg.to_str().unwrap()]);
        let Some((status, err)) = wait_child(&mut child, LIMIT).await else {
            panic!("start {i}: a SIGTERM sent at once was never acted on");
        };
        assert_eq!(status.code(), Some(0), "start {i}: {status:?}\n{err}");
    }
    assert!(p.issued_tokens().is_empty());
    assert!(!f.exists());
}

/// The same for `exec`: stopped before the command starts, it runs nothing, leaves nothing
/// live, and says so with 128 + SIGTERM, never by dying of it.
#[tokio::test(flavor = "multi_thread")]
async fn exec_stopped_in_its_first_milliseconds_runs_nothing_and_leaves_nothing_live() {
    /// Far beyond a start that stops at once, far below a command left to run.
    const LIMIT: Duration = Duration::from_secs(10);
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let ran = dir.path().join("ran");
    let cfg = write_config(
        dir.path(),
        &config(&p, dir.path(), "", &set("s", "api", &f, "")),
    );
    let touch = format!("touch {}", ran.display());
    let mut child = spawn_and_sigterm(&[
        "exec",
        "-c",
        cfg.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        &touch,
    ]);
    let (status, err) = wait_child(&mut child, LIMIT)
        .await
        .expect("exec did not stop");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), None, "killed by a signal: {err}");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{err}");
    assert!(!ran.exists(), "the command ran after the stop signal");
    assert!(p.live_tokens().is_empty(), "{err}");
    assert!(!f.exists());
}

/// SIGUSR1, then wait until the provider has seen the token request it causes.
async fn rotate(d: &Daemon, p: &tokenkeeper::devprovider::DevProvider) {
    let before = p.requests().token;
    d.signal(Signal::SIGUSR1);
    assert!(
        wait_until(PATIENCE, || p.requests().token > before).await,
        "no token request after SIGUSR1:\n{}",
        d.output()
    );
}

/// A refresh hangs (the provider never answers it) when SIGTERM comes: the token the set
/// already holds is revoked at once, not after the hung request has used up the stop's time.
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_hung_at_stop_does_not_hold_back_revoking_the_held_token() {
    /// Long enough that waiting for it first is unmistakable, short enough for a test.
    const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(8);
    /// "At once": a revocation takes milliseconds; seconds of slack for a loaded machine.
    const AT_ONCE: Duration = Duration::from_secs(3);
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = write_config(
        dir.path(),
        &config(
            &p,
            dir.path(),
            &format!(
                "shutdown_timeout: {}s\ndefaults:\n  refresh: {{ min_interval: 10ms }}",
                SHUTDOWN_TIMEOUT.as_secs()
            ),
            &set("s", "api", &f, ""),
        ),
    );
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[],
    );
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    let held = read(&f).unwrap();
    p.set_hang_issues(true);
    rotate(&d, &p).await;
    let t = Instant::now();
    d.signal(Signal::SIGTERM);
    assert!(
        wait_until(AT_ONCE, || !p.is_live(&held)).await,
        "the held token was not revoked within {AT_ONCE:?} of SIGTERM:\n{}",
        d.output()
    );
    let status = d.wait(PATIENCE).await;
    // The hung request minted nothing, and everything the set held is revoked.
    assert_eq!(status.code(), Some(0), "{}", d.output());
    assert!(
        t.elapsed() <= SHUTDOWN_TIMEOUT + Duration::from_secs(5),
        "stop took {:?}",
        t.elapsed()
    );
    assert_eq!(p.revoked_tokens(), vec![held]);
    assert!(p.live_tokens().is_empty());
    assert!(!f.exists(), "the revoked token's file is still there");
}

/// A provider that caches its tokens answers a refresh with the token already in the file:
/// the set must keep it, never revoke it as superseded.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_handed_out_again_is_kept_and_never_revoked_as_superseded() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = write_config(
        dir.path(),
        &config(
            &p,
            dir.path(),
            "defaults:\n  refresh: { min_interval: 10ms }\n  revoke_superseded_after: 100ms",
            &set("s", "api", &f, ""),
        ),
    );
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[],
    );
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    let first = read(&f).unwrap();
    p.set_repeat_tokens(true);
    for _ in 0..4 {
        rotate(&d, &p).await;
        // Past the superseded token's revocation time.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            p.is_live(&first),
            "the token in the file was revoked:\n{}",
            d.output()
        );
    }
    assert_eq!(read(&f).as_deref(), Some(first.as_str()));
    assert_eq!(p.issued_tokens(), vec![first.clone()]);
    assert!(p.revoked_tokens().is_empty());
    let journal = journaled(&dir.path().join("state"));
    assert!(
        journal.contains(&tokenkeeper::secret::fingerprint(&first)),
        "the token in the file is no longer journaled: {journal:?}"
    );
    stop_clean(&mut d).await;
    assert_eq!(p.revoked_tokens(), vec![first]);
    assert!(p.live_tokens().is_empty());
}

/// The fingerprints the journal in `state` holds now.
fn journaled(state: &Path) -> Vec<String> {
    tokenkeeper::journal::load(state)
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.fingerprint)
        .collect()
}

/// Well-formed answers refused for their token_type or expires_in still minted a token each.
/// Each is journaled before its revocation (a kill then loses nothing), revoked at once,
/// logged by fingerprint, and counted.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_minted_in_refused_answers_are_journaled_revoked_and_counted() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let prom = dir.path().join("tokenkeeper.prom");
    let cfg = write_config(
        dir.path(),
        &config(
            &p,
            dir.path(),
            &format!(
                "defaults:\n  refresh: {{ min_interval: 10ms }}\nmetrics: {{ textfile: {} }}",
                prom.display()
            ),
            &set("s", "api", &f, ""),
        ),
    );
    let state = dir.path().join("state");
    // Refused for its token_type, and not revocable for now: only the journal knows it when
    // the daemon is killed.
    p.set_answer_token_type(Some("mac"));
    p.set_revoke_status(Some(503));
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[],
    );
    assert!(
        wait_until(PATIENCE, || !p.issued_tokens().is_empty()).await,
        "{}",
        d.output()
    );
    let mac = p.issued_tokens()[0].clone();
    let mac_fp = tokenkeeper::secret::fingerprint(&mac);
    assert!(
        wait_until(PATIENCE, || journaled(&state).contains(&mac_fp)).await,
        "the refused token was never journaled:\n{}",
        d.output()
    );
    d.wait_for_log(&mac_fp).await;
    assert!(!f.exists(), "a refused token was written");
    d.signal(Signal::SIGKILL);
    d.wait(PATIENCE).await;
    assert!(p.is_live(&mac));

    // The next start revokes it from the journal, once a good token is in place.
    p.set_answer_token_type(None);
    p.set_revoke_status(None);
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[],
    );
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    let good = read(&f).unwrap();
    assert!(
        wait_until(PATIENCE, || !p.is_live(&mac)).await,
        "the journaled refused token was not revoked:\n{}",
        d.output()
    );

    // Refused for their lifetime: none, negative, absurd (over a year). Each is revoked at
    // once while the good token stays in place.
    for expires_in in [0, -5, 1_000_000_000_000] {
        p.set_answer_expires_in(Some(expires_in));
        rotate(&d, &p).await;
        assert!(
            wait_until(PATIENCE, || p.issued_tokens().len() >= 3).await,
            "{}",
            d.output()
        );
        let minted = p.issued_tokens().last().unwrap().clone();
        assert!(
            wait_until(PATIENCE, || !p.is_live(&minted)).await,
            "the token refused for expires_in {expires_in} was left live:\n{}",
            d.output()
        );
        d.wait_for_log(&tokenkeeper::secret::fingerprint(&minted))
            .await;
        assert_eq!(read(&f).as_deref(), Some(good.as_str()));
    }
    p.set_answer_expires_in(None);
    assert!(
        wait_until(PATIENCE, || status_json(&cfg)["sets"][0]["tokens_refused"]
            == 3)
        .await,
        "{}",
        status_json(&cfg)
    );
    // And for Prometheus: an alert on a provider whose answers changed.
    let refused = "tokenkeeper_refused_total{set=\"s\",provider=\"dev\"} 3";
    assert!(
        wait_until(PATIENCE, || read(&prom)
            .is_some_and(|t| t.lines().any(|l| l == refused)))
        .await,
        "{:?}",
        read(&prom)
    );
    stop_clean(&mut d).await;
    assert!(p.live_tokens().is_empty(), "{}", d.output());
}

/// A 200 answer that carries a well-formed token but cannot be read whole (a field missing,
/// of the wrong type, out of range) still minted that token. Each is taken out of the answer,
/// revoked at once, and counted as refused, while the good token stays in place.
#[tokio::test(flavor = "multi_thread")]
async fn every_token_in_a_malformed_answer_is_revoked_and_counted() {
    use serde_json::json;
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = write_config(
        dir.path(),
        &config(
            &p,
            dir.path(),
            "defaults:\n  refresh: { min_interval: 10ms }",
            &set("s", "api", &f, ""),
        ),
    );
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[],
    );
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    let good = read(&f).unwrap();
    let answers: Vec<Vec<(&str, Option<serde_json::Value>)>> = vec![
        vec![("expires_in", None)],
        vec![("expires_in", Some(json!("900")))],
        vec![("expires_in", Some(serde_json::Value::Null))],
        vec![("expires_in", Some(json!(900.5)))],
        vec![("expires_in", Some(json!(true)))],
        vec![("expires_in", Some(json!(1e30)))],
        vec![("expires_in", Some(json!(u64::MAX)))],
        vec![("expires_in", Some(json!([900])))],
        vec![("token_type", None)],
        vec![("token_type", Some(json!(1)))],
        vec![("scope", None)],
        vec![("client_id", Some(json!({"id": 1})))],
        vec![("expires_at", Some(json!("soon")))],
    ];
    let mut minted = Vec::new();
    for fields in &answers {
        p.set_answer_fields(fields);
        let before = p.issued_tokens().len();
        rotate(&d, &p).await;
        assert!(
            wait_until(PATIENCE, || p.issued_tokens().len() > before).await,
            "{}",
            d.output()
        );
        let token = p.issued_tokens().last().unwrap().clone();
        assert!(
            wait_until(PATIENCE, || !p.is_live(&token)).await,
            "the token in an answer with {fields:?} was left live:\n{}",
            d.output()
        );
        d.wait_for_log(&tokenkeeper::secret::fingerprint(&token))
            .await;
        assert_eq!(read(&f).as_deref(), Some(good.as_str()));
        minted.push(token);
    }
    p.set_answer_fields(&[]);
    let refused = answers.len();
    assert!(
        wait_until(PATIENCE, || status_json(&cfg)["sets"][0]["tokens_refused"]
            == refused)
        .await,
        "{}",
        status_json(&cfg)
    );
    stop_clean(&mut d).await;
    assert!(p.live_tokens().is_empty(), "{}", d.output());
    assert!(minted.iter().all(|t| !p.is_live(t)));
}
