//! The environment the daemon runs in, as a hostile or careless one would set it: proxy
//! variables that would route a request with the API key through a stranger in clear, and an
//! https issuer whose discovery document points the token endpoint at plain http. The built
//! binary, real signals, the development provider and small fakes on 127.0.0.1.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;
mod fakes;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use fakes::oauth2::OAuth2Fake;
use fakes::{Resp, TestPki, serve, serve_tls};
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A listener on 127.0.0.1 that plays an HTTP proxy: it records every byte a client sends it;
/// a `CONNECT host:port` is tunnelled to that address as a real proxy would, anything else
/// (a plain-http request handed to the proxy whole) answered 502, so the test sees what a
/// request would have carried.
struct FakeProxy {
    url: String,
    received: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeProxy {
    async fn start() -> FakeProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&received);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(Self::serve(stream, Arc::clone(&seen)));
            }
        });
        FakeProxy {
            url,
            received,
            task,
        }
    }

    async fn serve(mut stream: tokio::net::TcpStream, seen: Arc<Mutex<Vec<u8>>>) {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    head.extend_from_slice(&buf[..n]);
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let target = text
            .strip_prefix("CONNECT ")
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned);
        let Some(target) = target else {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            return;
        };
        let Ok(upstream) = tokio::net::TcpStream::connect(&target).await else {
            return;
        };
        let _ = stream
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await;
        // Both ways, recording what the client sends: TLS from here on.
        let (mut client_read, mut client_write) = stream.into_split();
        let (mut up_read, mut up_write) = upstream.into_split();
        let down = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut up_read, &mut client_write).await;
        });
        while let Ok(n) = client_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            seen.lock().unwrap().extend_from_slice(&buf[..n]);
            if up_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        down.abort();
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }

    fn clear(&self) {
        self.received.lock().unwrap().clear();
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every variable that names a proxy for plain http, the development provider on
/// http://127.0.0.1: the proxy is never asked (so it never sees the API key in clear), and
/// tokens are issued directly.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_variables_never_carry_a_key_in_clear() {
    let p = provider(Duration::from_secs(900)).await;
    let proxy = FakeProxy::start().await;
    for var in ["http_proxy", "HTTP_PROXY", "ALL_PROXY", "all_proxy"] {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.token");
        let cfg = write_config(
            dir.path(),
            &config(&p, dir.path(), "", &set("s", "api", &f, "")),
        );
        let issued_before = p.requests().token;
        let mut d = Daemon::spawn(
            dir.path(),
            &["run", "-c", cfg.to_str().unwrap()],
            0o022,
            &[(var, &proxy.url)],
        );
        assert!(
            wait_until(PATIENCE, || f.exists()).await,
            "{var}: no token written; the proxy received:\n{}\n{}",
            proxy.received(),
            d.output()
        );
        stop_clean(&mut d).await;
        let seen = proxy.received();
        assert!(
            seen.is_empty(),
            "with {var} set, the proxy received:\n{seen}"
        );
        assert!(
            p.requests().token > issued_before,
            "{var}: the provider issued nothing directly"
        );
        assert!(
            p.live_tokens().is_empty(),
            "{var}: a token outlived the daemon"
        );
    }
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

/// An https issuer (TLS on 127.0.0.1, its CA trusted through SSL_CERT_FILE) whose discovery
/// document announces a token endpoint on plain http, even on loopback: the client secret
/// would cross in clear what the issuer's scheme promised to encrypt. The endpoint is never
/// called, and the log and `check` say why.
#[tokio::test(flavor = "multi_thread")]
async fn a_discovery_document_that_downgrades_to_http_is_refused() {
    let pki = TestPki::new();
    let secret = "cs-downgrade-7d1e0f";
    let plain_hits = Arc::new(Mutex::new(Vec::<String>::new()));
    let hits = Arc::clone(&plain_hits);
    let plain = serve(move |req| {
        hits.lock().unwrap().push(format!("{} {}", req.method, req.path));
        Resp::json(
            200,
            json!({"access_token": "at-should-never-be-asked", "token_type": "Bearer", "expires_in": 900}),
        )
    })
    .await;
    let plain_url = plain.url();
    let issuer_cell: Arc<Mutex<String>> = Arc::default();
    let issuer_of = Arc::clone(&issuer_cell);
    let idp = serve_tls(
        move |req| {
            let issuer = issuer_of.lock().unwrap().clone();
            if req.path.starts_with("/.well-known/") {
                Resp::json(
                    200,
                    json!({
                        "issuer": issuer,
                        "token_endpoint": format!("{plain_url}/token"),
                        "revocation_endpoint": format!("{issuer}/revoke"),
                    }),
                )
            } else {
                Resp::json(404, json!({}))
            }
        },
        pki.open_server_config.clone(),
    )
    .await;
    let issuer = idp.url();
    *issuer_cell.lock().unwrap() = issuer.clone();

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, f, cfg) = tls_issuer_config(d, &pki.ca_pem, &issuer);
    let env = [("TK_CS", secret), ("SSL_CERT_FILE", ca.to_str().unwrap())];

    let check = std::process::Command::new(BIN)
        .args(["check", "-c", cfg.to_str().unwrap()])
        .envs(env)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(
        said.contains("token_endpoint") && said.contains("http://"),
        "check did not name the downgraded endpoint:\n{said}"
    );

    let mut daemon = Daemon::spawn(d, &["run", "-c", cfg.to_str().unwrap()], 0o022, &env);
    daemon.wait_for_log("token_endpoint").await;
    daemon.signal(Signal::SIGTERM);
    daemon.wait(PATIENCE).await;
    let out = daemon.output();
    assert!(
        plain_hits.lock().unwrap().is_empty(),
        "the http endpoint an https issuer announced was called: {:?}\n{out}",
        plain_hits.lock().unwrap()
    );
    assert!(!f.exists(), "a token came through the downgraded endpoint");
    assert!(out.contains("scheme"), "{out}");
    assert!(!out.contains(secret), "{out}");
}

/// A proxy for https is used, and only through a tunnel: the daemon asks it to `CONNECT` to
/// the https provider and runs TLS through it, so what the proxy sees holds neither the client
/// secret nor a token; with the provider's host in `NO_PROXY`, the proxy is not asked at all.
#[tokio::test(flavor = "multi_thread")]
async fn an_https_proxy_is_used_only_through_a_tunnel() {
    let pki = TestPki::new();
    let secret = "cs-tunnel-5b2c90";
    let idp = OAuth2Fake::start_https(
        "client_secret_basic",
        "tokenkeeper",
        secret,
        pki.open_server_config.clone(),
    )
    .await;
    let proxy = FakeProxy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, f, cfg) = tls_issuer_config(d, &pki.ca_pem, &idp.issuer());
    let host = idp.server.addr.to_string();
    for (no_proxy, through) in [("", true), ("127.0.0.1", false)] {
        proxy.clear();
        let _ = std::fs::remove_file(&f);
        let env = [
            ("TK_CS", secret),
            ("SSL_CERT_FILE", ca.to_str().unwrap()),
            ("HTTPS_PROXY", &proxy.url),
            ("NO_PROXY", no_proxy),
        ];
        let mut daemon = Daemon::spawn(d, &["run", "-c", cfg.to_str().unwrap()], 0o022, &env);
        assert!(
            wait_until(PATIENCE, || f.exists()).await,
            "NO_PROXY={no_proxy:?}: no token written; the proxy received:\n{}\n{}",
            proxy.received(),
            daemon.output()
        );
        stop_clean(&mut daemon).await;
        let seen = proxy.received();
        if through {
            assert!(
                seen.starts_with(&format!("CONNECT {host} ")),
                "the proxy was not asked for a tunnel:\n{seen}"
            );
        } else {
            assert!(seen.is_empty(), "NO_PROXY was not honoured:\n{seen}");
        }
        assert!(!seen.contains(secret), "the proxy saw the client secret");
        let state = idp.state();
        for (token, _, _) in &state.tokens {
            assert!(!seen.contains(token.as_str()), "the proxy saw a token");
        }
        assert!(state.violations.is_empty(), "{:?}", state.violations);
    }
    assert!(idp.live().is_empty(), "a token outlived the daemon");
}

#[test]
fn a_malformed_runtime_variable_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "scope_sets: []\n");
    for value in ["abc", "0", "-1", "\u{1b}[2J"] {
        let o = std::process::Command::new(BIN)
            .args(["check", "-c", cfg.to_str().unwrap()])
            .env("TOKIO_WORKER_THREADS", value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        // Tokio panicked (exit 101) on each before.
        assert_eq!(o.status.code(), Some(78), "{value:?}: {err}");
        assert!(err.contains("TOKIO_WORKER_THREADS is set to"), "{err}");
        assert!(
            !err.contains("panicked") && !err.contains('\u{1b}'),
            "{err}"
        );
    }
    let o = std::process::Command::new(BIN)
        .args(["check", "-c", cfg.to_str().unwrap()])
        .env("TOKIO_WORKER_THREADS", "2")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&o.stderr).contains("TOKIO_WORKER_THREADS"));
}

/// In `d`: the test CA as `ca.pem` (for `SSL_CERT_FILE`), and a config with one `oauth2`
/// provider at `issuer` (its secret from `TK_CS`) and one set writing `t.token`; their paths.
fn tls_issuer_config(d: &Path, ca_pem: &str, issuer: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca = d.join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let f = d.join("t.token");
    let cfg = write_config(
        d,
        &format!(
            "providers:\n  idp:\n    kind: oauth2\n    issuer: {issuer}\n    client_id: tokenkeeper\n    client_secret: {{ env: TK_CS }}\nscope_sets:\n  - name: s\n    provider: idp\n    scopes: [read]\n    file: {{ path: {} }}\n",
            f.display()
        ),
    );
    (ca, f, cfg)
}
