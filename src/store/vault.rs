//! A HashiCorp Vault or OpenBao client, KV version 2, over its HTTP API: just what tokenkeeper
//! needs (read, check-and-set write, metadata, delete and destroy, list) and two ways to log in
//! (a token, renewed while it is renewable; AppRole, logged in again before its TTL runs out).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore, SemaphorePermit};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::config::{StoreAuth, StoreConfig};
use crate::provider::{BodyError, HeldTokens, Redactor};
use crate::schedule::RetryClass;
use crate::secret::{Secret, SecretError};

/// Largest answer we read from the store: a KV secret here is a few hundred bytes, a LIST of
/// members a few KiB.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// A login or renewal is due after this fraction of the token's TTL, leaving a third of it
/// for retries if the store is slow or briefly down.
const RENEW_AT: f64 = 2.0 / 3.0;

/// Why a store request failed. Never carries a secret: bodies are reduced to Vault's
/// `errors` list, which names paths and reasons only.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {store}: {op}: cannot reach the store")]
    Transport {
        store: String,
        op: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("store {store}: {op}: the store is unavailable (HTTP {status}{detail})")]
    Unavailable {
        store: String,
        op: &'static str,
        status: u16,
        detail: String,
    },
    #[error("store {store}: {op}: refused (HTTP {status}{detail})")]
    Refused {
        store: String,
        op: &'static str,
        status: u16,
        detail: String,
    },
    #[error(
        "store {store}: {op}: check-and-set conflict at {path}: another writer changed it since version {expected}"
    )]
    Conflict {
        store: String,
        op: &'static str,
        path: String,
        expected: u64,
    },
    #[error("store {store}: {op}: unexpected answer: {what}")]
    Malformed {
        store: String,
        op: &'static str,
        what: String,
    },
    #[error("store {store}: cannot read its {what}")]
    Secret {
        store: String,
        what: &'static str,
        #[source]
        source: SecretError,
    },
    #[error("store {store}: cannot build the HTTP client")]
    Client {
        store: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("store {store}: cannot build the HTTP client")]
    Proxy {
        store: String,
        #[source]
        source: crate::provider::ProxyError,
    },
    #[error("store {store}: cannot read ca_file {path}")]
    CaFile {
        store: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// How soon to try again: an outage (transport, 5xx, sealed) backs off like a provider's;
    /// a refusal or a conflict needs a person or another writer to act, so it is retried slowly.
    pub fn retry_class(&self) -> RetryClass {
        match self {
            StoreError::Transport { .. } | StoreError::Unavailable { .. } => RetryClass::Transient,
            StoreError::Conflict { .. } => RetryClass::Transient,
            _ => RetryClass::Slow,
        }
    }
}

/// A logged-in store token and when to renew or replace it.
struct Session {
    login: Arc<Login>,
    /// `None`: the token does not expire (a root token) or cannot be renewed; use it as is.
    renew_at: Option<Instant>,
    renewable: bool,
}

/// A store token with its `X-Vault-Token` header, built once per session, not per request:
/// every request of a session shares both without copying the token.
pub(super) struct Login {
    token: Secret,
    header: HeaderValue,
}

/// The header a request carries its store token in.
const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-vault-token");

/// The header a request names its namespace in (Vault Enterprise, OpenBao).
const NAMESPACE_HEADER: HeaderName = HeaderName::from_static("x-vault-namespace");

/// Where a request goes: a URL parsed once, for a path requested again and again (a set's
/// path, written at each refresh), or the text of one, parsed by the HTTP client at the
/// request as every URL was before (a path requested once or twice).
pub(super) enum Target {
    Parsed(Url),
    Text(String),
}

/// A set's path in a KV v2 mount, with the URLs of its data and its metadata parsed once: its
/// writer requests them at every refresh, and parsing a URL per request was a visible share
/// of a store request's CPU (docs/performance.md, "The store path").
pub struct KvPath {
    pub(super) path: String,
    pub(super) data: Target,
    pub(super) metadata: Target,
}

/// One KV v2 mount of one store, with its login.
pub struct Vault {
    name: String,
    http: reqwest::Client,
    address: Url,
    mount: String,
    /// The namespace's header value, checked once rather than at each request.
    namespace: Option<HeaderValue>,
    auth: StoreAuth,
    max_versions: u32,
    /// Set once the start read the mount's own `max_versions` and found it equal to
    /// `max_versions`: a path the daemon creates then keeps that many versions without a
    /// metadata write of its own (one request a token fewer).
    mount_keeps: AtomicBool,
    /// Per-request deadline: a request under way ends within it.
    timeout: Duration,
    session: Mutex<Option<Session>>,
    /// `max_concurrent_requests` permits, taken by the sets' requests (see [`Vault::permit`]).
    permits: Semaphore,
    /// Every secret this store was sent or answered (the tokens written and read, the login
    /// and its credentials), cut out of whatever the store says later: a store that knows a
    /// token can quote it in the error to any request, not only the one that carried it.
    held: HeldTokens,
}

/// A KV v2 secret as read: its data and version.
pub struct Versioned {
    pub version: u64,
    pub data: Value,
    /// Set when the latest version was deleted or destroyed.
    pub deleted: bool,
    /// The path's custom metadata (`Null` when it has none).
    pub custom: Value,
}

/// A store's answer to a request that did not fail: its JSON body (`Null` when empty), and
/// whether what it names was there. KV v2 answers 404 for a path never written, and also for
/// one whose latest version was deleted, then with its metadata in the body.
pub(super) struct Answer {
    pub(super) found: bool,
    pub(super) body: Value,
}

impl Answer {
    pub(super) fn found(self) -> Option<Value> {
        self.found.then_some(self.body)
    }
}

/// The fields of a request body that hold secrets, at any depth: the token a set's document
/// carries, and AppRole's login. The rest (a set's name, the metadata, a lease) is not secret,
/// and cutting ordinary words out of the store's messages would garble them. A new secret
/// field in any body goes here.
const SECRET_FIELDS: [&str; 3] = ["access_token", "role_id", "secret_id"];

/// Longest a secret from the store is cut out of its text: the longest token lifetime a
/// provider may grant (a year, see the providers' `MAX_LIFETIME`), so that an absurd
/// `expires_at` in a document cannot hold memory, or overflow the clock, for longer.
const MAX_HOLD: Duration = Duration::from_secs(365 * 24 * 3600);

/// Note every secret in `v` (see [`SECRET_FIELDS`]) in `held`: a token until its document's
/// `expires_at` and a clock's doubt after it, anything undated for a clock's doubt from now.
fn hold_secrets(held: &HeldTokens, v: &Value, now: SystemTime) {
    let doubt = crate::journal::CLOCK_DOUBT_WINDOW;
    match v {
        Value::Array(items) => items.iter().for_each(|i| hold_secrets(held, i, now)),
        Value::Object(fields) => {
            let left = left_by_expiry(fields, now);
            for (k, f) in fields {
                match f.as_str() {
                    Some(s) if SECRET_FIELDS.contains(&k.as_str()) => {
                        held.hold(&Secret::new(s.to_owned()), Instant::now() + left + doubt);
                    }
                    _ => hold_secrets(held, f, now),
                }
            }
        }
        _ => {}
    }
}

/// How long after `now` a document's `expires_at` lies (nothing if it has passed or is not
/// there), at most [`MAX_HOLD`].
fn left_by_expiry(fields: &serde_json::Map<String, Value>, now: SystemTime) -> Duration {
    fields
        .get("expires_at")
        .and_then(Value::as_str)
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .and_then(|t| t.duration_since(now).ok())
        .unwrap_or_default()
        .min(MAX_HOLD)
}

/// The values of [`SECRET_FIELDS`] in `v`, into `out`.
fn secrets_in<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| secrets_in(i, out)),
        Value::Object(fields) => {
            for (k, f) in fields {
                match f.as_str() {
                    Some(s) if SECRET_FIELDS.contains(&k.as_str()) => out.push(s),
                    _ => secrets_in(f, out),
                }
            }
        }
        _ => {}
    }
}

impl Vault {
    pub fn new(cfg: &StoreConfig) -> Result<Vault, StoreError> {
        crate::init_tls();
        // A store a reload adds brings its own: no child may inherit them either.
        crate::secret::hide_env_of(cfg.auth.secret_sources().into_iter().map(|(_, s)| s));
        let builder = reqwest::Client::builder()
            .user_agent(concat!("tokenkeeper/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(crate::provider::CONNECT_TIMEOUT)
            .timeout(cfg.timeout)
            // Requests are bounded by the permits; idle sockets beyond them would only be
            // kept open for nothing (a start of 1,000 sets left 1,104 held before the bound).
            .pool_max_idle_per_host(cfg.max_concurrent_requests.max(1))
            // No replays of our own (the provider client's reason): each writer retries by
            // itself, with backoff, where the retry shows in the logs.
            .retry(reqwest::retry::never().max_retries_per_request(0))
            // A store never redirects an API call; following one could send the token elsewhere.
            .redirect(reqwest::redirect::Policy::none());
        // The store token crosses to the store in every request: the provider's proxy rule.
        let mut builder =
            crate::provider::with_proxy_policy(builder).map_err(|source| StoreError::Proxy {
                store: cfg.name.clone(),
                source,
            })?;
        if let Some(path) = &cfg.ca_file {
            let pem = super::ca::read_ca_file(path).map_err(|source| StoreError::CaFile {
                store: cfg.name.clone(),
                path: path.display().to_string(),
                source,
            })?;
            let cert =
                reqwest::Certificate::from_pem(&pem).map_err(|source| StoreError::Client {
                    store: cfg.name.clone(),
                    source,
                })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|source| StoreError::Client {
            store: cfg.name.clone(),
            source,
        })?;
        let namespace = match &cfg.namespace {
            Some(ns) => Some(
                HeaderValue::from_str(ns).map_err(|_| StoreError::Malformed {
                    store: cfg.name.clone(),
                    op: "namespace",
                    what: "the namespace is not a valid HTTP header value".into(),
                })?,
            ),
            None => None,
        };
        Ok(Vault {
            name: cfg.name.clone(),
            http,
            address: cfg.address.clone(),
            mount: cfg.mount.clone(),
            namespace,
            auth: cfg.auth.clone(),
            max_versions: cfg.max_versions,
            mount_keeps: AtomicBool::new(false),
            timeout: cfg.timeout,
            session: Mutex::new(None),
            permits: Semaphore::new(cfg.max_concurrent_requests.max(1)),
            held: HeldTokens::default(),
        })
    }

    /// A permit for one of the sets' requests, held while it is in flight, so that thousands
    /// of sets share `max_concurrent_requests` connections. The lease and member records (a
    /// few requests a lease period) take none: a queue of writes must never delay a lease
    /// renewal past the lease. The semaphore is never closed; should that change, a closed one
    /// lets requests through rather than failing them.
    pub async fn permit(&self) -> Option<SemaphorePermit<'_>> {
        self.permits.acquire().await.ok()
    }

    pub(super) fn mount(&self) -> &str {
        &self.mount
    }

    pub(super) fn max_versions(&self) -> u32 {
        self.max_versions
    }

    /// Note the mount's own `max_versions`, as the start read it.
    pub(super) fn note_mount_max_versions(&self, mount: u64) {
        let keeps = mount == u64::from(self.max_versions);
        self.mount_keeps.store(keeps, Ordering::Relaxed);
    }

    /// Whether a path the daemon creates needs a metadata write for its `max_versions`: not
    /// when the mount already keeps that many versions of every path.
    pub(super) fn new_path_needs_metadata(&self) -> bool {
        !self.mount_keeps.load(Ordering::Relaxed)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/{path}", self.address.as_str().trim_end_matches('/'))
    }

    /// The URL of `path` (under the API's `v1/`), parsed now when it parses: a URL that does
    /// not is left for the request to refuse, as it always was.
    pub(super) fn target(&self, path: &str) -> Target {
        let url = self.url(path);
        match Url::parse(&url) {
            Ok(parsed) => Target::Parsed(parsed),
            Err(_) => Target::Text(url),
        }
    }

    /// `path` in this store's mount, its URLs parsed once for the many requests of a writer.
    pub fn kv_path(&self, path: &str) -> KvPath {
        KvPath {
            path: path.to_string(),
            data: self.target(&format!("{}/data/{path}", self.mount)),
            metadata: self.target(&format!("{}/metadata/{path}", self.mount)),
        }
    }

    /// A login of `token`: the token with its header. A token no header can carry is refused
    /// here, once, as the request would have refused it (without quoting it).
    fn login_of(&self, op: &'static str, token: Secret) -> Result<Login, StoreError> {
        let mut header = HeaderValue::from_str(token.expose())
            .map_err(|_| self.malformed(op, "the store token is not a valid HTTP header value"))?;
        // Kept out of any header table a connection may build (HTTP/2's HPACK).
        header.set_sensitive(true);
        Ok(Login { token, header })
    }

    /// One HTTP request; `token` is sent as `X-Vault-Token` when given. Answers 2xx with the
    /// JSON body (or `Null` for 204), 404 as `Ok(None)`, and everything else as an error.
    async fn send(
        &self,
        op: &'static str,
        method: Method,
        target: &Target,
        token: Option<&Login>,
        body: Option<&Value>,
    ) -> Result<Answer, StoreError> {
        let mut req = match target {
            Target::Parsed(url) => self.http.request(method, url.clone()),
            Target::Text(url) => self.http.request(method, url.as_str()),
        };
        if let Some(t) = token {
            self.held.hold(
                &t.token,
                Instant::now() + crate::journal::CLOCK_DOUBT_WINDOW,
            );
            req = req.header(TOKEN_HEADER, t.header.clone());
        }
        if let Some(b) = body {
            hold_secrets(&self.held, b, crate::clock::now_wall());
        }
        if let Some(ns) = &self.namespace {
            req = req.header(NAMESPACE_HEADER, ns.clone());
        }
        if let Some(b) = body {
            // Straight to bytes: `to_string` goes through `fmt` and checks the UTF-8 again.
            let bytes = serde_json::to_vec(b).map_err(|_| StoreError::Malformed {
                store: self.name.clone(),
                op,
                what: "cannot encode the request body".into(),
            })?;
            req = req
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(bytes);
        }
        let transport = |source| StoreError::Transport {
            store: self.name.clone(),
            op,
            source,
        };
        // Counted until the answer is read: the store thread gathers answers while more than
        // one can come (see `io`).
        let _in_flight = super::io::InFlight::start();
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        // Read with the cap, not whole then measured: a store sending without end must not
        // fill memory before the cap is looked at.
        let bytes = match crate::provider::read_capped(resp, MAX_ANSWER_BYTES).await {
            Ok(bytes) => bytes,
            Err(BodyError::Transport(source)) => return Err(transport(source)),
            Err(BodyError::TooLarge) => {
                return Err(StoreError::Malformed {
                    store: self.name.clone(),
                    op,
                    what: format!("body larger than {MAX_ANSWER_BYTES} bytes"),
                });
            }
        };
        let json: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status.is_success() {
            hold_secrets(&self.held, &json, crate::clock::now_wall());
            return Ok(Answer {
                found: true,
                body: json,
            });
        }
        // KV v2 answers 404 for a missing secret, with no errors, and also for a deleted
        // latest version (with the metadata in `data`); both are "nothing to read".
        if status == StatusCode::NOT_FOUND {
            return Ok(Answer {
                found: false,
                body: json,
            });
        }
        let errors: Vec<String> = json
            .get("errors")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let detail = if errors.is_empty() {
            String::new()
        } else {
            // A store, or a proxy before it, may echo the request in its error: the store
            // token and the body's secrets (a token written, login credentials) must not
            // reach the log or the status file, and its text must not forge log lines.
            let mut secrets: Vec<&str> = token.map(|t| t.token.expose()).into_iter().collect();
            if let Some(b) = body {
                secrets_in(b, &mut secrets);
            }
            let text = crate::provider::sanitize(&errors.join("; "));
            let text = Redactor::new(secrets).redact(&text);
            format!(": {}", self.held.redact(&text))
        };
        let code = status.as_u16();
        if status.is_server_error() || code == 429 {
            // 503 is also how a sealed or standby store answers: an outage, retried.
            Err(StoreError::Unavailable {
                store: self.name.clone(),
                op,
                status: code,
                detail,
            })
        } else {
            Err(StoreError::Refused {
                store: self.name.clone(),
                op,
                status: code,
                detail,
            })
        }
    }

    /// The store token to use now, logging in or renewing first when due.
    async fn token(&self) -> Result<Arc<Login>, StoreError> {
        let mut session = self.session.lock().await;
        let due = match &*session {
            None => true,
            Some(s) => s.renew_at.is_some_and(|at| Instant::now() >= at),
        };
        if due {
            let next = self.refresh(session.take()).await?;
            *session = Some(next);
        }
        match &*session {
            Some(s) => Ok(Arc::clone(&s.login)),
            None => Err(StoreError::Malformed {
                store: self.name.clone(),
                op: "login",
                what: "no token".into(),
            }),
        }
    }

    /// Forget the session, so the next request logs in again (after a 403 under AppRole:
    /// the token may have been revoked or expired early).
    async fn forget_session(&self) {
        *self.session.lock().await = None;
    }

    /// A fresh session: AppRole logs in; a configured token is looked up (first time) or
    /// renewed (when renewable and due).
    async fn refresh(&self, old: Option<Session>) -> Result<Session, StoreError> {
        match &self.auth {
            StoreAuth::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                let secret = |what, src: &crate::secret::SecretSource| {
                    src.load().map_err(|source| StoreError::Secret {
                        store: self.name.clone(),
                        what,
                        source,
                    })
                };
                let role_id = secret("AppRole role_id", role_id)?;
                let secret_id = secret("AppRole secret_id", secret_id)?;
                let body = json!({ "role_id": role_id.expose(), "secret_id": secret_id.expose() });
                let answer = self
                    .send(
                        "AppRole login",
                        Method::POST,
                        &Target::Text(self.url(&format!("auth/{mount}/login"))),
                        None,
                        Some(&body),
                    )
                    .await?
                    .found()
                    .ok_or_else(|| self.malformed("AppRole login", "404: no such auth mount"))?;
                let auth = answer.get("auth").cloned().unwrap_or(Value::Null);
                let token = auth
                    .get("client_token")
                    .and_then(Value::as_str)
                    .ok_or_else(|| self.malformed("AppRole login", "no auth.client_token"))?;
                let ttl = auth
                    .get("lease_duration")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                info!(store = %self.name, ttl_secs = ttl, "logged in to the store with AppRole");
                Ok(Session {
                    login: Arc::new(self.login_of("AppRole login", Secret::new(token))?),
                    renew_at: renew_at(ttl),
                    // Logging in again is simpler and surer than renewing an AppRole token,
                    // whose max TTL ends renewals anyway.
                    renewable: false,
                })
            }
            StoreAuth::Token(source) => {
                let token = source.load().map_err(|source| StoreError::Secret {
                    store: self.name.clone(),
                    what: "token",
                    source,
                })?;
                let (op, method, path) = match &old {
                    Some(s) if s.renewable => {
                        ("token renewal", Method::POST, "auth/token/renew-self")
                    }
                    _ => ("token lookup", Method::GET, "auth/token/lookup-self"),
                };
                let login = self.login_of(op, token)?;
                let answer = self
                    .send(
                        op,
                        method,
                        &Target::Text(self.url(path)),
                        Some(&login),
                        None,
                    )
                    .await?
                    .found()
                    .ok_or_else(|| self.malformed(op, "404"))?;
                let (ttl, renewable) =
                    if let Some(auth) = answer.get("auth").filter(|a| !a.is_null()) {
                        (
                            auth.get("lease_duration")
                                .and_then(Value::as_u64)
                                .unwrap_or(0),
                            auth.get("renewable")
                                .and_then(Value::as_bool)
                                .unwrap_or(false),
                        )
                    } else {
                        let data = answer.get("data").cloned().unwrap_or(Value::Null);
                        (
                            data.get("ttl").and_then(Value::as_u64).unwrap_or(0),
                            data.get("renewable")
                                .and_then(Value::as_bool)
                                .unwrap_or(false),
                        )
                    };
                debug!(store = %self.name, ttl_secs = ttl, renewable, "{op} done");
                if old.is_some() {
                    info!(store = %self.name, ttl_secs = ttl, "renewed the store token");
                }
                Ok(Session {
                    login: Arc::new(login),
                    // A token that cannot be renewed is used until the store refuses it.
                    renew_at: if renewable { renew_at(ttl) } else { None },
                    renewable,
                })
            }
        }
    }

    pub(super) fn malformed(&self, op: &'static str, what: &str) -> StoreError {
        StoreError::Malformed {
            store: self.name.clone(),
            op,
            what: what.into(),
        }
    }

    /// A request with the session's token; a 403 under AppRole logs in again once.
    pub(super) async fn call(
        &self,
        op: &'static str,
        method: Method,
        target: &Target,
        body: Option<&Value>,
    ) -> Result<Answer, StoreError> {
        let token = self.token().await?;
        match self
            .send(op, method.clone(), target, Some(&token), body)
            .await
        {
            Err(StoreError::Refused { status: 403, .. })
                if matches!(self.auth, StoreAuth::AppRole { .. }) =>
            {
                self.forget_session().await;
                let token = self.token().await?;
                self.send(op, method, target, Some(&token), body).await
            }
            other => other,
        }
    }

    /// Keep the login fresh even while nothing is written: sleep until the session's renewal
    /// time, then renew or log in again. Runs until the store is dropped.
    pub async fn keep_logged_in(self: std::sync::Arc<Self>) {
        loop {
            // Log in at once (a bad credential shows at start, not at the first write), then
            // again whenever the session is due; a request like the sets' (no more sockets
            // than their cap, even while they all read at start).
            let permit = self.permit().await;
            let login = self.token().await;
            release(permit).await;
            if let Err(e) = login {
                tracing::warn!(store = %self.name, error = %crate::error_chain(&e), "could not renew the store login; retrying");
                tokio::time::sleep(LOGIN_RECHECK).await;
                continue;
            }
            let at = self.session.lock().await.as_ref().and_then(|s| s.renew_at);
            match at {
                Some(at) => tokio::time::sleep_until(at).await,
                // A token that never needs renewing (or was just forgotten): look again later.
                None => tokio::time::sleep(LOGIN_RECHECK).await,
            }
        }
    }
}

/// Give a permit back once its request's connection is back in the pool. The pool takes a
/// connection back in a task of its own, woken when the answer ends; a yield lets that task
/// run first. Without it the next request, finding no idle connection, opened one more: 9 or
/// 10 connections at once under a cap of 8, where with it there were 8.
pub async fn release(permit: Option<SemaphorePermit<'_>>) {
    if permit.is_some() {
        tokio::task::yield_now().await;
    }
}

/// How often an idle login looks whether it is due, and the pause after a failed renewal.
const LOGIN_RECHECK: Duration = Duration::from_secs(5);

/// The longest token lifetime a store's answer is believed for: the bound of every duration in
/// the config. A larger one, from a broken or hostile store, would overflow the clock.
const MAX_TTL: Duration = crate::config::MAX_DURATION;

fn renew_at(ttl_secs: u64) -> Option<Instant> {
    let ttl = Duration::from_secs(ttl_secs).min(MAX_TTL);
    (ttl_secs > 0).then(|| Instant::now() + ttl.mul_f64(RENEW_AT))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store of one set, at `address`, logged in with a token from a file never read here.
    fn vault(address: &str) -> Vault {
        let text = format!(
            "providers:\n  p: {{ kind: voucherify, app_id: a, app_token: b }}\nstores:\n  s:\n    kind: vault\n    address: {address}\n    namespace: team/a\n    auth: {{ token: {{ file: /nonexistent }} }}\nscope_sets:\n  - {{ name: s, provider: p, scopes: [api], store: {{ name: s, path: a/b }} }}\n"
        );
        let config = crate::config::parse(&text, std::path::Path::new("t"))
            .unwrap()
            .config;
        Vault::new(&config.stores["s"]).unwrap()
    }

    #[test]
    fn a_writer_s_urls_parsed_once_are_those_its_requests_built_each_time() {
        // The URLs a set's writer keeps must be exactly what parsing the text of each request
        // gave before (`url` plus the HTTP client's parse), whatever the address's slash.
        for address in ["http://127.0.0.1:8200", "http://127.0.0.1:8200/"] {
            let v = vault(address);
            let kv = v.kv_path("team/a_b-c.d");
            for (target, text, want) in [
                (&kv.data, v.url("secret/data/team/a_b-c.d"), "data"),
                (
                    &kv.metadata,
                    v.url("secret/metadata/team/a_b-c.d"),
                    "metadata",
                ),
            ] {
                let Target::Parsed(url) = target else {
                    panic!("{text} not parsed");
                };
                assert_eq!(url, &Url::parse(&text).unwrap());
                let want = format!("http://127.0.0.1:8200/v1/secret/{want}/team/a_b-c.d");
                assert_eq!(url.as_str(), want);
            }
            assert_eq!(kv.path, "team/a_b-c.d");
        }
    }

    #[test]
    fn the_store_token_s_header_never_shows_the_token() {
        // Built once per session and shared by its requests: marked sensitive, so neither its
        // Debug nor an HTTP/2 header table carries the token.
        let v = vault("http://127.0.0.1:8200");
        let login = v
            .login_of("token lookup", Secret::new("s.hunter2"))
            .unwrap();
        assert!(login.header.is_sensitive());
        assert!(!format!("{:?}", login.header).contains("hunter2"));
        assert_eq!(login.header.to_str().unwrap(), "s.hunter2");
        // A token no header can carry is refused at its login, and not quoted.
        let e = v
            .login_of("token lookup", Secret::new("s.hunter2\nX: y"))
            .err()
            .unwrap();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert_eq!(v.namespace.as_ref().unwrap(), "team/a");
    }

    #[tokio::test]
    async fn a_lifetime_past_the_clock_s_reach_is_bounded_not_a_panic() {
        // A store answering `lease_duration: 18446744073709551615` panicked the daemon at
        // start (an Instant overflow).
        assert!(super::renew_at(u64::MAX).is_some());
        assert!(super::renew_at(0).is_none());
    }

    #[test]
    fn a_documents_secrets_are_held_for_what_is_left_of_it_at_the_time_given() {
        use std::time::{Duration, UNIX_EPOCH};
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let doc = serde_json::json!({ "expires_at": "2027-01-15T08:10:00Z" });
        let fields = doc.as_object().unwrap();
        // 1_800_000_000 is 2027-01-15T08:00:00Z: ten minutes left.
        assert_eq!(super::left_by_expiry(fields, now), Duration::from_secs(600));
        let later = now + Duration::from_secs(900);
        assert_eq!(super::left_by_expiry(fields, later), Duration::ZERO);
        let long_before = now - 2 * super::MAX_HOLD;
        assert_eq!(super::left_by_expiry(fields, long_before), super::MAX_HOLD);
    }
}
