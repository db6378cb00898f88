//! Where the endpoints come from when only the issuer is given: RFC 8414 authorization
//! server metadata where RFC 8414 puts it, then where many servers put it instead (appended
//! to the issuer), then OpenID Connect Discovery, each document checked to name the
//! configured issuer before any endpoint in it is believed.

use reqwest::{StatusCode, Url};
use serde::Deserialize;
use tracing::{info, warn};

use super::{AuthMethod, Endpoints, OAuth2, describe_error};
use crate::provider::{
    ProviderError, failure, is_transient, json_error, malformed, read_body, retry_after_text,
    sanitize,
};

/// RFC 8414 section 3: the well-known suffix, inserted between host and issuer path.
const RFC8414_WELL_KNOWN: &str = "/.well-known/oauth-authorization-server";

/// OpenID Connect Discovery 1.0 section 4: appended to the issuer.
const OIDC_WELL_KNOWN: &str = "/.well-known/openid-configuration";

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

/// The discovery documents to try for `issuer`, in order, each with the name of its form:
/// RFC 8414's (suffix inserted before the issuer's path); the same suffix appended to the
/// issuer, where servers that predate RFC 8414's rule put it (django-oauth-toolkit, and
/// others that serve both documents side by side); then OpenID's (suffix appended). For an
/// issuer without a path the first two are one URL, asked once. The OpenID document comes
/// last because it may describe only the OpenID side of the server: django-oauth-toolkit's
/// names no revocation endpoint though the server has one.
pub fn discovery_documents(issuer: &Url) -> Vec<(Url, &'static str)> {
    let path = issuer.path().trim_end_matches('/');
    let with_path = |p: String| {
        let mut u = issuer.clone();
        u.set_path(&p);
        u
    };
    let rfc8414 = with_path(format!("{RFC8414_WELL_KNOWN}{path}"));
    let appended = with_path(format!("{path}{RFC8414_WELL_KNOWN}"));
    let oidc = with_path(format!("{path}{OIDC_WELL_KNOWN}"));
    let mut out = vec![(rfc8414, "RFC 8414")];
    if appended != out[0].0 {
        out.push((appended, "RFC 8414 suffix appended to the issuer"));
    }
    out.push((oidc, "OpenID Connect Discovery"));
    out
}

/// The URLs of [`discovery_documents`], in the order they are tried.
pub fn discovery_urls(issuer: &Url) -> Vec<Url> {
    discovery_documents(issuer)
        .into_iter()
        .map(|(u, _)| u)
        .collect()
}

/// The name of the form of `document`, one of [`discovery_documents`] for `issuer`.
pub fn discovery_form(issuer: &Url, document: &Url) -> &'static str {
    discovery_documents(issuer)
        .into_iter()
        .find(|(u, _)| u == document)
        .map_or("unknown", |(_, form)| form)
}

/// The configured and announced issuers name the same server: identical but for a trailing
/// slash, which some servers add (Auth0) and operators drop.
pub(super) fn same_issuer(configured: &Url, announced: &str) -> bool {
    configured.as_str().trim_end_matches('/') == announced.trim_end_matches('/')
}

/// An endpoint from a discovery document: https, or http on a loopback host like the config
/// allows, and then only for an http issuer. An https issuer's document naming an http
/// endpoint, even on this host, would have the client's credentials sent in clear where the
/// configured scheme promised TLS: a document (or whoever altered it) does not get to
/// weaken what the operator chose.
pub(super) fn endpoint_url(
    operation: &'static str,
    issuer: &Url,
    key: &str,
    text: &str,
) -> Result<Url, ProviderError> {
    let bad = |why: &str| ProviderError::Discovery {
        operation,
        what: format!("{key} {why}"),
    };
    let url = Url::parse(text).map_err(|_| bad("is not a URL"))?;
    match url.scheme() {
        "https" => {}
        "http" if crate::provider::is_loopback(&url) => {}
        _ => return Err(bad("is not an https:// URL")),
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(bad("has a user name, password or fragment"));
    }
    if url.scheme() == "http" && issuer.scheme() != "http" {
        return Err(bad(&format!(
            "{} is plain http while the issuer is https: refusing an endpoint whose scheme is weaker than the issuer's, which would carry the client's credentials in clear",
            sanitize(url.as_str())
        )));
    }
    Ok(url)
}

impl OAuth2 {
    pub(super) async fn discover(&self, issuer: &Url) -> Result<Endpoints, ProviderError> {
        let (url, found) = self.fetch_metadata(issuer).await?;
        if found.auth_method_unlisted {
            warn!(provider = %self.name, auth_method = self.auth_method.name(),
                "the server does not list this auth_method as supported; set auth_method to one it lists if token requests fail");
        }
        if found.client_credentials_unlisted {
            warn!(provider = %self.name,
                "the server does not list the client_credentials grant as supported");
        }
        let endpoints = found.endpoints;
        info!(provider = %self.name, document = %url, form = discovery_form(issuer, &url),
            token_endpoint = %endpoints.token,
            revocation = endpoints.revocation.is_some(),
            introspection = endpoints.introspection.is_some(),
            "discovered the authorization server's endpoints");
        if endpoints.revocation.is_none() {
            warn_no_revocation(&self.name, &format!("its discovery document {url}"));
        }
        Ok(endpoints)
    }

    /// What `check` learns from the server's metadata, without logging it: `None` for a
    /// provider whose endpoints are configured rather than discovered.
    pub async fn probe_metadata(&self) -> Option<Result<(Url, Discovered), ProviderError>> {
        let issuer = self.issuer.as_ref()?;
        Some(self.fetch_metadata(issuer).await)
    }

    async fn fetch_metadata(&self, issuer: &Url) -> Result<(Url, Discovered), ProviderError> {
        fetch_metadata(&self.http, self.timeout, self.auth_method, issuer).await
    }
}

/// Said at WARN, once per provider, when its server has no revocation endpoint (`source`
/// says how we know): every token it issues, superseded or held at stop, stays live until
/// it expires, which an operator who asked for revocation at stop must hear of.
pub(super) fn warn_no_revocation(provider: &str, source: &str) {
    warn!(provider = %provider,
        "{source} names no revocation endpoint: tokens from this provider cannot be revoked, when replaced or at stop, and stay live until they expire");
}

/// The first discovery document the server has for `issuer`, and where it was found. Only
/// GET requests, which carry no client authentication: `check` asks with no credential loaded.
pub async fn fetch_metadata(
    http: &reqwest::Client,
    timeout: std::time::Duration,
    auth_method: AuthMethod,
    issuer: &Url,
) -> Result<(Url, Discovered), ProviderError> {
    const OP: &str = "discovery";
    let mut tried = Vec::new();
    for url in discovery_urls(issuer) {
        let resp = http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(timeout)
            .send()
            .await
            .map_err(|source| ProviderError::transport(OP, source))?;
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
        let found = parse_discovery_answer(&url, issuer, auth_method, &body)?;
        return Ok((url, found));
    }
    Err(ProviderError::Discovery {
        operation: OP,
        what: format!("no discovery document at {}", tried.join(" or ")),
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
        token: endpoint_url(OP, issuer, "token_endpoint", token_text)?,
        revocation: meta
            .revocation_endpoint
            .as_deref()
            .map(|u| endpoint_url(OP, issuer, "revocation_endpoint", u))
            .transpose()?,
        introspection: meta
            .introspection_endpoint
            .as_deref()
            .map(|u| endpoint_url(OP, issuer, "introspection_endpoint", u))
            .transpose()?,
        issuer: Some(meta.issuer.clone()),
    };
    let method = auth_method.metadata_name();
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
