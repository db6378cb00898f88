//! `stores:`, a set's `store:`, and `ha:`, whose lease lives in a store.

use std::collections::BTreeMap;

use crate::config::defaults::{
    DEFAULT_APPROLE_MOUNT, DEFAULT_HA_LEASE, DEFAULT_HA_PATH,
    DEFAULT_STORE_MAX_CONCURRENT_REQUESTS, DEFAULT_STORE_MAX_VERSIONS, DEFAULT_STORE_TIMEOUT,
    MIN_HA_LEASE, STORE_KINDS,
};
use crate::config::raw::{RawHa, RawSetStore, RawStore, RawStoreAuth};
use crate::config::{HaConfig, SetStore, StoreAuth, StoreConfig};

use serde_yaml::Value;

use crate::settings::{Report, Rule};

use super::Checker;

impl Checker<'_> {
    pub(super) fn store(&mut self, name: &str, raw: &RawStore) -> Option<StoreConfig> {
        let at = format!("stores.{name}");
        match raw.kind.as_deref() {
            None => self.missing(&at, "kind", "vault (HashiCorp Vault or OpenBao, KV v2)"),
            Some(k) if !STORE_KINDS.contains(&k) => self.bad(
                &at,
                "kind",
                format!("unknown store kind `{k}`; this version supports `vault` (HashiCorp Vault and OpenBao, KV v2)"),
            ),
            Some(_) => {}
        }
        let what = "the store's URL, e.g. https://bao.internal:8200";
        let address = self.required(&at, "address", raw.address.as_ref(), what);
        let mount = self
            .read(&at, "mount", raw.mount.as_ref())
            .map(|m| m.unwrap_or_else(|| "secret".into()))
            .ok();
        let ca_file = self.read(&at, "ca_file", raw.ca_file.as_ref()).ok();
        let auth_at = format!("{at}.auth");
        let auth = match &raw.auth {
            None => {
                self.missing(
                    &at,
                    "auth",
                    "{ token: SECRET } or { approle: { role_id: SECRET, secret_id: SECRET } }",
                );
                None
            }
            Some(RawStoreAuth {
                token: Some(_),
                approle: Some(_),
            }) => {
                self.bad(&at, "auth", "auth gives both token and approle; give one");
                None
            }
            Some(RawStoreAuth {
                token: Some(t),
                approle: None,
            }) => self
                .secret(&auth_at, "token", Some(t), "the store token")
                .map(StoreAuth::Token),
            Some(RawStoreAuth {
                token: None,
                approle: Some(a),
            }) => {
                let ap = format!("{auth_at}.approle");
                let role_id =
                    self.secret(&ap, "role_id", a.role_id.as_ref(), "the AppRole role_id");
                let secret_id = self.secret(
                    &ap,
                    "secret_id",
                    a.secret_id.as_ref(),
                    "the AppRole secret_id",
                );
                Some(StoreAuth::AppRole {
                    mount: a
                        .mount
                        .clone()
                        .unwrap_or_else(|| DEFAULT_APPROLE_MOUNT.into()),
                    role_id: role_id?,
                    secret_id: secret_id?,
                })
            }
            Some(_) => {
                self.bad(&at, "auth", "auth must give token or approle");
                None
            }
        };
        let timeout = self
            .read(&at, "timeout", raw.timeout.as_ref())
            .ok()?
            .unwrap_or(DEFAULT_STORE_TIMEOUT);
        let max_versions = self
            .read(&at, "max_versions", raw.max_versions.as_ref())
            .ok()?
            .unwrap_or(DEFAULT_STORE_MAX_VERSIONS);
        let concurrency = self
            .read(
                &at,
                "max_concurrent_requests",
                raw.max_concurrent_requests.as_ref(),
            )
            .ok()?
            .unwrap_or(DEFAULT_STORE_MAX_CONCURRENT_REQUESTS);
        raw.kind.as_deref().filter(|k| STORE_KINDS.contains(k))?;
        Some(StoreConfig {
            name: name.to_string(),
            address: address?,
            mount: mount?,
            namespace: raw.namespace.clone().filter(|n| !n.is_empty()),
            ca_file: ca_file?,
            auth: auth?,
            timeout,
            max_versions: u32::try_from(max_versions).unwrap_or(u32::MAX),
            max_concurrent_requests: usize::try_from(concurrency).unwrap_or(usize::MAX),
        })
    }

    pub(super) fn set_store(
        &mut self,
        at: &str,
        raw: &RawSetStore,
        stores: &BTreeMap<String, Option<RawStore>>,
    ) -> Option<SetStore> {
        let name = match raw.name.as_deref() {
            None => {
                self.missing(at, "name", "the name of one of `stores:`");
                None
            }
            Some(n) if !stores.contains_key(n) => {
                let known: Vec<String> = stores.keys().map(|k| format!("`{k}`")).collect();
                let known = if known.is_empty() {
                    "none is configured under `stores:`".to_string()
                } else {
                    format!("known stores: {}", known.join(", "))
                };
                self.bad(at, "name", format!("unknown store `{n}`; {known}"));
                None
            }
            Some(n) => Some(n.to_string()),
        };
        let what = "the secret's path under the mount, e.g. tokenkeeper/NAME";
        let path = self.required(at, "path", raw.path.as_ref(), what);
        Some(SetStore {
            name: name?,
            path: path?,
        })
    }

    pub(super) fn ha(
        &mut self,
        raw: &RawHa,
        stores: &BTreeMap<String, Option<RawStore>>,
    ) -> Option<HaConfig> {
        let store = match raw.store.as_deref() {
            None => {
                self.missing(
                    "ha",
                    "store",
                    "the name of one of `stores:`, where the lease lives",
                );
                None
            }
            Some(n) if !stores.contains_key(n) => {
                self.bad("ha", "store", format!("unknown store `{n}`"));
                None
            }
            Some(n) => Some(n.to_string()),
        };
        let path = self
            .read("ha", "path", raw.path.as_ref())
            .map(|p| p.unwrap_or_else(|| DEFAULT_HA_PATH.into()))
            .ok();
        let lease = self
            .read("ha", "lease", raw.lease.as_ref())
            .ok()?
            .unwrap_or(DEFAULT_HA_LEASE);
        if lease < MIN_HA_LEASE {
            self.bad("ha", "lease", "lease must be at least 1s");
            return None;
        }
        Some(HaConfig {
            store: store?,
            path: path?,
            lease,
            instance: raw.instance.clone().filter(|i| !i.is_empty()),
        })
    }
}

/// A KV path: relative segments of safe characters, so it can go into a URL unescaped.
fn valid_store_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        })
}

/// A rule for a KV path, saying what a wrong one is.
macro_rules! kv_path_rule {
    ($(#[$doc:meta])* $name:ident, $message:literal) => {
        $(#[$doc])*
        pub(in crate::config) struct $name;

        impl Rule for $name {
            type Value = String;
            fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<String> {
                let text = r.text(parent, key, value)?;
                if valid_store_path(text) {
                    return Some(text.to_string());
                }
                r.bad(parent, key, format!($message, text));
                None
            }
        }
    };
}

kv_path_rule!(
    /// A store's `mount`.
    KvMount,
    "mount `{}` is not a KV mount path"
);
kv_path_rule!(
    /// A set's `store.path`, under the mount.
    KvPath,
    "path `{}` must be relative segments of letters, digits, `_`, `-` and `.` separated by `/`"
);
kv_path_rule!(
    /// `ha.path`, where the lease lives.
    LeasePath,
    "path `{}` is not a store path"
);
