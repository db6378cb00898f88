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
//! percentages, durations, scopes) stay [`Value`]s until pass 3. No message ever contains a
//! secret value: secrets are described by where they come from.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use serde_yaml::Value;
use sha2::{Digest, Sha256};

use crate::budget::IssueRate;
use crate::cron::RotateSchedule;
use crate::provider::{
    AuthMethod, OAuth2Endpoints, ProviderConfig, ProviderKind, SquareGrant, is_loopback,
};
use crate::schedule::RefreshPolicy;
use crate::secret::{Availability, Secret, SecretSource};
use crate::sink::{FileConfig, FileFormat};

use defaults::{
    AUTH_METHODS, COMMON_PROVIDER_KEYS, DEFAULT_APPROLE_MOUNT, DEFAULT_FILE_MODE, DEFAULT_HA_LEASE,
    DEFAULT_HA_PATH, DEFAULT_HOOK_TIMEOUT, DEFAULT_ISSUE_BURST, DEFAULT_ISSUE_PER_SECOND,
    DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_MAX_LIVE_TOKENS, DEFAULT_MIN_INTERVAL,
    DEFAULT_OAUTH2_LIFETIME, DEFAULT_PROVIDER_TIMEOUT, DEFAULT_REFRESH_AT, DEFAULT_REFRESH_JITTER,
    DEFAULT_REVOKE_SUPERSEDED_AFTER, DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_STATE_DIR,
    DEFAULT_STORE_MAX_VERSIONS, DEFAULT_STORE_TIMEOUT, FORMATS, HOOK_SIGNALS, KERNEL_TREES,
    MIN_HA_LEASE, ON_SHUTDOWN, PROVIDER_KEYS, PROVIDER_KINDS, RESERVED_ID, RESERVED_TOKEN_PARAMS,
    SCOPE_HINT, SECRET_FORMS, SQUARE_ENVIRONMENTS, SQUARE_MODES, STORE_KINDS, VOUCHERIFY_CLUSTERS,
    VOUCHERIFY_DEFAULT_URL,
};
use paths::{check_token_dirs, normalize};
use raw::{
    RawConfig, RawDefaults, RawFile, RawHa, RawMetrics, RawOnRotate, RawProvider, RawRefresh,
    RawSet, RawSetStore, RawStore, RawStoreAuth,
};
use text::{hide_raw_names, key_positions, nesting_exceeds, strip_marks};
use unknown::{Seg, closest, known_keys, segments};

mod defaults;
mod paths;
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

/// Prometheus exposition of each set's state (see [`crate::metrics`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// A `.prom` file for node_exporter's textfile collector, rewritten atomically.
    pub textfile: Option<PathBuf>,
    /// A loopback address to serve `GET /metrics` on.
    pub listen: Option<std::net::SocketAddr>,
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
    /// `on_rotate:`: who to tell after each new token is written.
    pub on_rotate: OnRotate,
    /// Revoke nothing, superseded tokens included. Not a config key: `tokenkeeper once` sets it,
    /// because a job run from cron must leave every token it made for the next run.
    pub never_revoke: bool,
    /// `store:`: a secrets store path the token is also written to.
    pub store: Option<SetStore>,
}

/// What to do after a set's new token is written. Every part is optional; all that are given
/// run, in this order: `exec`, `signal`, `reload_unit`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OnRotate {
    /// A command (argv, no shell) run with TOKENKEEPER_SET, TOKENKEEPER_FILE and
    /// TOKENKEEPER_FINGERPRINT in its environment.
    pub exec: Option<Vec<String>>,
    /// How long a command (`exec` or `systemctl reload`) may run before its process group is
    /// killed.
    pub timeout: Duration,
    /// A signal for the process whose pid a file holds (read afresh each time).
    pub signal: Option<SignalHook>,
    /// A systemd unit to reload (`systemctl reload UNIT`).
    pub reload_unit: Option<String>,
}

impl OnRotate {
    pub fn is_empty(&self) -> bool {
        self.exec.is_none() && self.signal.is_none() && self.reload_unit.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SignalHook {
    pub pidfile: PathBuf,
    pub signal: nix::sys::signal::Signal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnShutdown {
    Revoke,
    Keep,
}

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// A configuration that passed every check, with what deserves a look but not a refusal.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// Human-readable, one line each, never containing a secret.
    pub warnings: Vec<String>,
}

/// One mistake in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based; known for YAML errors and for keys that appear once in the file.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Where in the configuration, e.g. `scope_sets[1] (orders-sync).file.mode`; empty for
    /// the file as a whole.
    pub at: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, "{line}:{column}: ")?,
            (Some(line), None) => write!(f, "{line}: ")?,
            _ => {}
        }
        if !self.at.is_empty() {
            write!(f, "{}: ", self.at)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}", path = path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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
    let text = read_text(path)?;
    let mut parsed = parse_text(&text, path);
    drop(text);
    let (problems, warnings) = check_sources(&parsed.secrets);
    parsed.problems.extend(problems);
    parsed.warnings.extend(warnings);
    if let Some(config) = &parsed.config {
        parsed.problems.extend(check_token_dirs(config, path));
    }
    parsed.finish(path)
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
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let refuse = |why: String| fail(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
    // Non-blocking, so that opening a FIFO nobody writes returns instead of waiting; a
    // regular file reads the same either way.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(fail)?;
    let meta = file.metadata().map_err(fail)?;
    if !meta.is_file() {
        return Err(refuse(
            "not a regular file (a device, FIFO, socket or directory); the configuration is read from a file".into(),
        ));
    }
    let too_large = || refuse(too_large_message());
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // Bounded even if the file grows while it is read.
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(fail)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|_| {
        fail(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
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
    let mut sources = Vec::new();
    for (name, provider) in &config.providers {
        for (key, source) in provider.kind.secret_sources() {
            sources.push((format!("providers.{name}.{key}"), source.clone()));
        }
    }
    for (name, store) in &config.stores {
        for (key, source) in store.auth.secret_sources() {
            sources.push((format!("stores.{name}.{key}"), source.clone()));
        }
    }
    check_sources(&sources)
}

// ---------------------------------------------------------------------------------------------
// Defaults and fixed lists
// ---------------------------------------------------------------------------------------------

/// The longest duration any key accepts. Times are kept as instants and wall-clock times
/// (now + duration); ten years is far beyond any sensible interval, lifetime or timeout, and
/// keeps every sum far inside what `SystemTime`, `Instant` and the journal's RFC 3339 times
/// (up to year 9999) can hold, so no arithmetic on a configured duration can overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// [`MAX_DURATION`] as the messages say it.
pub const MAX_DURATION_TEXT: &str = "3650d (ten years)";

/// The largest configuration file read, in bytes. The benchmark's 100,000 scope sets (the
/// largest the daemon is measured for) take about 13 MB; 16 MiB leaves room for comments
/// and longer names while bounding what a hostile or mistaken file (a log, an image) costs to
/// read and parse: a few hundred MiB of parser state at worst, for a few seconds.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// The deepest nesting of YAML collections accepted, counted before the YAML parser runs
/// (whose cost grows with the square of the depth). A tokenkeeper config nests about six
/// levels (scope_sets, a set, on_rotate, a hook, its list); 64 is ten times that.
pub const MAX_NESTING: usize = 64;

// ---------------------------------------------------------------------------------------------
// Checking
// ---------------------------------------------------------------------------------------------

/// What one pass over the text found. `secrets` holds every well-formed secret source, even
/// when other parts are wrong, so that `load` reports unreadable secrets in the same run.
struct Parsed {
    config: Option<Config>,
    secrets: Vec<(String, SecretSource)>,
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

impl Parsed {
    fn finish(self, origin: &Path) -> Result<Loaded, ConfigError> {
        match self.config {
            Some(config) if self.problems.is_empty() => Ok(Loaded {
                config,
                warnings: self.warnings,
            }),
            _ => Err(ConfigError::Invalid {
                path: origin.to_path_buf(),
                problems: self.problems,
                warnings: self.warnings,
            }),
        }
    }
}

/// A checked value: `Err(())` when it was present but wrong (the problem is already
/// recorded), so that cross-checks built on it stay quiet instead of piling up.
type Checked<T> = Result<Option<T>, ()>;

/// The refresh keys of one mapping (`defaults.refresh` or a set's `refresh`), each checked.
struct RefreshParts {
    at: Checked<f64>,
    jitter: Checked<f64>,
    min_interval: Checked<Duration>,
}

/// Effective defaults; `None` where `defaults:` gave a wrong value (already reported).
struct Defaults {
    at: Option<f64>,
    jitter: Option<f64>,
    min_interval: Duration,
    mode: u32,
    format: FileFormat,
    on_shutdown: OnShutdown,
    revoke_superseded_after: Duration,
}

struct Checker<'t> {
    text: &'t str,
    /// Files a token must never be written over (it would be deleted at stop, too), with
    /// what each one is: the config itself and the metrics textfile. `state_dir` is a
    /// whole directory of them.
    reserved: Vec<(PathBuf, &'static str)>,
    state_dir: PathBuf,
    /// Each set's `name` as written, to label paths: `scope_sets[1] (orders-sync)`.
    set_names: Vec<Option<String>>,
    /// Every secret source that parsed, by its key path.
    secrets: Vec<(String, SecretSource)>,
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

fn parse_text(text: &str, origin: &Path) -> Parsed {
    let mut ck = Checker {
        text,
        // Lexically absolute: `origin` may be relative to where tokenkeeper was started.
        reserved: std::path::absolute(origin)
            .map(|p| vec![(normalize(&p), "the configuration file")])
            .unwrap_or_default(),
        state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        set_names: Vec::new(),
        secrets: Vec::new(),
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    // `load` refuses a larger file before reading it; this holds for any other text.
    if text.len() as u64 > MAX_CONFIG_BYTES {
        ck.problem(String::new(), None, too_large_message());
        return ck.into_parsed(None);
    }
    if let Some(line) = nesting_exceeds(text, MAX_NESTING) {
        ck.problems.push(Problem {
            line: Some(line),
            column: None,
            at: String::new(),
            message: format!(
                "collections are nested deeper than {MAX_NESTING} levels; a tokenkeeper configuration needs a handful"
            ),
        });
        return ck.into_parsed(None);
    }
    let value: Value = match serde_yaml::from_str(text) {
        Ok(value) => value,
        Err(err) => {
            ck.yaml_error(&err);
            return ck.into_parsed(None);
        }
    };
    match &value {
        Value::Mapping(_) => {}
        Value::Null => {
            ck.problem(
                String::new(),
                None,
                "the configuration is empty; it needs at least `providers:` and `scope_sets:`",
            );
            return ck.into_parsed(None);
        }
        other => {
            ck.problem(
                String::new(),
                None,
                format!(
                    "the configuration must be a YAML mapping with keys such as `providers:` and `scope_sets:`, not {}",
                    describe(other)
                ),
            );
            return ck.into_parsed(None);
        }
    }
    ck.set_names = match value.get("scope_sets") {
        Some(Value::Sequence(sets)) => sets
            .iter()
            .map(|set| match set.get("name") {
                Some(Value::String(name)) => Some(name.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    // Each provider's `kind`, for the unknown keys below; the tree goes before the second
    // pass, which holds every event of the document itself.
    let kinds: HashMap<String, Option<String>> = value
        .get("providers")
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(name, p)| {
                    let kind = p.get("kind").and_then(Value::as_str).map(str::to_string);
                    Some((name.as_str()?.to_string(), kind))
                })
                .collect()
        })
        .unwrap_or_default();
    drop(value);

    let mut unknown = Vec::new();
    let raw: Result<RawConfig, _> =
        serde_ignored::deserialize(serde_yaml::Deserializer::from_str(text), |path| {
            unknown.push(segments(&path));
        });
    // Keys under a provider of another kind belong to that kind: its own problem says why it
    // is refused, and listing its keys as unknown would only bury that message.
    unknown.retain(|segs| match segs.as_slice() {
        [Seg::Key(top), Seg::Key(name), _, ..] if top == "providers" => {
            let kind = kinds.get(name.as_str()).and_then(Option::as_deref);
            kind.is_some_and(|k| PROVIDER_KINDS.contains(&k))
        }
        _ => true,
    });
    for segs in &unknown {
        ck.unknown_key(segs);
    }
    let raw = match raw {
        Ok(raw) => raw,
        Err(err) => {
            ck.yaml_error(&err);
            return ck.into_parsed(None);
        }
    };
    ck.check(raw)
}

impl Checker<'_> {
    fn into_parsed(self, config: Option<Config>) -> Parsed {
        Parsed {
            config,
            secrets: self.secrets,
            problems: self.problems,
            warnings: self.warnings,
        }
    }

    /// Record a problem; `locate` is a key whose line is given if it appears once in the text.
    fn problem(&mut self, at: String, locate: Option<&str>, message: impl Into<String>) {
        let (line, column) = match locate.map(|key| key_positions(self.text, key)) {
            Some(found) if found.len() == 1 => (Some(found[0].0), Some(found[0].1)),
            _ => (None, None),
        };
        self.problems.push(Problem {
            line,
            column,
            at,
            message: message.into(),
        });
    }

    /// A problem with the value of `key` in the mapping at `parent`.
    fn bad(&mut self, parent: &str, key: &str, message: impl Into<String>) {
        self.problem(join(parent, key), Some(key), message);
    }

    /// A required `key` missing from the mapping at `parent` (located by the mapping's key).
    fn missing(&mut self, parent: &str, key: &str, what: &str) {
        let locate = parent.rsplit('.').next().filter(|k| !k.contains('['));
        self.problem(
            parent.to_string(),
            locate,
            format!("missing `{key}` ({what})"),
        );
    }

    fn warn(&mut self, at: &str, message: impl fmt::Display) {
        self.warnings.push(if at.is_empty() {
            message.to_string()
        } else {
            format!("{at}: {message}")
        });
    }

    fn set_at(&self, index: usize) -> String {
        match self.set_names.get(index) {
            Some(Some(name)) => format!("scope_sets[{index}] ({name})"),
            _ => format!("scope_sets[{index}]"),
        }
    }

    fn yaml_error(&mut self, err: &serde_yaml::Error) {
        let text = strip_marks(&err.to_string());
        // serde_yaml prefixes a path such as `scope_sets[0].file: `; split it off into `at`.
        let (at, message) = match text.split_once(": ") {
            Some((path, rest))
                if !path.is_empty()
                    && !path.contains(char::is_whitespace)
                    && !path.contains('`') =>
            {
                (self.label_sets(path), rest.to_string())
            }
            _ => (String::new(), text),
        };
        let message = hide_raw_names(&message);
        self.problems.push(Problem {
            line: err.location().map(|l| l.line()),
            column: err.location().map(|l| l.column()),
            at,
            message,
        });
    }

    /// `scope_sets[1].file` → `scope_sets[1] (orders-sync).file`.
    fn label_sets(&self, path: &str) -> String {
        if let Some(rest) = path.strip_prefix("scope_sets[")
            && let Some((index, tail)) = rest.split_once(']')
            && let Ok(index) = index.parse::<usize>()
        {
            return format!("{}{tail}", self.set_at(index));
        }
        path.to_string()
    }

    fn unknown_key(&mut self, segs: &[Seg]) {
        let Some((Seg::Key(key), parent)) = segs.split_last() else {
            return;
        };
        let mut at = String::new();
        let mut i = 0;
        while i < parent.len() {
            match (&parent[i], parent.get(i + 1)) {
                (Seg::Key(k), Some(Seg::Index(n))) if i == 0 && k == "scope_sets" => {
                    at = self.set_at(*n);
                    i += 1;
                }
                (Seg::Key(k), _) => at = join(&at, k),
                (Seg::Index(n), _) => at.push_str(&format!("[{n}]")),
            }
            i += 1;
        }
        let mut message = format!("unknown key `{key}`");
        if let Some(near) = closest(key, known_keys(parent)) {
            message.push_str(&format!(" (did you mean `{near}`?)"));
        }
        self.problem(at, Some(key), message);
    }

    fn check(mut self, raw: RawConfig) -> Parsed {
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
            .positive_duration("", "shutdown_timeout", raw.shutdown_timeout.as_ref(), "")
            .ok()
            .flatten()
            .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
        if let Some(filter) = &raw.log_level
            && let Err(err) = tracing_subscriber::EnvFilter::try_new(filter)
        {
            self.bad(
                "",
                "log_level",
                format!("log_level `{filter}` is not a tracing filter such as `info` or `tokenkeeper=debug`: {err}"),
            );
        }
        let metrics = self.metrics(raw.metrics.as_ref());
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
            let default = RawStore::default();
            if let Some(checked) = self.store(name, store.as_ref().unwrap_or(&default)) {
                stores.insert(name.clone(), checked);
            }
        }
        let ha = raw.ha.as_ref().and_then(|h| self.ha(h, &raw_stores));
        let mut providers = BTreeMap::new();
        for (name, provider) in &raw_providers {
            let default = RawProvider::default();
            if let Some(checked) =
                self.provider(name, provider.as_ref().unwrap_or(&default), &state_dir)
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
            log_level: raw.log_level,
            metrics,
            providers,
            sets,
            stores,
            ha,
        };
        self.into_parsed(Some(config))
    }

    /// RenewToken renews one access token into the next: two sets cannot share that chain
    /// without one revoking or outliving the other's token.
    fn renew_sets_unshared(
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

    fn metrics(&mut self, raw: Option<&RawMetrics>) -> MetricsConfig {
        let mut out = MetricsConfig::default();
        let Some(raw) = raw else {
            return out;
        };
        if let Some(text) = raw.textfile.as_deref() {
            let path = Path::new(text);
            if !path.is_absolute() {
                self.bad(
                    "metrics",
                    "textfile",
                    format!("textfile `{text}` must be an absolute path"),
                );
            } else if path.extension().is_none_or(|e| e != "prom") {
                self.bad(
                    "metrics",
                    "textfile",
                    format!(
                        "textfile `{text}` must end in `.prom`: node_exporter's textfile collector reads no other files"
                    ),
                );
            } else {
                out.textfile = Some(normalize(path));
            }
        }
        if let Some(text) = raw.listen.as_deref() {
            match text.trim().parse::<std::net::SocketAddr>() {
                Ok(addr) if addr.ip().is_loopback() => out.listen = Some(addr),
                Ok(_) => self.bad(
                    "metrics",
                    "listen",
                    format!(
                        "listen `{text}` must be a loopback address such as 127.0.0.1:9464: the listener has no authentication, so a local exporter or agent scrapes it"
                    ),
                ),
                Err(_) => self.bad(
                    "metrics",
                    "listen",
                    format!("listen `{text}` is not an address and port such as 127.0.0.1:9464"),
                ),
            }
        }
        out
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
            Some(mode) => self.mode("defaults.file", mode),
            None => None,
        };
        let format = self.choice(
            "defaults.file",
            "format",
            file.and_then(|f| f.format.as_deref()),
            FORMATS,
        );
        let on_shutdown = self.choice(
            "defaults",
            "on_shutdown",
            raw.on_shutdown.as_deref(),
            ON_SHUTDOWN,
        );
        let revoke_after = self.duration(
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

    fn refresh(&mut self, at: &str, raw: Option<&RawRefresh>) -> RefreshParts {
        let Some(raw) = raw else {
            return RefreshParts {
                at: Ok(None),
                jitter: Ok(None),
                min_interval: Ok(None),
            };
        };
        let mut refresh_at = self.percent(at, "at", raw.at.as_ref());
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
        let mut jitter = self.percent(at, "jitter", raw.jitter.as_ref());
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
        let min_interval = self.positive_duration(
            at,
            "min_interval",
            raw.min_interval.as_ref(),
            ": 0 would allow a tight issuing loop",
        );
        RefreshParts {
            at: refresh_at,
            jitter,
            min_interval,
        }
    }

    fn jitter_below_at(&mut self, parent: &str, key: &str, at: f64, jitter: f64) {
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

    fn provider(
        &mut self,
        name: &str,
        raw: &RawProvider,
        state_dir: &Path,
    ) -> Option<ProviderConfig> {
        let at = format!("providers.{name}");
        let timeout = self.positive_duration(&at, "timeout", raw.timeout.as_ref(), "");
        let max_live_tokens =
            self.positive_integer(&at, "max_live_tokens", raw.max_live_tokens.as_ref());
        let per_second = self.rate(&at, "issue_rate", raw.issue_rate.as_ref());
        let burst = self.positive_integer(&at, "issue_burst", raw.issue_burst.as_ref());
        let concurrency = self.positive_integer(
            &at,
            "max_concurrent_requests",
            raw.max_concurrent_requests.as_ref(),
        );
        let kind = match raw.kind.as_deref() {
            Some(kind) if PROVIDER_KINDS.contains(&kind) => kind,
            Some(kind) => {
                self.bad(
                    &at,
                    "kind",
                    format!(
                        "unknown provider kind `{kind}`; this version supports {}",
                        PROVIDER_KINDS
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                return None;
            }
            None => {
                self.missing(&at, "kind", "`voucherify`, `oauth2` or `square`");
                return None;
            }
        };
        self.misplaced_keys(&at, kind, raw);
        let checked = match kind {
            "oauth2" => self.oauth2(&at, raw),
            "square" => self.square(&at, name, raw, state_dir),
            _ => self.voucherify(&at, raw),
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

    /// Keys that belong to another provider kind: serde knows them all, so only this check
    /// stops `cluster:` under `kind: oauth2` from being ignored.
    fn misplaced_keys(&mut self, at: &str, kind: &str, raw: &RawProvider) {
        let own: &[&str] = PROVIDER_KEYS
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(&[], |(_, keys)| keys);
        let present = [
            ("base_url", raw.base_url.is_some()),
            ("cluster", raw.cluster.is_some()),
            ("app_id", raw.app_id.is_some()),
            ("app_token", raw.app_token.is_some()),
            ("issuer", raw.issuer.is_some()),
            ("token_url", raw.token_url.is_some()),
            ("revocation_url", raw.revocation_url.is_some()),
            ("introspection_url", raw.introspection_url.is_some()),
            ("client_id", raw.client_id.is_some()),
            ("client_secret", raw.client_secret.is_some()),
            ("auth_method", raw.auth_method.is_some()),
            ("extra_params", raw.extra_params.is_some()),
            ("default_lifetime", raw.default_lifetime.is_some()),
            ("environment", raw.environment.is_some()),
            ("refresh_token", raw.refresh_token.is_some()),
            ("access_token", raw.access_token.is_some()),
            ("mode", raw.mode.is_some()),
        ];
        for (key, is_present) in present {
            if is_present && !own.contains(&key) && !COMMON_PROVIDER_KEYS.contains(&key) {
                let owners: Vec<&str> = PROVIDER_KEYS
                    .iter()
                    .filter(|(_, keys)| keys.contains(&key))
                    .map(|(k, _)| *k)
                    .collect();
                self.bad(
                    at,
                    key,
                    format!(
                        "`{key}` does not apply to kind `{kind}` (it belongs to {})",
                        owners.join(", ")
                    ),
                );
            }
        }
    }

    fn voucherify(&mut self, at: &str, raw: &RawProvider) -> Option<ProviderKind> {
        let base_url = match (raw.base_url.as_deref(), raw.cluster.as_deref()) {
            (Some(_), Some(_)) => {
                self.bad(at, "cluster", "give base_url or cluster, not both");
                None
            }
            (Some(url), None) => self.base_url(at, url),
            (None, Some(cluster)) => {
                match self.choice(at, "cluster", Some(cluster), VOUCHERIFY_CLUSTERS) {
                    Ok(Some(url)) => Url::parse(url).ok(),
                    _ => None,
                }
            }
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

    fn oauth2(&mut self, at: &str, raw: &RawProvider) -> Option<ProviderKind> {
        let explicit = raw.token_url.is_some()
            || raw.revocation_url.is_some()
            || raw.introspection_url.is_some();
        let endpoints = match (raw.issuer.as_deref(), raw.token_url.as_deref()) {
            (Some(issuer), None) if !explicit => self
                .url(at, "issuer", issuer, false)
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
                let token_url = self.url(at, "token_url", token, false);
                let optional = |ck: &mut Self, key: &str, value: Option<&str>| match value {
                    None => Ok(None),
                    Some(u) => ck.url(at, key, u, false).map(Some).ok_or(()),
                };
                let revocation_url =
                    optional(self, "revocation_url", raw.revocation_url.as_deref());
                let introspection_url =
                    optional(self, "introspection_url", raw.introspection_url.as_deref());
                match (token_url, revocation_url, introspection_url) {
                    (Some(token_url), Ok(revocation_url), Ok(introspection_url)) => {
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
        let client_secret = self.secret(
            at,
            "client_secret",
            raw.client_secret.as_ref(),
            "the OAuth client secret",
        );
        let auth_method = self
            .choice(at, "auth_method", raw.auth_method.as_deref(), AUTH_METHODS)
            .ok()?
            .unwrap_or(AuthMethod::ClientSecretBasic);
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
                            _ => "client credentials go in client_id and client_secret",
                        }
                    ),
                );
                extra_ok = false;
            } else {
                extra_params.insert(key.clone(), value);
            }
        }
        let default_lifetime =
            self.positive_duration(at, "default_lifetime", raw.default_lifetime.as_ref(), "");
        Some(ProviderKind::OAuth2 {
            endpoints: endpoints?,
            client_id: client_id?,
            client_secret: client_secret?,
            auth_method,
            extra_params: extra_ok.then_some(extra_params)?,
            default_lifetime: default_lifetime.ok()?.unwrap_or(DEFAULT_OAUTH2_LIFETIME),
        })
    }

    fn square(
        &mut self,
        at: &str,
        name: &str,
        raw: &RawProvider,
        state_dir: &Path,
    ) -> Option<ProviderKind> {
        let base_url = match (raw.base_url.as_deref(), raw.environment.as_deref()) {
            (Some(_), Some(_)) => {
                self.bad(at, "environment", "give base_url or environment, not both");
                None
            }
            (Some(url), None) => self.base_url(at, url),
            (None, environment) => {
                match self.choice(at, "environment", environment, SQUARE_ENVIRONMENTS) {
                    Ok(Some(url)) => Url::parse(url).ok(),
                    Ok(None) => Url::parse(SQUARE_ENVIRONMENTS[0].1).ok(),
                    Err(()) => None,
                }
            }
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
        let renew = self.choice(at, "mode", raw.mode.as_deref(), SQUARE_MODES);
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

    /// `client_id`: an identifier, not a secret, so a plain string.
    fn client_id(&mut self, parent: &str, value: Option<&Value>) -> Option<String> {
        match value {
            None => {
                self.missing(parent, "client_id", "the OAuth client (application) id");
                None
            }
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::String(_)) => {
                self.bad(parent, "client_id", "client_id is empty");
                None
            }
            Some(other) => {
                self.bad(
                    parent,
                    "client_id",
                    format!(
                        "client_id must be a string (it is not a secret), not {}",
                        describe(other)
                    ),
                );
                None
            }
        }
    }

    fn base_url(&mut self, parent: &str, text: &str) -> Option<Url> {
        self.url(parent, "base_url", text, true)
    }

    /// An endpoint URL: https (http only for loopback), no credentials, query or fragment.
    /// `strip_slash`: the URL is a base that request paths are appended to.
    fn url(&mut self, parent: &str, key: &str, text: &str, strip_slash: bool) -> Option<Url> {
        let mut url = match Url::parse(text.trim()) {
            Ok(url) => url,
            // The URL itself is not repeated: it might carry a password.
            Err(err) => {
                self.bad(
                    parent,
                    key,
                    format!("{key} is not a valid URL ({err}); write it as https://HOST"),
                );
                return None;
            }
        };
        let before = self.problems.len();
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&url) => {}
            "http" => self.bad(
                parent,
                key,
                "http:// is allowed only for loopback hosts (127.0.0.0/8, ::1, localhost); use https://",
            ),
            other => self.bad(parent, key, format!("{key} must use https://, not {other}:")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            self.bad(
                parent,
                key,
                format!("{key} must not contain a user name or password; credentials have keys of their own"),
            );
        }
        if url.query().is_some() {
            self.bad(parent, key, format!("{key} must not have a query (`?...`)"));
        }
        if url.fragment().is_some() {
            self.bad(
                parent,
                key,
                format!("{key} must not have a fragment (`#...`)"),
            );
        }
        if self.problems.len() > before {
            return None;
        }
        if strip_slash {
            // Request paths are appended to the base path; a trailing slash would double them.
            let path = url.path().trim_end_matches('/').to_string();
            url.set_path(&path);
        }
        Some(url)
    }

    fn secret(
        &mut self,
        parent: &str,
        key: &str,
        value: Option<&Value>,
        what: &str,
    ) -> Option<SecretSource> {
        let source = self.secret_source(parent, key, value, what)?;
        self.secrets.push((join(parent, key), source.clone()));
        Some(source)
    }

    fn secret_source(
        &mut self,
        parent: &str,
        key: &str,
        value: Option<&Value>,
        what: &str,
    ) -> Option<SecretSource> {
        let at = join(parent, key);
        let Some(value) = value else {
            self.missing(parent, key, &format!("{what}: {SECRET_FORMS}"));
            return None;
        };
        match value {
            Value::String(text) if text.is_empty() => {
                self.bad(parent, key, format!("{key} is empty"));
                None
            }
            Value::String(text) => {
                self.warn(
                    "",
                    format!("{at} is written in the config; prefer {{ credential: NAME }}, {{ file: PATH }} or {{ env: NAME }}"),
                );
                Some(SecretSource::Plain(Secret::new(text.as_str())))
            }
            Value::Mapping(map) => {
                let mut found = Vec::new();
                for (k, v) in map {
                    let Some(k) = k.as_str() else {
                        self.bad(
                            parent,
                            key,
                            format!(
                                "{key} has a key that is not a string; use one of {SECRET_FORMS}"
                            ),
                        );
                        continue;
                    };
                    if !["env", "file", "credential"].contains(&k) {
                        self.bad(
                            parent,
                            key,
                            format!("unknown key `{k}` in {key}; use one of {SECRET_FORMS}"),
                        );
                        continue;
                    }
                    found.push((k, v));
                }
                let [(source, v)] = found.as_slice() else {
                    let names: Vec<String> = found.iter().map(|(k, _)| format!("`{k}`")).collect();
                    let msg = if names.is_empty() {
                        format!("{key} must be one of {SECRET_FORMS}")
                    } else {
                        format!(
                            "{key} gives {}; give exactly one of env, file, credential",
                            names.join(" and ")
                        )
                    };
                    self.bad(parent, key, msg);
                    return None;
                };
                let Some(name) = v.as_str().filter(|s| !s.is_empty()) else {
                    self.bad(
                        parent,
                        key,
                        format!(
                            "{key}.{source} must be a non-empty string, not {}",
                            describe(v)
                        ),
                    );
                    return None;
                };
                match *source {
                    "env" if name.contains(['=', '\0']) => {
                        self.bad(
                            parent,
                            key,
                            format!("{key}.env `{name}` is not an environment variable name"),
                        );
                        None
                    }
                    "env" => Some(SecretSource::Env(name.to_string())),
                    "file" if !Path::new(name).is_absolute() => {
                        self.bad(
                            parent,
                            key,
                            format!("{key}.file `{name}` must be an absolute path"),
                        );
                        None
                    }
                    "file" => Some(SecretSource::File(PathBuf::from(name))),
                    _ if name.contains('/') || name == "." || name == ".." => {
                        self.bad(
                            parent,
                            key,
                            format!("{key}.credential `{name}` must be a bare credential name (as in LoadCredential=NAME:...), not a path"),
                        );
                        None
                    }
                    _ => Some(SecretSource::Credential(name.to_string())),
                }
            }
            other => {
                self.bad(
                    parent,
                    key,
                    format!("{key} must be {SECRET_FORMS}, not {}", describe(other)),
                );
                None
            }
        }
    }

    fn set(
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
        let kind = raw_provider.and_then(|p| p.kind.as_deref());
        let scopes = self.scopes(&at, raw.scopes.as_ref(), kind);
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
            Some(file) => self.file(&format!("{at}.file"), file, defaults).map(Some),
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
        let on_shutdown = self.choice(&at, "on_shutdown", raw.on_shutdown.as_deref(), ON_SHUTDOWN);
        // Square's RevokeToken can end the seller's whole authorization: a square set revokes
        // only when it says so itself, never because of `defaults.on_shutdown`.
        let default_on_shutdown = if kind == Some("square") {
            OnShutdown::Keep
        } else {
            defaults.on_shutdown
        };
        if kind == Some("square")
            && on_shutdown == Ok(Some(OnShutdown::Revoke))
            && raw_provider.is_some_and(|p| p.client_secret.is_none())
        {
            self.bad(
                &at,
                "on_shutdown",
                "on_shutdown: revoke needs the provider's client_secret: Square's RevokeToken authenticates with it (PKCE applications have none, so their tokens can only expire)",
            );
        }
        let revoke_after = self.duration(
            &at,
            "revoke_superseded_after",
            raw.revoke_superseded_after.as_ref(),
        );
        let rotate = self.rotate(&at, raw.rotate.as_ref());
        let on_rotate = match &raw.on_rotate {
            None => Ok(OnRotate::default()),
            Some(hooks) => self.on_rotate(&format!("{at}.on_rotate"), hooks),
        };
        let store = match &raw.store {
            None => Ok(None),
            Some(s) => self
                .set_store(&format!("{at}.store"), s, stores)
                .map(Some)
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

    fn set_store(
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
        let path = match raw.path.as_deref() {
            None => {
                self.missing(
                    at,
                    "path",
                    "the secret's path under the mount, e.g. tokenkeeper/NAME",
                );
                None
            }
            Some(p) if !valid_store_path(p) => {
                self.bad(
                    at,
                    "path",
                    format!("path `{p}` must be relative segments of letters, digits, `_`, `-` and `.` separated by `/`"),
                );
                None
            }
            Some(p) => Some(p.to_string()),
        };
        Some(SetStore {
            name: name?,
            path: path?,
        })
    }

    fn store(&mut self, name: &str, raw: &RawStore) -> Option<StoreConfig> {
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
        let address = match raw.address.as_deref() {
            None => {
                self.missing(
                    &at,
                    "address",
                    "the store's URL, e.g. https://bao.internal:8200",
                );
                None
            }
            Some(a) => self.url(&at, "address", a, true),
        };
        let mount = match raw.mount.as_deref() {
            None => Some("secret".to_string()),
            Some(m) if !valid_store_path(m) => {
                self.bad(&at, "mount", format!("mount `{m}` is not a KV mount path"));
                None
            }
            Some(m) => Some(m.to_string()),
        };
        let ca_file = match raw.ca_file.as_deref() {
            Some(f) if !Path::new(f).is_absolute() => {
                self.bad(
                    &at,
                    "ca_file",
                    format!("ca_file `{f}` must be an absolute path"),
                );
                None
            }
            other => Some(other.map(PathBuf::from)),
        };
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
            .positive_duration(&at, "timeout", raw.timeout.as_ref(), "")
            .ok()?
            .unwrap_or(DEFAULT_STORE_TIMEOUT);
        let max_versions = self
            .positive_integer(&at, "max_versions", raw.max_versions.as_ref())
            .ok()?
            .unwrap_or(DEFAULT_STORE_MAX_VERSIONS);
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
        })
    }

    fn ha(&mut self, raw: &RawHa, stores: &BTreeMap<String, Option<RawStore>>) -> Option<HaConfig> {
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
        let path = match raw.path.as_deref() {
            Some(p) if !valid_store_path(p) => {
                self.bad("ha", "path", format!("path `{p}` is not a store path"));
                None
            }
            other => Some(other.unwrap_or(DEFAULT_HA_PATH).to_string()),
        };
        let lease = self
            .positive_duration("ha", "lease", raw.lease.as_ref(), "")
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

    fn rotate(&mut self, parent: &str, value: Option<&Value>) -> Checked<RotateSchedule> {
        match value {
            None => Ok(None),
            Some(Value::String(text)) => match RotateSchedule::parse(text) {
                Ok(s) => Ok(Some(s)),
                Err(e) => {
                    self.bad(
                        parent,
                        "rotate",
                        format!("rotate {}", crate::error_chain(&e)),
                    );
                    Err(())
                }
            },
            Some(other) => {
                self.bad(
                    parent,
                    "rotate",
                    format!(
                        "rotate must be a quoted cron expression with seconds such as \"0 55 1 * * *\", not {}",
                        describe(other)
                    ),
                );
                Err(())
            }
        }
    }

    fn on_rotate(&mut self, at: &str, raw: &RawOnRotate) -> Result<OnRotate, ()> {
        let mut ok = true;
        let exec = match &raw.exec {
            None => None,
            Some(Value::Sequence(items)) if !items.is_empty() => {
                let argv: Vec<String> = items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect();
                if argv.len() != items.len() || argv[0].is_empty() {
                    self.bad(at, "exec", "exec must list the command and its arguments as strings, e.g. [\"/usr/bin/app-reload\", \"--soft\"]");
                    ok = false;
                }
                Some(argv)
            }
            Some(_) => {
                self.bad(at, "exec", "exec must be a non-empty list: the command and its arguments (no shell), e.g. [\"/usr/bin/app-reload\"]");
                ok = false;
                None
            }
        };
        let timeout = self
            .positive_duration(
                at,
                "timeout",
                raw.timeout.as_ref(),
                ": a command needs time to run",
            )
            .map(|t| t.unwrap_or(DEFAULT_HOOK_TIMEOUT));
        let signal = match &raw.signal {
            None => None,
            Some(sig) => {
                let sig_at = join(at, "signal");
                let pidfile = match sig.pidfile.as_deref() {
                    None => {
                        self.missing(&sig_at, "pidfile", "the file holding the pid to signal");
                        None
                    }
                    Some(p) if !Path::new(p).is_absolute() => {
                        self.bad(
                            &sig_at,
                            "pidfile",
                            format!("pidfile `{p}` must be an absolute path"),
                        );
                        None
                    }
                    Some(p) => Some(normalize(Path::new(p))),
                };
                let name = sig
                    .signal
                    .as_deref()
                    .unwrap_or("SIGHUP")
                    .trim()
                    .to_ascii_uppercase();
                let full = if name.starts_with("SIG") {
                    name
                } else {
                    format!("SIG{name}")
                };
                let signal = match HOOK_SIGNALS.iter().find(|(n, _)| *n == full) {
                    Some((_, s)) => Some(*s),
                    None => {
                        let names: Vec<&str> = HOOK_SIGNALS.iter().map(|(n, _)| *n).collect();
                        self.bad(
                            &sig_at,
                            "signal",
                            format!("signal `{full}` must be one of {}", names.join(", ")),
                        );
                        None
                    }
                };
                match (pidfile, signal) {
                    (Some(pidfile), Some(signal)) => Some(SignalHook { pidfile, signal }),
                    _ => {
                        ok = false;
                        None
                    }
                }
            }
        };
        let reload_unit = match &raw.reload_unit {
            None => None,
            Some(Value::String(u))
                if !u.is_empty() && !u.starts_with('-') && !u.contains(char::is_whitespace) =>
            {
                Some(u.clone())
            }
            Some(_) => {
                self.bad(
                    at,
                    "reload_unit",
                    "reload_unit must be one systemd unit name such as \"app.service\"",
                );
                ok = false;
                None
            }
        };
        match (ok, timeout) {
            (true, Ok(timeout)) => Ok(OnRotate {
                exec,
                timeout,
                signal,
                reload_unit,
            }),
            _ => Err(()),
        }
    }

    fn scopes(
        &mut self,
        parent: &str,
        value: Option<&Value>,
        kind: Option<&str>,
    ) -> Option<Vec<String>> {
        let Some(value) = value else {
            self.missing(parent, "scopes", "a list such as [orders, customers]");
            return None;
        };
        let items = match value {
            Value::Sequence(items) => items,
            Value::String(text) => {
                let hint = if text.contains([',', ' ']) {
                    format!("; {SCOPE_HINT}")
                } else {
                    String::new()
                };
                self.bad(
                    parent,
                    "scopes",
                    format!(
                        "scopes must be a list such as [orders, customers], not a string{hint}"
                    ),
                );
                return None;
            }
            other => {
                self.bad(
                    parent,
                    "scopes",
                    format!(
                        "scopes must be a list such as [orders, customers], not {}",
                        describe(other)
                    ),
                );
                return None;
            }
        };
        if items.is_empty() {
            self.bad(
                parent,
                "scopes",
                "scopes is empty; a token needs at least one scope",
            );
            return None;
        }
        let before = self.problems.len();
        let mut scopes: Vec<String> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("{parent}.scopes[{i}]");
            let scope = match item {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => {
                    self.problem(
                        at,
                        Some("scopes"),
                        format!("a scope must be a string, not {}", describe(other)),
                    );
                    continue;
                }
            };
            if scope.is_empty() {
                self.problem(at, Some("scopes"), "scope is empty");
            } else if kind == Some("oauth2") && !scope.bytes().all(is_scope_char) {
                // RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
                self.problem(
                    at,
                    Some("scopes"),
                    format!(
                        "scope `{}` has a character RFC 6749 does not allow in a scope (whitespace, `\"` or `\\`); {SCOPE_HINT}",
                        scope.escape_debug()
                    ),
                );
            } else if kind != Some("oauth2") && scope.contains(',') {
                self.problem(
                    at,
                    Some("scopes"),
                    format!("scope `{scope}` contains a comma; {SCOPE_HINT}"),
                );
            } else if scope.contains(char::is_whitespace) {
                self.problem(
                    at,
                    Some("scopes"),
                    format!("scope `{scope}` contains whitespace; {SCOPE_HINT}"),
                );
            } else if scopes.contains(&scope) {
                self.warn(
                    &format!("{parent}.scopes"),
                    format_args!("scope `{scope}` is listed twice"),
                );
            } else if kind == Some("square")
                && !scope
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                self.problem(
                    at,
                    Some("scopes"),
                    format!(
                        "scope `{scope}` is not a Square permission name; they are upper case, such as `{}`",
                        scope.to_ascii_uppercase()
                    ),
                );
            } else {
                let documented = match kind {
                    Some("voucherify") => Some(("Voucherify", crate::provider::voucherify::SCOPES)),
                    Some("square") => Some(("Square", crate::provider::square::SCOPES)),
                    _ => None,
                };
                if let Some((vendor, list)) = documented
                    && !list.contains(&scope.as_str())
                {
                    self.warn(
                        &format!("{parent}.scopes"),
                        format_args!("scope `{scope}` is not in {vendor}'s documented list; the API may refuse it"),
                    );
                }
                scopes.push(scope);
            }
        }
        (self.problems.len() == before).then_some(scopes)
    }

    fn file(&mut self, at: &str, raw: &RawFile, defaults: &Defaults) -> Option<FileConfig> {
        let path = match raw.path.as_deref() {
            None => {
                self.missing(
                    at,
                    "path",
                    "an absolute path such as /run/tokenkeeper/NAME.token",
                );
                None
            }
            Some(path) if !Path::new(path).is_absolute() => {
                self.bad(
                    at,
                    "path",
                    format!("path `{path}` must be an absolute path"),
                );
                None
            }
            Some(path) if path.ends_with('/') || Path::new(path).file_name().is_none() => {
                self.bad(
                    at,
                    "path",
                    format!("path `{path}` must name a file, not a directory"),
                );
                None
            }
            Some(path) => {
                let normal = normalize(Path::new(path));
                self.token_path_is_safe(at, path, &normal).then_some(normal)
            }
        };
        let format = self.choice(at, "format", raw.format.as_deref(), FORMATS);
        let mode = match &raw.mode {
            Some(mode) => self.mode(at, mode),
            None => Some(defaults.mode),
        };
        let owner = self.id(at, "owner", raw.owner.as_ref());
        let group = self.id(at, "group", raw.group.as_ref());
        Some(FileConfig {
            path: path?,
            format: format.ok()?.unwrap_or(defaults.format),
            mode: mode?,
            owner: owner.ok()?,
            group: group.ok()?,
        })
    }

    /// Refuse a token path that names something else than a file of its own: a token is
    /// written over it, and at stop the file is deleted. `path` is as written, `normal` as
    /// [`normalize`] made it.
    fn token_path_is_safe(&mut self, at: &str, path: &str, normal: &Path) -> bool {
        let before = self.problems.len();
        if path.chars().any(char::is_control) {
            self.bad(
                at,
                "path",
                format!(
                    "path \"{}\" contains a control character (a newline or NUL, say): no log line or tool could name that file unambiguously",
                    path.escape_debug()
                ),
            );
            return false;
        }
        if normal.components().any(|c| c == Component::ParentDir) {
            self.bad(
                at,
                "path",
                format!(
                    "path `{path}` contains `..`: one file spelled two ways escapes the check that no two sets share a file; write it without `..`"
                ),
            );
        }
        for kernel in KERNEL_TREES {
            if normal.starts_with(kernel) {
                self.bad(
                    at,
                    "path",
                    format!(
                        "path `{path}` is under {kernel}, the kernel's own files, not a place for a token file"
                    ),
                );
            }
        }
        if normal.starts_with(&self.state_dir) {
            let msg = format!(
                "path `{path}` is inside state_dir {}, which holds the journal, the lock and the status file: token files go elsewhere",
                self.state_dir.display()
            );
            self.bad(at, "path", msg);
        }
        let clashes: Vec<&'static str> = self
            .reserved
            .iter()
            .filter(|(p, _)| p == normal)
            .map(|(_, what)| *what)
            .collect();
        for what in clashes {
            self.bad(
                at,
                "path",
                format!("path `{path}` is {what}: a token would be written over it, and the file deleted at stop"),
            );
        }
        self.problems.len() == before
    }

    fn mode(&mut self, parent: &str, value: &Value) -> Option<u32> {
        let text = match value {
            Value::String(text) => text.trim(),
            Value::Number(n) => {
                self.bad(
                    parent,
                    "mode",
                    format!("mode must be a quoted octal string such as \"0640\" (YAML reads an unquoted mode as a number; this one as {n})"),
                );
                return None;
            }
            other => {
                self.bad(
                    parent,
                    "mode",
                    format!(
                        "mode must be a quoted octal string such as \"0640\", not {}",
                        describe(other)
                    ),
                );
                return None;
            }
        };
        let octal =
            (3..=4).contains(&text.len()) && text.bytes().all(|b| (b'0'..=b'7').contains(&b));
        let Some(mode) = u32::from_str_radix(text, 8).ok().filter(|_| octal) else {
            self.bad(
                parent,
                "mode",
                format!("mode `{text}` must be 3 or 4 octal digits, such as \"0640\""),
            );
            return None;
        };
        if mode > 0o777 {
            self.bad(
                parent,
                "mode",
                format!("mode {mode:04o} is larger than 0777; setuid, setgid and sticky bits have no place on a token file"),
            );
            return None;
        }
        if mode & 0o007 != 0 {
            self.warn(
                &join(parent, "mode"),
                format_args!("mode {mode:04o} gives every local user access to the token"),
            );
        }
        Some(mode)
    }

    /// `owner`/`group`: a name (looked up now, so a typo is found by `check`) or a numeric id.
    fn id(&mut self, parent: &str, key: &str, value: Option<&Value>) -> Checked<u32> {
        let Some(value) = value else {
            return Ok(None);
        };
        let what = if key == "owner" { "user" } else { "group" };
        let id = match value {
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().ok()
            }
            Value::String(name) if !name.is_empty() => {
                let found = if key == "owner" {
                    nix::unistd::User::from_name(name).map(|u| u.map(|u| u.uid.as_raw()))
                } else {
                    nix::unistd::Group::from_name(name).map(|g| g.map(|g| g.gid.as_raw()))
                };
                return match found {
                    Ok(Some(id)) => Ok(Some(id)),
                    Ok(None) => {
                        self.bad(parent, key, format!("unknown {what} `{name}`"));
                        Err(())
                    }
                    Err(err) => {
                        self.bad(
                            parent,
                            key,
                            format!("cannot look up {what} `{name}`: {err}"),
                        );
                        Err(())
                    }
                };
            }
            _ => None,
        };
        match id {
            Some(id) if id != RESERVED_ID => Ok(Some(id)),
            _ => {
                self.bad(
                    parent,
                    key,
                    format!("{key} must be a {what} name or a numeric id below {RESERVED_ID}"),
                );
                Err(())
            }
        }
    }

    fn choice<T: Copy>(
        &mut self,
        parent: &str,
        key: &str,
        value: Option<&str>,
        options: &[(&str, T)],
    ) -> Checked<T> {
        let Some(value) = value else {
            return Ok(None);
        };
        if let Some((_, choice)) = options.iter().find(|(name, _)| *name == value) {
            return Ok(Some(*choice));
        }
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        self.bad(
            parent,
            key,
            format!("{key} `{value}` must be one of {}", names.join(", ")),
        );
        Err(())
    }

    fn duration(&mut self, parent: &str, key: &str, value: Option<&Value>) -> Checked<Duration> {
        match value {
            None => Ok(None),
            Some(Value::String(text)) => match humantime::parse_duration(text.trim()) {
                Ok(duration) if duration > MAX_DURATION => {
                    self.bad(
                        parent,
                        key,
                        format!("{key} `{text}` must be at most {MAX_DURATION_TEXT}"),
                    );
                    Err(())
                }
                Ok(duration) => Ok(Some(duration)),
                Err(err) => {
                    self.bad(
                        parent,
                        key,
                        format!(
                            "{key} `{text}` is not a duration such as \"20s\" or \"15m\": {err}"
                        ),
                    );
                    Err(())
                }
            },
            Some(Value::Number(n)) => {
                self.bad(
                    parent,
                    key,
                    format!(
                        "{key} must be a duration with a unit, such as \"{n}s\", not a bare number"
                    ),
                );
                Err(())
            }
            Some(other) => {
                self.bad(
                    parent,
                    key,
                    format!(
                        "{key} must be a duration such as \"20s\", not {}",
                        describe(other)
                    ),
                );
                Err(())
            }
        }
    }

    fn positive_duration(
        &mut self,
        parent: &str,
        key: &str,
        value: Option<&Value>,
        why: &str,
    ) -> Checked<Duration> {
        match self.duration(parent, key, value) {
            Ok(Some(duration)) if duration.is_zero() => {
                self.bad(parent, key, format!("{key} must be more than 0s{why}"));
                Err(())
            }
            other => other,
        }
    }

    fn positive_integer(&mut self, parent: &str, key: &str, value: Option<&Value>) -> Checked<u64> {
        match value {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => Ok(n.as_u64()),
            Some(other) => {
                self.bad(
                    parent,
                    key,
                    format!(
                        "{key} must be a whole number above 0, not {}",
                        describe(other)
                    ),
                );
                Err(())
            }
        }
    }

    /// `N/s`, `N/m` or `N/h` as tokens per second.
    fn rate(&mut self, parent: &str, key: &str, value: Option<&Value>) -> Checked<f64> {
        let Some(value) = value else {
            return Ok(None);
        };
        let parsed = value.as_str().and_then(|text| {
            let (n, unit) = text.trim().split_once('/')?;
            let n: f64 = n
                .trim()
                .parse()
                .ok()
                .filter(|n: &f64| n.is_finite() && *n > 0.0)?;
            let per = match unit.trim() {
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return None,
            };
            Some(n / per)
        });
        match parsed {
            Some(rate) => Ok(Some(rate)),
            None => {
                self.bad(
                    parent,
                    key,
                    format!("{key} must be a rate such as \"10/s\", \"120/m\" or \"1000/h\""),
                );
                Err(())
            }
        }
    }

    fn percent(&mut self, parent: &str, key: &str, value: Option<&Value>) -> Checked<f64> {
        let value = match value {
            None => return Ok(None),
            Some(Value::String(text)) => text.trim(),
            Some(Value::Number(n)) => {
                let n = n.as_f64().unwrap_or(0.0);
                let example = if (0.0..=1.0).contains(&n) {
                    n * 100.0
                } else {
                    n
                };
                self.bad(
                    parent,
                    key,
                    format!(
                        "{key} is a bare number; write it as a percentage, e.g. \"{}\"",
                        pct(example / 100.0)
                    ),
                );
                return Err(());
            }
            Some(other) => {
                self.bad(
                    parent,
                    key,
                    format!(
                        "{key} must be a percentage such as \"66%\", not {}",
                        describe(other)
                    ),
                );
                return Err(());
            }
        };
        match value
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
        {
            Some(n) if n.is_finite() && n >= 0.0 => Ok(Some(n / 100.0)),
            _ => {
                self.bad(
                    parent,
                    key,
                    format!("{key} `{value}` must be a percentage such as \"66%\" or \"12.5%\""),
                );
                Err(())
            }
        }
    }
}

fn check_sources(sources: &[(String, SecretSource)]) -> (Vec<Problem>, Vec<String>) {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    for (at, source) in sources {
        match source.check() {
            Ok(Availability::Ok) => {}
            Ok(Availability::Unknowable(why)) => warnings.push(format!("{at}: {why}")),
            // SecretError never carries the value; its sources are io errors about paths.
            Err(err) => {
                problems.push(Problem {
                    line: None,
                    column: None,
                    at: at.clone(),
                    message: crate::error_chain(&err),
                });
            }
        }
    }
    (problems, warnings)
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A checked value from a set or the mapping it overrides; `None` if either was wrong.
fn effective(own: Checked<f64>, fallback: Option<f64>) -> Option<f64> {
    match own {
        Ok(Some(value)) => Some(value),
        Ok(None) => fallback,
        Err(()) => None,
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `0.125` → `12.5%`, without float noise such as `66.00000000000001%`.
fn pct(fraction: f64) -> String {
    let text = format!("{:.3}", fraction * 100.0);
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// RFC 6749 section 3.3 `scope-token` characters: printable ASCII except space, `"`, `\`.
fn is_scope_char(b: u8) -> bool {
    b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)
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

fn valid_set_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
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
    let mut scopes = set.scopes.clone();
    scopes.sort();
    for s in &scopes {
        h.update(b"\0scope\0");
        h.update(s.as_bytes());
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests;
