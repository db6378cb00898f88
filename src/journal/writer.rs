//! The writer task: every change to the journal goes through it, grouped into one commit.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{error, warn};
use zeroize::Zeroizing;

use super::disk::Disk;
use super::entry::{Entry, Stored, push_remove};
use super::live::Live;
use super::lock::StateLock;
use super::{CLOCK_DOUBT_WINDOW, JournalError};

/// Operations waiting for the writer. Each set has at most one outstanding at a time, so this
/// only bounds bursts; a full queue makes senders wait, which is the back-pressure we want.
const QUEUE: usize = 1024;

/// How often the journal writer of a daemon makes sure its lock still guards the state
/// directory (besides before every commit, which is when it matters most): a stat each time.
/// Each check wakes the runtime about three times (tokio's timer wheel wakes once to move a
/// timer of this range down a level, then again to fire it), so every 2 s it was most of an
/// idle daemon's budget of one wake-up a second, with the 10 s status heartbeat on top.
/// Ten seconds still leaves a second process little time to take a removed directory.
pub(super) const LOCK_CHECK: Duration = Duration::from_secs(10);

/// How long removals wait to be written and flushed. A removal is acknowledged once it is
/// made in memory: its line waits for the next record's commit, or this long for a commit
/// of its own. A second covers a whole stop of 10,000 sets with one or two writes and
/// `fdatasync`s, not a trip to the blocking pool and a `write` for each set, and keeps a
/// daemon that only revoked a superseded token from leaving the removal unwritten until its
/// next token. A removal lost to a crash or a power cut only leaves a revoked token in the
/// journal, which the next start introspects before reusing it, or revokes again.
pub(super) const REMOVAL_FLUSH: Duration = Duration::from_secs(1);

enum Op {
    Record(Box<Stored>),
    Remove(Vec<String>),
    /// What the journal holds once the changes queued before this one are in.
    Entries(oneshot::Sender<Vec<Entry>>),
    /// Write and flush the removals waiting in memory, now.
    Flush,
}

/// A cheap handle on the journal writer task. A record is acknowledged only once it is on
/// the disk (or, for [`Journal::memory`], in memory); a removal once it is made in memory, to
/// reach the disk within [`REMOVAL_FLUSH`].
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
    /// Start the writer for `dir`, beginning from `entries` (what [`load`](super::load)
    /// returned). Its first write is a compaction: it migrates a version-1 journal and cuts
    /// off a torn tail.
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

    /// A journal whose every record fails (its writer is gone), for tests of what the
    /// callers do then.
    #[cfg(test)]
    pub fn failing() -> Journal {
        let (tx, _) = mpsc::channel(1);
        Journal { tx }
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
            let now = crate::clock::now_wall();
            for s in entries
                .iter()
                .filter_map(|e| Stored::kept_for(e, CLOCK_DOUBT_WINDOW, now).ok())
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
            // Removals' lines not written yet, and when they get a commit of their own.
            let mut pending = Zeroizing::new(Vec::new());
            let mut flush_at: Option<Instant> = None;
            loop {
                // The first operation, and whether the removals' flush is due.
                let (first, due) = tokio::select! {
                    op = rx.recv() => match op {
                        Some(op) => (Some(op), false),
                        None => break,
                    },
                    _ = tick.tick(), if has_lock => {
                        if gave_up || !locked(&state).disk.as_ref().is_some_and(Disk::lost) {
                            continue;
                        }
                        // Lost: a commit of nothing takes it again and rewrites the journal.
                        (None, false)
                    }
                    // A flushing commit of nothing.
                    () = sleep_until_some(flush_at), if flush_at.is_some() => (None, true),
                };
                // Group commit: everything queued while the last write ran goes in this one.
                let mut batch: Vec<_> = first.into_iter().collect();
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                // Only a new token must be on the disk before it is acknowledged; a batch of
                // removals waits in memory (see REMOVAL_FLUSH). A commit of nothing (a lost
                // lock to take again, or the removals' flush come due) is not put off.
                let defer = !due
                    && !batch.is_empty()
                    && !batch
                        .iter()
                        .any(|(op, _)| matches!(op, Op::Record(_) | Op::Flush));
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
                            Op::Flush => {}
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
                let result = if defer {
                    pending.extend_from_slice(&lines);
                    flush_at.get_or_insert_with(|| Instant::now() + REMOVAL_FLUSH);
                    Ok(())
                } else {
                    let mut all = std::mem::take(&mut pending);
                    all.extend_from_slice(&lines);
                    let result = commit(&state, all).await;
                    gave_up =
                        result.is_err() && locked(&state).disk.as_ref().is_some_and(Disk::lost);
                    flush_at = None;
                    if let Err(e) = &result {
                        // Kept in memory: the next change rewrites the log whole.
                        error!(error = %e, "could not write the state journal");
                    }
                    result
                };
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
            // Every handle is gone (the process is ending): what waits for a flush gets it now.
            if (flush_at.is_some() || !pending.is_empty())
                && let Err(e) = commit(&state, pending).await
            {
                error!(error = %e, "could not write the state journal");
            }
        });
        (Journal { tx }, view_rx)
    }

    /// Write and flush the removals not yet on the disk, and wait for it to be done: for a
    /// process about to end (the stop of the daemon, `once` or `exec`), so that the journal it leaves
    /// behind is on the disk.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send((Op::Flush, ack)).await.is_ok() {
            let _ = done.await;
        }
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
        let stored = Stored::new(&entry, crate::clock::now_wall())
            .map_err(|e| format!("cannot serialize the journal entry: {e}"))?;
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

    /// Forget tokens that were revoked (or expired), by fingerprint: at once in memory, on the
    /// disk within [`REMOVAL_FLUSH`].
    pub async fn remove(&self, fingerprints: Vec<String>) {
        if fingerprints.is_empty() {
            return;
        }
        if let Err(e) = self.op(Op::Remove(fingerprints)).await {
            warn!(error = %e, "journal not updated after revocation; the next start will find those tokens gone");
        }
    }
}

/// Wait until `at`; never, for `None` (the branch is then disabled anyway).
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Commit `lines` to the disk, if the journal has one, on the blocking pool (an `fdatasync`
/// may wait for the disk).
async fn commit(state: &Arc<Mutex<State>>, lines: Zeroizing<Vec<u8>>) -> Result<(), String> {
    if locked(state).disk.is_none() {
        return Ok(());
    }
    let st = Arc::clone(state);
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
}
