//! Conformance: every request the Voucherify and Square providers send, validated by
//! Stoplight Prism against the vendors' official OpenAPI specs (`tests/specs`, see PRISM.md
//! and SOURCES.md there), with request validation on.
//!
//! Prism comes from [`common::tools::prism`]: installed with npm on first use into the tests'
//! cache; a test that cannot have it fails saying how to get it.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Url;
use tokenkeeper::provider::refresh_store::RefreshStore;
use tokenkeeper::provider::square::{self, Square};
use tokenkeeper::provider::voucherify::Voucherify;
use tokenkeeper::provider::{Introspection, ProviderError, TokenProvider, http_client};
use tokenkeeper::secret::Secret;

/// Prism loads the small specs in about 2 s; a minute covers a loaded CI machine.
const STARTUP_LIMIT: Duration = Duration::from_secs(60);

/// What Prism logs for each request that passed validation.
const PASSED: &str = "[VALIDATOR] ✔  success   The request passed the validation rules";

fn specs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs")
}

/// One Prism mock server with request validation, stopped on drop.
struct Prism {
    child: Child,
    url: Url,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prism {
    async fn start(bin: &Path, spec: &str) -> Prism {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("prism.log");
        // A free port: bind port 0, note it, let it go. Prism binds it a moment later.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args([
                "mock",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--errors",
            ])
            .arg(specs().join(spec))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let p = Prism {
            child,
            url: Url::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
            log,
            _dir: dir,
        };
        let start = Instant::now();
        while !p.output().contains("Prism is listening") {
            assert!(
                start.elapsed() < STARTUP_LIMIT,
                "Prism did not start:\n{}",
                p.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every request Prism saw passed validation, and there were `expected` of them.
    fn assert_all_valid(&self, expected: usize) -> usize {
        let out = self.output();
        let bad: Vec<&str> = out
            .lines()
            .filter(|l| {
                l.contains("[VALIDATOR] ✖")
                    || l.contains("did not pass the validation")
                    || l.contains("Request terminated with error")
            })
            .collect();
        assert!(
            bad.is_empty(),
            "Prism refused requests:\n{}",
            bad.join("\n")
        );
        let passed = out.lines().filter(|l| l.contains(PASSED)).count();
        assert_eq!(passed, expected, "Prism log:\n{out}");
        let _ = writeln!(
            std::io::stderr(),
            "Prism: {passed} request(s) passed validation against {}",
            self.url
        );
        passed
    }
}

impl Drop for Prism {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An answer that passed Prism's validation but that our code refuses on its content (Prism
/// answers with the spec's examples, whose dates lie in the past). Any refusal or transport
/// failure would mean the request itself was wrong.
fn content_only(result: Result<impl Sized, ProviderError>) {
    match result {
        Ok(_) | Err(ProviderError::Malformed { .. } | ProviderError::MintedRefused { .. }) => {}
        Err(e) => panic!("the request was refused: {}", tokenkeeper::error_chain(&e)),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn voucherify_requests_pass_the_official_spec() {
    let bin = common::tools::prism();
    let p = Prism::start(&bin, "voucherify-oauth.openapi.json").await;
    let v = Voucherify::new(
        http_client().unwrap(),
        p.url.clone(),
        &Secret::new("app-id"),
        &Secret::new("app-token"),
        Duration::from_secs(10),
    )
    .unwrap();
    let issued = v
        .issue(&["api".into(), "vouchers".into(), "client_api".into()])
        .await
        .unwrap();
    assert_eq!(issued.lifetime, Duration::from_secs(900));
    assert!(matches!(
        v.introspect(&issued.token).await.unwrap(),
        Introspection::Active { .. }
    ));
    v.revoke(&issued.token).await.unwrap();
    p.assert_all_valid(3);
}

#[tokio::test(flavor = "multi_thread")]
async fn square_requests_pass_the_official_spec() {
    let bin = common::tools::prism();
    let p = Prism::start(&bin, "square-oauth.openapi.json").await;
    let state = tempfile::tempdir().unwrap();
    let build = |mode, secret: bool, file: &str| {
        Square::new(square::Settings {
            http: http_client().unwrap(),
            name: "shop".into(),
            base_url: p.url.clone(),
            client_id: "sq0idp-wGVapF8sNt9PLrdj5znuKA".into(),
            client_secret: secret.then(|| Secret::new("sq0csp-secret-value")),
            mode,
            seed: Secret::new("EQAAseed-refresh-token"),
            store: RefreshStore::new(state.path().join(file)),
            timeout: Duration::from_secs(10),
        })
        .unwrap()
    };
    let code_flow = build(square::Mode::RefreshToken, true, "code.json");
    let scopes = ["ORDERS_READ".to_string(), "ITEMS_READ".to_string()];
    // Prism's example token expired in 2025: refused on content, after the request passed.
    content_only(code_flow.issue(&scopes).await);
    // The example's refresh token differs from ours: it was saved, and the next request
    // presents it.
    assert!(
        RefreshStore::new(state.path().join("code.json"))
            .load()
            .unwrap()
            .is_some()
    );
    content_only(code_flow.issue(&scopes[..1]).await);
    let pkce = build(square::Mode::RefreshToken, false, "pkce.json");
    content_only(pkce.issue(&scopes).await);
    let token = Secret::new("EAAAl3ikZ-access-token");
    assert!(matches!(
        code_flow.introspect(&token).await.unwrap(),
        Introspection::Active { .. }
    ));
    code_flow.revoke(&token).await.unwrap();
    let renew = build(square::Mode::Renew, true, "renew.json");
    content_only(renew.issue(&[]).await);
    p.assert_all_valid(6);
}
