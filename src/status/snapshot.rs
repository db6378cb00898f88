//! `status.json`: what it holds, writing and reading it, and judging whether its writer
//! still runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::FORMAT_VERSION;
use super::state::{Phase, SetPhase};
use crate::fsio;
use crate::fsio::STATE_DIR_MODE;

/// A heartbeat older than this many intervals means the daemon is not responding: one missed
/// beat is a busy moment, three is a hang.
const STALE_AFTER_BEATS: u32 = 3;

/// Only the daemon's user (and root) reads it: it names sets and their errors, which is no
/// secret, but nobody else needs it.
const STATUS_MODE: u32 = 0o600;

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
    /// Why `metrics.listen` is not being served (absent when it is, or is not configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_error: Option<String>,
}

/// How a set's copy in a secrets store stands.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StoreHealth {
    pub set: String,
    /// `store:path`.
    pub location: String,
    /// The store's last error while it is failing; `None` once a write went through.
    pub error: Option<String>,
    /// The store does not hold the set's latest token yet (its write is queued, under way or
    /// failing): what `status` shows as catching up, never as up to date.
    #[serde(default)]
    pub catching_up: bool,
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
    /// Shared with the board's record of the set (see `Board::snapshot`).
    pub name: Arc<str>,
    pub provider: Arc<str>,
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
    /// See [`SetStats::refused`](super::SetStats::refused). Absent from status files written
    /// before it existed.
    #[serde(default)]
    pub tokens_refused: u64,
    /// See [`SetStats::journal_failures`](super::SetStats::journal_failures). Absent from
    /// status files written before it existed.
    #[serde(default)]
    pub journal_failures: u64,
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
    Write(#[source] fsio::FileError),
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
    // Streamed (at 10,000 sets the text is several MiB) and not fsynced: the file is
    // rewritten every heartbeat and means nothing after a power cut. Only the file can fail
    // here (plain data always serializes), and a failed write leaves the old file in place.
    fsio::write_advisory_file(path, STATUS_MODE, |w| {
        serde_json::to_writer_pretty(&mut *w, snap).map_err(std::io::Error::other)?;
        w.write_all(b"\n")
    })
    .map_err(StatusError::Write)
}

/// The largest status file `tokenkeeper status` reads. Each set takes a few hundred bytes of
/// pretty JSON, so 100,000 sets write some 40 MiB; 256 MiB is ample room for that, while a
/// file that grows without end (the daemon's user may be another than the one calling
/// `status`) stops there.
const MAX_STATUS_BYTES: u64 = 256 << 20;

/// Read a status file: a regular file (a FIFO would block `status`, a link to a device feed
/// it without end), at most [`MAX_STATUS_BYTES`].
pub fn read_status_file(path: &Path) -> Result<Snapshot, StatusError> {
    use crate::fsio::SmallTextError as E;
    use std::io::{Error, ErrorKind};
    let text = fsio::read_small_text(path, MAX_STATUS_BYTES).map_err(|e| StatusError::Read {
        path: path.to_path_buf(),
        source: match e {
            E::Io(e) => e,
            E::NotAFile => Error::new(
                ErrorKind::InvalidInput,
                "not a regular file (a device, FIFO, socket or directory)",
            ),
            E::TooLarge => Error::new(
                ErrorKind::InvalidInput,
                format!("larger than {} MiB", MAX_STATUS_BYTES >> 20),
            ),
            E::NotUtf8 => Error::new(ErrorKind::InvalidData, "not UTF-8 text"),
        },
    })?;
    serde_json::from_str(&text).map_err(|source| StatusError::Parse {
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
