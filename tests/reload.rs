//! SIGHUP: the config is re-read and applied set by set, with the daemon still running.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use tokenkeeper::devprovider::DevProvider;

/// Short grace so superseded tokens are revoked within the test.
const TOP: &str = "defaults:\n  revoke_superseded_after: 200ms";

#[tokio::test(flavor = "multi_thread")]
async fn reload_adds_removes_changes_and_leaves_the_rest_alone() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let d_ = dir.path();
    let (keep, gone, scoped, moved, moved_to, added) = (
        d_.join("keep.token"),
        d_.join("gone.token"),
        d_.join("scoped.token"),
        d_.join("moved.token"),
        d_.join("elsewhere/moved.json"),
        d_.join("added.token"),
    );
    let cfg_path = d_.join("config.yaml");
    let before = set("keep", "api", &keep, "")
        + &set("gone", "api", &gone, "")
        + &set("scoped", "api", &scoped, "")
        + &set("moved", "api", &moved, "");
    std::fs::write(&cfg_path, config(&p, d_, TOP, &before)).unwrap();
    let mut d = Daemon::spawn(d_, &["run", "-c", cfg_path.to_str().unwrap()], 0o022, &[]);
    let files = [&keep, &gone, &scoped, &moved];
    assert!(
        wait_until(PATIENCE, || files.iter().all(|f| f.exists())).await,
        "{}",
        d.output()
    );
    let (t_keep, t_gone, t_scoped, t_moved) = (
        read(&keep).unwrap(),
        read(&gone).unwrap(),
        read(&scoped).unwrap(),
        read(&moved).unwrap(),
    );
    let issued_before = p.issued_tokens().len();

    let after = set("keep", "api", &keep, "")
        + &set("scoped", "api, vouchers", &scoped, "")
        + &set("moved", "api", &moved_to, ", format: json")
        + &set("added", "orders", &added, "");
    std::fs::write(&cfg_path, config(&p, d_, TOP, &after)).unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_for_log("reloaded the configuration").await;

    // Added: a new token in a new file.
    assert!(
        wait_until(PATIENCE, || added.exists()).await,
        "{}",
        d.output()
    );
    assert_eq!(p.scopes_of(&read(&added).unwrap()).unwrap(), vec!["orders"]);
    // Removed: revoked, file gone.
    assert!(
        wait_until(PATIENCE, || !gone.exists()).await,
        "{}",
        d.output()
    );
    assert!(p.revoked_tokens().contains(&t_gone));
    // New scopes: re-issued in place, the old token revoked after its grace.
    assert!(
        wait_until(PATIENCE, || read(&scoped).is_some_and(|t| t != t_scoped)).await,
        "{}",
        d.output()
    );
    assert_eq!(
        p.scopes_of(&read(&scoped).unwrap()).unwrap(),
        vec!["api", "vouchers"]
    );
    assert!(wait_until(PATIENCE, || p.revoked_tokens().contains(&t_scoped)).await);
    // Only the file changed: the same token, rewritten at the new path and format.
    assert!(
        wait_until(PATIENCE, || moved_to.exists()).await,
        "{}",
        d.output()
    );
    let v: serde_json::Value = serde_json::from_str(&read(&moved_to).unwrap()).unwrap();
    assert_eq!(v["access_token"], t_moved.as_str());
    assert!(
        wait_until(PATIENCE, || !moved.exists()).await,
        "old path left behind"
    );
    assert!(p.is_live(&t_moved));
    // Unchanged: untouched.
    assert_eq!(read(&keep).unwrap(), t_keep);
    assert!(p.is_live(&t_keep));
    // Exactly two new tokens: the added set and the re-scoped one.
    assert_eq!(p.issued_tokens().len(), issued_before + 2);

    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(PATIENCE).await.code(), Some(0), "{}", d.output());
    assert!(p.live_tokens().is_empty(), "{}", d.output());
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_config_is_refused_and_the_daemon_runs_on() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg_path = dir.path().join("config.yaml");
    std::fs::write(
        &cfg_path,
        config(&p, dir.path(), TOP, &set("s", "api", &f, "")),
    )
    .unwrap();
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg_path.to_str().unwrap()],
        0o022,
        &[],
    );
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    let tok = read(&f).unwrap();
    std::fs::write(
        &cfg_path,
        config(&p, dir.path(), TOP, &set("s", "api", &f, ", mode: 640")),
    )
    .unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_for_log("reload refused").await;
    assert!(
        d.output().contains("mode must be a quoted octal string"),
        "{}",
        d.output()
    );
    // Still running, same token, still answering signals.
    assert_eq!(read(&f).unwrap(), tok);
    assert!(d.child.try_wait().unwrap().is_none());
    d.signal(Signal::SIGUSR1);
    assert!(
        wait_until(PATIENCE, || read(&f).is_some_and(|t| t != tok)).await,
        "{}",
        d.output()
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(PATIENCE).await.code(), Some(0), "{}", d.output());
    assert!(p.live_tokens().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_provider_replaces_its_sets_tokens() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg_path = dir.path().join("config.yaml");
    let sets = set("s", "api", &f, "");
    std::fs::write(&cfg_path, config(&p, dir.path(), TOP, &sets)).unwrap();
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg_path.to_str().unwrap()],
        0o022,
        &[],
    );
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    let tok = read(&f).unwrap();
    std::fs::write(
        &cfg_path,
        config_with(&p, dir.path(), "timeout: 5s", TOP, &sets),
    )
    .unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_for_log("reloaded the configuration").await;
    assert!(
        wait_until(PATIENCE, || read(&f)
            .is_some_and(|t| t != tok && p.is_live(&t)))
        .await,
        "{}",
        d.output()
    );
    assert!(p.revoked_tokens().contains(&tok));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(PATIENCE).await.code(), Some(0), "{}", d.output());
    assert!(p.live_tokens().is_empty());
}

/// A reload that removes the only set still waiting for a token makes the daemon ready: every
/// set left has one, though none of them changed.
#[tokio::test(flavor = "multi_thread")]
async fn removing_the_set_that_held_readiness_back_makes_the_daemon_ready() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let d_ = dir.path();
    let (good, stuck) = (d_.join("good.token"), d_.join("stuck.token"));
    let cfg_path = d_.join("config.yaml");
    // The provider refuses scopes outside its documented list: `stuck` never gets a token.
    let before = set("good", "api", &good, "") + &set("stuck", "no_such_scope", &stuck, "");
    std::fs::write(&cfg_path, config(&p, d_, TOP, &before)).unwrap();
    let mut d = Daemon::spawn(d_, &["run", "-c", cfg_path.to_str().unwrap()], 0o022, &[]);
    assert!(
        wait_until(PATIENCE, || good.exists()).await,
        "{}",
        d.output()
    );
    d.wait_for_log("provider refused to issue a token").await;
    assert!(!d.output().contains("ready: every set"), "{}", d.output());

    std::fs::write(
        &cfg_path,
        config(&p, d_, TOP, &set("good", "api", &good, "")),
    )
    .unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_for_log("reloaded the configuration").await;
    d.wait_for_log("ready: every set has a valid token").await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(PATIENCE).await.code(), Some(0), "{}", d.output());
}

/// How many sets move to another provider in the tests below: enough that revoking them one
/// after the other takes far longer than revoking them together.
const MOVING_SETS: usize = 20;

/// A config with two providers, `a` and `b` (each a dev provider), and [`MOVING_SETS`] sets
/// on `on`, their files in `dir`.
fn two_providers(
    a: &DevProvider,
    b: &DevProvider,
    dir: &std::path::Path,
    top: &str,
    on: &str,
) -> String {
    let provider = |name: &str, p: &DevProvider| {
        format!(
            "  {name}:\n    kind: voucherify\n    base_url: {}\n    app_id: {{ env: TK_TEST_APP_ID }}\n    app_token: {{ env: TK_TEST_APP_TOKEN }}\n    issue_rate: 10000/s\n    issue_burst: 10000\n",
            p.base_url()
        )
    };
    let sets: String = (0..MOVING_SETS)
        .map(|i| {
            format!(
                "  - name: s{i}\n    provider: {on}\n    scopes: [api]\n    file: {{ path: {} }}\n",
                dir.join(format!("s{i}.token")).display()
            )
        })
        .collect();
    format!(
        "state_dir: {}/state\n{top}\nproviders:\n{}{}scope_sets:\n{sets}",
        dir.display(),
        provider("a", a),
        provider("b", b)
    )
}

/// Start the daemon on `yaml` (sets on `a`) and wait until every set has its file.
async fn start_on_a(dir: &std::path::Path, cfg_path: &std::path::Path, yaml: &str) -> Daemon {
    std::fs::write(cfg_path, yaml).unwrap();
    let d = Daemon::spawn(dir, &["run", "-c", cfg_path.to_str().unwrap()], 0o022, &[]);
    let files: Vec<_> = (0..MOVING_SETS)
        .map(|i| dir.join(format!("s{i}.token")))
        .collect();
    assert!(
        wait_until(PATIENCE, || files.iter().all(|f| f.exists())).await,
        "{}",
        d.output()
    );
    d
}

/// A stop that comes while a reload waits for the sets moving to another provider to revoke
/// their tokens (a slow provider) is not queued behind it: it keeps its own `shutdown_timeout`,
/// counted from the signal, and what it could not revoke stays in the journal for `revoke`.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_during_a_reload_keeps_its_own_deadline() {
    let (a, b) = (
        provider(Duration::from_secs(900)).await,
        provider(Duration::from_secs(900)).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let d_ = dir.path();
    let cfg_path = d_.join("config.yaml");
    let top = "shutdown_timeout: 4s";
    let mut d = start_on_a(d_, &cfg_path, &two_providers(&a, &b, d_, top, "a")).await;
    let minted = a.issued_tokens();
    assert_eq!(minted.len(), MOVING_SETS);

    // Both slow: queued behind the reload, the stop would also wait for the new sets, which
    // would revoke on `b` what they had just been issued.
    a.set_revoke_delay(Duration::from_secs(8));
    b.set_revoke_delay(Duration::from_secs(8));
    std::fs::write(&cfg_path, two_providers(&a, &b, d_, top, "b")).unwrap();
    d.signal(Signal::SIGHUP);
    // Let the reload get to the revocations (a config this small loads in milliseconds); the
    // stop below must not wait for them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    d.signal(Signal::SIGTERM);
    let stopped = std::time::Instant::now();
    let status = d.wait(PATIENCE).await;
    let took = stopped.elapsed();
    // `shutdown_timeout` (4 s) from the signal, and a margin for a loaded machine; queued
    // behind the reload, the stop took 7 s and more.
    assert!(
        took < Duration::from_secs(6),
        "the stop took {took:?}:\n{}",
        d.output()
    );
    assert!(status.code().is_some(), "{status:?}\n{}", d.output());

    // Nothing lost: every token still live at either provider is in the journal.
    let journaled: Vec<String> = tokenkeeper::journal::load(&d_.join("state"))
        .unwrap()
        .into_iter()
        .map(|e| e.token.expose().to_string())
        .collect();
    let live: Vec<String> = a.live_tokens().into_iter().chain(b.live_tokens()).collect();
    assert!(!live.is_empty(), "an 8 s revoke cannot have finished");
    for t in &live {
        assert!(
            journaled.contains(t),
            "a live token left the journal\n{}",
            d.output()
        );
    }
    // And `tokenkeeper revoke` revokes them.
    a.set_revoke_delay(Duration::ZERO);
    b.set_revoke_delay(Duration::ZERO);
    let out = run_bounded(&["revoke", "-c", cfg_path.to_str().unwrap()], None);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(a.live_tokens().is_empty(), "{}{}", out.stdout, out.stderr);
    assert!(b.live_tokens().is_empty(), "{}", d.output());
    assert!(a.violations().is_empty(), "{:?}", a.violations());
    assert!(b.violations().is_empty(), "{:?}", b.violations());
}

/// The sets a reload moves to another provider revoke their old tokens all at once (within the
/// provider's `max_concurrent_requests`), not one after another, each waiting for the last.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_revokes_the_sets_it_moves_concurrently() {
    let (a, b) = (
        provider(Duration::from_secs(900)).await,
        provider(Duration::from_secs(900)).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let d_ = dir.path();
    let cfg_path = d_.join("config.yaml");
    let mut d = start_on_a(d_, &cfg_path, &two_providers(&a, &b, d_, "", "a")).await;
    let minted = a.issued_tokens();

    a.set_revoke_delay(Duration::from_secs(1));
    std::fs::write(&cfg_path, two_providers(&a, &b, d_, "", "b")).unwrap();
    d.signal(Signal::SIGHUP);
    let hup = std::time::Instant::now();
    d.wait_for_log("reloaded the configuration").await;
    let took = hup.elapsed();
    // One after another, 20 revocations of 1 s each took 20 s; together, about 2 s (16 at a
    // time by default). Far from both, so a loaded machine does not make it flake.
    assert!(
        took < Duration::from_secs(10),
        "the reload took {took:?}:\n{}",
        d.output()
    );
    for t in &minted {
        assert!(!a.is_live(t), "{}", d.output());
    }
    let files: Vec<_> = (0..MOVING_SETS)
        .map(|i| d_.join(format!("s{i}.token")))
        .collect();
    assert!(
        wait_until(PATIENCE, || files
            .iter()
            .all(|f| read(f).is_some_and(|t| b.is_live(&t))))
        .await,
        "{}",
        d.output()
    );
    stop_clean(&mut d).await;
    assert!(a.live_tokens().is_empty() && b.live_tokens().is_empty());
}

/// A stop that cuts short a reload still waiting for a set to hand its tokens over (it waits
/// for its token request under way) revokes them all the same: the successor is started with
/// what it is handed, and stopped with the others.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_during_a_handover_still_revokes_what_is_handed_over() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let d_ = dir.path();
    let (before, after) = (d_.join("before.token"), d_.join("after.token"));
    let cfg_path = d_.join("config.yaml");
    let top = "shutdown_timeout: 10s";
    std::fs::write(
        &cfg_path,
        config(&p, d_, top, &set("s", "api", &before, "")),
    )
    .unwrap();
    let mut d = Daemon::spawn(d_, &["run", "-c", cfg_path.to_str().unwrap()], 0o022, &[]);
    assert!(
        wait_until(PATIENCE, || before.exists()).await,
        "{}",
        d.output()
    );
    // A rotation whose answer takes 3 s: the token is minted at once, and the set, told to
    // hand over, waits for the answer first.
    p.set_issue_delay(Duration::from_secs(3));
    d.signal(Signal::SIGUSR1);
    assert!(wait_until(PATIENCE, || p.issued_tokens().len() == 2).await);
    std::fs::write(&cfg_path, config(&p, d_, top, &set("s", "api", &after, ""))).unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_for_log("applying the new configuration").await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(PATIENCE).await.code(), Some(0), "{}", d.output());
    assert!(
        d.output().contains("the reload is cut short"),
        "{}",
        d.output()
    );
    assert!(p.live_tokens().is_empty(), "{}", d.output());
    assert!(!before.exists() && !after.exists(), "{}", d.output());
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

/// The stop's summary counts what the stop did: a set a reload removed earlier (its token
/// revoked and logged then) is not counted again, nor is any set as a set revoked at stop
/// unless a token of it was.
#[tokio::test(flavor = "multi_thread")]
async fn the_stop_summary_counts_only_what_the_stop_revoked() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let d_ = dir.path();
    let (a, b, gone) = (
        d_.join("a.token"),
        d_.join("b.token"),
        d_.join("gone.token"),
    );
    let cfg_path = d_.join("config.yaml");
    let before =
        set("a", "api", &a, "") + &set("b", "api", &b, "") + &set("gone", "api", &gone, "");
    std::fs::write(&cfg_path, config(&p, d_, TOP, &before)).unwrap();
    let mut d = Daemon::spawn(d_, &["run", "-c", cfg_path.to_str().unwrap()], 0o022, &[]);
    assert!(
        wait_until(PATIENCE, || a.exists() && b.exists() && gone.exists()).await,
        "{}",
        d.output()
    );
    let t_gone = read(&gone).unwrap();
    let after = set("a", "api", &a, "") + &set("b", "api", &b, "");
    std::fs::write(&cfg_path, config(&p, d_, TOP, &after)).unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_for_log("reloaded the configuration").await;
    assert!(
        wait_until(PATIENCE, || p.revoked_tokens().contains(&t_gone)
            && !gone.exists())
        .await,
        "{}",
        d.output()
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(PATIENCE).await.code(), Some(0), "{}", d.output());
    let out = d.output();
    assert!(
        out.contains("stopped: revoked 2 tokens across 2 sets"),
        "{out}"
    );
    assert!(p.live_tokens().is_empty());
}
