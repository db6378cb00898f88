//! oauth2 client authentication by key, end to end: the built binary against fakes that
//! check it for real — RFC 7523 assertions verified with the client's public key (claims,
//! 60 s expiry, no jti twice), and RFC 8705 mutual TLS on 127.0.0.1 that requires a client
//! certificate from a CA made in the test — plus `check` refusing bad keys with exit 78.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;
mod fakes;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use fakes::TestPki;
use fakes::oauth2::OAuth2Fake;
use nix::sys::signal::Signal;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;

const RSA_TEST_KEY: &str = include_str!("keys/rsa-test.pem");

/// Write `text` to `dir/name` with `mode`.
fn write_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join(format!("config-{}.yaml", fastrand::u32(..)));
    std::fs::write(&path, format!("state_dir: {}/state\n{text}", dir.display())).unwrap();
    path.to_str().unwrap().to_string()
}

fn set(name: &str, provider: &str, path: &Path) -> String {
    format!(
        "  - name: {name}\n    provider: {provider}\n    scopes: [read]\n    file: {{ path: {} }}\n",
        path.display()
    )
}

/// A PKCS#8 key in PEM, as an operator's key file holds it.
fn pkcs8_pem(der: &[u8]) -> String {
    rcgen::KeyPair::try_from(der).unwrap().serialize_pem()
}

/// The body of a PEM key, to check it never reaches a log.
fn key_body(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .nth(1)
        .unwrap()
        .to_string()
}

const DEFAULTS: &str = "defaults:\n  refresh: { at: 50%, jitter: 0%, min_interval: 100ms }\n  revoke_superseded_after: 100ms\n";

#[tokio::test(flavor = "multi_thread")]
async fn private_key_jwt_rs256_and_es256_issue_refresh_and_revoke() {
    let rsa_der = PrivatePkcs8KeyDer::from_pem_slice(RSA_TEST_KEY.as_bytes()).unwrap();
    let rsa_public = RsaKeyPair::from_pkcs8(rsa_der.secret_pkcs8_der())
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();
    let rng = ring::rand::SystemRandom::new();
    let ec_doc =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ec_public = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        ec_doc.as_ref(),
        &rng,
    )
    .unwrap()
    .public_key()
    .as_ref()
    .to_vec();
    let ec_pem = pkcs8_pem(ec_doc.as_ref());
    let rsa_idp = OAuth2Fake::start_jwt(
        "tokenkeeper",
        "RS256",
        &signature::RSA_PKCS1_2048_8192_SHA256,
        rsa_public,
    )
    .await;
    let ec_idp = OAuth2Fake::start_jwt(
        "tokenkeeper",
        "ES256",
        &signature::ECDSA_P256_SHA256_FIXED,
        ec_public,
    )
    .await;
    for idp in [&rsa_idp, &ec_idp] {
        idp.state().expires_in = Some(2);
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rsa_key = write_file(d, "rsa.pem", RSA_TEST_KEY, 0o600);
    let (a, b) = (d.join("a.token"), d.join("b.token"));
    let ec_base = ec_idp.server.url();
    let cfg = format!(
        "{DEFAULTS}providers:\n  rsa:\n    kind: oauth2\n    issuer: {}\n    client_id: tokenkeeper\n    auth_method: private_key_jwt\n    private_key: {{ file: {} }}\n    key_id: k1\n  ec:\n    kind: oauth2\n    token_url: {ec_base}/token\n    revocation_url: {ec_base}/revoke\n    client_id: tokenkeeper\n    auth_method: private_key_jwt\n    private_key: {{ env: TK_EC_KEY }}\nscope_sets:\n{}{}",
        rsa_idp.issuer(),
        rsa_key.display(),
        set("a", "rsa", &a),
        set("b", "ec", &b),
    );
    let cfg = write_config(d, &cfg);
    // Good keys pass `check`.
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_tokenkeeper"))
        .args(["check", "-c", &cfg])
        .env("TK_EC_KEY", &ec_pem)
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut daemon = Daemon::spawn(d, &["run", "-c", &cfg], 0o022, &[("TK_EC_KEY", &ec_pem)]);
    assert!(
        wait_until(PATIENCE, || {
            rsa_idp.state().tokens.len() >= 3 && ec_idp.state().tokens.len() >= 3
        })
        .await,
        "{}",
        daemon.output()
    );
    assert!(a.exists() && b.exists());
    daemon.signal(Signal::SIGTERM);
    assert_eq!(
        daemon.wait(PATIENCE).await.code(),
        Some(0),
        "{}",
        daemon.output()
    );
    let out = daemon.output();
    for (name, idp) in [("rsa", &rsa_idp), ("ec", &ec_idp)] {
        let s = idp.state();
        assert!(s.violations.is_empty(), "{name}: {:?}", s.violations);
        let posts = s.requests.iter().filter(|r| r.starts_with("POST")).count();
        assert!(
            s.requests.iter().any(|r| r == "POST /revoke"),
            "{name}: no revocation: {:?}",
            s.requests
        );
        // Every token and revocation request carried its own verified assertion.
        assert_eq!(s.jtis.len(), posts, "{name}: {:?}", s.requests);
        drop(s);
        assert!(idp.live().is_empty(), "{name}: a token outlived the daemon");
    }
    assert!(!out.contains("does not list this auth_method"), "{out}");
    for body in [key_body(RSA_TEST_KEY), key_body(&ec_pem)] {
        assert!(!out.contains(&body), "a key reached the log:\n{out}");
    }
    assert!(!out.contains("PRIVATE KEY"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_client_auth_issues_and_revokes_over_mutual_tls() {
    let pki = TestPki::new();
    let idp = OAuth2Fake::start_tls("tokenkeeper", pki.server_config.clone()).await;
    idp.state().expires_in = Some(2);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = write_file(d, "ca.pem", &pki.ca_pem, 0o644);
    // A certificate is public: world-readable is fine; its key is not.
    let cert = write_file(d, "client.crt", &pki.client_cert_pem, 0o644);
    let key = write_file(d, "client.key", &pki.client_key_pem, 0o600);
    let stranger_cert = write_file(d, "stranger.crt", &pki.stranger_cert_pem, 0o644);
    let stranger_key = write_file(d, "stranger.key", &pki.stranger_key_pem, 0o600);

    // The fake really requires a certificate from its CA: without one, no answer.
    tokenkeeper::init_tls();
    let bare = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    assert!(
        bare.post(format!("{}/token", idp.server.url()))
            .send()
            .await
            .is_err(),
        "the TLS fake answered a client without a certificate"
    );

    let (a, s) = (d.join("a.token"), d.join("stranger.token"));
    let cfg = format!(
        "{DEFAULTS}providers:\n  bank:\n    kind: oauth2\n    issuer: {issuer}\n    client_id: tokenkeeper\n    auth_method: tls_client_auth\n    client_certificate: {{ file: {} }}\n    client_key: {{ file: {} }}\n  stranger:\n    kind: oauth2\n    issuer: {issuer}\n    client_id: tokenkeeper\n    auth_method: tls_client_auth\n    client_certificate: {{ file: {} }}\n    client_key: {{ file: {} }}\nscope_sets:\n{}{}",
        cert.display(),
        key.display(),
        stranger_cert.display(),
        stranger_key.display(),
        set("a", "bank", &a),
        set("stranger", "stranger", &s),
        issuer = idp.issuer(),
    );
    let cfg = write_config(d, &cfg);
    let mut daemon = Daemon::spawn(
        d,
        &["run", "-c", &cfg],
        0o022,
        &[("SSL_CERT_FILE", ca.to_str().unwrap())],
    );
    assert!(
        wait_until(PATIENCE, || idp.state().tokens.len() >= 3).await,
        "{}",
        daemon.output()
    );
    daemon.signal(Signal::SIGTERM);
    assert_eq!(
        daemon.wait(PATIENCE).await.code(),
        Some(0),
        "{}",
        daemon.output()
    );
    let state = idp.state();
    assert!(state.violations.is_empty(), "{:?}", state.violations);
    assert!(
        state.requests.iter().any(|r| r == "POST /revoke"),
        "{:?}",
        state.requests
    );
    drop(state);
    assert!(idp.live().is_empty(), "a token outlived the daemon");
    // The certificate from another CA never got past the handshake.
    assert!(!s.exists());
    let out = daemon.output();
    assert!(out.contains("stranger"), "{out}");
    assert!(!out.contains(&key_body(&pki.client_key_pem)), "{out}");
}

#[test]
fn check_refuses_bad_keys_with_exit_78_and_never_quotes_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rng = ring::rand::SystemRandom::new();
    let ed = pkcs8_pem(
        signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .unwrap()
            .as_ref(),
    );
    let pkcs1_body = key_body(RSA_TEST_KEY);
    let pkcs1 = RSA_TEST_KEY.replace(" PRIVATE KEY-----", " RSA PRIVATE KEY-----");
    let pki = TestPki::new();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "ed25519",
            format!(
                "    auth_method: private_key_jwt\n    private_key: {{ file: {} }}\n",
                write_file(d, "ed.pem", &ed, 0o600).display()
            ),
            "neither RSA nor EC P-256",
        ),
        (
            "pkcs1",
            format!(
                "    auth_method: private_key_jwt\n    private_key: {{ file: {} }}\n",
                write_file(d, "pkcs1.pem", &pkcs1, 0o600).display()
            ),
            "not PKCS#8; convert it with `openssl pkcs8",
        ),
        (
            "not a key",
            "    auth_method: private_key_jwt\n    private_key: { env: TK_NOT_A_KEY }\n".into(),
            "no PEM block found",
        ),
        (
            "a certificate for another key",
            format!(
                "    auth_method: tls_client_auth\n    client_certificate: {{ file: {} }}\n    client_key: {{ file: {} }}\n",
                write_file(d, "c.crt", &pki.client_cert_pem, 0o644).display(),
                write_file(d, "other.key", &pki.stranger_key_pem, 0o600).display()
            ),
            "the certificate and the key do not belong together",
        ),
    ];
    for (what, keys, needle) in cases {
        let cfg = write_config(
            d,
            &format!(
                "providers:\n  idp:\n    kind: oauth2\n    issuer: https://login.example.com\n    client_id: tokenkeeper\n{keys}scope_sets:\n{}",
                set("a", "idp", &d.join("a.token"))
            ),
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenkeeper"))
            .args(["check", "-c", &cfg])
            .env("TK_NOT_A_KEY", "sk_live_notakeyatall")
            .env_remove("CREDENTIALS_DIRECTORY")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{what}: {stderr}");
        assert!(stderr.contains(needle), "{what}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        for secret in [pkcs1_body.as_str(), "sk_live_notakeyatall"] {
            assert!(!stderr.contains(secret), "{what} quoted a key: {stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_warns_when_the_servers_metadata_does_not_list_the_auth_method() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let secret = "cs-4f1d9a-check-discovery";
    // The server announces client_secret_basic only; `post` asks for what it does not list,
    // `basic` for what it does.
    let idp = OAuth2Fake::start("client_secret_basic", "tokenkeeper", secret).await;
    // A port nothing listens on: the server of `gone` cannot be reached.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("http://{}/realms/ops", closed.local_addr().unwrap());
    drop(closed);
    let provider = |name: &str, issuer: &str, method: &str| {
        format!(
            "  {name}:\n    kind: oauth2\n    issuer: {issuer}\n    client_id: tokenkeeper\n    client_secret: {{ env: TK_CS }}\n    auth_method: {method}\n"
        )
    };
    let cfg = write_config(
        d,
        &format!(
            "providers:\n{}{}{}{}scope_sets:\n{}{}{}{}",
            provider("post", &idp.issuer(), "client_secret_post"),
            provider("basic", &idp.issuer(), "client_secret_basic"),
            provider("gone", &gone, "client_secret_basic"),
            // A systemd credential, which check finds where the unit loads it from: the
            // metadata is read all the same, since asking for it needs no credential.
            provider("unit", &idp.issuer(), "client_secret_post")
                .replace("{ env: TK_CS }", "{ credential: idp-secret }"),
            set("a", "post", &d.join("a.token")),
            set("b", "basic", &d.join("b.token")),
            set("c", "gone", &d.join("c.token")),
            set("d", "unit", &d.join("d.token")),
        ),
    );
    let creds = d.join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("idp-secret"), secret).unwrap();
    let creds = creds.to_str().unwrap().to_string();
    let check = |extra: &'static [&'static str]| {
        let (cfg, creds) = (cfg.clone(), creds.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_tokenkeeper"))
                .arg("check")
                .args(extra)
                .args(["-c", &cfg, "--credentials-dir", &creds])
                .env("TK_CS", secret)
                .env_remove("CREDENTIALS_DIRECTORY")
                .output()
                .unwrap()
        })
    };
    let out = check(&[]).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Warnings, not errors: servers leave out methods they accept, and the network at
    // `check` time is not the network at run time.
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let about = |name: &str| -> Vec<&str> {
        let at = format!(": providers.{name}: ");
        lines.iter().copied().filter(|l| l.contains(&at)).collect()
    };
    let post = about("post");
    assert_eq!(post.len(), 1, "{stderr}");
    assert!(post[0].starts_with("warning: "), "{stderr}");
    assert!(
        post[0].contains("does not list auth_method client_secret_post"),
        "{stderr}"
    );
    let unit: Vec<&str> = about("unit")
        .into_iter()
        .filter(|l| l.contains("metadata"))
        .collect();
    assert_eq!(unit.len(), 1, "{stderr}");
    assert!(
        unit[0].contains("does not list auth_method client_secret_post"),
        "{stderr}"
    );
    assert!(about("basic").is_empty(), "{stderr}");
    let gone_lines = about("gone");
    assert_eq!(gone_lines.len(), 1, "{stderr}");
    assert!(
        gone_lines[0].contains("could not be read, so auth_method was not checked"),
        "{stderr}"
    );
    assert!(!stderr.contains(secret), "{stderr}");
    // Only the metadata was read: no token asked for, no credential sent.
    let requests = idp.state().requests.clone();
    assert!(!requests.is_empty());
    assert!(
        requests.iter().all(|r| r.starts_with("GET /.well-known/")),
        "{requests:?}"
    );
    assert!(
        idp.state().violations.is_empty(),
        "{:?}",
        idp.state().violations
    );

    // --offline asks nobody and says nothing of discovery.
    let before = idp.state().requests.len();
    let out = check(&["--offline"]).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("metadata"), "{stderr}");
    assert_eq!(idp.state().requests.len(), before);
}
