//! What the config says about one provider, in the types the provider code works with.
//! [`yaml`](super::yaml) reads a provider's YAML into these; nothing else here knows its shape.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;

use crate::budget::IssueRate;
use crate::secret::SecretSource;

pub use crate::settings::is_loopback;

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub name: String,
    /// Per-request deadline (connect + send + read the answer).
    pub timeout: Duration,
    /// Most tokens tokenkeeper holds live at once from this provider (current, superseded,
    /// and those being issued), across all sets.
    pub max_live_tokens: usize,
    /// Token-bucket limit on issuing: sustained rate and burst.
    pub issue_rate: IssueRate,
    /// Most HTTP requests (issue, revoke, introspect) in flight to this provider at once,
    /// across sets: 10,000 sets share a few connections instead of opening 10,000.
    pub max_concurrent_requests: usize,
    pub kind: ProviderKind,
}

// One per configured provider, a handful per process, built once per start or reload: the
// size of the largest kind costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderKind {
    Voucherify {
        /// Base URL without a trailing slash, e.g. `https://api.voucherify.io`.
        base_url: Url,
        app_id: SecretSource,
        app_token: SecretSource,
    },
    /// Any RFC 6749 authorization server, client_credentials grant.
    OAuth2 {
        endpoints: OAuth2Endpoints,
        client_id: String,
        /// What the client authenticates with; its kind follows `auth_method`.
        credential: ClientCredential,
        auth_method: AuthMethod,
        /// Extra token request parameters (`audience`, `resource`, `project_id`, ...), in
        /// key order.
        extra_params: BTreeMap<String, String>,
        /// Lifetime assumed when a token answer has no `expires_in`.
        default_lifetime: Duration,
        /// `ca_file`: a PEM bundle of CAs trusted for this provider's server, besides the
        /// system's roots (an internal CA that the whole process need not trust).
        ca_file: Option<PathBuf>,
    },
    /// Square OAuth: ObtainToken with the refresh_token grant, or the legacy RenewToken.
    Square {
        /// Base URL without a trailing slash, e.g. `https://connect.squareup.com`.
        base_url: Url,
        client_id: String,
        /// Absent for PKCE applications, which have no secret (and so cannot revoke).
        client_secret: Option<SecretSource>,
        grant: SquareGrant,
        /// Where rotated refresh tokens (or renewed access tokens) are kept, inside `state_dir`.
        state_file: PathBuf,
    },
}

/// Where an OAuth 2.0 server's endpoints come from.
#[derive(Debug, Clone, PartialEq)]
pub enum OAuth2Endpoints {
    /// RFC 8414 / OpenID Connect discovery from the issuer, at first use.
    Discover { issuer: Url },
    Explicit {
        token_url: Url,
        revocation_url: Option<Url>,
        introspection_url: Option<Url>,
    },
}

/// How an OAuth 2.0 client authenticates (the token endpoint auth methods of RFC 8414).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// HTTP Basic with the form-encoded client id and secret (the RFC's MUST-support method).
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// An RFC 7523 JWT assertion signed with the client's private key.
    PrivateKeyJwt,
    /// RFC 8705 mutual TLS with a CA-issued client certificate.
    TlsClientAuth,
    /// RFC 7521 `client_assertion`: a JWT someone else writes and rotates (workload identity
    /// federation), read afresh for every request.
    ClientAssertion,
}

impl AuthMethod {
    /// The OAuth registry name, as config and discovery documents spell it.
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
            AuthMethod::TlsClientAuth => "tls_client_auth",
            AuthMethod::ClientAssertion => "client_assertion",
        }
    }

    /// The name a server's metadata lists it by: a federated assertion is a JWT client
    /// assertion to the server, which is what `private_key_jwt` means there.
    pub fn metadata_name(self) -> &'static str {
        match self {
            AuthMethod::ClientAssertion => AuthMethod::PrivateKeyJwt.name(),
            other => other.name(),
        }
    }
}

/// What an OAuth 2.0 client authenticates with.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientCredential {
    /// `client_secret_basic`, `client_secret_post`.
    Secret(SecretSource),
    /// `private_key_jwt`: a PKCS#8 PEM key, the optional `kid` of the JWT header, and the
    /// `aud` the assertions carry when the config chooses it (`assertion_audience`).
    PrivateKey {
        key: SecretSource,
        key_id: Option<String>,
        audience: Option<String>,
    },
    /// `tls_client_auth`: a PEM certificate (chain) and its PKCS#8 key. The certificate is
    /// public; it goes through a secret source only for the forms of where it is read.
    Certificate {
        certificate: SecretSource,
        key: SecretSource,
    },
    /// `client_assertion`: where the platform writes the JWT, read before every request.
    Assertion(SecretSource),
}

impl ClientCredential {
    /// The secrets among its sources, by config key (the certificate is not one).
    fn secret_sources(&self) -> Vec<(&'static str, &SecretSource)> {
        match self {
            ClientCredential::Secret(s) => vec![("client_secret", s)],
            ClientCredential::PrivateKey { key, .. } => vec![("private_key", key)],
            ClientCredential::Certificate { key, .. } => vec![("client_key", key)],
            ClientCredential::Assertion(s) => vec![("client_assertion", s)],
        }
    }
}

/// How a Square provider gets each new access token.
#[derive(Debug, Clone, PartialEq)]
pub enum SquareGrant {
    /// ObtainToken with `grant_type=refresh_token`; this is the first refresh token.
    RefreshToken(SecretSource),
    /// The deprecated RenewToken; this is the first access token to renew.
    Renew(SecretSource),
}

impl ProviderKind {
    pub fn kind_name(&self) -> &'static str {
        match self {
            ProviderKind::Voucherify { .. } => "voucherify",
            ProviderKind::OAuth2 { .. } => "oauth2",
            ProviderKind::Square { .. } => "square",
        }
    }

    /// Every secret this provider reads, by its key.
    pub fn secret_sources(&self) -> Vec<(&'static str, &SecretSource)> {
        match self {
            ProviderKind::Voucherify {
                app_id, app_token, ..
            } => vec![("app_id", app_id), ("app_token", app_token)],
            ProviderKind::OAuth2 { credential, .. } => credential.secret_sources(),
            ProviderKind::Square {
                client_secret,
                grant,
                ..
            } => {
                let mut v = Vec::new();
                if let Some(s) = client_secret {
                    v.push(("client_secret", s));
                }
                match grant {
                    SquareGrant::RefreshToken(s) => v.push(("refresh_token", s)),
                    SquareGrant::Renew(s) => v.push(("access_token", s)),
                }
                v
            }
        }
    }
}
