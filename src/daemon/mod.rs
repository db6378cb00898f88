//! The daemon: one task per scope set, and the orchestration of stop.
//!
//! Each set's task owns its tokens (the current one, superseded ones awaiting revocation, and
//! one being issued), so nothing is shared and nothing is locked. The daemon only starts the
//! tasks, forwards rotate requests, and at stop gives every task one deadline by which to
//! revoke what it holds.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::join_all;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::{Config, SetConfig};
use crate::control::Control;
use crate::journal::{Entry, Journal};
use crate::provider::{Provider, ProviderError, TokenProvider};
use crate::status::{Board, Phase};
use crate::store::{SetSink, Stores};

mod adopt;
mod held;
mod live;
mod reload;
mod rescue;
mod restart;
mod revoke;
mod set_task;

pub use adopt::REMOVED_SETS;
use adopt::{adopt, revoke_leftovers};
pub use held::Held;
use live::{Live, Shared, budgets_for};
use reload::{Applied, Loading, finish_handovers, load_or_stop, reload};
pub use reload::{BuildProvider, LoadConfig, Reloader};
use rescue::{recover_crashed, rescuable};
pub use restart::{HANDOVER_ARG, Plan, Restart, inherited};
use revoke::STOP_RETRY_BASE;
pub use revoke::{Revoked, revoke_journaled};
pub use set_task::{Handover, Jitter, Order, SetTask, Start, random_jitter};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("provider {name}")]
    Provider {
        name: String,
        #[source]
        source: ProviderError,
    },
    #[error("set {set} names provider {provider}, which is not configured")]
    MissingProvider { set: String, provider: String },
    #[error("secrets store")]
    Store(#[from] crate::store::StoreError),
}

/// How a set ended: which tokens were revoked, which could not be.
#[derive(Debug, Default, Clone)]
pub struct SetOutcome {
    pub set: String,
    /// Fingerprints of revoked tokens.
    pub revoked: Vec<String>,
    /// Fingerprints and reasons of tokens that could not be revoked.
    pub failed: Vec<(String, String)>,
    /// Fingerprint of a token left in place because the set says `on_shutdown: keep`.
    pub kept: Option<String>,
    /// Fingerprints of live tokens not revoked because the provider cannot revoke, or (Square)
    /// revokes only for sets that ask; they expire on their own.
    pub expiring: Vec<String>,
}

/// How the daemon ended.
#[derive(Debug, Default)]
pub struct RunReport {
    pub sets: Vec<SetOutcome>,
    /// Sets whose task did not finish by the deadline.
    pub unfinished: Vec<String>,
    /// Sets whose task panicked; what the journal held for them was revoked in their place
    /// (see `sets`), but the daemon did not run as it should.
    pub crashed: Vec<String>,
    /// The daemon stopped to exec its new binary, which takes over these tokens: nothing was
    /// revoked (see [`Restart`]).
    pub restart: Option<Plan>,
}

impl RunReport {
    /// Sets with a token that could not be revoked.
    pub fn failed_sets(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .sets
            .iter()
            .filter(|s| !s.failed.is_empty())
            .map(|s| s.set.clone())
            .chain(self.unfinished.iter().cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn revoked_count(&self) -> usize {
        self.sets.iter().map(|s| s.revoked.len()).sum()
    }
}

/// Build every provider once, with the shared HTTP client.
pub fn build_providers(config: &Config) -> Result<HashMap<String, Arc<Provider>>, DaemonError> {
    // No hook inherits a variable the config reads a secret from.
    crate::secret::hide_env_of(config.secret_sources().map(|(_, source)| source));
    let http = crate::provider::http_client().map_err(|source| DaemonError::Provider {
        name: "(http client)".into(),
        source,
    })?;
    let mut out = HashMap::new();
    for (name, p) in &config.providers {
        let built = Provider::build(p, &http).map_err(|source| DaemonError::Provider {
            name: name.clone(),
            source,
        })?;
        out.insert(name.clone(), Arc::new(built));
    }
    for set in &config.sets {
        if !out.contains_key(&set.provider) {
            return Err(DaemonError::MissingProvider {
                set: set.name.clone(),
                provider: set.provider.clone(),
            });
        }
    }
    Ok(out)
}

/// How long the start waits for the stores to say which tokens they hold, all sets together.
/// A store that answers does so in milliseconds (a local OpenBao answered 1,000 reads one
/// after another in 0.41 s), so adoption loses nothing; a store that hangs holds the token
/// files back by this much at most instead of one store timeout per set, one after another.
const STORE_READ_BUDGET: Duration = Duration::from_secs(1);

/// Run the daemon until `control` says stop; revoke everything; report.
///
/// `entries` is what the journal held at start: fitting tokens are reused, the rest revoked.
/// `plan` is what a predecessor handed over at a restart in place: those tokens are taken
/// back as they were (current or superseded, on their schedule), without asking the provider.
/// `on_ready` is called once, when every set first has a valid token in place. Without a
/// `reloader`, SIGHUP is logged and ignored. Every set is registered on `board`, which
/// `tokenkeeper status` and the metrics read.
#[allow(clippy::too_many_arguments)] // each is a distinct input; a struct would only rename them
pub async fn run<P: TokenProvider + 'static>(
    mut config: Config,
    providers: HashMap<String, Arc<P>>,
    journal: Journal,
    entries: Vec<Entry>,
    plan: Option<Plan>,
    mut control: mpsc::Receiver<Control>,
    reloader: Option<Reloader<P>>,
    board: Arc<Board>,
    mut on_ready: impl FnMut(),
) -> Result<RunReport, DaemonError> {
    let (changed_tx, mut changed) = mpsc::channel::<()>(1);
    let (rotate, _) = broadcast::channel(16);
    let mut shared = Shared {
        budgets: budgets_for(&config),
        providers,
        journal,
        rotate,
        changed: changed_tx,
        board: Arc::clone(&board),
        stores: Stores::build(&config)?,
    };

    // Tokens a store holds for our sets (written by this or another instance) count like
    // journaled ones: reused if they fit, so a takeover or a new machine issues nothing early.
    let mut entries = entries;
    let journaled: HashSet<String> = entries.iter().map(|e| e.fingerprint.clone()).collect();
    let (stored, unread) = shared.stores.entries(&config, STORE_READ_BUDGET).await;
    // Their writers read the path before writing over it, and report the token found there.
    let displaced = (!unread.is_empty()).then(|| shared.stores.watch_unread(unread));
    let from_store: Vec<Entry> = stored
        .into_iter()
        .filter(|e| !journaled.contains(&e.fingerprint))
        .collect();
    // Journaled before they are adopted: this instance answers for them from now on, and
    // should it crash in turn, `tokenkeeper revoke` with its config must find them.
    adopt::journal_adopted(&shared.journal, &from_store).await;
    entries.extend(from_store);
    // The daemon keeps one shared copy of each set's config; `config.sets` is emptied.
    let sets: Vec<Arc<SetConfig>> = std::mem::take(&mut config.sets)
        .into_iter()
        .map(Arc::new)
        .collect();
    // Sort the journal out before any set issues: reuse what fits, revoke the rest.
    let configured: HashMap<&str, &str> = sets
        .iter()
        .map(|s| (s.name.as_str(), s.provider.as_str()))
        .collect();
    let mut by_set: HashMap<String, Vec<Entry>> = HashMap::new();
    let mut leftovers = Vec::new();
    for e in entries {
        if configured.get(e.set.as_str()) == Some(&e.provider.as_str()) {
            by_set.entry(e.set.clone()).or_default().push(e);
        } else {
            leftovers.push(e);
        }
    }
    drop(configured);
    let missing = |set: &SetConfig| DaemonError::MissingProvider {
        set: set.name.clone(),
        provider: set.provider.clone(),
    };
    // Only sets the journal holds tokens for have anything to adopt (an introspection each);
    // the others start empty, without a future apiece.
    let mut adopting = Vec::new();
    let mut journaled = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        let (Some(provider), Some(budget), Some(pcfg)) = (
            shared.providers.get(&set.provider),
            shared.budgets.get(&set.provider),
            config.providers.get(&set.provider),
        ) else {
            return Err(missing(set));
        };
        if let Some(mine) = by_set.remove(&set.name) {
            let hash = crate::config::config_hash(set, pcfg);
            adopting.push((i, hash, Arc::clone(provider), Arc::clone(budget)));
            journaled.push(mine);
        }
    }
    let now = crate::clock::now_wall();
    let inherited = plan.map(|p| p.into_inherited(now)).unwrap_or_default();
    let adopted = join_all(adopting.iter().zip(journaled).map(
        |((i, hash, provider, budget), mine)| {
            adopt(
                &sets[*i],
                hash,
                provider.as_ref(),
                budget,
                mine,
                &shared.journal,
                &inherited,
                now,
            )
        },
    ))
    .await;
    drop(inherited);
    let mut starts: HashMap<usize, Start<SetSink>> =
        adopting.iter().map(|a| a.0).zip(adopted).collect();
    drop(adopting);
    let mut live: Vec<Live> = Vec::with_capacity(sets.len());
    shared.board.reserve(sets.len());
    for (i, set) in sets.iter().enumerate() {
        let pcfg = config
            .providers
            .get(&set.provider)
            .ok_or_else(|| missing(set))?;
        let start = starts.remove(&i).unwrap_or_default();
        live.push(shared.spawn(set, pcfg, start).await?);
    }
    // Sets stopped by a reload, still revoking: the final stop waits for them too.
    let mut retiring: Vec<(String, JoinHandle<SetOutcome>)> = Vec::new();
    let (leftover_stop, leftover_stop_rx) = watch::channel(None);
    // The files the configured sets write (a leftover token's file there is theirs now), for
    // the tasks below, if there are any: at 100,000 sets the list is not free.
    let mut in_use: Vec<std::path::PathBuf> = if leftovers.is_empty() && displaced.is_none() {
        Vec::new()
    } else {
        sets.iter()
            .filter_map(|s| s.file.as_ref().map(|f| f.path.clone()))
            .collect()
    };
    if !leftovers.is_empty() {
        info!(
            tokens = leftovers.len(),
            "revoking journaled tokens of sets that are no longer configured"
        );
        retiring.push((
            REMOVED_SETS.into(),
            tokio::spawn(revoke_leftovers(
                leftovers,
                shared.providers.clone(),
                shared.journal.clone(),
                if displaced.is_some() {
                    in_use.clone()
                } else {
                    std::mem::take(&mut in_use)
                },
                leftover_stop_rx,
                now,
            )),
        ));
    }
    if let Some(found) = displaced {
        retiring.push((
            REMOVED_SETS.into(),
            tokio::spawn(adopt::revoke_displaced(
                found,
                shared.providers.clone(),
                shared.journal.clone(),
                in_use,
                leftover_stop.subscribe(),
            )),
        ));
    }
    info!(sets = live.len(), "started");
    drop(sets);

    let mut ready = false;
    // Sets before this index were seen fresh. Readiness resumes the scan there at each ping
    // instead of scanning every set each time, which at 10,000 sets made start-up quadratic.
    let mut seen_fresh = 0usize;
    let mut handover = false;
    // What a reload cut short by the stop still waited for.
    let mut cut_short = None;
    // A restart in place under way: the reload's RELOADING=1 stands until the successor's
    // READY=1.
    let mut restarting = None;
    loop {
        tokio::select! {
            c = control.recv() => match c {
                Some(Control::Rotate) => {
                    info!("rotating every set");
                    let _ = shared.rotate.send(());
                }
                Some(Control::Reload) => match &reloader {
                    Some(r) => {
                        let reloading = crate::systemd::reloading();
                        if let Some(up) = r.restart.as_ref().filter(|up| up.replaced()) {
                            match restart::preflight_or_stop(up, &mut control, &shared.rotate).await {
                                restart::Preflight::Passed => {
                                    restarting = Some(reloading);
                                    break;
                                }
                                // Logged: the config is reloaded as usual, by this binary.
                                restart::Preflight::Failed => {}
                                restart::Preflight::Stopped(c) => {
                                    handover = c == Control::Handover;
                                    break;
                                }
                            }
                        }
                        let _reloading = reloading;
                        // Again while SIGHUPs come during the reload: the file may have
                        // changed since it was read.
                        let stopped = loop {
                            let new = match load_or_stop(&r.load, &mut control, &shared.rotate).await {
                                Loading::Done(new) => new,
                                Loading::Stopped(c) => {
                                    warn!("stop requested while the new configuration was being read; the reload is abandoned");
                                    break Some((c, None));
                                }
                            };
                            let (live, retiring) = (&mut live, &mut retiring);
                            match reload(r, *new, &mut config, &mut shared, live, retiring, &mut control).await {
                                Applied::Done { again: true } => {}
                                Applied::Done { again: false } => break None,
                                Applied::Stopped(c, rest) => break Some((c, Some(rest))),
                            }
                        };
                        if let Some((c, rest)) = stopped {
                            handover = c == Control::Handover;
                            cut_short = rest;
                            break;
                        }
                        seen_fresh = 0;
                        // Look again even if no set pings: a reload that only removed the
                        // sets still waiting for a token leaves every remaining one fresh.
                        let _ = shared.changed.try_send(());
                    }
                    None => warn!("SIGHUP ignored: this daemon was started without a config file to re-read"),
                },
                Some(Control::Handover) => {
                    handover = true;
                    break;
                }
                Some(Control::Shutdown) | None => break,
            },
            Some(()) = changed.recv(), if !ready => {
                let fresh = |l: &Live| l.state.is_fresh();
                seen_fresh += live[seen_fresh..].iter().take_while(|l| fresh(l)).count();
                if seen_fresh == live.len() {
                    // Sets seen fresh earlier may have failed since: check them all, once.
                    seen_fresh = live.iter().position(|l| !fresh(l)).unwrap_or(live.len());
                }
                if seen_fresh == live.len() {
                    ready = true;
                    info!(sets = live.len(), "ready: every set has a valid token");
                    on_ready();
                }
            }
        }
    }

    if let Some(reloading) = restarting {
        info!(
            sets = live.len(),
            "handing every token over to the new binary"
        );
        let plan = restart::take_back(&mut live).await;
        // Sets a reload removed, and tokens of sets no longer configured, are still in the
        // journal until revoked: the successor finds them there and revokes them.
        drop(retiring);
        // The successor reads the journal from the disk.
        shared.journal.flush().await;
        reloading.handed_on();
        return Ok(RunReport {
            restart: Some(plan),
            ..RunReport::default()
        });
    }
    // Sets a reload (or the start) already finished with: what they revoked was logged then,
    // and is not this stop's doing.
    let before_stop: Vec<bool> = retiring.iter().map(|(_, t)| t.is_finished()).collect();
    crate::systemd::stopping();
    board.set_phase(Phase::Stopping);
    let deadline = Instant::now() + config.shutdown_timeout;
    if handover {
        info!("stopping: handing the current tokens over to another instance");
    } else {
        // Said as it will be done: `once` keeps every token, and a set may say keep.
        let keeping = live
            .iter()
            .filter(|l| l.cfg.on_shutdown == crate::config::OnShutdown::Keep)
            .count();
        let timeout = humantime::format_duration(config.shutdown_timeout);
        if keeping == 0 {
            info!(%timeout, "stopping: revoking every token");
        } else if keeping == live.len() {
            info!(%timeout, "stopping: keeping every token (on_shutdown: keep)");
        } else {
            info!(%timeout, revoking = live.len() - keeping, keeping,
                "stopping: revoking the tokens of the sets that do not say on_shutdown: keep");
        }
    }
    let order = || {
        if handover {
            Order::Release { deadline }
        } else {
            Order::Revoke {
                deadline,
                keep_file: false,
            }
        }
    };
    for l in &mut live {
        l.order(order());
    }
    leftover_stop.send_replace(Some(deadline));
    if let Some(mut rest) = cut_short {
        retiring.append(&mut rest.retiring);
        // Half the stop's time for the sets still handing over, half for their successors
        // to revoke what they were handed.
        let until = Instant::now() + deadline.saturating_duration_since(Instant::now()) / 2;
        live.extend(finish_handovers(rest, &config, &shared, order, until).await);
    }
    // A little grace past the deadline for tasks to report what they could not do.
    let grace = deadline + STOP_RETRY_BASE;
    let ending = live
        .into_iter()
        .map(|l| (Ending::Set(l.cfg), l.task))
        .chain(
            retiring
                .into_iter()
                .zip(before_stop.into_iter().chain(std::iter::repeat(false)))
                .map(|((name, task), earlier)| (Ending::Retiring { name, earlier }, task)),
        );
    let report = wait_for_sets(
        ending,
        &shared.providers,
        &shared.journal,
        handover,
        deadline,
        grace,
    )
    .await;
    // The stop's removals wait in the writer's memory; the journal left behind is on the disk.
    shared.journal.flush().await;
    Ok(report)
}

/// A set whose task is ending at stop.
enum Ending {
    /// A configured set: one whose task panics is rescued (its journaled tokens revoked).
    Set(Arc<SetConfig>),
    /// A set a reload removed, still finishing its own stop; `earlier` when it had finished
    /// before the stop began.
    Retiring { name: String, earlier: bool },
}

impl Ending {
    fn name(&self) -> &str {
        match self {
            Ending::Set(cfg) => &cfg.name,
            Ending::Retiring { name, .. } => name,
        }
    }
}

/// Where a set's end stands.
enum End {
    Waiting,
    /// It panicked; its journaled tokens are being revoked in its place.
    Rescuing,
    Done(SetOutcome),
    /// It panicked; the outcome is that of revoking its journaled tokens in its place.
    Crashed(SetOutcome),
    Unfinished,
}

/// Wait for every set's task to end, each handled as it comes (a panicked task's tokens are
/// rescued at once, not after the others), until `grace`, then abort what is left. One set
/// of handles and one timer for all: a future with a timer of its own for each set, all made
/// at SIGTERM, held about 400 bytes a set for the whole stop (4 MiB at 10,000 sets).
async fn wait_for_sets<P: TokenProvider + 'static>(
    ending: impl Iterator<Item = (Ending, JoinHandle<SetOutcome>)>,
    providers: &HashMap<String, Arc<P>>,
    journal: &Journal,
    handover: bool,
    deadline: Instant,
    grace: Instant,
) -> RunReport {
    let mut sets: Vec<(Ending, tokio::task::AbortHandle, End)> = Vec::new();
    let mut tasks = FuturesUnordered::new();
    for (i, (who, task)) in ending.enumerate() {
        sets.push((who, task.abort_handle(), End::Waiting));
        tasks.push(task.map(move |r| (i, r)));
    }
    let mut rescues = FuturesUnordered::new();
    let late = tokio::time::sleep_until(grace);
    tokio::pin!(late);
    loop {
        tokio::select! {
            Some((i, result)) = tasks.next() => {
                let (who, _, end) = &mut sets[i];
                *end = match result {
                    Ok(outcome) => End::Done(outcome),
                    Err(e) => {
                        error!(set = %who.name(), error = %e, "a set's task failed");
                        let provider = match who {
                            Ending::Set(cfg) if e.is_panic() => {
                                rescuable(cfg, providers, handover).map(|p| (Arc::clone(cfg), p))
                            }
                            _ => None,
                        };
                        match provider {
                            Some((cfg, provider)) => {
                                // In a task of its own: a provider that panicked once may again.
                                let rescue = recover_crashed(cfg, provider, journal.clone(), deadline);
                                rescues.push(tokio::spawn(rescue).map(move |r| (i, r)));
                                End::Rescuing
                            }
                            None => End::Unfinished,
                        }
                    }
                };
            }
            Some((i, result)) = rescues.next() => {
                let (who, _, end) = &mut sets[i];
                *end = match result {
                    Ok(outcome) => End::Crashed(outcome),
                    Err(e) => {
                        error!(set = %who.name(), error = %e, "could not revoke the crashed set's tokens");
                        End::Unfinished
                    }
                };
            }
            () = &mut late, if !tasks.is_empty() => {
                for (_, abort, end) in &mut sets {
                    if matches!(end, End::Waiting) {
                        abort.abort();
                        *end = End::Unfinished;
                    }
                }
                tasks.clear();
            }
            else => break,
        }
    }
    let mut report = RunReport::default();
    for (who, _, end) in sets {
        match end {
            // Its tokens were revoked (and logged) before the stop; what it could not revoke
            // is still outstanding, and still reported.
            End::Done(mut outcome) if matches!(who, Ending::Retiring { earlier: true, .. }) => {
                outcome.revoked.clear();
                outcome.expiring.clear();
                if !outcome.failed.is_empty() {
                    report.sets.push(outcome);
                }
            }
            End::Done(outcome) => report.sets.push(outcome),
            End::Crashed(outcome) => {
                report.crashed.push(outcome.set.clone());
                report.sets.push(outcome);
            }
            End::Waiting | End::Rescuing | End::Unfinished => {
                report.unfinished.push(who.name().to_string());
            }
        }
    }
    report
}

#[cfg(test)]
mod tests;
