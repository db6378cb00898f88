//! Square OAuth (`specs/oauth-contract.md` section 2): ObtainToken with the refresh_token
//! grant, RetrieveTokenStatus, RevokeToken, and the deprecated RenewToken. JSON bodies,
//! `Square-Version` pinned, lowercase `bearer` tokens that live 30 days and expire at an
//! ISO 8601 `expires_at`.
//!
//! Two rules shape this module:
//! - A refresh token Square hands back in place of the one sent (PKCE refresh tokens are
//!   single-use) is saved durably in `state_dir` *before* the answer goes any further, so
//!   a crash after that point never loses it. Rotations are serialized, so two sets sharing
//!   one provider never present the same single-use token twice.
//! - RevokeToken ends the seller's whole authorization unless told otherwise, so this module
//!   always sends `revoke_only_access_token: true`, and the daemon calls it only for sets that
//!   ask for revocation themselves ([`Revocation::OptIn`]).

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::refresh_store::RefreshStore;
use super::{
    Introspection, Issued, MAX_TOKEN_LEN, ProviderError, Revocation, TokenProvider, failure,
    is_b64token, json_error, malformed, read_body, retry_after_text, sanitize,
};
use crate::secret::Secret;

/// The API version this module speaks (the spec's release); pinned so Square never changes
/// an answer's shape under us.
pub const SQUARE_VERSION: &str = "2025-08-20";

/// Longest lifetime we believe. Square grants 30 days (24 h when short-lived); 90 days means
/// a broken answer or a clock far off.
const MAX_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// How far the local clock may differ from Square's `Date` before we say it looks wrong.
/// Five minutes is Kerberos' tolerance: NTP keeps hosts within milliseconds, so more than
/// this is a broken clock, not jitter.
const CLOCK_SKEW_LIMIT: Duration = Duration::from_secs(300);

/// Square's limits for the refresh token ObtainToken takes back (`minLength: 2`,
/// `maxLength: 1024` in the spec): one outside them could never be presented, so saving it
/// would end the chain of refresh tokens.
const MIN_SQUARE_TOKEN_LEN: usize = 2;
const MAX_SQUARE_TOKEN_LEN: usize = 1024;

/// Error codes that mean the token is already unusable, so revoking it is done.
const GONE_CODES: &[&str] = &["ACCESS_TOKEN_EXPIRED", "ACCESS_TOKEN_REVOKED"];

/// The 59 permissions Square documents (`securitySchemes.oauth2...scopes`, 2025-08-20). A
/// scope outside this list gets a warning, not a refusal: Square adds permissions over time.
pub const SCOPES: &[&str] = &[
    "ADDON_CONFIGURATIONS_READ",
    "ADDON_CONFIGURATIONS_WRITE",
    "APPOINTMENTS_ALL_READ",
    "APPOINTMENTS_ALL_WRITE",
    "APPOINTMENTS_BUSINESS_SETTINGS_READ",
    "APPOINTMENTS_READ",
    "APPOINTMENTS_WRITE",
    "BANK_ACCOUNTS_READ",
    "CASH_DRAWER_READ",
    "CHANNELS_CREATE",
    "CHANNELS_READ",
    "CHANNELS_UPDATE",
    "CUSTOMERS_READ",
    "CUSTOMERS_WRITE",
    "DEVICES_READ",
    "DEVICE_CREDENTIAL_MANAGEMENT",
    "DISCOUNT_CODES_READ",
    "DISCOUNT_CODES_WRITE",
    "DISPUTES_READ",
    "DISPUTES_WRITE",
    "EMPLOYEES_READ",
    "EMPLOYEES_WRITE",
    "GIFTCARDS_READ",
    "GIFTCARDS_WRITE",
    "INVENTORY_READ",
    "INVENTORY_WRITE",
    "INVOICES_READ",
    "INVOICES_WRITE",
    "ITEMS_READ",
    "ITEMS_WRITE",
    "LOYALTY_READ",
    "LOYALTY_WRITE",
    "MERCHANT_PROFILE_READ",
    "MERCHANT_PROFILE_WRITE",
    "ONLINE_STORE_SITE_READ",
    "ONLINE_STORE_SNIPPETS_READ",
    "ONLINE_STORE_SNIPPETS_WRITE",
    "ORDERS_READ",
    "ORDERS_WRITE",
    "PAYMENTS_READ",
    "PAYMENTS_WRITE",
    "PAYMENTS_WRITE_ADDITIONAL_RECIPIENTS",
    "PAYMENTS_WRITE_IN_PERSON",
    "PAYMENTS_WRITE_SHARED_ONFILE",
    "PAYOUTS_READ",
    "PERMISSION_SETS_READ",
    "PERMISSION_SETS_WRITE",
    "RESERVATIONS_READ",
    "RESERVATIONS_WRITE",
    "RESTAURANT_CHECKS_READ",
    "SETTLEMENTS_READ",
    "SUBSCRIPTIONS_READ",
    "SUBSCRIPTIONS_WRITE",
    "TIMECARDS_READ",
    "TIMECARDS_SETTINGS_READ",
    "TIMECARDS_SETTINGS_WRITE",
    "TIMECARDS_WRITE",
    "VENDOR_READ",
    "VENDOR_WRITE",
];

/// How new access tokens are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// ObtainToken, `grant_type=refresh_token`.
    RefreshToken,
    /// The deprecated RenewToken, renewing the latest access token.
    Renew,
}

/// What [`Square::new`] needs.
pub struct Settings {
    pub http: reqwest::Client,
    pub name: String,
    pub base_url: Url,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub mode: Mode,
    /// The configured first refresh token (or, to renew, access token).
    pub seed: Secret,
    pub store: RefreshStore,
    pub timeout: Duration,
}

/// A Square application's OAuth endpoints for one seller.
pub struct Square {
    http: reqwest::Client,
    name: String,
    base_url: Url,
    client_id: String,
    client_secret: Option<Secret>,
    /// `Authorization: Client <secret>`, marked sensitive; none for PKCE applications.
    client_auth: Option<HeaderValue>,
    mode: Mode,
    /// Fingerprint of the configured seed, recorded with every saved token.
    seed: String,
    store: RefreshStore,
    /// The credential the next issue presents. Held across the request, so rotations of a
    /// single-use token never overlap.
    current: Mutex<Secret>,
    timeout: Duration,
}

impl Square {
    /// What requests carry, besides the token they are about, that an answer must not show:
    /// the client secret and the `Authorization: Client` header made from it.
    pub(crate) fn secrets(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.client_secret.iter().map(Secret::expose).collect();
        out.extend(self.client_auth.as_ref().and_then(|h| h.to_str().ok()));
        out
    }
}

impl std::fmt::Debug for Square {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Square")
            .field("name", &self.name)
            .field("base_url", &self.base_url.as_str())
            .field("client_id", &self.client_id)
            .field("mode", &self.mode)
            .field("state_file", &self.store.path())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct ObtainTokenRequest<'a> {
    client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<&'a str>,
    grant_type: &'static str,
    refresh_token: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    scopes: &'a [String],
}

#[derive(Serialize)]
struct RenewTokenRequest<'a> {
    access_token: &'a str,
}

#[derive(Serialize)]
struct RevokeTokenRequest<'a> {
    client_id: &'a str,
    access_token: &'a str,
    revoke_only_access_token: bool,
}

/// ObtainToken's and RenewToken's answer; the spec requires no field, so all are optional.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_at: Option<String>,
    refresh_token: Option<String>,
    #[serde(default)]
    errors: Vec<SquareError>,
}

impl Drop for TokenResponse {
    fn drop(&mut self) {
        if let Some(t) = &mut self.access_token {
            zeroize::Zeroize::zeroize(t);
        }
        if let Some(t) = &mut self.refresh_token {
            zeroize::Zeroize::zeroize(t);
        }
    }
}

#[derive(Deserialize)]
struct StatusResponse {
    expires_at: Option<String>,
    #[serde(default)]
    errors: Vec<SquareError>,
}

#[derive(Deserialize)]
struct RevokeResponse {
    success: Option<bool>,
    #[serde(default)]
    errors: Vec<SquareError>,
}

/// One entry of Square's v2 error envelope.
#[derive(Deserialize)]
struct SquareError {
    category: Option<String>,
    code: Option<String>,
    detail: Option<String>,
    field: Option<String>,
}

/// Both shapes Square answers errors with: `{"errors":[...]}` and the older OAuth
/// `{"message","type"}`.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<SquareError>,
    message: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

fn describe_errors(errors: &[SquareError]) -> String {
    errors
        .iter()
        .map(|e| {
            let mut parts = Vec::new();
            if let Some(c) = &e.code {
                parts.push(format!("code={}", sanitize(c)));
            }
            if let Some(c) = &e.category {
                parts.push(format!("category={}", sanitize(c)));
            }
            if let Some(d) = &e.detail {
                parts.push(format!("detail={:?}", sanitize(d)));
            }
            if let Some(f) = &e.field {
                parts.push(format!("field={}", sanitize(f)));
            }
            parts.join(" ")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_error(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) if !e.errors.is_empty() => describe_errors(&e.errors),
        Ok(ErrorBody { message, kind, .. }) if message.is_some() || kind.is_some() => {
            let mut parts = Vec::new();
            if let Some(k) = kind {
                parts.push(format!("type={}", sanitize(&k)));
            }
            if let Some(m) = message {
                parts.push(format!("message={:?}", sanitize(&m)));
            }
            parts.join(" ")
        }
        Ok(_) => "no Square error in the body".to_string(),
        Err(_) if body.is_empty() => "empty body".to_string(),
        Err(_) => "body is not a Square error".to_string(),
    }
}

fn error_codes(body: &[u8]) -> Vec<String> {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.errors.into_iter().filter_map(|e| e.code).collect())
        .unwrap_or_default()
}

/// An RFC 3339 / ISO 8601 timestamp as Square writes them: `2025-04-03T18:31:06Z`, with or
/// without fractional seconds, or with a `+HH:MM` offset.
pub fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if !text.is_ascii() {
        return None;
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Some(t);
    }
    let (base, offset) = text.split_at(text.len().checked_sub(6)?);
    let bytes = offset.as_bytes();
    if bytes[3] != b':' {
        return None;
    }
    let hours: u64 = offset[1..3].parse().ok()?;
    let minutes: u64 = offset[4..6].parse().ok()?;
    let shift = Duration::from_secs(hours * 3600 + minutes * 60);
    let local = humantime::parse_rfc3339_weak(base).ok()?;
    match bytes[0] {
        // 10:00+02:00 is 08:00 UTC.
        b'+' => local.checked_sub(shift),
        b'-' => local.checked_add(shift),
        _ => None,
    }
}

/// How long a token that expires at `expires_at` has left, and what looks wrong with the
/// local clock. The reference is Square's own `Date` when it sent one, so a wrong local clock
/// cannot stretch or shrink the lifetime; the local clock is only compared with it.
pub fn lifetime(
    expires_at: SystemTime,
    server_date: Option<SystemTime>,
    now: SystemTime,
) -> (Option<Duration>, Option<String>) {
    let mut clock = None;
    let reference = match server_date {
        Some(date) => {
            let (skew, direction) = match now.duration_since(date) {
                Ok(ahead) => (ahead, "ahead of"),
                Err(e) => (e.duration(), "behind"),
            };
            if skew > CLOCK_SKEW_LIMIT {
                clock = Some(format!(
                    "the local clock is {} {direction} Square's; token files show expiry times in the local clock, so fix the clock (NTP)",
                    humantime::format_duration(Duration::from_secs(skew.as_secs()))
                ));
            }
            date
        }
        None => {
            if expires_at <= now {
                clock = Some(
                    "Square answered with a token that has already expired by the local clock; the clock looks wrong".to_string(),
                );
            }
            now
        }
    };
    let left = expires_at
        .duration_since(reference)
        .ok()
        .filter(|d| !d.is_zero() && *d <= MAX_LIFETIME);
    (left, clock)
}

impl Square {
    pub fn new(s: Settings) -> Result<Self, ProviderError> {
        let client_auth = match &s.client_secret {
            Some(secret) => {
                let mut v = HeaderValue::from_str(&format!("Client {}", secret.expose())).map_err(
                    |_| ProviderError::BadHeader {
                        what: "client_secret",
                    },
                )?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let seed = s.seed.fingerprint();
        let current = match s.store.load().map_err(ProviderError::State)? {
            Some((stored_seed, token)) if stored_seed == seed => {
                info!(provider = %s.name, state_file = %s.store.path().display(),
                    fingerprint = %token.fingerprint(),
                    "continuing from the refresh token saved in state_dir");
                token
            }
            Some(_) => {
                warn!(provider = %s.name, state_file = %s.store.path().display(),
                    "the configured first token changed since the saved one descends from another; starting from the configured one");
                s.seed
            }
            None => s.seed,
        };
        Ok(Square {
            http: s.http,
            name: s.name,
            base_url: s.base_url,
            client_id: s.client_id,
            client_secret: s.client_secret,
            client_auth,
            mode: s.mode,
            seed,
            store: s.store,
            current: Mutex::new(current),
            timeout: s.timeout,
        })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut u = self.base_url.clone();
        if let Ok(mut path) = u.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        u
    }

    async fn post(
        &self,
        operation: &'static str,
        url: Url,
        auth: Option<HeaderValue>,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, HeaderMap, zeroize::Zeroizing<Vec<u8>>), ProviderError> {
        let mut req = self
            .http
            .post(url)
            .header("Square-Version", SQUARE_VERSION)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout);
        if let Some(auth) = auth {
            req = req.header(reqwest::header::AUTHORIZATION, auth);
        }
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| ProviderError::Transport { operation, source })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = read_body(operation, resp).await?;
        Ok((status, headers, body))
    }

    /// Save `next` as the credential to present next time, then start using it.
    async fn keep(&self, current: &mut Secret, next: Secret) -> Result<(), ProviderError> {
        let store = self.store.clone();
        let seed = self.seed.clone();
        let saving = next.clone();
        tokio::task::spawn_blocking(move || store.save(&seed, &saving))
            .await
            .map_err(|e| {
                ProviderError::State(super::refresh_store::StoreError::Io {
                    op: "save (the writer thread failed)",
                    path: self.store.path().to_path_buf(),
                    source: std::io::Error::other(e.to_string()),
                })
            })?
            .map_err(|e| {
                error!(provider = %self.name, new = %next.fingerprint(), state_file = %self.store.path().display(),
                    "could not save the new refresh token; it is kept in memory only and lost if the process ends");
                ProviderError::State(e)
            })?;
        info!(provider = %self.name, old = %current.fingerprint(), new = %next.fingerprint(),
            state_file = %self.store.path().display(), "saved the rotated refresh token");
        *current = next;
        Ok(())
    }
}

// The answer parsers: pure functions of (status, Retry-After text, body, and what the answer
// is read against), so that the daemon's path and the fuzz targets under fuzz/ run the very
// same code. Every byte string must give an answer or an error, never a panic.

/// A 200 token answer read by [`parse_token_answer`]. The refresh token stands apart from the
/// access token's checks: whatever is wrong with the rest of the answer, the old refresh token
/// may already be spent, so the caller saves the new one first.
pub struct TokenAnswer {
    /// The refresh token as sent, a token Square issues (the caller compares it with the one
    /// it sent).
    pub refresh_token: Option<Secret>,
    /// The access token and its lifetime, or what is wrong with them.
    pub access: Result<(Secret, Duration), ProviderError>,
    /// What looks wrong with the local clock, for a loud log line.
    pub clock: Option<String>,
    /// `expires_at` as sent, made safe for a log line.
    pub expires_at: String,
}

/// Read the answer to ObtainToken or RenewToken (`operation`). `date` is Square's `Date`
/// header, `now` the local clock; the lifetime is read against Square's clock when it sent one.
pub fn parse_token_answer(
    operation: &'static str,
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    date: Option<&str>,
    now: SystemTime,
) -> Result<TokenAnswer, ProviderError> {
    let op = operation;
    if status != StatusCode::OK.as_u16() {
        return Err(failure(op, status, retry_after, describe_error(body)));
    }
    let mut r: TokenResponse = serde_json::from_slice(body)
        .map_err(|e| malformed(op, format!("not a token answer: {}", json_error(&e))))?;
    if !r.errors.is_empty() {
        return Err(ProviderError::Refused {
            operation: op,
            status,
            detail: describe_errors(&r.errors),
        });
    }
    let refresh_token = r.refresh_token.take().map(Secret::new);
    // Checked before anything else of the answer: the caller saves it first and presents it
    // next time, so a broken one must fail the answer rather than replace a working one.
    if refresh_token
        .as_ref()
        .is_some_and(|t| !is_square_token(t.expose()))
    {
        return Err(malformed(
            op,
            "refresh_token is not a token Square issues (2 to 1024 token characters)",
        ));
    }
    let expires_text = r.expires_at.take().unwrap_or_default();
    let mut clock = None;
    let access = check_access(op, &mut r, &expires_text, date, now, &mut clock);
    Ok(TokenAnswer {
        refresh_token,
        access,
        clock,
        expires_at: sanitize(&expires_text),
    })
}

/// Whether `text` can be a refresh token Square issues: bearer-token characters within
/// Square's length limits.
fn is_square_token(text: &str) -> bool {
    (MIN_SQUARE_TOKEN_LEN..=MAX_SQUARE_TOKEN_LEN).contains(&text.len()) && is_b64token(text)
}

/// The access-token half of [`parse_token_answer`].
fn check_access(
    op: &'static str,
    r: &mut TokenResponse,
    expires_text: &str,
    date: Option<&str>,
    now: SystemTime,
    clock: &mut Option<String>,
) -> Result<(Secret, Duration), ProviderError> {
    let access = r.access_token.take().unwrap_or_default();
    if !is_b64token(&access) {
        return Err(malformed(
            op,
            format!(
                "access_token is missing, empty, longer than {MAX_TOKEN_LEN} bytes, or has characters a bearer token cannot have"
            ),
        ));
    }
    let token = Secret::new(access);
    // From here on the token is well-formed and minted: a refusal carries it, to be revoked.
    let refuse = |e: ProviderError| super::refused_minted(e, token.expose());
    let token_type = r.token_type.take().unwrap_or_default();
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err(refuse(malformed(
            op,
            format!("token_type {:?} is not bearer", sanitize(&token_type)),
        )));
    }
    let expires_at = parse_timestamp(expires_text).ok_or_else(|| {
        refuse(malformed(
            op,
            format!(
                "expires_at {:?} is not an ISO 8601 timestamp",
                sanitize(expires_text)
            ),
        ))
    })?;
    let server_date = date.and_then(|v| httpdate::parse_http_date(v).ok());
    let (left, wrong_clock) = lifetime(expires_at, server_date, now);
    *clock = wrong_clock;
    let lifetime = left.ok_or_else(|| {
        refuse(malformed(
            op,
            format!(
                "expires_at {} is in the past or more than 90 days ahead{}",
                sanitize(expires_text),
                if server_date.is_some() {
                    " of Square's own clock"
                } else {
                    ""
                }
            ),
        ))
    })?;
    Ok((token, lifetime))
}

/// Read the answer to RetrieveTokenStatus; `now` is the local clock `expires_at` is read
/// against.
pub fn parse_status_answer(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    now: SystemTime,
) -> Result<Introspection, ProviderError> {
    const OP: &str = "RetrieveTokenStatus";
    match status {
        200 => {}
        // Expired, revoked or unknown: RetrieveTokenStatus answers UNAUTHORIZED.
        401 => return Ok(Introspection::Inactive),
        _ => return Err(failure(OP, status, retry_after, describe_error(body))),
    }
    let r: StatusResponse = serde_json::from_slice(body)
        .map_err(|e| malformed(OP, format!("not a token status: {}", json_error(&e))))?;
    if !r.errors.is_empty() {
        return Ok(Introspection::Inactive);
    }
    // Empty `expires_at`: a token that never expires (personal access tokens).
    let remaining = match r.expires_at.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => {
            let at = parse_timestamp(text).ok_or_else(|| {
                malformed(
                    OP,
                    format!("expires_at {:?} is not a timestamp", sanitize(text)),
                )
            })?;
            Some(at.duration_since(now).unwrap_or(Duration::ZERO))
        }
    };
    Ok(Introspection::Active { remaining })
}

/// Read the answer to RevokeToken.
pub fn parse_revoke_answer(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
) -> Result<(), ProviderError> {
    const OP: &str = "RevokeToken";
    match status {
        200 => {
            let r: RevokeResponse = serde_json::from_slice(body)
                .map_err(|e| malformed(OP, format!("not a revoke answer: {}", json_error(&e))))?;
            if r.success == Some(true) {
                Ok(())
            } else {
                Err(ProviderError::Refused {
                    operation: OP,
                    status: 200,
                    detail: if r.errors.is_empty() {
                        "success is not true".to_string()
                    } else {
                        describe_errors(&r.errors)
                    },
                })
            }
        }
        // Unknown, expired or already revoked: either way it can no longer be used.
        404 => Ok(()),
        401 if error_codes(body)
            .iter()
            .any(|c| GONE_CODES.contains(&c.as_str())) =>
        {
            Ok(())
        }
        _ => Err(failure(OP, status, retry_after, describe_error(body))),
    }
}

impl TokenProvider for Square {
    async fn issue(&self, scopes: &[String]) -> Result<Issued, ProviderError> {
        let mut current = self.current.lock().await;
        let (op, url, auth, body) = match self.mode {
            Mode::RefreshToken => {
                let body = serde_json::to_vec(&ObtainTokenRequest {
                    client_id: &self.client_id,
                    client_secret: self.client_secret.as_ref().map(Secret::expose),
                    grant_type: "refresh_token",
                    refresh_token: current.expose(),
                    scopes,
                });
                ("ObtainToken", self.url(&["oauth2", "token"]), None, body)
            }
            Mode::Renew => {
                let body = serde_json::to_vec(&RenewTokenRequest {
                    access_token: current.expose(),
                });
                (
                    "RenewToken",
                    self.url(&[
                        "oauth2",
                        "clients",
                        &self.client_id,
                        "access-token",
                        "renew",
                    ]),
                    self.client_auth.clone(),
                    body,
                )
            }
        };
        let body =
            body.map_err(|e| malformed("request", format!("cannot encode: {}", json_error(&e))))?;
        let issued_at = Instant::now();
        // The request carried the refresh (or access) token: an answer echoing it is cut.
        let redact =
            |e: super::ProviderError| e.redacted(&super::Redactor::new([current.expose()]));
        let (status, headers, body) = self.post(op, url, auth, Some(body)).await.map_err(redact)?;
        let answer = parse_token_answer(
            op,
            status.as_u16(),
            retry_after_text(&headers),
            &body,
            headers
                .get(reqwest::header::DATE)
                .and_then(|v| v.to_str().ok()),
            SystemTime::now(),
        )
        .map_err(redact)?;
        // The new refresh token first: whatever is wrong with the rest of the answer, the
        // old one may already be spent.
        if self.mode == Mode::RefreshToken
            && let Some(next) = answer
                .refresh_token
                .filter(|t| t.expose() != current.expose())
        {
            self.keep(&mut current, next).await?;
        }
        if let Some(clock) = &answer.clock {
            error!(provider = %self.name, expires_at = %answer.expires_at, "CLOCK LOOKS WRONG: {clock}");
        }
        let (token, lifetime) = answer.access?;
        if self.mode == Mode::Renew {
            // The renewed token is what the next renewal presents.
            self.keep(&mut current, token.clone()).await?;
        }
        Ok(Issued {
            token,
            token_type: "bearer".to_string(),
            // ObtainToken does not echo scopes; the set asked for these (Square grants their
            // intersection with the authorization's).
            scope: scopes.join(" "),
            issued_at,
            lifetime,
        })
    }

    async fn revoke(&self, token: &Secret) -> Result<(), ProviderError> {
        const OP: &str = "RevokeToken";
        let Some(auth) = self.client_auth.clone() else {
            return Err(ProviderError::Unsupported { operation: OP });
        };
        let body = serde_json::to_vec(&RevokeTokenRequest {
            client_id: &self.client_id,
            access_token: token.expose(),
            // Never the whole authorization: that would also end the refresh token.
            revoke_only_access_token: true,
        })
        .map_err(|e| malformed(OP, format!("cannot encode: {}", json_error(&e))))?;
        let (status, headers, body) = self
            .post(OP, self.url(&["oauth2", "revoke"]), Some(auth), Some(body))
            .await?;
        parse_revoke_answer(status.as_u16(), retry_after_text(&headers), &body)
    }

    async fn introspect(&self, token: &Secret) -> Result<Introspection, ProviderError> {
        const OP: &str = "RetrieveTokenStatus";
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| ProviderError::BadHeader { what: "the token" })?;
        auth.set_sensitive(true);
        let (status, headers, body) = self
            .post(
                OP,
                self.url(&["oauth2", "token", "status"]),
                Some(auth),
                None,
            )
            .await?;
        parse_status_answer(
            status.as_u16(),
            retry_after_text(&headers),
            &body,
            SystemTime::now(),
        )
    }

    fn revocation(&self) -> Revocation {
        if self.client_auth.is_some() {
            Revocation::OptIn
        } else {
            Revocation::Unsupported
        }
    }
}

#[cfg(test)]
mod tests;
