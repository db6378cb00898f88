//! Voucherify OAuth v1 (`specs/oauth-contract.md` section 1): form-encoded POSTs carrying both
//! `X-App-Id` and `X-App-Token`, 900 s bearer tokens, no refresh tokens.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use tokio::time::Instant;

use super::{
    Introspection, Issued, ProviderError, TokenProvider, check_bearer, json_error, malformed,
    read_body, refused_minted, retry_after_text, sanitize,
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
    ) -> Result<(StatusCode, HeaderMap, zeroize::Zeroizing<Vec<u8>>), ProviderError> {
        let resp = self
            .http
            .post(url.clone())
            .headers(self.auth.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout)
            .form(form)
            .send()
            .await
            .map_err(|source| ProviderError::Transport { operation, source })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = read_body(operation, resp).await?;
        Ok((status, headers, body))
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
        let (status, headers, body) = self
            .post(
                ISSUE,
                &self.token_url,
                &[("grant_type", "client_credentials"), ("scope", &scope)],
            )
            .await?;
        parse_token_answer(
            status.as_u16(),
            retry_after_text(&headers),
            &body,
            issued_at,
        )
    }

    async fn revoke(&self, token: &Secret) -> Result<(), ProviderError> {
        let (status, headers, body) = self
            .post(
                REVOKE,
                &self.revoke_url,
                &[("access_token", token.expose())],
            )
            .await?;
        parse_revoke_answer(status.as_u16(), retry_after_text(&headers), &body)
    }

    async fn introspect(&self, token: &Secret) -> Result<Introspection, ProviderError> {
        let (status, headers, body) = self
            .post(
                INTROSPECT,
                &self.introspect_url,
                &[("access_token", token.expose())],
            )
            .await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        parse_introspect_answer(status.as_u16(), retry_after_text(&headers), &body, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-shot HTTP server answering with `response` (raw bytes) and handing back the
    /// request it received.
    async fn canned(response: Vec<u8>) -> (Url, tokio::task::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // Read headers, then the body by Content-Length.
            loop {
                let n = s.read(&mut buf).await.unwrap();
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some(i) = text.find("\r\n\r\n") {
                    let len: usize = text
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
            }
            s.write_all(&response).await.unwrap();
            let _ = s.shutdown().await;
            String::from_utf8(req).unwrap()
        });
        (url, h)
    }

    fn http(status: &str, headers: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn client(url: Url) -> Voucherify {
        Voucherify::new(
            super::super::http_client().unwrap(),
            url,
            &Secret::new("app-id-1"),
            &Secret::new("app-token-1"),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    const OK: &str = r#"{"access_token":"1ABCde","client_id":"c","expires_at":1738945086,"expires_in":900,"scope":"api vouchers","token_type":"Bearer"}"#;

    #[tokio::test]
    async fn issue_sends_the_contract_request_and_reads_the_answer() {
        let (url, req) = canned(http("200 OK", "Content-Type: application/json\r\n", OK)).await;
        let issued = client(url)
            .issue(&["api".into(), "vouchers".into()])
            .await
            .unwrap();
        assert_eq!(issued.token.expose(), "1ABCde");
        assert_eq!(issued.lifetime, Duration::from_secs(900));
        assert_eq!(issued.scope, "api vouchers");
        let req = req.await.unwrap();
        let lower = req.to_ascii_lowercase();
        assert!(
            req.starts_with("POST /v1/oauth/token HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(lower.contains("x-app-id: app-id-1\r\n"), "{req}");
        assert!(lower.contains("x-app-token: app-token-1\r\n"), "{req}");
        assert!(lower.contains("content-type: application/x-www-form-urlencoded\r\n"));
        assert!(lower.contains("user-agent: tokenkeeper/"), "{req}");
        assert!(
            req.ends_with("\r\n\r\ngrant_type=client_credentials&scope=api+vouchers"),
            "{req}"
        );
    }

    /// A well-formed token in an answer refused for its token_type or its lifetime was minted
    /// all the same: the error carries it for revocation, and shows only its fingerprint.
    #[test]
    fn refused_answers_with_a_minted_token_carry_it() {
        let answer = |token_type: &str, expires_in: &str| {
            format!(
                r#"{{"access_token":"1MintedTok","client_id":"c","expires_at":1,"expires_in":{expires_in},"scope":"api","token_type":"{token_type}"}}"#
            )
        };
        for (token_type, expires_in, want) in [
            ("mac", "900", "is not Bearer"),
            ("Bearer", "0", "not a sane lifetime"),
            ("Bearer", "-5", "not a sane lifetime"),
            ("Bearer", "1000000000000", "not a sane lifetime"),
        ] {
            let body = answer(token_type, expires_in);
            let e = parse_token_answer(200, None, body.as_bytes(), Instant::now()).unwrap_err();
            assert_eq!(e.minted().map(Secret::expose), Some("1MintedTok"), "{e}");
            assert_eq!(e.retry_class(), crate::schedule::RetryClass::Slow);
            let text = format!("{e} {e:?}");
            assert!(text.contains(want), "{text}");
            assert!(!text.contains("1MintedTok"), "{text}");
            assert!(
                text.contains(&crate::secret::fingerprint("1MintedTok")),
                "{text}"
            );
        }
        // A token that is not a bearer token is never used, not even to revoke it.
        let body = br#"{"access_token":"a b","client_id":"c","expires_at":1,"expires_in":900,"scope":"api","token_type":"mac"}"#;
        let e = parse_token_answer(200, None, body, Instant::now()).unwrap_err();
        assert!(e.minted().is_none(), "{e:?}");
    }

    #[tokio::test]
    async fn bad_answers_are_errors_never_panics() {
        let huge = format!(
            r#"{{"pad":"{}"}}"#,
            "x".repeat(super::super::MAX_BODY_BYTES)
        );
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (http("200 OK", "", r#"{"access_token":"a","client_id":"c","expires_at":1,"expires_in":"900","scope":"api","token_type":"Bearer"}"#), "invalid type"),
            (http("200 OK", "", r#"{"access_token":"a","expires_at":1,"expires_in":900,"scope":"api","token_type":"Bearer"}"#), "missing field `client_id`"),
            (http("200 OK", "", r#"{"access_token":"a\nB=c","client_id":"c","expires_at":1,"expires_in":900,"scope":"api","token_type":"Bearer"}"#), "characters a bearer token cannot have"),
            (http("200 OK", "", r#"{"access_token":"a","client_id":"c","expires_at":1,"expires_in":0,"scope":"api","token_type":"Bearer"}"#), "not a sane lifetime"),
            (http("200 OK", "", r#"{"access_token":"a","client_id":"c","expires_at":1,"expires_in":900,"scope":"api","token_type":"MAC"}"#), "is not Bearer"),
            (http("200 OK", "", r#"{"access_token":"a","#), "EOF"),
            (http("200 OK", "", "<html>"), "not an OAuth token"),
            (http("200 OK", "", &huge), "larger than"),
            // Promises more body than it sends: a truncated answer.
            (b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\nConnection: close\r\n\r\n{\"access_token\":".to_vec(), "request failed"),
        ];
        for (resp, want) in cases {
            let (url, _req) = canned(resp).await;
            let err = client(url).issue(&["api".into()]).await.unwrap_err();
            let text = crate::error_chain(&err);
            assert!(text.contains(want), "want {want:?} in {text:?}");
            assert_eq!(
                err.retry_class(),
                if want == "request failed" {
                    crate::schedule::RetryClass::Transient
                } else {
                    crate::schedule::RetryClass::Slow
                }
            );
        }
    }

    /// Found by the `voucherify_token` fuzz target: an escaped quote inside a quoted value
    /// ended the blanking early, printing the rest of the value and blanking the position.
    #[test]
    fn json_errors_blank_values_with_escaped_quotes() {
        for body in [
            r#""ab\"SECRET""#,
            r#""a\"SECRET\"b""#,
            r#""ab\\\"SECRET\\""#,
            r#"{"access_token":"a","client_id":"c","expires_at":1,"expires_in":"x\"SECRET","scope":"api","token_type":"Bearer"}"#,
        ] {
            let err = parse_token_answer(200, None, body.as_bytes(), Instant::now()).unwrap_err();
            let text = err.to_string();
            assert!(!text.contains("SECRET"), "{body}: {text}");
            assert!(
                text.contains(r#"invalid type: string "…""#),
                "{body}: {text}"
            );
            assert!(text.contains(" at line 1 column "), "{body}: {text}");
        }
    }

    #[test]
    fn introspection_believes_the_earlier_of_expires_in_and_expires_at() {
        let now = 1_900_000_000;
        let active = |body: &str| match parse_introspect_answer(200, None, body.as_bytes(), now) {
            Ok(Introspection::Active { remaining }) => remaining,
            other => panic!("{other:?}"),
        };
        let s = Duration::from_secs;
        assert_eq!(
            active(r#"{"active":true,"expires_in":600,"expires_at":1900000100}"#),
            Some(s(100))
        );
        assert_eq!(
            active(r#"{"active":true,"expires_in":60,"expires_at":1900000100}"#),
            Some(s(60))
        );
        // Already past by the answer's own date, whatever expires_in says.
        assert_eq!(
            active(r#"{"active":true,"expires_in":800,"expires_at":1899999000}"#),
            Some(s(0))
        );
        assert_eq!(active(r#"{"active":true,"expires_in":-5}"#), Some(s(0)));
        assert_eq!(
            active(r#"{"active":true,"expires_at":1900000042}"#),
            Some(s(42))
        );
        assert_eq!(active(r#"{"active":true}"#), None);
    }

    /// serde_json's own syntax messages keep their position, even the one with a quote.
    #[test]
    fn json_syntax_errors_keep_their_position() {
        let err = parse_introspect_answer(200, None, b"{1:2}", 0).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("key must be a string at line 1 column 2"),
            "{err}"
        );
        let err = parse_introspect_answer(200, None, b"{\"active\" true}", 0).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("expected `:` at line 1 column 11"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_wrong_typed_token_never_reaches_the_error_text() {
        let (url, _r) = canned(http("200 OK", "", r#"{"access_token":"1SECRETtok","client_id":"c","expires_at":1,"expires_in":"1SECRETtok","scope":"api","token_type":"Bearer"}"#)).await;
        let err = client(url).issue(&["api".into()]).await.unwrap_err();
        let text = format!("{} {err:?}", crate::error_chain(&err));
        assert!(!text.contains("SECRET"), "{text}");
    }

    #[tokio::test]
    async fn errors_are_classified_and_carry_key_and_message() {
        let (url, _r) = canned(http(
            "401 Unauthorized",
            "",
            r#"{"code":401,"key":"unauthorized","message":"Unauthorized"}"#,
        ))
        .await;
        let err = client(url).issue(&["api".into()]).await.unwrap_err();
        assert!(matches!(err, ProviderError::Refused { status: 401, .. }));
        assert!(
            err.to_string()
                .contains(r#"key=unauthorized message="Unauthorized""#),
            "{err}"
        );

        let (url, _r) = canned(http(
            "400 Bad Request",
            "",
            r#"{"code":400,"key":"invalid_scope","message":"Invalid scope: a,b"}"#,
        ))
        .await;
        let err = client(url).issue(&["api".into()]).await.unwrap_err();
        assert!(err.to_string().contains("key=invalid_scope"), "{err}");
        assert_eq!(err.retry_class(), crate::schedule::RetryClass::Slow);

        let (url, _r) = canned(http(
            "429 Too Many Requests",
            "Retry-After: 7\r\n",
            r#"{"code":429,"message":"Too many requests hit the API too quickly."}"#,
        ))
        .await;
        let err = client(url).issue(&["api".into()]).await.unwrap_err();
        assert_eq!(err.retry_class(), crate::schedule::RetryClass::Transient);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));

        let (url, _r) = canned(http("503 Service Unavailable", "", "")).await;
        let err = client(url).issue(&["api".into()]).await.unwrap_err();
        assert_eq!(err.retry_class(), crate::schedule::RetryClass::Transient);
        assert!(err.to_string().contains("empty body"), "{err}");
    }

    #[tokio::test]
    async fn redirects_are_never_followed_so_credentials_stay_put() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let elsewhere = l.local_addr().unwrap();
        let (url, _r) = canned(http(
            "307 Temporary Redirect",
            &format!("Location: http://{elsewhere}/v1/oauth/token\r\n"),
            "",
        ))
        .await;
        let err = client(url).issue(&["api".into()]).await.unwrap_err();
        assert!(
            matches!(err, ProviderError::Refused { status: 307, .. }),
            "{err}"
        );
        // Nobody connected to the redirect target.
        let accepted = tokio::time::timeout(Duration::from_millis(200), l.accept()).await;
        assert!(accepted.is_err(), "the redirect was followed");
    }

    #[tokio::test]
    async fn revoke_counts_204_and_404_as_revoked() {
        for status in ["204 No Content", "404 Not Found"] {
            let (url, req) = canned(http(status, "", "")).await;
            client(url).revoke(&Secret::new("tok")).await.unwrap();
            let req = req.await.unwrap();
            assert!(req.starts_with("POST /v1/oauth/token/revoke "), "{req}");
            assert!(req.ends_with("\r\n\r\naccess_token=tok"), "{req}");
        }
        let (url, _r) = canned(http("500 Internal Server Error", "", "")).await;
        assert!(client(url).revoke(&Secret::new("tok")).await.is_err());
    }

    #[tokio::test]
    async fn introspect_reads_active_and_inactive() {
        let (url, req) = canned(http("200 OK", "", r#"{"active":false}"#)).await;
        assert_eq!(
            client(url).introspect(&Secret::new("tok")).await.unwrap(),
            Introspection::Inactive
        );
        assert!(req.await.unwrap().starts_with("POST /v1/oauth/introspect "));
        // OK's expires_at is long past, and the earlier expiry wins: date this one in 2100.
        let body = OK
            .replace("\"expires_in\":900", "\"expires_in\":555")
            .replace("1738945086", "4102444800")
            .replace('}', ",\"active\":true}");
        let (url, _r) = canned(http("200 OK", "", &body)).await;
        assert_eq!(
            client(url).introspect(&Secret::new("tok")).await.unwrap(),
            Introspection::Active {
                remaining: Some(Duration::from_secs(555))
            }
        );
    }
}
