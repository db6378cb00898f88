//! The strict contract checks of a POST to one of the three operations: query, headers,
//! content type, body and form fields. A request that breaks one is refused and recorded.

use std::collections::HashMap;

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Request, StatusCode};
use serde_json::json;
use tokio::time::Instant;
use tracing::debug;

use super::operations::{introspect, issue, revoke};
use super::state::Shared;
use super::wire::{CloseConnection, Endpoint, Reply, quote};

/// The only request content type the spec documents for the three operations.
pub(super) const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

/// Largest request body read. The biggest legitimate body (all 42 scopes) is under 1 KiB;
/// the cap keeps a runaway client from filling memory.
pub(super) const MAX_BODY_BYTES: usize = 64 * 1024;

/// Check a POST to one of the three operations against the contract and answer it.
pub(super) async fn process(
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
        Endpoint::Revoke => {
            let delay = shared.lock().revoke_delay;
            if !delay.is_zero() {
                // Nothing is revoked until the wait is over: a client that gives up first
                // leaves the token live, as with a slow real server.
                tokio::time::sleep(delay).await;
            }
            Ok(revoke(shared, &fields, credentials_ok))
        }
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
