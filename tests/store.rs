//! The `vault` store against a real OpenBao dev server: the built binary writes each set's
//! token to its file and to the store, with check-and-set, rides out a sealed store, logs in
//! with AppRole or a renewable token, and removes the store's copy when it revokes at stop.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;

use std::path::Path;
use std::time::Duration;

use common::bao::{self, Bao};
use common::*;
use nix::sys::signal::Signal;

fn set(name: &str, dir: &Path) -> String {
    format!(
        "  - name: {name}\n    provider: dev\n    scopes: [orders]\n    file: {{ path: {}/{name}.token }}\n    store: {{ name: bao, path: tokenkeeper/{name} }}\n",
        dir.display()
    )
}

/// A config whose store logs in with the root token, read from a 0600 file.
fn root_config(p: &tokenkeeper::devprovider::DevProvider, b: &Bao, dir: &Path) -> String {
    let token = bao::secret_file(dir, "bao-token", bao::ROOT);
    let top = bao::stores_yaml(
        b,
        &format!("{{ token: {{ file: {} }} }}", token.display()),
        "",
    );
    config(
        p,
        dir,
        &format!("shutdown_timeout: 15s\n{top}"),
        &set("orders", dir),
    )
}

/// The config file the daemon in `dir` was started with (the only `config-*.yaml` there).
fn status_config(dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("config-"))
        })
        .unwrap()
}

async fn wait_store(b: &Bao, path: &str, want: &str) -> bool {
    let deadline = std::time::Instant::now() + PATIENCE;
    while std::time::Instant::now() < deadline {
        if b.token(path).await.as_deref() == Some(want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn file_and_store_hold_the_token_and_stop_removes_and_destroys_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = Bao::start(dir.path()).await;
    let p = provider(Duration::from_secs(900)).await;
    let file = dir.path().join("orders.token");
    let mut d = Daemon::run(dir.path(), &root_config(&p, &b, dir.path()), 0o022);
    assert!(
        wait_until(PATIENCE, || read(&file).is_some()).await,
        "{}",
        d.output()
    );
    let first = read(&file).unwrap();
    assert!(
        wait_store(&b, "tokenkeeper/orders", &first).await,
        "{}",
        d.output()
    );
    let (version, data) = b.read("tokenkeeper/orders").await.unwrap();
    assert_eq!(data["token_type"], "Bearer");
    assert_eq!(data["set"], "orders");
    assert_eq!(data["scopes"], serde_json::json!(["orders"]));
    assert!(
        humantime::parse_rfc3339(data["expires_at"].as_str().unwrap()).is_ok(),
        "{data}"
    );
    let meta = b.metadata("tokenkeeper/orders").await;
    assert_eq!(meta["max_versions"], 2);
    assert_eq!(meta["custom_metadata"]["managed-by"], "tokenkeeper");
    assert_eq!(meta["custom_metadata"]["set"], "orders");

    // A rotation writes a new version over the one it read (check-and-set).
    d.signal(Signal::SIGUSR1);
    assert!(wait_until(PATIENCE, || read(&file).is_some_and(|t| t != first)).await);
    let second = read(&file).unwrap();
    assert!(
        wait_store(&b, "tokenkeeper/orders", &second).await,
        "{}",
        d.output()
    );
    assert_eq!(b.read("tokenkeeper/orders").await.unwrap().0, version + 1);
    assert!(!d.output().contains(&second), "a token reached the log");

    d.signal(Signal::SIGTERM);
    let status = d.wait(PATIENCE).await;
    assert!(status.success(), "{}", d.output());
    assert!(read(&file).is_none());
    assert!(
        b.read("tokenkeeper/orders").await.is_none(),
        "the store still serves a token"
    );
    let meta = b.metadata("tokenkeeper/orders").await;
    for (v, info) in meta["versions"].as_object().unwrap() {
        assert_eq!(info["destroyed"], true, "version {v} not destroyed: {meta}");
    }
    assert!(
        p.live_tokens().is_empty(),
        "live after stop: {:?}",
        p.live_tokens()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_check_and_set_conflict_is_reported_and_the_set_writes_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = Bao::start(dir.path()).await;
    let p = provider(Duration::from_secs(900)).await;
    let file = dir.path().join("orders.token");
    let mut d = Daemon::run(dir.path(), &root_config(&p, &b, dir.path()), 0o022);
    assert!(
        wait_until(PATIENCE, || read(&file).is_some()).await,
        "{}",
        d.output()
    );
    let first = read(&file).unwrap();
    assert!(wait_store(&b, "tokenkeeper/orders", &first).await);
    // Someone else writes the path behind tokenkeeper's back.
    let (s, v) = b
        .call(
            "POST",
            "secret/data/tokenkeeper/orders",
            Some(serde_json::json!({ "data": { "access_token": "intruder" } })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    d.signal(Signal::SIGUSR1);
    d.wait_for_log("check-and-set conflict").await;
    assert!(wait_until(PATIENCE, || read(&file).is_some_and(|t| t != first)).await);
    let second = read(&file).unwrap();
    assert!(
        wait_store(&b, "tokenkeeper/orders", &second).await,
        "{}",
        d.output()
    );
    d.signal(Signal::SIGTERM);
    assert!(d.wait(PATIENCE).await.success(), "{}", d.output());
    assert!(b.read("tokenkeeper/orders").await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sealed_store_does_not_hold_the_file_back_and_catches_up_when_unsealed() {
    let dir = tempfile::tempdir().unwrap();
    let b = Bao::start(dir.path()).await;
    let p = provider(Duration::from_secs(900)).await;
    let file = dir.path().join("orders.token");
    let mut d = Daemon::run(dir.path(), &root_config(&p, &b, dir.path()), 0o022);
    assert!(
        wait_until(PATIENCE, || read(&file).is_some()).await,
        "{}",
        d.output()
    );
    let first = read(&file).unwrap();
    assert!(wait_store(&b, "tokenkeeper/orders", &first).await);
    b.seal().await;
    d.signal(Signal::SIGUSR1);
    // The file moves on at once; the store write is retried.
    assert!(wait_until(PATIENCE, || read(&file).is_some_and(|t| t != first)).await);
    let second = read(&file).unwrap();
    d.wait_for_log("could not update the store").await;
    d.wait_for_log("HTTP 503").await;
    // The outage shows in `tokenkeeper status`, and so does the recovery.
    let cfg = status_config(dir.path());
    let status = || tokenkeeper(&["status", "-c", cfg.to_str().unwrap()]).stdout;
    assert!(
        wait_until(PATIENCE, || status()
            .contains("store: orders -> bao:tokenkeeper/orders: failing: "))
        .await,
        "{}",
        status()
    );
    b.unseal().await;
    assert!(
        wait_store(&b, "tokenkeeper/orders", &second).await,
        "{}",
        d.output()
    );
    d.wait_for_log("the store took the write again").await;
    assert!(
        wait_until(PATIENCE, || status()
            .contains("bao:tokenkeeper/orders: up to date"))
        .await,
        "{}",
        status()
    );
    d.signal(Signal::SIGTERM);
    assert!(d.wait(PATIENCE).await.success(), "{}", d.output());
    assert!(b.read("tokenkeeper/orders").await.is_none());
    assert!(p.live_tokens().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn approle_logs_in_and_logs_in_again_before_the_token_expires() {
    let dir = tempfile::tempdir().unwrap();
    let b = Bao::start(dir.path()).await;
    // Tokens that live 3 s: tokenkeeper must log in again every 2 s to keep writing.
    let (role_id, secret_id) = b.approle("3s").await;
    let rid = bao::secret_file(dir.path(), "role-id", &role_id);
    let sid = bao::secret_file(dir.path(), "secret-id", &secret_id);
    let p = provider(Duration::from_secs(900)).await;
    let top = bao::stores_yaml(
        &b,
        &format!(
            "{{ approle: {{ role_id: {{ file: {} }}, secret_id: {{ file: {} }} }} }}",
            rid.display(),
            sid.display()
        ),
        "",
    );
    let cfg = config(&p, dir.path(), &top, &set("orders", dir.path()));
    let file = dir.path().join("orders.token");
    let mut d = Daemon::run(dir.path(), &cfg, 0o022);
    assert!(
        wait_until(PATIENCE, || read(&file).is_some()).await,
        "{}",
        d.output()
    );
    let first = read(&file).unwrap();
    assert!(
        wait_store(&b, "tokenkeeper/orders", &first).await,
        "{}",
        d.output()
    );
    // Well past the first login's TTL.
    tokio::time::sleep(Duration::from_secs(5)).await;
    d.signal(Signal::SIGUSR1);
    assert!(wait_until(PATIENCE, || read(&file).is_some_and(|t| t != first)).await);
    let second = read(&file).unwrap();
    assert!(
        wait_store(&b, "tokenkeeper/orders", &second).await,
        "{}",
        d.output()
    );
    let logins = d
        .output()
        .matches("logged in to the store with AppRole")
        .count();
    assert!(logins >= 2, "{logins} logins:\n{}", d.output());
    assert!(
        !d.output().contains(&secret_id),
        "the secret_id reached the log"
    );
    d.signal(Signal::SIGTERM);
    assert!(d.wait(PATIENCE).await.success(), "{}", d.output());
    assert!(b.read("tokenkeeper/orders").await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewable_token_is_renewed_while_idle() {
    let dir = tempfile::tempdir().unwrap();
    let b = Bao::start(dir.path()).await;
    let token = b.renewable_token("3s").await;
    let tf = bao::secret_file(dir.path(), "bao-token", &token);
    let p = provider(Duration::from_secs(900)).await;
    let top = bao::stores_yaml(
        &b,
        &format!("{{ token: {{ file: {} }} }}", tf.display()),
        "",
    );
    let cfg = config(&p, dir.path(), &top, &set("orders", dir.path()));
    let file = dir.path().join("orders.token");
    let mut d = Daemon::run(dir.path(), &cfg, 0o022);
    assert!(
        wait_until(PATIENCE, || read(&file).is_some()).await,
        "{}",
        d.output()
    );
    let first = read(&file).unwrap();
    assert!(
        wait_store(&b, "tokenkeeper/orders", &first).await,
        "{}",
        d.output()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    d.wait_for_log("renewed the store token").await;
    d.signal(Signal::SIGUSR1);
    assert!(wait_until(PATIENCE, || read(&file).is_some_and(|t| t != first)).await);
    let second = read(&file).unwrap();
    assert!(
        wait_store(&b, "tokenkeeper/orders", &second).await,
        "{}",
        d.output()
    );
    d.signal(Signal::SIGTERM);
    assert!(d.wait(PATIENCE).await.success(), "{}", d.output());
    assert!(
        !d.output().contains(&token),
        "the store token reached the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_only_set_writes_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let b = Bao::start(dir.path()).await;
    let p = provider(Duration::from_secs(900)).await;
    let token = bao::secret_file(dir.path(), "bao-token", bao::ROOT);
    let top = bao::stores_yaml(
        &b,
        &format!("{{ token: {{ file: {} }} }}", token.display()),
        "",
    );
    let sets = "  - name: fleet\n    provider: dev\n    scopes: [orders]\n    store: { name: bao, path: tokenkeeper/fleet }\n";
    let mut d = Daemon::run(dir.path(), &config(&p, dir.path(), &top, sets), 0o022);
    d.wait_for_log("token written to the store").await;
    let issued = p.issued_tokens();
    assert_eq!(issued.len(), 1);
    assert!(wait_store(&b, "tokenkeeper/fleet", &issued[0]).await);
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".token"))
        .collect();
    assert!(files.is_empty(), "{files:?}");
    d.signal(Signal::SIGTERM);
    assert!(d.wait(PATIENCE).await.success(), "{}", d.output());
    assert!(b.read("tokenkeeper/fleet").await.is_none());
    assert!(p.live_tokens().is_empty());
}
