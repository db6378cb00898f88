//! Voucherify OAuth v1 (`specs/oauth-contract.md` section 1): form-encoded POSTs carrying both
//! `X-App-Id` and `X-App-Token`, 900 s bearer tokens, no refresh tokens.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use tokio::time::Instant;

use super::{
    Introspection, Issued, ProviderError, TokenProvider, check_bearer, json_error, malformed,
    read_body, refused_minted, sanitize,
};
use crate::secret::Secret;

/// Operation names as errors show them; the HTTP calls and the answer parsers share them.
const ISSUE: &str = "token request";
const INTROSPECT: &str = "introspect";
const REVOKE: &str = "revoke";

/// Longest lifetime we believe. Voucherify grants 900 s; a year means a broken answer, and
/// would overflow nothing but would park the refresh loop for good.
const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// The 42 scopes Voucherify documents for OAuth tokens (2026-07-17 spec). A scope outside
/// this list gets a warning, not a refusal: the vendor adds scopes over time.
pub const SCOPES: &[&str] = &[
    "api",
    "assets",
    "async-actions",
    "campaigns",
    "categories",
    "client_api",
    "client_consents",
    "client_customers",
    "client_events",
    "client_promotions",
    "client_publish",
    "client_qualifications",
    "client_redeem",
    "client_redemptions",
    "client_validate",
    "client_validations",
    "client_vouchers",
    "consents",
    "customers",
    "events",
    "exports",
    "locations",
    "loyalties",
    "metadata-schemas",
    "orders",
    "product-collections",
    "products",
    "promotions",
    "publications",
    "qualifications",
    "redemptions",
    "referrals",
    "rewards",
    "segments",
    "skus",
    "task-results",
    "templates",
    "trash-bin",
    "validation-rules-assignments",
    "validation-rules",
    "validations",
    "vouchers",
];

/// A Voucherify project's OAuth endpoints.
pub struct Voucherify {
    http: reqwest::Client,
    token_url: Url,
    introspect_url: Url,
    revoke_url: Url,
    /// `X-App-Id` and `X-App-Token`, marked sensitive so no HTTP library prints them.
    auth: HeaderMap,
    timeout: Duration,
}

impl Voucherify {
    /// What every request carries that a provider's answer must not show: `X-App-Id` and
    /// `X-App-Token`.
    pub(crate) fn secrets(&self) -> Vec<&str> {
        self.auth.values().filter_map(|v| v.to_str().ok()).collect()
    }
}

impl std::fmt::Debug for Voucherify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Voucherify")
            .field("token_url", &self.token_url.as_str())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The 200 answer to `POST /v1/oauth/token`: the spec marks all six fields required.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[allow(dead_code)] // required by the contract; checked by deserializing, not used
    client_id: String,
    #[allow(dead_code)] // informational: our clock is the monotonic one
    expires_at: i64,
    expires_in: i64,
    scope: String,
    token_type: String,
}

impl Drop for TokenResponse {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.access_token);
    }
}

/// The 200 answer to introspect: only `active` is certain (`{"active": false}` for unknown
/// tokens).
#[derive(Deserialize)]
struct IntrospectResponse {
    active: bool,
    expires_in: Option<i64>,
    /// Unix seconds. When it and `expires_in` disagree the earlier one is believed.
    expires_at: Option<i64>,
}

/// Voucherify's error body; every field optional because we read it on a failure path.
#[derive(Deserialize, Default)]
struct ErrorBody {
    code: Option<i64>,
    key: Option<String>,
    message: Option<String>,
    details: Option<String>,
    request_id: Option<String>,
}

impl ErrorBody {
    fn describe(body: &[u8]) -> String {
        let Ok(e) = serde_json::from_slice::<ErrorBody>(body) else {
            return if body.is_empty() {
                "empty body".to_string()
            } else {
                "body is not a Voucherify error".to_string()
            };
        };
        let mut parts = Vec::new();
        if let Some(k) = e.key {
            parts.push(format!("key={}", sanitize(&k)));
        }
        if let Some(m) = e.message {
            parts.push(format!("message={:?}", sanitize(&m)));
        }
        if let Some(d) = e.details {
            parts.push(format!("details={:?}", sanitize(&d)));
        }
        if let Some(r) = e.request_id {
            parts.push(format!("request_id={}", sanitize(&r)));
        }
        if parts.is_empty() {
            match e.code {
                Some(c) => format!("code={c}"),
                None => "no detail".to_string(),
            }
        } else {
            parts.join(" ")
        }
    }
}

impl Voucherify {
    pub fn new(
        http: reqwest::Client,
        base_url: Url,
        app_id: &Secret,
        app_token: &Secret,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let join = |path: &str| {
            let mut u = base_url.clone();
            let base = u.path().trim_end_matches('/').to_string();
            u.set_path(&format!("{base}{path}"));
            u
        };
        let mut auth = HeaderMap::new();
        for (name, what, value) in [
            ("x-app-id", "app_id", app_id),
            ("x-app-token", "app_token", app_token),
        ] {
            let mut v = HeaderValue::from_str(value.expose())
                .map_err(|_| ProviderError::BadHeader { what })?;
            v.set_sensitive(true);
            auth.insert(name, v);
        }
        Ok(Voucherify {
            http,
            token_url: join("/v1/oauth/token"),
            introspect_url: join("/v1/oauth/introspect"),
            revoke_url: join("/v1/oauth/token/revoke"),
            auth,
            timeout,
        })
    }

    async fn post(
        &self,
        operation: &'static str,
        url: &Url,
        form: &[(&str, &str)],
    ) -> Result<(StatusCode, Option<String>, zeroize::Zeroizing<Vec<u8>>), ProviderError> {
        let mut req = self.http.post(url.clone());
        // Header by header: a copy of the map is a new table for each request, while a
        // header's name and value are shared.
        for (name, value) in &self.auth {
            req = req.header(name.clone(), value.clone());
        }
        let resp = req
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout)
            .form(form)
            .send()
            .await
            .map_err(|source| ProviderError::Transport { operation, source })?;
        let status = resp.status();
        let retry_after = super::retry_after_of(&resp);
        let body = read_body(operation, resp).await?;
        Ok((status, retry_after, body))
    }
}

/// Turn a non-success answer into the error class the daemon retries by, with Voucherify's
/// error body described.
fn failure(
    operation: &'static str,
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
) -> ProviderError {
    super::failure(operation, status, retry_after, ErrorBody::describe(body))
}

// The answer parsers: pure functions of (status, Retry-After text, body), so that the
// daemon's path and the fuzz targets under fuzz/ run the very same code. Every byte string
// must give an answer or an error, never a panic.

/// Read the answer to `POST /v1/oauth/token`. `issued_at` is when the request went out: the
/// lifetime counts from there.
pub fn parse_token_answer(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    issued_at: Instant,
) -> Result<Issued, ProviderError> {
    if status != StatusCode::OK.as_u16() {
        return Err(failure(ISSUE, status, retry_after, body));
    }
    // Whatever is wrong with a 200 answer, a token it carries was minted: it goes with the
    // refusal, to be revoked.
    parse_issued(body, issued_at).map_err(|e| super::salvage_minted(e, body))
}

/// The 200 half of [`parse_token_answer`].
fn parse_issued(body: &[u8], issued_at: Instant) -> Result<Issued, ProviderError> {
    // serde_json's messages name the field and position, never the value of a string.
    let mut r: TokenResponse = serde_json::from_slice(body)
        .map_err(|e| malformed(ISSUE, format!("not an OAuth token: {}", json_error(&e))))?;
    check_bearer(ISSUE, &r.access_token, &r.token_type)?;
    let lifetime = u64::try_from(r.expires_in)
        .ok()
        .filter(|&s| s > 0)
        .map(Duration::from_secs)
        .filter(|d| *d <= MAX_LIFETIME)
        .ok_or_else(|| {
            refused_minted(
                malformed(
                    ISSUE,
                    format!("expires_in {} is not a sane lifetime", r.expires_in),
                ),
                &r.access_token,
            )
        })?;
    Ok(Issued {
        token: Secret::new(std::mem::take(&mut r.access_token)),
        token_type: sanitize(&r.token_type),
        scope: sanitize(&r.scope),
        issued_at,
        lifetime,
        lifetime_assumed: false,
    })
}

/// Read the answer to `POST /v1/oauth/introspect`; `now` is the local clock in Unix seconds,
/// which `expires_at` is read against.
pub fn parse_introspect_answer(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<Introspection, ProviderError> {
    if status != StatusCode::OK.as_u16() {
        return Err(failure(INTROSPECT, status, retry_after, body));
    }
    let r: IntrospectResponse = serde_json::from_slice(body).map_err(|e| {
        malformed(
            INTROSPECT,
            format!("not an introspection answer: {}", json_error(&e)),
        )
    })?;
    if !r.active {
        return Ok(Introspection::Inactive);
    }
    // The earliest expiry the answer gives: a token reused past its real end fails its
    // consumers. A negative figure is an expiry in the past, not a missing one.
    let from_in = r
        .expires_in
        .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)));
    let from_at = r
        .expires_at
        .map(|at| Duration::from_secs(u64::try_from(at).unwrap_or(0).saturating_sub(now)));
    let remaining = match (from_in, from_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(Introspection::Active { remaining })
}

/// Read the answer to `POST /v1/oauth/token/revoke`: a status and, on failure, an error body.
pub fn parse_revoke_answer(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
) -> Result<(), ProviderError> {
    // 404: unknown or already inactive. Either way it can no longer be used.
    match StatusCode::from_u16(status) {
        Ok(StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::NOT_FOUND) => Ok(()),
        _ => Err(failure(REVOKE, status, retry_after, body)),
    }
}

impl TokenProvider for Voucherify {
    async fn issue(&self, scopes: &[String]) -> Result<Issued, ProviderError> {
        let scope = scopes.join(" ");
        let issued_at = Instant::now();
        let (status, retry_after, body) = self
            .post(
                ISSUE,
                &self.token_url,
                &[("grant_type", "client_credentials"), ("scope", &scope)],
            )
            .await?;
        parse_token_answer(status.as_u16(), retry_after.as_deref(), &body, issued_at)
    }

    async fn revoke(&self, token: &Secret) -> Result<(), ProviderError> {
        let (status, retry_after, body) = self
            .post(
                REVOKE,
                &self.revoke_url,
                &[("access_token", token.expose())],
            )
            .await?;
        parse_revoke_answer(status.as_u16(), retry_after.as_deref(), &body)
    }

    async fn introspect(&self, token: &Secret) -> Result<Introspection, ProviderError> {
        let (status, retry_after, body) = self
            .post(
                INTROSPECT,
                &self.introspect_url,
                &[("access_token", token.expose())],
            )
            .await?;
        let now = crate::clock::now_wall()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        parse_introspect_answer(status.as_u16(), retry_after.as_deref(), &body, now)
    }
}

#[cfg(test)]
mod tests;
