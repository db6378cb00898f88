//! SIGHUP: the config is re-read and applied set by set, with the daemon still running.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

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
