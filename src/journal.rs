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
        ser.collect_str(&humantime::format_rfc3339_millis(*t))
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
    _lock: Flock<File>,
}

/// Create `state_dir` (exactly 0700) and take its lock, without blocking.
pub fn lock_state_dir(dir: &Path) -> Result<StateLock, JournalError> {
    // It holds live tokens and is ours alone, so a mode someone loosened is tightened back.
    crate::sink::ensure_dir(dir, STATE_DIR_MODE, crate::sink::Existing::SetMode).map_err(|e| {
        JournalError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    })?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(JOURNAL_MODE)
        .open(&path)
        .map_err(io("open", &path))?;
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
    Ok(StateLock { _lock: lock })
}

/// Read the journal; a missing file is an empty journal.
pub fn load(dir: &Path) -> Result<Vec<Entry>, JournalError> {
    let path = dir.join(JOURNAL_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => Zeroizing::new(b),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("read", &path)(e)),
    };
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

fn save_stored(dir: &Path, stored: &[Stored]) -> Result<(), JournalError> {
    crate::sink::write_file(&dir.join(JOURNAL_FILE), JOURNAL_MODE, &document(stored))
        .map_err(JournalError::Write)
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

impl Journal {
    /// Start the writer for `dir`, beginning from `entries` (what [`load`] returned).
    pub fn start(dir: PathBuf, entries: Vec<Entry>) -> Journal {
        Self::spawn(Some(dir), entries).0
    }

    /// A journal that lives in memory only, for tests; the returned watch shows its content.
    pub fn memory() -> (Journal, tokio::sync::watch::Receiver<Vec<Entry>>) {
        Self::spawn(None, Vec::new())
    }

    fn spawn(
        dir: Option<PathBuf>,
        entries: Vec<Entry>,
    ) -> (Journal, tokio::sync::watch::Receiver<Vec<Entry>>) {
        let (tx, mut rx) = mpsc::channel::<(Op, oneshot::Sender<Result<(), String>>)>(QUEUE);
        let (view_tx, view_rx) = tokio::sync::watch::channel(entries.clone());
        tokio::spawn(async move {
            let mut entries: Vec<Stored> =
                entries.iter().filter_map(|e| Stored::new(e).ok()).collect();
            // The fingerprints in `entries`, so a batch finds what it replaces without a
            // pass over the whole journal.
            let mut index: HashSet<String> =
                entries.iter().map(|e| e.fingerprint.clone()).collect();
            while let Some(first) = rx.recv().await {
                // Group commit: everything queued while the last write ran goes in this one.
                let mut batch = vec![first];
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
                let mut readers = Vec::new();
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
                        Op::Entries(reply) => readers.push(reply),
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
                        match tokio::task::spawn_blocking(move || {
                            let r = save_stored(&dir, &owned);
                            (owned, r)
                        })
                        .await
                        {
                            Ok((back, Ok(()))) => {
                                entries = back;
                                Ok(())
                            }
                            Ok((back, Err(e))) => {
                                entries = back;
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
                for reply in readers {
                    let _ = reply.send(entries.iter().filter_map(Stored::entry).collect());
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

    #[test]
    fn debug_never_shows_the_token() {
        let e = entry("aa", 600);
        assert!(!format!("{e:?}").contains("tok-aa"));
    }
}
