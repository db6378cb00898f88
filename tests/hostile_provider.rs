//! A provider, a secrets store (or a local user) that works against the daemon: answers that
//! leak what they were sent, expiry that the journal and the provider disagree on,
//! `Retry-After` in its rarer forms, and a metrics listener held full of idle connections. The
//! built binary, real signals, the strict development provider and small fakes on 127.0.0.1.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

fn set(name: &str, path: &Path) -> String {
    common::set(name, "api", path, "")
}

fn start(dir: &Path, yaml: &str) -> (Daemon, PathBuf) {
    let cfg = write_config(dir, yaml);
    let d = Daemon::spawn(dir, &["run", "-c", cfg.to_str().unwrap()], 0o022, &[]);
    (d, cfg)
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_as_an_http_date_is_waited_for() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    // Six seconds ahead, in whole seconds: at least four once the daemon has started and read
    // it, where the first retry of our own backoff comes within one.
    let date = httpdate::fmt_http_date(tokenkeeper::clock::now_wall() + Duration::from_secs(6));
    p.fail_next_issues_retry_after(1, 503, &date);
    let (mut d, _cfg) = start(dir.path(), &config(&p, dir.path(), "", &set("s", &f)));
    assert!(
        wait_until(PATIENCE, || p.requests().token >= 1).await,
        "{}",
        d.output()
    );
    let failed = Instant::now();
    assert!(
        wait_until(PATIENCE, || p.requests().token >= 2).await,
        "{}",
        d.output()
    );
    let waited = failed.elapsed();
    assert!(
        waited >= Duration::from_millis(2500),
        "retried {waited:?} after a 503 whose Retry-After was {date}:\n{}",
        d.output()
    );
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    stop_clean(&mut d).await;
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_absurd_retry_after_is_capped_at_ten_minutes_not_ignored() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    // More seconds than a u64 holds.
    p.fail_next_issues_retry_after(1, 429, "99999999999999999999999");
    let (mut d, cfg) = start(dir.path(), &config(&p, dir.path(), "", &set("s", &f)));
    assert!(
        wait_until(PATIENCE, || !status_json(&cfg)["sets"][0]["last_error"]
            .is_null())
        .await,
        "{}",
        d.output()
    );
    let v = status_json(&cfg);
    let next = v["sets"][0]["next_refresh_in_secs"].as_i64().unwrap();
    // README: "never below a Retry-After the provider sent (capped at 10 minutes)".
    assert!((590..=600).contains(&next), "next try in {next} s: {v}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(p.requests().token, 1, "{}", d.output());
    stop_clean(&mut d).await;
}

/// Start a daemon with one set, wait for its first token, and kill it (no revocation). Tokens
/// the restarted daemon drops are revoked 200 ms after their replacement is written.
async fn token_then_crash(
    p: &tokenkeeper::devprovider::DevProvider,
    dir: &Path,
    f: &Path,
) -> (String, PathBuf) {
    let top = "defaults:\n  revoke_superseded_after: 200ms";
    let (mut d, cfg) = start(dir, &config(p, dir, top, &set("s", f)));
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    let first = read(f).unwrap();
    d.signal(Signal::SIGKILL);
    d.wait(PATIENCE).await;
    assert!(p.is_live(&first));
    (first, cfg)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_introspection_dates_in_the_past_is_replaced_and_revoked_at_start() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let (first, cfg) = token_then_crash(&p, dir.path(), &f).await;
    // `expires_in` still says 15 minutes; `expires_at` says an hour ago.
    p.set_introspect_expires_early(Duration::from_secs(3600));
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[],
    );
    assert!(
        wait_until(PATIENCE, || read(&f).is_some_and(|t| t != first)).await,
        "the token the provider dates expired was reused:\n{}",
        d.output()
    );
    assert!(p.requests().introspect >= 1);
    assert!(
        wait_until(PATIENCE, || p.revoked_tokens().contains(&first)).await,
        "the dropped token was not revoked:\n{}",
        d.output()
    );
    assert!(
        !d.output().contains("reusing the token it already holds"),
        "{}",
        d.output()
    );
    stop_clean(&mut d).await;
    assert!(p.live_tokens().is_empty(), "{}", d.output());
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_expired_only_by_a_jumped_clock_is_revoked_not_just_dropped() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let (first, cfg) = token_then_crash(&p, dir.path(), &f).await;
    // As if the wall clock had jumped two hours ahead while the daemon was down: the journal
    // says the token expired, the provider (whose clock is right) still honours it.
    let state = dir.path().join("state");
    let mut entries = tokenkeeper::journal::load(&state).unwrap();
    assert!(!entries.is_empty());
    let past = |h: u64| tokenkeeper::clock::now_wall() - Duration::from_secs(h * 3600);
    for e in &mut entries {
        e.issued_at = past(3);
        e.refresh_at = past(2);
        e.expires_at = past(1);
    }
    tokenkeeper::journal::save(&state, &entries).unwrap();
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[],
    );
    assert!(
        wait_until(PATIENCE, || read(&f).is_some_and(|t| t != first)).await,
        "{}",
        d.output()
    );
    assert!(
        wait_until(PATIENCE, || p.revoked_tokens().contains(&first)).await,
        "a token still live at the provider was dropped unrevoked:\n{}",
        d.output()
    );
    stop_clean(&mut d).await;
    assert!(p.live_tokens().is_empty(), "{:?}", p.live_tokens().len());
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_the_journal_calls_expired_are_revoked_at_start() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    // Four sets, and the default grace for superseded tokens (60 s): a token the journal calls
    // expired must not wait for it, nor for the stop.
    let files: Vec<PathBuf> = (0..4)
        .map(|i| dir.path().join(format!("t{i}.token")))
        .collect();
    let sets: String = files
        .iter()
        .enumerate()
        .map(|(i, f)| set(&format!("s{i}"), f))
        .collect();
    let (mut d, cfg) = start(dir.path(), &config(&p, dir.path(), "", &sets));
    assert!(
        wait_until(PATIENCE, || files.iter().all(|f| f.exists())).await,
        "{}",
        d.output()
    );
    let first: Vec<String> = files.iter().map(|f| read(f).unwrap()).collect();
    d.signal(Signal::SIGKILL);
    d.wait(PATIENCE).await;
    // The wall clock jumped an hour ahead while the daemon was down: the journal says every
    // token expired, the provider (whose clock is right) still honours them.
    let state = dir.path().join("state");
    let mut entries = tokenkeeper::journal::load(&state).unwrap();
    assert_eq!(entries.len(), 4);
    let past = |h: u64| tokenkeeper::clock::now_wall() - Duration::from_secs(h * 3600);
    for e in &mut entries {
        e.issued_at = past(3);
        e.refresh_at = past(2);
        e.expires_at = past(1);
    }
    tokenkeeper::journal::save(&state, &entries).unwrap();
    assert!(first.iter().all(|t| p.is_live(t)));
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[],
    );
    // Well within the 60 s grace of a superseded token.
    assert!(
        wait_until(Duration::from_secs(10), || first
            .iter()
            .all(|t| p.revoked_tokens().contains(t)))
        .await,
        "tokens the journal calls expired are still live at the provider:\n{}",
        d.output()
    );
    // The provider counts a revocation before its answer reaches the daemon's log.
    let logged = |out: &str| {
        entries.iter().all(|e| {
            out.lines()
                .any(|l| l.contains("revoked") && l.contains(&e.fingerprint))
        })
    };
    assert!(
        wait_until(PATIENCE, || logged(&d.output())).await,
        "a revocation is not logged:\n{}",
        d.output()
    );
    stop_clean(&mut d).await;
    assert!(p.live_tokens().is_empty(), "{}", d.output());
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

/// Every form in which `secret` could show: as sent, and form-encoded.
fn forms(secret: &str) -> Vec<String> {
    let encoded: String = url_encode(secret);
    vec![secret.to_string(), encoded]
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        for f in forms(s) {
            assert!(
                !text.contains(&f),
                "{what} holds a secret ({}):\n{text}",
                tokenkeeper::secret::fingerprint(s)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_echoing_provider_gets_no_secret_into_the_log_the_status_or_a_hook() {
    // A key that looks real: a dev constant could hide a leak behind a common word.
    let app_token: String = format!("tkLive+{}/", fastrand::u64(..));
    let p = tokenkeeper::devprovider::DevProvider::start(
        "127.0.0.1:0".parse().unwrap(),
        tokenkeeper::devprovider::DevProviderOptions {
            app_token: app_token.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let env_dump = dir.path().join("hook.env");
    let sets = format!(
        "  - name: s\n    provider: dev\n    scopes: [api]\n    file: {{ path: {} }}\n    on_rotate:\n      exec: [/bin/sh, -c, 'env > {}']\n",
        f.display(),
        env_dump.display()
    );
    let cfg = write_config(dir.path(), &config(&p, dir.path(), "", &sets));
    let args = ["run", "-c", cfg.to_str().unwrap()];
    let env = [("TK_TEST_APP_TOKEN", app_token.as_str())];
    let mut d = Daemon::spawn(dir.path(), &args, 0o022, &env);
    assert!(
        wait_until(PATIENCE, || read(&env_dump)
            .is_some_and(|e| e.contains("TOKENKEEPER_SET=s\n")))
        .await,
        "{}",
        d.output()
    );
    let hook_env = read(&env_dump).unwrap();
    assert!(!hook_env.contains("TK_TEST_APP_TOKEN"), "{hook_env}");
    assert!(!hook_env.contains("TK_TEST_APP_ID"), "{hook_env}");
    assert_no_secret("the hook's environment", &hook_env, &[&app_token]);
    let first = read(&f).unwrap();
    d.signal(Signal::SIGKILL);
    d.wait(PATIENCE).await;

    // Now every answer is an error that quotes the request: introspecting and revoking send
    // the token, every request sends the app token.
    p.set_echo_requests(Some(503));
    let mut d = Daemon::spawn(dir.path(), &args, 0o022, &env);
    let status_file = dir.path().join("state/status.json");
    assert!(
        wait_until(PATIENCE, || {
            let v = status_json(&cfg);
            v["sets"][0]["issue_failures"]
                .as_u64()
                .is_some_and(|n| n >= 2)
        })
        .await,
        "{}",
        d.output()
    );
    let v = tokenkeeper(&["status", "-c", cfg.to_str().unwrap(), "--json"]).stdout;
    let secrets = [app_token.as_str(), first.as_str()];
    assert_no_secret("status --json", &v, &secrets);
    assert!(
        v.contains("[redacted]"),
        "the echo never reached the status: {v}"
    );
    assert_no_secret("status.json", &read(&status_file).unwrap(), &secrets);
    let table = tokenkeeper(&["status", "-c", cfg.to_str().unwrap()]).stdout;
    assert_no_secret("status", &table, &secrets);
    // Stop: revoking the adopted token is echoed too.
    d.signal(Signal::SIGTERM);
    d.wait(PATIENCE).await;
    let log = d.output();
    assert!(log.contains("could not check the journaled token"), "{log}");
    assert!(log.contains("echo: access_token=[redacted]"), "{log}");
    assert!(log.contains("x-app-token: [redacted]"), "{log}");
    assert_no_secret("the log", &log, &secrets);
    assert_no_secret("status.json", &read(&status_file).unwrap(), &secrets);
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

/// A provider that quotes, in its error answers, tokens the failing request never carried
/// (it knows every token it issued): the tokens the daemon holds reach neither the log nor
/// the status.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_the_daemon_holds_are_cut_out_of_provider_text_whatever_the_request() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.token");
    let b = dir.path().join("b.token");
    let cfg = config(
        &p,
        dir.path(),
        "defaults:\n  refresh: { min_interval: 10ms }",
        &(set("a", &a) + &set("b", &b)),
    );
    let (mut d, cfg) = start(dir.path(), &cfg);
    assert!(
        wait_until(PATIENCE, || a.exists() && b.exists()).await,
        "{}",
        d.output()
    );
    let held = [read(&a).unwrap(), read(&b).unwrap()];
    // From now on every answer is an error quoting every live token; a rotation asks for new
    // tokens, a request that carries none of them.
    p.set_echo_live_tokens(true);
    p.set_echo_requests(Some(503));
    d.signal(Signal::SIGUSR1);
    assert!(
        wait_until(PATIENCE, || {
            let v = status_json(&cfg);
            (0..2).all(|i| {
                v["sets"][i]["issue_failures"]
                    .as_u64()
                    .is_some_and(|n| n >= 1)
            })
        })
        .await,
        "{}",
        d.output()
    );
    let secrets: Vec<&str> = held.iter().map(String::as_str).collect();
    let v = tokenkeeper(&["status", "-c", cfg.to_str().unwrap(), "--json"]).stdout;
    assert!(
        v.contains("live: [redacted]"),
        "the quote never reached the status: {v}"
    );
    assert_no_secret("status --json", &v, &secrets);
    assert_no_secret(
        "status.json",
        &read(&dir.path().join("state/status.json")).unwrap(),
        &secrets,
    );
    p.set_echo_requests(None);
    stop_clean(&mut d).await;
    assert_no_secret("the log", &d.output(), &secrets);
    assert!(p.live_tokens().is_empty());
}

/// `GET /metrics`, or `None` if the listener closed the connection or did not answer in 2 s.
async fn try_get_metrics(addr: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.starts_with("HTTP/1.1 200").then_some(out)
    };
    tokio::time::timeout(Duration::from_secs(2), get)
        .await
        .ok()
        .flatten()
}

/// Hard (and soft) limit on the daemon's open files: low, so that idle connections exhaust it
/// within moments unless the listener bounds them, high enough for one set's ordinary needs.
const DAEMON_NOFILE: libc::rlim_t = 64;

/// Idle connections the test holds open at once: far beyond [`DAEMON_NOFILE`].
const IDLE_HELD: usize = 300;

#[tokio::test(flavor = "multi_thread")]
async fn idle_metrics_connections_cannot_starve_token_writes() {
    use std::os::unix::process::CommandExt;
    let p = provider(Duration::from_secs(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let top = "metrics: { listen: \"127.0.0.1:0\" }\ndefaults:\n  refresh: { at: 50%, jitter: 0%, min_interval: 100ms }\n  revoke_superseded_after: 100ms";
    let cfg = write_config(dir.path(), &config(&p, dir.path(), top, &set("s", &f)));
    let log = dir.path().join("daemon.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["run", "-c", cfg.to_str().unwrap()])
        .env("TK_TEST_APP_ID", tokenkeeper::devprovider::DEV_APP_ID)
        .env("TK_TEST_APP_TOKEN", tokenkeeper::devprovider::DEV_APP_TOKEN)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // SAFETY: setrlimit(2) is async-signal-safe and touches only the child's own limits.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: DAEMON_NOFILE,
                rlim_max: DAEMON_NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut d = Daemon {
        child: cmd.spawn().unwrap(),
        log,
    };
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    d.wait_for_log("serving metrics at /metrics").await;
    let addr = d
        .output()
        .lines()
        .find(|l| l.contains("serving metrics"))
        .and_then(|l| l.split("address=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .unwrap()
        .to_string();

    // A local user opens connections and never sends a byte, replacing the oldest so that
    // IDLE_HELD are always open, for as long as the test watches the tokens rotate.
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flood = {
        let (addr, flooding) = (addr.clone(), std::sync::Arc::clone(&flooding));
        tokio::spawn(async move {
            let mut held = std::collections::VecDeque::new();
            while flooding.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(s) = tokio::net::TcpStream::connect(&addr).await {
                    held.push_back(s);
                }
                if held.len() > IDLE_HELD {
                    held.pop_front();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            held
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Tokens last 2 s and are replaced after 1 s: under the flood they must keep coming.
    let mut seen = vec![read(&f).unwrap_or_default()];
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        if let Some(t) = read(&f)
            && seen.last() != Some(&t)
        {
            seen.push(t);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen.len() >= 4,
        "only {} tokens written in 8 s of idle connections:\n{}",
        seen.len(),
        d.output()
    );
    // The last IDLE_HELD stay open, silent: once they time out, a scrape is answered.
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    let held = flood.await.unwrap();
    let mut answered = None;
    let start = Instant::now();
    while answered.is_none() && start.elapsed() < PATIENCE {
        answered = try_get_metrics(&addr).await;
    }
    let body = answered.unwrap_or_else(|| panic!("metrics never answered:\n{}", d.output()));
    assert!(body.contains("tokenkeeper_up 1"), "{body}");
    drop(held);
    let out = d.output();
    assert!(!out.contains("Too many open files"), "{out}");
    let v = status_json(&cfg);
    assert_eq!(v["sets"][0]["state"], "fresh", "{v}");
    stop_clean(&mut d).await;
    assert!(p.live_tokens().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_set_that_cannot_journal_its_token_shows_as_failing() {
    let p = provider(Duration::from_secs(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let top = "defaults:\n  refresh: { at: 50%, jitter: 0%, min_interval: 100ms }\n  revoke_superseded_after: 100ms";
    let (mut d, cfg) = start(dir.path(), &config(&p, dir.path(), top, &set("s", &f)));
    assert!(
        wait_until(PATIENCE, || status_json(&cfg)["sets"][0]["state"]
            == "fresh")
        .await,
        "{}",
        d.output()
    );
    // The journal's place is taken by a directory with something in it: renaming the new
    // journal over it fails, as a write fails on a full disk or out of descriptors.
    let journal = dir.path().join("state/journal.log");
    std::fs::remove_file(&journal).unwrap();
    std::fs::create_dir(&journal).unwrap();
    std::fs::write(journal.join("keep"), "x").unwrap();
    let first = read(&f).unwrap();
    assert!(
        wait_until(PATIENCE, || read(&f).is_some_and(|t| t != first)).await,
        "{}",
        d.output()
    );
    assert!(
        wait_until(PATIENCE, || {
            let v = status_json(&cfg);
            v["sets"][0]["state"] == "failing"
                && v["sets"][0]["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("not journaled"))
        })
        .await,
        "a set that cannot journal its tokens is reported {}:\n{}",
        status_json(&cfg)["sets"][0],
        d.output()
    );
    // Once the journal can be written again, the next token makes the set fresh.
    std::fs::remove_dir_all(&journal).unwrap();
    assert!(
        wait_until(PATIENCE, || status_json(&cfg)["sets"][0]["state"]
            == "fresh")
        .await,
        "{}",
        d.output()
    );
    stop_clean(&mut d).await;
    assert!(p.live_tokens().is_empty());
}

/// A token whose answer comes in while the daemon stops, with the journal failing: the failed
/// record is logged by the token's fingerprint and counted, and the token revoked at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_that_cannot_be_journaled_while_settling_is_revoked_and_logged() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let top = "defaults:\n  refresh: { min_interval: 10ms }\nshutdown_timeout: 20s";
    let (mut d, cfg) = start(dir.path(), &config(&p, dir.path(), top, &set("s", &f)));
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    // The journal's place is taken by a directory with something in it, as in
    // `a_set_that_cannot_journal_its_token_shows_as_failing`.
    let journal = dir.path().join("state/journal.log");
    std::fs::remove_file(&journal).unwrap();
    std::fs::create_dir(&journal).unwrap();
    std::fs::write(journal.join("keep"), "x").unwrap();
    // The next token is minted at once and answered two seconds later: after the stop.
    p.set_issue_delay(Duration::from_secs(2));
    let before = p.issued_tokens().len();
    d.signal(Signal::SIGUSR1);
    assert!(
        wait_until(PATIENCE, || p.issued_tokens().len() > before).await,
        "{}",
        d.output()
    );
    let late = p.issued_tokens().last().unwrap().clone();
    let late_fp = tokenkeeper::secret::fingerprint(&late);
    stop_clean(&mut d).await;
    assert!(!p.is_live(&late), "{}", d.output());
    assert!(p.live_tokens().is_empty(), "{}", d.output());
    let out = d.output();
    assert!(
        out.lines()
            .any(|l| l.contains(&late_fp) && l.contains("not journaled")),
        "the failed record of the token issued while stopping was not logged:\n{out}"
    );
    assert_eq!(
        status_json(&cfg)["sets"][0]["journal_failures"],
        1,
        "{}",
        status_json(&cfg)
    );
}

/// One HTTP/1.1 request from `s`, head and body as text; `None` if the peer went away first.
async fn read_request(s: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        req.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&req).to_string();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let len: usize = text[..end]
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        if req.len() >= end + 4 + len {
            return Some(text);
        }
    }
}

/// A KV v2 store on 127.0.0.1 that accepts the token lookup and metadata, holds nothing, and
/// answers every other request (a token's write) with an error quoting the whole request
/// (the token header and the body first) and a forged log line. Serves until the test ends.
async fn echoing_store() -> String {
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Some(text) = read_request(&mut s).await else {
                    return;
                };
                let (status, body) = if text.starts_with("GET /v1/auth/token/lookup-self") {
                    (
                        "200 OK",
                        r#"{"data":{"ttl":0,"renewable":false}}"#.to_string(),
                    )
                } else if text.starts_with("GET ") {
                    ("404 Not Found", r#"{"errors":[]}"#.to_string())
                } else if text.starts_with("POST /v1/secret/metadata/") {
                    ("204 No Content", String::new())
                } else {
                    // The token header and the body first: the daemon caps what it quotes.
                    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
                    let token = head
                        .lines()
                        .find(|l| l.to_ascii_lowercase().starts_with("x-vault-token:"))
                        .unwrap_or_default();
                    let echo = format!("echo: {token} {body} {head}\nFORGED line from the store");
                    (
                        "400 Bad Request",
                        serde_json::json!({ "errors": [echo] }).to_string(),
                    )
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A secrets store that quotes each request in its errors gets neither its own token nor the
/// access token written into the log or the status, and cannot forge a log line.
/// The top-level `stores:` lines for a store `name` at `address`, logged into with
/// `store_token` from an owner-only file in `dir`, and one set `s` writing `file` and the store.
fn store_set(
    dir: &Path,
    name: &str,
    address: &str,
    store_token: &str,
    file: &Path,
) -> (String, String) {
    let token_file = dir.join("store-token");
    std::fs::write(&token_file, store_token).unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let top = format!(
        "stores:\n  {name}:\n    kind: vault\n    address: {address}\n    mount: secret\n    auth: {{ token: {{ file: {} }} }}\n",
        token_file.display()
    );
    let sets = format!(
        "  - name: s\n    provider: dev\n    scopes: [api]\n    file: {{ path: {} }}\n    store: {{ name: {name}, path: tokenkeeper/s }}\n",
        file.display()
    );
    (top, sets)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_echoing_store_gets_no_secret_into_the_log_or_the_status() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let store_token = format!("hvs.{}", fastrand::u64(..));
    let (top, sets) = store_set(
        dir.path(),
        "hostile",
        &echoing_store().await,
        &store_token,
        &f,
    );
    let (mut d, cfg) = start(dir.path(), &config(&p, dir.path(), &top, &sets));
    // The store's error as the status shows it, once a write has been refused.
    let failed = || {
        status_json(&cfg)["stores"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("store hostile: write: refused") && e.contains("echo:"))
    };
    assert!(wait_until(PATIENCE, failed).await, "{}", d.output());
    let issued = p.issued_tokens();
    assert!(!issued.is_empty(), "{}", d.output());
    let mut secrets: Vec<&str> = issued.iter().map(String::as_str).collect();
    secrets.push(&store_token);
    let status_file = dir.path().join("state/status.json");
    let v = tokenkeeper(&["status", "-c", cfg.to_str().unwrap(), "--json"]).stdout;
    assert!(
        v.contains("[redacted]"),
        "the echo never reached the status: {v}"
    );
    assert_no_secret("status --json", &v, &secrets);
    assert_no_secret("status.json", &read(&status_file).unwrap(), &secrets);
    d.signal(Signal::SIGTERM);
    d.wait(PATIENCE).await;
    let log = d.output();
    assert!(log.contains("x-vault-token: [redacted]"), "{log}");
    assert_no_secret("the log", &log, &secrets);
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED")),
        "the store forged a log line:\n{log}"
    );
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

/// How much an endless store sends at most before it ends the body: far more than any answer
/// may be (256 KiB), and than [`ENDLESS_PEAK`], yet a bound, so that a daemon that reads it
/// all cannot take the test machine's memory with it.
const ENDLESS_BYTES: usize = 512 << 20;

/// The daemon's highest resident size allowed while an endless store answers it: a debug
/// build idles near 20 MiB; reading [`ENDLESS_BYTES`] whole would take them all.
const ENDLESS_PEAK_KIB: u64 = 96 << 10;

/// A KV v2 store on 127.0.0.1 that accepts the token lookup, then answers every other request
/// 200 with a chunked body that goes on (up to [`ENDLESS_BYTES`]) until the client hangs up.
async fn endless_store() -> String {
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Some(text) = read_request(&mut s).await else {
                    return;
                };
                if text.starts_with("GET /v1/auth/token/lookup-self") {
                    let body = r#"{"data":{"ttl":0,"renewable":false}}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                    return;
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let data = vec![b' '; 64 << 10];
                let chunk = [format!("{:x}\r\n", data.len()).as_bytes(), &data, b"\r\n"].concat();
                let mut sent = 0;
                while sent < ENDLESS_BYTES {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                    sent += data.len();
                }
                let _ = s.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    addr
}

/// A store answering with a body that never ends is cut off at the answer cap: the daemon's
/// memory stays small, and the set still writes its token file.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_answer_without_end_is_cut_off_at_the_cap() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let (top, sets) = store_set(
        dir.path(),
        "endless",
        &endless_store().await,
        "hvs.endless",
        &f,
    );
    let (mut d, cfg) = start(dir.path(), &config(&p, dir.path(), &top, &sets));
    // The read at start and a write after it have both met the endless body.
    let refused = || {
        status_json(&cfg)["stores"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("store endless"))
    };
    assert!(
        wait_until(PATIENCE, || read(&f).is_some() && refused()).await,
        "{}",
        d.output()
    );
    let peak = peak_rss_kib(d.child.id());
    eprintln!("PEAK RSS with an endless store: {peak} KiB");
    assert!(
        peak < ENDLESS_PEAK_KIB,
        "the daemon grew to {peak} KiB on an endless store answer:\n{}",
        d.output()
    );
    stop_clean(&mut d).await;
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

/// A store that accepts connections and never answers a byte: every request waits out the
/// store's timeout. Connections are held open (never read to the end) until the test ends.
async fn silent_store() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

/// How long after spawn every token file must exist with a store that never answers: far
/// below one store timeout (2 s here) and below the 14 s five sequential reads took, yet
/// generous for a loaded machine (files only write in well under 0.1 s).
const SILENT_STORE_FILES_WITHIN: Duration = Duration::from_millis(1500);

/// A store that never answers holds no token file back: the reads at start are bounded, the
/// sets issue their own tokens, the store's failure shows in the status, and stop revokes.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_never_answers_delays_no_token_file() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("store-token");
    std::fs::write(&token_file, "hvs.silent").unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let top = format!(
        "stores:\n  silent:\n    kind: vault\n    address: {}\n    mount: secret\n    timeout: 2s\n    auth: {{ token: {{ file: {} }} }}\n",
        silent_store().await,
        token_file.display()
    );
    let files: Vec<PathBuf> = (0..5)
        .map(|i| dir.path().join(format!("t{i}.token")))
        .collect();
    let sets: String = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            format!(
                "  - name: s{i}\n    provider: dev\n    scopes: [api]\n    file: {{ path: {} }}\n    store: {{ name: silent, path: tokenkeeper/s{i} }}\n",
                f.display()
            )
        })
        .collect();
    let cfg = write_config(dir.path(), &config(&p, dir.path(), &top, &sets));
    let spawned = Instant::now();
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[],
    );
    let all_written = || files.iter().all(|f| read(f).is_some());
    assert!(wait_until(PATIENCE, all_written).await, "{}", d.output());
    let took = spawned.elapsed();
    assert!(
        took <= SILENT_STORE_FILES_WITHIN,
        "every token file took {took:?} with a store that never answers:\n{}",
        d.output()
    );
    let failing = || {
        let v = status_json(&cfg);
        let stores = v["stores"].as_array().cloned().unwrap_or_default();
        stores.len() == 5 && stores.iter().all(|s| s["error"].as_str().is_some())
    };
    assert!(wait_until(PATIENCE, failing).await, "{}", d.output());
    let issued = p.issued_tokens();
    assert_eq!(issued.len(), 5, "{}", d.output());
    stop_clean(&mut d).await;
    let revoked = p.revoked_tokens();
    for t in &issued {
        assert!(revoked.contains(t), "{t} not revoked:\n{}", d.output());
    }
}
