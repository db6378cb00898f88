//! The `vault` store against a real OpenBao dev server: the built binary writes each set's
//! token to its file and to the store, with check-and-set, rides out a sealed store, logs in
//! with AppRole or a renewable token, and removes the store's copy when it revokes at stop.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;
mod fakes;

use std::path::Path;
use std::time::Duration;

use common::bao::{self, Bao};
use common::*;
use fakes::oauth2::OAuth2Fake;
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
    // The store's requests run on a thread of their own (src/store/io.rs).
    let threads = d.threads();
    assert!(threads.iter().any(|t| t == "tk-store-io"), "{threads:?}");
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
    // Removed whole: no version of it, destroyed or not, nor its metadata, is left.
    let (status, meta) = b
        .call("GET", "secret/metadata/tokenkeeper/orders", None)
        .await;
    assert_eq!(status, 404, "left in the store: {meta}");
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
    // The policy the docs give lets the start list the sets' folder.
    assert!(!d.output().contains("could not list"), "{}", d.output());
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

/// A config for instance `n` of one set, `api`, of an OAuth 2.0 provider at `idp`, writing an
/// `env` file of its own and the store path `tokenkeeper/api`. Only `state_dir` and the file
/// differ between instances, as on separate machines.
fn api_config(
    idp: &OAuth2Fake,
    b: &Bao,
    dir: &Path,
    n: usize,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let own = dir.join(format!("i{n}"));
    std::fs::create_dir_all(&own).unwrap();
    let token = bao::secret_file(dir, "bao-token", bao::ROOT);
    let stores = bao::stores_yaml(
        b,
        &format!("{{ token: {{ file: {} }} }}", token.display()),
        "",
    );
    let file = own.join("api.env");
    let yaml = format!(
        "state_dir: {own}/state\nshutdown_timeout: 10s\n{stores}defaults:\n  refresh: {{ at: 50%, jitter: 0%, min_interval: 3s }}\nproviders:\n  idp:\n    kind: oauth2\n    issuer: {issuer}\n    client_id: tk\n    client_secret: {{ env: TK_IDP_SECRET }}\n    auth_method: client_secret_post\nscope_sets:\n  - name: api\n    provider: idp\n    scopes: [orders]\n    file: {{ path: {file}, format: env }}\n    store: {{ name: bao, path: tokenkeeper/api }}\n",
        own = own.display(),
        issuer = idp.issuer(),
        file = file.display(),
    );
    (write_config(&own, &yaml), file)
}

/// Run a first instance (`api_config`'s number 0) until its token is in the store, then
/// SIGKILL it, so that its token stays live and its document in the store; the token.
async fn write_store_then_die(
    idp: &OAuth2Fake,
    b: &Bao,
    dir: &Path,
    env: &[(&str, &str)],
) -> String {
    let (first_cfg, _) = api_config(idp, b, dir, 0);
    let mut first = Daemon::spawn(dir, &["run", "-c", first_cfg.to_str().unwrap()], 0o022, env);
    assert!(
        wait_until(PATIENCE, || !idp.live().is_empty()).await,
        "{}",
        first.output()
    );
    let written = idp.live()[0].clone();
    assert!(
        wait_store(b, "tokenkeeper/api", &written).await,
        "{}",
        first.output()
    );
    first.signal(Signal::SIGKILL);
    first.wait(PATIENCE).await;
    written
}

/// `tokenkeeper revoke` after a crash revokes the dead daemon's token and removes the store's
/// copy of it, so that readers of the store are not handed a revoked token; a path that holds
/// another token by then (another writer's) is left alone. Before the fix the revoked token
/// stayed in the store.
#[tokio::test(flavor = "multi_thread")]
async fn revoke_after_a_crash_removes_the_revoked_token_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let b = Bao::start(dir.path()).await;
    let idp = OAuth2Fake::start("client_secret_post", "tk", "pw").await;
    let env = [("TK_IDP_SECRET", "pw")];
    let revoke = |cfg: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(BIN)
                .args(["revoke", "-c", cfg.to_str().unwrap()])
                .env("TK_IDP_SECRET", "pw")
                .output()
                .unwrap()
        })
    };

    let left = write_store_then_die(&idp, &b, dir.path(), &env).await;
    let (cfg, _) = api_config(&idp, &b, dir.path(), 0);
    let out = revoke(cfg.clone()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(!idp.live().contains(&left), "{stdout}");
    assert!(
        stdout.contains("api: removed it from the store"),
        "{stdout}"
    );
    assert_eq!(b.token("tokenkeeper/api").await, None, "{stdout}");

    // Another writer's token at the path by the time of the revoke stays.
    let left = write_store_then_die(&idp, &b, dir.path(), &env).await;
    let (status, _) = b
        .call(
            "POST",
            "secret/data/tokenkeeper/api",
            Some(serde_json::json!({ "data": { "set": "api", "access_token": "someone-elses" } })),
        )
        .await;
    assert_eq!(status, 200);
    let out = revoke(cfg.clone()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(!idp.live().contains(&left), "{stdout}");
    assert!(!stdout.contains("from the store"), "{stdout}");
    assert_eq!(
        b.token("tokenkeeper/api").await.as_deref(),
        Some("someone-elses")
    );

    // A store that stops answering holds the command no longer than shutdown_timeout, not a
    // store timeout per path: the removal is named as failed, and the token is revoked.
    let left = write_store_then_die(&idp, &b, dir.path(), &env).await;
    let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gated = gate(b.addr(), std::sync::Arc::clone(&open)).await;
    let yaml = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&b.addr(), &gated)
        .replace("shutdown_timeout: 10s", "shutdown_timeout: 2s")
        .replace("mount: secret\n", "mount: secret\n    timeout: 60s\n");
    std::fs::write(&cfg, yaml).unwrap();
    let started = std::time::Instant::now();
    let out = revoke(cfg).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(started.elapsed() < Duration::from_secs(30), "{stdout}");
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("api: FAILED to remove the revoked token from the store: the store did not answer by the deadline"),
        "{stdout}"
    );
    assert!(!idp.live().contains(&left), "{stdout}");
}

/// A set's document in the store, rewritten by another client of the store with a token that
/// is no bearer token (it would add a line to an `env` file) and an expiry past any bound, is
/// not adopted: the set issues a token of its own, and the file holds only that.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_document_failing_the_answer_checks_is_not_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let b = Bao::start(dir.path()).await;
    // Without introspection, a document that matches is served until its replacement is in.
    let idp = OAuth2Fake::start("client_secret_post", "tk", "pw").await;
    idp.state().introspection = false;
    let env = [("TK_IDP_SECRET", "pw")];
    // Killed, so its document stays, with the set's name and config hash.
    let written = write_store_then_die(&idp, &b, dir.path(), &env).await;
    let (_, mut doc) = b.read("tokenkeeper/api").await.unwrap();
    doc["access_token"] = serde_json::json!("x\nFOO=$(id)");
    doc["expires_at"] = serde_json::json!("9999-12-31T23:59:59Z");
    let (status, v) = b
        .call(
            "POST",
            "secret/data/tokenkeeper/api",
            Some(serde_json::json!({ "data": doc })),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    // The first issue fails, so the next comes `min_interval` later: a document served meanwhile
    // would be in the file first.
    idp.state().refuse_next = Some((503, "temporarily_unavailable", "try again"));
    let (second_cfg, file) = api_config(&idp, &b, dir.path(), 1);
    let mut second = Daemon::spawn(
        dir.path(),
        &["run", "-c", second_cfg.to_str().unwrap()],
        0o022,
        &env,
    );
    assert!(
        wait_until(PATIENCE, || read(&file).is_some()).await,
        "{}",
        second.output()
    );
    let text = read(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    let token = lines[0].strip_prefix("API_TOKEN=").unwrap_or_default();
    assert!(
        token != written && idp.live().iter().any(|t| t == token),
        "the file holds no fresh token: {text:?}\n{}",
        second.output()
    );
    assert!(lines[1].starts_with("API_TOKEN_EXPIRES_AT="), "{text:?}");
    second.signal(Signal::SIGTERM);
    second.wait(PATIENCE).await;
    assert!(!second.output().contains("FOO="), "{}", second.output());
    assert!(
        idp.state().violations.is_empty(),
        "{:?}",
        idp.state().violations
    );
}

/// A gate in front of the store at `to`: while shut, it accepts connections and never answers
/// (holding them open); once `open` is set, it forwards new ones.
async fn gate(to: String, open: std::sync::Arc<std::sync::atomic::AtomicBool>) -> String {
    use std::sync::atomic::Ordering;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    let to = to.trim_start_matches("http://").to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            if !open.load(Ordering::SeqCst) {
                held.push(s);
                continue;
            }
            let to = to.clone();
            tokio::spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(&to).await {
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                }
            });
        }
    });
    addr
}

/// A token another instance left in the store, which the start could not read in time (the
/// store did not answer), is not left live behind the set's own: once the store answers, the
/// set's writer reads the path before writing over it, and the token found there is revoked.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_in_a_store_that_answered_late_is_revoked_not_left_live() {
    let dir = tempfile::tempdir().unwrap();
    let b = Bao::start(dir.path()).await;
    let idp = OAuth2Fake::start("client_secret_post", "tk", "pw").await;
    let env = [("TK_IDP_SECRET", "pw")];
    // Killed, so its token stays live and its document in the store.
    let left = write_store_then_die(&idp, &b, dir.path(), &env).await;
    let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gated = gate(b.addr(), std::sync::Arc::clone(&open)).await;
    let (second_cfg, file) = api_config(&idp, &b, dir.path(), 1);
    let yaml = std::fs::read_to_string(&second_cfg)
        .unwrap()
        .replace(&b.addr(), &gated)
        .replace("mount: secret\n", "mount: secret\n    timeout: 2s\n");
    std::fs::write(&second_cfg, yaml).unwrap();
    let mut second = Daemon::spawn(
        dir.path(),
        &["run", "-c", second_cfg.to_str().unwrap()],
        0o022,
        &env,
    );
    let own = || {
        read(&file).and_then(|t| {
            let first = t.lines().next()?.strip_prefix("API_TOKEN=")?.to_string();
            (first != left).then_some(first)
        })
    };
    assert!(
        wait_until(PATIENCE, || own().is_some()).await,
        "{}",
        second.output()
    );
    let own = own().unwrap();
    assert!(
        idp.live().contains(&left),
        "revoked before the store answered?\n{}",
        second.output()
    );
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        wait_store(&b, "tokenkeeper/api", &own).await,
        "{}",
        second.output()
    );
    assert!(
        wait_until(PATIENCE, || !idp.live().contains(&left)).await,
        "the token the store held is still live:\n{}",
        second.output()
    );
    assert!(idp.live().contains(&own), "{}", second.output());
    stop_clean(&mut second).await;
    assert!(
        idp.live().is_empty(),
        "{:?}\n{}",
        idp.live(),
        second.output()
    );
}

/// A config of `sets` sets `s0`, `s1`… writing files and paths `tokenkeeper/sN`, whose store,
/// OpenBao behind `relay`, logs in with the root token and gets `extra` (indented keys).
fn relayed_config(
    p: &tokenkeeper::devprovider::DevProvider,
    b: &Bao,
    relay: &common::relay::Relay,
    dir: &Path,
    sets: usize,
    extra: &str,
) -> String {
    let token = bao::secret_file(dir, "bao-token", bao::ROOT);
    let top = bao::stores_yaml(
        b,
        &format!("{{ token: {{ file: {} }} }}", token.display()),
        extra,
    )
    .replace(&b.addr(), &relay.addr);
    let sets: String = (0..sets).map(|i| set(&format!("s{i}"), dir)).collect();
    config(p, dir, &format!("shutdown_timeout: 20s\n{top}"), &sets)
}

/// Every set's file and store path hold the same token.
async fn all_in_store(b: &Bao, dir: &Path, sets: usize) -> bool {
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut i = 0;
    while i < sets && std::time::Instant::now() < deadline {
        let file = read(&dir.join(format!("s{i}.token")));
        if file.is_some() && b.token(&format!("tokenkeeper/s{i}")).await == file {
            i += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    i == sets
}

/// At 200 sets, the store sees at most `max_concurrent_requests` connections at once, and
/// once every token is written the daemon holds no more sockets to it than that (before the
/// cap, every set's writer opened its own: about 200 at once, all kept).
#[tokio::test(flavor = "multi_thread")]
async fn store_requests_and_sockets_are_bounded() {
    const SETS: usize = 200;
    const CAP: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let b = Bao::start(dir.path()).await;
    let p = provider(Duration::from_secs(900)).await;
    let relay = common::relay::Relay::start(&b.addr(), true).await;
    let yaml = relayed_config(
        &p,
        &b,
        &relay,
        dir.path(),
        SETS,
        &format!("    max_concurrent_requests: {CAP}\n"),
    );
    let mut d = Daemon::run(dir.path(), &yaml, 0o022);
    assert!(all_in_store(&b, dir.path(), SETS).await, "{}", d.output());
    // At most CAP requests are in flight; a finished request's connection goes back to the
    // pool a moment after its answer, and a request starting meanwhile opens another: never
    // more than one such per permit.
    let peak = relay.peak();
    eprintln!("peak {peak} connections at once");
    assert!(peak <= 2 * CAP, "{peak} connections at once to the store");
    // The pool keeps no more idle sockets than there are permits.
    assert!(
        wait_until(PATIENCE, || relay.connections() <= CAP).await,
        "{} sockets held once every token is written",
        relay.connections()
    );
    stop_clean(&mut d).await;
}

/// The store requests (to the KV mount, logins aside) of 10 sets over their whole life:
/// start, first tokens written, one rotation, stop. `mount_max_versions` is given to the
/// mount's own config first. Every entry is still gone after the stop.
async fn kv_requests_over_a_life(mount_max_versions: Option<u64>) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let b = Bao::start(dir.path()).await;
    if let Some(m) = mount_max_versions {
        let body = serde_json::json!({ "max_versions": m });
        let (status, v) = b.call("POST", "secret/config", Some(body)).await;
        assert!(status < 300, "mount config: {v}");
    }
    let p = provider(Duration::from_secs(900)).await;
    let relay = common::relay::Relay::start(&b.addr(), true).await;
    let yaml = relayed_config(&p, &b, &relay, dir.path(), COSTED_SETS, "");
    let mut d = Daemon::run(dir.path(), &yaml, 0o022);
    assert!(
        all_in_store(&b, dir.path(), COSTED_SETS).await,
        "{}",
        d.output()
    );
    let first: Vec<Option<String>> = (0..COSTED_SETS)
        .map(|i| read(&dir.path().join(format!("s{i}.token"))))
        .collect();
    d.signal(Signal::SIGUSR1);
    let rotated = || {
        (0..COSTED_SETS).all(|i| {
            let now = read(&dir.path().join(format!("s{i}.token")));
            now.is_some() && now != first[i]
        })
    };
    assert!(wait_until(PATIENCE, rotated).await, "{}", d.output());
    assert!(
        all_in_store(&b, dir.path(), COSTED_SETS).await,
        "{}",
        d.output()
    );
    stop_clean(&mut d).await;
    for i in 0..COSTED_SETS {
        let (status, v) = b
            .call("GET", &format!("secret/metadata/tokenkeeper/s{i}"), None)
            .await;
        assert_eq!(status, 404, "s{i} is still in the store: {v}");
    }
    relay
        .requests()
        .into_iter()
        .filter(|r| r.contains(" /v1/secret/"))
        .collect()
}

const COSTED_SETS: usize = 10;

/// Where the mount keeps the configured `max_versions` itself, a set's first token costs at
/// most 2 requests at the store over its whole life (the write, one delete at stop) and each
/// later token 1 (its write); the start costs one LIST of the paths' folder and one read of
/// the mount's config, not a read per path. It was 4 a token (a read of each path at start
/// and a metadata write for each), and 7 before that.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_costs_at_most_2_store_requests() {
    let kv = kv_requests_over_a_life(Some(2)).await;
    let tokens = 2 * COSTED_SETS;
    assert!(
        kv.len() <= 2 * COSTED_SETS + COSTED_SETS + 2,
        "{} store requests for {tokens} tokens:\n{}",
        kv.len(),
        kv.join("\n")
    );
    assert!(
        kv.iter().any(|r| r.starts_with("LIST ")),
        "no LIST at start:\n{}",
        kv.join("\n")
    );
}

/// Where the mount keeps another number of versions (here its default, every version), each
/// new path gets its own `max_versions` in a metadata write: 3 requests a first token.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_costs_at_most_3_store_requests_where_the_mount_keeps_other_versions() {
    let kv = kv_requests_over_a_life(None).await;
    let metadata = kv
        .iter()
        .filter(|r| r.starts_with("POST /v1/secret/metadata/"))
        .count();
    assert_eq!(metadata, COSTED_SETS, "{}", kv.join("\n"));
    assert!(
        kv.len() <= 3 * COSTED_SETS + COSTED_SETS + 2,
        "{} store requests for {} tokens:\n{}",
        kv.len(),
        2 * COSTED_SETS,
        kv.join("\n")
    );
}

/// Until a set's token is in the store, `status` says its store copy is catching up, never
/// that it is up to date: here the store holds every request unanswered (well within its
/// timeout), then answers, and status turns to up to date on its own.
#[tokio::test(flavor = "multi_thread")]
async fn status_shows_the_store_catching_up() {
    const SETS: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let b = Bao::start(dir.path()).await;
    let p = provider(Duration::from_secs(900)).await;
    let relay = common::relay::Relay::start(&b.addr(), false).await;
    let yaml = relayed_config(&p, &b, &relay, dir.path(), SETS, "    timeout: 60s\n");
    let mut d = Daemon::run(dir.path(), &yaml, 0o022);
    let cfg = status_config(dir.path());
    let files = || (0..SETS).all(|i| read(&dir.path().join(format!("s{i}.token"))).is_some());
    assert!(wait_until(PATIENCE, files).await, "{}", d.output());
    let stores = |want: &dyn Fn(&serde_json::Value) -> bool| {
        let v = status_json(&cfg);
        let stores = v["stores"].as_array().cloned().unwrap_or_default();
        stores.len() == SETS && stores.iter().all(want)
    };
    let catching_up = |s: &serde_json::Value| s["catching_up"] == true && s["error"].is_null();
    assert!(
        wait_until(PATIENCE, || stores(&catching_up)).await,
        "status: {}\n{}",
        status_json(&cfg),
        d.output()
    );
    let text = tokenkeeper(&["status", "-c", cfg.to_str().unwrap()]).stdout;
    assert!(text.contains("catching up"), "{text}");
    assert!(!text.contains("up to date"), "{text}");
    relay.open();
    assert!(all_in_store(&b, dir.path(), SETS).await, "{}", d.output());
    let up_to_date = |s: &serde_json::Value| s["catching_up"] != true && s["error"].is_null();
    assert!(
        wait_until(PATIENCE, || stores(&up_to_date)).await,
        "status: {}\n{}",
        status_json(&cfg),
        d.output()
    );
    stop_clean(&mut d).await;
}
