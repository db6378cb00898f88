//! The configuration: YAML → raw structs → a checked [`Config`].
//!
//! One run reports every mistake in the file, not just the first, in three passes:
//! 1. The text into a [`serde_yaml::Value`]: syntax errors (with line and column), an empty
//!    file, a top level that is not a mapping.
//! 2. The text again into `Raw*` structs whose fields are nearly all optional, through
//!    `serde_ignored`, so serde fails only on a wrong shape and every unknown key is
//!    collected: a misspelt `mdoe:` would otherwise be ignored and the default mode used.
//! 3. Every value and cross-reference is checked, each mistake becoming a [`Problem`].
//!
//! Values whose wrong type deserves a better message than serde's (modes, secrets,
//! percentages, durations, scopes) stay [`Value`](serde_yaml::Value)s until pass 3. No message
//! ever contains a secret value: secrets are described by where they come from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use sha2::{Digest, Sha256};

use crate::cron::RotateSchedule;
use crate::provider::{OAuth2Endpoints, ProviderConfig, ProviderKind};
use crate::schedule::RefreshPolicy;
use crate::secret::SecretSource;
use crate::sink::FileConfig;

pub use crate::hooks::{OnRotate, SignalHook};
pub use crate::metrics::MetricsConfig;
pub use crate::settings::{MAX_DURATION, MAX_DURATION_TEXT, Problem};

use check::parse_text;

mod check;
mod defaults;
mod located;
mod raw;
mod text;
mod unknown;

/// Where the config is read from when neither `-c` nor `$TOKENKEEPER_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tokenkeeper/config.yaml";

/// A checked configuration: every value parsed, every cross-reference resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Journal of live tokens (used from the state journal on; created 0700).
    pub state_dir: PathBuf,
    /// Deadline for revoking everything at stop.
    pub shutdown_timeout: Duration,
    /// `log_level:` (a tracing filter such as `info` or `tokenkeeper=debug`); `RUST_LOG` wins.
    pub log_level: Option<String>,
    /// `metrics:`: where the Prometheus exposition goes, if anywhere.
    pub metrics: MetricsConfig,
    /// Providers by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Scope sets in config order.
    pub sets: Vec<SetConfig>,
    /// `stores:`: secrets stores that sets may write to, by name.
    pub stores: BTreeMap<String, StoreConfig>,
    /// `ha:`: several instances sharing one store take turns (see [`crate::store::ha`]).
    pub ha: Option<HaConfig>,
}

impl Config {
    /// Every secret the config names, by its key path (`providers.vf.app_token`).
    pub fn secret_sources(&self) -> impl Iterator<Item = (String, &SecretSource)> {
        let providers = self.providers.iter().flat_map(|(name, p)| {
            let sources = p.kind.secret_sources();
            sources
                .into_iter()
                .map(move |(key, source)| (format!("providers.{name}.{key}"), source))
        });
        let stores = self.stores.iter().flat_map(|(name, s)| {
            let sources = s.auth.secret_sources();
            sources
                .into_iter()
                .map(move |(key, source)| (format!("stores.{name}.{key}"), source))
        });
        providers.chain(stores)
    }
}

/// A secrets store: HashiCorp Vault or OpenBao, KV version 2.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub name: String,
    /// `https://host:8200` (`http://` for loopback only).
    pub address: Url,
    /// The KV v2 mount, e.g. `secret`.
    pub mount: String,
    /// Vault Enterprise / OpenBao namespace, sent as `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// PEM file of the CA that signed the store's certificate, added to the system roots.
    pub ca_file: Option<PathBuf>,
    pub auth: StoreAuth,
    /// Per-request deadline.
    pub timeout: Duration,
    /// Versions KV v2 keeps per token path: the current token and the one it replaced.
    pub max_versions: u32,
    /// Most requests of the sets (reads, writes, removals) in flight to this store at once.
    pub max_concurrent_requests: usize,
}

/// How tokenkeeper logs in to a store.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreAuth {
    /// A token, renewed while it is renewable.
    Token(SecretSource),
    /// AppRole: log in with role_id and secret_id, again before the token's TTL runs out.
    AppRole {
        mount: String,
        role_id: SecretSource,
        secret_id: SecretSource,
    },
}

impl StoreAuth {
    /// Every secret this auth reads, by its key.
    pub fn secret_sources(&self) -> Vec<(&'static str, &SecretSource)> {
        match self {
            StoreAuth::Token(t) => vec![("auth.token", t)],
            StoreAuth::AppRole {
                role_id, secret_id, ..
            } => vec![
                ("auth.approle.role_id", role_id),
                ("auth.approle.secret_id", secret_id),
            ],
        }
    }
}

/// Where a set's token goes in a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetStore {
    /// A key of `stores:`.
    pub name: String,
    /// The secret's path under the mount, e.g. `tokenkeeper/orders-sync`.
    pub path: String,
}

/// High availability: instances with the same config and store elect a leader through a
/// lease record in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct HaConfig {
    /// A key of `stores:`: where the lease lives.
    pub store: String,
    /// The lease record's path under the mount; members heartbeat under `{path}-members/`.
    pub path: String,
    /// How long a lease lasts unless renewed; a standby takes over within about this long.
    pub lease: Duration,
    /// This instance's name in the lease (default: host name and process id).
    pub instance: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SetConfig {
    pub name: String,
    pub provider: String,
    pub scopes: Vec<String>,
    /// `file:`: where the token is written on this machine; a set has a file, a store, or both.
    pub file: Option<FileConfig>,
    pub refresh: RefreshPolicy,
    pub on_shutdown: OnShutdown,
    pub revoke_superseded_after: Duration,
    /// `rotate:`: when to replace the token whatever its age. Boxed: a parsed schedule is
    /// 272 bytes that 10,000 sets without one would each carry.
    pub rotate: Option<Box<RotateSchedule>>,
    /// `on_rotate:`: who to tell after each new token is written; `None` for nobody. Boxed:
    /// the hooks are 96 bytes that the many sets without any would each carry.
    pub on_rotate: Option<Box<OnRotate>>,
    /// Revoke nothing, superseded tokens included. Not a config key: `tokenkeeper once` sets it,
    /// because a job run from cron must leave every token it made for the next run.
    pub never_revoke: bool,
    /// `store:`: a secrets store path the token is also written to. Boxed, like the hooks:
    /// most sets have none.
    pub store: Option<Box<SetStore>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnShutdown {
    Revoke,
    Keep,
}

/// A configuration that passed every check, with what deserves a look but not a refusal.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// Human-readable, one line each, never containing a secret.
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}", path = path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config, or a directory above it, is open to another user, who could rewrite the
    /// commands `on_rotate` runs as the daemon's user.
    #[error(
        "{what} {why}: another user could rewrite the configuration {path}, which chooses the commands on_rotate runs; refusing it (fix the owner and mode)",
        what = what.display(),
        path = path.display()
    )]
    Unsafe {
        path: PathBuf,
        what: PathBuf,
        why: String,
    },
    #[error(
        "{path}: {n} problem(s) in the configuration",
        path = path.display(),
        n = problems.len()
    )]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
        /// Warnings found on the way, so a refused config still shows them.
        warnings: Vec<String>,
    },
}

/// Read, parse, validate, and check every secret the config names. Collects all problems,
/// including those of secrets of providers that are valid while other parts are not.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    load_in(path, None)
}

/// [`load`], checking each systemd credential in `credentials_folder` when run outside the
/// service (see [`SecretSource::check_in`]): what `check` does.
pub fn load_in(path: &Path, credentials_folder: Option<&Path>) -> Result<Loaded, ConfigError> {
    // Read first, so that what is not a file at all is named as such.
    let text = read_text(path)?;
    only_trusted_could_write(path)?;
    let mut parsed = parse_text(&text, path);
    drop(text);
    let (problems, warnings) = crate::settings::check_sources(&parsed.secrets, credentials_folder);
    parsed.problems.extend(problems);
    parsed.warnings.extend(warnings);
    if let Some(config) = &parsed.config {
        let files = config.sets.iter().enumerate().filter_map(|(index, set)| {
            let at = format!("scope_sets[{index}] ({})", set.name);
            Some((at, set.file.as_ref()?))
        });
        let dirs = crate::sink::yaml::check_token_dirs(files, &config.state_dir, path);
        parsed.problems.extend(dirs);
        parsed
            .problems
            .extend(crate::metrics::check_textfile_dir(&config.metrics));
        parsed
            .problems
            .extend(crate::provider::yaml::check_client_keys(&config.providers));
        parsed
            .problems
            .extend(crate::provider::yaml::check_ca_files(&config.providers));
    }
    parsed.finish(path)
}

/// Refuse a config that another user than the daemon's (or root) could have written: the
/// file itself owned by someone else or writable by group or others, or a directory above
/// it, or above the file a symlink leads to, that lets someone else replace it. The state
/// directory's rule ([`crate::trust::open_to_others`], sshd's StrictModes), with root
/// allowed as owner since an operator installs the config. A path that cannot be looked at
/// is left to [`read_text`] to report.
fn only_trusted_could_write(path: &Path) -> Result<(), ConfigError> {
    use crate::trust::{Owners, Writers, open_to_others, swappable_ancestor_through_links};
    let refuse = |what: PathBuf, why: String| ConfigError::Unsafe {
        path: path.to_path_buf(),
        what,
        why,
    };
    if let Some((dir, why)) = swappable_ancestor_through_links(path, Writers::Others) {
        return Err(refuse(dir, why));
    }
    let Ok(real) = std::fs::canonicalize(path) else {
        return Ok(());
    };
    match std::fs::metadata(&real) {
        Ok(meta) => match open_to_others(&meta, Owners::DaemonOrRoot) {
            Some(why) => Err(refuse(real, why)),
            None => Ok(()),
        },
        Err(_) => Ok(()),
    }
}

fn too_large_message() -> String {
    format!(
        "larger than {} MiB, the most a configuration may be (100,000 scope sets take about 13 MB)",
        MAX_CONFIG_BYTES >> 20
    )
}

/// The config file's text: a regular file (a device such as /dev/zero, or a FIFO, would be
/// read forever or block), at most [`MAX_CONFIG_BYTES`], UTF-8.
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    use crate::fsio::SmallTextError as E;
    let fail = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let refuse = |why: String| fail(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
    crate::fsio::read_small_text(path, MAX_CONFIG_BYTES).map_err(|e| match e {
        E::Io(e) => fail(e),
        E::NotAFile => refuse(
            "not a regular file (a device, FIFO, socket or directory); the configuration is read from a file".into(),
        ),
        E::TooLarge => refuse(too_large_message()),
        E::NotUtf8 => fail(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )),
    })
}

/// Parse and validate `text` without reading any secret (for tests and reload). `origin`
/// names the text in [`ConfigError::Invalid`].
pub fn parse(text: &str, origin: &Path) -> Result<Loaded, ConfigError> {
    parse_text(text, origin).finish(origin)
}

/// Check every secret the config names: it exists, is readable, and a file is not group- or
/// world-readable. Returns (problems, warnings).
pub fn check_secrets(config: &Config) -> (Vec<Problem>, Vec<String>) {
    let sources: Vec<(String, SecretSource)> = config
        .secret_sources()
        .map(|(at, source)| (at, source.clone()))
        .collect();
    let (mut problems, warnings) = crate::settings::check_sources(&sources, None);
    problems.extend(crate::provider::yaml::check_client_keys(&config.providers));
    problems.extend(crate::provider::yaml::check_ca_files(&config.providers));
    (problems, warnings)
}

/// The largest configuration file read, in bytes. The benchmark's 100,000 scope sets (the
/// largest the daemon is measured for) take about 13 MB; 16 MiB leaves room for comments
/// and longer names while bounding what a hostile or mistaken file (a log, an image) costs to
/// read and parse: a few hundred MiB of parser state at worst, for a few seconds.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// The deepest nesting of YAML collections accepted, counted before the YAML parser runs
/// (whose cost grows with the square of the depth). A tokenkeeper config nests about six
/// levels (scope_sets, a set, on_rotate, a hook, its list); 64 is ten times that.
pub const MAX_NESTING: usize = 64;

/// What a token is: its provider and scopes. A journaled token is reused only for a set whose
/// hash still matches; a change of file settings does not need a new token.
pub fn config_hash(set: &SetConfig, provider: &ProviderConfig) -> String {
    let mut h = Sha256::new();
    h.update(b"v1\0provider\0");
    h.update(set.provider.as_bytes());
    h.update(b"\0kind\0");
    h.update(provider.kind.kind_name().as_bytes());
    // Whatever changes which server issues the token, for whom, or what it grants.
    let mut field = |name: &str, value: &str| {
        h.update(b"\0");
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(value.as_bytes());
    };
    match &provider.kind {
        ProviderKind::Voucherify { base_url, .. } => field("base_url", base_url.as_str()),
        ProviderKind::OAuth2 {
            endpoints,
            client_id,
            extra_params,
            ..
        } => {
            match endpoints {
                OAuth2Endpoints::Discover { issuer } => field("issuer", issuer.as_str()),
                OAuth2Endpoints::Explicit { token_url, .. } => {
                    field("token_url", token_url.as_str())
                }
            }
            field("client_id", client_id);
            for (k, v) in extra_params {
                field(&format!("param:{k}"), v);
            }
        }
        ProviderKind::Square {
            base_url,
            client_id,
            ..
        } => {
            field("base_url", base_url.as_str());
            field("client_id", client_id);
        }
    }
    let mut scopes: Vec<&str> = set.scopes.iter().map(String::as_str).collect();
    scopes.sort_unstable();
    for s in scopes {
        h.update(b"\0scope\0");
        h.update(s.as_bytes());
    }
    crate::secret::hex(&h.finalize()[..8])
}

#[cfg(test)]
mod tests;
