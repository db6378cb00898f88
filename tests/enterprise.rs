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

/// `tokenkeeper check -c CFG` with the test's environment minus any CA variable.
fn check(cfg: &str) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(["check", "-c", cfg])
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .env("TK_IDP_SECRET", "pw")
        .output()
        .unwrap()
}

/// A provider whose certificate comes from a private CA: with `ca_file` and no environment
/// variable, `check`'s discovery, issue, refresh and revocation at stop all work; without it,
/// the error says the certificate is not trusted and names `ca_file`.
#[tokio::test(flavor = "multi_thread")]
async fn a_private_ca_per_provider_serves_discovery_issue_refresh_and_revocation() {
    let pki = fakes::TestPki::new();
    let idp = OAuth2Fake::start_https(
        "client_secret_basic",
        "tk",
        "pw",
        pki.open_server_config.clone(),
    )
    .await;
    idp.state().expires_in = Some(2);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = d.join("idp-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let token = d.join("t");
    let keys = format!(
        "    issuer: {}\n    client_id: tk\n    client_secret: {{ env: TK_IDP_SECRET }}\n    default_lifetime: 2s\n",
        idp.issuer()
    );
    let refresh = "    refresh: { at: 50%, jitter: 0%, min_interval: 100ms }\n    revoke_superseded_after: 100ms\n";

    // Without ca_file: refused at the handshake, and the message says what to do.
    let cfg = write_cfg(d, &oauth2_config(&keys, &token, refresh));
    let out = check(&cfg);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("certificate is not trusted") && text.contains("ca_file"),
        "{text}"
    );
    let mut daemon = Daemon::spawn(d, &["run", "-c", &cfg], 0o022, &[("TK_IDP_SECRET", "pw")]);
    daemon
        .wait_for_log("give that CA as the provider's ca_file")
        .await;
    assert!(idp.state().tokens.is_empty());
    stop_clean(&mut daemon).await;

    let keys = format!("{keys}    ca_file: {}\n", ca.display());
    let cfg = write_cfg(d, &oauth2_config(&keys, &token, refresh));
    let out = check(&cfg);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("could not be read"), "{text}");
    let mut daemon = Daemon::spawn(d, &["run", "-c", &cfg], 0o022, &[("TK_IDP_SECRET", "pw")]);
    // The first token and at least one refresh.
    assert!(
        wait_until(PATIENCE, || idp.state().tokens.len() >= 2).await,
        "{}",
        daemon.output()
    );
    stop_clean(&mut daemon).await;
    let state = idp.state();
    assert!(state.violations.is_empty(), "{:?}", state.violations);
    drop(state);
    assert!(
        idp.live().is_empty(),
        "a token outlived the daemon:\n{}",
        daemon.output()
    );

    // check reads the bundle: one without a certificate is a config problem (exit 78).
    std::fs::write(&ca, "not a certificate\n").unwrap();
    let out = check(&cfg);
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.contains("providers.idp.ca_file") && text.contains("no -----BEGIN CERTIFICATE-----"),
        "{text}"
    );
}

/// An issuer with a path whose server keeps its RFC 8414 document appended to the issuer
/// (django-oauth-toolkit's layout) and an OpenID document without the revocation endpoint:
/// the appended document is found before the OpenID one, `check` says which it used and
/// what it names, and nothing is left live after SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn the_appended_metadata_layout_is_found_before_openid_and_check_shows_it() {
    let idp = OAuth2Fake::start("client_secret_basic", "tk", "pw").await;
    {
        let mut s = idp.state();
        s.rfc8414 = false;
        s.appended = true;
        s.openid_names_revocation = false;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token = d.join("t");
    let keys = format!(
        "    issuer: {}\n    client_id: tk\n    client_secret: {{ env: TK_IDP_SECRET }}\n",
        idp.issuer()
    );
    let cfg = write_cfg(d, &oauth2_config(&keys, &token, ""));
    let out = check(&cfg);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let appended = format!("{}/.well-known/oauth-authorization-server", idp.issuer());
    assert!(
        text.contains(&format!(
            "providers.idp: endpoints discovered from {appended} (RFC 8414 suffix appended to the issuer): token_endpoint {base}/token, revocation_endpoint {base}/revoke, introspection_endpoint {base}/introspect",
            base = idp.server.url()
        )),
        "{text}"
    );
    assert!(!text.contains("no revocation endpoint"), "{text}");

    let mut daemon = Daemon::spawn(d, &["run", "-c", &cfg], 0o022, &[("TK_IDP_SECRET", "pw")]);
    assert!(
        wait_until(PATIENCE, || token.exists()).await,
        "{}",
        daemon.output()
    );
    stop_clean(&mut daemon).await;
    assert!(
        idp.live().is_empty(),
        "a token outlived the daemon:\n{}",
        daemon.output()
    );
    let s = idp.state();
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    assert!(
        !s.requests
            .iter()
            .any(|r| r.ends_with("openid-configuration")),
        "{:?}",
        s.requests
    );
}

/// A server with no revocation endpoint, met by a set that revokes at stop: `check` warns
/// naming the set, and the daemon says so at WARN as soon as it knows, not only at stop.
#[tokio::test(flavor = "multi_thread")]
async fn no_revocation_endpoint_is_a_warning_from_check_and_at_start() {
    let idp = OAuth2Fake::start("client_secret_basic", "tk", "pw").await;
    idp.state().revocation = false;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token = d.join("t");
    let keys = format!(
        "    issuer: {}\n    client_id: tk\n    client_secret: {{ env: TK_IDP_SECRET }}\n",
        idp.issuer()
    );
    let cfg = write_cfg(
        d,
        &oauth2_config(&keys, &token, "    on_shutdown: revoke\n"),
    );
    let out = check(&cfg);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("revocation_endpoint none"), "{text}");
    assert!(
        text.contains("providers.idp: its discovery document names no revocation endpoint, so the tokens of s (on_shutdown: revoke) cannot be revoked at stop"),
        "{text}"
    );
    let mut daemon = Daemon::spawn(d, &["run", "-c", &cfg], 0o022, &[("TK_IDP_SECRET", "pw")]);
    daemon.wait_for_log("names no revocation endpoint").await;
    let out = daemon.output();
    let line = out
        .lines()
        .find(|l| l.contains("names no revocation endpoint"))
        .unwrap();
    assert!(line.contains("WARN"), "{line}");
    stop_clean(&mut daemon).await;

    // Endpoints given without revocation_url: known offline.
    let keys = format!(
        "    token_url: {}/token\n    client_id: tk\n    client_secret: {{ env: TK_IDP_SECRET }}\n",
        idp.server.url()
    );
    let cfg = write_cfg(
        d,
        &oauth2_config(&keys, &token, "    on_shutdown: revoke\n"),
    );
    let out = std::process::Command::new(BIN)
        .args(["check", "--offline", "-c", &cfg])
        .env("TK_IDP_SECRET", "pw")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        text.contains("providers.idp: the config (no revocation_url) names no revocation endpoint"),
        "{text}"
    );
}

/// A fresh EC P-256 key: its PKCS#8 PEM and the public key ring verifies with.
fn ec_key() -> (String, Vec<u8>) {
    use ring::signature::{self, EcdsaKeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let doc =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let public = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        doc.as_ref(),
        &rng,
    )
    .unwrap()
    .public_key()
    .as_ref()
    .to_vec();
    let pem = rcgen::KeyPair::try_from(doc.as_ref())
        .unwrap()
        .serialize_pem();
    (pem, public)
}

/// A server that insists on its issuer-derived token URL as the assertion's `aud`, reached
/// through another spelling of its address: refused by default (the client cannot know the
/// name), served with `assertion_audience`, revocation at stop included.
#[tokio::test(flavor = "multi_thread")]
async fn assertion_audience_names_the_audience_a_server_insists_on() {
    let (pem, public) = ec_key();
    let idp = OAuth2Fake::start_jwt(
        "tk",
        "ES256",
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        public,
    )
    .await;
    let port = idp.server.addr.port();
    let insisted = format!("http://localhost:{port}/token");
    idp.state().required_aud = Some(insisted.clone());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("key.pem");
    std::fs::write(&key, &pem).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let token = d.join("t");
    let keys = format!(
        "    token_url: http://127.0.0.1:{port}/token\n    revocation_url: http://127.0.0.1:{port}/revoke\n    client_id: tk\n    auth_method: private_key_jwt\n    private_key: {{ file: {} }}\n",
        key.display()
    );
    let cfg = write_cfg(d, &oauth2_config(&keys, &token, ""));
    let mut daemon = Daemon::spawn(d, &["run", "-c", &cfg], 0o022, &[]);
    daemon.wait_for_log("HTTP 401").await;
    assert!(idp.state().tokens.is_empty());
    stop_clean(&mut daemon).await;
    idp.state().violations.clear();

    let keys = format!("{keys}    assertion_audience: {insisted}\n");
    let cfg = write_cfg(d, &oauth2_config(&keys, &token, ""));
    let mut daemon = Daemon::spawn(d, &["run", "-c", &cfg], 0o022, &[]);
    assert!(
        wait_until(PATIENCE, || token.exists()).await,
        "{}",
        daemon.output()
    );
    stop_clean(&mut daemon).await;
    let s = idp.state();
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    assert!(
        s.requests.iter().any(|r| r == "POST /revoke"),
        "{:?}",
        s.requests
    );
    drop(s);
    assert!(idp.live().is_empty(), "a token outlived the daemon");
}

/// A JWT with these claims, as a platform would write it (the signature is the platform's
/// business; the fake knows which JWT it issued last).
fn platform_jwt(exp: u64, n: u32) -> String {
    let b64 = |b: &[u8]| tokenkeeper::provider::oauth2::base64url(b);
    format!(
        "{}.{}.{}",
        b64(br#"{"alg":"RS256","kid":"platform"}"#),
        b64(format!(r#"{{"iss":"https://k8s.example","sub":"system:serviceaccount:tk:tk","aud":"idp","exp":{exp},"n":{n}}}"#).as_bytes()),
        b64(format!("signature-{n}").as_bytes())
    )
}

fn unix_now() -> u64 {
    tokenkeeper::clock::now_wall()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Write `text` where the platform's token file is, replacing it whole (as kubelet does,
/// through a rename), owner-only like every secret file.
fn rotate(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `auth_method: client_assertion` reads the platform's JWT before every request: a file
/// rotated between two requests gives each the content it has then, the server accepts them,
/// and an expired one is a clear error naming the file, never quoting it.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_assertion_file_is_read_afresh_for_every_request() {
    let idp = OAuth2Fake::start_with_method("client_assertion", "tk").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("idp-token");
    let first = platform_jwt(unix_now() + 3600, 1);
    idp.state().accepted_assertion = Some(first.clone());
    rotate(&file, &first);
    let token = d.join("t");
    let keys = format!(
        "    issuer: {}\n    client_id: tk\n    auth_method: client_assertion\n    client_assertion: {{ file: {} }}\n",
        idp.issuer(),
        file.display()
    );
    let set = "    refresh: { min_interval: 100ms }\n";
    let cfg = write_cfg(d, &oauth2_config(&keys, &token, set));
    let out = check(&cfg);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut daemon = Daemon::spawn(d, &["run", "-c", &cfg], 0o022, &[]);
    assert!(
        wait_until(PATIENCE, || token.exists()).await,
        "{}",
        daemon.output()
    );

    // Rotated between two requests: the next one carries the new content.
    let second = platform_jwt(unix_now() + 3600, 2);
    idp.state().accepted_assertion = Some(second.clone());
    rotate(&file, &second);
    daemon.signal(nix::sys::signal::Signal::SIGUSR1);
    assert!(
        wait_until(PATIENCE, || idp.state().tokens.len() == 2).await,
        "{}",
        daemon.output()
    );
    assert_eq!(idp.state().assertions, vec![first.clone(), second.clone()]);

    // Expired: not sent, and the error names the file.
    let expired = platform_jwt(unix_now() - 120, 3);
    rotate(&file, &expired);
    daemon.signal(nix::sys::signal::Signal::SIGUSR1);
    daemon
        .wait_for_log(&format!(
            "client_assertion from file {} cannot be used: the JWT expired",
            file.display()
        ))
        .await;
    assert_eq!(idp.state().assertions.len(), 2);

    // Rotated again in time for the stop: every token revoked with the current content.
    let last = platform_jwt(unix_now() + 3600, 4);
    idp.state().accepted_assertion = Some(last.clone());
    rotate(&file, &last);
    stop_clean(&mut daemon).await;
    let s = idp.state();
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    assert!(
        s.assertions[2..].iter().all(|a| *a == last),
        "{:?}",
        s.assertions.len()
    );
    drop(s);
    assert!(idp.live().is_empty(), "a token outlived the daemon");
    let out = daemon.output();
    for jwt in [&first, &second, &expired, &last] {
        let claims = jwt.split('.').nth(1).unwrap();
        assert!(
            !out.contains(claims),
            "an assertion reached the log:\n{out}"
        );
    }

    // check reads it too: an expired one is a warning naming the file.
    rotate(&file, &expired);
    let out = check(&cfg);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "providers.idp.client_assertion: file {}: the JWT expired",
            file.display()
        )),
        "{text}"
    );
    assert!(!text.contains(expired.split('.').nth(1).unwrap()), "{text}");

    // Unreadable: the same clear error, naming the file.
    std::fs::remove_file(&file).unwrap();
    let out = check(&cfg);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(text.contains(&file.display().to_string()), "{text}");
}
