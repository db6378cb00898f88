//! Each provider kind's own keys: one struct per kind, selected by `kind`. A key of a kind is a
//! field of its struct and nowhere else; every other kind refuses it, naming the kinds it
//! belongs to.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::config::raw::{RawProvider, RawProviderCommon};
use crate::config::text::hide_raw_names;
use crate::config::unknown::{closest, fields_of};

use super::Checker;

/// `kind: voucherify`'s own keys. Each kind's keys are its struct's fields: a key is added
/// here and in docs/configuration.md, and every other kind refuses it.
#[derive(Deserialize, Default)]
pub(super) struct Voucherify {
    pub(super) base_url: Option<String>,
    pub(super) cluster: Option<String>,
    pub(super) app_id: Option<Value>,
    pub(super) app_token: Option<Value>,
}

/// `kind: oauth2`'s own keys.
#[derive(Deserialize, Default)]
pub(super) struct OAuth2 {
    pub(super) issuer: Option<String>,
    pub(super) token_url: Option<String>,
    pub(super) revocation_url: Option<String>,
    pub(super) introspection_url: Option<String>,
    pub(super) client_id: Option<Value>,
    pub(super) client_secret: Option<Value>,
    pub(super) auth_method: Option<String>,
    pub(super) private_key: Option<Value>,
    pub(super) key_id: Option<String>,
    pub(super) assertion_audience: Option<String>,
    pub(super) client_certificate: Option<Value>,
    pub(super) client_key: Option<Value>,
    pub(super) client_assertion: Option<Value>,
    pub(super) extra_params: Option<BTreeMap<String, Value>>,
    pub(super) default_lifetime: Option<Value>,
    pub(super) ca_file: Option<String>,
}

/// `kind: square`'s own keys.
#[derive(Deserialize, Default)]
pub(super) struct Square {
    pub(super) base_url: Option<String>,
    pub(super) environment: Option<String>,
    pub(super) client_id: Option<Value>,
    pub(super) client_secret: Option<Value>,
    pub(super) refresh_token: Option<Value>,
    pub(super) access_token: Option<Value>,
    pub(super) mode: Option<String>,
}

/// Each kind's own keys, in the order messages list the kinds.
pub(super) fn kinds() -> [(&'static str, &'static [&'static str]); 3] {
    [
        ("voucherify", fields_of::<Voucherify>()),
        ("oauth2", fields_of::<OAuth2>()),
        ("square", fields_of::<Square>()),
    ]
}

impl Checker<'_> {
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
