//! The running sets, and what each set's task is started with.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{DaemonError, Order, SetOutcome, SetTask, Start, random_jitter};
use crate::budget::Budget;
use crate::config::{Config, SetConfig};
use crate::fsio;
use crate::journal::Journal;
use crate::provider::{ProviderConfig, TokenProvider};
use crate::status::{Board, SetReport};
use crate::store::{SetSink, Stores};

/// A running set.
pub(super) struct Live {
    pub(super) cfg: Arc<SetConfig>,
    /// Taken when the order is sent.
    stop: Option<oneshot::Sender<Order<SetSink>>>,
    /// The set's reports, read for readiness.
    pub(super) state: SetReport,
    pub(super) task: JoinHandle<SetOutcome>,
}

impl Live {
    /// Send the set its stop order; a set has one, so a second is ignored.
    pub(super) fn order(&mut self, order: Order<SetSink>) {
        if let Some(tx) = self.stop.take() {
            // A task that has already ended has nothing left to do.
            let _ = tx.send(order);
        }
    }
}

/// What every set's task is started with, kept for the sets a reload adds.
pub(super) struct Shared<P> {
    pub(super) providers: HashMap<String, Arc<P>>,
    pub(super) budgets: HashMap<String, Arc<Budget>>,
    pub(super) journal: Journal,
    pub(super) rotate: broadcast::Sender<()>,
    /// Pinged when a set gets a fresh token, for readiness.
    pub(super) changed: mpsc::Sender<()>,
    /// Where every set reports for `tokenkeeper status` and the metrics.
    pub(super) board: Arc<Board>,
    /// The secrets stores sets may also write to.
    pub(super) stores: Stores,
}

impl<P: TokenProvider + 'static> Shared<P> {
    pub(super) async fn spawn(
        &self,
        set: &Arc<SetConfig>,
        provider_cfg: &ProviderConfig,
        start: Start<SetSink>,
    ) -> Result<Live, DaemonError> {
        let missing = || DaemonError::MissingProvider {
            set: set.name.clone(),
            provider: set.provider.clone(),
        };
        let provider = self.providers.get(&set.provider).ok_or_else(missing)?;
        let budget = self.budgets.get(&set.provider).ok_or_else(missing)?;
        if let Some(path) = set
            .file
            .as_ref()
            .map(|f| f.path.clone())
            .filter(|p| fsio::stale_temps_pending(p))
        {
            let _ = tokio::task::spawn_blocking(move || fsio::remove_stale_temps(&path)).await;
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        let report = self.board.register(&set.name, &set.provider);
        let view = report.view();
        let file = set.file.as_ref().map(|f| f.path.as_path());
        crate::hooks::watch(&set.name, file, set.on_rotate.as_deref(), &report);
        let config_hash = crate::config::config_hash(set, provider_cfg);
        let task = SetTask {
            cfg: Arc::clone(set),
            provider: Arc::clone(provider),
            sink: self.stores.sink_for(set, &config_hash, &self.board),
            jitter: random_jitter(),
            stop: stop_rx,
            // SIGUSR1 and the set's own `rotate:` schedule, on a channel of its own.
            rotate: crate::cron::set_rotations(
                &set.name,
                set.rotate.as_deref().cloned(),
                self.rotate.subscribe(),
                &report,
                crate::cron::system_clock(),
            ),
            journal: self.journal.clone(),
            budget: Arc::clone(budget),
            config_hash: config_hash.into_boxed_str(),
            start: start.boxed(),
            report,
            ready: Some(self.changed.clone()),
        };
        Ok(Live {
            cfg: Arc::clone(set),
            stop: Some(stop_tx),
            state: view,
            task: tokio::spawn(task.run()),
        })
    }
}

pub(super) fn budgets_for(config: &Config) -> HashMap<String, Arc<Budget>> {
    config
        .providers
        .iter()
        .map(|(name, p)| {
            (
                name.clone(),
                Budget::new(name, p.max_live_tokens, p.issue_rate),
            )
        })
        .collect()
}
