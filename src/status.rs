//! Each set's state as other processes see it: `status.json` in the state directory for
//! `tokenkeeper status`, the one-line summary for systemd's `STATUS=`, and the figures the
//! [`crate::metrics`] exposition is made of.
//!
//! Transport: a file, rewritten atomically on every change and at least every [`HEARTBEAT`],
//! not a unix socket. A file needs no listener inside the sandbox, no socket permissions to
//! get right and no protocol; it is readable with `jq` when tokenkeeper itself is not at hand;
//! and it outlives a crash, so `status` can say "gone since 14:02" rather than "no answer".
//! Liveness is the recorded pid being alive plus a recent heartbeat: either alone is fooled,
//! by pid reuse after a crash or by a hung runtime.
//!
//! The daemon side is a [`Board`]: each set's task reports into a [`SetStats`] watch, the
//! board collects every set's channels, and [`crate::reporter::run`] turns changes into the file, the
//! textfile metrics, `STATUS=` and `WATCHDOG=1`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::sink;
use crate::sink::STATE_DIR_MODE;

/// A set's state as others may see it (readiness, status).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum SetState {
    /// No token yet.
    #[default]
    Starting,
    /// A valid token is in the sink.
    Fresh {
        fingerprint: String,
        expires_at: Instant,
        next_refresh: Instant,
    },
    /// The last attempt failed; `has_token` says whether a valid token is still in place.
    Failing { has_token: bool, error: String },
    /// Stopped.
    Stopped,
}

/// The status file's name inside `state_dir`.
pub const STATUS_FILE: &str = "status.json";

/// The status file (and the textfile metrics, and `STATUS=`'s countdown) is rewritten at least
/// this often. Ten seconds keeps a "next refresh in" countdown current to the eye while the
/// write (a few hundred bytes and an fsync) stays negligible.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// A heartbeat older than this many intervals means the daemon is not responding: one missed
/// beat is a busy moment, three is a hang.
const STALE_AFTER_BEATS: u32 = 3;

/// Status file format; bumped on any change a script would notice.
const FORMAT_VERSION: u32 = 1;

/// Only the daemon's user (and root) reads it: it names sets and their errors, which is no
/// secret, but nobody else needs it.
const STATUS_MODE: u32 = 0o600;

/// What a set's task reports besides its [`SetState`]: counters and facts for status and
/// metrics. Updated through [`SetReport`], so each update wakes the reporter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SetStats {
    /// Tokens the provider issued to this set (written or not).
    pub issued: u64,
    /// Issue attempts that failed, or whose token could not be written.
    pub issue_failures: u64,
    /// Tokens revoked: superseded ones and, at stop, everything.
    pub revoked: u64,
    /// Revocation attempts that failed.
    pub revoke_failures: u64,
    /// Tokens the provider minted in answers refused for their other fields (token_type,
    /// lifetime), each revoked at once.
    pub refused: u64,
    /// A token request is under way.
    pub refreshing: bool,
    /// Tokens this set holds that the provider still counts as live: the current one,
    /// superseded ones awaiting revocation, ones being revoked.
    pub live_tokens: usize,
    /// The token in the file, by fingerprint, and when it expires.
    pub fingerprint: Option<String>,
    pub expires_at: Option<SystemTime>,
    /// When the next token will be asked for (planned refresh or retry).
    pub next_refresh: Option<SystemTime>,
    /// The last failure, without any secret (the same text the log has), and when.
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    /// The token expired with no replacement, and none has come since.
    pub expired: bool,
}

impl SetStats {
    /// The provider minted a token in an answer that was refused.
    pub fn token_refused(&mut self) {
        self.refused += 1;
    }

    /// A token request is being sent.
    pub fn issue_started(&mut self) {
        self.refreshing = true;
    }

    /// The provider issued a token (not yet written).
    pub fn issue_succeeded(&mut self) {
        self.refreshing = false;
        self.issued += 1;
    }

    /// The request failed, or its token could not be written; `retry_at` is the next attempt.
    pub fn issue_failed(&mut self, error: String, retry_at: Instant) {
        self.refreshing = false;
        self.issue_failures += 1;
        self.last_error = Some(error);
        self.last_error_at = Some(SystemTime::now());
        self.next_refresh = Some(wall(retry_at));
    }

    /// Something the set must write (its journal entry) could not be written; nothing was
    /// retried for it, so no issue failure is counted.
    pub fn write_failed(&mut self, error: String) {
        self.last_error = Some(error);
        self.last_error_at = Some(SystemTime::now());
    }

    /// A new token is in the file.
    pub fn written(&mut self, fingerprint: &str, expires_at: SystemTime, next_refresh: Instant) {
        self.fingerprint = Some(fingerprint.to_string());
        self.expires_at = Some(expires_at);
        self.next_refresh = Some(wall(next_refresh));
        self.expired = false;
    }

    /// The token in the file expired with no replacement; the file is gone.
    pub fn token_expired(&mut self) {
        self.fingerprint = None;
        self.expires_at = None;
        self.expired = true;
    }

    /// A revocation finished.
    pub fn revoke_result(&mut self, ok: bool) {
        if ok {
            self.revoked += 1;
        } else {
            self.revoke_failures += 1;
        }
    }

    /// Record how many live tokens the set holds; true if that changed (for `send_if_modified`).
    pub fn set_live(&mut self, n: usize) -> bool {
        let changed = self.live_tokens != n;
        self.live_tokens = n;
        changed
    }
}

/// A monotonic deadline as wall-clock time, for other processes' eyes.
fn wall(at: Instant) -> SystemTime {
    let now = Instant::now();
    if at >= now {
        SystemTime::now() + (at - now)
    } else {
        SystemTime::now() - (now - at)
    }
}

/// The daemon as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Not every set has had a token yet (systemd has no `READY=1` yet).
    Starting,
    /// Ready was reported.
    Running,
    /// Revoking everything.
    Stopping,
    /// Exited cleanly; the file is the last word.
    Stopped,
}

/// One set's state in words a person or a script can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SetPhase {
    /// No token yet, no failure yet.
    Starting,
    /// A valid token is in place.
    Fresh,
    /// A valid token is in place and its replacement is being asked for.
    Refreshing,
    /// The last attempt failed; a token may still be in place (see `expires_at`).
    Failing,
    /// The token expired with no replacement: the file is gone.
    Expired,
    /// The set was stopped (its tokens revoked or kept).
    Stopped,
}

impl SetPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            SetPhase::Starting => "starting",
            SetPhase::Fresh => "fresh",
            SetPhase::Refreshing => "refreshing",
            SetPhase::Failing => "failing",
            SetPhase::Expired => "expired",
            SetPhase::Stopped => "stopped",
        }
    }

    /// A valid token is in the file.
    pub fn has_token(self) -> bool {
        matches!(self, SetPhase::Fresh | SetPhase::Refreshing)
    }

    /// Every phase, for one-hot metrics.
    pub const ALL: [SetPhase; 6] = [
        SetPhase::Starting,
        SetPhase::Fresh,
        SetPhase::Refreshing,
        SetPhase::Failing,
        SetPhase::Expired,
        SetPhase::Stopped,
    ];
}

/// Combine the task's [`SetState`] with its counters into one word.
fn set_phase(state: &SetState, stats: &SetStats) -> SetPhase {
    match state {
        SetState::Stopped => SetPhase::Stopped,
        SetState::Fresh { .. } if stats.refreshing => SetPhase::Refreshing,
        SetState::Fresh { .. } => SetPhase::Fresh,
        SetState::Failing { .. } if stats.expired => SetPhase::Expired,
        SetState::Failing { .. } => SetPhase::Failing,
        SetState::Starting if stats.last_error.is_some() => SetPhase::Failing,
        SetState::Starting => SetPhase::Starting,
    }
}

/// Everything `status.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub pid: u32,
    pub phase: Phase,
    #[serde(with = "rfc3339")]
    pub started_at: SystemTime,
    #[serde(with = "rfc3339")]
    pub heartbeat_at: SystemTime,
    /// The writer's promise: the next heartbeat comes within this many seconds.
    pub heartbeat_every_secs: u64,
    pub sets: Vec<SetSnapshot>,
    /// With `ha:`: this instance's role and who leads (absent without HA, and in status
    /// files of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaStatus>,
    /// Each set's store copy: up to date, or why not (absent without stores).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stores: Vec<StoreHealth>,
}

/// How a set's copy in a secrets store stands.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StoreHealth {
    pub set: String,
    /// `store:path`.
    pub location: String,
    /// The store's last error while it is failing; `None` once a write went through.
    pub error: Option<String>,
}

/// This instance's place in an HA group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaStatus {
    /// This instance's name in the lease.
    pub instance: String,
    /// `leader` or `standby`.
    pub role: String,
    /// The instance that holds the lease, as last seen.
    pub leader: Option<String>,
}

/// One set in `status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetSnapshot {
    pub name: String,
    pub provider: String,
    pub state: SetPhase,
    pub fingerprint: Option<String>,
    #[serde(with = "rfc3339_opt")]
    pub expires_at: Option<SystemTime>,
    #[serde(with = "rfc3339_opt")]
    pub next_refresh_at: Option<SystemTime>,
    pub last_error: Option<String>,
    #[serde(with = "rfc3339_opt")]
    pub last_error_at: Option<SystemTime>,
    pub tokens_issued: u64,
    pub issue_failures: u64,
    pub tokens_revoked: u64,
    pub revoke_failures: u64,
    /// See [`SetStats::refused`]. Absent from status files written before it existed.
    #[serde(default)]
    pub tokens_refused: u64,
    pub live_tokens: u64,
}

mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text).map_err(D::Error::custom)
    }
}

mod rfc3339_opt {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(&humantime::format_rfc3339_millis(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => humantime::parse_rfc3339(&text)
                .map(Some)
                .map_err(D::Error::custom),
            None => Ok(None),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot create the state directory {path}", path = path.display())]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the status file")]
    Write(#[source] sink::SinkError),
    #[error("cannot read the status file {path}", path = path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the status file {path} is not tokenkeeper's status (format version {FORMAT_VERSION})", path = path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// One registered set: its name, its provider, and what its task reports.
struct Entry {
    name: String,
    provider: String,
    slot: Arc<Slot>,
}

struct Inner {
    sets: Vec<Entry>,
    /// The names in `sets`, so registering a new set (10,000 at a start) does not compare
    /// its name with every set already there.
    names: std::collections::HashSet<String>,
    phase: Phase,
    ha: Option<HaStatus>,
    stores: Vec<watch::Receiver<StoreHealth>>,
}

/// Every set's reporting channels, shared by the daemon (which registers sets) and the
/// reporter and metrics listener (which read them).
pub struct Board {
    inner: Mutex<Inner>,
    changed: Notify,
    /// Woken when the phase changes: the reporter publishes that at once, without waiting
    /// out its coalescing gap, because readiness and stop are what watchers wait for.
    phase_changed: Notify,
    started_at: SystemTime,
    pid: u32,
}

impl Board {
    pub fn new() -> Arc<Board> {
        Arc::new(Board {
            inner: Mutex::new(Inner {
                sets: Vec::new(),
                names: std::collections::HashSet::new(),
                phase: Phase::Starting,
                ha: None,
                stores: Vec::new(),
            }),
            changed: Notify::new(),
            phase_changed: Notify::new(),
            started_at: SystemTime::now(),
            pid: std::process::id(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the list half-changed: every change is one push,
        // retain or assignment. Carry on with it rather than lose status reporting.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Add a set (at start or when a reload adds one) and get the handle its task reports
    /// through. A set registered again under the same name (a reload that changed it)
    /// replaces the old entry.
    pub fn register(self: &Arc<Self>, name: &str, provider: &str) -> SetReport {
        let slot = Arc::new(Slot::default());
        let mut inner = self.lock();
        if !inner.names.insert(name.to_string()) {
            inner.sets.retain(|e| e.name != name);
        }
        inner.sets.push(Entry {
            name: name.to_string(),
            provider: provider.to_string(),
            slot: Arc::clone(&slot),
        });
        drop(inner);
        self.changed.notify_one();
        SetReport {
            slot,
            board: Arc::downgrade(self),
        }
    }

    /// Forget a set (a reload removed it, and its task has finished).
    pub fn remove(&self, name: &str) {
        let mut inner = self.lock();
        inner.names.remove(name);
        inner.sets.retain(|e| e.name != name);
        inner.stores.retain(|r| r.borrow().set != name);
        drop(inner);
        self.changed.notify_one();
    }

    pub fn set_phase(&self, phase: Phase) {
        self.lock().phase = phase;
        self.changed.notify_one();
        self.phase_changed.notify_one();
    }

    pub fn phase(&self) -> Phase {
        self.lock().phase
    }

    /// Register a set's store copy; its writer reports through the returned sender. A set
    /// registered again (a reload) replaces its earlier entry.
    pub fn register_store(&self, set: &str, location: &str) -> watch::Sender<StoreHealth> {
        let (tx, rx) = watch::channel(StoreHealth {
            set: set.to_string(),
            location: location.to_string(),
            error: None,
        });
        let mut inner = self.lock();
        inner.stores.retain(|r| r.borrow().set != set);
        inner.stores.push(rx);
        drop(inner);
        self.changed.notify_one();
        tx
    }

    /// Wake the reporter: a store's health changed.
    pub fn poke(&self) {
        self.changed.notify_one();
    }

    /// Record this instance's HA role and the leader it sees.
    pub fn set_ha(&self, ha: HaStatus) {
        self.lock().ha = Some(ha);
        self.changed.notify_one();
    }

    /// Wait until something changed since the last wait.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Wait until the phase changed since the last wait.
    pub async fn phase_changed(&self) {
        self.phase_changed.notified().await;
    }

    /// Every set's state now, with `now` as the heartbeat.
    pub fn snapshot(&self, now: SystemTime) -> Snapshot {
        let inner = self.lock();
        let sets = inner
            .sets
            .iter()
            .map(|e| {
                let (state, stats) = e.slot.now();
                let phase = set_phase(&state, &stats);
                let token = phase.has_token() || phase == SetPhase::Failing;
                SetSnapshot {
                    name: e.name.clone(),
                    provider: e.provider.clone(),
                    state: phase,
                    fingerprint: stats.fingerprint.clone().filter(|_| token),
                    expires_at: stats.expires_at.filter(|_| token),
                    next_refresh_at: stats.next_refresh.filter(|_| phase != SetPhase::Stopped),
                    last_error: stats.last_error.clone(),
                    last_error_at: stats.last_error_at,
                    tokens_issued: stats.issued,
                    issue_failures: stats.issue_failures,
                    tokens_revoked: stats.revoked,
                    revoke_failures: stats.revoke_failures,
                    tokens_refused: stats.refused,
                    live_tokens: stats.live_tokens as u64,
                }
            })
            .collect();
        Snapshot {
            version: FORMAT_VERSION,
            pid: self.pid,
            phase: inner.phase,
            started_at: self.started_at,
            heartbeat_at: now,
            heartbeat_every_secs: HEARTBEAT.as_secs(),
            sets,
            ha: inner.ha.clone(),
            stores: inner.stores.iter().map(|r| r.borrow().clone()).collect(),
        }
    }
}

/// A set's state and counters as its task last reported them, and the channels of those who
/// follow them (its rotate schedule, its `on_rotate` hooks), created only when someone does.
/// A plain lock, not two watch channels a set: 10,000 sets each had about 1 KiB of channels
/// that nothing but the board read.
#[derive(Default)]
struct Slot {
    inner: Mutex<SlotInner>,
}

#[derive(Default)]
struct SlotInner {
    state: SetState,
    stats: SetStats,
    state_tx: Option<watch::Sender<SetState>>,
    stats_tx: Option<watch::Sender<SetStats>>,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotInner> {
        // Every change is one assignment or counter update: a panic elsewhere cannot leave
        // it half-made.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> (SetState, SetStats) {
        let g = self.lock();
        (g.state.clone(), g.stats.clone())
    }
}

/// What a set's task reports through: its state and its counters. Every change wakes the
/// board's reporter directly; a forwarding task per channel would cost 10,000 sets 20,000
/// tasks.
pub struct SetReport {
    slot: Arc<Slot>,
    board: Weak<Board>,
}

impl SetReport {
    /// A report no board reads (tests, and tasks run outside the daemon).
    pub fn detached() -> SetReport {
        SetReport {
            slot: Arc::new(Slot::default()),
            board: Weak::new(),
        }
    }

    fn poke(&self) {
        if let Some(b) = self.board.upgrade() {
            b.changed.notify_one();
        }
    }

    pub fn state(&self, state: SetState) {
        let mut g = self.slot.lock();
        if let Some(tx) = &g.state_tx {
            tx.send_replace(state.clone());
        }
        g.state = state;
        drop(g);
        self.poke();
    }

    pub fn stats(&self, change: impl FnOnce(&mut SetStats)) {
        self.stats_if(|s| {
            change(s);
            true
        });
    }

    /// Apply `change`, which says whether it changed anything; only a change wakes anyone.
    pub fn stats_if(&self, change: impl FnOnce(&mut SetStats) -> bool) {
        let mut g = self.slot.lock();
        if !change(&mut g.stats) {
            return;
        }
        if let Some(tx) = &g.stats_tx {
            tx.send_replace(g.stats.clone());
        }
        drop(g);
        self.poke();
    }

    /// Whether the set has a valid token in place now.
    pub fn is_fresh(&self) -> bool {
        matches!(self.slot.lock().state, SetState::Fresh { .. })
    }

    /// Another handle on the same set, to read it from elsewhere (the daemon's readiness).
    pub fn view(&self) -> SetReport {
        SetReport {
            slot: Arc::clone(&self.slot),
            board: Weak::new(),
        }
    }

    /// Follow the set's state: the receiver sees every change from now on.
    pub fn subscribe_state(&self) -> watch::Receiver<SetState> {
        let mut g = self.slot.lock();
        let current = g.state.clone();
        g.state_tx
            .get_or_insert_with(|| watch::Sender::new(current))
            .subscribe()
    }

    /// Follow the set's counters: the receiver sees every change from now on.
    pub fn subscribe_stats(&self) -> watch::Receiver<SetStats> {
        let mut g = self.slot.lock();
        let current = g.stats.clone();
        g.stats_tx
            .get_or_insert_with(|| watch::Sender::new(current))
            .subscribe()
    }
}

/// Write `snap` to `path` atomically, creating the state directory (0700) if needed.
pub fn write_status_file(path: &Path, snap: &Snapshot) -> Result<(), StatusError> {
    if let Some(dir) = path.parent()
        && !dir.is_dir()
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(STATE_DIR_MODE)
            .create(dir)
            .map_err(|source| StatusError::StateDir {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    // Serializing plain data into memory cannot fail; an error here would be a bug in the
    // types above, and an empty object is still valid JSON for the reader to refuse.
    let mut text = serde_json::to_vec_pretty(snap).unwrap_or_else(|_| b"{}".to_vec());
    text.push(b'\n');
    sink::write_file(path, STATUS_MODE, &text).map_err(StatusError::Write)
}

/// Read a status file.
pub fn read_status_file(path: &Path) -> Result<Snapshot, StatusError> {
    let text = std::fs::read(path).map_err(|source| StatusError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| StatusError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Whether the daemon that wrote a snapshot is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Running,
    /// It stopped cleanly; the snapshot is its last word.
    Stopped,
    /// Its process is gone without saying so (killed, crashed).
    Gone,
    /// Its process exists but has not written a heartbeat for this long.
    NotResponding(Duration),
}

/// Judge a snapshot at `now`; `alive(pid)` says whether a process exists.
pub fn liveness(snap: &Snapshot, now: SystemTime, alive: impl Fn(u32) -> bool) -> Liveness {
    if snap.phase == Phase::Stopped {
        return Liveness::Stopped;
    }
    if !alive(snap.pid) {
        return Liveness::Gone;
    }
    let age = now.duration_since(snap.heartbeat_at).unwrap_or_default();
    let limit = Duration::from_secs(snap.heartbeat_every_secs.max(1)) * STALE_AFTER_BEATS;
    if age > limit {
        Liveness::NotResponding(age)
    } else {
        Liveness::Running
    }
}

/// Whether process `pid` exists. `EPERM` means it does, owned by someone else.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}

/// `1h2m`, `8m12s`, `45s`: the two largest units, for a glance.
pub fn short(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    if h >= 24 {
        format!("{}d{}h", h / 24, h % 24)
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

fn until(t: SystemTime, now: SystemTime) -> Option<Duration> {
    t.duration_since(now).ok()
}

/// The one line `systemctl status` shows, e.g. "3 tokens fresh, next refresh in 8m12s".
pub fn summary(snap: &Snapshot, now: SystemTime) -> String {
    let total = snap.sets.len();
    let with_token = snap.sets.iter().filter(|s| s.state.has_token()).count();
    let troubled: Vec<String> = snap
        .sets
        .iter()
        .filter(|s| matches!(s.state, SetPhase::Failing | SetPhase::Expired))
        .map(|s| format!("{} {}", s.name, s.state.as_str()))
        .collect();
    let next = snap
        .sets
        .iter()
        .filter_map(|s| s.next_refresh_at)
        .min()
        .map(|t| until(t, now).map_or_else(|| "now".to_string(), |d| format!("in {}", short(d))));
    let mut line = match snap.phase {
        Phase::Stopping => return "stopping: revoking every token".into(),
        Phase::Stopped => return "stopped".into(),
        Phase::Starting => format!(
            "starting: {with_token} of {total} set{} ha{} a token",
            plural(total),
            if total == 1 { "s" } else { "ve" }
        ),
        Phase::Running if with_token == total => {
            format!("{total} token{} fresh", plural(total))
        }
        Phase::Running => format!("{with_token} of {total} tokens fresh"),
    };
    if !troubled.is_empty() {
        let _ = write!(line, "; {}", troubled.join(", "));
    }
    if let Some(next) = next {
        let _ = write!(line, ", next refresh {next}");
    }
    line
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `tokenkeeper status`'s table.
pub fn render_table(snap: &Snapshot, live: &Liveness, now: SystemTime) -> String {
    let mut out = String::new();
    let up = now.duration_since(snap.started_at).unwrap_or_default();
    let beat = now.duration_since(snap.heartbeat_at).unwrap_or_default();
    let _ = match live {
        Liveness::Running => writeln!(
            out,
            "tokenkeeper {} (pid {}, up {}), {}; heartbeat {} ago",
            match snap.phase {
                Phase::Starting => "starting",
                Phase::Stopping => "stopping",
                _ => "running",
            },
            snap.pid,
            short(up),
            summary(snap, now),
            short(beat)
        ),
        other => writeln!(
            out,
            "{}; its last status, from {} ago:",
            not_running_message(snap, other, now),
            short(beat)
        ),
    };
    for st in &snap.stores {
        let _ = writeln!(
            out,
            "store: {} -> {}: {}",
            st.set,
            st.location,
            st.error
                .as_deref()
                .map_or("up to date".to_string(), |e| format!("failing: {e}"))
        );
    }
    if let Some(ha) = &snap.ha {
        let _ = writeln!(
            out,
            "ha: this instance ({}) is {}; leader: {}",
            ha.instance,
            ha.role,
            ha.leader.as_deref().unwrap_or("none")
        );
    }
    let header = [
        "SET",
        "PROVIDER",
        "STATE",
        "TOKEN",
        "EXPIRES IN",
        "NEXT REFRESH",
        "ISSUED",
        "LAST ERROR",
    ];
    let mut rows: Vec<[String; 8]> = vec![header.map(String::from)];
    for s in &snap.sets {
        let dash = || "-".to_string();
        rows.push([
            s.name.clone(),
            s.provider.clone(),
            s.state.as_str().to_string(),
            s.fingerprint.clone().unwrap_or_else(dash),
            s.expires_at
                .map(|t| until(t, now).map_or_else(|| "expired".into(), short))
                .unwrap_or_else(dash),
            s.next_refresh_at
                .map(|t| until(t, now).map_or_else(|| "now".into(), short))
                .unwrap_or_else(dash),
            s.tokens_issued.to_string(),
            match (&s.last_error, s.last_error_at) {
                (Some(e), Some(at)) => format!(
                    "{} ago: {e}",
                    short(now.duration_since(at).unwrap_or_default())
                ),
                (Some(e), None) => e.clone(),
                _ => dash(),
            },
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Why the daemon is not running, in one sentence.
pub fn not_running_message(snap: &Snapshot, live: &Liveness, now: SystemTime) -> String {
    let ago = |t: SystemTime| short(now.duration_since(t).unwrap_or_default());
    match live {
        Liveness::Running => format!("tokenkeeper is running (pid {})", snap.pid),
        Liveness::Stopped => format!(
            "tokenkeeper is not running: it stopped cleanly {} ago (pid {})",
            ago(snap.heartbeat_at),
            snap.pid
        ),
        Liveness::Gone => format!(
            "tokenkeeper is not running: pid {} is gone without a clean stop (last heartbeat {} ago)",
            snap.pid,
            ago(snap.heartbeat_at)
        ),
        Liveness::NotResponding(age) => format!(
            "tokenkeeper is not responding: pid {} exists but its last heartbeat is {} old (expected every {}s)",
            snap.pid,
            short(*age),
            snap.heartbeat_every_secs
        ),
    }
}

/// `tokenkeeper status --json`: the snapshot plus what the reader judged and computed.
pub fn render_json(snap: &Snapshot, live: &Liveness, now: SystemTime) -> serde_json::Value {
    let mut v = serde_json::to_value(snap).unwrap_or(serde_json::Value::Null);
    let secs = |t: Option<SystemTime>| {
        t.map(|t| match t.duration_since(now) {
            Ok(d) => d.as_secs_f64().round() as i64,
            Err(e) => -(e.duration().as_secs_f64().round() as i64),
        })
    };
    if let Some(obj) = v.as_object_mut() {
        obj.insert("running".into(), (*live == Liveness::Running).into());
        obj.insert(
            "liveness".into(),
            match live {
                Liveness::Running => "running",
                Liveness::Stopped => "stopped",
                Liveness::Gone => "gone",
                Liveness::NotResponding(_) => "not_responding",
            }
            .into(),
        );
        if *live != Liveness::Running {
            obj.insert(
                "message".into(),
                not_running_message(snap, live, now).into(),
            );
        }
        obj.insert("summary".into(), summary(snap, now).into());
        if let Some(sets) = obj.get_mut("sets").and_then(|s| s.as_array_mut()) {
            for (s, set) in sets.iter_mut().zip(&snap.sets) {
                if let Some(o) = s.as_object_mut() {
                    o.insert("expires_in_secs".into(), secs(set.expires_at).into());
                    o.insert(
                        "next_refresh_in_secs".into(),
                        secs(set.next_refresh_at).into(),
                    );
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn fresh(next: Instant) -> SetState {
        SetState::Fresh {
            fingerprint: "abcd1234".into(),
            expires_at: next + S(300),
            next_refresh: next,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_board_follows_each_sets_state_and_counters() {
        let board = Board::new();
        let a = board.register("a", "vf");
        let b = board.register("b", "vf");
        let now = SystemTime::now();
        let snap = board.snapshot(now);
        assert_eq!(snap.phase, Phase::Starting);
        assert_eq!(
            snap.sets.iter().map(|s| s.state).collect::<Vec<_>>(),
            vec![SetPhase::Starting, SetPhase::Starting]
        );
        assert_eq!(summary(&snap, now), "starting: 0 of 2 sets have a token");

        a.stats(|s| {
            s.issue_started();
            s.issue_succeeded();
            s.written("abcd1234", now + S(900), Instant::now() + S(594));
        });
        a.state(fresh(Instant::now() + S(594)));
        b.stats(|s| s.issue_failed("HTTP 503".into(), Instant::now() + S(2)));
        board.set_phase(Phase::Running);
        let snap = board.snapshot(now);
        let sa = &snap.sets[0];
        assert_eq!(sa.state, SetPhase::Fresh);
        assert_eq!(sa.fingerprint.as_deref(), Some("abcd1234"));
        assert_eq!(sa.tokens_issued, 1);
        let sb = &snap.sets[1];
        assert_eq!(sb.state, SetPhase::Failing);
        assert_eq!(sb.last_error.as_deref(), Some("HTTP 503"));
        assert_eq!(sb.issue_failures, 1);
        assert_eq!(
            summary(&snap, now),
            "1 of 2 tokens fresh; b failing, next refresh in 2s"
        );

        a.stats(SetStats::issue_started);
        assert_eq!(board.snapshot(now).sets[0].state, SetPhase::Refreshing);
        a.stats(SetStats::token_expired);
        a.state(SetState::Failing {
            has_token: false,
            error: "token expired with no replacement".into(),
        });
        let snap = board.snapshot(now);
        assert_eq!(snap.sets[0].state, SetPhase::Expired);
        assert_eq!(snap.sets[0].expires_at, None);

        board.remove("b");
        assert_eq!(board.snapshot(now).sets.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn every_change_wakes_the_reporter() {
        let board = Board::new();
        let report = board.register("a", "vf");
        // The registration itself is a change.
        tokio::time::timeout(S(1), board.changed()).await.unwrap();
        report.stats(|s| s.revoke_result(true));
        tokio::time::timeout(S(1), board.changed()).await.unwrap();
        report.state(SetState::Stopped);
        tokio::time::timeout(S(1), board.changed()).await.unwrap();
        // A change that changes nothing wakes no one.
        report.stats_if(|_| false);
        assert!(
            tokio::time::timeout(S(1), board.changed()).await.is_err(),
            "woken with nothing changed"
        );
    }

    fn snap_at(now: SystemTime) -> Snapshot {
        Snapshot {
            version: FORMAT_VERSION,
            pid: 4242,
            phase: Phase::Running,
            started_at: now - S(7260),
            heartbeat_at: now - S(3),
            heartbeat_every_secs: 10,
            ha: None,
            stores: Vec::new(),
            sets: vec![
                SetSnapshot {
                    name: "orders-sync".into(),
                    provider: "voucherify-eu".into(),
                    state: SetPhase::Fresh,
                    fingerprint: Some("abcd1234".into()),
                    expires_at: Some(now + S(890)),
                    next_refresh_at: Some(now + S(492)),
                    last_error: None,
                    last_error_at: None,
                    tokens_issued: 3,
                    issue_failures: 0,
                    tokens_revoked: 2,
                    revoke_failures: 0,
                    tokens_refused: 0,
                    live_tokens: 1,
                },
                SetSnapshot {
                    name: "reports".into(),
                    provider: "voucherify-eu".into(),
                    state: SetPhase::Failing,
                    fingerprint: Some("0011aabb".into()),
                    expires_at: Some(now + S(100)),
                    next_refresh_at: Some(now + S(4)),
                    last_error: Some("provider voucherify-eu: HTTP 503".into()),
                    last_error_at: Some(now - S(65)),
                    tokens_issued: 1,
                    issue_failures: 2,
                    tokens_revoked: 0,
                    revoke_failures: 0,
                    tokens_refused: 0,
                    live_tokens: 1,
                },
            ],
        }
    }

    #[test]
    fn the_file_round_trips_and_says_who_wrote_it() {
        let dir = tempfile::tempdir().unwrap();
        // A state directory that does not exist yet is created, for the owner alone.
        let path = dir.path().join("state/status.json");
        let now = humantime::parse_rfc3339("2030-01-01T00:00:00.250Z").unwrap();
        let snap = snap_at(now);
        write_status_file(&path, &snap).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()) & !0o700, 0);
        assert_eq!(read_status_file(&path).unwrap(), snap);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["heartbeat_at"], "2029-12-31T23:59:57.250Z");
        assert_eq!(v["sets"][0]["state"], "fresh");
        assert_eq!(v["sets"][0]["expires_at"], "2030-01-01T00:14:50.250Z");
    }

    #[test]
    fn a_file_that_is_not_ours_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        std::fs::write(&path, "{\"hello\": 1}").unwrap();
        let e = read_status_file(&path).unwrap_err();
        assert!(matches!(e, StatusError::Parse { .. }));
        assert!(e.to_string().contains("status.json"));
    }

    #[test]
    fn liveness_needs_both_the_pid_and_a_recent_heartbeat() {
        let now = SystemTime::now();
        let mut s = snap_at(now);
        assert_eq!(liveness(&s, now, |_| true), Liveness::Running);
        assert_eq!(liveness(&s, now, |_| false), Liveness::Gone);
        assert_eq!(
            liveness(&s, now + S(40), |_| true),
            Liveness::NotResponding(S(43))
        );
        s.phase = Phase::Stopped;
        assert_eq!(liveness(&s, now, |_| false), Liveness::Stopped);
        assert!(pid_alive(std::process::id()));
    }

    #[test]
    fn the_table_is_readable() {
        let now = SystemTime::now();
        let s = snap_at(now);
        let table = render_table(&s, &Liveness::Running, now);
        let expected = "\
tokenkeeper running (pid 4242, up 2h1m), 1 of 2 tokens fresh; reports failing, next refresh in 4s; heartbeat 3s ago
SET          PROVIDER       STATE    TOKEN     EXPIRES IN  NEXT REFRESH  ISSUED  LAST ERROR
orders-sync  voucherify-eu  fresh    abcd1234  14m50s      8m12s         3       -
reports      voucherify-eu  failing  0011aabb  1m40s       4s            1       1m5s ago: provider voucherify-eu: HTTP 503
";
        assert_eq!(table, expected);
        let gone = render_table(&s, &Liveness::Gone, now);
        assert!(
            gone.starts_with("tokenkeeper is not running: pid 4242 is gone without a clean stop"),
            "{gone}"
        );
    }

    #[test]
    fn json_adds_the_verdict_and_countdowns() {
        let now = SystemTime::now();
        let s = snap_at(now);
        let v = render_json(&s, &Liveness::Running, now);
        assert_eq!(v["running"], true);
        assert_eq!(v["sets"][0]["expires_in_secs"], 890);
        assert_eq!(v["sets"][1]["next_refresh_in_secs"], 4);
        assert_eq!(
            v["sets"][1]["last_error"],
            "provider voucherify-eu: HTTP 503"
        );
        let v = render_json(&s, &Liveness::NotResponding(S(45)), now);
        assert_eq!(v["running"], false);
        assert_eq!(v["liveness"], "not_responding");
        assert!(v["message"].as_str().unwrap().contains("45s old"));
    }

    #[test]
    fn summary_is_one_short_line() {
        let now = SystemTime::now();
        let mut s = snap_at(now);
        s.sets[1].state = SetPhase::Fresh;
        s.sets.push(SetSnapshot {
            name: "third".into(),
            ..s.sets[0].clone()
        });
        s.sets[1].next_refresh_at = Some(now + S(600));
        assert_eq!(summary(&s, now), "3 tokens fresh, next refresh in 8m12s");
        s.phase = Phase::Stopping;
        assert_eq!(summary(&s, now), "stopping: revoking every token");
    }

    #[test]
    fn short_durations() {
        assert_eq!(short(S(0)), "0s");
        assert_eq!(short(S(45)), "45s");
        assert_eq!(short(S(492)), "8m12s");
        assert_eq!(short(S(3720)), "1h2m");
        assert_eq!(short(S(90000)), "1d1h");
    }
}
