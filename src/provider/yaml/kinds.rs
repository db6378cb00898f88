//! Each provider kind's own keys: one struct per kind, selected by `kind`. A key of a kind is a
//! field of its struct and nowhere else; every other kind refuses it, naming the kinds it
//! belongs to.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::provider::AuthMethod;
use crate::secret::SecretSource;

use crate::settings::{
    AbsolutePath, BaseUrl, Choices, Count, Endpoint, Field, OneOf, PositiveDuration, Public, Rate,
    closest, fields_of, hide_raw_names,
};

use super::{Audience, Check, ClientId, KeyId};

/// A provider: what every kind accepts, then the kind's own keys, read into its struct (see
/// [`super::check`]) once `kind` says which, so that a key of another kind is refused.
#[derive(Deserialize, Default)]
pub struct RawProvider {
    #[serde(flatten)]
    pub common: RawProviderCommon,
    /// The kind's own keys, as written.
    #[serde(flatten)]
    pub own: serde_yaml::Mapping,
}

#[derive(Deserialize, Default)]
pub struct RawProviderCommon {
    pub kind: Option<String>,
    pub timeout: Option<Field<PositiveDuration>>,
    pub max_live_tokens: Option<Field<Count>>,
    pub issue_rate: Option<Field<Rate>>,
    pub issue_burst: Option<Field<Count>>,
    pub max_concurrent_requests: Option<Field<Count>>,
}

/// Voucherify's documented cap on live OAuth tokens per project (it was 200 until 2025), and
/// the default for every kind: the others document no cap, and a thousand live tokens is far
/// beyond what one machine's sets need, so it only stops a runaway. Lower it when other
/// clients share a Voucherify project, so they keep room of their own.
pub(super) const DEFAULT_MAX_LIVE_TOKENS: u64 = 1000;

/// Sustained issuing rate per provider: a hundred sets start in about ten seconds, while a
/// runaway loop cannot mint more than 600 tokens a minute.
pub(crate) const DEFAULT_ISSUE_PER_SECOND: f64 = 10.0;

/// Issues allowed back to back: enough for a typical machine's sets to start at once.
pub(super) const DEFAULT_ISSUE_BURST: u64 = 100;

/// Requests in flight to one provider at once: enough to keep a fast provider busy over a
/// handful of keep-alive connections (a round trip of a few ms gives thousands of tokens a
/// second), few enough that a start with thousands of sets neither opens thousands of
/// connections nor looks like a flood to the provider's rate limiter.
pub(super) const DEFAULT_MAX_CONCURRENT_REQUESTS: u64 = 16;

/// A provider slower than this per request is better retried than waited for.
pub(crate) const DEFAULT_PROVIDER_TIMEOUT: Duration = Duration::from_secs(30);

/// Voucherify's default (EU) cluster, used when neither `base_url` nor `cluster` is given.
pub(crate) const VOUCHERIFY_DEFAULT_URL: &str = "https://api.voucherify.io";

/// Voucherify's API hosts by cluster, as its documentation lists them.
pub(super) const VOUCHERIFY_CLUSTERS: &[(&str, &str)] = &[
    ("eu", VOUCHERIFY_DEFAULT_URL),
    ("us1", "https://us1.api.voucherify.io"),
    ("as1", "https://as1.api.voucherify.io"),
];

/// Square's hosts by environment (the spec's `servers`).
pub(super) const SQUARE_ENVIRONMENTS: &[(&str, &str)] = &[
    ("production", "https://connect.squareup.com"),
    ("sandbox", "https://connect.squareupsandbox.com"),
];

/// Five minutes: a server that omits `expires_in` gives no hint, and a guess that is too
/// short costs only extra requests, while one too long leaves an expired token in the file.
pub(crate) const DEFAULT_OAUTH2_LIFETIME: Duration = Duration::from_secs(300);

/// Token request parameters tokenkeeper sets itself; `extra_params` may not override them.
pub(super) const RESERVED_TOKEN_PARAMS: &[&str] = &[
    "grant_type",
    "scope",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
];

/// The names `auth_method:` accepts.
pub(super) const AUTH_METHODS: &[(&str, AuthMethod)] = &[
    ("client_secret_basic", AuthMethod::ClientSecretBasic),
    ("client_secret_post", AuthMethod::ClientSecretPost),
    ("private_key_jwt", AuthMethod::PrivateKeyJwt),
    ("tls_client_auth", AuthMethod::TlsClientAuth),
    ("client_assertion", AuthMethod::ClientAssertion),
];

/// The names a Square provider's `mode:` accepts.
pub(super) const SQUARE_MODES: &[(&str, bool)] = &[("refresh_token", false), ("renew", true)];

/// `cluster:`: Voucherify's API host by cluster.
pub(super) struct Cluster;
impl Choices for Cluster {
    type Value = &'static str;
    const NAMES: &'static [(&'static str, &'static str)] = VOUCHERIFY_CLUSTERS;
}

/// `environment:`: Square's API host by environment.
pub(super) struct Environment;
impl Choices for Environment {
    type Value = &'static str;
    const NAMES: &'static [(&'static str, &'static str)] = SQUARE_ENVIRONMENTS;
}

/// `auth_method:`: how an oauth2 client authenticates.
pub(super) struct AuthMethods;
impl Choices for AuthMethods {
    type Value = AuthMethod;
    const NAMES: &'static [(&'static str, AuthMethod)] = AUTH_METHODS;
}

/// A Square provider's `mode:`: whether it renews (`renew`) or refreshes.
pub(super) struct SquareMode;
impl Choices for SquareMode {
    type Value = bool;
    const NAMES: &'static [(&'static str, bool)] = SQUARE_MODES;
}

/// `kind: voucherify`'s own keys. Each kind's keys are its struct's fields: a key is added
/// here and in docs/configuration.md, and every other kind refuses it.
#[derive(Deserialize, Default)]
pub(super) struct Voucherify {
    pub(super) base_url: Option<Field<BaseUrl>>,
    pub(super) cluster: Option<Field<OneOf<Cluster>>>,
    pub(super) app_id: Option<Field<SecretSource>>,
    pub(super) app_token: Option<Field<SecretSource>>,
}

/// `kind: oauth2`'s own keys.
#[derive(Deserialize, Default)]
pub(super) struct OAuth2 {
    pub(super) issuer: Option<Field<Endpoint>>,
    pub(super) token_url: Option<Field<Endpoint>>,
    pub(super) revocation_url: Option<Field<Endpoint>>,
    pub(super) introspection_url: Option<Field<Endpoint>>,
    pub(super) client_id: Option<Field<ClientId>>,
    pub(super) client_secret: Option<Field<SecretSource>>,
    pub(super) auth_method: Option<Field<OneOf<AuthMethods>>>,
    pub(super) private_key: Option<Field<SecretSource>>,
    pub(super) key_id: Option<Field<KeyId>>,
    pub(super) assertion_audience: Option<Field<Audience>>,
    pub(super) client_certificate: Option<Field<Public>>,
    pub(super) client_key: Option<Field<SecretSource>>,
    pub(super) client_assertion: Option<Field<SecretSource>>,
    pub(super) extra_params: Option<BTreeMap<String, Value>>,
    pub(super) default_lifetime: Option<Field<PositiveDuration>>,
    pub(super) ca_file: Option<Field<AbsolutePath>>,
}

/// `kind: square`'s own keys.
#[derive(Deserialize, Default)]
pub(super) struct Square {
    pub(super) base_url: Option<Field<BaseUrl>>,
    pub(super) environment: Option<Field<OneOf<Environment>>>,
    pub(super) client_id: Option<Field<ClientId>>,
    pub(super) client_secret: Option<Field<SecretSource>>,
    pub(super) refresh_token: Option<Field<SecretSource>>,
    pub(super) access_token: Option<Field<SecretSource>>,
    pub(super) mode: Option<Field<OneOf<SquareMode>>>,
}

/// Each kind's own keys, in the order messages list the kinds.
pub(super) fn kinds() -> [(&'static str, &'static [&'static str]); 3] {
    [
        ("voucherify", fields_of::<Voucherify>()),
        ("oauth2", fields_of::<OAuth2>()),
        ("square", fields_of::<Square>()),
    ]
}

impl Check<'_> {
    /// The keys of `raw` that are `kind`'s own, read into its struct `T`. A key `T` does not
    /// have is refused, named as another kind's where it is one; a value of the wrong shape is
    /// refused by its key.
    pub(super) fn own_keys<T: DeserializeOwned>(
        &mut self,
        at: &str,
        kind: &str,
        raw: &RawProvider,
    ) -> Option<T> {
        let kinds = kinds();
        let own = kinds
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(&[][..], |(_, keys)| keys);
        for key in raw.own.keys().filter_map(Value::as_str) {
            if own.contains(&key) {
                continue;
            }
            let owners: Vec<&str> = kinds
                .iter()
                .filter(|(_, keys)| keys.contains(&key))
                .map(|(k, _)| *k)
                .collect();
            if !owners.is_empty() {
                self.bad(
                    at,
                    key,
                    format!(
                        "`{key}` does not apply to kind `{kind}` (it belongs to {})",
                        owners.join(", ")
                    ),
                );
                continue;
            }
            let known: Vec<&'static str> = own
                .iter()
                .chain(fields_of::<RawProviderCommon>())
                .copied()
                .collect();
            let mut message = format!("unknown key `{key}`");
            if let Some(near) = closest(key, &known) {
                message.push_str(&format!(" (did you mean `{near}`?)"));
            }
            self.problem(at.to_string(), Some(key), message);
        }
        let read = |own: serde_yaml::Mapping| serde_yaml::from_value::<T>(Value::Mapping(own));
        match read(raw.own.clone()) {
            Ok(own) => Some(own),
            Err(err) => {
                // Named by the key whose value has the wrong shape, as serde names it.
                let key = raw.own.iter().find_map(|(k, v)| {
                    let one = std::iter::once((k.clone(), v.clone())).collect();
                    read(one).is_err().then(|| k.as_str()).flatten()
                });
                let message = hide_raw_names(&err.to_string());
                match key {
                    Some(key) => self.bad(at, key, message),
                    None => self.problem(at.to_string(), None, message),
                }
                None
            }
        }
    }
}
