//! Token providers behind one trait: issue, revoke, introspect.
//!
//! A provider turns config into HTTP requests and answers into [`Issued`] tokens or
//! classified [`ProviderError`]s; when and how often to call it is the daemon's business.

mod body;
mod ca;
pub mod oauth2;
mod proxy;
mod redact;
pub mod refresh_store;
pub mod settings;
pub mod square;
pub mod voucherify;
pub mod yaml;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::schedule::{RETRY_AFTER_CAP, RetryClass};
use crate::secret::{Secret, SecretError};
pub(crate) use body::{BodyError, read_body, read_capped};
pub use ca::{CaFileError, ca_certificates, read_ca_file};
pub use proxy::{HTTPS_PROXY_VARS, ProxyError, with_proxy_policy};
pub(crate) use redact::HeldTokens;
pub use redact::{REDACTED, Redactor};
pub use settings::{
    AuthMethod, ClientCredential, OAuth2Endpoints, ProviderConfig, ProviderKind, SquareGrant,
    is_loopback,
};

/// Connect deadline for every provider. Ten seconds covers a slow TLS handshake across
/// regions; a provider slower than that to accept is better retried than waited for.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response body we read. OAuth answers are a few hundred bytes; the cap keeps a
/// misbehaving server or proxy from filling memory.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Longest token accepted. Real access tokens (including JWTs) stay well under this; a larger
/// one is a broken answer.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Idle keep-alive connections are dropped after this long. Refreshes for one provider come
/// minutes apart, so a longer idle connection would mostly meet a server that closed it.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A freshly issued token.
#[derive(Debug)]
pub struct Issued {
    pub token: Secret,
    /// As the provider spells it (`Bearer`).
    pub token_type: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// When the request was sent: the lifetime counts from here, which errs on the safe side.
    pub issued_at: Instant,
    /// Lifetime the provider granted, measured on our monotonic clock from `issued_at`.
    pub lifetime: Duration,
    /// The answer gave no lifetime and `lifetime` is the configured default: an assumption,
    /// which the provider may outlive, so the token is never dropped unrevoked for it.
    pub lifetime_assumed: bool,
}

impl Issued {
    pub fn expires_at(&self) -> Instant {
        self.issued_at + self.lifetime
    }

    /// Wall-clock expiry for the token files, in the reader's (local) clock.
    pub fn expires_at_wall(&self) -> SystemTime {
        let left = self.expires_at().saturating_duration_since(Instant::now());
        crate::clock::now_wall() + left
    }
}

/// What introspection says about a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Introspection {
    Active { remaining: Option<Duration> },
    Inactive,
}

/// When a provider's tokens may be revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// Superseded tokens, and at stop the current one unless the set keeps it.
    Always,
    /// Nothing, unless the set itself says `on_shutdown: revoke` (Square, whose RevokeToken
    /// is an opt-in).
    OptIn,
    /// The provider cannot revoke (an OAuth 2.0 server without a revocation endpoint): tokens
    /// expire on their own.
    Unsupported,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{operation} refused with HTTP {status}: {detail}")]
    Refused {
        operation: &'static str,
        status: u16,
        detail: String,
    },
    #[error("{operation} failed with HTTP {status}: {detail}")]
    Unavailable {
        operation: &'static str,
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },
    // Not "{operation} request failed": the operation is often "token request" already.
    #[error("{operation}: no complete answer from the server")]
    Transport {
        operation: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// A TLS handshake that failed on the server's certificate: the one failure a
    /// `ca_file` (or a wrong host name) explains, said in those words.
    #[error(
        "{operation}: the server's certificate is not trusted; if a private CA issued it, give that CA as the provider's ca_file"
    )]
    Untrusted {
        operation: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("{operation}: malformed answer: {what}")]
    Malformed {
        operation: &'static str,
        what: String,
    },
    /// An answer with a well-formed token, refused for another of its fields (a token_type
    /// other than Bearer, an absurd lifetime). The provider minted the token: it is live until
    /// revoked, so it travels with the error for the caller to revoke. Its `Debug` and
    /// `Display` show the fingerprint only.
    #[error("{operation}: refused the token it issued ({fingerprint}): {what}")]
    MintedRefused {
        operation: &'static str,
        what: String,
        fingerprint: String,
        token: Secret,
    },
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("cannot build the HTTP client")]
    Proxy(#[source] ProxyError),
    #[error("cannot read {what}")]
    Secret {
        what: &'static str,
        #[source]
        source: SecretError,
    },
    #[error("cannot use ca_file {path}")]
    CaFile {
        path: String,
        #[source]
        source: CaFileError,
    },
    #[error("{what} cannot be used")]
    ClientKey {
        what: &'static str,
        #[source]
        source: oauth2::KeyError,
    },
    /// A `client_assertion` that cannot be sent; `from` names where it was read (a file's
    /// path), never its text.
    #[error("client_assertion from {from} cannot be used")]
    ClientAssertion {
        from: String,
        #[source]
        source: oauth2::AssertionError,
    },
    #[error("{what} is not a valid HTTP header value")]
    BadHeader { what: &'static str },
    #[error("{operation}: the provider offers no endpoint for it")]
    Unsupported { operation: &'static str },
    #[error("{operation}: {what}")]
    Discovery {
        operation: &'static str,
        what: String,
    },
    #[error("cannot keep the rotated refresh token")]
    State(#[source] refresh_store::RefreshStoreError),
}

impl ProviderError {
    /// A request that got no whole answer: [`ProviderError::Untrusted`] when the server's
    /// certificate was refused, [`ProviderError::Transport`] otherwise.
    pub(crate) fn transport(operation: &'static str, source: reqwest::Error) -> ProviderError {
        // rustls says "invalid peer certificate" for every certificate it refuses; reqwest
        // keeps it only as text in its error's sources.
        if crate::error_chain(&source).contains("invalid peer certificate") {
            ProviderError::Untrusted { operation, source }
        } else {
            ProviderError::Transport { operation, source }
        }
    }

    /// How the daemon should retry after this error.
    pub fn retry_class(&self) -> RetryClass {
        match self {
            ProviderError::Unavailable { .. } | ProviderError::Transport { .. } => {
                RetryClass::Transient
            }
            _ => RetryClass::Slow,
        }
    }

    /// The token a refused answer carried ([`ProviderError::MintedRefused`]), live at the
    /// provider until revoked.
    pub fn minted(&self) -> Option<&Secret> {
        match self {
            ProviderError::MintedRefused { token, .. } => Some(token),
            _ => None,
        }
    }

    /// This error with `redact` applied to the text the provider supplied (error details,
    /// descriptions of malformed answers).
    pub(crate) fn redacted(mut self, redact: impl Fn(&str) -> String) -> ProviderError {
        match &mut self {
            ProviderError::Refused { detail, .. } | ProviderError::Unavailable { detail, .. } => {
                *detail = redact(detail);
            }
            ProviderError::Malformed { what, .. }
            | ProviderError::Discovery { what, .. }
            | ProviderError::MintedRefused { what, .. } => {
                *what = redact(what);
            }
            _ => {}
        }
        self
    }

    /// What an operator should look at first after a token request failed this way, for the
    /// log line that reports it: a refusal is about the credentials, a discovery failure
    /// about the issuer, an unreadable credential about its source.
    pub fn advice(&self) -> &'static str {
        match self {
            ProviderError::Refused { .. } | ProviderError::MintedRefused { .. } => {
                "provider refused to issue a token; check the credentials and scopes"
            }
            ProviderError::Discovery { .. } => {
                "could not find the provider's endpoints; check the issuer (or give token_url)"
            }
            ProviderError::Untrusted { .. } | ProviderError::CaFile { .. } => {
                "cannot reach the provider over TLS: its certificate is not trusted"
            }
            ProviderError::Secret { .. }
            | ProviderError::ClientKey { .. }
            | ProviderError::ClientAssertion { .. }
            | ProviderError::BadHeader { .. } => {
                "cannot authenticate to the provider: the client credential cannot be used"
            }
            ProviderError::Malformed { .. } => {
                "could not read the provider's answer; is this the right endpoint?"
            }
            _ => "could not get a token",
        }
    }

    /// The provider's `Retry-After`, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The operations every provider offers.
pub trait TokenProvider: Send + Sync {
    /// Obtain a new token for `scopes`.
    fn issue(
        &self,
        scopes: &[String],
    ) -> impl Future<Output = Result<Issued, ProviderError>> + Send;
    /// Revoke `token`. A token the provider no longer knows counts as revoked.
    fn revoke(&self, token: &Secret) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// Ask whether `token` is still active.
    fn introspect(
        &self,
        token: &Secret,
    ) -> impl Future<Output = Result<Introspection, ProviderError>> + Send;
    /// When this provider's tokens may be revoked. It may change once the provider has
    /// discovered its endpoints.
    fn revocation(&self) -> Revocation {
        Revocation::Always
    }
    /// How many of this provider's sets may carry out a stop at once, if it bounds them.
    /// Sets beyond it wait for a turn in a few bytes instead of in a stop of their own, whose
    /// revocations could only wait for the provider's request permits anyway.
    fn stop_turns(&self) -> Option<Arc<tokio::sync::Semaphore>> {
        None
    }
}

/// Stop turns per request permit: enough stopping sets that every permit stays busy while
/// some sets journal and remove their files, few enough that 10,000 sets do not each hold a
/// stop in memory while they wait (it made a 10,000-set stop 20 MiB larger than the daemon
/// at rest).
const STOP_TURNS_PER_PERMIT: usize = 4;

/// A configured provider: its kind, and the permits that bound its requests in flight.
#[derive(Debug)]
pub struct Provider {
    kind: Kind,
    /// `max_concurrent_requests` permits. Every request takes one, so thousands of sets
    /// share a few keep-alive connections and the provider sees a bounded load.
    permits: tokio::sync::Semaphore,
    /// Every token of this provider the daemon may still hold: cut out of whatever text the
    /// provider sends, whichever request it answers (a provider that knows its tokens can
    /// quote any of them).
    held: HeldTokens,
    /// [`STOP_TURNS_PER_PERMIT`] turns per permit, for [`TokenProvider::stop_turns`].
    stop_turns: Arc<tokio::sync::Semaphore>,
}

/// How long a token whose lifetime the provider did not say stays on the list of tokens to
/// cut out of its text: as long as the daemon offers a token it cannot date for revocation.
const UNDATED_HOLD: Duration = crate::journal::CLOCK_DOUBT_WINDOW;

/// Every provider kind, dispatched without boxing.
// One per configured provider, shared by all its sets: the size of the largest kind is paid a
// handful of times per process, never per set, and a box would only add a pointer chase.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Kind {
    Voucherify(voucherify::Voucherify),
    OAuth2(oauth2::OAuth2),
    Square(square::Square),
}

pub(crate) fn load(
    what: &'static str,
    source: &crate::secret::SecretSource,
) -> Result<Secret, ProviderError> {
    source
        .load()
        .map_err(|source| ProviderError::Secret { what, source })
}

impl Provider {
    /// Build a provider from config, reading its secrets now so a missing key fails at start.
    pub fn build(cfg: &ProviderConfig, http: &reqwest::Client) -> Result<Provider, ProviderError> {
        crate::secret::hide_env_of(cfg.kind.secret_sources().into_iter().map(|(_, s)| s));
        Ok(Provider {
            kind: Kind::build(cfg, http)?,
            permits: tokio::sync::Semaphore::new(cfg.max_concurrent_requests.max(1)),
            stop_turns: Arc::new(tokio::sync::Semaphore::new(
                cfg.max_concurrent_requests
                    .max(1)
                    .saturating_mul(STOP_TURNS_PER_PERMIT),
            )),
            held: HeldTokens::default(),
        })
    }

    /// `e` without the provider's own secrets, nor `token` (the one the request carried).
    /// Square cuts its refresh token out itself: it changes with every issue.
    fn redact(&self, e: ProviderError, token: Option<&Secret>) -> ProviderError {
        let mut r = match &self.kind {
            Kind::Voucherify(p) => Redactor::new(p.secrets()),
            Kind::OAuth2(p) => Redactor::new(p.secrets()),
            Kind::Square(p) => Redactor::new(p.secrets()),
        };
        if let Some(t) = token {
            r.add(t.expose());
        }
        e.redacted(|text| self.held.redact(&r.redact(text)))
    }

    /// A permit for one request. The semaphore is never closed; should that change, a
    /// closed one lets requests through rather than failing them.
    async fn permit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.permits.acquire().await.ok()
    }
}

impl Kind {
    fn build(cfg: &ProviderConfig, http: &reqwest::Client) -> Result<Kind, ProviderError> {
        match &cfg.kind {
            ProviderKind::Voucherify {
                base_url,
                app_id,
                app_token,
            } => {
                let app_id = load("app_id", app_id)?;
                let app_token = load("app_token", app_token)?;
                Ok(Kind::Voucherify(voucherify::Voucherify::new(
                    http.clone(),
                    base_url.clone(),
                    &app_id,
                    &app_token,
                    cfg.timeout,
                )?))
            }
            ProviderKind::OAuth2 { .. } => {
                Ok(Kind::OAuth2(oauth2::OAuth2::from_config(cfg, http)?))
            }
            ProviderKind::Square {
                base_url,
                client_id,
                client_secret,
                grant,
                state_file,
            } => {
                let client_secret = client_secret
                    .as_ref()
                    .map(|s| load("client_secret", s))
                    .transpose()?;
                let (mode, seed) = match grant {
                    SquareGrant::RefreshToken(s) => {
                        (square::Mode::RefreshToken, load("refresh_token", s)?)
                    }
                    SquareGrant::Renew(s) => (square::Mode::Renew, load("access_token", s)?),
                };
                Ok(Kind::Square(square::Square::new(square::Settings {
                    http: http.clone(),
                    name: cfg.name.clone(),
                    base_url: base_url.clone(),
                    client_id: client_id.clone(),
                    client_secret,
                    mode,
                    seed,
                    store: refresh_store::RefreshStore::new(state_file.clone()),
                    timeout: cfg.timeout,
                })?))
            }
        }
    }
}

impl TokenProvider for Provider {
    // The requests' futures (reqwest's, with its body buffers) are boxed: every set's task
    // holds its own future across these calls, and an unboxed request would make each of
    // 10,000 idle tasks as large as a request in flight. Boxed after the permit, at most
    // `max_concurrent_requests` of them exist at once.
    async fn issue(&self, scopes: &[String]) -> Result<Issued, ProviderError> {
        let _permit = self.permit().await;
        let r = match &self.kind {
            Kind::Voucherify(p) => Box::pin(p.issue(scopes)).await,
            Kind::OAuth2(p) => Box::pin(p.issue(scopes)).await,
            Kind::Square(p) => Box::pin(p.issue(scopes)).await,
        };
        // The token issued, or one minted in an answer refused: held until revoked either way.
        match &r {
            Ok(i) => self.held.hold(&i.token, i.issued_at + i.lifetime),
            Err(e) => {
                if let Some(t) = e.minted() {
                    self.held.hold(t, Instant::now() + UNDATED_HOLD);
                }
            }
        }
        r.map_err(|e| self.redact(e, None))
    }

    async fn revoke(&self, token: &Secret) -> Result<(), ProviderError> {
        let _permit = self.permit().await;
        let r = match &self.kind {
            Kind::Voucherify(p) => Box::pin(p.revoke(token)).await,
            Kind::OAuth2(p) => Box::pin(p.revoke(token)).await,
            Kind::Square(p) => Box::pin(p.revoke(token)).await,
        }
        .map_err(|e| self.redact(e, Some(token)));
        if r.is_ok() {
            self.held.release(token);
        }
        r
    }

    async fn introspect(&self, token: &Secret) -> Result<Introspection, ProviderError> {
        let _permit = self.permit().await;
        let r = match &self.kind {
            Kind::Voucherify(p) => Box::pin(p.introspect(token)).await,
            Kind::OAuth2(p) => Box::pin(p.introspect(token)).await,
            Kind::Square(p) => Box::pin(p.introspect(token)).await,
        };
        // A token checked at start is one the daemon may adopt or revoke: held either way.
        match &r {
            Ok(Introspection::Active { remaining }) => {
                self.held
                    .hold(token, Instant::now() + remaining.unwrap_or(UNDATED_HOLD));
            }
            Ok(Introspection::Inactive) => self.held.release(token),
            Err(_) => {}
        }
        r.map_err(|e| self.redact(e, Some(token)))
    }

    fn stop_turns(&self) -> Option<Arc<tokio::sync::Semaphore>> {
        Some(Arc::clone(&self.stop_turns))
    }

    fn revocation(&self) -> Revocation {
        match &self.kind {
            Kind::Voucherify(p) => p.revocation(),
            Kind::OAuth2(p) => p.revocation(),
            Kind::Square(p) => p.revocation(),
        }
    }
}

/// `check`'s look at the metadata of a provider that discovers its endpoints, so that an
/// auth_method the server does not list is known before the daemon starts; `None` for every
/// provider that does not discover. No credential is needed (discovery is a plain GET), so
/// none is read, except a client certificate that a server may ask for on every connection:
/// then the connection offers it if it can be read, and goes without it otherwise.
pub async fn probe_metadata(
    cfg: &ProviderConfig,
    http: &reqwest::Client,
) -> Option<Result<(reqwest::Url, oauth2::Discovered), ProviderError>> {
    let ProviderKind::OAuth2 {
        endpoints: OAuth2Endpoints::Discover { issuer },
        auth_method,
        ca_file,
        ..
    } = &cfg.kind
    else {
        return None;
    };
    if *auth_method == AuthMethod::TlsClientAuth
        && let Ok(p) = oauth2::OAuth2::from_config(cfg, http)
    {
        return p.probe_metadata().await;
    }
    let http = match oauth2::client_for(ca_file.as_deref(), None, http) {
        Ok(http) => http,
        Err(e) => return Some(Err(e)),
    };
    Some(oauth2::fetch_metadata(&http, cfg.timeout, *auth_method, issuer).await)
}

/// The one HTTP client the process shares: one connection pool, rustls, our User-Agent.
pub fn http_client() -> Result<reqwest::Client, ProviderError> {
    client_builder()?.build().map_err(ProviderError::Client)
}

/// What every client of the process shares; a provider with a client certificate builds
/// its own from it.
fn client_builder() -> Result<reqwest::ClientBuilder, ProviderError> {
    crate::init_tls();
    let builder = reqwest::Client::builder()
        .user_agent(concat!("tokenkeeper/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        // Token endpoints never redirect; following one could send credentials elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        // No replays of our own: reqwest's default keeps a copy of every request (headers,
        // body, credentials included) to resend it after an HTTP/2 refusal, twelve allocations
        // a token that nothing uses, since each set retries by itself, with backoff and
        // within its provider's budget, where the retry shows in the logs and the metrics.
        .retry(reqwest::retry::never().max_retries_per_request(0));
    with_proxy_policy(builder).map_err(ProviderError::Proxy)
}

/// The `Retry-After` header as text, apart from its parsing so that the pure answer parsers
/// (and their fuzz targets) take plain text rather than a header map.
pub(crate) fn retry_after_text(headers: &reqwest::header::HeaderMap) -> Option<&str> {
    headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()
}

/// The one header an answer is read by, kept past the response: a copy of the whole header
/// map costs a token request eight allocations, and a copy of `Retry-After` none when absent.
pub(crate) fn retry_after_of(resp: &reqwest::Response) -> Option<String> {
    retry_after_text(resp.headers()).map(str::to_owned)
}

/// `Retry-After` in either of its forms (RFC 9110 section 10.2.3), delta-seconds or an
/// HTTP-date read against `now`, capped at [`RETRY_AFTER_CAP`]: a provider asking for a day
/// (or for more seconds than a `u64` holds) still gets the longest wait we honour, not our
/// own short backoff. A date in the past asks for no wait.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Only digits, so a parse failure is an overflow: a wait beyond any cap.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(RETRY_AFTER_CAP));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(RETRY_AFTER_CAP),
    )
}

/// Text from a provider, made safe for one log line and a terminal: length capped, then every
/// control, bidi or invisible character written as a visible escape ([`crate::shown`]). A
/// server may echo input; it must not forge log lines, drive the operator's terminal, make
/// its text read other than it is, or flood the log.
pub(crate) fn sanitize(text: &str) -> String {
    /// Enough for any real error message.
    const MAX: usize = 300;
    let capped: String = text.chars().take(MAX).collect();
    let mut out = crate::shown(&capped).into_owned();
    if text.chars().count() > MAX {
        out.push('…');
    }
    out
}

/// serde_json's message with every quoted string blanked: "invalid type: string \"…\"" can
/// quote a value from the body, and a broken answer may carry a token in the wrong field.
pub(crate) fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    // Syntax and EOF messages are serde_json's own words and quote nothing from the body; one
    // of them even holds a lone quote ("expected `\"`") that would blank the position away.
    if !e.is_data() {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    let mut quoted = false;
    // The value is quoted with Rust's escapes: an escaped quote does not end it, and taking
    // it for the end would print the rest of the value.
    let mut escaped = false;
    for c in text.chars() {
        if quoted {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                (false, _) => {}
            }
        } else if c == '"' {
            out.push_str("\"…\"");
            quoted = true;
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) fn malformed(operation: &'static str, what: impl Into<String>) -> ProviderError {
    ProviderError::Malformed {
        operation,
        what: what.into(),
    }
}

/// Retry class of an answer's HTTP status: 408, 429 and 5xx pass; anything else is a refusal
/// that needs a person.
pub(crate) fn is_transient(status: reqwest::StatusCode) -> bool {
    status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

/// The classified error for a non-success answer whose body `detail` describes. The status
/// is a raw `u16` and Retry-After plain text, so that the pure answer parsers (and their fuzz
/// targets) can call it with any number a fuzzer makes up.
pub(crate) fn failure(
    operation: &'static str,
    status: u16,
    retry_after: Option<&str>,
    detail: String,
) -> ProviderError {
    if matches!(status, 408 | 429 | 500..=599) {
        ProviderError::Unavailable {
            operation,
            status,
            detail,
            retry_after: retry_after.and_then(|v| parse_retry_after(v, crate::clock::now_wall())),
        }
    } else {
        ProviderError::Refused {
            operation,
            status,
            detail,
        }
    }
}

/// A lifetime in seconds as a provider sent it, if it is sane: more than zero, at most
/// `max`.
pub(crate) fn sane_lifetime(secs: i64, max: Duration) -> Option<Duration> {
    u64::try_from(secs)
        .ok()
        .filter(|&s| s > 0)
        .map(Duration::from_secs)
        .filter(|d| *d <= max)
}

/// RFC 6750 `b64token`: what a bearer token may contain. Anything else (spaces, newlines,
/// quotes) could break the env and header file formats or a consumer's HTTP header.
pub(crate) fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// `refusal` (a [`ProviderError::Malformed`] about an answer's other fields) with the
/// answer's `access_token`, when that is a well-formed token the provider has minted, so the
/// caller can revoke it. A token that is not a `b64token` is not used for anything, so it is
/// left out.
pub(crate) fn refused_minted(refusal: ProviderError, access_token: &str) -> ProviderError {
    match refusal {
        ProviderError::Malformed { operation, what } if is_b64token(access_token) => {
            let token = Secret::new(access_token);
            ProviderError::MintedRefused {
                operation,
                what,
                fingerprint: token.fingerprint(),
                token,
            }
        }
        other => other,
    }
}

/// The `access_token` of a 200 token answer, read apart from every other field: an answer
/// refused for any of them (missing, of the wrong type, out of range) still carried a token
/// the provider minted, which is live until revoked.
#[derive(serde::Deserialize)]
struct Carried {
    access_token: Option<String>,
}

impl Drop for Carried {
    fn drop(&mut self) {
        if let Some(t) = &mut self.access_token {
            zeroize::Zeroize::zeroize(t);
        }
    }
}

/// `refusal` of a 200 token answer's `body`, carrying the token the body holds when it holds
/// a well-formed one and the refusal does not carry it yet: whatever else in the answer is
/// wrong, the provider minted that token, and only a refusal that carries it gets it revoked.
/// The first JSON value of the body is read, so text after it does not hide the token; an
/// answer with no whole JSON object first, or whose `access_token` is not a string, has no
/// token to salvage.
pub(crate) fn salvage_minted(refusal: ProviderError, body: &[u8]) -> ProviderError {
    if refusal.minted().is_some() {
        return refusal;
    }
    let first = serde_json::Deserializer::from_slice(body)
        .into_iter::<Carried>()
        .next();
    let Some(Ok(mut carried)) = first else {
        return refusal;
    };
    let Some(token) = carried.access_token.take().map(Secret::new) else {
        return refusal;
    };
    match refusal {
        ProviderError::Malformed { .. } => refused_minted(refusal, token.expose()),
        // A 200 answer with an error list and a token (Square's envelope allows both).
        ProviderError::Refused {
            operation, detail, ..
        } if is_b64token(token.expose()) => ProviderError::MintedRefused {
            operation,
            what: format!("the answer also reports errors: {detail}"),
            fingerprint: token.fingerprint(),
            token,
        },
        other => other,
    }
}

/// The checks every bearer-token answer passes (Voucherify's and RFC 6749's alike): an
/// `access_token` that is a `b64token`, and a `token_type` of Bearer in any case.
pub(crate) fn check_bearer(
    operation: &'static str,
    access_token: &str,
    token_type: &str,
) -> Result<(), ProviderError> {
    if !is_b64token(access_token) {
        return Err(malformed(
            operation,
            format!(
                "access_token is empty, longer than {MAX_TOKEN_LEN} bytes, or has characters a bearer token cannot have"
            ),
        ));
    }
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err(refused_minted(
            malformed(
                operation,
                format!("token_type {:?} is not Bearer", sanitize(token_type)),
            ),
            access_token,
        ));
    }
    Ok(())
}

/// A scripted HTTP server for the providers' unit tests: each connection gets the next
/// canned answer, and every request is recorded whole.
#[cfg(test)]
pub(crate) mod testutil {
    use std::sync::{Arc, Mutex};

    use reqwest::Url;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    pub(crate) struct Canned {
        pub url: Url,
        seen: Arc<Mutex<Vec<String>>>,
    }

    impl Canned {
        pub async fn start(answers: Vec<Vec<u8>>) -> Canned {
            Canned::start_with(|_| answers).await
        }

        /// `answers` gets the server's base URL (`http://127.0.0.1:PORT/`).
        pub async fn start_with(answers: impl FnOnce(&Url) -> Vec<Vec<u8>>) -> Canned {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = Url::parse(&format!("http://{}/", l.local_addr().unwrap())).unwrap();
            let answers = answers(&url);
            let seen = Arc::new(Mutex::new(Vec::new()));
            let record = Arc::clone(&seen);
            tokio::spawn(async move {
                for answer in answers {
                    let (mut s, _) = l.accept().await.unwrap();
                    let req = read_request(&mut s).await;
                    record.lock().unwrap().push(req);
                    s.write_all(&answer).await.unwrap();
                    let _ = s.shutdown().await;
                }
            });
            Canned { url, seen }
        }

        pub async fn requests(&self) -> Vec<String> {
            self.seen.lock().unwrap().clone()
        }
    }

    async fn read_request(s: &mut tokio::net::TcpStream) -> String {
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            req.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&req).to_string();
            if let Some(i) = text.find("\r\n\r\n") {
                let len: usize = text[..i]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if req.len() >= i + 4 + len {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        String::from_utf8(req).unwrap()
    }

    /// A whole HTTP/1.1 answer that closes the connection.
    pub fn http(status: &str, headers: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64token() {
        assert!(is_b64token("1ABCde2F-._~+/=="));
        assert!(!is_b64token(""));
        assert!(!is_b64token("=="));
        assert!(!is_b64token("a b"));
        assert!(!is_b64token("a\nFOO=bar"));
        assert!(!is_b64token("a\"b"));
        assert!(!is_b64token(&"a".repeat(MAX_TOKEN_LEN + 1)));
    }

    #[test]
    fn retry_after_takes_seconds_and_dates_and_caps_both() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let s = Duration::from_secs;
        assert_eq!(parse_retry_after("17", now), Some(s(17)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(s(0)));
        assert_eq!(parse_retry_after("86400", now), Some(RETRY_AFTER_CAP));
        // More seconds than a u64 holds is still a request to wait: the longest we honour.
        assert_eq!(
            parse_retry_after("99999999999999999999999999", now),
            Some(RETRY_AFTER_CAP)
        );
        let date = |t: SystemTime| httpdate::fmt_http_date(t);
        assert_eq!(parse_retry_after(&date(now + s(42)), now), Some(s(42)));
        assert_eq!(
            parse_retry_after(&date(now + s(3 * 3600)), now),
            Some(RETRY_AFTER_CAP)
        );
        assert_eq!(parse_retry_after(&date(now - s(30)), now), Some(s(0)));
        // The obsolete date forms HTTP still allows are read too.
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now),
            Some(s(0))
        );
        for junk in [
            "",
            "-5",
            "1.5",
            "soon",
            "12 s",
            "Mon, 99 Foo 2026 00:00:00 GMT",
        ] {
            assert_eq!(parse_retry_after(junk, now), None, "{junk:?}");
        }
    }

    #[test]
    fn a_failure_carries_the_capped_retry_after_of_either_form() {
        let soon = httpdate::fmt_http_date(crate::clock::now_wall() + Duration::from_secs(120));
        let e = failure("token request", 503, Some(&soon), String::new());
        let ra = e.retry_after().unwrap();
        // Whole seconds in the date, and a moment passes before `failure` reads the clock.
        assert!(
            ra <= Duration::from_secs(120) && ra >= Duration::from_secs(118),
            "{ra:?}"
        );
        let e = failure("token request", 429, Some("100000000"), String::new());
        assert_eq!(e.retry_after(), Some(RETRY_AFTER_CAP));
        // A refusal is not retried on the provider's word.
        let e = failure("token request", 400, Some("5"), String::new());
        assert_eq!(e.retry_after(), None);
    }

    #[test]
    fn the_redactor_cuts_every_form_of_a_secret_and_a_truncated_start() {
        let r = Redactor::new(["s3cr+t/key=", "tok\"en", "Zx9QwErTyUiOp"]);
        assert_eq!(
            r.redact("X-App-Token: s3cr+t/key= body=a%3Ds3cr%2Bt%2Fkey%3D&b"),
            "X-App-Token: [redacted] body=a%3D[redacted]&b"
        );
        // As a Debug or JSON string quotes it.
        assert_eq!(
            r.redact(r#"message="got tok\"en""#),
            r#"message="got [redacted]""#
        );
        // sanitize() cut the text inside the secret: its start goes too.
        let cut = sanitize(&format!("{}Zx9QwErTyUiOp", "x".repeat(295)));
        assert!(cut.ends_with("Zx9Qw…"), "{cut}");
        assert_eq!(r.redact(&cut), format!("{}[redacted]…", "x".repeat(295)));
        // Ordinary text, and a mere three letters of a secret, are left alone.
        assert_eq!(r.redact("Zx9… plain"), "Zx9… plain");
        assert_eq!(r.redact("no secrets here"), "no secrets here");
        let e = failure("revoke", 400, None, "echo: tok\"en".into()).redacted(|t| r.redact(t));
        assert_eq!(
            e.to_string(),
            "revoke refused with HTTP 400: echo: [redacted]"
        );
    }

    #[test]
    fn sanitize_strips_control_and_caps() {
        assert_eq!(sanitize("a\nb\tc\u{202e}"), r"a\x0ab\x09c\u{202e}");
        let long = "x".repeat(1000);
        assert_eq!(sanitize(&long).chars().count(), 301);
    }
}
