//! The log on disk: loading it (or a version-1 journal), appending to it, compacting it.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tokio::time::Instant;
use tracing::{error, warn};
use zeroize::Zeroizing;

use super::entry::{Entry, Header, LegacyDocument, Line, Stored};
use super::live::Live;
use super::lock::{StateLock, open_state_file};
use super::{
    JOURNAL_FILE, JOURNAL_MODE, JournalError, LEGACY_JOURNAL_FILE, LEGACY_VERSION, VERSION, io,
};

/// Read the journal; a missing one is empty. The log wins over a version-1 document beside it:
/// a migration writes the log whole, atomically, before it removes the document, so the two
/// exist side by side only after one that stopped in between.
pub fn load(dir: &Path) -> Result<Vec<Entry>, JournalError> {
    let path = dir.join(JOURNAL_FILE);
    if let Some(bytes) = read_state_file(&path)? {
        return parse_log(&path, &bytes);
    }
    let legacy = dir.join(LEGACY_JOURNAL_FILE);
    let Some(bytes) = read_state_file(&legacy)? else {
        return Ok(Vec::new());
    };
    let doc: LegacyDocument =
        serde_json::from_slice(&bytes).map_err(|source| JournalError::Corrupt {
            path: legacy.clone(),
            line: 1,
            source,
        })?;
    if doc.version != LEGACY_VERSION {
        return Err(JournalError::Version {
            path: legacy,
            found: doc.version,
        });
    }
    Ok(doc.tokens)
}

/// The whole of a journal file, `None` if there is none; refused unless it is a regular file
/// only the daemon's user can have written (see [`open_state_file`]).
fn read_state_file(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, JournalError> {
    let mut file = match open_state_file(path, OpenOptions::new().read(true)) {
        Ok(f) => f,
        Err(JournalError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut bytes = Zeroizing::new(Vec::new());
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(io("read", path))?;
    Ok(Some(bytes))
}

/// The live tokens a log holds: its records replayed in order. A crash in the middle of an
/// append leaves the last line without its newline; that batch was never acknowledged (no
/// token in it reached a file), so the torn line is passed over. Any other line that does not
/// parse makes the whole journal corrupt: guessing would lose tokens silently.
fn parse_log(path: &Path, bytes: &[u8]) -> Result<Vec<Entry>, JournalError> {
    let whole = bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(&[][..], |end| &bytes[..=end]);
    let mut lines = whole.split(|&b| b == b'\n').enumerate();
    let corrupt = |line: usize| {
        move |source| JournalError::Corrupt {
            path: path.to_path_buf(),
            line: line + 1,
            source,
        }
    };
    let header: Header = match lines.next() {
        Some((i, l)) => serde_json::from_slice(l).map_err(corrupt(i))?,
        None => serde_json::from_slice(b"").map_err(corrupt(0))?,
    };
    if header.version != VERSION {
        return Err(JournalError::Version {
            path: path.to_path_buf(),
            found: header.version,
        });
    }
    let mut live = Live::<Entry>::default();
    for (i, l) in lines {
        if l.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Line>(l).map_err(corrupt(i))? {
            // Never pruned: only replayed.
            Line::Record(e) => live.insert(e.fingerprint.clone(), Instant::now(), *e, 0),
            Line::Remove(fps) => {
                for fp in &fps {
                    live.remove(fp);
                }
            }
        }
    }
    Ok(live.into_values())
}

/// Replace the journal with `entries`, atomically and durably (a compaction), migrating a
/// version-1 document.
pub fn save(dir: &Path, entries: &[Entry]) -> Result<(), JournalError> {
    let mut live = Live::default();
    let now = crate::clock::now_wall();
    for e in entries {
        let s = Stored::new(e, now).map_err(|source| JournalError::Corrupt {
            path: dir.join(JOURNAL_FILE),
            line: 0,
            source,
        })?;
        let len = s.line_len();
        live.insert(s.fingerprint.clone(), s.deadline, s, len);
    }
    Disk::new(dir.to_path_buf(), None).compact(&live)
}

/// Remove the copies of the log that compactions left in `dir` when they were killed before
/// their rename: each holds token records, and nothing else would ever remove them; and the
/// copies of a Square provider's refresh-token file, which hold a refresh token. Only regular
/// files named as a writer names its temporary file (see [`crate::fsio::write_file`]); called
/// with the directory's lock held, so no writer of another process is under way.
pub(super) fn remove_leftover_copies(dir: &Path) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            warn!(state_dir = %dir.display(), error = %e, "could not look for copies of the journal a crash left behind");
            return;
        }
    };
    let mut removed = 0_usize;
    for entry in entries.flatten() {
        let name = entry.file_name();
        // `file_type` does not follow a symlink: one named like a copy is left alone.
        if !holds_secrets_left_behind(&name) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                warn!(state_dir = %dir.display(), error = %e, "could not remove a copy of a state file a crash left behind");
            }
        }
    }
    if removed > 0 {
        warn!(state_dir = %dir.display(), copies = removed,
            "removed copies of the journal or a refresh-token file that a crash while writing left behind");
    }
}

/// Whether `name` is the temporary copy of a state file that holds secrets, as a killed
/// writer leaves it: the journal's (token records) or a Square provider's
/// (`square-NAME.json`, its rotated refresh token). The status file's copies hold no secret
/// and are left to the status writer.
fn holds_secrets_left_behind(name: &std::ffi::OsStr) -> bool {
    if crate::fsio::is_temp_of(name, std::ffi::OsStr::new(JOURNAL_FILE)) {
        return true;
    }
    // `.square-NAME.json.RANDOM.tmp`: the random part has no dot.
    let name = name.to_string_lossy();
    name.strip_suffix(".tmp")
        .and_then(|n| n.rsplit_once('.'))
        .and_then(|(target, _random)| target.strip_prefix(".square-"))
        .is_some_and(|provider| provider.ends_with(".json") && provider.len() > ".json".len())
}

/// A log may hold this much besides twice its live records before it is compacted: a
/// compaction rewrites every live record, so spacing them by at least the live size (and this
/// slack, for small journals) keeps the bytes written per change constant on average, and
/// the file at most about twice what it holds.
pub(super) const COMPACT_SLACK: u64 = 1 << 20;

/// The log on disk, as the writer appends to it.
pub(super) struct Disk {
    dir: PathBuf,
    /// The state directory's lock, for a daemon: checked before every commit.
    lock: Option<StateLock>,
    /// Open for appending once a compaction has written the file this session. `None` after
    /// a failed write too: what reached the file is then unknown, so the next commit rewrites
    /// it whole instead of appending.
    file: Option<File>,
    /// Bytes in the file.
    size: u64,
    /// Whether a version-1 document may still lie beside the log.
    legacy: bool,
}

impl Disk {
    pub(super) fn new(dir: PathBuf, lock: Option<StateLock>) -> Disk {
        Disk {
            dir,
            lock,
            file: None,
            size: 0,
            legacy: true,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(JOURNAL_FILE)
    }

    /// Make `lines` (the batch just applied to `live`) durable: appended and flushed, or, when
    /// the log has grown past its bound or its state is unknown, by a compaction. Every
    /// commit flushes: removals wait in the writer's memory rather than on the disk unflushed
    /// (see `REMOVAL_FLUSH`), so a commit of nothing has nothing to flush.
    pub(super) fn commit(&mut self, lines: &[u8], live: &Live<Stored>) -> Result<(), JournalError> {
        self.guard()?;
        let fits = self.size + lines.len() as u64 <= 2 * live.bytes as u64 + COMPACT_SLACK;
        let Some(file) = self.file.as_mut().filter(|_| fits) else {
            return self.compact(live);
        };
        if lines.is_empty() {
            return Ok(());
        }
        // Someone removed or replaced the log under us: appending would write to a file no
        // path names. Rewrite it where it belongs instead (one fstat a commit).
        if file.metadata().map_or(true, |m| m.nlink() == 0) {
            return self.compact(live);
        }
        let written = file.write_all(lines).and_then(|()| {
            synced(&self.dir);
            file.sync_data()
        });
        if let Err(e) = written {
            // What reached the disk is unknown: the next commit rewrites the log whole.
            self.file = None;
            return Err(io("append to", &self.path())(e));
        }
        self.size += lines.len() as u64;
        Ok(())
    }

    /// Whether the lock no longer guards the directory (see [`StateLock::still_guards`]).
    pub(super) fn lost(&self) -> bool {
        self.lock.as_ref().is_some_and(|l| !l.still_guards())
    }

    /// Make sure the lock still guards the directory, taking it again if the directory was
    /// removed (the log is then rewritten whole). Writing into a directory another process
    /// has locked since would overwrite its journal, so that is refused.
    fn guard(&mut self) -> Result<(), JournalError> {
        let Some(lock) = self.lock.as_mut() else {
            return Ok(());
        };
        match lock.take_again() {
            Ok(false) => Ok(()),
            Ok(true) => {
                warn!(state_dir = %self.dir.display(), "the state directory was removed or its lock replaced; locked it again and wrote the whole journal there");
                self.file = None;
                Ok(())
            }
            Err(e) => {
                error!(state_dir = %self.dir.display(), error = %crate::error_chain(&e), "lost the state directory's lock; the journal is kept in memory only, and tokens issued now are journaled nowhere: stop this daemon");
                Err(e)
            }
        }
    }

    /// Rewrite the log from `live` alone, atomically, then append to the new file.
    fn compact(&mut self, live: &Live<Stored>) -> Result<(), JournalError> {
        self.file = None;
        let path = self.path();
        let mut bytes = Zeroizing::new(Vec::with_capacity(live.bytes + 16));
        let header = serde_json::to_vec(&Header { version: VERSION }).map_err(|source| {
            JournalError::Corrupt {
                path: path.clone(),
                line: 1,
                source,
            }
        })?;
        bytes.extend_from_slice(&header);
        bytes.push(b'\n');
        for s in live.values() {
            s.push_line(&mut bytes);
        }
        synced(&self.dir);
        crate::fsio::write_file(&path, JOURNAL_MODE, &bytes).map_err(JournalError::Write)?;
        if self.legacy {
            // Only now that the log holding its tokens is durable. Should this removal be
            // lost in a crash, the log still wins at the next load.
            let legacy = self.dir.join(LEGACY_JOURNAL_FILE);
            match std::fs::remove_file(&legacy) {
                Ok(()) => warn!(
                    journal = %path.display(),
                    "migrated the version-1 journal {} to the log", legacy.display()
                ),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &legacy)(e)),
            }
            self.legacy = false;
        }
        let file = OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io("open", &path))?;
        self.file = Some(file);
        self.size = bytes.len() as u64;
        Ok(())
    }
}

/// The flushes made in each state directory, for the tests that count them.
#[cfg(test)]
pub(super) static SYNCS: std::sync::Mutex<Option<std::collections::HashMap<PathBuf, usize>>> =
    std::sync::Mutex::new(None);

/// Count a flush in `dir` (tests only).
fn synced(dir: &Path) {
    #[cfg(test)]
    {
        let mut syncs = SYNCS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *syncs
            .get_or_insert_with(Default::default)
            .entry(dir.to_path_buf())
            .or_insert(0) += 1;
    }
    let _ = dir;
}
