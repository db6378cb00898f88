//! The state journal: every live token tokenkeeper holds, on disk, so that neither a crash
//! nor a restart loses track of one.
//!
//! A token is recorded (and the record flushed) before it is written to its file, and dropped
//! from the journal once it is revoked or has expired. On start the daemon reuses a journaled
//! token that still fits its set, and revokes the rest; `tokenkeeper revoke` revokes whatever
//! the journal holds. One process owns a state directory at a time: it holds an exclusive
//! `flock` on `state_dir/lock`.
//!
//! The journal is a log, `state_dir/journal.log` (0600 in a 0700 directory), one JSON object a
//! line, so `jq` reads it: a header `{"version":2}`, then `{"record":ENTRY}` for each token
//! recorded and `{"remove":[FINGERPRINT, ...]}` for tokens forgotten. A record is appended and
//! flushed before it is acknowledged (one `fdatasync` per group of changes), so its cost does
//! not grow with the number of tokens held. Removals are made in memory at once and
//! written and flushed together within a second, or with the next record, or when the process
//! stops: one lost in a crash or a power cut only leaves a revoked token in the journal, which the next start introspects
//! before reusing it, or revokes again. When the log has grown past twice its live records it
//! is compacted: rewritten from them alone, atomically, like a token file. A version-1 journal
//! (`journal.json`, one document rewritten whole on every change) is migrated by the first
//! write.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

mod disk;
mod entry;
mod live;
mod lock;
mod writer;

pub use disk::{load, save};
pub use entry::Entry;
pub use lock::{StateLock, lock_inherited, lock_state_dir};
pub use writer::Journal;

/// The journal's file name inside `state_dir`.
pub const JOURNAL_FILE: &str = "journal.log";
/// The version-1 journal's name, read (and migrated) when no log exists yet.
pub const LEGACY_JOURNAL_FILE: &str = "journal.json";
/// The lock file's name inside `state_dir`.
pub const LOCK_FILE: &str = "lock";
/// Exact mode of the journal: owner read-write, nobody else.
const JOURNAL_MODE: u32 = 0o600;
/// Format version, so a future layout can be told apart instead of misread.
const VERSION: u32 = 2;
/// The version of `journal.json`, the one-document journal before the log.
const LEGACY_VERSION: u32 = 1;

/// How long a journaled token that the wall clock calls expired is still offered for
/// revocation, and kept in the journal meanwhile. The wall clock may have jumped forward while
/// the daemon was down, and then the provider still honours the token; one revocation settles
/// it either way (a token the provider no longer knows counts as revoked). Fifteen minutes is
/// Voucherify's whole token lifetime: enough to ride out a short outage, short enough not to
/// hold a budget slot for long for a token that most likely is gone.
pub const CLOCK_DOUBT_WINDOW: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{op} {path}", path = path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another tokenkeeper process (pid {pid}) holds {path}; one process per state_dir",
        path = path.display()
    )]
    Locked { path: PathBuf, pid: String },
    #[error("{path} is not a tokenkeeper journal (line {line})", path = path.display())]
    Corrupt {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} has journal version {found}; this tokenkeeper reads versions {LEGACY_VERSION} and {VERSION}", path = path.display())]
    Version { path: PathBuf, found: u32 },
    /// The state directory, journal or lock is open to another user, who could have planted
    /// what the journal says (tokens to revoke, files to delete).
    #[error("{path} {why}; refusing state another user may have written (fix its owner and mode)", path = path.display())]
    Unsafe { path: PathBuf, why: String },
    #[error("cannot write the journal")]
    Write(#[source] crate::fsio::FileError),
    #[error("the journal writer has stopped")]
    Closed,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Remaining life of a journaled token by the wall clock.
pub fn remaining(e: &Entry, now: SystemTime) -> Duration {
    e.expires_at.duration_since(now).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests;
