//! The daemon side: the [`Board`] every set registers on, and the [`SetReport`] each set's
//! task reports through.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::SystemTime;

use tokio::sync::{Notify, watch};

use super::snapshot::{HaStatus, SetSnapshot, Snapshot, StoreHealth};
use super::state::{Phase, SetPhase, SetState, SetStats, set_phase};
use super::{FORMAT_VERSION, HEARTBEAT};

/// One registered set: its name, its provider, and what its task reports.
struct Entry {
    /// Shared with `names` and with every snapshot: a snapshot of 10,000 sets, taken a few
    /// times a second during a start, copies pointers rather than 20,000 strings.
    name: Arc<str>,
    /// Sets of one provider share one copy.
    provider: Arc<str>,
    slot: Arc<Slot>,
}

struct Inner {
    sets: Vec<Entry>,
    /// The names in `sets`, so registering a new set (10,000 at a start) does not compare
    /// its name with every set already there.
    names: std::collections::HashSet<Arc<str>>,
    phase: Phase,
    ha: Option<HaStatus>,
    stores: Vec<watch::Receiver<StoreHealth>>,
    /// The sets in `stores`: a set registered for the first time (every one at a start)
    /// need not be looked for among all the others, which made a start quadratic.
    store_sets: std::collections::HashSet<String>,
    /// Why the metrics listener is not serving, when it is not.
    metrics_error: Option<String>,
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
                store_sets: std::collections::HashSet::new(),
                metrics_error: None,
            }),
            changed: Notify::new(),
            phase_changed: Notify::new(),
            started_at: crate::clock::now_wall(),
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
        let name: Arc<str> = Arc::from(name);
        if !inner.names.insert(Arc::clone(&name)) {
            inner.sets.retain(|e| e.name != name);
        }
        // Most sets name the provider the set registered before them did.
        let provider = match inner.sets.last() {
            Some(last) if &*last.provider == provider => Arc::clone(&last.provider),
            _ => Arc::from(provider),
        };
        inner.sets.push(Entry {
            name,
            provider,
            slot: Arc::clone(&slot),
        });
        drop(inner);
        self.changed.notify_one();
        SetReport {
            slot,
            board: Arc::downgrade(self),
        }
    }

    /// Make room for `sets` more registrations at once: grown by doubling, the list of 10,000
    /// sets kept room for 16,384 (0.25 MiB for nothing), and the index was rebuilt at each
    /// doubling.
    pub fn reserve(&self, sets: usize) {
        let mut inner = self.lock();
        inner.sets.reserve_exact(sets);
        inner.names.reserve(sets);
    }

    /// Forget a set (a reload removed it, and its task has finished).
    pub fn remove(&self, name: &str) {
        let mut inner = self.lock();
        inner.names.remove(name);
        inner.sets.retain(|e| &*e.name != name);
        if inner.store_sets.remove(name) {
            inner.stores.retain(|r| r.borrow().set != name);
        }
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

    /// The metrics listener could not be set up: shown in `status`, `status.json` and
    /// systemd's `STATUS=` line for as long as the daemon runs.
    pub fn set_metrics_error(&self, why: String) {
        self.lock().metrics_error = Some(why);
        self.changed.notify_one();
    }

    /// Register a set's store copy; its writer reports through the returned sender. A set
    /// registered again (a reload) replaces its earlier entry.
    pub fn register_store(&self, set: &str, location: &str) -> watch::Sender<StoreHealth> {
        let (tx, rx) = watch::channel(StoreHealth {
            set: set.to_string(),
            location: location.to_string(),
            error: None,
            catching_up: false,
        });
        let mut inner = self.lock();
        if !inner.store_sets.insert(set.to_string()) {
            inner.stores.retain(|r| r.borrow().set != set);
        }
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
                // Read in place: a copy of the state and counters first would copy their
                // strings twice for each set.
                let slot = e.slot.lock();
                let (state, stats) = (&slot.state, &slot.stats);
                let phase = set_phase(state, stats);
                let token = phase.has_token() || phase == SetPhase::Failing;
                SetSnapshot {
                    name: Arc::clone(&e.name),
                    provider: Arc::clone(&e.provider),
                    state: phase,
                    fingerprint: stats.fingerprint.as_ref().filter(|_| token).cloned(),
                    expires_at: stats.expires_at.filter(|_| token),
                    next_refresh_at: stats.next_refresh.filter(|_| phase != SetPhase::Stopped),
                    last_error: stats.last_error.as_deref().map(shown),
                    last_error_at: stats.last_error_at,
                    tokens_issued: stats.issued,
                    issue_failures: stats.issue_failures,
                    tokens_revoked: stats.revoked,
                    revoke_failures: stats.revoke_failures,
                    tokens_refused: stats.refused,
                    journal_failures: stats.journal_failures,
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
            ha: inner.ha.as_ref().map(|ha| HaStatus {
                instance: shown(&ha.instance),
                role: shown(&ha.role),
                leader: ha.leader.as_deref().map(shown),
            }),
            stores: inner
                .stores
                .iter()
                .map(|r| {
                    let st = r.borrow();
                    StoreHealth {
                        set: shown(&st.set),
                        location: shown(&st.location),
                        error: st.error.as_deref().map(shown),
                        catching_up: st.catching_up,
                    }
                })
                .collect(),
            metrics_error: inner.metrics_error.as_deref().map(shown),
        }
    }
}

/// Text for the status file, `STATUS=` and the metrics: errors quote providers and stores,
/// and a lease names whatever its writer chose, so every string an outsider may have written
/// is escaped ([`crate::shown`]) before anything shows it.
fn shown(text: &str) -> String {
    crate::shown(text).into_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stores(board: &Board) -> Vec<(String, String)> {
        board
            .snapshot(crate::clock::now_wall())
            .stores
            .into_iter()
            .map(|s| (s.set, s.location))
            .collect()
    }

    #[test]
    fn a_set_registered_again_or_removed_keeps_one_store_entry_or_none() {
        let board = Board::new();
        let _a = board.register_store("a", "bao:tokenkeeper/a");
        let _b = board.register_store("b", "bao:tokenkeeper/b");
        // A reload registers a set again: its new location replaces the old one.
        let _a2 = board.register_store("a", "bao:other/a");
        let mut now = stores(&board);
        now.sort();
        assert_eq!(
            now,
            [
                ("a".to_string(), "bao:other/a".to_string()),
                ("b".to_string(), "bao:tokenkeeper/b".to_string())
            ]
        );
        board.remove("b");
        board.remove("b");
        assert_eq!(stores(&board), [("a".into(), "bao:other/a".into())]);
        let _b2 = board.register_store("b", "bao:tokenkeeper/b");
        assert_eq!(stores(&board).len(), 2);
    }
}
