//! Enterprise identity providers end to end (issue 30): the built binary against the strict
//! oauth2 fake on 127.0.0.1 — the messages an operator meets, a private CA per provider,
//! every discovery layout, the private_key_jwt audience and federated client assertions.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;
mod fakes;

use std::path::Path;

use common::*;
use fakes::oauth2::OAuth2Fake;

/// Write a config with a state directory of its own.
fn write_cfg(dir: &Path, text: &str) -> String {
    let path = dir.join(format!("config-{}.yaml", fastrand::u32(..)));
    std::fs::write(&path, format!("state_dir: {}/state\n{text}", dir.display())).unwrap();
    path.to_str().unwrap().to_string()
}

/// One oauth2 provider `idp` with `keys` (lines indented by four spaces) and one set `s`
/// writing to `token`.
fn oauth2_config(keys: &str, token: &Path, set_extra: &str) -> String {
    format!(
        "shutdown_timeout: 10s\nproviders:\n  idp:\n    kind: oauth2\n{keys}scope_sets:\n  - name: s\n    provider: idp\n    scopes: [read]\n    file: {{ path: {} }}\n{set_extra}",
        token.display()
    )
}

/// A discovery that finds no document is about the issuer, not the credentials.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_discovery_document_is_not_reported_as_refused_credentials() {
    let idp = OAuth2Fake::start("client_secret_basic", "tk", "pw").await;
    {
        let mut s = idp.state();
        s.rfc8414 = false;
        s.openid = false;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keys = format!(
        "    issuer: {}\n    client_id: tk\n    client_secret: {{ env: TK_IDP_SECRET }}\n",
        idp.issuer()
    );
    let cfg = write_cfg(d, &oauth2_config(&keys, &d.join("t"), ""));
    let mut daemon = Daemon::spawn(d, &["run", "-c", &cfg], 0o022, &[("TK_IDP_SECRET", "pw")]);
    daemon.wait_for_log("no discovery document").await;
    let out = daemon.output();
    assert!(
        !out.contains("check the credentials and scopes"),
        "a 404 on discovery blamed the credentials:\n{out}"
    );
    assert!(out.contains("check the issuer"), "{out}");
    stop_clean(&mut daemon).await;
}

/// `once` keeps every token, and its stop says so instead of announcing a revocation.
#[tokio::test(flavor = "multi_thread")]
async fn once_says_it_keeps_its_tokens_at_stop() {
    let idp = OAuth2Fake::start("client_secret_basic", "tk", "pw").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token = d.join("t");
    let keys = format!(
        "    issuer: {}\n    client_id: tk\n    client_secret: {{ env: TK_IDP_SECRET }}\n",
        idp.issuer()
    );
    let cfg = write_cfg(d, &oauth2_config(&keys, &token, ""));
    let mut once = Daemon::spawn(d, &["once", "-c", &cfg], 0o022, &[("TK_IDP_SECRET", "pw")]);
    let status = once.wait(PATIENCE).await;
    let out = once.output();
    assert_eq!(status.code(), Some(0), "{out}");
    assert_eq!(idp.live(), vec![read(&token).unwrap()], "{out}");
    assert!(!out.contains("revoking every token"), "{out}");
    assert!(out.contains("keeping every token"), "{out}");
}
