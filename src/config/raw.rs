//! Raw structs: what serde reads. Nearly everything is optional so that a missing key becomes
//! a problem with a message of ours, and checks carry on past it.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;

use crate::cron::RotateSchedule;
use crate::secret::SecretSource;
use crate::settings::{
    AbsolutePath, AnyDuration, BaseUrl, Count, Field, MinInterval, OneOf, Percent, PositiveDuration,
};
use crate::sink::yaml::{FileMode, Formats};

use super::check::{KvMount, KvPath, LeasePath, LogFilter};
use super::defaults::OnShutdownChoice;

pub(super) use crate::hooks::yaml::{RawOnRotate, RawSignalHook};
pub(super) use crate::metrics::RawMetrics;
pub(super) use crate::sink::yaml::RawFile;

impl RawConfig {
    /// Whether the document set none of the keys tokenkeeper knows (an empty document, or
    /// only unknown keys).
    pub(super) fn is_blank(&self) -> bool {
        let RawConfig {
            state_dir,
            shutdown_timeout,
            log_level,
            metrics,
            defaults,
            providers,
            scope_sets,
            stores,
            ha,
        } = self;
        state_dir.is_none()
            && shutdown_timeout.is_none()
            && log_level.is_none()
            && metrics.is_none()
            && defaults.is_none()
            && providers.is_none()
            && scope_sets.is_none()
            && stores.is_none()
            && ha.is_none()
    }
}

#[derive(Deserialize)]
pub(super) struct RawConfig {
    pub(super) state_dir: Option<String>,
    pub(super) shutdown_timeout: Option<Field<PositiveDuration>>,
    pub(super) log_level: Option<Field<LogFilter>>,
    pub(super) metrics: Option<RawMetrics>,
    pub(super) defaults: Option<RawDefaults>,
    pub(super) providers: Option<BTreeMap<String, Option<crate::provider::yaml::RawProvider>>>,
    /// Boxed: a `RawSet` is about a kilobyte, mostly options a set seldom uses, and 10,000
    /// sets in a growing vector held twice that while the config was read.
    pub(super) scope_sets: Option<Vec<Option<Box<RawSet>>>>,
    pub(super) stores: Option<BTreeMap<String, Option<RawStore>>>,
    pub(super) ha: Option<RawHa>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawStore {
    pub(super) kind: Option<String>,
    pub(super) address: Option<Field<BaseUrl>>,
    pub(super) mount: Option<Field<KvMount>>,
    pub(super) namespace: Option<String>,
    pub(super) ca_file: Option<Field<AbsolutePath>>,
    pub(super) auth: Option<RawStoreAuth>,
    pub(super) timeout: Option<Field<PositiveDuration>>,
    pub(super) max_versions: Option<Field<Count>>,
    pub(super) max_concurrent_requests: Option<Field<Count>>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawStoreAuth {
    pub(super) token: Option<Field<SecretSource>>,
    pub(super) approle: Option<RawAppRole>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawAppRole {
    pub(super) mount: Option<String>,
    pub(super) role_id: Option<Field<SecretSource>>,
    pub(super) secret_id: Option<Field<SecretSource>>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawHa {
    pub(super) store: Option<String>,
    pub(super) path: Option<Field<LeasePath>>,
    pub(super) lease: Option<Field<PositiveDuration>>,
    pub(super) instance: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawSetStore {
    pub(super) name: Option<String>,
    pub(super) path: Option<Field<KvPath>>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawDefaults {
    pub(super) refresh: Option<RawRefresh>,
    pub(super) file: Option<RawDefaultFile>,
    pub(super) on_shutdown: Option<Field<OneOf<OnShutdownChoice>>>,
    pub(super) revoke_superseded_after: Option<Field<AnyDuration>>,
}

#[derive(Deserialize)]
pub(super) struct RawRefresh {
    pub(super) at: Option<Field<Percent>>,
    pub(super) jitter: Option<Field<Percent>>,
    pub(super) min_interval: Option<Field<MinInterval>>,
}

/// Only what makes sense for every file: `path` is per set by nature.
#[derive(Deserialize)]
pub(super) struct RawDefaultFile {
    pub(super) mode: Option<Field<FileMode>>,
    pub(super) format: Option<Field<OneOf<Formats>>>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawSet {
    pub(super) name: Option<String>,
    pub(super) provider: Option<String>,
    pub(super) scopes: Option<Value>,
    pub(super) file: Option<RawFile>,
    pub(super) refresh: Option<RawRefresh>,
    pub(super) on_shutdown: Option<Field<OneOf<OnShutdownChoice>>>,
    pub(super) revoke_superseded_after: Option<Field<AnyDuration>>,
    pub(super) rotate: Option<Field<RotateSchedule>>,
    pub(super) on_rotate: Option<RawOnRotate>,
    pub(super) store: Option<RawSetStore>,
}
