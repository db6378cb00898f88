//! The three operations on a well-formed request: issuing, introspecting and revoking tokens,
//! with the injected failures and hostile answers of each.

use std::collections::HashMap;

use hyper::StatusCode;
use hyper::header::{HeaderValue, RETRY_AFTER};
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::debug;

use super::state::Shared;
use super::wire::{CloseConnection, Endpoint, Reply, injected_status, quote};
use crate::provider::voucherify::SCOPES;
use crate::secret::fingerprint;

/// The only `grant_type` the spec's enum allows.
const GRANT_TYPE: &str = "client_credentials";

/// `POST /v1/oauth/token`.
pub(super) async fn issue(
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
    let (record, delay, expires_in, token_type, fields_set) = {
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
            state.answer_fields.clone(),
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
    if let Some(fields) = body.as_object_mut() {
        for (name, value) in fields_set {
            match value {
                Some(v) => fields.insert(name, v),
                None => fields.remove(&name),
            };
        }
    }
    Ok(Reply::json(StatusCode::OK, body).with_token(&record.token))
}

/// `POST /v1/oauth/introspect`.
pub(super) fn introspect(
    shared: &Shared,
    fields: &HashMap<String, String>,
    credentials_ok: bool,
) -> Reply {
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
pub(super) fn revoke(
    shared: &Shared,
    fields: &HashMap<String, String>,
    credentials_ok: bool,
) -> Reply {
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
