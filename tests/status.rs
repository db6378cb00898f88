//! What the daemon tells others: `tokenkeeper status` from another process, the Prometheus
//! textfile and listener, and the sd_notify messages systemd acts on. The built binary against
//! the strict development provider on 127.0.0.1, as in tests/daemon.rs.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

fn set(name: &str, path: &Path) -> String {
    format!(
        "  - name: {name}\n    provider: dev\n    scopes: [api]\n    file: {{ path: {} }}\n",
        path.display()
    )
}

fn status(cfg: &Path, json: bool) -> Output {
    let mut args = vec!["status", "-c", cfg.to_str().unwrap()];
    if json {
        args.push("--json");
    }
    tokenkeeper(&args)
}

fn status_json(cfg: &Path) -> (Option<i32>, serde_json::Value) {
    let o = status(cfg, true);
    let v = serde_json::from_str(&o.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{}{}", o.stdout, o.stderr));
    (o.code, v)
}

/// `status --json`, or Null while the daemon has not written its first status yet.
fn status_json_soon(cfg: &Path) -> serde_json::Value {
    serde_json::from_str(&status(cfg, true).stdout).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_each_set_while_running_and_says_when_it_stopped() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("orders.token");
    let b = dir.path().join("reports.token");
    // node_exporter's folder exists before either program runs; tokenkeeper does not make it.
    std::fs::create_dir(dir.path().join("metrics")).unwrap();
    let prom = dir.path().join("metrics/tokenkeeper.prom");
    let cfg = write_config(
        dir.path(),
        &config(
            &p,
            dir.path(),
            &format!("metrics: {{ textfile: {} }}", prom.display()),
            &(set("orders-sync", &a) + &set("reports", &b)),
        ),
    );
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[],
    );
    assert!(
        wait_until(PATIENCE, || a.exists() && b.exists()).await,
        "{}",
        d.output()
    );
    // The status file follows the token files within moments.
    assert!(
        wait_until(PATIENCE, || {
            let v = status_json_soon(&cfg);
            v["sets"]
                .as_array()
                .is_some_and(|s| s.iter().all(|s| s["state"] == "fresh") && v["phase"] == "running")
        })
        .await,
        "{}",
        d.output()
    );
    let (code, v) = status_json(&cfg);
    assert_eq!(code, Some(0));
    assert_eq!(v["running"], true);
    assert_eq!(v["pid"], d.child.id());
    let orders = &v["sets"][0];
    assert_eq!(orders["name"], "orders-sync");
    assert_eq!(orders["provider"], "dev");
    assert_eq!(orders["tokens_issued"], 1);
    assert_eq!(orders["live_tokens"], 1);
    assert!(orders["last_error"].is_null());
    let token = read(&a).unwrap();
    assert_eq!(
        orders["fingerprint"],
        tokenkeeper::secret::fingerprint(&token).as_str()
    );
    let left = orders["expires_in_secs"].as_i64().unwrap();
    assert!((800..=900).contains(&left), "{left}");
    let next = orders["next_refresh_in_secs"].as_i64().unwrap();
    assert!((400..=600).contains(&next), "{next}");

    let table = status(&cfg, false);
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(
        lines[0].starts_with(&format!("tokenkeeper running (pid {}", d.child.id())),
        "{}",
        table.stdout
    );
    assert!(
        lines[0].contains("2 tokens fresh, next refresh in"),
        "{}",
        table.stdout
    );
    assert!(lines[1].starts_with("SET "), "{}", table.stdout);
    assert!(
        lines[2].starts_with("orders-sync  dev "),
        "{}",
        table.stdout
    );
    assert!(lines[2].contains(" fresh "), "{}", table.stdout);
    // Never the token itself, only its fingerprint.
    assert!(!table.stdout.contains(&token));
    let raw_status = std::fs::read_to_string(dir.path().join("state/status.json")).unwrap();
    assert!(!raw_status.contains(&token));

    // The textfile, for node_exporter.
    let text = read(&prom).unwrap_or_default();
    assert!(text.contains("tokenkeeper_up 1"), "{text}");
    assert!(
        text.contains(
            "tokenkeeper_token_expiry_timestamp_seconds{set=\"orders-sync\",provider=\"dev\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "tokenkeeper_refresh_total{set=\"reports\",provider=\"dev\",result=\"success\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("tokenkeeper_live_tokens{provider=\"dev\"} 2"),
        "{text}"
    );
    assert_eq!(mode(&prom), 0o644);

    assert!(
        !d.output().contains("cannot publish status"),
        "{}",
        d.output()
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(PATIENCE).await.code(), Some(0), "{}", d.output());
    let (code, v) = status_json(&cfg);
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(v["running"], false);
    assert_eq!(v["liveness"], "stopped");
    assert_eq!(v["sets"][0]["state"], "stopped");
    assert_eq!(v["sets"][0]["tokens_revoked"], 1);
    assert_eq!(v["sets"][0]["live_tokens"], 0);
    let table = status(&cfg, false);
    assert_eq!(table.code, Some(3));
    assert!(
        table
            .stdout
            .starts_with("tokenkeeper is not running: it stopped cleanly"),
        "{}",
        table.stdout
    );
    let text = read(&prom).unwrap_or_default();
    assert!(text.contains("tokenkeeper_up 0"), "{text}");
    assert!(
        text.contains("tokenkeeper_live_tokens{provider=\"dev\"} 0"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_failures_with_the_providers_reason_and_a_killed_daemon_as_gone() {
    let p = provider(Duration::from_secs(900)).await;
    p.set_app_token("rotated-elsewhere");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = write_config(dir.path(), &config(&p, dir.path(), "", &set("billing", &f)));
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[],
    );
    assert!(
        wait_until(PATIENCE, || status_json_soon(&cfg)["sets"][0]["state"]
            == "failing")
        .await,
        "{}",
        d.output()
    );
    let (code, v) = status_json(&cfg);
    // Running, though not ready: the daemon is there, retrying.
    assert_eq!(code, Some(0));
    assert_eq!(v["phase"], "starting");
    let set = &v["sets"][0];
    assert!(
        set["last_error"].as_str().unwrap().contains("HTTP 401"),
        "{set}"
    );
    assert_eq!(set["issue_failures"], 1);
    assert!(set["expires_at"].is_null());
    assert!(set["next_refresh_in_secs"].as_i64().unwrap() >= 20, "{set}");
    let table = status(&cfg, false);
    assert!(
        table
            .stdout
            .contains("starting: 0 of 1 set has a token; billing failing"),
        "{}",
        table.stdout
    );

    // Killed without a chance to revoke or say goodbye.
    d.signal(Signal::SIGKILL);
    let _ = d.wait(PATIENCE).await;
    let o = status(&cfg, false);
    assert_eq!(o.code, Some(3));
    assert!(
        o.stdout.contains("is gone without a clean stop"),
        "{}",
        o.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_without_a_status_file_says_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "providers:\n  dev:\n    kind: voucherify\n    base_url: http://127.0.0.1:9\n    app_id: { credential: none }\n    app_token: { credential: none }\nscope_sets:\n  - name: s\n    provider: dev\n    scopes: [api]\n    file: { path: /run/tk-test/s.token }\n",
    );
    let o = status(&cfg, false);
    assert_eq!(o.code, Some(3));
    assert!(
        o.stderr
            .contains("tokenkeeper is not running: no status file at"),
        "{}",
        o.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_served_on_a_loopback_listener() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = write_config(
        dir.path(),
        &config(
            &p,
            dir.path(),
            "metrics: { listen: \"127.0.0.1:0\" }",
            &set("s", &f),
        ),
    );
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[],
    );
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    d.wait_for_log("serving metrics at /metrics").await;
    let out = d.output();
    let addr = out
        .lines()
        .find(|l| l.contains("serving metrics"))
        .and_then(|l| l.split("address=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .unwrap()
        .to_string();
    // The file is written a moment before the set reports itself fresh: poll, don't race.
    let fresh = "tokenkeeper_set_state{set=\"s\",provider=\"dev\",state=\"fresh\"} 1";
    let start = std::time::Instant::now();
    let mut body = http_get(&addr, "/metrics").await;
    while !body.contains(fresh) && start.elapsed() < PATIENCE {
        tokio::time::sleep(Duration::from_millis(20)).await;
        body = http_get(&addr, "/metrics").await;
    }
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains(fresh), "{body}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(PATIENCE).await.code(), Some(0), "{}", d.output());
}

/// A metrics port another program holds does not stop the tokens: the daemon runs on, and
/// says so in every place an operator looks.
#[tokio::test(flavor = "multi_thread")]
async fn a_taken_metrics_port_is_shown_in_status_and_tokens_flow() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = write_config(
        dir.path(),
        &config(
            &p,
            dir.path(),
            &format!("metrics: {{ listen: \"{addr}\" }}"),
            &set("s", &f),
        ),
    );
    let mut sock = NotifySocket::bind(dir.path());
    let notify = sock.path.to_str().unwrap().to_string();
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[("NOTIFY_SOCKET", &notify)],
    );
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    assert!(
        wait_until(PATIENCE, || {
            sock.drain();
            sock.received.iter().any(|m| {
                m.starts_with("STATUS=1 token fresh") && m.ends_with("; metrics listener down")
            })
        })
        .await,
        "{:?}\n{}",
        sock.received,
        d.output()
    );
    let (code, json) = status_json(&cfg);
    assert_eq!(code, Some(0));
    let why = json["metrics_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        why.contains(&format!("cannot listen for metrics scrapes on {addr}")),
        "{json}"
    );
    let table = status(&cfg, false);
    assert!(
        table
            .stdout
            .contains("metrics: not serving: cannot listen for metrics scrapes on"),
        "{}",
        table.stdout
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(PATIENCE).await.code(), Some(0), "{}", d.output());
    drop(taken);
}

async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The notifications systemd acts on: READY=1 only once every file is in place, STATUS= kept
/// current, WATCHDOG=1 when asked for, STOPPING=1 at stop.
#[tokio::test(flavor = "multi_thread")]
async fn systemd_hears_ready_only_after_every_file_exists_then_status_watchdog_and_stopping() {
    let p = provider(Duration::from_secs(900)).await;
    // The second set's first answers fail, so readiness must wait for its retry.
    p.fail_next_issues(1, 503, None);
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.token");
    let b = dir.path().join("b.token");
    let cfg = write_config(
        dir.path(),
        &config(&p, dir.path(), "", &(set("a", &a) + &set("b", &b))),
    );
    let mut sock = NotifySocket::bind(dir.path());
    let notify = sock.path.to_str().unwrap().to_string();
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "400000")],
    );
    let mut ready_seen = false;
    let got_ready = wait_until(PATIENCE, || {
        for m in sock.drain() {
            if m == "READY=1" {
                // Checked the moment it arrives: dependants start now.
                assert!(
                    a.exists() && b.exists(),
                    "READY=1 before every token file existed"
                );
                ready_seen = true;
            }
        }
        ready_seen
    })
    .await;
    assert!(got_ready, "{:?}\n{}", sock.received, d.output());
    assert!(
        wait_until(PATIENCE, || {
            sock.drain();
            sock.received
                .iter()
                .any(|m| m.starts_with("STATUS=2 tokens fresh, next refresh in"))
                && sock.received.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2
        })
        .await,
        "{:?}",
        sock.received
    );
    assert!(
        sock.received
            .iter()
            .any(|m| m.starts_with("STATUS=starting: ")),
        "{:?}",
        sock.received
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(PATIENCE).await.code(), Some(0), "{}", d.output());
    sock.drain();
    let stopping = sock.received.iter().position(|m| m == "STOPPING=1");
    assert!(stopping.is_some(), "{:?}", sock.received);
    assert_eq!(
        sock.received.iter().filter(|m| *m == "READY=1").count(),
        1,
        "{:?}",
        sock.received
    );
    assert_eq!(
        sock.received.last().map(String::as_str),
        Some("STATUS=stopped")
    );
}

/// Outside journald (no JOURNAL_STREAM, or one naming another file) the log is plain lines.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_journal_stream_the_log_is_plain_lines_on_stderr() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = write_config(dir.path(), &config(&p, dir.path(), "", &set("s", &f)));
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        // Inherited from a parent under systemd, but our stderr is a file, not that stream.
        &[("JOURNAL_STREAM", "8:12345")],
    );
    d.wait_for_log("token written").await;
    let out = d.output();
    assert!(out.contains("set=s"), "{out}");
    assert!(out.contains("expires_at="), "{out}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(PATIENCE).await.code(), Some(0), "{}", d.output());
}
