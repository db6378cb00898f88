//! Strict, stateful fakes of the providers' servers for the integration tests, on 127.0.0.1
//! port 0. Each records every request that breaks its contract as a violation (never
//! quoting a secret), so a test can assert the client never broke it.
#![allow(dead_code)] // each test file uses its own subset

pub mod oauth2;
pub mod square;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A request as the fakes see it.
pub struct Req {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

pub struct Resp {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Resp {
    pub fn json(status: u16, body: serde_json::Value) -> Resp {
        Resp {
            status,
            content_type: "application/json",
            body: body.to_string(),
        }
    }
}

/// A running fake; the server stops when this is dropped.
pub struct Server {
    pub addr: SocketAddr,
    tls: bool,
    task: JoinHandle<()>,
}

impl Server {
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve(handler: impl Fn(Req) -> Resp + Send + Sync + 'static) -> Server {
    serve_on(handler, None).await
}

/// The same over TLS with `config`; a handshake it refuses (no client certificate, one from
/// another CA) never reaches `handler`.
pub async fn serve_tls(
    handler: impl Fn(Req) -> Resp + Send + Sync + 'static,
    config: Arc<rustls::ServerConfig>,
) -> Server {
    serve_on(handler, Some(tokio_rustls::TlsAcceptor::from(config))).await
}

async fn serve_on(
    handler: impl Fn(Req) -> Resp + Send + Sync + 'static,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    let is_tls = tls.is_some();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = Arc::clone(&handler);
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let handler = Arc::clone(&handler);
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let req = Req {
                            method: parts.method.to_string(),
                            path: parts.uri.path().to_string(),
                            headers: parts
                                .headers
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                                })
                                .collect(),
                            body: body.to_vec(),
                        };
                        let r = handler(req);
                        let resp = hyper::Response::builder()
                            .status(r.status)
                            .header("content-type", r.content_type)
                            .body(Full::new(Bytes::from(r.body)))
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                match tls {
                    None => {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    }
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    }
                }
            });
        }
    });
    Server {
        addr,
        tls: is_tls,
        task,
    }
}

/// A test PKI made fresh per test: a CA, a server certificate for 127.0.0.1 and a client
/// certificate, all PEM, and the server's TLS config that requires a client certificate from
/// the CA.
pub struct TestPki {
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    /// A certificate and key from another CA, which the server must refuse.
    pub stranger_cert_pem: String,
    pub stranger_key_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
    /// The same server certificate with no client certificate asked for: a plain https
    /// server, such as an issuer that authenticates its clients by secret.
    pub open_server_config: Arc<rustls::ServerConfig>,
}

impl TestPki {
    pub fn new() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let ca_params = || {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p
        };
        let ca = CertifiedIssuer::self_signed(ca_params(), KeyPair::generate().unwrap()).unwrap();
        let other_ca =
            CertifiedIssuer::self_signed(ca_params(), KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server_cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let leaf = |issuer: &CertifiedIssuer<'_, KeyPair>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec!["tokenkeeper".to_string()])
                .unwrap()
                .signed_by(&key, issuer)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (client_cert_pem, client_key_pem) = leaf(&ca);
        let (stranger_cert_pem, stranger_key_pem) = leaf(&other_ca);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()
        .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap();
        let server_config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server_cert.der().clone()], key.clone_key())
            .unwrap();
        let open_server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![server_cert.der().clone()], key)
            .unwrap();
        TestPki {
            ca_pem: ca.pem(),
            client_cert_pem,
            client_key_pem,
            stranger_cert_pem,
            stranger_key_pem,
            server_config: Arc::new(server_config),
            open_server_config: Arc::new(open_server_config),
        }
    }
}

/// A random token of `prefix` plus 32 alphanumerics.
pub fn token(prefix: &str) -> String {
    let mut t = prefix.to_string();
    t.extend(std::iter::repeat_with(fastrand::alphanumeric).take(32));
    t
}
