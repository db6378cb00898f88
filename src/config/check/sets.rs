//! `scope_sets:`: each set, its scopes, and what it runs after a new token.

use std::collections::BTreeMap;

use crate::config::defaults::{DEFAULT_REFRESH_AT, DEFAULT_REFRESH_JITTER};
use crate::config::raw::{RawSet, RawStore};
use crate::config::{OnShutdown, SetConfig};
use crate::provider::yaml::RawProvider;
use crate::schedule::RefreshPolicy;
use crate::sink::{self, yaml::Places};

use super::{Checker, Defaults};
use crate::settings::effective;

impl Checker<'_> {
    pub(super) fn set(
        &mut self,
        index: usize,
        raw: &RawSet,
        providers: &BTreeMap<String, Option<RawProvider>>,
        stores: &BTreeMap<String, Option<RawStore>>,
        defaults: &Defaults,
    ) -> Option<SetConfig> {
        let at = self.set_at(index);
        let name = match raw.name.as_deref() {
            None => {
                self.missing(&at, "name", "[a-z0-9][a-z0-9_-]*, unique");
                None
            }
            Some(name) if !valid_set_name(name) => {
                self.bad(
                    &at,
                    "name",
                    format!("name `{name}` must start with a-z or 0-9 and contain only a-z, 0-9, `_` and `-` (it names env variables and files)"),
                );
                None
            }
            Some(name) => Some(name.to_string()),
        };
        let provider = match raw.provider.as_deref() {
            None => {
                self.missing(&at, "provider", "the name of one of `providers:`");
                None
            }
            // With no providers at all, one problem at `providers` says it for every set.
            Some(_) if providers.is_empty() => None,
            Some(provider) if !providers.contains_key(provider) => {
                let known: Vec<String> = providers.keys().map(|k| format!("`{k}`")).collect();
                self.bad(
                    &at,
                    "provider",
                    format!(
                        "unknown provider `{provider}`; known providers: {}",
                        known.join(", ")
                    ),
                );
                None
            }
            Some(provider) => Some(provider.to_string()),
        };
        let raw_provider = provider
            .as_ref()
            .and_then(|p| providers.get(p))
            .and_then(|p| p.as_ref());
        let kind = raw_provider.and_then(|p| p.common.kind.as_deref());
        let scopes =
            crate::provider::yaml::scopes(&mut self.report, &at, raw.scopes.as_ref(), kind);
        let file = match &raw.file {
            // A set that writes only to a store needs no file.
            None if raw.store.is_some() => Some(None),
            None => {
                self.missing(
                    &at,
                    "file",
                    "where to write the token, e.g. { path: /run/tokenkeeper/NAME.token } (or a store:, or both)",
                );
                None
            }
            Some(file) => {
                // What a template's `check` render stands in for: the set as configured.
                let scope = scopes.as_ref().map(|s| s.join(" ")).unwrap_or_default();
                let owner = (name.as_deref(), provider.as_deref(), scope.as_str());
                let places = Places {
                    state_dir: &self.state_dir,
                    reserved: &self.reserved,
                };
                let defaults = (defaults.mode, &defaults.format);
                let at = format!("{at}.file");
                sink::yaml::file(&mut self.report, &places, &at, file, defaults, owner).map(Some)
            }
        };

        let refresh_at = format!("{at}.refresh");
        let parts = self.refresh(&refresh_at, raw.refresh.as_ref());
        let set_at_value = effective(parts.at, defaults.at);
        let set_jitter = effective(parts.jitter, defaults.jitter);
        let overrides = raw.refresh.as_ref();
        // Only a set that changes at or jitter can break the pair; the defaults are checked once.
        if let (Some(at_value), Some(jitter)) = (set_at_value, set_jitter)
            && let Some(overrides) = overrides
            && (overrides.at.is_some() || overrides.jitter.is_some())
        {
            let key = if overrides.jitter.is_some() {
                "jitter"
            } else {
                "at"
            };
            self.jitter_below_at(&refresh_at, key, at_value, jitter);
        }
        let on_shutdown = self.read(&at, "on_shutdown", raw.on_shutdown.as_ref());
        // Square's RevokeToken can end the seller's whole authorization: a square set revokes
        // only when it says so itself, never because of `defaults.on_shutdown`.
        let default_on_shutdown = if kind == Some("square") {
            OnShutdown::Keep
        } else {
            defaults.on_shutdown
        };
        if kind == Some("square")
            && on_shutdown == Ok(Some(OnShutdown::Revoke))
            && raw_provider.is_some_and(|p| !p.own.contains_key("client_secret"))
        {
            self.bad(
                &at,
                "on_shutdown",
                "on_shutdown: revoke needs the provider's client_secret: Square's RevokeToken authenticates with it (PKCE applications have none, so their tokens can only expire)",
            );
        }
        let revoke_after = self.read(
            &at,
            "revoke_superseded_after",
            raw.revoke_superseded_after.as_ref(),
        );
        let rotate = self.read(&at, "rotate", raw.rotate.as_ref());
        let on_rotate = match &raw.on_rotate {
            None => Ok(None),
            Some(hooks) => {
                crate::hooks::yaml::on_rotate(&mut self.report, &format!("{at}.on_rotate"), hooks)
                    .map(|h| (!h.is_empty()).then(|| Box::new(h)))
            }
        };
        let store = match &raw.store {
            None => Ok(None),
            Some(s) => self
                .set_store(&format!("{at}.store"), s, stores)
                .map(|s| Some(Box::new(s)))
                .ok_or(()),
        };

        Some(SetConfig {
            name: name?,
            provider: provider?,
            scopes: scopes?,
            file: file?,
            refresh: RefreshPolicy {
                at: set_at_value.unwrap_or(DEFAULT_REFRESH_AT),
                jitter: set_jitter.unwrap_or(DEFAULT_REFRESH_JITTER),
                min_interval: parts.min_interval.ok()?.unwrap_or(defaults.min_interval),
            },
            on_shutdown: on_shutdown.ok()?.unwrap_or(default_on_shutdown),
            revoke_superseded_after: revoke_after
                .ok()?
                .unwrap_or(defaults.revoke_superseded_after),
            rotate: rotate.ok()?.map(Box::new),
            on_rotate: on_rotate.ok()?,
            never_revoke: false,
            store: store.ok()?,
        })
    }
}

pub(crate) fn valid_set_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
