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
use crate::config::Config;
use crate::control::Control;
use crate::error_chain as chain;
use crate::provider::{ProviderConfig, TokenProvider};
use crate::store::Stores;

/// Re-reads and checks the config, secrets included; the error says why it was refused.
/// Shared, so that it runs on a blocking thread while the daemon goes on taking signals.
pub type LoadConfig = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;
/// Builds a provider for a new or changed provider config (this reads its secrets).
pub type BuildProvider<P> = Box<dyn Fn(&ProviderConfig) -> Result<Arc<P>, String> + Send + Sync>;

/// What the daemon needs to apply a reload (SIGHUP).
pub struct Reloader<P> {
    pub load: LoadConfig,
    pub build: BuildProvider<P>,
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
/// filesystem), which systemd would end with SIGKILL while tokens are live. Rotations asked
/// meanwhile go through; a second SIGHUP is folded into this reload.
pub(super) async fn load_or_stop(
    load: &LoadConfig,
    control: &mut mpsc::Receiver<Control>,
    rotate: &broadcast::Sender<()>,
) -> Loading {
    let load = Arc::clone(load);
    // Left running if a stop comes first: a blocking thread cannot be cancelled, and what it
    // returns is dropped.
    let mut reading = tokio::task::spawn_blocking(move || load());
    loop {
        tokio::select! {
            r = &mut reading => {
                return Loading::Done(Box::new(
                    r.unwrap_or_else(|e| Err(format!("the config reader failed: {e}"))),
                ));
            }
            c = control.recv() => match c {
                Some(Control::Rotate) => {
                    info!("rotating every set");
                    let _ = rotate.send(());
                }
                Some(Control::Reload) => {
                    info!("SIGHUP while a reload is under way; it is the same reload");
                }
                Some(c @ (Control::Shutdown | Control::Handover)) => return Loading::Stopped(c),
                None => return Loading::Stopped(Control::Shutdown),
            }
        }
    }
}

/// Apply a new config: new sets start, removed sets revoke and remove their files, changed
/// sets are handed their predecessor's tokens (re-issued if the scopes changed, rewritten if
/// only the file did) or, when their provider changed, replaced, and unchanged sets are left
/// alone. A config that does not load, or a provider that cannot be built, changes nothing.
pub(super) async fn reload<P: TokenProvider + 'static>(
    r: &Reloader<P>,
    new: Result<Config, String>,
    config: &mut Config,
    shared: &mut Shared<P>,
    live: &mut Vec<Live>,
    retiring: &mut Vec<(String, JoinHandle<SetOutcome>)>,
) {
    let mut new = match new {
        Ok(c) => c,
        Err(e) => {
            error!("reload refused, running on with the current configuration: {e}");
            return;
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
                    return;
                }
            },
        }
    }
    if new.stores != config.stores {
        match Stores::build(&new) {
            Ok(s) => shared.stores = s,
            Err(e) => {
                error!(
                    "reload refused, running on with the current configuration: {}",
                    chain(&e)
                );
                return;
            }
        }
    }
    shared.providers = providers;
    shared.budgets = budgets;

    let deadline = Instant::now() + new.shutdown_timeout;
    let mut old: HashMap<String, Live> = live.drain(..).map(|l| (l.cfg.name.clone(), l)).collect();
    let (mut added, mut changed, mut kept) = (Vec::new(), Vec::new(), 0usize);
    for set in std::mem::take(&mut new.sets).into_iter().map(Arc::new) {
        let set = &set;
        let Some(pcfg) = new.providers.get(&set.provider) else {
            continue;
        };
        // The provider's config the running set was started with.
        let old_pcfg = |l: &Live| config.providers.get(&l.cfg.provider);
        let spawned = match old.remove(&set.name) {
            None => {
                added.push(set.name.clone());
                shared.spawn(set, pcfg, Start::default()).await
            }
            Some(l) if l.cfg == *set && old_pcfg(&l) == Some(pcfg) => {
                kept += 1;
                Ok(l)
            }
            Some(mut l) if l.cfg.provider == set.provider && old_pcfg(&l) == Some(pcfg) => {
                changed.push(set.name.clone());
                let (tx, rx) = oneshot::channel();
                l.order(Order::Handover(tx));
                let mut start = match timeout_at(Instant::now() + HANDOVER_WAIT * 2, rx).await {
                    Ok(Ok(h)) => h.start,
                    _ => {
                        warn!(set = %set.name, "the set did not hand its tokens over; they stay in the journal for the next start");
                        Start::default()
                    }
                };
                if old_pcfg(&l).map(|p| crate::config::config_hash(&l.cfg, p))
                    != Some(crate::config::config_hash(set, pcfg))
                {
                    // New scopes: the token no longer fits; it goes once the new one is written.
                    start.stale.extend(start.current.take().map(|(h, _, _)| h));
                }
                shared.spawn(set, pcfg, start).await
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
                log_retired(
                    &set.name,
                    timeout_at(deadline + STOP_RETRY_BASE, l.task).await,
                );
                shared.spawn(set, pcfg, Start::default()).await
            }
        };
        match spawned {
            Ok(l) => live.push(l),
            Err(e) => error!(set = %set.name, error = %chain(&e), "could not start the set"),
        }
    }
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
        sets = live.len(),
        added = %added.join(","),
        changed = %changed.join(","),
        removed = %removed.join(","),
        unchanged = kept,
        "reloaded the configuration"
    );
    *config = new;
}

fn log_retired(
    set: &str,
    r: Result<Result<SetOutcome, tokio::task::JoinError>, tokio::time::error::Elapsed>,
) {
    match r {
        Ok(Ok(o)) if o.failed.is_empty() => {
            info!(set, revoked = o.revoked.len(), "old set stopped")
        }
        Ok(Ok(o)) => warn!(
            set,
            failed = o.failed.len(),
            "old set stopped; some tokens stay in the journal for the next start"
        ),
        _ => warn!(
            set,
            "old set did not stop in time; its tokens stay in the journal for the next start"
        ),
    }
}
