//! Applying a new config (SIGHUP): reading it without holding up a stop, then starting,
//! handing over, replacing or retiring each set.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};
use tracing::{error, info, warn};

use super::live::{Live, Shared, budgets_for};
use super::revoke::STOP_RETRY_BASE;
use super::set_task::HANDOVER_WAIT;
use super::{Order, SetOutcome, Start};
use crate::config::{Config, SetConfig};
use crate::control::Control;
use crate::error_chain as chain;
use crate::provider::{ProviderConfig, TokenProvider};
use crate::store::{SetSink, Stores};

/// Re-reads and checks the config, secrets included; the error says why it was refused.
/// Shared, so that it runs on a blocking thread while the daemon goes on taking signals.
pub type LoadConfig = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;
/// Builds a provider for a new or changed provider config (this reads its secrets).
pub type BuildProvider<P> = Box<dyn Fn(&ProviderConfig) -> Result<Arc<P>, String> + Send + Sync>;

/// What the daemon needs to apply a reload (SIGHUP).
pub struct Reloader<P> {
    pub load: LoadConfig,
    pub build: BuildProvider<P>,
    /// How to exec a new binary that has replaced this one (see [`super::Restart`]); `None`
    /// re-reads the config only.
    pub restart: Option<super::Restart>,
}

/// How reading the new config at a reload ended.
pub(super) enum Loading {
    /// The config, or why it was refused. Boxed: a config is hundreds of bytes.
    Done(Box<Result<Config, String>>),
    /// A stop (or handover) came first.
    Stopped(Control),
}

/// Read the new config on a blocking thread while still taking control messages: a stop is
/// never held up by a slow read or parse (a config built to cost, a secret on a stuck
/// filesystem), which systemd would end with SIGKILL while tokens are live.
pub(super) async fn load_or_stop(
    load: &LoadConfig,
    control: &mut mpsc::Receiver<Control>,
    rotate: &broadcast::Sender<()>,
) -> Loading {
    let load = Arc::clone(load);
    // Left running if a stop comes first: a blocking thread cannot be cancelled, and what it
    // returns is dropped.
    let reading = tokio::task::spawn_blocking(move || load());
    match unless_stopped(reading, control, rotate).await {
        Ok(r) => Loading::Done(Box::new(
            r.unwrap_or_else(|e| Err(format!("the config reader failed: {e}"))),
        )),
        Err(c) => Loading::Stopped(c),
    }
}

/// Run `work`, part of a reload, while still taking control messages, so that a stop is never
/// held up by it: rotations asked meanwhile go through, and a second SIGHUP is folded into
/// this reload. `Err` with the stop (or handover) if one comes first; `work` is dropped then.
pub(super) async fn unless_stopped<T>(
    work: impl std::future::Future<Output = T>,
    control: &mut mpsc::Receiver<Control>,
    rotate: &broadcast::Sender<()>,
) -> Result<T, Control> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            r = &mut work => return Ok(r),
            c = control.recv() => match c {
                Some(Control::Rotate) => {
                    info!("rotating every set");
                    let _ = rotate.send(());
                }
                Some(Control::Reload) => {
                    info!("SIGHUP while a reload is under way; it is the same reload");
                }
                Some(c @ (Control::Shutdown | Control::Handover)) => return Err(c),
                None => return Err(Control::Shutdown),
            }
        }
    }
}

/// How applying a new config ended.
pub(super) enum Applied {
    /// Every set is in place. `again`: a SIGHUP came meanwhile, and the config it asks for
    /// may not be the one read.
    Done { again: bool },
    /// A stop came first: the daemon stops at once, with what the reload still waited for.
    Stopped(Control, Unfinished),
}

/// What a reload cut short by a stop still waited for.
pub(super) struct Unfinished {
    events: mpsc::UnboundedReceiver<Event>,
    /// Sets waiting for their predecessor's tokens, by index.
    handing: HashMap<usize, Arc<SetConfig>>,
    /// Old sets still revoking (moving to another provider) or handing over: the stop waits
    /// for them with the others, and reports what they could not revoke.
    pub(super) retiring: Vec<(String, JoinHandle<SetOutcome>)>,
}

/// A predecessor done with what a reload asked of it.
enum Event {
    /// Set `.0`'s predecessor handed its tokens over (`None`: not in time; they stay in the
    /// journal for the next start).
    HandedOver(usize, Option<Box<Start<SetSink>>>),
    /// Set `.0`'s predecessor, on another provider, has revoked what it could.
    Retired(usize),
}

/// Apply a new config: new sets start, removed sets revoke and remove their files, changed
/// sets are handed their predecessor's tokens (re-issued if the scopes changed, rewritten if
/// only the file did) or, when their provider changed, replaced, and unchanged sets are left
/// alone. A config that does not load, or a provider that cannot be built, changes nothing.
///
/// Every predecessor is asked at once and waited for together (their requests bounded by
/// their provider's `max_concurrent_requests`), each successor starting as its predecessor is
/// done; meanwhile control messages are still taken, so a stop pre-empts the reload at any
/// point and keeps its own deadline.
#[allow(clippy::too_many_arguments)] // each is a distinct part of the daemon's state
pub(super) async fn reload<P: TokenProvider + 'static>(
    r: &Reloader<P>,
    new: Result<Config, String>,
    config: &mut Config,
    shared: &mut Shared<P>,
    live: &mut Vec<Live>,
    retiring: &mut Vec<(String, JoinHandle<SetOutcome>)>,
    control: &mut mpsc::Receiver<Control>,
) -> Applied {
    let mut new = match new {
        Ok(c) => c,
        Err(e) => {
            error!("reload refused, running on with the current configuration: {e}");
            return Applied::Done { again: false };
        }
    };
    let mut providers = HashMap::new();
    let mut budgets = HashMap::new();
    let fresh_budgets = budgets_for(&new);
    for (name, pcfg) in &new.providers {
        let same = config.providers.get(name) == Some(pcfg);
        match (same, shared.providers.get(name), shared.budgets.get(name)) {
            (true, Some(p), Some(b)) => {
                providers.insert(name.clone(), Arc::clone(p));
                budgets.insert(name.clone(), Arc::clone(b));
            }
            _ => match (r.build)(pcfg) {
                Ok(p) => {
                    providers.insert(name.clone(), p);
                    if let Some(b) = fresh_budgets.get(name) {
                        budgets.insert(name.clone(), Arc::clone(b));
                    }
                }
                Err(e) => {
                    error!(provider = %name, "reload refused, running on with the current configuration: {e}");
                    return Applied::Done { again: false };
                }
            },
        }
    }
    if new.stores != config.stores {
        match Stores::build(&new) {
            Ok(s) => shared.stores = s.watching_as(&shared.stores),
            Err(e) => {
                error!(
                    "reload refused, running on with the current configuration: {}",
                    chain(&e)
                );
                return Applied::Done { again: false };
            }
        }
    }
    shared.providers = providers;
    shared.budgets = budgets;

    let deadline = Instant::now() + new.shutdown_timeout;
    let handover_deadline = Instant::now() + HANDOVER_WAIT * 2;
    let (events_tx, events) = mpsc::unbounded_channel();
    let mut waiting = Unfinished {
        events,
        handing: HashMap::new(),
        retiring: Vec::new(),
    };
    // Successors whose predecessor was on another provider, by index.
    let mut moving: HashMap<usize, Arc<SetConfig>> = HashMap::new();
    let mut old: HashMap<String, Live> = live.drain(..).map(|l| (l.cfg.name.clone(), l)).collect();
    let (mut added, mut changed, mut kept) = (Vec::new(), Vec::new(), 0usize);
    for (i, set) in std::mem::take(&mut new.sets)
        .into_iter()
        .map(Arc::new)
        .enumerate()
    {
        let Some(pcfg) = new.providers.get(&set.provider) else {
            continue;
        };
        // The provider's config the running set was started with.
        let old_pcfg = |l: &Live| config.providers.get(&l.cfg.provider);
        match old.remove(&set.name) {
            None => {
                added.push(set.name.clone());
                start_set(shared, live, &set, pcfg, Start::default()).await;
            }
            Some(l) if l.cfg == set && old_pcfg(&l) == Some(pcfg) => {
                kept += 1;
                live.push(l);
            }
            Some(mut l) if l.cfg.provider == set.provider && old_pcfg(&l) == Some(pcfg) => {
                changed.push(set.name.clone());
                // New scopes: the token no longer fits; it goes once the new one is written.
                let rescoped = old_pcfg(&l).map(|p| crate::config::config_hash(&l.cfg, p))
                    != Some(crate::config::config_hash(&set, pcfg));
                let (tx, rx) = oneshot::channel();
                l.order(Order::Handover(tx));
                let (events, name) = (events_tx.clone(), set.name.clone());
                tokio::spawn(async move {
                    let start = match timeout_at(handover_deadline, rx).await {
                        Ok(Ok(h)) => {
                            let mut start = h.start;
                            if rescoped {
                                start.stale.extend(start.current.take().map(|(h, _, _)| h));
                            }
                            Some(Box::new(start))
                        }
                        _ => {
                            warn!(set = %name, "the set did not hand its tokens over; they stay in the journal for the next start");
                            None
                        }
                    };
                    let _ = events.send(Event::HandedOver(i, start));
                });
                waiting.handing.insert(i, set);
                // The predecessor ends once it has handed over; a stop waits for it.
                waiting.retiring.push((l.cfg.name.clone(), l.task));
            }
            Some(mut l) => {
                // Another provider: the old one revokes its own tokens first.
                changed.push(set.name.clone());
                let keep_file =
                    l.cfg.file.as_ref().map(|f| &f.path) == set.file.as_ref().map(|f| &f.path);
                l.order(Order::Revoke {
                    deadline,
                    keep_file,
                });
                let events = events_tx.clone();
                let (name, task) = (set.name.clone(), l.task);
                let retired = tokio::spawn(async move {
                    let abort = task.abort_handle();
                    let r = timeout_at(deadline + STOP_RETRY_BASE, task).await;
                    // What it holds stays in the journal, as at a stop that runs out of time.
                    abort.abort();
                    let outcome = log_retired(&name, r);
                    let _ = events.send(Event::Retired(i));
                    outcome
                });
                moving.insert(i, set);
                waiting.retiring.push((l.cfg.name.clone(), retired));
            }
        }
    }
    drop(events_tx);
    let removed: Vec<String> = old.keys().cloned().collect();
    for (name, mut l) in old {
        l.order(Order::Revoke {
            deadline,
            keep_file: false,
        });
        shared.board.remove(&name);
        retiring.push((name, l.task));
    }
    info!(
        added = %added.join(","),
        changed = %changed.join(","),
        removed = %removed.join(","),
        unchanged = kept,
        "applying the new configuration"
    );
    *config = new;

    let mut again = false;
    while !(waiting.handing.is_empty() && moving.is_empty()) {
        tokio::select! {
            e = waiting.events.recv() => {
                let (i, start) = match e {
                    Some(Event::HandedOver(i, start)) => (i, start),
                    Some(Event::Retired(i)) => (i, None),
                    // Every sender gone with sets still waiting: they cannot be started.
                    None => break,
                };
                let Some(set) = waiting.handing.remove(&i).or_else(|| moving.remove(&i)) else {
                    continue;
                };
                let start = start.map(|s| *s).unwrap_or_default();
                if let Some(pcfg) = config.providers.get(&set.provider) {
                    start_set(shared, live, &set, pcfg, start).await;
                }
            }
            c = control.recv() => match c {
                Some(Control::Rotate) => {
                    info!("rotating every set");
                    let _ = shared.rotate.send(());
                }
                Some(Control::Reload) => {
                    info!("SIGHUP while a reload is under way; the config is read again once it is done");
                    again = true;
                }
                Some(c @ (Control::Shutdown | Control::Handover)) => {
                    warn!(
                        waiting = waiting.handing.len() + moving.len(),
                        "stop requested while the reload waited for sets to hand over or revoke; the reload is cut short"
                    );
                    return Applied::Stopped(c, waiting);
                }
                None => return Applied::Stopped(Control::Shutdown, waiting),
            }
        }
    }
    // Done: the predecessors have ended (or were given up on); nothing to wait for at stop.
    info!(sets = live.len(), "reloaded the configuration");
    Applied::Done { again }
}

/// Start `set`, logging why it could not be.
async fn start_set<P: TokenProvider + 'static>(
    shared: &Shared<P>,
    live: &mut Vec<Live>,
    set: &Arc<SetConfig>,
    pcfg: &ProviderConfig,
    start: Start<SetSink>,
) {
    match shared.spawn(set, pcfg, start).await {
        Ok(l) => live.push(l),
        Err(e) => error!(set = %set.name, error = %chain(&e), "could not start the set"),
    }
}

/// At a stop that cut a reload short, wait until `until` for the predecessors still handing
/// over, and start each successor with what it was handed, for `order` to stop it at once:
/// its tokens are revoked (or released) like every other set's, not left to the next start.
pub(super) async fn finish_handovers<P: TokenProvider + 'static>(
    mut rest: Unfinished,
    config: &Config,
    shared: &Shared<P>,
    order: impl Fn() -> Order<SetSink>,
    until: Instant,
) -> Vec<Live> {
    let mut started = Vec::new();
    while !rest.handing.is_empty() {
        let Ok(Some(e)) = timeout_at(until, rest.events.recv()).await else {
            break;
        };
        let Event::HandedOver(i, start) = e else {
            continue;
        };
        let (Some(set), Some(start)) = (rest.handing.remove(&i), start) else {
            continue;
        };
        if let Some(pcfg) = config.providers.get(&set.provider) {
            start_set(shared, &mut started, &set, pcfg, *start).await;
        }
        if let Some(l) = started.last_mut() {
            l.order(order());
        }
    }
    if !rest.handing.is_empty() {
        warn!(
            sets = rest.handing.len(),
            "sets did not hand their tokens over before the stop; they stay in the journal for the next start"
        );
    }
    started
}

/// Log how a set moving to another provider ended, and return it for a stop's report.
fn log_retired(
    set: &str,
    r: Result<Result<SetOutcome, tokio::task::JoinError>, tokio::time::error::Elapsed>,
) -> SetOutcome {
    match r {
        Ok(Ok(o)) if o.failed.is_empty() => {
            info!(set, revoked = o.revoked.len(), "old set stopped");
            o
        }
        Ok(Ok(o)) => {
            warn!(
                set,
                failed = o.failed.len(),
                "old set stopped; some tokens stay in the journal for the next start"
            );
            o
        }
        _ => {
            warn!(
                set,
                "old set did not stop in time; its tokens stay in the journal for the next start"
            );
            // Not known which: the set's task is given up on (its caller aborts it).
            SetOutcome {
                set: set.to_owned(),
                failed: vec![("(unknown)".into(), "the set did not stop in time".into())],
                ..SetOutcome::default()
            }
        }
    }
}
