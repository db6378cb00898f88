//! Any RFC 6749 authorization server (Keycloak, Okta, Entra ID, Auth0, Voucherify OAuth v2):
//! the client_credentials grant (section 4.4) with `client_secret_basic`, `client_secret_post`
//! (section 2.3.1), `private_key_jwt` (RFC 7523) or `tls_client_auth` (RFC 8705), RFC 7009
//! revocation, RFC 7662 introspection, and the endpoints given or discovered from the issuer
//! (RFC 8414, OpenID Connect Discovery).
//!
//! Discovery runs at first use, not at start, so a server that is down when the daemon starts
//! is a failure the set's task retries with its backoff, not a crash; its result is kept for
//! the life of the provider.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use reqwest::{StatusCode, Url};
use serde::Deserialize;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tracing::warn;

use super::{AuthMethod, OAuth2Endpoints, ProviderConfig, ProviderKind};
use super::{
    Introspection, Issued, ProviderError, Revocation, TokenProvider, check_bearer, failure,
    json_error, malformed, read_body, refused_minted, sane_lifetime, sanitize,
};
use crate::secret::Secret;

mod assertion;
mod auth;
mod discovery;

pub use assertion::{AssertionError, check_assertion};
pub(crate) use auth::form_encode;
pub use auth::{
    Alg, ClientAuth, JWT_BEARER_ASSERTION, KeyError, Signer, base64url, basic_credentials,
    identity, load_credential,
};
pub use discovery::{
    Discovered, discovery_documents, discovery_form, discovery_urls, fetch_metadata,
    parse_discovery_answer,
};

/// Longest lifetime we believe. Client-credentials tokens live minutes to hours; a year means
/// a broken answer.
const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// What [`OAuth2::new`] needs.
pub struct Settings {
    pub http: reqwest::Client,
    /// The provider's name in the config, for log lines.
    pub name: String,
    pub endpoints: OAuth2Endpoints,
    pub client_id: String,
    pub auth: ClientAuth,
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
    /// The issuer identifier as the server's metadata spells it, when discovered: what a
    /// `private_key_jwt` assertion is addressed to.
    pub issuer: Option<String>,
}

/// An RFC 6749 authorization server.
pub struct OAuth2 {
    http: reqwest::Client,
    name: String,
    /// The configured issuer, when the endpoints are to be discovered.
    issuer: Option<Url>,
    endpoints: OnceCell<Endpoints>,
    client_id: String,
    auth: ClientAuth,
    auth_method: AuthMethod,
    extra_params: Vec<(String, String)>,
    default_lifetime: Duration,
    timeout: Duration,
    /// Whether the missing `expires_in` has been reported: once is informative, every
    /// refresh would be noise.
    said_default_lifetime: AtomicBool,
}

impl OAuth2 {
    /// What every request may carry that a provider's answer must not show.
    pub(crate) fn secrets(&self) -> Vec<&str> {
        self.auth.secrets()
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

/// The HTTP client of a provider: the process's shared one, unless the provider trusts a CA
/// of its own or presents a client certificate. Either goes to this provider only: its own
/// client, its own connection pool.
pub(crate) fn client_for(
    ca_file: Option<&std::path::Path>,
    identity: Option<reqwest::Identity>,
    shared: &reqwest::Client,
) -> Result<reqwest::Client, ProviderError> {
    if ca_file.is_none() && identity.is_none() {
        return Ok(shared.clone());
    }
    let mut builder = super::client_builder()?;
    if let Some(path) = ca_file {
        let certs = super::ca_certificates(path, "the provider").map_err(|source| {
            ProviderError::CaFile {
                path: path.display().to_string(),
                source,
            }
        })?;
        // Added to the system's roots, as a store's ca_file is: a provider behind a public
        // proxy name and an internal one both keep working.
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    builder.build().map_err(ProviderError::Client)
}

impl OAuth2 {
    /// Build from the checked config, reading the client's credential now.
    pub(crate) fn from_config(
        cfg: &ProviderConfig,
        http: &reqwest::Client,
    ) -> Result<Self, ProviderError> {
        let ProviderKind::OAuth2 {
            endpoints,
            client_id,
            credential,
            auth_method,
            extra_params,
            default_lifetime,
            ca_file,
        } = &cfg.kind
        else {
            return Err(ProviderError::ClientKey {
                what: "the provider",
                source: KeyError::WrongCredential("(not an oauth2 provider)"),
            });
        };
        let (auth, identity) = load_credential(client_id, *auth_method, credential)?;
        let http = client_for(ca_file.as_deref(), identity, http)?;
        if let OAuth2Endpoints::Explicit {
            revocation_url: None,
            ..
        } = endpoints
        {
            discovery::warn_no_revocation(&cfg.name, "the config (no revocation_url)");
        }
        OAuth2::new(Settings {
            http,
            name: cfg.name.clone(),
            endpoints: endpoints.clone(),
            client_id: client_id.clone(),
            auth,
            auth_method: *auth_method,
            extra_params: extra_params.clone().into_iter().collect(),
            default_lifetime: *default_lifetime,
            timeout: cfg.timeout,
        })
    }

    pub fn new(s: Settings) -> Result<Self, ProviderError> {
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
                    issuer: None,
                })),
            ),
        };
        Ok(OAuth2 {
            http: s.http,
            name: s.name,
            issuer,
            endpoints,
            client_id: s.client_id,
            auth: s.auth,
            auth_method: s.auth_method,
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

    /// `e` with a hint when it is a refusal of Basic credentials that form-encoding changed:
    /// RFC 6749 section 2.3.1 has the client id and secret form-encoded before Base64, and
    /// some servers do not decode them, so they see another secret than the one configured.
    /// Nothing else in the answer tells the two apart.
    fn hint_basic_encoding(&self, e: ProviderError) -> ProviderError {
        let ClientAuth::Basic { secret, .. } = &self.auth else {
            return e;
        };
        match e {
            ProviderError::Refused {
                operation,
                status: status @ (400 | 401 | 403),
                detail,
            } if auth::form_encoding_changes(&self.client_id, secret) => ProviderError::Refused {
                operation,
                status,
                detail: format!(
                    "{detail} (the client_id or client_secret has characters that client_secret_basic form-encodes before Base64, as RFC 6749 section 2.3.1 says, and some servers do not decode them; if the credentials are right, try auth_method: client_secret_post)"
                ),
            },
            other => other,
        }
    }

    /// The `aud` of a `private_key_jwt` assertion, as the update of RFC 7523 (draft-ietf-
    /// oauth-rfc7523bis) has it: the configured `assertion_audience`, else the issuer
    /// identifier where discovery learnt it, else the token endpoint, for every request
    /// (revocation and introspection included). One value a server can check against its own
    /// name, where the URL posted to may be spelt otherwise (a proxy name, `localhost`).
    fn audience<'a>(&'a self, signer: &'a Signer, posted_to: &'a Url) -> &'a str {
        if let Some(aud) = signer.audience() {
            return aud;
        }
        match self.endpoints.get() {
            Some(e) => e.issuer.as_deref().unwrap_or(e.token.as_str()),
            // Never so: every request follows endpoints(). The URL posted to is the old rule.
            None => posted_to.as_str(),
        }
    }

    /// POST `form` to `url` with the client's authentication.
    async fn post(
        &self,
        operation: &'static str,
        url: &Url,
        mut form: Vec<(&str, &str)>,
    ) -> Result<(StatusCode, Option<String>, zeroize::Zeroizing<Vec<u8>>), ProviderError> {
        let mut req = self
            .http
            .post(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout);
        // Made before the form borrows it, dropped (zeroed) after the request.
        let assertion = match &self.auth {
            ClientAuth::Jwt(signer) => Some(
                signer
                    .assertion(&self.client_id, self.audience(signer, url))
                    .map_err(|source| ProviderError::ClientKey {
                        what: "private_key",
                        source,
                    })?,
            ),
            ClientAuth::Assertion(source) => Some(assertion::read_assertion(source)?),
            _ => None,
        };
        match &self.auth {
            ClientAuth::Basic { header, .. } => {
                req = req.header(reqwest::header::AUTHORIZATION, header.clone());
            }
            ClientAuth::Post(secret) => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", secret.expose()));
            }
            ClientAuth::Jwt(_) | ClientAuth::Assertion(_) => {
                form.push(("client_id", &self.client_id));
                form.push(("client_assertion_type", JWT_BEARER_ASSERTION));
                if let Some(a) = &assertion {
                    form.push(("client_assertion", a.expose()));
                }
            }
            ClientAuth::Tls => form.push(("client_id", &self.client_id)),
        }
        let resp = req
            .form(&form)
            .send()
            .await
            .map_err(|source| ProviderError::transport(operation, source))?;
        let status = resp.status();
        let retry_after = super::retry_after_of(&resp);
        let mut body = read_body(operation, resp).await?;
        if let Some(a) = &assertion {
            // An answer that echoes the assertion (in an error_description) must not carry
            // it into a log while it is still good.
            body = auth::cut_out(body, a.expose().as_bytes());
        }
        Ok((status, retry_after, body))
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
    // Whatever is wrong with a 200 answer, a token it carries was minted: it goes with the
    // refusal, to be revoked.
    parse_issued(body, issued_at, requested_scope, default_lifetime)
        .map_err(|e| super::salvage_minted(e, body))
}

/// The 200 half of [`parse_token_answer`].
fn parse_issued(
    body: &[u8],
    issued_at: Instant,
    requested_scope: &str,
    default_lifetime: Duration,
) -> Result<TokenAnswer, ProviderError> {
    const OP: &str = "token request";
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
            lifetime_assumed: default_lifetime_used,
        },
        default_lifetime_used,
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
        let (status, retry_after, body) = self.post(OP, &endpoints.token, form).await?;
        let answer = parse_token_answer(
            status.as_u16(),
            retry_after.as_deref(),
            &body,
            issued_at,
            &scope,
            self.default_lifetime,
        )
        .map_err(|e| self.hint_basic_encoding(e))?;
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
        let (status, retry_after, body) = self
            .post(
                OP,
                url,
                vec![
                    ("token", token.expose()),
                    ("token_type_hint", "access_token"),
                ],
            )
            .await?;
        parse_revoke_answer(status.as_u16(), retry_after.as_deref(), &body)
            .map_err(|e| self.hint_basic_encoding(e))
    }

    async fn introspect(&self, token: &Secret) -> Result<Introspection, ProviderError> {
        const OP: &str = "introspect";
        let endpoints = self.endpoints().await?;
        let Some(url) = &endpoints.introspection else {
            return Err(ProviderError::Unsupported { operation: OP });
        };
        let (status, retry_after, body) = self
            .post(
                OP,
                url,
                vec![
                    ("token", token.expose()),
                    ("token_type_hint", "access_token"),
                ],
            )
            .await?;
        let now = crate::clock::now_wall()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        parse_introspect_answer(status.as_u16(), retry_after.as_deref(), &body, now)
            .map_err(|e| self.hint_basic_encoding(e))
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
