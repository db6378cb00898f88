//! The state journal: every live token tokenkeeper holds, on disk, so that neither a crash
//! nor a restart loses track of one.
//!
//! A token is recorded (and the record flushed) before it is written to its file, and dropped
//! from the journal once it is revoked or has expired. On start the daemon reuses a journaled
//! token that still fits its set, and revokes the rest; `tokenkeeper revoke` revokes whatever
//! the journal holds. The journal is one JSON file in `state_dir` (0700), mode 0600, replaced
//! atomically like the token files. One process owns a state directory at a time: it holds an
//! exclusive `flock` on `state_dir/lock`.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};
use zeroize::Zeroizing;

use crate::config::{OAuth2Endpoints, ProviderConfig, ProviderKind, SetConfig};
use crate::secret::Secret;

/// The journal's file name inside `state_dir`.
pub const JOURNAL_FILE: &str = "journal.json";
/// The lock file's name inside `state_dir`.
pub const LOCK_FILE: &str = "lock";
/// Exact mode of `state_dir`: it holds live tokens, so only the daemon's user may enter.
pub const STATE_DIR_MODE: u32 = 0o700;
/// Exact mode of the journal: owner read-write, nobody else.
const JOURNAL_MODE: u32 = 0o600;
/// Format version, so a future layout can be told apart instead of misread.
const VERSION: u32 = 1;
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
    #[error("{path} is not a tokenkeeper journal", path = path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} has journal version {found}; this tokenkeeper reads version {VERSION}", path = path.display())]
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

#[derive(Deserialize)]
struct Document {
    version: u32,
    tokens: Vec<Entry>,
}

/// [`Document`] as written: the entries borrowed, not copied for each commit.
#[derive(Serialize)]
struct DocumentRef<'a> {
    version: u32,
    tokens: &'a [Entry],
}

/// Room to reserve per entry when serializing: a typical entry takes 400 to 500 bytes, so
/// the buffer is seldom regrown (each regrowth copies megabytes at 10,000 entries).
const BYTES_PER_ENTRY: usize = 512;

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

/// Exclusive ownership of a state directory, for as long as this value lives.
#[derive(Debug)]
pub struct StateLock {
    lock: Flock<File>,
    dir: PathBuf,
}

/// How often the journal writer of a daemon makes sure its lock still guards the state
/// directory (besides before every commit): a stat each time, and a second is short
/// enough that a second process finds the directory locked again by the time it looks.
const LOCK_CHECK: Duration = Duration::from_secs(1);

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

/// Read the journal; a missing file is an empty journal.
pub fn load(dir: &Path) -> Result<Vec<Entry>, JournalError> {
    let path = dir.join(JOURNAL_FILE);
    let mut file = match open_state_file(&path, OpenOptions::new().read(true)) {
        Ok(f) => f,
        Err(JournalError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let mut bytes = Zeroizing::new(Vec::new());
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(io("read", &path))?;
    let doc: Document = serde_json::from_slice(&bytes).map_err(|source| JournalError::Corrupt {
        path: path.clone(),
        source,
    })?;
    if doc.version != VERSION {
        return Err(JournalError::Version {
            path,
            found: doc.version,
        });
    }
    Ok(doc.tokens)
}

/// Replace the journal with `entries`, atomically and durably.
pub fn save(dir: &Path, entries: &[Entry]) -> Result<(), JournalError> {
    let path = dir.join(JOURNAL_FILE);
    let doc = DocumentRef {
        version: VERSION,
        tokens: entries,
    };
    let mut bytes = Zeroizing::new(Vec::with_capacity(
        entries
            .len()
            .saturating_mul(BYTES_PER_ENTRY)
            .saturating_add(64),
    ));
    serde_json::to_writer(&mut *bytes, &doc).map_err(|source| JournalError::Corrupt {
        path: path.clone(),
        source,
    })?;
    crate::sink::write_file(&path, JOURNAL_MODE, &bytes).map_err(JournalError::Write)
}

/// A journaled token as the writer keeps it: serialized once, when recorded, so a commit
/// joins bytes instead of serializing every token again. At 10,000 tokens each commit
/// re-serialized megabytes, the largest share of the daemon's CPU while it started.
struct Stored {
    fingerprint: String,
    expires_at: SystemTime,
    /// The entry as JSON: it holds the token, so it is wiped when dropped.
    json: Zeroizing<Vec<u8>>,
}

impl Stored {
    fn new(e: &Entry) -> Result<Stored, serde_json::Error> {
        Ok(Stored {
            fingerprint: e.fingerprint.clone(),
            expires_at: e.expires_at,
            json: Zeroizing::new(serde_json::to_vec(e)?),
        })
    }

    /// The entry back, for the in-memory journal's view (tests).
    fn entry(&self) -> Option<Entry> {
        serde_json::from_slice(&self.json).ok()
    }
}

/// The journal document for `stored`: byte for byte what serde writes for a [`DocumentRef`]
/// of the same entries (a test holds the two equal).
fn document(stored: &[Stored]) -> Zeroizing<Vec<u8>> {
    let head = format!("{{\"version\":{VERSION},\"tokens\":[");
    let len = stored.iter().map(|s| s.json.len() + 1).sum::<usize>() + head.len() + 2;
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    out.extend_from_slice(head.as_bytes());
    for (i, s) in stored.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&s.json);
    }
    out.extend_from_slice(b"]}");
    out
}

/// Before a commit: make sure `lock` still guards `dir`, taking it again if the directory
/// was removed. Writing into a directory another process has locked since would overwrite
/// its journal, so that is refused.
fn guard(lock: Option<&mut StateLock>, dir: &Path) -> Result<(), JournalError> {
    let Some(lock) = lock else {
        return Ok(());
    };
    match lock.take_again() {
        Ok(false) => Ok(()),
        Ok(true) => {
            warn!(state_dir = %dir.display(), "the state directory was removed or its lock replaced; locked it again and wrote the whole journal there");
            Ok(())
        }
        Err(e) => {
            error!(state_dir = %dir.display(), error = %crate::error_chain(&e), "lost the state directory's lock; the journal is kept in memory only, and tokens issued now are journaled nowhere: stop this daemon");
            Err(e)
        }
    }
}

fn save_stored(dir: &Path, stored: &[Stored]) -> Result<(), JournalError> {
    crate::sink::write_file(&dir.join(JOURNAL_FILE), JOURNAL_MODE, &document(stored))
        .map_err(JournalError::Write)
}

enum Op {
    Record(Box<Stored>),
    Remove(Vec<String>),
}

/// A cheap handle on the journal writer task. Every change is acknowledged only once it is
/// on disk (or, for [`Journal::memory`], in memory).
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<(Op, oneshot::Sender<Result<(), String>>)>,
}

impl Journal {
    /// Start the writer for `dir`, beginning from `entries` (what [`load`] returned).
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
            let mut lock = lock;
            // Set once the lock could not be taken again: the ticks stop trying (and logging)
            // every second; each commit still tries, and says so.
            let mut gave_up = false;
            let mut tick = tokio::time::interval(LOCK_CHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut entries: Vec<Stored> =
                entries.iter().filter_map(|e| Stored::new(e).ok()).collect();
            // The fingerprints in `entries`, so a batch finds what it replaces without a
            // pass over the whole journal.
            let mut index: HashSet<String> =
                entries.iter().map(|e| e.fingerprint.clone()).collect();
            loop {
                let first = if lock.is_some() {
                    tokio::select! {
                        op = rx.recv() => op,
                        _ = tick.tick() => {
                            if gave_up || lock.as_ref().is_none_or(StateLock::still_guards) {
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
                if first.is_none() && rx.is_closed() && rx.is_empty() {
                    break;
                }
                // Group commit: everything queued while the last write ran goes in this one.
                let mut batch: Vec<_> = first.into_iter().collect();
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let mut acks = Vec::with_capacity(batch.len());
                // One pass over the journal per batch, not one per operation: with 10,000
                // sets a start records 10,000 tokens, and a scan per record is quadratic.
                let mut recorded: Vec<Stored> = Vec::new();
                // The fingerprints in `recorded`: a token recorded twice or recorded and
                // removed in one batch is rare, and only then is `recorded` scanned.
                let mut in_batch: HashSet<String> = HashSet::new();
                let mut gone: HashSet<String> = HashSet::new();
                for (op, ack) in batch {
                    match op {
                        Op::Record(e) => {
                            gone.remove(&e.fingerprint);
                            if !in_batch.insert(e.fingerprint.clone()) {
                                recorded.retain(|x| x.fingerprint != e.fingerprint);
                            }
                            recorded.push(*e);
                        }
                        Op::Remove(fps) => {
                            let hit = fps.iter().fold(false, |hit, f| in_batch.remove(f) | hit);
                            if hit {
                                recorded.retain(|x| !fps.contains(&x.fingerprint));
                            }
                            gone.extend(fps);
                        }
                    }
                    acks.push(ack);
                }
                // Drop what this batch removes or records anew. A batch of new tokens (all
                // of a start's batches) touches none of the journal, and is not checked
                // against every entry.
                let mut drop_fps: HashSet<String> = gone;
                drop_fps.extend(recorded.iter().map(|e| e.fingerprint.clone()));
                drop_fps.retain(|fp| index.contains(fp));
                if !drop_fps.is_empty() {
                    entries.retain(|x| !drop_fps.contains(&x.fingerprint));
                    for fp in &drop_fps {
                        index.remove(fp);
                    }
                }
                index.extend(recorded.iter().map(|e| e.fingerprint.clone()));
                entries.extend(recorded);
                // Expired tokens need no revocation and no record: this is what keeps the
                // journal from growing when revocations fail.
                let now = SystemTime::now();
                entries.retain(|e| {
                    let live = e.expires_at > now;
                    if !live {
                        index.remove(&e.fingerprint);
                    }
                    live
                });
                let result = match &dir {
                    Some(dir) => {
                        let dir = dir.clone();
                        // The entries travel to the writer thread and back instead of being
                        // copied: at 10,000 tokens a copy per commit is megabytes.
                        let owned = std::mem::take(&mut entries);
                        let mut held = lock.take();
                        match tokio::task::spawn_blocking(move || {
                            let r =
                                guard(held.as_mut(), &dir).and_then(|()| save_stored(&dir, &owned));
                            (owned, held, r)
                        })
                        .await
                        {
                            Ok((back, held, Ok(()))) => {
                                entries = back;
                                lock = held;
                                Ok(())
                            }
                            Ok((back, held, Err(e))) => {
                                entries = back;
                                lock = held;
                                Err(crate::error_chain(&e))
                            }
                            // The thread panicked and took the entries with it. Unreachable
                            // in practice (save returns its errors); keeping the last view
                            // is the best left.
                            Err(e) => {
                                entries = view_tx
                                    .borrow()
                                    .iter()
                                    .filter_map(|e| Stored::new(e).ok())
                                    .collect();
                                index = entries.iter().map(|e| e.fingerprint.clone()).collect();
                                Err(format!("journal writer thread failed: {e}"))
                            }
                        }
                    }
                    None => Ok(()),
                };
                gave_up = result.is_err() && lock.as_ref().is_some_and(|l| !l.still_guards());
                if let Err(e) = &result {
                    // Kept in memory: the next change writes it all again.
                    error!(error = %e, "could not write the state journal");
                }
                // Only the in-memory journal of tests has a reader; a copy for nobody would
                // cost a full clone per commit.
                if view_tx.receiver_count() > 0 {
                    view_tx.send_replace(entries.iter().filter_map(Stored::entry).collect());
                }
                for ack in acks {
                    let _ = ack.send(result.clone());
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
    /// writer and returned for the caller's log line; the record stays queued in memory.
    pub async fn record(&self, entry: Entry) -> Result<(), String> {
        // Serialized here, on the recording set's thread, not in the one writer.
        let stored =
            Stored::new(&entry).map_err(|e| format!("cannot serialize the journal entry: {e}"))?;
        self.op(Op::Record(Box::new(stored))).await
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
        refused("journal.json is writable by group or others (mode 0620)");
        std::fs::remove_file(dir.join(JOURNAL_FILE)).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("elsewhere"), dir.join(JOURNAL_FILE)).unwrap();
        refused("journal.json is not a regular file (it is a symlink)");
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
    fn the_writers_document_is_what_serde_writes() {
        let e = vec![entry("aa", 600), entry("bb", 900)];
        let stored: Vec<Stored> = e.iter().map(|x| Stored::new(x).unwrap()).collect();
        let serde = serde_json::to_vec(&DocumentRef {
            version: VERSION,
            tokens: &e,
        })
        .unwrap();
        assert_eq!(*document(&stored), serde);
        let none = serde_json::to_vec(&DocumentRef {
            version: VERSION,
            tokens: &[],
        })
        .unwrap();
        assert_eq!(*document(&[]), none);
        // The view reads back what was stored (times to the millisecond, as on disk).
        let back = stored[1].entry().unwrap();
        assert_eq!(back.token.expose(), "tok-bb");
        assert_eq!(serde_json::to_vec(&back).unwrap(), *stored[1].json);
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
    fn a_corrupt_journal_is_an_error_not_an_empty_one() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(JOURNAL_FILE), "{\"version\":1,\"tok").unwrap();
        assert!(matches!(
            load(tmp.path()),
            Err(JournalError::Corrupt { .. })
        ));
        std::fs::write(
            tmp.path().join(JOURNAL_FILE),
            "{\"version\":9,\"tokens\":[]}",
        )
        .unwrap();
        assert!(matches!(
            load(tmp.path()),
            Err(JournalError::Version { found: 9, .. })
        ));
    }

    #[tokio::test]
    async fn the_writer_records_removes_and_prunes_expired_tokens() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::start(tmp.path().to_path_buf(), vec![entry("old", 0)]);
        j.record(entry("aa", 600)).await.unwrap();
        j.record(entry("bb", 600)).await.unwrap();
        let on_disk: Vec<String> = load(tmp.path())
            .unwrap()
            .into_iter()
            .map(|e| e.fingerprint)
            .collect();
        assert_eq!(on_disk, vec!["aa", "bb"]);
        j.remove(vec!["aa".into()]).await;
        let on_disk: Vec<String> = load(tmp.path())
            .unwrap()
            .into_iter()
            .map(|e| e.fingerprint)
            .collect();
        assert_eq!(on_disk, vec!["bb"]);
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
