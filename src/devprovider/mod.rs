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
//!    [`DevProvider::set_revoke_status`]), which replace the answer to a well-formed request,
//!    and [`DevProvider::set_revoke_delay`], which holds a revoke request back before it is
//!    taken up.
//! 4. The provider's own logic (unknown scopes, the token quota, minting, revoking), with the
//!    hostile answers a test asks for ([`DevProvider::set_repeat_tokens`],
//!    [`DevProvider::set_answer_token_type`], [`DevProvider::set_answer_expires_in`]).
//!
//! Tokens and the app token never reach a log line or a violation: a token is named by its
//! fingerprint ([`crate::secret::fingerprint`]).
//!
//! Layout, each layer using only those below it: `server` (connections, routing, the
//! connection-level faults) → `contract` (the strict checks) → `operations` (the three
//! operations) → `state` (what the provider knows) and `wire` (endpoints, answers, quoting).

mod contract;
mod operations;
mod server;
mod state;
mod wire;

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::secret::fingerprint;
use server::accept_loop;
use state::{FailIssues, Shared, State, whole_secs};

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

    /// Revoke requests wait `d` before they are taken up, like a slow server: the token is
    /// revoked only then, so a client that gives up first leaves it live.
    pub fn set_revoke_delay(&self, d: Duration) {
        self.shared.lock().revoke_delay = d;
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

    /// Token answers carry each of `fields` as given: `Some(value)` replaces (or adds) the
    /// field, `None` leaves it out; an empty list restores the usual answer. The token is
    /// minted and live all the same, as with a server whose answers a client cannot read.
    pub fn set_answer_fields(&self, fields: &[(&str, Option<serde_json::Value>)]) {
        self.shared.lock().answer_fields = fields
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect();
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
    /// [`SHUTDOWN_GRACE`](server::SHUTDOWN_GRACE)), and end the server task.
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

#[cfg(test)]
mod tests;
