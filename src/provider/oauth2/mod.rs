//! Any RFC 6749 authorization server (Keycloak, Okta, Entra ID, Auth0, Voucherify OAuth v2):
//! the client_credentials grant (section 4.4) with `client_secret_basic` or
//! `client_secret_post` (section 2.3.1), RFC 7009 revocation, RFC 7662 introspection, and the
//! endpoints given or discovered from the issuer (RFC 8414, OpenID Connect Discovery).
//!
//! Discovery runs at first use, not at start, so a server that is down when the daemon starts
//! is a failure the set's task retries with its backoff, not a crash; its result is kept for
//! the life of the provider.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{AuthMethod, OAuth2Endpoints};
use super::{
    Introspection, Issued, ProviderError, Revocation, TokenProvider, check_bearer, failure,
    is_transient, json_error, malformed, read_body, refused_minted, retry_after_text,
    sane_lifetime, sanitize,
};
use crate::secret::Secret;

/// Longest lifetime we believe. Client-credentials tokens live minutes to hours; a year means
/// a broken answer.
const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// RFC 8414 section 3: the well-known suffix, inserted between host and issuer path.
const RFC8414_WELL_KNOWN: &str = "/.well-known/oauth-authorization-server";

/// OpenID Connect Discovery 1.0 section 4: appended to the issuer.
const OIDC_WELL_KNOWN: &str = "/.well-known/openid-configuration";

/// What [`OAuth2::new`] needs.
pub struct Settings {
    pub http: reqwest::Client,
    /// The provider's name in the config, for log lines.
    pub name: String,
    pub endpoints: OAuth2Endpoints,
    pub client_id: String,
    pub client_secret: Secret,
    pub auth_method: AuthMethod,
    pub extra_params: Vec<(String, String)>,
    pub default_lifetime: Duration,
    pub timeout: Duration,
}

/// The endpoints in use, given or discovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub token: Url,
    pub revocation: Option<Url>,
    pub introspection: Option<Url>,
}

/// An RFC 6749 authorization server.
pub struct OAuth2 {
    http: reqwest::Client,
    name: String,
    /// The configured issuer, when the endpoints are to be discovered.
    issuer: Option<Url>,
    endpoints: OnceCell<Endpoints>,
    client_id: String,
    client_secret: Secret,
    auth_method: AuthMethod,
    /// `Authorization: Basic ...` for `client_secret_basic`, marked sensitive.
    basic: Option<HeaderValue>,
    extra_params: Vec<(String, String)>,
    default_lifetime: Duration,
    timeout: Duration,
    /// Whether the missing `expires_in` has been reported: once is informative, every
    /// refresh would be noise.
    said_default_lifetime: AtomicBool,
}

impl OAuth2 {
    /// What every request may carry that a provider's answer must not show: the client
    /// secret, and the Basic credentials made from it (whole and Base64 alone).
    pub(crate) fn secrets(&self) -> Vec<&str> {
        let mut out = vec![self.client_secret.expose()];
        if let Some(basic) = self.basic.as_ref().and_then(|b| b.to_str().ok()) {
            out.push(basic);
            out.extend(basic.strip_prefix("Basic "));
        }
        out
    }
}

impl std::fmt::Debug for OAuth2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2")
            .field("name", &self.name)
            .field("issuer", &self.issuer.as_ref().map(Url::as_str))
            .field("endpoints", &self.endpoints.get())
            .field("client_id", &self.client_id)
            .field("auth_method", &self.auth_method)
            .finish_non_exhaustive()
    }
}

/// RFC 8414 / OpenID provider metadata: the fields we use.
#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    token_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    introspection_endpoint: Option<String>,
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    grant_types_supported: Option<Vec<String>>,
}

/// RFC 6749 section 5.1 successful answer.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
    /// A number per the RFC; some servers send a numeric string.
    expires_in: Option<serde_json::Value>,
    scope: Option<String>,
}

impl Drop for TokenResponse {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.access_token);
    }
}

/// RFC 7662 section 2.2: only `active` is certain.
#[derive(Deserialize)]
struct IntrospectResponse {
    active: bool,
    exp: Option<i64>,
}

/// RFC 6749 section 5.2 error answer (RFC 7009 and 7662 reuse it).
#[derive(Deserialize)]
struct ErrorBody {
    error: Option<String>,
    error_description: Option<String>,
    error_uri: Option<String>,
}

fn describe_error(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => {
            let mut parts = Vec::new();
            if let Some(code) = e.error {
                parts.push(format!("error={}", sanitize(&code)));
            }
            if let Some(d) = e.error_description {
                parts.push(format!("error_description={:?}", sanitize(&d)));
            }
            if let Some(u) = e.error_uri {
                parts.push(format!("error_uri={}", sanitize(&u)));
            }
            if parts.is_empty() {
                "no RFC 6749 error in the body".to_string()
            } else {
                parts.join(" ")
            }
        }
        Err(_) if body.is_empty() => "empty body".to_string(),
        Err(_) => "body is not an RFC 6749 error".to_string(),
    }
}

/// Standard Base64 with padding (RFC 4648 section 4), for the Basic credentials.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `application/x-www-form-urlencoded` serialization of one value (WHATWG URL
/// standard), which RFC 6749 section 2.3.1 applies to the client id and secret before Base64.
pub(crate) fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `Authorization: Basic base64(form(client_id) ":" form(client_secret))`.
pub fn basic_credentials(client_id: &str, client_secret: &Secret) -> zeroize::Zeroizing<String> {
    let joined = zeroize::Zeroizing::new(format!(
        "{}:{}",
        form_encode(client_id),
        form_encode(client_secret.expose())
    ));
    zeroize::Zeroizing::new(format!("Basic {}", base64(joined.as_bytes())))
}

/// The discovery documents to try for `issuer`, in order: RFC 8414's (suffix inserted
/// before the issuer's path), then OpenID's (suffix appended).
pub fn discovery_urls(issuer: &Url) -> Vec<Url> {
    let path = issuer.path().trim_end_matches('/');
    let mut rfc8414 = issuer.clone();
    rfc8414.set_path(&format!("{RFC8414_WELL_KNOWN}{path}"));
    let mut oidc = issuer.clone();
    oidc.set_path(&format!("{path}{OIDC_WELL_KNOWN}"));
    vec![rfc8414, oidc]
}

/// The configured and announced issuers name the same server: identical but for a trailing
/// slash, which some servers add (Auth0) and operators drop.
fn same_issuer(configured: &Url, announced: &str) -> bool {
    configured.as_str().trim_end_matches('/') == announced.trim_end_matches('/')
}

/// An endpoint from a discovery document: https, or http on a loopback host like the config
/// allows.
fn endpoint_url(operation: &'static str, key: &str, text: &str) -> Result<Url, ProviderError> {
    let bad = |why: &str| ProviderError::Discovery {
        operation,
        what: format!("{key} {why}"),
    };
    let url = Url::parse(text).map_err(|_| bad("is not a URL"))?;
    match url.scheme() {
        "https" => {}
        "http" if super::is_loopback(&url) => {}
        _ => return Err(bad("is not an https:// URL")),
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(bad("has a user name, password or fragment"));
    }
    Ok(url)
}

impl OAuth2 {
    pub fn new(s: Settings) -> Result<Self, ProviderError> {
        let basic = match s.auth_method {
            AuthMethod::ClientSecretBasic => {
                let text = basic_credentials(&s.client_id, &s.client_secret);
                let mut v = HeaderValue::from_str(&text).map_err(|_| ProviderError::BadHeader {
                    what: "client_id/client_secret",
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            AuthMethod::ClientSecretPost => None,
        };
        let (issuer, endpoints) = match s.endpoints {
            OAuth2Endpoints::Discover { issuer } => (Some(issuer), OnceCell::new()),
            OAuth2Endpoints::Explicit {
                token_url,
                revocation_url,
                introspection_url,
            } => (
                None,
                OnceCell::new_with(Some(Endpoints {
                    token: token_url,
                    revocation: revocation_url,
                    introspection: introspection_url,
                })),
            ),
        };
        Ok(OAuth2 {
            http: s.http,
            name: s.name,
            issuer,
            endpoints,
            client_id: s.client_id,
            client_secret: s.client_secret,
            auth_method: s.auth_method,
            basic,
            extra_params: s.extra_params,
            default_lifetime: s.default_lifetime,
            timeout: s.timeout,
            said_default_lifetime: AtomicBool::new(false),
        })
    }

    /// The endpoints, discovering them on first use.
    pub async fn endpoints(&self) -> Result<&Endpoints, ProviderError> {
        self.endpoints
            .get_or_try_init(|| async {
                match &self.issuer {
                    Some(issuer) => self.discover(issuer).await,
                    None => Err(ProviderError::Discovery {
                        operation: "discovery",
                        what: "no issuer and no endpoints configured".into(),
                    }),
                }
            })
            .await
    }

    async fn discover(&self, issuer: &Url) -> Result<Endpoints, ProviderError> {
        const OP: &str = "discovery";
        let mut tried = Vec::new();
        for url in discovery_urls(issuer) {
            let resp = self
                .http
                .get(url.clone())
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(self.timeout)
                .send()
                .await
                .map_err(|source| ProviderError::Transport {
                    operation: OP,
                    source,
                })?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = read_body(OP, resp).await?;
            if is_transient(status) {
                return Err(failure(
                    OP,
                    status.as_u16(),
                    retry_after_text(&headers),
                    describe_error(&body),
                ));
            }
            if status != StatusCode::OK {
                tried.push(format!("{url} (HTTP {})", status.as_u16()));
                continue;
            }
            let found = parse_discovery_answer(&url, issuer, self.auth_method, &body)?;
            if found.auth_method_unlisted {
                warn!(provider = %self.name, auth_method = auth_method_name(self.auth_method),
                    "the server does not list this auth_method as supported; set auth_method to one it lists if token requests fail");
            }
            if found.client_credentials_unlisted {
                warn!(provider = %self.name,
                    "the server does not list the client_credentials grant as supported");
            }
            let endpoints = found.endpoints;
            info!(provider = %self.name, document = %url, token_endpoint = %endpoints.token,
                revocation = endpoints.revocation.is_some(),
                introspection = endpoints.introspection.is_some(),
                "discovered the authorization server's endpoints");
            return Ok(endpoints);
        }
        Err(ProviderError::Discovery {
            operation: OP,
            what: format!("no discovery document at {}", tried.join(" or ")),
        })
    }

    /// POST `form` to `url` with the client's authentication.
    async fn post(
        &self,
        operation: &'static str,
        url: &Url,
        mut form: Vec<(&str, &str)>,
    ) -> Result<(StatusCode, HeaderMap, zeroize::Zeroizing<Vec<u8>>), ProviderError> {
        let mut req = self
            .http
            .post(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout);
        match &self.basic {
            Some(basic) => req = req.header(reqwest::header::AUTHORIZATION, basic.clone()),
            None => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", self.client_secret.expose()));
            }
        }
        let resp = req
            .form(&form)
            .send()
            .await
            .map_err(|source| ProviderError::Transport { operation, source })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = read_body(operation, resp).await?;
        Ok((status, headers, body))
    }
}

// The answer parsers: pure functions of (status, Retry-After text, body, and what the answer
// is read against), so that the daemon's path and the fuzz targets under fuzz/ run the very
// same code. Every byte string must give an answer or an error, never a panic.

/// A token answer read by [`parse_token_answer`].
#[derive(Debug)]
pub struct TokenAnswer {
    pub issued: Issued,
    /// The answer had no `expires_in`, so `issued` lives the configured default lifetime; the
    /// caller says so once in the log.
    pub default_lifetime_used: bool,
}

/// Read the answer to a client_credentials token request (RFC 6749 sections 5.1 and 5.2).
/// `requested_scope` is what the request asked for (granted when the answer names none);
/// `default_lifetime` applies when the answer has no `expires_in`.
pub fn parse_token_answer(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    issued_at: Instant,
    requested_scope: &str,
    default_lifetime: Duration,
) -> Result<TokenAnswer, ProviderError> {
    const OP: &str = "token request";
    if status != StatusCode::OK.as_u16() {
        return Err(failure(OP, status, retry_after, describe_error(body)));
    }
    let mut r: TokenResponse = serde_json::from_slice(body)
        .map_err(|e| malformed(OP, format!("not an OAuth token: {}", json_error(&e))))?;
    check_bearer(OP, &r.access_token, &r.token_type)?;
    let secs = match r.expires_in.as_ref() {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => Some(n.as_i64()),
        Some(serde_json::Value::String(s)) => Some(s.trim().parse::<i64>().ok()),
        Some(_) => Some(None),
    };
    let (lifetime, default_lifetime_used) = match secs {
        None => (default_lifetime, true),
        Some(secs) => (
            secs.and_then(|s| sane_lifetime(s, MAX_LIFETIME))
                .ok_or_else(|| {
                    refused_minted(
                        malformed(OP, "expires_in is not a sane lifetime in seconds"),
                        &r.access_token,
                    )
                })?,
            false,
        ),
    };
    // RFC 6749 section 5.1: no `scope` means the requested scope was granted.
    let granted = r
        .scope
        .as_deref()
        .map_or_else(|| requested_scope.to_string(), sanitize);
    Ok(TokenAnswer {
        issued: Issued {
            token: Secret::new(std::mem::take(&mut r.access_token)),
            token_type: sanitize(&r.token_type),
            scope: granted,
            issued_at,
            lifetime,
        },
        default_lifetime_used,
    })
}

/// A discovery document read by [`parse_discovery_answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub endpoints: Endpoints,
    /// The document lists the token endpoint's auth methods, and ours is not among them. The
    /// caller warns rather than refuses: servers leave methods out that they accept.
    pub auth_method_unlisted: bool,
    /// The document lists the grant types, and client_credentials is not among them; a
    /// warning for the same reason.
    pub client_credentials_unlisted: bool,
}

/// The RFC 8414 / OAuth registry name of `method`, as discovery documents list it.
fn auth_method_name(method: AuthMethod) -> &'static str {
    match method {
        AuthMethod::ClientSecretBasic => "client_secret_basic",
        AuthMethod::ClientSecretPost => "client_secret_post",
    }
}

/// Read a discovery document (RFC 8414 section 3.2, OpenID Connect Discovery section 4.2)
/// fetched from `document` for the configured `issuer`, whose client authenticates with
/// `auth_method`. Only 200 bodies come here: any other status means "try the next document"
/// or "retry later", which is the HTTP loop's decision, not the document's.
pub fn parse_discovery_answer(
    document: &Url,
    issuer: &Url,
    auth_method: AuthMethod,
    body: &[u8],
) -> Result<Discovered, ProviderError> {
    const OP: &str = "discovery";
    let meta: Metadata = serde_json::from_slice(body).map_err(|e| {
        malformed(
            OP,
            format!(
                "{document} is not authorization server metadata: {}",
                json_error(&e)
            ),
        )
    })?;
    if !same_issuer(issuer, &meta.issuer) {
        return Err(ProviderError::Discovery {
            operation: OP,
            what: format!(
                "{document} names issuer {:?}, not the configured {issuer}; refusing endpoints another server announces (RFC 8414 section 3.3)",
                sanitize(&meta.issuer)
            ),
        });
    }
    let token_text = meta
        .token_endpoint
        .as_deref()
        .ok_or_else(|| ProviderError::Discovery {
            operation: OP,
            what: format!("{document} has no token_endpoint"),
        })?;
    let endpoints = Endpoints {
        token: endpoint_url(OP, "token_endpoint", token_text)?,
        revocation: meta
            .revocation_endpoint
            .as_deref()
            .map(|u| endpoint_url(OP, "revocation_endpoint", u))
            .transpose()?,
        introspection: meta
            .introspection_endpoint
            .as_deref()
            .map(|u| endpoint_url(OP, "introspection_endpoint", u))
            .transpose()?,
    };
    let method = auth_method_name(auth_method);
    Ok(Discovered {
        endpoints,
        auth_method_unlisted: meta
            .token_endpoint_auth_methods_supported
            .is_some_and(|methods| !methods.iter().any(|m| m == method)),
        client_credentials_unlisted: meta
            .grant_types_supported
            .is_some_and(|grants| !grants.iter().any(|g| g == "client_credentials")),
    })
}

/// Read the answer to an RFC 7662 introspection request; `now` is the local clock in Unix
/// seconds, which `exp` is read against.
pub fn parse_introspect_answer(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<Introspection, ProviderError> {
    const OP: &str = "introspect";
    if status != StatusCode::OK.as_u16() {
        return Err(failure(OP, status, retry_after, describe_error(body)));
    }
    let r: IntrospectResponse = serde_json::from_slice(body).map_err(|e| {
        malformed(
            OP,
            format!("not an introspection answer: {}", json_error(&e)),
        )
    })?;
    if !r.active {
        return Ok(Introspection::Inactive);
    }
    let remaining = r
        .exp
        // A negative `exp` is in the past: expired, not unknown.
        .map(|exp| Duration::from_secs(u64::try_from(exp).unwrap_or(0).saturating_sub(now)));
    Ok(Introspection::Active { remaining })
}

/// Read the answer to an RFC 7009 revocation request.
pub fn parse_revoke_answer(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
) -> Result<(), ProviderError> {
    // RFC 7009 section 2.2: 200 also for a token the server does not know.
    if status == StatusCode::OK.as_u16() {
        Ok(())
    } else {
        Err(failure("revoke", status, retry_after, describe_error(body)))
    }
}

impl TokenProvider for OAuth2 {
    async fn issue(&self, scopes: &[String]) -> Result<Issued, ProviderError> {
        const OP: &str = "token request";
        let endpoints = self.endpoints().await?;
        let scope = scopes.join(" ");
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        for (k, v) in &self.extra_params {
            form.push((k, v));
        }
        let issued_at = Instant::now();
        let (status, headers, body) = self.post(OP, &endpoints.token, form).await?;
        let answer = parse_token_answer(
            status.as_u16(),
            retry_after_text(&headers),
            &body,
            issued_at,
            &scope,
            self.default_lifetime,
        )?;
        if answer.default_lifetime_used && !self.said_default_lifetime.swap(true, Ordering::Relaxed)
        {
            warn!(provider = %self.name,
                default_lifetime = %humantime::format_duration(self.default_lifetime),
                "the token answer has no expires_in; assuming default_lifetime for this and later tokens");
        }
        Ok(answer.issued)
    }

    async fn revoke(&self, token: &Secret) -> Result<(), ProviderError> {
        const OP: &str = "revoke";
        let endpoints = self.endpoints().await?;
        let Some(url) = &endpoints.revocation else {
            return Err(ProviderError::Unsupported { operation: OP });
        };
        let (status, headers, body) = self
            .post(
                OP,
                url,
                vec![
                    ("token", token.expose()),
                    ("token_type_hint", "access_token"),
                ],
            )
            .await?;
        parse_revoke_answer(status.as_u16(), retry_after_text(&headers), &body)
    }

    async fn introspect(&self, token: &Secret) -> Result<Introspection, ProviderError> {
        const OP: &str = "introspect";
        let endpoints = self.endpoints().await?;
        let Some(url) = &endpoints.introspection else {
            return Err(ProviderError::Unsupported { operation: OP });
        };
        let (status, headers, body) = self
            .post(
                OP,
                url,
                vec![
                    ("token", token.expose()),
                    ("token_type_hint", "access_token"),
                ],
            )
            .await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        parse_introspect_answer(status.as_u16(), retry_after_text(&headers), &body, now)
    }

    fn revocation(&self) -> Revocation {
        match self.endpoints.get() {
            Some(e) if e.revocation.is_none() => Revocation::Unsupported,
            // Not discovered yet: then no token has been issued, and nothing needs deciding.
            _ => Revocation::Always,
        }
    }
}

#[cfg(test)]
mod tests;
