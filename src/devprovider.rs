//! A local, Voucherify-compatible OAuth v1 development provider (`specs/oauth-contract.md`
//! section 1).
//!
//! It serves `POST /v1/oauth/token`, `/v1/oauth/introspect` and `/v1/oauth/token/revoke` on
//! plain HTTP, with the status codes and bodies the official spec documents. It backs
//! `tokenkeeper dev-provider` and `tokenkeeper demo`, and the integration tests use it
//! in-process as the fake provider.
//!
//! It is strict on purpose. A request that breaks the contract (a missing auth header, a JSON
//! body, commas between scopes, an unknown form field, ...) is refused the way Voucherify
//! refuses it *and* recorded in [`DevProvider::violations`], so a test can assert that a client
//! never broke the contract, not just that it coped with the answers. Refusals that a correct
//! client can also meet (wrong credentials, an unknown scope name, the token quota) are answered
//! the same way but are not violations.
//!
//! Failures are injected through the handle ([`DevProvider::set_outage`],
//! [`DevProvider::fail_next_issues`], ...). Order of checks for each request:
//! 1. [`DevProvider::set_drop_connections`] and [`DevProvider::set_outage`]: nothing else is
//!    looked at, nothing is recorded except the request count.
//! 2. Every contract check (path, method, headers, content type, body, fields, values), so a
//!    violation is caught whatever else is injected.
//! 3. Credential values, then the injected failures of one endpoint
//!    ([`DevProvider::set_hang_issues`], [`DevProvider::fail_next_issues`],
//!    [`DevProvider::set_revoke_status`]), which replace the answer to a well-formed request.
//! 4. The provider's own logic (unknown scopes, the token quota, minting, revoking), with the
//!    hostile answers a test asks for ([`DevProvider::set_repeat_tokens`],
//!    [`DevProvider::set_answer_token_type`], [`DevProvider::set_answer_expires_in`]).
//!
//! Tokens and the app token never reach a log line or a violation: a token is named by its
//! fingerprint ([`crate::secret::fingerprint`]).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::provider::voucherify::SCOPES;
use crate::secret::fingerprint;

/// The `X-App-Id` the provider accepts by default. Public on purpose, like `vault server -dev`'s
/// root token: this provider guards nothing.
pub const DEV_APP_ID: &str = "dev-app-id";

/// The `X-App-Token` the provider accepts by default. Not a secret (see [`DEV_APP_ID`]), which
/// is why [`serve`] may print it.
pub const DEV_APP_TOKEN: &str = "dev-app-token";

/// Voucherify's documented token lifetime: 900 s (15 min).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(900);

/// Voucherify's documented quota: "up to 1000 OAuth tokens per project" (2026-07 spec; the
/// 2025-02 spec said 200).
const DEFAULT_MAX_LIVE_TOKENS: usize = 1000;

/// The `client_id` in every token. Made up, with the shape of the spec's example
/// (`a1Bcdefg2HI3Jkl4m5nOP`: 21 letters and digits), so clients parse it like a real one.
const CLIENT_ID: &str = "tkDev0Client1Id2Local";

/// Length of a minted access token. The spec's example is 50 characters; 48 random
/// alphanumerics (about 285 bits) look alike and can't collide in practice.
const TOKEN_LEN: usize = 48;

/// The only `grant_type` the spec's enum allows.
const GRANT_TYPE: &str = "client_credentials";

/// The only request content type the spec documents for the three operations.
const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

/// Largest request body read. The biggest legitimate body (all 42 scopes) is under 1 KiB;
/// the cap keeps a runaway client from filling memory.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long [`DevProvider::shutdown`] lets requests in progress finish before cutting them
/// off: enough for an ordinary answer, short enough that Ctrl-C on `demo` feels immediate.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Pause after a failed `accept` (for example out of file descriptors) so the loop doesn't
/// spin while the condition lasts; short enough that nobody notices once it clears.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Longest form-field name or scope string quoted in a violation. Real ones are short; a
/// longer one is more likely a pasted secret than a name.
const MAX_QUOTED_LEN: usize = 64;

/// Settings of a [`DevProvider`]. `Debug` hides `app_token`: a chosen one may be real.
#[derive(Clone)]
pub struct DevProviderOptions {
    /// `X-App-Id` the provider accepts.
    pub app_id: String,
    /// `X-App-Token` the provider accepts.
    pub app_token: String,
    /// Lifetime of new tokens (`expires_in`), in whole seconds, at least 1 (shorter is raised
    /// to 1 s, fractions are dropped).
    pub lifetime: Duration,
    /// Live tokens allowed at once before `limit_exceeded`.
    pub max_live_tokens: usize,
}

impl fmt::Debug for DevProviderOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevProviderOptions")
            .field("app_id", &self.app_id)
            .field("app_token", &"[redacted]")
            .field("lifetime", &self.lifetime)
            .field("max_live_tokens", &self.max_live_tokens)
            .finish()
    }
}

impl Default for DevProviderOptions {
    fn default() -> Self {
        DevProviderOptions {
            app_id: DEV_APP_ID.to_owned(),
            app_token: DEV_APP_TOKEN.to_owned(),
            lifetime: DEFAULT_LIFETIME,
            max_live_tokens: DEFAULT_MAX_LIVE_TOKENS,
        }
    }
}

/// Requests received per endpoint, whatever the answer (refusals and injected failures
/// included; dropped connections too, since their request was read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub token: u64,
    pub introspect: u64,
    pub revoke: u64,
}

/// A running development provider. The server runs in a spawned task; this is its handle.
/// Dropping the handle stops the server as [`DevProvider::shutdown`] does, without waiting.
pub struct DevProvider {
    /// Where the server listens (the real port when started on port 0).
    addr: SocketAddr,
    /// State shared with the server task.
    shared: Arc<Shared>,
    /// Sending (or dropping) this tells the server to stop.
    stop: watch::Sender<bool>,
    /// The accept loop, awaited by `shutdown`.
    task: JoinHandle<()>,
}

impl fmt::Debug for DevProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The state holds tokens and the app token: show the address only.
        f.debug_struct("DevProvider")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl DevProvider {
    /// Bind `listen` (port 0 picks a free port) and start serving.
    pub async fn start(
        listen: SocketAddr,
        opts: DevProviderOptions,
    ) -> std::io::Result<DevProvider> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(opts)),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), stop_rx));
        debug!(%addr, "dev provider listening");
        Ok(DevProvider {
            addr,
            shared,
            stop,
            task,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, with a loopback address if the server listens on all addresses.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// `Some(status)`: answer every request with `status` and a Voucherify error body, doing
    /// nothing else (no violation recorded, nothing issued or revoked). `None` ends the outage.
    pub fn set_outage(&self, status: Option<u16>) {
        self.shared.lock().outage = status;
    }

    /// Close each connection, once its request is read, without answering.
    pub fn set_drop_connections(&self, on: bool) {
        self.shared.lock().drop_connections = on;
    }

    /// Answer the next `n` well-formed token requests with `status` and a Voucherify error body
    /// (plus `Retry-After: SECONDS` if given), issuing nothing. Replaces an earlier setting.
    pub fn fail_next_issues(&self, n: usize, status: u16, retry_after: Option<u64>) {
        self.shared.lock().fail_issues = FailIssues {
            remaining: n,
            status,
            retry_after: retry_after.map(|secs| secs.to_string()),
        };
    }

    /// [`DevProvider::fail_next_issues`] with `Retry-After` sent as the given text: an
    /// HTTP-date, or a number too large for any sane wait. Text that is no valid header value
    /// is left out.
    pub fn fail_next_issues_retry_after(&self, n: usize, status: u16, retry_after: &str) {
        self.shared.lock().fail_issues = FailIssues {
            remaining: n,
            status,
            retry_after: Some(retry_after.to_owned()),
        };
    }

    /// Token requests mint the token (it is live at once) and then wait `d` before answering,
    /// like a slow server: a client that gives up first leaks a live token.
    pub fn set_issue_delay(&self, d: Duration) {
        self.shared.lock().issue_delay = d;
    }

    /// `Some(status)`: answer well-formed revoke requests with `status` without revoking
    /// anything (a 204 then lies; a 404 has an empty body, like the real one).
    pub fn set_revoke_status(&self, status: Option<u16>) {
        self.shared.lock().revoke_status = status;
    }

    /// While on, well-formed token requests are never answered and mint nothing, like a
    /// provider that hangs mid-request; other endpoints still answer. Requests already hung
    /// stay hung.
    pub fn set_hang_issues(&self, on: bool) {
        self.shared.lock().hang_issues = on;
    }

    /// While on, a token request for scopes that have a live token is answered with that
    /// token again (the newest one, `expires_in` its time left) instead of a new one, like a
    /// provider that caches its tokens.
    pub fn set_repeat_tokens(&self, on: bool) {
        self.shared.lock().repeat_tokens = on;
    }

    /// `Some(text)`: token answers say `token_type: text` instead of `Bearer`. The token is
    /// minted and live all the same.
    pub fn set_answer_token_type(&self, token_type: Option<&str>) {
        self.shared.lock().answer_token_type = token_type.map(str::to_owned);
    }

    /// `Some(secs)`: token answers say `expires_in: secs` (any number, zero and negative
    /// ones included) instead of the lifetime. The token is minted with its real lifetime.
    pub fn set_answer_expires_in(&self, secs: Option<i64>) {
        self.shared.lock().answer_expires_in = secs;
    }

    /// `Some(status)`: answer every well-formed request with `status` and an error body that
    /// echoes the request, its form body in `message` and its headers (the app token too) in
    /// `details`, like a careless proxy or debug endpoint. Nothing is issued or revoked.
    pub fn set_echo_requests(&self, status: Option<u16>) {
        self.shared.lock().echo_requests = status;
    }

    /// While on, the echoing error answers of [`DevProvider::set_echo_requests`] quote every
    /// live token too, as a provider that knows its tokens could: tokens the request never
    /// carried.
    pub fn set_echo_live_tokens(&self, on: bool) {
        self.shared.lock().echo_live_tokens = on;
    }

    /// Introspection answers put `expires_at` this much (whole seconds) before the token's
    /// real expiry, `expires_in` still the truth: a provider whose two figures disagree, or
    /// that ends tokens early. Zero (the default) answers the truth.
    pub fn set_introspect_expires_early(&self, by: Duration) {
        self.shared.lock().introspect_early_secs = by.as_secs();
    }

    /// Lifetime of tokens issued from now on (whole seconds, at least 1).
    pub fn set_lifetime(&self, d: Duration) {
        self.shared.lock().lifetime_secs = whole_secs(d);
    }

    /// Accept only this `X-App-Token` from now on, as if the API key had been deleted or
    /// rotated: the old credentials get 401. Tokens already issued stay live (this provider
    /// doesn't model Voucherify's "existing tokens stop working within one minute").
    pub fn set_app_token(&self, token: &str) {
        self.shared.lock().app_token = token.to_owned();
    }

    /// Every token ever issued, oldest first.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared
            .lock()
            .tokens
            .iter()
            .map(|t| t.token.clone())
            .collect()
    }

    /// Every token ever issued with the moment it was minted (tokio's clock), oldest first:
    /// tests use it to tell a token leaked by a kill mid-issue from one the client lost.
    pub fn issued_with_times(&self) -> Vec<(String, Instant)> {
        self.shared
            .lock()
            .tokens
            .iter()
            .map(|t| (t.token.clone(), t.minted()))
            .collect()
    }

    /// Issued tokens that are neither revoked nor expired, oldest first.
    pub fn live_tokens(&self) -> Vec<String> {
        let now = Instant::now();
        let state = self.shared.lock();
        state
            .tokens
            .iter()
            .filter(|t| t.is_live(now))
            .map(|t| t.token.clone())
            .collect()
    }

    /// Revoked tokens, in the order they were revoked.
    pub fn revoked_tokens(&self) -> Vec<String> {
        self.shared.lock().revoked.clone()
    }

    /// Whether `token` was issued here and is neither revoked nor expired.
    pub fn is_live(&self, token: &str) -> bool {
        let now = Instant::now();
        self.shared
            .lock()
            .find(token)
            .is_some_and(|t| t.is_live(now))
    }

    /// The scopes `token` was issued with, live or not; `None` if it was never issued here.
    pub fn scopes_of(&self, token: &str) -> Option<Vec<String>> {
        let state = self.shared.lock();
        let record = state.find(token)?;
        Some(record.scope.split(' ').map(str::to_owned).collect())
    }

    /// Requests received so far, per endpoint.
    pub fn requests(&self) -> RequestCounts {
        self.shared.lock().counts
    }

    /// One description per request refused for breaking the contract, oldest first. They
    /// never contain a token or the app token.
    pub fn violations(&self) -> Vec<String> {
        self.shared.lock().violations.clone()
    }

    /// Stop accepting connections, let requests in progress finish (for up to
    /// [`SHUTDOWN_GRACE`]), and end the server task.
    pub async fn shutdown(self) {
        // An error only means the server task already ended, which is the goal.
        let _ = self.stop.send(true);
        if let Err(err) = self.task.await {
            warn!(error = %err, "dev provider task ended abnormally");
        }
        debug!(addr = %self.addr, "dev provider stopped");
    }
}

/// For `tokenkeeper dev-provider`: start a provider on `listen`, log where it is and which
/// credentials to use, and serve until `shutdown` resolves.
pub async fn serve(
    listen: SocketAddr,
    opts: DevProviderOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let provider = DevProvider::start(listen, opts.clone()).await?;
    let base_url = provider.base_url();
    if opts.app_token == DEV_APP_TOKEN {
        // The default app token is a public constant, so printing it leaks nothing and saves
        // the user a look at the docs.
        info!(
            base_url = %base_url,
            app_id = %opts.app_id,
            app_token = DEV_APP_TOKEN,
            lifetime_secs = whole_secs(opts.lifetime),
            "Voucherify-compatible development provider ready; try: curl -X POST {base_url}/v1/oauth/token -H 'X-App-Id: {}' -H 'X-App-Token: {DEV_APP_TOKEN}' -d grant_type=client_credentials -d scope=api",
            opts.app_id,
        );
    } else {
        // A chosen app token may be a real secret: name it by fingerprint only.
        info!(
            base_url = %base_url,
            app_id = %opts.app_id,
            app_token_fingerprint = %fingerprint(&opts.app_token),
            lifetime_secs = whole_secs(opts.lifetime),
            "Voucherify-compatible development provider ready; use the app token you configured",
        );
    }
    shutdown.await;
    info!(%base_url, "development provider stopping");
    provider.shutdown().await;
    Ok(())
}

/// State shared between the handle and the server task.
struct Shared {
    /// Locked briefly, never across an `.await`.
    state: Mutex<State>,
}

impl Shared {
    /// The state. A panic while the lock was held can't leave it half-updated in a way that
    /// matters to a development server, so a poisoned lock is used as is rather than
    /// spreading the panic.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Record a contract violation (it must not contain a secret) and log it.
    fn violation(&self, endpoint: Endpoint, what: impl Into<String>) {
        let text = format!("{}: {}", endpoint.path(), what.into());
        warn!(violation = %text, "request breaks the Voucherify OAuth contract");
        self.lock().violations.push(text);
    }
}

/// Everything the provider knows.
struct State {
    /// Accepted `X-App-Id`.
    app_id: String,
    /// Accepted `X-App-Token`.
    app_token: String,
    /// Lifetime of new tokens, whole seconds, at least 1.
    lifetime_secs: u64,
    /// Quota of live tokens.
    max_live_tokens: usize,
    /// Injected outage status, if any.
    outage: Option<u16>,
    /// Close connections without answering.
    drop_connections: bool,
    /// Injected failures of token requests.
    fail_issues: FailIssues,
    /// Wait between minting a token and answering.
    issue_delay: Duration,
    /// Injected answer to revoke requests.
    revoke_status: Option<u16>,
    /// Never answer token requests.
    hang_issues: bool,
    /// Answer token requests with a live token of the same scopes, if there is one.
    repeat_tokens: bool,
    /// `token_type` in token answers instead of `Bearer`.
    answer_token_type: Option<String>,
    /// `expires_in` in token answers instead of the lifetime.
    answer_expires_in: Option<i64>,
    /// Seconds taken off `expires_at` in introspection answers.
    introspect_early_secs: u64,
    /// Answer with an error that echoes the request.
    echo_requests: Option<u16>,
    /// Quote every live token in those echoes too.
    echo_live_tokens: bool,
    /// Every token issued, oldest first.
    tokens: Vec<TokenRecord>,
    /// Token → index in `tokens`.
    index: HashMap<String, usize>,
    /// Tokens neither revoked nor expired, as of the last [`State::expire`]. Kept as a count
    /// because counting `tokens` on every issue made the provider quadratic: a benchmark's
    /// 10,000 sets took it seconds, and it became what the benchmark measured.
    live: usize,
    /// Every token's expiry and index, soonest first, for [`State::expire`].
    expiries: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, usize)>>,
    /// Revoked tokens in revocation order.
    revoked: Vec<String>,
    /// Requests per endpoint.
    counts: RequestCounts,
    /// Contract violations, described.
    violations: Vec<String>,
}

impl State {
    fn new(opts: DevProviderOptions) -> Self {
        State {
            app_id: opts.app_id,
            app_token: opts.app_token,
            lifetime_secs: whole_secs(opts.lifetime),
            max_live_tokens: opts.max_live_tokens,
            outage: None,
            drop_connections: false,
            fail_issues: FailIssues::default(),
            issue_delay: Duration::ZERO,
            revoke_status: None,
            hang_issues: false,
            repeat_tokens: false,
            answer_token_type: None,
            answer_expires_in: None,
            introspect_early_secs: 0,
            echo_requests: None,
            echo_live_tokens: false,
            tokens: Vec::new(),
            index: HashMap::new(),
            live: 0,
            expiries: std::collections::BinaryHeap::new(),
            revoked: Vec::new(),
            counts: RequestCounts::default(),
            violations: Vec::new(),
        }
    }

    /// Take the tokens that expired by `now` out of the live count. A token revoked first was
    /// taken out then.
    fn expire(&mut self, now: Instant) {
        while let Some(std::cmp::Reverse((at, i))) = self.expiries.peek().copied() {
            if at > now {
                break;
            }
            self.expiries.pop();
            if self.tokens.get(i).is_some_and(|t| !t.revoked) {
                self.live = self.live.saturating_sub(1);
            }
        }
    }

    fn find(&self, token: &str) -> Option<&TokenRecord> {
        self.index.get(token).and_then(|&i| self.tokens.get(i))
    }

    fn find_mut(&mut self, token: &str) -> Option<&mut TokenRecord> {
        let i = *self.index.get(token)?;
        self.tokens.get_mut(i)
    }

    /// Mint a live token for `scope` and return its record.
    fn mint(&mut self, scope: &str) -> TokenRecord {
        // fastrand is not a CSPRNG. Fine here: these tokens guard nothing, and each one is
        // checked against the index so a repeat can't alias an earlier token.
        let token = loop {
            let candidate: String = (0..TOKEN_LEN).map(|_| fastrand::alphanumeric()).collect();
            if !self.index.contains_key(&candidate) {
                break candidate;
            }
        };
        let lifetime = Duration::from_secs(self.lifetime_secs);
        let record = TokenRecord {
            token: token.clone(),
            scope: scope.to_owned(),
            expires: Instant::now() + lifetime,
            expires_at: unix_now().saturating_add(self.lifetime_secs),
            lifetime_secs: self.lifetime_secs,
            revoked: false,
        };
        self.index.insert(token, self.tokens.len());
        self.expiries
            .push(std::cmp::Reverse((record.expires, self.tokens.len())));
        self.live += 1;
        self.tokens.push(record.clone());
        record
    }
}

/// Injected failures of token requests.
#[derive(Debug, Clone, Default)]
struct FailIssues {
    /// Token requests still to fail.
    remaining: usize,
    /// Their status.
    status: u16,
    /// Their `Retry-After` header, if any, as sent.
    retry_after: Option<String>,
}

/// One issued token.
#[derive(Clone)]
struct TokenRecord {
    token: String,
    /// Granted scopes, space-separated, as requested.
    scope: String,
    /// When it expires, on tokio's clock (so paused test time moves it).
    expires: Instant,
    /// When it expires, Unix seconds on the wall clock (`expires_at` in answers).
    expires_at: u64,
    /// `expires_in` at issue.
    lifetime_secs: u64,
    revoked: bool,
}

impl TokenRecord {
    /// When it was minted, on tokio's clock.
    fn minted(&self) -> Instant {
        self.expires - Duration::from_secs(self.lifetime_secs)
    }
}

impl TokenRecord {
    fn is_live(&self, now: Instant) -> bool {
        !self.revoked && now < self.expires
    }

    /// The `OAuthToken` object; `expires_in` is the whole seconds left at `now`.
    fn to_json(&self, expires_in: u64) -> Value {
        json!({
            "access_token": self.token,
            "client_id": CLIENT_ID,
            "expires_at": self.expires_at,
            "expires_in": expires_in,
            "scope": self.scope,
            "token_type": "Bearer",
        })
    }
}

/// The three operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Token,
    Introspect,
    Revoke,
}

impl Endpoint {
    fn from_path(path: &str) -> Option<Endpoint> {
        match path {
            "/v1/oauth/token" => Some(Endpoint::Token),
            "/v1/oauth/introspect" => Some(Endpoint::Introspect),
            "/v1/oauth/token/revoke" => Some(Endpoint::Revoke),
            _ => None,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Endpoint::Token => "/v1/oauth/token",
            Endpoint::Introspect => "/v1/oauth/introspect",
            Endpoint::Revoke => "/v1/oauth/token/revoke",
        }
    }

    /// The form fields the spec defines for the operation; anything else is a violation.
    fn fields(self) -> &'static [&'static str] {
        match self {
            Endpoint::Token => &["grant_type", "scope"],
            Endpoint::Introspect | Endpoint::Revoke => &["access_token"],
        }
    }
}

/// Returned by the service to make hyper close the connection without answering.
#[derive(Debug)]
struct CloseConnection(&'static str);

impl fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for CloseConnection {}

/// An answer, before it becomes an HTTP response.
struct Reply {
    status: StatusCode,
    /// `None`: empty body (204, revoke's 404).
    body: Option<Value>,
    /// Extra headers (`Retry-After`, `Allow`).
    headers: Vec<(hyper::header::HeaderName, HeaderValue)>,
    /// Fingerprint of the token concerned, for the log line.
    token_fp: Option<String>,
}

impl Reply {
    fn json(status: StatusCode, body: Value) -> Reply {
        Reply {
            status,
            body: Some(body),
            headers: Vec::new(),
            token_fp: None,
        }
    }

    fn empty(status: StatusCode) -> Reply {
        Reply {
            status,
            body: None,
            headers: Vec::new(),
            token_fp: None,
        }
    }

    /// A Voucherify `Error` body with a key.
    fn error(status: StatusCode, key: &str, message: &str) -> Reply {
        Reply::json(
            status,
            json!({"code": status.as_u16(), "key": key, "message": message}),
        )
    }

    fn unauthorized() -> Reply {
        Reply::error(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized")
    }

    fn missing_parameters() -> Reply {
        Reply::error(
            StatusCode::BAD_REQUEST,
            "missing_parameters",
            "Missing parameters",
        )
    }

    /// The body of an injected failure: Voucherify's `Error` shape, with its documented rate
    /// limit message for 429 and the status's reason otherwise. Statuses that can't carry a
    /// body get none.
    fn injected(status: u16) -> Reply {
        let status = injected_status(status);
        if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return Reply::empty(status);
        }
        let message = if status == StatusCode::TOO_MANY_REQUESTS {
            "Too many requests hit the API too quickly.".to_owned()
        } else {
            sentence_case(status.canonical_reason().unwrap_or("Error"))
        };
        Reply::json(status, json!({"code": status.as_u16(), "message": message}))
    }

    fn with_token(mut self, token: &str) -> Reply {
        self.token_fp = Some(fingerprint(token));
        self
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = match self.body {
            Some(body) => {
                let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            }
            None => Response::new(Full::new(Bytes::new())),
        };
        *response.status_mut() = self.status;
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// Accept connections until told to stop, then give open ones [`SHUTDOWN_GRACE`] to finish.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // A sent value and a dropped handle both mean stop.
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(stream, peer, Arc::clone(&shared), stop.clone()));
                }
                Err(err) => {
                    warn!(error = %err, "dev provider: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            // Reap finished connections so the set doesn't grow for ever.
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(err) = joined {
                    warn!(error = %err, "dev provider: connection task ended abnormally");
                }
            }
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        debug!("dev provider: cutting off connections still busy after the grace period");
    }
    connections.shutdown().await;
}

/// Serve one HTTP/1.1 connection (keep-alive, hyper's default) until it ends or the server
/// stops.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { handle(&shared, req).await }
    });
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop.changed() => {
            // Finish the request in progress, if any, then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        // Clients hanging up and injected drops land here; neither is the server's problem.
        debug!(%peer, error = %err, "dev provider: connection ended with an error");
    }
}

/// Answer one request.
async fn handle(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, CloseConnection> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let endpoint = Endpoint::from_path(&path);
    // An unknown path is logged only if it looks like a name: a client could put a token in it.
    let path = endpoint.map_or_else(|| quote(&path), |e| e.path().to_owned());
    let (drop_connection, outage) = {
        let mut state = shared.lock();
        match endpoint {
            Some(Endpoint::Token) => state.counts.token += 1,
            Some(Endpoint::Introspect) => state.counts.introspect += 1,
            Some(Endpoint::Revoke) => state.counts.revoke += 1,
            None => {}
        }
        (state.drop_connections, state.outage)
    };
    if drop_connection {
        debug!(%method, %path, "dev provider: dropping the connection (injected)");
        return Err(CloseConnection("connection dropped by fault injection"));
    }
    let reply = match (outage, endpoint) {
        (Some(status), _) => Reply::injected(status),
        (None, None) => Reply::error(StatusCode::NOT_FOUND, "not_found", "Resource not found"),
        (None, Some(endpoint)) if method != Method::POST => {
            shared.violation(endpoint, format!("method {method} instead of POST"));
            let mut reply = Reply::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
            );
            reply
                .headers
                .push((ALLOW, HeaderValue::from_static("POST")));
            reply
        }
        (None, Some(endpoint)) => process(shared, endpoint, req).await?,
    };
    debug!(
        %method,
        %path,
        status = reply.status.as_u16(),
        token = %reply.token_fp.as_deref().unwrap_or("-"),
        "dev provider request"
    );
    Ok(reply.into_response())
}

/// Check a POST to one of the three operations against the contract and answer it.
async fn process(
    shared: &Shared,
    endpoint: Endpoint,
    req: Request<Incoming>,
) -> Result<Reply, CloseConnection> {
    let (parts, body) = req.into_parts();
    let bad_request =
        |key: &str, message: &str| Reply::error(StatusCode::BAD_REQUEST, key, message);

    // The spec declares no query parameters. Don't quote the query: it may hold a token.
    if parts.uri.query().is_some_and(|q| !q.is_empty()) {
        shared.violation(
            endpoint,
            "parameters in the URL query; they belong in the form body",
        );
        // Key and message are this provider's: Voucherify documents none for this case.
        return Ok(bad_request(
            "invalid_request",
            "Unexpected query parameters",
        ));
    }

    // Both apiKey headers, always (one security requirement with both schemes).
    let app_id = parts.headers.get("x-app-id");
    let app_token = parts.headers.get("x-app-token");
    let missing: Vec<&str> = [("X-App-Id", app_id), ("X-App-Token", app_token)]
        .into_iter()
        .filter(|(_, value)| value.is_none())
        .map(|(name, _)| name)
        .collect();
    if !missing.is_empty() {
        shared.violation(
            endpoint,
            format!("missing {} header", missing.join(" and ")),
        );
        return Ok(Reply::unauthorized());
    }

    if let Err(problem) = check_content_type(parts.headers.get(CONTENT_TYPE)) {
        shared.violation(endpoint, problem);
        // Key and message are this provider's: Voucherify documents none for this case.
        return Ok(bad_request(
            "invalid_content_type",
            "Content-Type must be application/x-www-form-urlencoded",
        ));
    }

    let body = match read_body(&parts.headers, body).await? {
        Some(body) => body,
        None => {
            return Ok(Reply::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "Request body too large",
            ));
        }
    };
    let fields = match parse_form(&body).and_then(|pairs| check_fields(endpoint, pairs)) {
        Ok(fields) => fields,
        Err(problem) => {
            shared.violation(endpoint, problem);
            // Key and message are this provider's: Voucherify documents none for this case.
            return Ok(bad_request("invalid_payload", "Invalid request body"));
        }
    };

    // Wrong values are a credential problem (a deleted or rotated key), not a contract one.
    let credentials_ok = {
        let state = shared.lock();
        app_id.is_some_and(|v| v.as_bytes() == state.app_id.as_bytes())
            && app_token.is_some_and(|v| v.as_bytes() == state.app_token.as_bytes())
    };

    let echo = shared.lock().echo_requests;
    if let Some(status) = echo {
        let headers: Vec<String> = parts
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        let live: Vec<String> = {
            let state = shared.lock();
            let now = Instant::now();
            if state.echo_live_tokens {
                state
                    .tokens
                    .iter()
                    .filter(|t| t.is_live(now))
                    .map(|t| t.token.clone())
                    .collect()
            } else {
                Vec::new()
            }
        };
        let mut reply = Reply::injected(status);
        if let Some(body_json) = reply.body.as_mut() {
            body_json["message"] = json!(format!(
                "echo: {} live: {}",
                String::from_utf8_lossy(&body),
                live.join(",")
            ));
            body_json["details"] = json!(headers.join("; "));
        }
        return Ok(reply);
    }
    match endpoint {
        Endpoint::Token => issue(shared, &fields, credentials_ok).await,
        Endpoint::Introspect => Ok(introspect(shared, &fields, credentials_ok)),
        Endpoint::Revoke => Ok(revoke(shared, &fields, credentials_ok)),
    }
}

/// `POST /v1/oauth/token`.
async fn issue(
    shared: &Shared,
    fields: &HashMap<String, String>,
    credentials_ok: bool,
) -> Result<Reply, CloseConnection> {
    let endpoint = Endpoint::Token;
    let (Some(grant_type), Some(scope)) =
        (nonempty(fields, "grant_type"), nonempty(fields, "scope"))
    else {
        let absent: Vec<&str> = ["grant_type", "scope"]
            .into_iter()
            .filter(|name| nonempty(fields, name).is_none())
            .collect();
        shared.violation(
            endpoint,
            format!("missing or empty {}", absent.join(" and ")),
        );
        return Ok(Reply::missing_parameters());
    };
    if grant_type != GRANT_TYPE {
        shared.violation(
            endpoint,
            format!("grant_type {} instead of {GRANT_TYPE}", quote(grant_type)),
        );
        return Ok(Reply::error(
            StatusCode::BAD_REQUEST,
            "invalid_grant_type",
            "Invalid grant_type",
        ));
    }
    let invalid_scope = || {
        Reply::error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            &format!("Invalid scope: {scope}"),
        )
    };
    if let Err(problem) = check_scope_syntax(scope) {
        shared.violation(endpoint, format!("scope {}: {problem}", quote(scope)));
        return Ok(invalid_scope());
    }
    if !credentials_ok {
        debug!("dev provider: token request with wrong credentials");
        return Ok(Reply::unauthorized());
    }

    let now = Instant::now();
    if shared.lock().hang_issues {
        debug!("dev provider: leaving a token request unanswered (injected)");
        return std::future::pending().await;
    }
    let (record, delay, expires_in, token_type) = {
        let mut state = shared.lock();
        if state.fail_issues.remaining > 0 {
            state.fail_issues.remaining -= 1;
            let fail = state.fail_issues.clone();
            drop(state);
            let mut reply = Reply::injected(fail.status);
            if let Some(value) = fail
                .retry_after
                .and_then(|text| HeaderValue::from_str(&text).ok())
            {
                reply.headers.push((RETRY_AFTER, value));
            }
            return Ok(reply);
        }
        // A well-formed name outside the documented list: a correct client can send one
        // (Voucherify adds scopes over time), so it's refused but not a violation.
        if scope.split(' ').any(|s| !SCOPES.contains(&s)) {
            return Ok(invalid_scope());
        }
        state.expire(now);
        let repeated = if state.repeat_tokens {
            state
                .tokens
                .iter()
                .rev()
                .find(|t| t.scope == scope && t.is_live(now))
                .cloned()
        } else {
            None
        };
        let (record, left) = match repeated {
            Some(r) => {
                let left = r.expires.saturating_duration_since(now).as_secs();
                (r, left)
            }
            None => {
                if state.live >= state.max_live_tokens {
                    // Voucherify documents the quota but not the error it gives when the
                    // quota is reached: this key and message are our guess, not the real ones.
                    return Ok(Reply::error(
                        StatusCode::BAD_REQUEST,
                        "limit_exceeded",
                        "Limit of OAuth tokens per project exceeded",
                    ));
                }
                let r = state.mint(scope);
                let left = r.lifetime_secs;
                (r, left)
            }
        };
        let expires_in = state
            .answer_expires_in
            .unwrap_or_else(|| i64::try_from(left).unwrap_or(i64::MAX));
        (
            record,
            state.issue_delay,
            expires_in,
            state.answer_token_type.clone(),
        )
    };
    debug!(token = %fingerprint(&record.token), scope, "dev provider: token issued");
    if !delay.is_zero() {
        // The token is already live: a client that gives up now leaks it, as with a slow
        // real server.
        tokio::time::sleep(delay).await;
    }
    let mut body = record.to_json(0);
    body["expires_in"] = json!(expires_in);
    if let Some(t) = token_type {
        body["token_type"] = json!(t);
    }
    Ok(Reply::json(StatusCode::OK, body).with_token(&record.token))
}

/// `POST /v1/oauth/introspect`.
fn introspect(shared: &Shared, fields: &HashMap<String, String>, credentials_ok: bool) -> Reply {
    let Some(token) = nonempty(fields, "access_token") else {
        shared.violation(Endpoint::Introspect, "missing or empty access_token");
        return Reply::missing_parameters();
    };
    if !credentials_ok {
        return Reply::unauthorized().with_token(token);
    }
    let now = Instant::now();
    let state = shared.lock();
    let body = match state.find(token) {
        Some(record) if record.is_live(now) => {
            let left = record.expires.saturating_duration_since(now).as_secs();
            let mut body = record.to_json(left);
            body["active"] = Value::Bool(true);
            if state.introspect_early_secs > 0 {
                body["expires_at"] = json!(
                    record
                        .expires_at
                        .saturating_sub(state.introspect_early_secs)
                );
            }
            body
        }
        // Unknown, expired and revoked tokens all look the same, as the spec documents.
        _ => json!({"active": false}),
    };
    Reply::json(StatusCode::OK, body).with_token(token)
}

/// `POST /v1/oauth/token/revoke`.
fn revoke(shared: &Shared, fields: &HashMap<String, String>, credentials_ok: bool) -> Reply {
    let Some(token) = nonempty(fields, "access_token") else {
        shared.violation(Endpoint::Revoke, "missing or empty access_token");
        return Reply::missing_parameters();
    };
    if !credentials_ok {
        return Reply::unauthorized().with_token(token);
    }
    let now = Instant::now();
    let mut state = shared.lock();
    if let Some(status) = state.revoke_status {
        let status = injected_status(status);
        // Revoke's own 404 has an empty body; other injected statuses get an error body.
        let reply = if status == StatusCode::NOT_FOUND {
            Reply::empty(status)
        } else {
            Reply::injected(status.as_u16())
        };
        return reply.with_token(token);
    }
    state.expire(now);
    let revoked = match state.find_mut(token) {
        Some(record) if record.is_live(now) => {
            record.revoked = true;
            true
        }
        _ => false,
    };
    if revoked {
        state.live = state.live.saturating_sub(1);
        state.revoked.push(token.to_owned());
        Reply::empty(StatusCode::NO_CONTENT).with_token(token)
    } else {
        // "Returns an empty error if a token was not found or it was inactive."
        Reply::empty(StatusCode::NOT_FOUND).with_token(token)
    }
}

/// `Ok` if the content type is `application/x-www-form-urlencoded`, with at most a UTF-8
/// charset parameter; otherwise what is wrong.
fn check_content_type(value: Option<&HeaderValue>) -> Result<(), String> {
    let Some(value) = value else {
        return Err("no Content-Type; expected application/x-www-form-urlencoded".to_owned());
    };
    let Ok(value) = value.to_str() else {
        return Err("Content-Type is not printable ASCII".to_owned());
    };
    let mut parts = value.split(';');
    let media_type = parts.next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case(FORM_CONTENT_TYPE) {
        return Err(format!(
            "Content-Type {} instead of {FORM_CONTENT_TYPE}",
            quote(media_type)
        ));
    }
    for parameter in parts {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        let value = value.trim().trim_matches('"');
        if name.trim().eq_ignore_ascii_case("charset") && !value.eq_ignore_ascii_case("utf-8") {
            return Err(format!(
                "Content-Type charset {} instead of utf-8",
                quote(value)
            ));
        }
    }
    Ok(())
}

/// The body, or `None` if it is over [`MAX_BODY_BYTES`]. A body that can't be read (the
/// client went away) ends the connection.
async fn read_body(
    headers: &hyper::HeaderMap,
    body: Incoming,
) -> Result<Option<Bytes>, CloseConnection> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Ok(None);
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(Some(collected.to_bytes())),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Ok(None),
        Err(err) => {
            debug!(error = %err, "dev provider: reading the request body failed");
            Err(CloseConnection("request body could not be read"))
        }
    }
}

/// Decode an `application/x-www-form-urlencoded` body strictly: the body and every decoded
/// name and value must be UTF-8, and every `%` must start a two-digit hex escape. (The
/// `form_urlencoded` crate would replace bad bytes silently, hiding a client bug.)
fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not valid UTF-8".to_owned())?;
    text.split('&')
        // Empty pieces (`a=1&&b=2`, an empty body) carry nothing; browsers skip them too.
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            Ok((percent_decode(name)?, percent_decode(value)?))
        })
        .collect()
}

/// Decode one form component: `+` is a space, `%XX` a byte.
fn percent_decode(component: &str) -> Result<String, String> {
    let mut bytes = component.bytes();
    let mut out = Vec::with_capacity(component.len());
    while let Some(byte) = bytes.next() {
        match byte {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.next().and_then(hex_digit);
                let lo = bytes.next().and_then(hex_digit);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err("malformed percent-encoding in the body".to_owned()),
                }
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out).map_err(|_| "a percent-encoded field is not valid UTF-8".to_owned())
}

fn hex_digit(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// The fields as a map, refusing duplicates and fields the operation doesn't define.
fn check_fields(
    endpoint: Endpoint,
    pairs: Vec<(String, String)>,
) -> Result<HashMap<String, String>, String> {
    let mut fields = HashMap::new();
    for (name, value) in pairs {
        if !endpoint.fields().contains(&name.as_str()) {
            return Err(format!("unknown form field {}", quote(&name)));
        }
        if fields.contains_key(&name) {
            return Err(format!("form field {name} sent more than once"));
        }
        fields.insert(name, value);
    }
    Ok(fields)
}

/// A field's value if present and not empty (an empty required field is as good as missing).
fn nonempty<'a>(fields: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    fields
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// `Ok` if `scope` is scope names separated by single spaces; otherwise what is wrong.
/// Whether the names exist is checked elsewhere: that is not a contract violation.
fn check_scope_syntax(scope: &str) -> Result<(), &'static str> {
    if scope.contains(',') {
        return Err("scopes separated by commas; the contract wants single spaces");
    }
    if scope.split(' ').any(str::is_empty) {
        return Err("an empty scope (a leading, trailing or doubled space)");
    }
    if scope.chars().any(|c| c.is_whitespace() && c != ' ') {
        return Err("whitespace other than single spaces between scopes");
    }
    Ok(())
}

/// `text` in quotes if it looks like a name (ASCII letters, digits and a little punctuation,
/// short), otherwise only its length: a violation must never quote a secret someone sent in
/// the wrong place. Mixed-case letters with digits, the look of a token, are never quoted.
fn quote(text: &str) -> String {
    let name_like = text.len() <= MAX_QUOTED_LEN
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " ,._-/+:;=".contains(c));
    let token_like = text.chars().any(|c| c.is_ascii_uppercase())
        && text.chars().any(|c| c.is_ascii_lowercase())
        && text.chars().any(|c| c.is_ascii_digit());
    if name_like && !token_like {
        format!("{text:?}")
    } else {
        format!("<{} bytes, not shown>", text.len())
    }
}

/// An injected status as a `StatusCode`. Informational statuses can't end a request and
/// numbers outside 100–999 aren't statuses: both become 500, with a warning.
fn injected_status(status: u16) -> StatusCode {
    match StatusCode::from_u16(status) {
        Ok(code) if !code.is_informational() => code,
        _ => {
            warn!(
                status,
                "dev provider: injected status can't be sent; using 500"
            );
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// "Service Unavailable" → "Service unavailable", Voucherify's style of message.
fn sentence_case(reason: &str) -> String {
    let mut chars = reason.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

/// Whole seconds of a lifetime, at least 1 (Voucherify's `expires_in` is an integer and a
/// zero-second token would be dead on arrival).
fn whole_secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

/// Seconds since the Unix epoch on the wall clock; 0 if the clock is before 1970, which only
/// a badly broken machine shows.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCALHOST: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

    async fn start(opts: DevProviderOptions) -> (DevProvider, reqwest::Client) {
        crate::init_tls();
        let provider = DevProvider::start(LOCALHOST, opts).await.expect("start");
        // No idle pool: its timers would let paused test time jump while a request waits.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        (provider, client)
    }

    fn post(client: &reqwest::Client, p: &DevProvider, path: &str) -> reqwest::RequestBuilder {
        client
            .post(format!("{}{path}", p.base_url()))
            .header("X-App-Id", DEV_APP_ID)
            .header("X-App-Token", DEV_APP_TOKEN)
    }

    async fn issue(client: &reqwest::Client, p: &DevProvider, scope: &str) -> reqwest::Response {
        post(client, p, "/v1/oauth/token")
            .form(&[("grant_type", "client_credentials"), ("scope", scope)])
            .send()
            .await
            .expect("send")
    }

    async fn issue_ok(client: &reqwest::Client, p: &DevProvider, scope: &str) -> String {
        let response = issue(client, p, scope).await;
        assert_eq!(response.status(), 200);
        let body: Value = body_json(response).await;
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    async fn call(
        client: &reqwest::Client,
        p: &DevProvider,
        path: &str,
        token: &str,
    ) -> (u16, String) {
        let response = post(client, p, path)
            .form(&[("access_token", token)])
            .send()
            .await
            .expect("send");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// reqwest is built without its `json` feature.
    async fn body_json(response: reqwest::Response) -> Value {
        serde_json::from_str(&response.text().await.expect("body")).expect("json")
    }

    async fn json_of(response: reqwest::Response) -> (u16, Value) {
        let status = response.status().as_u16();
        (status, body_json(response).await)
    }

    #[tokio::test]
    async fn issue_introspect_revoke_round_trip() {
        let (p, client) = start(DevProviderOptions::default()).await;
        let response = issue(&client, &p, "vouchers campaigns").await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            HeaderValue::from_static("application/json")
        );
        let body: Value = body_json(response).await;
        let object = body.as_object().expect("object");
        assert_eq!(object.len(), 6, "exactly the six OAuthToken fields: {body}");
        let token = body["access_token"].as_str().expect("token").to_owned();
        assert_eq!(token.len(), TOKEN_LEN);
        assert!(token.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(body["client_id"], CLIENT_ID);
        assert_eq!(body["expires_in"], 900);
        let expires_at = body["expires_at"].as_u64().expect("integer expires_at");
        assert!(expires_at.abs_diff(unix_now() + 900) <= 2);
        assert_eq!(body["scope"], "vouchers campaigns");
        assert_eq!(body["token_type"], "Bearer");
        assert!(p.is_live(&token));
        assert_eq!(
            p.scopes_of(&token),
            Some(vec!["vouchers".to_owned(), "campaigns".to_owned()])
        );

        let (status, text) = call(&client, &p, "/v1/oauth/introspect", &token).await;
        assert_eq!(status, 200);
        let body: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(body["active"], true);
        assert_eq!(body["access_token"], token.as_str());
        assert_eq!(body["scope"], "vouchers campaigns");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_at"], expires_at);
        assert!(body["expires_in"].as_u64().expect("expires_in") <= 900);

        assert_eq!(
            call(&client, &p, "/v1/oauth/token/revoke", &token).await,
            (204, String::new())
        );
        assert!(!p.is_live(&token));
        assert_eq!(
            call(&client, &p, "/v1/oauth/token/revoke", &token).await,
            (404, String::new())
        );
        let (status, text) = call(&client, &p, "/v1/oauth/introspect", &token).await;
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&text).expect("json"),
            json!({"active": false})
        );
        let (status, text) = call(&client, &p, "/v1/oauth/introspect", "neverIssued123").await;
        assert_eq!((status, text.as_str()), (200, r#"{"active":false}"#));

        assert_eq!(p.issued_tokens(), vec![token.clone()]);
        assert_eq!(p.revoked_tokens(), vec![token]);
        assert!(p.live_tokens().is_empty());
        assert_eq!(
            p.requests(),
            RequestCounts {
                token: 1,
                introspect: 3,
                revoke: 2
            }
        );
        assert!(p.violations().is_empty(), "{:?}", p.violations());
        p.shutdown().await;
    }

    #[tokio::test]
    async fn missing_auth_header_is_401_and_a_violation() {
        let (p, client) = start(DevProviderOptions::default()).await;
        let response = client
            .post(format!("{}/v1/oauth/token", p.base_url()))
            .header("X-App-Id", DEV_APP_ID)
            .form(&[("grant_type", "client_credentials"), ("scope", "api")])
            .send()
            .await
            .expect("send");
        assert_eq!(
            json_of(response).await,
            (
                401,
                json!({"code": 401, "key": "unauthorized", "message": "Unauthorized"})
            )
        );
        let violations = p.violations();
        assert_eq!(violations.len(), 1);
        assert!(violations[0].contains("X-App-Token"), "{violations:?}");
        assert!(p.issued_tokens().is_empty());
    }

    #[tokio::test]
    async fn wrong_app_token_is_401_but_not_a_violation() {
        let (p, client) = start(DevProviderOptions::default()).await;
        let response = client
            .post(format!("{}/v1/oauth/token", p.base_url()))
            .header("X-App-Id", DEV_APP_ID)
            .header("X-App-Token", "not-the-token")
            .form(&[("grant_type", "client_credentials"), ("scope", "api")])
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 401);

        // A deleted API key: the old credentials stop working, new ones work.
        let token = issue_ok(&client, &p, "api").await;
        p.set_app_token("rotated-token");
        assert_eq!(issue(&client, &p, "api").await.status(), 401);
        assert_eq!(
            call(&client, &p, "/v1/oauth/token/revoke", &token).await.0,
            401
        );
        assert!(p.is_live(&token));
        let response = client
            .post(format!("{}/v1/oauth/token/revoke", p.base_url()))
            .header("X-App-Id", DEV_APP_ID)
            .header("X-App-Token", "rotated-token")
            .form(&[("access_token", token.as_str())])
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 204);
        assert!(p.violations().is_empty(), "{:?}", p.violations());
    }

    #[tokio::test]
    async fn json_body_is_400_and_a_violation() {
        let (p, client) = start(DevProviderOptions::default()).await;
        let response = post(&client, &p, "/v1/oauth/token")
            .header(CONTENT_TYPE, "application/json")
            .body(json!({"grant_type": "client_credentials", "scope": "api"}).to_string())
            .send()
            .await
            .expect("send");
        let (status, body) = json_of(response).await;
        assert_eq!(status, 400);
        assert_eq!(body["code"], 400);
        let violations = p.violations();
        assert_eq!(violations.len(), 1);
        assert!(violations[0].contains("application/json"), "{violations:?}");
        assert!(p.issued_tokens().is_empty());

        // A charset parameter is fine.
        let response = post(&client, &p, "/v1/oauth/token")
            .header(
                CONTENT_TYPE,
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body("grant_type=client_credentials&scope=api+vouchers")
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
        assert_eq!(p.violations().len(), 1);
    }

    #[tokio::test]
    async fn malformed_scope_is_invalid_scope_and_a_violation() {
        let (p, client) = start(DevProviderOptions::default()).await;
        let (status, body) = json_of(issue(&client, &p, "vouchers,campaigns").await).await;
        assert_eq!(status, 400);
        assert_eq!(
            body,
            json!({"code": 400, "key": "invalid_scope", "message": "Invalid scope: vouchers,campaigns"})
        );
        assert_eq!(p.violations().len(), 1);
        for scope in ["vouchers  campaigns", " api", "api ", "api\tvouchers"] {
            assert_eq!(issue(&client, &p, scope).await.status(), 400, "{scope:?}");
        }
        assert_eq!(p.violations().len(), 5, "{:?}", p.violations());
        assert!(p.issued_tokens().is_empty());
    }

    #[tokio::test]
    async fn unknown_scope_is_invalid_scope_but_not_a_violation() {
        let (p, client) = start(DevProviderOptions::default()).await;
        let (status, body) = json_of(issue(&client, &p, "api teleport").await).await;
        assert_eq!(status, 400);
        assert_eq!(
            body,
            json!({"code": 400, "key": "invalid_scope", "message": "Invalid scope: api teleport"})
        );
        assert!(p.violations().is_empty(), "{:?}", p.violations());
        assert!(p.issued_tokens().is_empty());
    }

    #[tokio::test]
    async fn bad_form_fields_are_violations() {
        let (p, client) = start(DevProviderOptions::default()).await;
        let cases = [
            (
                "/v1/oauth/token",
                "grant_type=client_credentials&scope=api&scope=vouchers",
            ),
            (
                "/v1/oauth/token",
                "grant_type=client_credentials&scope=api&client_id=x",
            ),
            ("/v1/oauth/token", "grant_type=password&scope=api"),
            ("/v1/oauth/token", "scope=api"),
            ("/v1/oauth/token", "grant_type=client_credentials&scope=%zz"),
            ("/v1/oauth/token", "grant_type=client_credentials&scope=%FF"),
            ("/v1/oauth/introspect", "token=abc"),
            ("/v1/oauth/token/revoke", ""),
        ];
        for (path, body) in cases {
            let response = post(&client, &p, path)
                .header(CONTENT_TYPE, FORM_CONTENT_TYPE)
                .body(body)
                .send()
                .await
                .expect("send");
            assert_eq!(response.status(), 400, "{path} {body}");
        }
        assert_eq!(p.violations().len(), cases.len(), "{:?}", p.violations());
        let (status, body) = json_of(
            post(&client, &p, "/v1/oauth/introspect")
                .form(&[("nothing", "")])
                .send()
                .await
                .expect("send"),
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(body["code"], 400);
        assert!(p.issued_tokens().is_empty());
    }

    #[tokio::test]
    async fn violations_never_quote_secrets() {
        let (p, client) = start(DevProviderOptions::default()).await;
        let token = issue_ok(&client, &p, "api").await;
        // The token sent as a field name, in the query, and as a grant type.
        for (path, body) in [
            ("/v1/oauth/token/revoke", token.clone()),
            ("/v1/oauth/token", format!("grant_type={token}&scope=api")),
        ] {
            let response = post(&client, &p, path)
                .header(CONTENT_TYPE, FORM_CONTENT_TYPE)
                .body(body)
                .send()
                .await
                .expect("send");
            assert_eq!(response.status(), 400);
        }
        let response = post(
            &client,
            &p,
            &format!("/v1/oauth/token/revoke?access_token={token}"),
        )
        .form(&[("access_token", token.as_str())])
        .send()
        .await
        .expect("send");
        assert_eq!(response.status(), 400);
        let violations = p.violations();
        assert_eq!(violations.len(), 3, "{violations:?}");
        for v in &violations {
            assert!(!v.contains(&token) && !v.contains(DEV_APP_TOKEN), "{v}");
        }
    }

    /// Collects log output in memory.
    #[derive(Clone, Default)]
    struct LogBuffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for LogBuffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn logs_name_tokens_by_fingerprint_only() {
        let logs = LogBuffer::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        // The test runtime has one thread, so the server's tasks log through this too.
        let _guard = tracing::subscriber::set_default(subscriber);
        let (p, client) = start(DevProviderOptions::default()).await;
        let token = issue_ok(&client, &p, "api").await;
        call(&client, &p, "/v1/oauth/introspect", &token).await;
        call(&client, &p, "/v1/oauth/token/revoke", &token).await;
        let response = post(&client, &p, &format!("/v1/{token}"))
            .header(CONTENT_TYPE, FORM_CONTENT_TYPE)
            .body(token.clone())
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 404);
        let response = post(&client, &p, "/v1/oauth/introspect")
            .header(CONTENT_TYPE, FORM_CONTENT_TYPE)
            .body(token.clone())
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 400);
        p.shutdown().await;
        let text = String::from_utf8(logs.0.lock().expect("logs").clone()).expect("utf-8");
        assert!(text.contains(&fingerprint(&token)), "{text}");
        assert!(text.contains("/v1/oauth/token/revoke"), "{text}");
        assert!(!text.contains(&token), "{text}");
        assert!(!text.contains(DEV_APP_TOKEN), "{text}");
    }

    #[tokio::test]
    async fn fail_next_issues_with_retry_after() {
        let (p, client) = start(DevProviderOptions::default()).await;
        p.fail_next_issues(2, 429, Some(7));
        for _ in 0..2 {
            let response = issue(&client, &p, "api").await;
            assert_eq!(response.headers()[RETRY_AFTER], "7");
            assert_eq!(
                json_of(response).await,
                (
                    429,
                    json!({"code": 429, "message": "Too many requests hit the API too quickly."})
                )
            );
        }
        issue_ok(&client, &p, "api").await;

        p.fail_next_issues(1, 503, None);
        let response = issue(&client, &p, "api").await;
        assert!(response.headers().get(RETRY_AFTER).is_none());
        assert_eq!(
            json_of(response).await,
            (503, json!({"code": 503, "message": "Service unavailable"}))
        );
        issue_ok(&client, &p, "api").await;
        assert_eq!(p.issued_tokens().len(), 2);
        assert_eq!(p.requests().token, 5);
        assert!(p.violations().is_empty());
    }

    #[tokio::test]
    async fn issue_delay_mints_before_answering() {
        let (p, client) = start(DevProviderOptions::default()).await;
        p.set_issue_delay(Duration::from_secs(2));
        let base = p.base_url();
        let pending = tokio::spawn(async move {
            let response = client
                .post(format!("{base}/v1/oauth/token"))
                .header("X-App-Id", DEV_APP_ID)
                .header("X-App-Token", DEV_APP_TOKEN)
                .form(&[("grant_type", "client_credentials"), ("scope", "api")])
                .send()
                .await
                .expect("send");
            body_json(response).await
        });
        let started = Instant::now();
        while p.issued_tokens().is_empty() {
            assert!(started.elapsed() < Duration::from_secs(2), "nothing minted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let token = p.issued_tokens().remove(0);
        assert!(p.is_live(&token));
        assert!(!pending.is_finished(), "answered before the delay");
        let body = pending.await.expect("join");
        assert_eq!(body["access_token"], token.as_str());
    }

    #[tokio::test]
    async fn hung_issues_mint_nothing_and_never_answer_while_revoke_works() {
        let (p, client) = start(DevProviderOptions::default()).await;
        let token = issue_ok(&client, &p, "api").await;
        p.set_hang_issues(true);
        let hung = tokio::time::timeout(Duration::from_millis(300), issue(&client, &p, "api"));
        assert!(hung.await.is_err(), "a hung token request was answered");
        assert_eq!(p.issued_tokens().len(), 1);
        assert_eq!(p.requests().token, 2);
        assert_eq!(
            call(&client, &p, "/v1/oauth/token/revoke", &token).await.0,
            204
        );
        p.set_hang_issues(false);
        issue_ok(&client, &p, "api").await;
        assert!(p.violations().is_empty());
    }

    #[tokio::test]
    async fn repeat_tokens_answers_with_the_live_token_of_the_same_scopes() {
        let (p, client) = start(DevProviderOptions::default()).await;
        let first = issue_ok(&client, &p, "api").await;
        p.set_repeat_tokens(true);
        assert_eq!(issue_ok(&client, &p, "api").await, first);
        let other = issue_ok(&client, &p, "orders").await;
        assert_ne!(other, first);
        assert_eq!(p.issued_tokens().len(), 2);
        call(&client, &p, "/v1/oauth/token/revoke", &first).await;
        let fresh = issue_ok(&client, &p, "api").await;
        assert_ne!(fresh, first, "a revoked token was handed out again");
    }

    #[tokio::test]
    async fn hostile_answers_still_mint_the_token() {
        let (p, client) = start(DevProviderOptions::default()).await;
        p.set_answer_token_type(Some("mac"));
        p.set_answer_expires_in(Some(-5));
        let (status, body) = json_of(issue(&client, &p, "api").await).await;
        assert_eq!(status, 200);
        assert_eq!(body["token_type"], "mac");
        assert_eq!(body["expires_in"], -5);
        let token = body["access_token"].as_str().expect("access_token");
        assert!(p.is_live(token));
        p.set_answer_token_type(None);
        p.set_answer_expires_in(None);
        let (_, body) = json_of(issue(&client, &p, "api").await).await;
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 900);
    }

    #[tokio::test]
    async fn outage_answers_everything_with_the_status() {
        let (p, client) = start(DevProviderOptions::default()).await;
        let token = issue_ok(&client, &p, "api").await;
        p.set_outage(Some(503));
        assert_eq!(
            json_of(issue(&client, &p, "api").await).await,
            (503, json!({"code": 503, "message": "Service unavailable"}))
        );
        assert_eq!(
            call(&client, &p, "/v1/oauth/token/revoke", &token).await.0,
            503
        );
        // Even requests that break the contract: nothing is looked at.
        let response = client
            .get(format!("{}/v1/oauth/token", p.base_url()))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 503);
        assert!(p.is_live(&token));
        assert_eq!(p.issued_tokens().len(), 1);
        assert!(p.violations().is_empty());
        p.set_outage(None);
        assert_eq!(
            call(&client, &p, "/v1/oauth/token/revoke", &token).await.0,
            204
        );
    }

    #[tokio::test]
    async fn dropped_connections_get_no_answer() {
        let (p, client) = start(DevProviderOptions::default()).await;
        p.set_drop_connections(true);
        let result = post(&client, &p, "/v1/oauth/token")
            .form(&[("grant_type", "client_credentials"), ("scope", "api")])
            .send()
            .await;
        assert!(result.is_err(), "{result:?}");
        assert!(p.issued_tokens().is_empty());
        p.set_drop_connections(false);
        issue_ok(&client, &p, "api").await;
    }

    #[tokio::test]
    async fn revoke_status_keeps_the_token() {
        let (p, client) = start(DevProviderOptions::default()).await;
        let token = issue_ok(&client, &p, "api").await;
        p.set_revoke_status(Some(500));
        let (status, text) = call(&client, &p, "/v1/oauth/token/revoke", &token).await;
        assert_eq!(status, 500);
        assert_eq!(
            serde_json::from_str::<Value>(&text).expect("json"),
            json!({"code": 500, "message": "Internal server error"})
        );
        assert!(p.is_live(&token));
        p.set_revoke_status(None);
        assert_eq!(
            call(&client, &p, "/v1/oauth/token/revoke", &token).await.0,
            204
        );
    }

    #[tokio::test]
    async fn token_budget_is_enforced() {
        let opts = DevProviderOptions {
            max_live_tokens: 2,
            ..DevProviderOptions::default()
        };
        let (p, client) = start(opts).await;
        let first = issue_ok(&client, &p, "api").await;
        issue_ok(&client, &p, "api").await;
        assert_eq!(
            json_of(issue(&client, &p, "api").await).await,
            (
                400,
                json!({"code": 400, "key": "limit_exceeded", "message": "Limit of OAuth tokens per project exceeded"})
            )
        );
        assert!(p.violations().is_empty());
        assert_eq!(
            call(&client, &p, "/v1/oauth/token/revoke", &first).await.0,
            204
        );
        issue_ok(&client, &p, "api").await;
        assert_eq!(p.live_tokens().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_counts_expiry_and_revocation_once_each() {
        let opts = DevProviderOptions {
            max_live_tokens: 2,
            lifetime: Duration::from_secs(60),
            ..DevProviderOptions::default()
        };
        let (p, client) = start(opts).await;
        let a = issue_ok(&client, &p, "api").await;
        tokio::time::advance(Duration::from_secs(30)).await;
        let b = issue_ok(&client, &p, "api").await;
        assert_eq!(issue(&client, &p, "api").await.status(), 400);
        // `a` expires: one slot frees, and revoking it afterwards frees nothing more.
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(call(&client, &p, "/v1/oauth/token/revoke", &a).await.0, 404);
        let c = issue_ok(&client, &p, "api").await;
        assert_eq!(issue(&client, &p, "api").await.status(), 400);
        // `b` is revoked before it expires: its slot frees at once and not again at expiry.
        assert_eq!(call(&client, &p, "/v1/oauth/token/revoke", &b).await.0, 204);
        tokio::time::advance(Duration::from_secs(1)).await;
        let d = issue_ok(&client, &p, "api").await;
        assert_eq!(issue(&client, &p, "api").await.status(), 400);
        // Past `b`'s expiry (it was revoked), `c` and `d` still fill the budget.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(issue(&client, &p, "api").await.status(), 400);
        let mut live = p.live_tokens();
        live.sort();
        let mut want = vec![c, d];
        want.sort();
        assert_eq!(live, want);
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_expire() {
        let (p, client) = start(DevProviderOptions::default()).await;
        let token = issue_ok(&client, &p, "api").await;
        tokio::time::advance(Duration::from_secs(345)).await;
        let (status, text) = call(&client, &p, "/v1/oauth/introspect", &token).await;
        assert_eq!(status, 200);
        let body: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(body["active"], true);
        assert_eq!(body["expires_in"], 555);

        p.set_lifetime(Duration::from_millis(10)); // raised to 1 s
        let short = issue_ok(&client, &p, "api").await;
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!p.is_live(&short));
        assert!(p.is_live(&token));

        tokio::time::advance(Duration::from_secs(555)).await;
        assert!(!p.is_live(&token));
        assert!(p.live_tokens().is_empty());
        let (status, text) = call(&client, &p, "/v1/oauth/introspect", &token).await;
        assert_eq!((status, text.as_str()), (200, r#"{"active":false}"#));
        assert_eq!(
            call(&client, &p, "/v1/oauth/token/revoke", &token).await.0,
            404
        );
        assert!(p.revoked_tokens().is_empty());
        assert_eq!(p.issued_tokens().len(), 2);
    }

    #[tokio::test]
    async fn wrong_paths_methods_and_sizes() {
        let (p, client) = start(DevProviderOptions::default()).await;
        let (status, body) = json_of(
            post(&client, &p, "/v1/vouchers")
                .send()
                .await
                .expect("send"),
        )
        .await;
        assert_eq!(
            (status, body),
            (
                404,
                json!({"code": 404, "message": "Resource not found", "key": "not_found"})
            )
        );
        let response = client
            .get(format!("{}/v1/oauth/token", p.base_url()))
            .send()
            .await
            .expect("send");
        assert_eq!(response.headers()[ALLOW], "POST");
        let (status, body) = json_of(response).await;
        assert_eq!(status, 405);
        assert_eq!(body["code"], 405);
        assert_eq!(p.violations().len(), 1);

        let big = format!(
            "grant_type=client_credentials&scope={}",
            "a".repeat(MAX_BODY_BYTES)
        );
        let response = post(&client, &p, "/v1/oauth/token")
            .header(CONTENT_TYPE, FORM_CONTENT_TYPE)
            .body(big)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 413);
    }

    #[tokio::test]
    async fn shutdown_stops_listening() {
        let (p, client) = start(DevProviderOptions::default()).await;
        issue_ok(&client, &p, "api").await;
        let base = p.base_url();
        p.shutdown().await;
        let result = client.post(format!("{base}/v1/oauth/token")).send().await;
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn serve_runs_until_shutdown() {
        crate::init_tls();
        // Find a free port, then serve on it.
        let probe = TcpListener::bind(LOCALHOST).await.expect("bind");
        let addr = probe.local_addr().expect("addr");
        drop(probe);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(addr, DevProviderOptions::default(), async {
            let _ = rx.await;
        }));
        let client = reqwest::Client::new();
        let mut answered = false;
        for _ in 0..100 {
            let result = client
                .post(format!("http://{addr}/v1/oauth/token"))
                .header("X-App-Id", DEV_APP_ID)
                .header("X-App-Token", DEV_APP_TOKEN)
                .form(&[("grant_type", "client_credentials"), ("scope", "api")])
                .send()
                .await;
            if let Ok(response) = result {
                assert_eq!(response.status(), 200);
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(answered);
        tx.send(()).expect("send");
        server.await.expect("join").expect("serve");
    }
}
