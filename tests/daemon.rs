//! The daemon end to end: the built binary against the strict development provider on
//! 127.0.0.1, stopped with real signals.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread")]
async fn first_issuance_writes_every_file_with_exact_mode_and_format_then_sigterm_cleans_up() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    // A directory that does not exist yet: the daemon creates it 0750.
    let out = dir.path().join("run/tokens");
    let files = [
        (
            "raw-set",
            "orders customers",
            out.join("raw.token"),
            ", mode: \"0640\"",
        ),
        (
            "json-set",
            "vouchers",
            out.join("t.json"),
            ", format: json, mode: \"0600\"",
        ),
        (
            "env-set",
            "api",
            out.join("t.env"),
            ", format: env, mode: \"0644\"",
        ),
        (
            "hdr-set",
            "campaigns",
            out.join("t.hdr"),
            ", format: header, mode: \"0604\"",
        ),
    ];
    let sets: String = files
        .iter()
        .map(|(n, s, path, extra)| set(n, &s.replace(' ', ", "), path, extra))
        .collect();
    let cfg = config(&p, dir.path(), "shutdown_timeout: 10s", &sets);
    // umask 077 would strip every group and other bit from a naive create.
    let mut d = Daemon::run(dir.path(), &cfg, 0o077);
    let all_there = wait_until(PATIENCE, || files.iter().all(|(_, _, f, _)| f.exists())).await;
    assert!(all_there, "files not written; output:\n{}", d.output());

    // Without a store, no thread is started for one (see src/store/io.rs).
    let threads = d.threads();
    assert!(
        !threads.is_empty() && !threads.iter().any(|t| t == "tk-store-io"),
        "{threads:?}"
    );

    assert_eq!(mode(&out), 0o750);
    assert_eq!(mode(&files[0].2), 0o640);
    assert_eq!(mode(&files[1].2), 0o600);
    assert_eq!(mode(&files[2].2), 0o644);
    assert_eq!(mode(&files[3].2), 0o604);

    let raw = read(&files[0].2).unwrap();
    assert!(!raw.ends_with('\n'), "raw has no trailing newline");
    assert!(p.is_live(&raw));
    assert_eq!(
        p.scopes_of(&raw).unwrap(),
        vec!["orders".to_string(), "customers".to_string()]
    );

    let json: serde_json::Value = serde_json::from_str(&read(&files[1].2).unwrap()).unwrap();
    let tok = json["access_token"].as_str().unwrap();
    assert!(p.is_live(tok));
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["scope"], "vouchers");
    assert_eq!(json["set"], "json-set");
    let expires = humantime::parse_rfc3339(json["expires_at"].as_str().unwrap()).unwrap();
    let left = expires
        .duration_since(tokenkeeper::clock::now_wall())
        .unwrap();
    assert!(left > Duration::from_secs(800) && left <= Duration::from_secs(900));

    let env = read(&files[2].2).unwrap();
    let lines: Vec<&str> = env.lines().collect();
    assert_eq!(lines.len(), 2, "{env}");
    let tok = lines[0].strip_prefix("ENV_SET_TOKEN=").unwrap();
    assert!(p.is_live(tok));
    assert!(lines[1].starts_with("ENV_SET_TOKEN_EXPIRES_AT="));
    humantime::parse_rfc3339(lines[1].split_once('=').unwrap().1).unwrap();

    let hdr = read(&files[3].2).unwrap();
    let tok = hdr
        .strip_prefix("Authorization: Bearer ")
        .unwrap()
        .trim_end();
    assert!(p.is_live(tok));

    assert_eq!(p.live_tokens().len(), 4);
    assert!(p.violations().is_empty(), "{:?}", p.violations());
    // No temporary files left next to the tokens.
    let names: HashSet<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");

    d.signal(Signal::SIGTERM);
    let status = d.wait(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "output:\n{}", d.output());
    assert!(p.live_tokens().is_empty(), "tokens left live");
    for (_, _, f, _) in &files {
        assert!(!f.exists(), "{} left behind", f.display());
    }
    assert!(
        d.output().contains("stopped: revoked 4 tokens"),
        "{}",
        d.output()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mode_is_exact_under_a_permissive_umask_too() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = config(&p, dir.path(), "", &set("s", "api", &f, ", mode: \"0600\""));
    let mut d = Daemon::run(dir.path(), &cfg, 0o000);
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    assert_eq!(mode(&f), 0o600);
    d.signal(Signal::SIGINT);
    assert_eq!(d.wait(PATIENCE).await.code(), Some(0), "{}", d.output());
    assert!(!f.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn token_is_replaced_before_expiry_and_the_superseded_one_revoked() {
    let p = provider(Duration::from_secs(4)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = config(
        &p,
        dir.path(),
        "defaults:\n  refresh: { at: 50%, jitter: 0%, min_interval: 100ms }\n  revoke_superseded_after: 500ms",
        &set("s", "api", &f, ""),
    );
    let mut d = Daemon::run(dir.path(), &cfg, 0o022);
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    let first = read(&f).unwrap();
    let t0 = Instant::now();
    let mut old_live_at_switch = false;
    let replaced = wait_until(PATIENCE, || match read(&f) {
        Some(t) if t != first => {
            old_live_at_switch = p.is_live(&first);
            true
        }
        _ => false,
    })
    .await;
    assert!(replaced, "{}", d.output());
    let switched_after = t0.elapsed();
    assert!(
        old_live_at_switch,
        "the file changed only after the old token was gone ({switched_after:?})"
    );
    // The old token is revoked explicitly, not left to expire.
    assert!(
        wait_until(PATIENCE, || p.revoked_tokens().contains(&first)).await,
        "superseded token never revoked:\n{}",
        d.output()
    );
    assert!(p.live_tokens().len() <= 2);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(PATIENCE).await.code(), Some(0), "{}", d.output());
    assert!(p.live_tokens().is_empty());
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_keeps_the_old_file_until_expiry_then_removes_it_and_recovers() {
    let p = provider(Duration::from_secs(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = config(
        &p,
        dir.path(),
        "defaults:\n  refresh: { at: 50%, jitter: 0%, min_interval: 100ms }",
        &set("s", "api", &f, ""),
    );
    let mut d = Daemon::run(dir.path(), &cfg, 0o022);
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    let first = read(&f).unwrap();
    p.set_outage(Some(503));
    // Time counts from when the provider minted the token, not from when this test noticed the
    // file (on a loaded machine that can be much later). The daemon counts from when it sent
    // the request, a little earlier still, so it may remove the file a little before
    // minted + 3 s, never much before.
    let minted = p.issued_with_times()[0].1;
    while tokio::time::Instant::now() < minted + Duration::from_millis(2700) {
        assert_eq!(read(&f).as_deref(), Some(first.as_str()), "{}", d.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        wait_until(PATIENCE, || !f.exists()).await,
        "expired token's file not removed:\n{}",
        d.output()
    );
    d.wait_for_log("expired with no replacement").await;
    p.set_outage(None);
    assert!(
        wait_until(PATIENCE, || read(&f).is_some_and(|t| p.is_live(&t))).await,
        "no recovery after the outage:\n{}",
        d.output()
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(PATIENCE).await.code(), Some(0), "{}", d.output());
    assert!(p.live_tokens().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_revokes_everything_including_tokens_issued_while_it_arrived() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.token");
    let b = dir.path().join("b.token");
    let cfg = config(
        &p,
        dir.path(),
        "shutdown_timeout: 15s\ndefaults:\n  refresh: { min_interval: 10ms }",
        &(set("a", "api", &a, "") + &set("b", "orders", &b, "")),
    );
    let mut d = Daemon::run(dir.path(), &cfg, 0o022);
    assert!(
        wait_until(PATIENCE, || a.exists() && b.exists()).await,
        "{}",
        d.output()
    );
    // The next answers come 2 s after their tokens are minted.
    p.set_issue_delay(Duration::from_secs(2));
    d.signal(Signal::SIGUSR1);
    assert!(
        wait_until(PATIENCE, || p.issued_tokens().len() == 4).await,
        "rotation did not start:\n{}",
        d.output()
    );
    // Both new tokens are minted and their answers in flight: stop now.
    d.signal(Signal::SIGTERM);
    let status = d.wait(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{}", d.output());
    assert!(
        p.live_tokens().is_empty(),
        "{} tokens left live:\n{}",
        p.live_tokens().len(),
        d.output()
    );
    assert_eq!(p.revoked_tokens().len(), 4);
    assert!(!a.exists() && !b.exists());
    assert!(
        d.output().contains("stopped: revoked 4 tokens"),
        "{}",
        d.output()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_revocations_exit_1_naming_the_set_and_leave_no_file() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = config(
        &p,
        dir.path(),
        "shutdown_timeout: 2s",
        &set("billing", "api", &f, ""),
    );
    let mut d = Daemon::run(dir.path(), &cfg, 0o022);
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    p.set_revoke_status(Some(500));
    d.signal(Signal::SIGTERM);
    let status = d.wait(PATIENCE).await;
    assert_eq!(status.code(), Some(1), "{}", d.output());
    let out = d.output();
    assert!(
        out.contains("could not revoke every token of: billing"),
        "{out}"
    );
    // Given up on, so in no file: the provider may yet revoke it under its reader. It stays
    // in the journal, for the next start or `tokenkeeper revoke`.
    assert!(!f.exists());
    assert_eq!(p.live_tokens().len(), 1);
    let journal = tokenkeeper::journal::load(&dir.path().join("state")).unwrap();
    assert_eq!(journal.len(), 1, "{journal:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_exits_at_once() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = config(
        &p,
        dir.path(),
        "shutdown_timeout: 60s",
        &set("s", "api", &f, ""),
    );
    let mut d = Daemon::run(dir.path(), &cfg, 0o022);
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    // Revocation keeps failing with a retryable status, so the first stop would take 60 s.
    p.set_revoke_status(Some(503));
    d.signal(Signal::SIGTERM);
    d.wait_for_log("stopping").await;
    let t = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d.wait(PATIENCE).await;
    assert_eq!(status.code(), Some(1), "{}", d.output());
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_logged_with_voucherifys_key_and_message() {
    let p = provider(Duration::from_secs(900)).await;
    p.set_app_token("rotated-elsewhere");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = config(&p, dir.path(), "", &set("s", "api", &f, ""));
    let mut d = Daemon::run(dir.path(), &cfg, 0o022);
    d.wait_for_log("HTTP 401").await;
    let out = d.output();
    assert!(out.contains("key=unauthorized"), "{out}");
    assert!(out.contains("message=\"Unauthorized\""), "{out}");
    // Refusals are retried slowly: after 2 s, still just the first attempt.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(p.requests().token, 1, "retried too fast:\n{}", d.output());
    assert!(!f.exists());
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(PATIENCE).await.code(), Some(0), "{}", d.output());
}

/// Hundreds of rotations while a reader polls the files: every read is a whole token the
/// provider issued, never empty, partial or unknown.
#[tokio::test(flavor = "multi_thread")]
async fn a_reader_never_sees_a_partial_or_unknown_token() {
    /// Enough rotations to make a torn write show up if the writer ever produced one.
    const ROTATIONS: usize = 300;
    let p = Arc::new(provider(Duration::from_secs(900)).await);
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("t.token");
    let json = dir.path().join("t.json");
    let cfg = config(
        &p,
        dir.path(),
        "defaults:\n  refresh: { min_interval: 1ms }\n  revoke_superseded_after: 0s",
        &(set("r", "api", &raw, "") + &set("j", "api", &json, ", format: json")),
    );
    let mut d = Daemon::run(dir.path(), &cfg, 0o022);
    assert!(
        wait_until(PATIENCE, || raw.exists() && json.exists()).await,
        "{}",
        d.output()
    );

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (p, done, raw, json) = (Arc::clone(&p), Arc::clone(&done), raw.clone(), json.clone());
        std::thread::spawn(move || {
            let mut known: HashSet<String> = p.issued_tokens().into_iter().collect();
            let mut reads = 0u64;
            let mut check = |tok: &str, what: &str| {
                assert!(!tok.is_empty(), "empty {what}");
                if !known.contains(tok) {
                    known = p.issued_tokens().into_iter().collect();
                    assert!(known.contains(tok), "{what} holds a token never issued");
                }
            };
            while !done.load(Ordering::Relaxed) {
                let r = std::fs::read_to_string(&raw).expect("raw file vanished");
                check(&r, "raw file");
                let j = std::fs::read_to_string(&json).expect("json file vanished");
                let v: serde_json::Value =
                    serde_json::from_str(&j).unwrap_or_else(|e| panic!("torn json ({e}): {j:?}"));
                check(v["access_token"].as_str().unwrap_or(""), "json file");
                reads += 1;
            }
            reads
        })
    };
    let start = Instant::now();
    while p.issued_tokens().len() < 2 * ROTATIONS {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "rotations too slow"
        );
        d.signal(Signal::SIGUSR1);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    done.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("reader saw a bad file");
    assert!(reads > 100, "only {reads} reads");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(PATIENCE).await.code(), Some(0), "{}", d.output());
    assert!(p.live_tokens().is_empty());
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_appears_in_the_output_even_at_trace_level() {
    let p = provider(Duration::from_secs(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg_path = dir.path().join("c.yaml");
    let cfg = config(
        &p,
        dir.path(),
        "defaults:\n  refresh: { at: 50%, min_interval: 100ms }\n  revoke_superseded_after: 200ms",
        &set("s", "api", &f, ", format: json"),
    );
    std::fs::write(&cfg_path, cfg).unwrap();
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg_path.to_str().unwrap()],
        0o022,
        &[("RUST_LOG", "trace")],
    );
    // A few rotations, a refusal, and a stop: every code path that logs.
    assert!(
        wait_until(PATIENCE, || p.issued_tokens().len() >= 3).await,
        "{}",
        d.output()
    );
    p.fail_next_issues(1, 503, Some(1));
    d.wait_for_log("could not get a token").await;
    p.fail_next_issues(1, 400, None);
    d.wait_for_log("provider refused to issue a token").await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(PATIENCE).await.code(), Some(0), "{}", d.output());
    let out = d.output();
    assert!(
        out.len() > 1000,
        "trace output is suspiciously short:\n{out}"
    );
    for tok in p.issued_tokens() {
        assert!(!out.contains(&tok), "a token leaked into the output");
        // Named by fingerprint instead.
        assert!(out.contains(&tokenkeeper::secret::fingerprint(&tok)));
    }
    assert!(
        !out.contains(tokenkeeper::devprovider::DEV_APP_TOKEN),
        "the app token leaked"
    );
    assert!(
        !out.contains(tokenkeeper::devprovider::DEV_APP_ID),
        "the app id leaked"
    );
}
