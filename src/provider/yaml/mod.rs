//! A provider's YAML checked into a [`ProviderConfig`]: the settings every kind shares, then
//! each kind's own (see [`kinds`]). The provider owns these keys: adding one touches its
//! kind's struct, the check here that reads it, and docs/providers.md.

use std::collections::BTreeMap;
use std::path::Path;

use reqwest::Url;
use serde_yaml::Value;

use crate::budget::IssueRate;
use crate::provider::{
    AuthMethod, ClientCredential, OAuth2Endpoints, ProviderConfig, ProviderKind, SquareGrant,
};
use crate::settings::{Field, Report, Rule, describe};

use kinds::{
    DEFAULT_ISSUE_BURST, DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_MAX_LIVE_TOKENS, OAuth2,
    RESERVED_TOKEN_PARAMS, SQUARE_ENVIRONMENTS, Square, Voucherify, kinds,
};
/// The defaults the config's tests see applied.
pub(crate) use kinds::{
    DEFAULT_ISSUE_PER_SECOND, DEFAULT_OAUTH2_LIFETIME, DEFAULT_PROVIDER_TIMEOUT,
    VOUCHERIFY_DEFAULT_URL,
};

mod files;
mod kinds;
mod scopes;

pub use files::{check_ca_files, check_client_keys};
pub use kinds::{RawProvider, RawProviderCommon};
pub use scopes::scopes;

/// Check the provider `name`'s YAML `raw`, every problem going to `report`. `state_dir` is
/// where a Square provider keeps its latest refresh token.
pub fn check(
    report: &mut Report,
    name: &str,
    raw: &RawProvider,
    state_dir: &Path,
) -> Option<ProviderConfig> {
    Check(report).provider(name, raw, state_dir)
}

/// The report, with the provider's readers as methods.
struct Check<'r>(&'r mut Report);

impl std::ops::Deref for Check<'_> {
    type Target = Report;
    fn deref(&self) -> &Report {
        self.0
    }
}

impl std::ops::DerefMut for Check<'_> {
    fn deref_mut(&mut self) -> &mut Report {
        self.0
    }
}

impl Check<'_> {
    fn provider(
        &mut self,
        name: &str,
        raw: &RawProvider,
        state_dir: &Path,
    ) -> Option<ProviderConfig> {
        let at = format!("providers.{name}");
        let timeout = self.read(&at, "timeout", raw.common.timeout.as_ref());
        let max_live_tokens =
            self.read(&at, "max_live_tokens", raw.common.max_live_tokens.as_ref());
        let per_second = self.read(&at, "issue_rate", raw.common.issue_rate.as_ref());
        let burst = self.read(&at, "issue_burst", raw.common.issue_burst.as_ref());
        let concurrency = self.read(
            &at,
            "max_concurrent_requests",
            raw.common.max_concurrent_requests.as_ref(),
        );
        let kinds = kinds();
        let Some(kind) = raw.common.kind.as_deref() else {
            self.missing(&at, "kind", "`voucherify`, `oauth2` or `square`");
            return None;
        };
        if !kinds.iter().any(|(k, _)| *k == kind) {
            let names: Vec<String> = kinds.iter().map(|(k, _)| format!("`{k}`")).collect();
            self.bad(
                &at,
                "kind",
                format!(
                    "unknown provider kind `{kind}`; this version supports {}",
                    names.join(", ")
                ),
            );
            return None;
        }
        let checked = match kind {
            "oauth2" => self
                .own_keys(&at, kind, raw)
                .and_then(|own| self.oauth2(&at, &own)),
            "square" => self
                .own_keys(&at, kind, raw)
                .and_then(|own| self.square(&at, name, &own, state_dir)),
            _ => self
                .own_keys(&at, kind, raw)
                .and_then(|own| self.voucherify(&at, &own)),
        };
        Some(ProviderConfig {
            name: name.to_string(),
            timeout: timeout.ok()?.unwrap_or(DEFAULT_PROVIDER_TIMEOUT),
            max_live_tokens: usize::try_from(
                max_live_tokens.ok()?.unwrap_or(DEFAULT_MAX_LIVE_TOKENS),
            )
            .unwrap_or(usize::MAX),
            issue_rate: IssueRate {
                per_second: per_second.ok()?.unwrap_or(DEFAULT_ISSUE_PER_SECOND),
                burst: u32::try_from(burst.ok()?.unwrap_or(DEFAULT_ISSUE_BURST))
                    .unwrap_or(u32::MAX),
            },
            max_concurrent_requests: usize::try_from(
                concurrency.ok()?.unwrap_or(DEFAULT_MAX_CONCURRENT_REQUESTS),
            )
            .unwrap_or(usize::MAX),
            kind: checked?,
        })
    }

    fn voucherify(&mut self, at: &str, raw: &Voucherify) -> Option<ProviderKind> {
        let base_url = match (raw.base_url.as_ref(), raw.cluster.as_ref()) {
            (Some(_), Some(_)) => {
                self.bad(at, "cluster", "give base_url or cluster, not both");
                None
            }
            (Some(url), None) => self.read(at, "base_url", Some(url)).ok().flatten(),
            (None, Some(cluster)) => match self.read(at, "cluster", Some(cluster)) {
                Ok(Some(url)) => Url::parse(url).ok(),
                _ => None,
            },
            (None, None) => Url::parse(VOUCHERIFY_DEFAULT_URL).ok(),
        };
        let app_id = self.secret(
            at,
            "app_id",
            raw.app_id.as_ref(),
            "the Voucherify application id",
        );
        let app_token = self.secret(
            at,
            "app_token",
            raw.app_token.as_ref(),
            "the Voucherify application secret key",
        );
        Some(ProviderKind::Voucherify {
            base_url: base_url?,
            app_id: app_id?,
            app_token: app_token?,
        })
    }

    fn oauth2(&mut self, at: &str, raw: &OAuth2) -> Option<ProviderKind> {
        let explicit = raw.token_url.is_some()
            || raw.revocation_url.is_some()
            || raw.introspection_url.is_some();
        let endpoints = match (raw.issuer.as_ref(), raw.token_url.as_ref()) {
            (Some(issuer), None) if !explicit => self
                .read(at, "issuer", Some(issuer))
                .ok()
                .flatten()
                .map(|issuer| OAuth2Endpoints::Discover { issuer }),
            (Some(_), _) => {
                self.bad(
                    at,
                    "issuer",
                    "give issuer (to discover the endpoints) or token_url (with optional revocation_url and introspection_url), not both",
                );
                None
            }
            (None, Some(token)) => {
                let token_url = self.read(at, "token_url", Some(token));
                let revocation_url = self.read(at, "revocation_url", raw.revocation_url.as_ref());
                let introspection_url =
                    self.read(at, "introspection_url", raw.introspection_url.as_ref());
                match (token_url, revocation_url, introspection_url) {
                    (Ok(Some(token_url)), Ok(revocation_url), Ok(introspection_url)) => {
                        Some(OAuth2Endpoints::Explicit {
                            token_url,
                            revocation_url,
                            introspection_url,
                        })
                    }
                    _ => None,
                }
            }
            (None, None) => {
                if explicit {
                    self.missing(at, "token_url", "the token endpoint, https://...");
                } else {
                    self.missing(
                        at,
                        "issuer",
                        "the issuer URL to discover endpoints from, or token_url",
                    );
                }
                None
            }
        };
        let client_id = self.client_id(at, raw.client_id.as_ref());
        let auth_method = self
            .read(at, "auth_method", raw.auth_method.as_ref())
            .ok()?
            .unwrap_or(AuthMethod::ClientSecretBasic);
        let credential = self.client_credential(at, auth_method, raw);
        let mut extra_params = BTreeMap::new();
        let mut extra_ok = true;
        for (key, value) in raw.extra_params.iter().flatten() {
            let value = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    self.bad(
                        at,
                        "extra_params",
                        format!(
                            "extra_params.{key} must be a string, not {}",
                            describe(other)
                        ),
                    );
                    extra_ok = false;
                    continue;
                }
            };
            if key.is_empty() {
                self.bad(at, "extra_params", "extra_params has an empty key");
                extra_ok = false;
            } else if RESERVED_TOKEN_PARAMS.contains(&key.as_str()) {
                self.bad(
                    at,
                    "extra_params",
                    format!(
                        "extra_params.{key} is set by tokenkeeper itself; {}",
                        match key.as_str() {
                            "scope" => "scopes come from each scope set",
                            "grant_type" => "the grant is always client_credentials",
                            _ => "client authentication follows auth_method",
                        }
                    ),
                );
                extra_ok = false;
            } else {
                extra_params.insert(key.clone(), value);
            }
        }
        let default_lifetime = self.read(at, "default_lifetime", raw.default_lifetime.as_ref());
        let ca_file = self.read(at, "ca_file", raw.ca_file.as_ref()).ok();
        Some(ProviderKind::OAuth2 {
            endpoints: endpoints?,
            client_id: client_id?,
            credential: credential?,
            auth_method,
            extra_params: extra_ok.then_some(extra_params)?,
            default_lifetime: default_lifetime.ok()?.unwrap_or(DEFAULT_OAUTH2_LIFETIME),
            ca_file: ca_file?,
        })
    }

    /// The credential `auth_method` takes; the keys of the other methods are refused, so a
    /// leftover `client_secret` is not mistaken for the one in use.
    fn client_credential(
        &mut self,
        at: &str,
        method: AuthMethod,
        raw: &OAuth2,
    ) -> Option<ClientCredential> {
        let given = [
            ("client_secret", raw.client_secret.is_some()),
            ("private_key", raw.private_key.is_some()),
            ("key_id", raw.key_id.is_some()),
            ("assertion_audience", raw.assertion_audience.is_some()),
            ("client_certificate", raw.client_certificate.is_some()),
            ("client_key", raw.client_key.is_some()),
            ("client_assertion", raw.client_assertion.is_some()),
        ];
        let own: &[&str] = match method {
            AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost => &["client_secret"],
            AuthMethod::PrivateKeyJwt => &["private_key", "key_id", "assertion_audience"],
            AuthMethod::TlsClientAuth => &["client_certificate", "client_key"],
            AuthMethod::ClientAssertion => &["client_assertion"],
        };
        let mut foreign = false;
        for (key, present) in given {
            if present && !own.contains(&key) {
                self.bad(
                    at,
                    key,
                    format!(
                        "`{key}` does not apply to auth_method {}; it takes {}",
                        method.name(),
                        own.join(" and ")
                    ),
                );
                foreign = true;
            }
        }
        let credential = match method {
            AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost => self
                .secret(
                    at,
                    "client_secret",
                    raw.client_secret.as_ref(),
                    "the OAuth client secret",
                )
                .map(ClientCredential::Secret),
            AuthMethod::PrivateKeyJwt => {
                let key = self.secret(
                    at,
                    "private_key",
                    raw.private_key.as_ref(),
                    "the client's PKCS#8 PEM key, RSA or EC P-256",
                );
                let key_id = self.read(at, "key_id", raw.key_id.as_ref());
                let audience = self.read(at, "assertion_audience", raw.assertion_audience.as_ref());
                let (Ok(key_id), Ok(audience)) = (key_id, audience) else {
                    return None;
                };
                key.map(|key| ClientCredential::PrivateKey {
                    key,
                    key_id,
                    audience,
                })
            }
            AuthMethod::TlsClientAuth => {
                let certificate = self.public_source(
                    at,
                    "client_certificate",
                    raw.client_certificate.as_ref(),
                    "the client's PEM certificate",
                );
                let key = self.secret(
                    at,
                    "client_key",
                    raw.client_key.as_ref(),
                    "the certificate's PKCS#8 PEM key",
                );
                Some(ClientCredential::Certificate {
                    certificate: certificate?,
                    key: key?,
                })
            }
            AuthMethod::ClientAssertion => self
                .secret(
                    at,
                    "client_assertion",
                    raw.client_assertion.as_ref(),
                    "where the platform writes the JWT, such as { file: /var/run/secrets/tokens/idp-token }",
                )
                .map(ClientCredential::Assertion),
        };
        if foreign { None } else { credential }
    }

    fn square(
        &mut self,
        at: &str,
        name: &str,
        raw: &Square,
        state_dir: &Path,
    ) -> Option<ProviderKind> {
        let base_url = match (raw.base_url.as_ref(), raw.environment.as_ref()) {
            (Some(_), Some(_)) => {
                self.bad(at, "environment", "give base_url or environment, not both");
                None
            }
            (Some(url), None) => self.read(at, "base_url", Some(url)).ok().flatten(),
            (None, environment) => match self.read(at, "environment", environment) {
                Ok(Some(url)) => Url::parse(url).ok(),
                Ok(None) => Url::parse(SQUARE_ENVIRONMENTS[0].1).ok(),
                Err(()) => None,
            },
        };
        let client_id = self.client_id(at, raw.client_id.as_ref());
        let client_secret = match raw.client_secret.as_ref() {
            None => Ok(None),
            Some(v) => self
                .secret(
                    at,
                    "client_secret",
                    Some(v),
                    "the Square application secret",
                )
                .map(Some)
                .ok_or(()),
        };
        let renew = self.read(at, "mode", raw.mode.as_ref());
        let grant = match renew {
            Ok(Some(true)) => {
                if raw.refresh_token.is_some() {
                    self.bad(
                        at,
                        "refresh_token",
                        "mode: renew renews an access token; give access_token, not refresh_token",
                    );
                }
                if raw.client_secret.is_none() {
                    self.missing(
                        at,
                        "client_secret",
                        "RenewToken authenticates with the application secret",
                    );
                }
                self.secret(
                    at,
                    "access_token",
                    raw.access_token.as_ref(),
                    "the first access token to renew (mode: renew)",
                )
                .map(SquareGrant::Renew)
            }
            Ok(_) => {
                if raw.access_token.is_some() {
                    self.bad(
                        at,
                        "access_token",
                        "access_token is used only with mode: renew; the refresh_token grant starts from refresh_token",
                    );
                }
                self.secret(
                    at,
                    "refresh_token",
                    raw.refresh_token.as_ref(),
                    "the first refresh token; rotated ones are kept in state_dir",
                )
                .map(SquareGrant::RefreshToken)
            }
            Err(()) => None,
        };
        Some(ProviderKind::Square {
            base_url: base_url?,
            client_id: client_id?,
            client_secret: client_secret.ok()?,
            grant: grant?,
            state_file: state_dir.join(state_file_name(name)),
        })
    }

    /// `client_id`, which every OAuth client has.
    fn client_id(&mut self, parent: &str, field: Option<&Field<ClientId>>) -> Option<String> {
        self.required(
            parent,
            "client_id",
            field,
            "the OAuth client (application) id",
        )
    }
}

/// The file in `state_dir` that holds a Square provider's latest refresh token: the provider's
/// name when it is safe in a file name, otherwise its safe characters plus a fingerprint so
/// that two names never share a file.
fn state_file_name(provider: &str) -> String {
    let safe: String = provider
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe == provider {
        format!("square-{provider}.json")
    } else {
        format!(
            "square-{safe}-{}.json",
            crate::secret::fingerprint(provider)
        )
    }
}

/// `client_id`: an identifier, not a secret, so a plain string (or a number).
pub(super) struct ClientId;

impl Rule for ClientId {
    type Value = String;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<String> {
        match value {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Value::Number(n) => Some(n.to_string()),
            Value::String(_) => {
                r.bad(parent, key, format!("{key} is empty"));
                None
            }
            other => {
                r.bad(
                    parent,
                    key,
                    format!(
                        "{key} must be a string (it is not a secret), not {}",
                        describe(other)
                    ),
                );
                None
            }
        }
    }
}

/// A rule for a name sent in a client assertion: non-empty printable text.
macro_rules! printable_rule {
    ($(#[$doc:meta])* $name:ident, $message:literal) => {
        $(#[$doc])*
        pub(super) struct $name;

        impl Rule for $name {
            type Value = String;
            fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<String> {
                let text = r.text(parent, key, value)?;
                if text.is_empty() || text.chars().any(char::is_control) {
                    r.bad(parent, key, $message);
                    return None;
                }
                Some(text.to_string())
            }
        }
    };
}

printable_rule!(
    /// `key_id`: the `kid` of the client's key.
    KeyId,
    "key_id must be non-empty printable text"
);
printable_rule!(
    /// `assertion_audience`: who the client's assertion is for.
    Audience,
    "assertion_audience must be non-empty printable text, such as the server's issuer or token URL"
);
