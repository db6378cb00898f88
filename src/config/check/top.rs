//! The top level of the configuration (state_dir, shutdown_timeout, log_level, metrics,
//! defaults) and the walk over every section.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::config::defaults::{
    DEFAULT_MIN_INTERVAL, DEFAULT_REFRESH_AT, DEFAULT_REFRESH_JITTER,
    DEFAULT_REVOKE_SUPERSEDED_AFTER, DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_STATE_DIR,
};
use crate::config::raw::{RawConfig, RawDefaults, RawRefresh, RawSet, RawStore};
use crate::config::{Config, OnShutdown, SetConfig};
use crate::provider::yaml::RawProvider;
use crate::provider::{ProviderConfig, ProviderKind, SquareGrant};
use serde_yaml::Value;

use crate::settings::normalize;
use crate::settings::{Report, Rule};
use crate::sink::FileFormat;
use crate::sink::yaml::{DEFAULT_FILE_MODE, FileMode};

use super::sets::valid_set_name;
use super::{Checker, Defaults, Parsed, RefreshParts};
use crate::settings::{effective, pct};

impl Checker<'_> {
    pub(super) fn check(mut self, raw: RawConfig) -> Parsed {
        let state_dir = match raw.state_dir.as_deref() {
            None => PathBuf::from(DEFAULT_STATE_DIR),
            Some(dir) => {
                if !Path::new(dir).is_absolute() {
                    self.bad(
                        "",
                        "state_dir",
                        format!("state_dir `{dir}` must be an absolute path"),
                    );
                }
                normalize(Path::new(dir))
            }
        };
        let shutdown_timeout = self
            .read("", "shutdown_timeout", raw.shutdown_timeout.as_ref())
            .ok()
            .flatten()
            .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
        let log_level = self
            .read("", "log_level", raw.log_level.as_ref())
            .ok()
            .flatten();
        let metrics = crate::metrics::from_yaml(&mut self.report, raw.metrics.as_ref());
        if let Some(textfile) = &metrics.textfile {
            self.reserved
                .push((textfile.clone(), "the metrics textfile"));
        }
        self.state_dir = state_dir.clone();
        let defaults = self.defaults(raw.defaults.as_ref());

        let raw_providers = raw.providers.unwrap_or_default();
        let raw_sets = raw.scope_sets.unwrap_or_default();
        let raw_stores = raw.stores.unwrap_or_default();
        let mut stores = BTreeMap::new();
        for (name, store) in &raw_stores {
            if !self.printable_name("stores", name) {
                continue;
            }
            let default = RawStore::default();
            if let Some(checked) = self.store(name, store.as_ref().unwrap_or(&default)) {
                stores.insert(name.clone(), checked);
            }
        }
        let ha = raw.ha.as_ref().and_then(|h| self.ha(h, &raw_stores));
        let mut providers = BTreeMap::new();
        for (name, provider) in &raw_providers {
            if !self.printable_name("providers", name) {
                continue;
            }
            let default = RawProvider::default();
            let raw = provider.as_ref().unwrap_or(&default);
            if let Some(checked) =
                crate::provider::yaml::check(&mut self.report, name, raw, &state_dir)
            {
                providers.insert(name.clone(), checked);
            }
        }
        if raw_sets.is_empty() {
            self.problem(
                "scope_sets".into(),
                Some("scope_sets"),
                "no scope sets: nothing to do",
            );
        } else if raw_providers.is_empty() {
            self.problem(
                "providers".into(),
                Some("providers"),
                "no providers: every scope set names one",
            );
        }

        let mut sets = Vec::with_capacity(raw_sets.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut paths: HashMap<PathBuf, usize> = HashMap::new();
        // Each raw set is dropped once checked.
        for (index, set) in raw_sets.into_iter().enumerate() {
            let default = RawSet::default();
            let set = set.as_deref().unwrap_or(&default);
            // Uniqueness is checked on the raw values, so that a set wrong in another way
            // still has its clash reported.
            let at = self.set_at(index);
            if let Some(name) = set.name.as_deref().filter(|n| valid_set_name(n)) {
                if let Some(first) = names.get(name) {
                    let msg = format!(
                        "scope set name `{name}` is used twice: by scope_sets[{first}] and scope_sets[{index}]"
                    );
                    self.bad(&at, "name", msg);
                } else {
                    names.insert(name.to_string(), index);
                }
            }
            let path = set.file.as_ref().and_then(|f| f.path.as_deref());
            if let Some(path) = path.map(Path::new).filter(|p| p.is_absolute()) {
                let path = normalize(path);
                if let Some(first) = paths.get(&path) {
                    let msg = format!(
                        "file path {} is also the file of {}",
                        path.display(),
                        self.set_at(*first)
                    );
                    self.bad(&format!("{at}.file"), "path", msg);
                } else {
                    paths.insert(path, index);
                }
            }
            if let Some(checked) = self.set(index, set, &raw_providers, &raw_stores, &defaults) {
                sets.push(checked);
            }
        }

        self.renew_sets_unshared(&providers, &sets);
        let config = Config {
            state_dir,
            shutdown_timeout,
            log_level,
            metrics,
            providers,
            sets,
            stores,
            ha,
        };
        self.into_parsed(Some(config))
    }

    fn defaults(&mut self, raw: Option<&RawDefaults>) -> Defaults {
        let default = RawDefaults::default();
        let raw = raw.unwrap_or(&default);
        let refresh = self.refresh("defaults.refresh", raw.refresh.as_ref());
        let at = effective(refresh.at, Some(DEFAULT_REFRESH_AT));
        let jitter = effective(refresh.jitter, Some(DEFAULT_REFRESH_JITTER));
        if let (Some(at), Some(jitter)) = (at, jitter) {
            let key = if raw.refresh.as_ref().is_some_and(|r| r.jitter.is_some()) {
                "jitter"
            } else {
                "at"
            };
            self.jitter_below_at("defaults.refresh", key, at, jitter);
        }
        let file = raw.file.as_ref();
        let mode = match file.and_then(|f| f.mode.as_ref()) {
            Some(mode) => FileMode::read(self, "defaults.file", "mode", mode.value()),
            None => None,
        };
        let format = self.read(
            "defaults.file",
            "format",
            file.and_then(|f| f.format.as_ref()),
        );
        let on_shutdown = self.read("defaults", "on_shutdown", raw.on_shutdown.as_ref());
        let revoke_after = self.read(
            "defaults",
            "revoke_superseded_after",
            raw.revoke_superseded_after.as_ref(),
        );
        Defaults {
            at,
            jitter,
            min_interval: refresh
                .min_interval
                .ok()
                .flatten()
                .unwrap_or(DEFAULT_MIN_INTERVAL),
            mode: mode.unwrap_or(DEFAULT_FILE_MODE),
            format: format.ok().flatten().unwrap_or(FileFormat::Raw),
            on_shutdown: on_shutdown.ok().flatten().unwrap_or(OnShutdown::Revoke),
            revoke_superseded_after: revoke_after
                .ok()
                .flatten()
                .unwrap_or(DEFAULT_REVOKE_SUPERSEDED_AFTER),
        }
    }

    pub(super) fn refresh(&mut self, at: &str, raw: Option<&RawRefresh>) -> RefreshParts {
        let Some(raw) = raw else {
            return RefreshParts {
                at: Ok(None),
                jitter: Ok(None),
                min_interval: Ok(None),
            };
        };
        let mut refresh_at = self.read(at, "at", raw.at.as_ref());
        if let Ok(Some(value)) = refresh_at
            && !(value > 0.0 && value <= 1.0)
        {
            self.bad(
                at,
                "at",
                format!("at ({}) must be more than 0% and at most 100%", pct(value)),
            );
            refresh_at = Err(());
        }
        let mut jitter = self.read(at, "jitter", raw.jitter.as_ref());
        if let Ok(Some(value)) = jitter
            && value >= 1.0
        {
            self.bad(
                at,
                "jitter",
                format!("jitter ({}) must be less than 100%", pct(value)),
            );
            jitter = Err(());
        }
        let min_interval = self.read(at, "min_interval", raw.min_interval.as_ref());
        RefreshParts {
            at: refresh_at,
            jitter,
            min_interval,
        }
    }

    pub(super) fn jitter_below_at(&mut self, parent: &str, key: &str, at: f64, jitter: f64) {
        if jitter >= at {
            self.bad(
                parent,
                key,
                format!(
                    "jitter ({}) must be smaller than at ({}), or a token could be replaced as soon as it is issued",
                    pct(jitter),
                    pct(at)
                ),
            );
        }
    }

    /// RenewToken renews one access token into the next: two sets cannot share that chain
    /// without one revoking or outliving the other's token.
    pub(super) fn renew_sets_unshared(
        &mut self,
        providers: &BTreeMap<String, ProviderConfig>,
        sets: &[SetConfig],
    ) {
        for (name, provider) in providers {
            if !matches!(
                provider.kind,
                ProviderKind::Square {
                    grant: SquareGrant::Renew(_),
                    ..
                }
            ) {
                continue;
            }
            let users: Vec<&str> = sets
                .iter()
                .filter(|s| &s.provider == name)
                .map(|s| s.name.as_str())
                .collect();
            if users.len() > 1 {
                self.problem(
                    format!("providers.{name}"),
                    Some("mode"),
                    format!(
                        "a square provider in mode: renew serves one scope set, but {} name it; give each its own provider or use the refresh_token mode",
                        users.join(", ")
                    ),
                );
            }
        }
    }
}

/// `log_level`: a tracing filter such as `info` or `tokenkeeper=debug`.
pub(in crate::config) struct LogFilter;

impl Rule for LogFilter {
    type Value = String;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<String> {
        let filter = r.text(parent, key, value)?;
        match tracing_subscriber::EnvFilter::try_new(filter) {
            Ok(_) => Some(filter.to_string()),
            Err(err) => {
                r.bad(
                    parent,
                    key,
                    format!("log_level `{filter}` is not a tracing filter such as `info` or `tokenkeeper=debug`: {err}"),
                );
                None
            }
        }
    }
}
