//! Reading Square's answers and errors.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use serde::Deserialize;

use super::clock::{lifetime, parse_timestamp};
use crate::provider::{
    Introspection, MAX_TOKEN_LEN, ProviderError, failure, is_b64token, json_error, malformed,
    sanitize,
};
use crate::secret::Secret;

/// Square's limits for the refresh token ObtainToken takes back (`minLength: 2`,
/// `maxLength: 1024` in the spec): one outside them could never be presented, so saving it
/// would end the chain of refresh tokens.
const MIN_SQUARE_TOKEN_LEN: usize = 2;
const MAX_SQUARE_TOKEN_LEN: usize = 1024;

/// Error codes that mean the token is already unusable, so revoking it is done.
const GONE_CODES: &[&str] = &["ACCESS_TOKEN_EXPIRED", "ACCESS_TOKEN_REVOKED"];

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
    // Whatever is wrong with a 200 answer, an access token it carries was minted: it goes
    // with the refusal, to be revoked.
    parse_answer(op, status, body, date, now).map_err(|e| crate::provider::salvage_minted(e, body))
}

/// The 200 half of [`parse_token_answer`].
fn parse_answer(
    op: &'static str,
    status: u16,
    body: &[u8],
    date: Option<&str>,
    now: SystemTime,
) -> Result<TokenAnswer, ProviderError> {
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
    let refuse = |e: ProviderError| crate::provider::refused_minted(e, token.expose());
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
