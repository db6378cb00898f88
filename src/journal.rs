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
//! recorded and `{"remove":[FINGERPRINT, ...]}` for tokens forgotten. A change appends its lines
//! and flushes them (one `fdatasync` per group of changes), so its cost does not grow with the
//! number of tokens held; when the log has grown past twice its live records it is compacted:
//! rewritten from them alone, atomically, like a token file. A version-1 journal
//! (`journal.json`, one document rewritten whole on every change) is migrated by the first
//! write.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{error, warn};
use zeroize::Zeroizing;

use crate::secret::Secret;
use crate::sink::STATE_DIR_MODE;

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
/// Operations waiting for the writer. Each set has at most one outstanding at a time, so this
/// only bounds bursts; a full queue makes senders wait, which is the back-pressure we want.
const QUEUE: usize = 1024;

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
    Write(#[source] crate::sink::SinkError),
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

/// One live token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub set: String,
    pub provider: String,
    pub fingerprint: String,
    #[serde(with = "secret_serde")]
    pub token: Secret,
    pub token_type: String,
    pub scope: String,
    /// Wall-clock times: the journal outlives the process, and with it its monotonic clock.
    #[serde(with = "humantime_serde")]
    pub issued_at: SystemTime,
    #[serde(with = "humantime_serde")]
    pub expires_at: SystemTime,
    /// When the set planned to replace it. A restart before then reuses the token.
    #[serde(with = "humantime_serde")]
    pub refresh_at: SystemTime,
    /// [`config_hash`] of the set when the token was issued.
    pub config_hash: String,
    /// The file the token was written to, so `revoke` can remove it.
    pub file: Option<PathBuf>,
}

mod secret_serde {
    use crate::secret::Secret;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &Secret, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.expose())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Secret, D::Error> {
        let s = zeroize::Zeroizing::new(String::deserialize(de)?);
        Ok(Secret::new(s.as_str()))
    }
}

mod humantime_serde {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &SystemTime, ser: S) -> Result<S::Ok, S::Error> {
        // Straight into the output: a string per timestamp was three allocations per entry
        // per commit.
        ser.collect_str(&humantime::format_rfc3339_millis(
            crate::sink::rfc3339_range(*t),
        ))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(de)?;
        humantime::parse_rfc3339(&s).map_err(D::Error::custom)
    }
}

/// The version-1 journal: one JSON document, rewritten whole on every change. Read to migrate
/// it; never written.
#[derive(Deserialize)]
struct LegacyDocument {
    version: u32,
    tokens: Vec<Entry>,
}

/// The log's first line.
#[derive(Serialize, Deserialize)]
struct Header {
    version: u32,
}

/// Every line after the header: a token recorded (or recorded again, replacing the earlier
/// record of the same fingerprint), or tokens forgotten.
#[derive(Deserialize)]
enum Line {
    #[serde(rename = "record")]
    Record(Box<Entry>),
    #[serde(rename = "remove")]
    Remove(Vec<String>),
}

/// Exclusive ownership of a state directory, for as long as this value lives.
#[derive(Debug)]
pub struct StateLock {
    lock: Flock<File>,
    dir: PathBuf,
}

/// How often the journal writer of a daemon makes sure its lock still guards the state
/// directory (besides before every commit): a stat each time. Two seconds keeps the window
/// in which a second process could take a removed directory short, and an idle daemon's
/// wake-ups under its budget of one a second.
const LOCK_CHECK: Duration = Duration::from_secs(2);

impl StateLock {
    /// Whether the lock file at the path is still the file this lock holds. A state
    /// directory removed (or its lock file replaced) while the daemon runs leaves the lock
    /// on a file nobody can find, and a second process would lock a new one beside it.
    pub fn still_guards(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (
            std::fs::symlink_metadata(self.dir.join(LOCK_FILE)),
            self.lock.metadata(),
        ) {
            (Ok(at_path), Ok(held)) => at_path.dev() == held.dev() && at_path.ino() == held.ino(),
            _ => false,
        }
    }

    /// Take the state directory's lock again if it was lost (see [`StateLock::still_guards`]):
    /// the directory is made again and locked, and the old lock released. `Ok(true)` when
    /// it was taken again; [`JournalError::Locked`] when another process holds it now.
    pub fn take_again(&mut self) -> Result<bool, JournalError> {
        if self.still_guards() {
            return Ok(false);
        }
        *self = lock_state_dir(&self.dir)?;
        Ok(true)
    }
}

/// Whether `meta` (of `path`) is what only the daemon's user can have written: owned by it
/// and writable by nobody else. This is sshd's StrictModes rule for `~/.ssh`.
fn ours_alone(path: &Path, meta: &std::fs::Metadata) -> Result<(), JournalError> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let unsafe_because = |why: String| JournalError::Unsafe {
        path: path.to_path_buf(),
        why,
    };
    if meta.uid() != me {
        return Err(unsafe_because(format!(
            "is owned by uid {}, not by tokenkeeper's user (uid {me})",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_because(format!(
            "is writable by group or others (mode {mode:04o})"
        )));
    }
    Ok(())
}

/// The directories above `state_dir` must not let another user swap it for one of theirs:
/// each is owned by the daemon's user or root, and not writable by others unless sticky.
fn ancestors_safe(dir: &Path) -> Result<(), JournalError> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    for a in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(a) else {
            continue;
        };
        let mode = meta.mode() & 0o7777;
        let why = if meta.uid() != me && meta.uid() != 0 {
            format!(
                "is owned by uid {}, neither tokenkeeper's user (uid {me}) nor root, and holds the state directory",
                meta.uid()
            )
        } else if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            format!(
                "is writable by others without the sticky bit (mode {mode:04o}), and holds the state directory"
            )
        } else {
            continue;
        };
        return Err(JournalError::Unsafe {
            path: a.to_path_buf(),
            why,
        });
    }
    Ok(())
}

/// Open a state file (journal or lock) without following a symlink, and refuse it unless it
/// is a regular file only the daemon's user can have written.
fn open_state_file(path: &Path, options: &mut OpenOptions) -> Result<File, JournalError> {
    let file = options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => JournalError::Unsafe {
                path: path.to_path_buf(),
                why: "is not a regular file (it is a symlink)".into(),
            },
            _ => io("open", path)(e),
        })?;
    let meta = file.metadata().map_err(io("stat", path))?;
    if !meta.is_file() {
        return Err(JournalError::Unsafe {
            path: path.to_path_buf(),
            why: "is not a regular file".into(),
        });
    }
    ours_alone(path, &meta)?;
    Ok(file)
}

/// Create `state_dir` (exactly 0700) and take its lock, without blocking. A state directory,
/// lock or journal another user owns or may write is refused, not repaired: what it holds
/// may be theirs.
pub fn lock_state_dir(dir: &Path) -> Result<StateLock, JournalError> {
    ancestors_safe(dir)?;
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => ours_alone(dir, &meta)?,
        // Not a directory: ensure_dir says so by name.
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io("stat", dir)(e)),
    }
    // It holds live tokens and is ours alone, so a read mode someone added is taken back.
    crate::sink::ensure_dir(dir, STATE_DIR_MODE, crate::sink::Existing::SetMode).map_err(|e| {
        JournalError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    })?;
    let path = dir.join(LOCK_FILE);
    let file = open_state_file(
        &path,
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(JOURNAL_MODE),
    )?;
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let pid = std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            return Err(JournalError::Locked { path, pid });
        }
        Err((_, e)) => return Err(io("lock", &path)(std::io::Error::from(e))),
    };
    // The pid inside is for the message above, and for operators; the lock is the flock.
    let pid = std::process::id().to_string();
    lock.set_len(0).map_err(io("write", &path))?;
    (&*lock)
        .write_all(pid.as_bytes())
        .map_err(io("write", &path))?;
    Ok(StateLock {
        lock,
        dir: dir.to_path_buf(),
    })
}

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
    for e in entries {
        let s = Stored::new(e).map_err(|source| JournalError::Corrupt {
            path: dir.join(JOURNAL_FILE),
            line: 0,
            source,
        })?;
        let len = s.line_len();
        live.insert(s.fingerprint.clone(), s.deadline, s, len);
    }
    Disk::new(dir.to_path_buf(), None).compact(&live)
}

/// Values by fingerprint, in the order they were (last) recorded, with the bytes their log
/// lines take and a queue by expiry. A record of a fingerprint already held replaces it and
/// moves it last, as its line in the log comes last.
struct Live<T> {
    next: u64,
    order: BTreeMap<u64, T>,
    by_fp: HashMap<String, (u64, usize)>,
    /// Soonest expiry first, by sequence number: an entry replaced or removed since stays
    /// queued until its time comes and is then passed over. Times are the daemon's monotonic
    /// clock's, not the wall clock's (see [`Stored::deadline`]).
    expiry: BinaryHeap<Reverse<(Instant, u64)>>,
    /// What a compaction writes: the log lines of every value held.
    bytes: usize,
}

impl<T> Default for Live<T> {
    fn default() -> Self {
        Live {
            next: 0,
            order: BTreeMap::new(),
            by_fp: HashMap::new(),
            expiry: BinaryHeap::new(),
            bytes: 0,
        }
    }
}

impl<T> Live<T> {
    fn insert(&mut self, fp: String, deadline: Instant, value: T, line_len: usize) {
        self.remove(&fp);
        self.order.insert(self.next, value);
        self.by_fp.insert(fp, (self.next, line_len));
        self.expiry.push(Reverse((deadline, self.next)));
        self.next += 1;
        self.bytes += line_len;
    }

    /// Whether `fp` was held.
    fn remove(&mut self, fp: &str) -> bool {
        match self.by_fp.remove(fp) {
            Some((seq, len)) => {
                self.order.remove(&seq);
                self.bytes -= len;
                true
            }
            None => false,
        }
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.order.values()
    }

    fn into_values(self) -> Vec<T> {
        self.order.into_values().collect()
    }

    /// Forget every value expired by `now`; returns their fingerprints. Each costs a pop from
    /// the queue, not a pass over everything held.
    fn prune(&mut self, now: Instant, fingerprint: impl Fn(&T) -> &str) -> Vec<String> {
        let mut gone = Vec::new();
        while let Some(Reverse((at, seq))) = self.expiry.peek().copied() {
            if at > now {
                break;
            }
            self.expiry.pop();
            if let Some(fp) = self.order.get(&seq).map(|v| fingerprint(v).to_string()) {
                self.remove(&fp);
                gone.push(fp);
            }
        }
        // Replaced and removed values leave their queue places behind; rebuild once they
        // outnumber the live ones, so the queue stays within twice what is held.
        if self.expiry.len() > 2 * self.order.len() + 1024 {
            let order = &self.order;
            self.expiry
                .retain(|Reverse((_, seq))| order.contains_key(seq));
        }
        gone
    }
}

/// A journaled token as the writer keeps it: serialized once, when recorded, so neither an
/// append nor a compaction serializes it again. At 10,000 tokens re-serializing was the
/// largest share of the daemon's CPU while it started.
struct Stored {
    fingerprint: String,
    /// When the writer may forget the token, by the daemon's monotonic clock: its expiry as
    /// it stood when recorded. The wall clock is not asked again: after it jumps forward,
    /// tokens still live at the provider would leave the journal before they are revoked,
    /// and a crash then would lose them.
    deadline: Instant,
    /// The entry as JSON: it holds the token, so it is wiped when dropped.
    json: Zeroizing<Vec<u8>>,
}

/// A record line is `{"record":` + the entry + `}` + a newline.
const RECORD_OPEN: &[u8] = b"{\"record\":";
const RECORD_CLOSE: &[u8] = b"}\n";

impl Stored {
    fn new(e: &Entry) -> Result<Stored, serde_json::Error> {
        Self::kept_for(e, remaining(e, SystemTime::now()))
    }

    /// A journaled token kept at least `for_at_least` whatever its expiry says.
    fn kept_for(e: &Entry, for_at_least: Duration) -> Result<Stored, serde_json::Error> {
        Ok(Stored {
            fingerprint: e.fingerprint.clone(),
            deadline: Instant::now() + remaining(e, SystemTime::now()).max(for_at_least),
            json: Zeroizing::new(serde_json::to_vec(e)?),
        })
    }

    /// The entry back, for the in-memory journal's view (tests).
    fn entry(&self) -> Option<Entry> {
        serde_json::from_slice(&self.json).ok()
    }

    fn line_len(&self) -> usize {
        RECORD_OPEN.len() + self.json.len() + RECORD_CLOSE.len()
    }

    fn push_line(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(RECORD_OPEN);
        out.extend_from_slice(&self.json);
        out.extend_from_slice(RECORD_CLOSE);
    }
}

/// A remove line for `fps`.
fn push_remove(out: &mut Vec<u8>, fps: &[&str]) {
    out.extend_from_slice(b"{\"remove\":");
    // Fingerprints are hex: serializing a list of strings cannot fail.
    if serde_json::to_writer(&mut *out, fps).is_err() {
        out.extend_from_slice(b"[]");
    }
    out.extend_from_slice(b"}\n");
}

/// How long a journaled token that the wall clock calls expired is still offered for
/// revocation, and kept in the journal meanwhile. The wall clock may have jumped forward while
/// the daemon was down, and then the provider still honours the token; one revocation settles
/// it either way (a token the provider no longer knows counts as revoked). Fifteen minutes is
/// Voucherify's whole token lifetime: enough to ride out a short outage, short enough not to
/// hold a budget slot for long for a token that most likely is gone.
pub const CLOCK_DOUBT_WINDOW: Duration = Duration::from_secs(15 * 60);

/// A log may hold this much besides twice its live records before it is compacted: a
/// compaction rewrites every live record, so spacing them by at least the live size (and this
/// slack, for small journals) keeps the bytes written per change constant on average, and
/// the file at most about twice what it holds.
const COMPACT_SLACK: u64 = 1 << 20;

/// The log on disk, as the writer appends to it.
struct Disk {
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
    fn new(dir: PathBuf, lock: Option<StateLock>) -> Disk {
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
    /// the log has grown past its bound or its state is unknown, by a compaction.
    fn commit(&mut self, lines: &[u8], live: &Live<Stored>) -> Result<(), JournalError> {
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
        if let Err(e) = file.write_all(lines).and_then(|()| file.sync_data()) {
            self.file = None;
            return Err(io("append to", &self.path())(e));
        }
        self.size += lines.len() as u64;
        Ok(())
    }

    /// Whether the lock no longer guards the directory (see [`StateLock::still_guards`]).
    fn lost(&self) -> bool {
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
        crate::sink::write_file(&path, JOURNAL_MODE, &bytes).map_err(JournalError::Write)?;
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

enum Op {
    Record(Box<Stored>),
    Remove(Vec<String>),
    /// What the journal holds once the changes queued before this one are in.
    Entries(oneshot::Sender<Vec<Entry>>),
}

/// A cheap handle on the journal writer task. Every change is acknowledged only once it is
/// on disk (or, for [`Journal::memory`], in memory).
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<(Op, oneshot::Sender<Result<(), String>>)>,
}

/// The writer's state, shared with the blocking thread that writes it. Only one of the two
/// touches it at a time (the writer awaits the thread), so the lock is never contended; it is
/// there so that a thread that panicked leaves the tokens behind, not takes them along.
struct State {
    live: Live<Stored>,
    disk: Option<Disk>,
}

fn locked(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Journal {
    /// Start the writer for `dir`, beginning from `entries` (what [`load`] returned). Its
    /// first write is a compaction: it migrates a version-1 journal and cuts off a torn tail.
    pub fn start(dir: PathBuf, entries: Vec<Entry>) -> Journal {
        Self::spawn(Some(dir), entries, None).0
    }

    /// [`Journal::start`] for a process that runs on (the daemon): the writer keeps `lock`,
    /// and makes sure before every commit, and every [`LOCK_CHECK`], that it still guards
    /// `dir`. If the directory was removed, it is made again, locked, and the whole journal
    /// written there; if another process holds it by then, nothing more is written into it.
    pub fn start_locked(dir: PathBuf, entries: Vec<Entry>, lock: StateLock) -> Journal {
        Self::spawn(Some(dir), entries, Some(lock)).0
    }

    /// A journal that lives in memory only, for tests; the returned watch shows its content.
    pub fn memory() -> (Journal, tokio::sync::watch::Receiver<Vec<Entry>>) {
        Self::spawn(None, Vec::new(), None)
    }

    fn spawn(
        dir: Option<PathBuf>,
        entries: Vec<Entry>,
        lock: Option<StateLock>,
    ) -> (Journal, tokio::sync::watch::Receiver<Vec<Entry>>) {
        let (tx, mut rx) = mpsc::channel::<(Op, oneshot::Sender<Result<(), String>>)>(QUEUE);
        let (view_tx, view_rx) = tokio::sync::watch::channel(entries.clone());
        tokio::spawn(async move {
            let mut live = Live::default();
            // What the journal held at start is kept at least as long as the daemon offers an
            // expired-looking token for revocation: the clock may be what is wrong.
            for s in entries
                .iter()
                .filter_map(|e| Stored::kept_for(e, CLOCK_DOUBT_WINDOW).ok())
            {
                let len = s.line_len();
                live.insert(s.fingerprint.clone(), s.deadline, s, len);
            }
            let has_lock = lock.is_some();
            let state = Arc::new(Mutex::new(State {
                live,
                disk: dir.map(|d| Disk::new(d, lock)),
            }));
            // Set once the lock could not be taken again: the ticks stop trying (and logging)
            // every LOCK_CHECK; each commit still tries, and says so.
            let mut gave_up = false;
            let mut tick = tokio::time::interval(LOCK_CHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let first = if has_lock {
                    tokio::select! {
                        op = rx.recv() => match op {
                            Some(op) => Some(op),
                            None => break,
                        },
                        _ = tick.tick() => {
                            if gave_up || !locked(&state).disk.as_ref().is_some_and(Disk::lost) {
                                continue;
                            }
                            // Lost: a commit of nothing takes it again and rewrites the journal.
                            None
                        }
                    }
                } else {
                    match rx.recv().await {
                        Some(op) => Some(op),
                        None => break,
                    }
                };
                // Group commit: everything queued while the last write ran goes in this one.
                let mut batch: Vec<_> = first.into_iter().collect();
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let mut acks = Vec::with_capacity(batch.len());
                let mut lines = Zeroizing::new(Vec::new());
                let mut readers = Vec::new();
                {
                    let mut st = locked(&state);
                    for (op, ack) in batch {
                        match op {
                            Op::Record(s) => {
                                s.push_line(&mut lines);
                                let len = s.line_len();
                                st.live.insert(s.fingerprint.clone(), s.deadline, *s, len);
                            }
                            Op::Remove(fps) => {
                                let held: Vec<&str> = fps
                                    .iter()
                                    .filter(|fp| st.live.remove(fp))
                                    .map(String::as_str)
                                    .collect();
                                if !held.is_empty() {
                                    push_remove(&mut lines, &held);
                                }
                            }
                            Op::Entries(reply) => readers.push(reply),
                        }
                        acks.push(ack);
                    }
                    // Expired tokens need no revocation and no record: this is what keeps the
                    // journal from growing when revocations fail.
                    let expired = st.live.prune(Instant::now(), |s| s.fingerprint.as_str());
                    if !expired.is_empty() {
                        let fps: Vec<&str> = expired.iter().map(String::as_str).collect();
                        push_remove(&mut lines, &fps);
                    }
                }
                let result = if locked(&state).disk.is_some() {
                    let st = state.clone();
                    tokio::task::spawn_blocking(move || {
                        let mut st = locked(&st);
                        let State { live, disk } = &mut *st;
                        match disk {
                            Some(d) => d.commit(&lines, live),
                            None => Ok(()),
                        }
                    })
                    .await
                    .map_err(|e| format!("journal writer thread failed: {e}"))
                    .and_then(|r| r.map_err(|e| crate::error_chain(&e)))
                } else {
                    Ok(())
                };
                gave_up = result.is_err() && locked(&state).disk.as_ref().is_some_and(Disk::lost);
                if let Err(e) = &result {
                    // Kept in memory: the next change rewrites the log whole.
                    error!(error = %e, "could not write the state journal");
                }
                // Only the in-memory journal of tests has a reader; a copy for nobody would
                // cost a full clone per commit.
                if view_tx.receiver_count() > 0 {
                    let view = locked(&state)
                        .live
                        .values()
                        .filter_map(Stored::entry)
                        .collect();
                    view_tx.send_replace(view);
                }
                for ack in acks {
                    let _ = ack.send(result.clone());
                }
                if !readers.is_empty() {
                    let st = locked(&state);
                    for reply in readers {
                        let _ = reply.send(st.live.values().filter_map(Stored::entry).collect());
                    }
                }
            }
        });
        (Journal { tx }, view_rx)
    }

    async fn op(&self, op: Op) -> Result<(), String> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send((op, ack))
            .await
            .map_err(|_| JournalError::Closed.to_string())?;
        done.await.map_err(|_| JournalError::Closed.to_string())?
    }

    /// Record a live token; returns once the record is durable. An error is logged by the
    /// writer and returned for the caller's log line; the record stays in memory and reaches
    /// the disk with the next change that can be written.
    pub async fn record(&self, entry: Entry) -> Result<(), String> {
        // Serialized here, on the recording set's thread, not in the one writer.
        let stored =
            Stored::new(&entry).map_err(|e| format!("cannot serialize the journal entry: {e}"))?;
        self.op(Op::Record(Box::new(stored))).await
    }

    /// Every live token the journal holds, including all changes made before this call; empty
    /// if the writer is gone.
    pub async fn entries(&self) -> Vec<Entry> {
        let (reply, answer) = oneshot::channel();
        let (ack, _) = oneshot::channel();
        if self.tx.send((Op::Entries(reply), ack)).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// Forget tokens that were revoked (or expired), by fingerprint.
    pub async fn remove(&self, fingerprints: Vec<String>) {
        if fingerprints.is_empty() {
            return;
        }
        if let Err(e) = self.op(Op::Remove(fingerprints)).await {
            warn!(error = %e, "journal not updated after revocation; the next start will find those tokens gone");
        }
    }
}

/// Remaining life of a journaled token by the wall clock.
pub fn remaining(e: &Entry, now: SystemTime) -> Duration {
    e.expires_at.duration_since(now).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn entry(fp: &str, expires_in: u64) -> Entry {
        let now = SystemTime::now();
        Entry {
            set: "s".into(),
            provider: "p".into(),
            fingerprint: fp.into(),
            token: Secret::new(format!("tok-{fp}")),
            token_type: "Bearer".into(),
            scope: "api".into(),
            issued_at: now,
            expires_at: now + Duration::from_secs(expires_in),
            refresh_at: now + Duration::from_secs(expires_in / 2),
            config_hash: "h".into(),
            file: Some("/run/x".into()),
        }
    }

    #[tokio::test]
    async fn entries_reflect_every_change_made_before() {
        let (j, _view) = Journal::memory();
        assert!(j.entries().await.is_empty());
        j.record(entry("aa", 600)).await.unwrap();
        j.record(entry("bb", 600)).await.unwrap();
        j.remove(vec!["aa".into()]).await;
        let fps: Vec<String> = j
            .entries()
            .await
            .into_iter()
            .map(|e| e.fingerprint)
            .collect();
        assert_eq!(fps, ["bb"]);
    }

    #[test]
    fn state_dir_is_0700_and_locked_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let lock = lock_state_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);
        let err = lock_state_dir(&dir).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(lock);
        // Loosened by someone: tightened back at the next start.
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        lock_state_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);
    }

    fn fingerprints(dir: &Path) -> Vec<String> {
        load(dir)
            .unwrap()
            .into_iter()
            .map(|e| e.fingerprint)
            .collect()
    }

    #[test]
    fn a_state_dir_journal_or_lock_another_user_could_write_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        drop(lock_state_dir(&dir).unwrap());
        let refused = |why: &str| {
            let err = lock_state_dir(&dir)
                .map(|_| ())
                .and_then(|()| load(&dir).map(|_| ()))
                .unwrap_err();
            assert!(matches!(err, JournalError::Unsafe { .. }), "{err}");
            assert!(err.to_string().contains(why), "{err}");
        };
        std::fs::set_permissions(&dir, Permissions::from_mode(0o707)).unwrap();
        refused("is writable by group or others (mode 0707)");
        std::fs::set_permissions(&dir, Permissions::from_mode(0o700)).unwrap();
        save(&dir, &[entry("aa", 600)]).unwrap();
        std::fs::set_permissions(dir.join(JOURNAL_FILE), Permissions::from_mode(0o620)).unwrap();
        refused("journal.log is writable by group or others (mode 0620)");
        std::fs::remove_file(dir.join(JOURNAL_FILE)).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("elsewhere"), dir.join(JOURNAL_FILE)).unwrap();
        refused("journal.log is not a regular file (it is a symlink)");
        std::fs::remove_file(dir.join(JOURNAL_FILE)).unwrap();
        std::fs::set_permissions(dir.join(LOCK_FILE), Permissions::from_mode(0o602)).unwrap();
        refused("lock is writable by group or others (mode 0602)");
        std::fs::set_permissions(dir.join(LOCK_FILE), Permissions::from_mode(0o600)).unwrap();
        // Above it: a directory others may write without the sticky bit.
        std::fs::set_permissions(tmp.path(), Permissions::from_mode(0o777)).unwrap();
        refused("is writable by others without the sticky bit (mode 0777)");
        std::fs::set_permissions(tmp.path(), Permissions::from_mode(0o1777)).unwrap();
        lock_state_dir(&dir).unwrap();
    }

    #[test]
    fn the_log_is_one_json_object_a_line_and_replays_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        save(tmp.path(), &[entry("aa", 600), entry("bb", 900)]).unwrap();
        let text = std::fs::read_to_string(tmp.path().join(JOURNAL_FILE)).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0], serde_json::json!({ "version": 2 }));
        assert_eq!(lines[1]["record"]["fingerprint"], "aa");
        assert_eq!(lines[2]["record"]["token"], "tok-aa".replace("aa", "bb"));
        assert!(text.ends_with('\n'));
        // Appended by hand as the writer would: a replacement moves last, a removal forgets.
        let mut more = String::new();
        let mut again = Vec::new();
        Stored::new(&entry("aa", 300))
            .unwrap()
            .push_line(&mut again);
        more.push_str(std::str::from_utf8(&again).unwrap());
        more.push_str("{\"remove\":[\"bb\",\"zz\"]}\n");
        std::fs::write(tmp.path().join(JOURNAL_FILE), text + &more).unwrap();
        assert_eq!(fingerprints(tmp.path()), ["aa"]);
    }

    #[test]
    fn a_torn_last_line_is_passed_over_and_any_other_bad_line_is_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        save(tmp.path(), &[entry("aa", 600)]).unwrap();
        let path = tmp.path().join(JOURNAL_FILE);
        let whole = std::fs::read_to_string(&path).unwrap();
        let mut line = Vec::new();
        Stored::new(&entry("bb", 600)).unwrap().push_line(&mut line);
        // A crash in the middle of an append: any prefix of the line, without its newline.
        for cut in [1, 10, line.len() / 2, line.len() - 1] {
            let torn = [whole.as_bytes(), &line[..cut]].concat();
            std::fs::write(&path, torn).unwrap();
            assert_eq!(fingerprints(tmp.path()), ["aa"], "cut at {cut}");
        }
        std::fs::write(&path, format!("{whole}{{\"record\":{{}}}}\n")).unwrap();
        match load(tmp.path()) {
            Err(JournalError::Corrupt { line: 3, .. }) => {}
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, "{\"version\":7}\n").unwrap();
        assert!(matches!(
            load(tmp.path()),
            Err(JournalError::Version { found: 7, .. })
        ));
        std::fs::write(&path, "").unwrap();
        assert!(matches!(
            load(tmp.path()),
            Err(JournalError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn a_version_1_journal_is_read_and_migrated_by_the_first_write() {
        let tmp = tempfile::tempdir().unwrap();
        let legacy = tmp.path().join(LEGACY_JOURNAL_FILE);
        let doc =
            serde_json::json!({ "version": 1, "tokens": [entry("aa", 600), entry("bb", 600)] });
        std::fs::write(&legacy, doc.to_string()).unwrap();
        let entries = load(tmp.path()).unwrap();
        assert_eq!(entries.len(), 2);
        let j = Journal::start(tmp.path().to_path_buf(), entries);
        j.record(entry("cc", 600)).await.unwrap();
        assert!(!legacy.exists());
        assert_eq!(fingerprints(tmp.path()), ["aa", "bb", "cc"]);
        // A migration cut short: the log was written, the document not yet removed. The log
        // wins, whatever the document says.
        std::fs::write(&legacy, doc.to_string()).unwrap();
        j.remove(vec!["aa".into()]).await;
        assert_eq!(fingerprints(tmp.path()), ["bb", "cc"]);
    }

    #[tokio::test]
    async fn the_log_stays_within_twice_its_live_records_however_many_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(JOURNAL_FILE);
        let j = Journal::start(tmp.path().to_path_buf(), Vec::new());
        let line = {
            let mut v = Vec::new();
            Stored::new(&entry("00000000", 600))
                .unwrap()
                .push_line(&mut v);
            v.len() as u64
        };
        // 20 live tokens, each replaced 400 times: 8,000 records, about 4 MB appended.
        let mut largest = 0;
        for round in 0..400 {
            for i in 0..20 {
                let old = format!("{i:02}{:06}", round);
                let new = format!("{i:02}{:06}", round + 1);
                j.record(entry(&new, 600)).await.unwrap();
                j.remove(vec![old]).await;
            }
            largest = largest.max(std::fs::metadata(&path).unwrap().len());
        }
        assert_eq!(fingerprints(tmp.path()).len(), 20);
        assert!(
            largest <= 2 * 20 * line + COMPACT_SLACK + 2 * line,
            "the log reached {largest} bytes for 20 records of {line}"
        );
        assert!(8_000 * line > 2 * largest, "it was compacted");
    }

    #[tokio::test]
    async fn a_failed_write_is_caught_up_by_the_next_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        let j = Journal::start(dir.clone(), Vec::new());
        j.record(entry("aa", 600)).await.unwrap();
        // The log replaced by a directory: appends and rewrites both fail.
        let path = dir.join(JOURNAL_FILE);
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(j.record(entry("bb", 600)).await.is_err());
        std::fs::remove_dir(&path).unwrap();
        // Nothing was lost: the next commit writes everything held.
        j.record(entry("cc", 600)).await.unwrap();
        assert_eq!(fingerprints(&dir), ["aa", "bb", "cc"]);
    }

    #[test]
    fn save_and_load_round_trip_with_an_owner_only_file() {
        let tmp = tempfile::tempdir().unwrap();
        let e = vec![entry("aa", 600), entry("bb", 900)];
        save(tmp.path(), &e).unwrap();
        let path = tmp.path().join(JOURNAL_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        let back = load(tmp.path()).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].token.expose(), "tok-bb");
        // Times survive to the millisecond.
        let d = back[0]
            .expires_at
            .duration_since(e[0].expires_at)
            .unwrap_or_else(|e| e.duration());
        assert!(d < Duration::from_millis(1));
        assert!(load(&tmp.path().join("none")).unwrap().is_empty());
    }

    #[test]
    fn a_corrupt_version_1_journal_is_an_error_not_an_empty_one() {
        let tmp = tempfile::tempdir().unwrap();
        let legacy = tmp.path().join(LEGACY_JOURNAL_FILE);
        std::fs::write(&legacy, "{\"version\":1,\"tok").unwrap();
        assert!(matches!(
            load(tmp.path()),
            Err(JournalError::Corrupt { .. })
        ));
        std::fs::write(&legacy, "{\"version\":9,\"tokens\":[]}").unwrap();
        assert!(matches!(
            load(tmp.path()),
            Err(JournalError::Version { found: 9, .. })
        ));
    }

    #[tokio::test]
    async fn the_writer_records_removes_and_prunes_expired_tokens() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::start(tmp.path().to_path_buf(), Vec::new());
        j.record(entry("old", 0)).await.unwrap();
        j.record(entry("aa", 600)).await.unwrap();
        j.record(entry("bb", 600)).await.unwrap();
        assert_eq!(fingerprints(tmp.path()), ["aa", "bb"]);
        j.remove(vec!["aa".into()]).await;
        assert_eq!(fingerprints(tmp.path()), ["bb"]);
    }

    /// What the journal held at start may be expired only by a clock that jumped: it stays
    /// while the daemon offers it for revocation, then goes. Tokens recorded while running
    /// leave by the daemon's own clock, not the wall clock's.
    #[tokio::test(start_paused = true)]
    async fn tokens_expired_by_the_wall_clock_stay_until_the_doubt_window_ends() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::start(tmp.path().to_path_buf(), vec![entry("old", 0)]);
        j.record(entry("aa", 60)).await.unwrap();
        assert_eq!(fingerprints(tmp.path()), ["old", "aa"]);
        tokio::time::advance(Duration::from_secs(61)).await;
        j.record(entry("bb", 6000)).await.unwrap();
        assert_eq!(fingerprints(tmp.path()), ["old", "bb"]);
        tokio::time::advance(CLOCK_DOUBT_WINDOW).await;
        j.record(entry("cc", 6000)).await.unwrap();
        assert_eq!(fingerprints(tmp.path()), ["bb", "cc"]);
    }

    #[tokio::test]
    async fn a_removed_state_dir_is_locked_again_and_rewritten_at_the_next_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let j = Journal::start_locked(dir.clone(), Vec::new(), lock_state_dir(&dir).unwrap());
        j.record(entry("aa", 600)).await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(lock_state_dir(&dir).is_ok(), "nothing guards it now");
        std::fs::remove_dir_all(&dir).unwrap();
        j.record(entry("bb", 600)).await.unwrap();
        let on_disk: Vec<String> = load(&dir)
            .unwrap()
            .into_iter()
            .map(|e| e.fingerprint)
            .collect();
        assert_eq!(on_disk, vec!["aa", "bb"]);
        assert!(matches!(
            lock_state_dir(&dir),
            Err(JournalError::Locked { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    #[allow(clippy::disallowed_methods)] // the writer's blocking thread runs in real time
    async fn a_removed_state_dir_is_locked_again_without_a_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let j = Journal::start_locked(dir.clone(), Vec::new(), lock_state_dir(&dir).unwrap());
        j.record(entry("aa", 600)).await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // Each pause lets a check run. Only read meanwhile: a lock taken here would be in the
        // writer's way.
        let fingerprints = || -> Vec<String> {
            load(&dir)
                .map(|es| es.into_iter().map(|e| e.fingerprint).collect())
                .unwrap_or_default()
        };
        for _ in 0..200 {
            tokio::time::sleep(LOCK_CHECK).await;
            if !fingerprints().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(fingerprints(), vec!["aa"]);
        assert!(matches!(
            lock_state_dir(&dir),
            Err(JournalError::Locked { .. })
        ));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let e = entry("aa", 600);
        assert!(!format!("{e:?}").contains("tok-aa"));
    }
}
