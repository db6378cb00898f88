//! One set's task: what it starts with, the orders it takes, and its loop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tracing::{error, info, warn};

use super::{Held, SetOutcome};
use crate::budget::{Budget, Slot};
use crate::clock::wall;
use crate::config::{OnShutdown, SetConfig};
use crate::error_chain as chain;
use crate::journal::{Entry, Journal};
use crate::provider::{Issued, ProviderError, Revocation, TokenProvider};
use crate::sink::{IssuedMeta, TokenSink};
use crate::status::{SetReport, SetState, SetStats};

mod issue;
mod stop;

/// How long a set being replaced at a reload waits for its requests under way (an issue, a
/// superseded token's revocation) before handing over: a request's own timeout is 30 s by
/// default, and tokens are never abandoned mid-request.
pub(super) const HANDOVER_WAIT: Duration = Duration::from_secs(35);

/// A superseded token whose revocation failed is tried again this much later, with backoff on
/// top; it is dropped once it has expired, since an expired token needs no revocation.
const SUPERSEDED_RETRY: Duration = Duration::from_secs(5);

/// The `token_type` a token minted in a refused answer is journaled with: a restart revokes
/// such a token at once instead of treating it like one that may be in a file.
pub(super) const REFUSED_TOKEN_TYPE: &str = "(refused)";

/// Whether set `cfg` revokes the tokens it drops, with a provider that revokes as `revocation`
/// says.
pub(super) fn revokes(cfg: &SetConfig, revocation: Revocation) -> bool {
    if cfg.never_revoke {
        return false;
    }
    match revocation {
        Revocation::Always => true,
        Revocation::OptIn => cfg.on_shutdown == OnShutdown::Revoke,
        Revocation::Unsupported => false,
    }
}

/// What a set begins with: from the journal at start, or from its predecessor at a reload.
pub struct Start<S> {
    /// A token to go on using, its file content, and when to replace it.
    pub current: Option<(Held, IssuedMeta, Instant)>,
    /// Tokens that no longer fit: revoked once the set has a token in place.
    pub stale: Vec<Held>,
    /// Superseded tokens with the time they are due to be revoked.
    pub superseded: Vec<(Held, Instant)>,
    /// The predecessor's sink, emptied once this set has written its first token, unless it
    /// is the same place.
    pub previous: Option<S>,
}

impl<S> Default for Start<S> {
    fn default() -> Self {
        Start {
            current: None,
            stale: Vec::new(),
            superseded: Vec::new(),
            previous: None,
        }
    }
}

impl<S> Start<S> {
    /// `None` when there is nothing to begin with.
    pub fn boxed(self) -> Option<Box<Start<S>>> {
        let empty = self.current.is_none()
            && self.stale.is_empty()
            && self.superseded.is_empty()
            && self.previous.is_none();
        (!empty).then(|| Box::new(self))
    }
}

/// Everything a set hands its successor when a reload changes it (same provider).
pub struct Handover<S> {
    pub start: Start<S>,
}

/// What the daemon tells a set's task to do.
pub enum Order<S> {
    /// Stop: revoke everything by `deadline`; leave the file in place if `keep_file` (a
    /// successor writes to the same path).
    Revoke { deadline: Instant, keep_file: bool },
    /// Stop like `Revoke` but keep the current token and the sink: another instance carries
    /// on with them (HA handover).
    Release { deadline: Instant },
    /// Stop without revoking: hand every token over to a successor (config reload).
    Handover(oneshot::Sender<Handover<S>>),
}

/// Source of uniform draws in [0, 1) for jitter; tests pin it.
pub type Jitter = Arc<dyn Fn() -> f64 + Send + Sync>;

/// The production jitter source: one for every set (each draw is from the calling thread's
/// generator), rather than an allocation per set.
pub fn random_jitter() -> Jitter {
    static SHARED: std::sync::LazyLock<Jitter> =
        std::sync::LazyLock::new(|| Arc::new(fastrand::f64));
    Arc::clone(&SHARED)
}

/// Everything one set's task needs.
pub struct SetTask<P, S> {
    /// Shared with the daemon's record of the set: 10,000 sets are not copied twice.
    pub cfg: Arc<SetConfig>,
    pub provider: Arc<P>,
    pub sink: S,
    pub jitter: Jitter,
    /// Becomes `Some(order)` when the set must stop.
    /// The order to stop; the daemon dropping its end means stop quickly (it is going away).
    /// A oneshot, not a watch: one order per set, and a tenth of the memory.
    pub stop: oneshot::Receiver<Order<S>>,
    pub rotate: broadcast::Receiver<()>,
    pub journal: Journal,
    pub budget: Arc<Budget>,
    /// [`crate::config::config_hash`] of this set, recorded with each token. A boxed `str`,
    /// not a `String`: the capacity field of a string that never grows was the 8 bytes that
    /// put every set's task in a larger allocation class.
    pub config_hash: Box<str>,
    /// What the set begins with; `None` for nothing (most sets at a first start), which
    /// spares each of them the room a `Start` takes.
    pub start: Option<Box<Start<S>>>,
    /// The set's state and counters, for readiness, `tokenkeeper status` and the metrics
    /// (see [`crate::status::Board::register`]).
    pub report: SetReport,
    /// Pinged when the set has a fresh token in place, for the daemon's readiness.
    pub ready: Option<mpsc::Sender<()>>,
}

/// Result of a revocation attempt of a superseded token, with the token back if it failed.
type SupersededResult = (Held, Result<(), ProviderError>);

/// A token request under way, owning what it needs, so that a stop can go on waiting for its
/// answer while it revokes what the set holds.
type InFlight = std::pin::Pin<Box<dyn Future<Output = Result<Issued, ProviderError>> + Send>>;

/// A set's tokens and timers: what its task's loop works on. Boxed, like the task itself, so
/// an idle task's future holds pointers rather than its largest state.
struct Tokens<S> {
    current: Option<Held>,
    /// The file content of `current`, handed over on reload.
    current_meta: Option<IssuedMeta>,
    /// Superseded tokens waiting for their revocation time.
    superseded: Vec<(Held, Instant)>,
    /// Revocations of superseded tokens under way.
    revoking: Revoking,
    /// Journaled tokens that no longer fit (see [`SetTask::begin`]).
    stale: Vec<Held>,
    /// The token request a stop order interrupted, with its budget slot.
    /// Boxed: only a set stopped while it asked for a token has one, and inline it took 16
    /// bytes more of every set's, enough to put the struct in a larger allocation class.
    in_flight: Option<Box<(InFlight, Slot)>>,
    /// The predecessor's sink, emptied once this set's token is in place. Boxed: only a
    /// reload that moved the file has one, and inline it took 208 of this struct's 496 bytes
    /// in every set.
    previous: Option<Box<S>>,
    next_issue: Instant,
    last_issue: Option<Instant>,
    attempt: u32,
    /// Whether the budget refused last time, so the refusal is logged once, not per retry.
    budget_blocked: bool,
}

/// The revocations of a set's superseded tokens under way: a [`JoinSet`] made for the first
/// and dropped once the last has been joined. An empty `JoinSet` is an allocation of its own
/// (about 72 bytes, 0.7 MiB at 10,000 sets), and a set revokes for a few seconds of each
/// token's lifetime.
#[derive(Default)]
struct Revoking(Option<JoinSet<SupersededResult>>);

impl Revoking {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, JoinSet::len)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn spawn(&mut self, revocation: impl Future<Output = SupersededResult> + Send + 'static) {
        self.0.get_or_insert_with(JoinSet::new).spawn(revocation);
    }

    /// The next revocation to finish; `None` when none is under way. Cancel-safe, as
    /// [`JoinSet::join_next`] is. Polled by hand: the future is then one pointer, where an
    /// `async` wrapper around `join_next` took 56 bytes of every set's waiting task.
    fn join_next(
        &mut self,
    ) -> impl Future<Output = Option<Result<SupersededResult, tokio::task::JoinError>>> + '_ {
        std::future::poll_fn(|cx| {
            let Some(set) = self.0.as_mut() else {
                return std::task::Poll::Ready(None);
            };
            let joined = std::task::ready!(set.poll_join_next(cx));
            if set.is_empty() {
                self.0 = None;
            }
            std::task::Poll::Ready(joined)
        })
    }

    fn abort_all(&mut self) {
        if let Some(set) = &mut self.0 {
            set.abort_all();
        }
    }
}

impl<S> Tokens<S> {
    /// When the loop must next wake: the current token's expiry, the first superseded
    /// token's revocation time, or the next issue, whichever comes first. One timer for all
    /// three keeps an idle task small.
    fn next_wake(&self) -> Instant {
        let expiry = self.current.as_ref().map(|h| h.expires_at);
        let revoke = self.superseded.iter().map(|(_, at)| *at).min();
        [expiry, revoke]
            .into_iter()
            .flatten()
            .fold(self.next_issue, Instant::min)
    }

    fn live(&self) -> usize {
        usize::from(self.current.is_some()) + self.superseded.len() + self.revoking.len()
    }
}

/// What woke a set's loop.
enum Event<S> {
    Stop(Option<Order<S>>),
    Rotate,
    /// The rotate channel closed: the daemon is going away; stop listening to it.
    RotateClosed,
    /// Boxed: the loop's future keeps room for an event while it waits for the next one,
    /// and inline this outcome (168 bytes) made every set's task that much larger.
    Revoked(Box<Result<SupersededResult, tokio::task::JoinError>>),
    Timer,
}

/// Whether the loop goes on after a step, or stops with the order that came meanwhile.
enum Flow<S> {
    Continue,
    Stop(Option<Order<S>>),
}

impl<P: TokenProvider + 'static, S: TokenSink> SetTask<P, S> {
    /// When to try again after a failure: `delay` from now, but never sooner than
    /// `min_interval` after the last attempt, so full jitter's zero draws cannot spin.
    fn retry_at(&self, delay: Duration, last_issue: Option<Instant>) -> Instant {
        let at = Instant::now() + delay;
        match last_issue {
            Some(last) => at.max(last + self.cfg.refresh.min_interval),
            None => at,
        }
    }

    fn journal_entry(&self, held: &Held, meta: &IssuedMeta, refresh_at: Instant) -> Entry {
        Entry {
            set: self.cfg.name.clone(),
            provider: self.cfg.provider.clone(),
            fingerprint: held.fingerprint.to_string(),
            token: held.token.clone(),
            token_type: meta.token_type.clone(),
            scope: meta.scope.clone(),
            issued_at: crate::clock::now_wall(),
            expires_at: meta.expires_at,
            refresh_at: wall(refresh_at),
            config_hash: self.config_hash.to_string(),
            file: self.cfg.file.as_ref().map(|f| f.path.clone()),
            lifetime_assumed: held.assumed,
        }
    }

    /// Empty the predecessor's sink once this set's token is in place, unless both write to
    /// the same place.
    async fn forget_previous(&self, previous: &mut Option<Box<S>>) {
        if let Some(old) = previous.take()
            && old.location() != self.sink.location()
            && let Err(e) = old.remove().await
        {
            warn!(set = %self.cfg.name, error = %chain(&e), "could not remove the set's previous token file");
        }
    }

    fn set_state(&self, state: SetState) {
        self.report.state(state);
    }

    fn fresh(&self, held: &Held, next_refresh: Instant) {
        self.set_state(SetState::Fresh {
            fingerprint: held.fingerprint.to_string(),
            expires_at: held.expires_at,
            next_refresh,
        });
        // Readiness waits for every set's first token; only this transition can complete it.
        if let Some(ping) = &self.ready {
            let _ = ping.try_send(());
        }
    }

    /// Whether this set's tokens are revoked at all: a provider may be unable to (no
    /// revocation endpoint), or revoke only for sets that ask for it (Square).
    fn revokes(&self) -> bool {
        revokes(&self.cfg, self.provider.revocation())
    }

    /// Why [`Self::revokes`] says no, for the log.
    fn why_not_revoked(&self) -> &'static str {
        if self.cfg.never_revoke {
            return "`tokenkeeper once` never revokes; the token expires on its own";
        }
        match self.provider.revocation() {
            Revocation::Unsupported => {
                "the provider has no revocation endpoint; the token expires on its own"
            }
            _ => {
                "this provider's sets revoke only with on_shutdown: revoke; the token expires on its own"
            }
        }
    }

    /// Queue `held` for revocation at `at`, or let it expire if this set does not revoke.
    fn supersede(&self, superseded: &mut Vec<(Held, Instant)>, held: Held, at: Instant) {
        if self.revokes() {
            superseded.push((held, at));
        } else {
            info!(set = %self.cfg.name, fingerprint = %held.fingerprint,
                "not revoking the superseded token: {}", self.why_not_revoked());
            if held.assumed {
                // The journal keeps a token of assumed lifetime until it is revoked, and
                // nothing will revoke this one: without this it would stay a year.
                let journal = self.journal.clone();
                let fingerprint = held.fingerprint.to_string();
                tokio::spawn(async move { journal.remove(vec![fingerprint]).await });
            }
        }
    }

    /// Keep the set's sink holding a valid token until told to stop, then revoke.
    pub fn run(self) -> impl Future<Output = SetOutcome> + Send + 'static {
        // The task goes to the heap and its future holds a pointer: an `async fn` taking
        // `self` by value keeps the whole task, twice, in every state of its future, and
        // 10,000 sets hold 10,000 of those futures.
        Box::new(self).drive()
    }

    async fn drive(mut self: Box<Self>) -> SetOutcome {
        let mut t = Box::new(Tokens {
            current: None,
            current_meta: None,
            superseded: Vec::new(),
            revoking: Revoking::default(),
            stale: Vec::new(),
            in_flight: None,
            previous: None,
            next_issue: Instant::now(),
            last_issue: None,
            attempt: 0,
            budget_blocked: false,
        });
        // Every step that awaits more than a channel or the timer is boxed, so the loop's
        // future stays the size of its waiting state.
        Box::pin(self.begin(&mut t)).await;
        let mut rotate_open = true;
        let order = loop {
            let live = t.live();
            self.report.stats_if(|s| s.set_live(live));
            let wake = t.next_wake();
            let event = tokio::select! {
                biased;
                order = &mut self.stop => Event::Stop(order.ok()),
                r = self.rotate.recv(), if rotate_open => match r {
                    // A set that fell behind a burst of requests still rotates, once.
                    Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => Event::Rotate,
                    Err(broadcast::error::RecvError::Closed) => Event::RotateClosed,
                },
                Some(joined) = t.revoking.join_next(), if !t.revoking.is_empty() => Event::Revoked(Box::new(joined)),
                () = sleep_until(wake) => Event::Timer,
            };
            match event {
                Event::Stop(order) => break order,
                Event::Rotate => {
                    let floor = t.last_issue.map(|l| l + self.cfg.refresh.min_interval);
                    t.next_issue = floor.map_or_else(Instant::now, |f| f.max(Instant::now()));
                    info!(set = %self.cfg.name, "rotation requested");
                }
                Event::RotateClosed => rotate_open = false,
                Event::Revoked(joined) => Box::pin(self.revoked(&mut t, *joined)).await,
                Event::Timer => {
                    if let Flow::Stop(order) = Box::pin(self.timer(&mut t)).await {
                        break order;
                    }
                }
            }
        };
        // A stop that revokes first waits for its provider's turn, holding only this wait:
        // at SIGTERM every set stops at once, and 10,000 stops in memory, each waiting for one
        // of the provider's few request permits, were 20 MiB. Only a set whose stop does
        // nothing but revoke what it holds takes a turn: one that waits for a request in
        // flight or revocations under way would hold its turn while others' tokens wait.
        let waits_for_answers = t.in_flight.is_some() || !t.revoking.is_empty();
        let turn = match (&order, self.provider.stop_turns()) {
            (Some(Order::Revoke { .. } | Order::Release { .. }), Some(turns))
                if !waits_for_answers =>
            {
                turns.acquire_owned().await.ok()
            }
            _ => None,
        };
        Box::pin(self.finish(t, order, turn)).await
    }

    /// Take over what the set starts with: a token to reuse, stale and superseded tokens,
    /// the predecessor's sink.
    async fn begin(&mut self, t: &mut Tokens<S>) {
        let Some(start) = self.start.take() else {
            return;
        };
        let start = *start;
        t.previous = start.previous.map(Box::new);
        t.superseded.extend(start.superseded);
        if let Some((held, meta, refresh_at)) = start.current {
            // The file may be missing or from another config: put the token back in place.
            match self.sink.write(&held.token, &meta).await {
                Ok(()) => {
                    info!(set = %self.cfg.name, fingerprint = %held.fingerprint,
                        refresh_in = %humantime::format_duration(whole_secs(refresh_at.saturating_duration_since(Instant::now()))),
                        "reusing the token it already holds");
                    t.next_issue = refresh_at;
                    // Counted before it is reported fresh (see `issue`). The status shows the
                    // reused token's expiry and refresh as it does an issued one's.
                    let live = 1 + t.live();
                    self.report.stats_if(|s| s.set_live(live));
                    self.report
                        .stats(|s| s.adopted(&held.fingerprint, meta.expires_at, refresh_at));
                    self.fresh(&held, t.next_issue);
                    self.forget_previous(&mut t.previous).await;
                }
                Err(e) => {
                    error!(set = %self.cfg.name, error = %chain(&e), "could not write the token it already holds; replacing it");
                }
            }
            t.current = Some(held);
            t.current_meta = Some(meta);
        }
        // Journaled tokens that no longer fit. With a token adopted, none of them is in the
        // file: revoke them now. Otherwise the file may still hold one, so they are treated
        // like superseded tokens once the first new token is written.
        t.stale = start.stale;
        if t.current.is_some() {
            for h in std::mem::take(&mut t.stale) {
                self.supersede(&mut t.superseded, h, Instant::now());
            }
        }
    }

    /// A superseded token's revocation finished.
    async fn revoked(
        &mut self,
        t: &mut Tokens<S>,
        joined: Result<SupersededResult, tokio::task::JoinError>,
    ) {
        if let Ok((_, r)) = &joined {
            self.report.stats(|s| s.revoke_result(r.is_ok()));
        }
        let name = &self.cfg.name;
        match joined {
            Ok((held, Ok(()))) if t.current.as_ref().is_some_and(|c| c.same_token(&held)) => {
                // The provider handed this token out again while its revocation was under
                // way: the file's token is dead. Replace it now, and keep it journaled as the
                // current one (its record is the current token's too).
                warn!(set = %name, fingerprint = %held.fingerprint,
                    "revoked a superseded token the provider had since handed out again as the current one; replacing it");
                t.next_issue = t.last_issue.map_or_else(Instant::now, |l| {
                    (l + self.cfg.refresh.min_interval).max(Instant::now())
                });
            }
            Ok((held, Ok(()))) => {
                info!(set = %name, fingerprint = %held.fingerprint, "revoked superseded token");
                self.journal
                    .remove(vec![held.fingerprint.to_string()])
                    .await;
            }
            Ok((held, Err(e))) if !held.surely_expired(Instant::now()) => {
                warn!(set = %name, fingerprint = %held.fingerprint, error = %chain(&e),
                    "could not revoke superseded token; will retry");
                // Past an assumed expiry the token may be gone or live for long: the wait
                // grows with the time overdue, so a revocation that keeps failing costs a
                // request now and then, not one every few seconds for good.
                let overdue = Instant::now().saturating_duration_since(held.expires_at);
                let wait = SUPERSEDED_RETRY.max(overdue / 2);
                let again = Instant::now() + wait.mul_f64(1.0 + (self.jitter)());
                t.superseded.push((held, again));
            }
            // Surely expired meanwhile: nothing left to revoke; the journal prunes it.
            Ok((_, Err(_))) => {}
            Err(e) => error!(set = %name, error = %e, "a revocation task failed"),
        }
    }

    /// The loop's timer fired. One thing is done per wake-up, in this order (the loop looks
    /// at stop and rotate requests in between): the current token expired, superseded tokens
    /// are due for revocation, it is time to issue.
    async fn timer(&mut self, t: &mut Tokens<S>) -> Flow<S> {
        let now = Instant::now();
        if t.current.as_ref().is_some_and(|h| h.expires_at <= now) {
            Box::pin(self.expired(t)).await;
        } else if t.superseded.iter().any(|(_, at)| *at <= now) {
            self.revoke_due(t, now);
        } else if t.next_issue <= now {
            return self.issue(t).await;
        }
        Flow::Continue
    }

    async fn expired(&mut self, t: &mut Tokens<S>) {
        let name = &self.cfg.name;
        if let Some(h) = t.current.take() {
            error!(set = %name, fingerprint = %h.fingerprint,
                "token expired with no replacement; removing its file");
            if let Err(e) = self.sink.remove().await {
                error!(set = %name, error = %chain(&e), "could not remove expired token");
            }
            if h.assumed {
                // Expired by an assumption only: the provider may still honour it, so it is
                // revoked (and stays journaled until then), not forgotten.
                self.supersede(&mut t.superseded, h, Instant::now());
            } else {
                self.journal.remove(vec![h.fingerprint.to_string()]).await;
            }
            self.report.stats(SetStats::token_expired);
            self.set_state(SetState::Failing {
                has_token: false,
                error: "token expired with no replacement".into(),
            });
        }
    }

    fn revoke_due(&mut self, t: &mut Tokens<S>, now: Instant) {
        let (due, later): (Vec<_>, Vec<_>) = t.superseded.drain(..).partition(|(_, at)| *at <= now);
        t.superseded = later;
        for (held, _) in due {
            // An assumed expiry proves nothing: such a token is revoked all the same.
            if held.surely_expired(now) {
                info!(set = %self.cfg.name, fingerprint = %held.fingerprint,
                    "superseded token expired before its revocation; nothing to revoke");
                continue;
            }
            let p = Arc::clone(&self.provider);
            t.revoking.spawn(async move {
                let r = p.revoke(&held.token).await;
                (held, r)
            });
        }
    }
}

fn whole_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::IssueRate;

    fn held(budget: &Arc<Budget>, token: &str) -> Held {
        Held {
            token: crate::secret::Secret::new(token),
            fingerprint: token.into(),
            expires_at: Instant::now() + Duration::from_secs(60),
            assumed: false,
            _slot: budget.adopt(),
        }
    }

    /// Every set holds one of each for its whole life: a field that pushes either past 256
    /// bytes moves 10,000 sets into the allocator's next class, 320 bytes (0.6 MiB more).
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_sets_task_and_token_state_each_fit_in_256_bytes() {
        type Task = SetTask<crate::provider::Provider, crate::store::SetSink>;
        assert!(
            std::mem::size_of::<Task>() <= 256,
            "{}",
            std::mem::size_of::<Task>()
        );
        let tokens = std::mem::size_of::<Tokens<crate::store::SetSink>>();
        assert!(tokens <= 256, "{tokens}");
    }

    #[tokio::test(start_paused = true)]
    async fn revocations_under_way_hold_a_join_set_only_while_there_are_some() {
        let budget = Budget::new(
            "p",
            10,
            IssueRate {
                per_second: 1.0,
                burst: 1,
            },
        );
        let mut r = Revoking::default();
        assert!(r.is_empty() && r.0.is_none());
        assert!(r.join_next().await.is_none(), "none under way");
        for token in ["a", "b"] {
            let h = held(&budget, token);
            r.spawn(async move { (h, Ok(())) });
        }
        assert_eq!(r.len(), 2);
        let mut joined: Vec<String> = Vec::new();
        while let Some(j) = r.join_next().await {
            joined.push(j.unwrap().0.fingerprint.into());
        }
        joined.sort();
        assert_eq!(joined, ["a", "b"]);
        assert!(r.0.is_none(), "the set goes with the last revocation");
        let h = held(&budget, "c");
        r.spawn(async move { (h, Ok(())) });
        r.abort_all();
        assert!(r.join_next().await.unwrap().is_err(), "aborted");
        assert!(r.0.is_none());
    }
}
