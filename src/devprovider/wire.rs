//! The vocabulary every layer shares: the three endpoints, an answer before it becomes an HTTP
//! response, and how text a client sent may be quoted.

use std::fmt;

use http_body_util::Full;
use hyper::Response;
use hyper::StatusCode;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};
use tracing::warn;

use crate::secret::fingerprint;

/// Longest form-field name or scope string quoted in a violation. Real ones are short; a
/// longer one is more likely a pasted secret than a name.
const MAX_QUOTED_LEN: usize = 64;

/// The three operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Token,
    Introspect,
    Revoke,
}

impl Endpoint {
    pub(super) fn from_path(path: &str) -> Option<Endpoint> {
        match path {
            "/v1/oauth/token" => Some(Endpoint::Token),
            "/v1/oauth/introspect" => Some(Endpoint::Introspect),
            "/v1/oauth/token/revoke" => Some(Endpoint::Revoke),
            _ => None,
        }
    }

    pub(super) fn path(self) -> &'static str {
        match self {
            Endpoint::Token => "/v1/oauth/token",
            Endpoint::Introspect => "/v1/oauth/introspect",
            Endpoint::Revoke => "/v1/oauth/token/revoke",
        }
    }

    /// The form fields the spec defines for the operation; anything else is a violation.
    pub(super) fn fields(self) -> &'static [&'static str] {
        match self {
            Endpoint::Token => &["grant_type", "scope"],
            Endpoint::Introspect | Endpoint::Revoke => &["access_token"],
        }
    }
}

/// Returned by the service to make hyper close the connection without answering.
#[derive(Debug)]
pub(super) struct CloseConnection(pub(super) &'static str);

impl fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for CloseConnection {}

/// An answer, before it becomes an HTTP response.
pub(super) struct Reply {
    pub(super) status: StatusCode,
    /// `None`: empty body (204, revoke's 404).
    pub(super) body: Option<Value>,
    /// Extra headers (`Retry-After`, `Allow`).
    pub(super) headers: Vec<(hyper::header::HeaderName, HeaderValue)>,
    /// Fingerprint of the token concerned, for the log line.
    pub(super) token_fp: Option<String>,
}

impl Reply {
    pub(super) fn json(status: StatusCode, body: Value) -> Reply {
        Reply {
            status,
            body: Some(body),
            headers: Vec::new(),
            token_fp: None,
        }
    }

    pub(super) fn empty(status: StatusCode) -> Reply {
        Reply {
            status,
            body: None,
            headers: Vec::new(),
            token_fp: None,
        }
    }

    /// A Voucherify `Error` body with a key.
    pub(super) fn error(status: StatusCode, key: &str, message: &str) -> Reply {
        Reply::json(
            status,
            json!({"code": status.as_u16(), "key": key, "message": message}),
        )
    }

    pub(super) fn unauthorized() -> Reply {
        Reply::error(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized")
    }

    pub(super) fn missing_parameters() -> Reply {
        Reply::error(
            StatusCode::BAD_REQUEST,
            "missing_parameters",
            "Missing parameters",
        )
    }

    /// The body of an injected failure: Voucherify's `Error` shape, with its documented rate
    /// limit message for 429 and the status's reason otherwise. Statuses that can't carry a
    /// body get none.
    pub(super) fn injected(status: u16) -> Reply {
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

    pub(super) fn with_token(mut self, token: &str) -> Reply {
        self.token_fp = Some(fingerprint(token));
        self
    }

    pub(super) fn into_response(self) -> Response<Full<Bytes>> {
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

/// `text` in quotes if it looks like a name (ASCII letters, digits and a little punctuation,
/// short), otherwise only its length: a violation must never quote a secret someone sent in
/// the wrong place. Mixed-case letters with digits, the look of a token, are never quoted.
pub(super) fn quote(text: &str) -> String {
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
pub(super) fn injected_status(status: u16) -> StatusCode {
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
