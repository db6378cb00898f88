//! The daemon: one task per scope set, and the orchestration of stop.
//!
//! Each set's task owns its tokens (the current one, superseded ones awaiting revocation, and
//! one being issued), so nothing is shared and nothing is locked. The daemon only starts the
//! tasks, forwards rotate requests, and at stop gives every task one deadline by which to
//! revoke what it holds.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout_at};
use tracing::{error, info, warn};

use crate::config::{Config, FileConfig, OnShutdown, SetConfig};
use crate::error_chain as chain;
use crate::provider::{Issued, Provider, ProviderError, TokenProvider};
use crate::schedule::{RetryClass, refresh_after, retry_after};
use crate::secret::Secret;
use crate::sink::{self, SinkError, TokenContent};
use crate::status::{Board, Phase, SetStats};

/// First pause between revocation attempts at stop; doubled up to [`STOP_RETRY_CAP`]. Short,
/// because the whole stop has only `shutdown_timeout` (20 s by default).
const STOP_RETRY_BASE: Duration = Duration::from_millis(250);

/// Longest pause between revocation attempts at stop: several attempts still fit in the
/// default 20 s deadline.
const STOP_RETRY_CAP: Duration = Duration::from_secs(2);

/// A superseded token whose revocation failed is tried again this much later, with backoff on
/// top; it is dropped once it has expired, since an expired token needs no revocation.
const SUPERSEDED_RETRY: Duration = Duration::from_secs(5);

/// What the process asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGTERM/SIGINT: revoke everything and stop.
    Shutdown,
    /// SIGUSR1: give every set a new token now.
    Rotate,
    /// SIGHUP: re-read the config.
    Reload,
}

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
}

/// Where a set's token goes. The file is the first kind; a secrets store is another.
pub trait TokenSink: Send + Sync + 'static {
    /// Replace what the sink holds with this token, atomically.
    fn write(
        &self,
        token: &Secret,
        issued: &IssuedMeta,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// Remove the token from the sink (nothing there is fine).
    fn remove(&self) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// The non-secret facts about a token that sinks render.
#[derive(Debug, Clone)]
pub struct IssuedMeta {
    pub token_type: String,
    pub scope: String,
    pub expires_at: SystemTime,
}

/// A token file, written with [`sink::write_atomic`] on the blocking pool.
pub struct FileSink {
    set: String,
    file: FileConfig,
}

impl FileSink {
    pub fn new(set: &SetConfig) -> Self {
        FileSink {
            set: set.name.clone(),
            file: set.file.clone(),
        }
    }
}

async fn blocking<T: Send + 'static>(
    path: &std::path::Path,
    f: impl FnOnce() -> Result<T, SinkError> + Send + 'static,
) -> Result<T, SinkError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(SinkError::Io {
            op: "write (the writer thread failed)",
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}

impl TokenSink for FileSink {
    async fn write(&self, token: &Secret, meta: &IssuedMeta) -> Result<(), SinkError> {
        let bytes = sink::render(
            self.file.format,
            &TokenContent {
                set: &self.set,
                token,
                token_type: &meta.token_type,
                expires_at: meta.expires_at,
                scope: &meta.scope,
            },
        );
        let file = self.file.clone();
        blocking(&self.file.path, move || {
            sink::ensure_parent(&file.path)?;
            sink::write_atomic(&file, &bytes)
        })
        .await
    }

    async fn remove(&self) -> Result<(), SinkError> {
        let path: PathBuf = self.file.path.clone();
        blocking(&self.file.path, move || sink::remove(&path)).await
    }
}

/// A token a set holds.
struct Held {
    token: Secret,
    fingerprint: String,
    expires_at: Instant,
}

impl Held {
    fn from_issued(issued: Issued) -> (Held, IssuedMeta) {
        let meta = IssuedMeta {
            expires_at: issued.expires_at_wall(),
            token_type: issued.token_type.clone(),
            scope: issued.scope.clone(),
        };
        let held = Held {
            fingerprint: issued.token.fingerprint(),
            expires_at: issued.expires_at(),
            token: issued.token,
        };
        (held, meta)
    }
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
}

/// A set's state as others may see it (readiness, status).
#[derive(Debug, Clone, PartialEq)]
pub enum SetState {
    /// No token yet.
    Starting,
    /// A valid token is in the sink.
    Fresh {
        fingerprint: String,
        expires_at: Instant,
        next_refresh: Instant,
    },
    /// The last attempt failed; `has_token` says whether a valid token is still in place.
    Failing { has_token: bool, error: String },
    /// Stopped.
    Stopped,
}

/// Source of uniform draws in [0, 1) for jitter; tests pin it.
pub type Jitter = Arc<dyn Fn() -> f64 + Send + Sync>;

/// The production jitter source.
pub fn random_jitter() -> Jitter {
    Arc::new(fastrand::f64)
}

/// Everything one set's task needs.
pub struct SetTask<P, S> {
    pub cfg: SetConfig,
    pub provider: Arc<P>,
    pub sink: S,
    pub jitter: Jitter,
    /// Becomes `Some(deadline)` when the set must stop and revoke by `deadline`.
    pub stop: watch::Receiver<Option<Instant>>,
    pub rotate: broadcast::Receiver<()>,
    pub state: watch::Sender<SetState>,
    /// Counters and facts for `tokenkeeper status` and the metrics (see [`Board::register`]).
    pub stats: watch::Sender<SetStats>,
}

/// Result of a revocation attempt of a superseded token, with the token back if it failed.
type SupersededResult = (Held, Result<(), ProviderError>);

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

    /// Keep the set's sink holding a valid token until told to stop, then revoke.
    pub async fn run(mut self) -> SetOutcome {
        let name = self.cfg.name.clone();
        let mut current: Option<Held> = None;
        // Superseded tokens waiting for their revocation time.
        let mut superseded: Vec<(Held, Instant)> = Vec::new();
        // Revocations of superseded tokens under way.
        let mut revoking: JoinSet<SupersededResult> = JoinSet::new();
        // Tokens obtained but never written (a write failed, or stop came first).
        let mut orphans: Vec<Held> = Vec::new();
        let mut next_issue = Instant::now();
        let mut last_issue: Option<Instant> = None;
        let mut attempt: u32 = 0;
        let deadline: Instant;

        loop {
            let expiry = current.as_ref().map(|h| h.expires_at);
            let next_revoke = superseded.iter().map(|(_, at)| *at).min();
            let live = usize::from(current.is_some()) + superseded.len() + revoking.len();
            self.stats.send_if_modified(|s| s.set_live(live));
            tokio::select! {
                biased;
                changed = self.stop.changed() => {
                    deadline = stop_deadline(&self.stop, changed);
                    break;
                }
                Ok(()) = self.rotate.recv() => {
                    let floor = last_issue.map(|t| t + self.cfg.refresh.min_interval);
                    next_issue = floor.map_or_else(Instant::now, |f| f.max(Instant::now()));
                    info!(set = %name, "rotation requested");
                }
                Some(joined) = revoking.join_next(), if !revoking.is_empty() => {
                    if let Ok((_, r)) = &joined {
                        self.stats.send_modify(|s| s.revoke_result(r.is_ok()));
                    }
                    if let Ok((held, Err(e))) = joined {
                        if held.expires_at > Instant::now() {
                            warn!(set = %name, fingerprint = %held.fingerprint, error = %chain(&e),
                                "could not revoke superseded token; will retry");
                            let again = Instant::now() + SUPERSEDED_RETRY.mul_f64(1.0 + (self.jitter)());
                            superseded.push((held, again));
                        }
                    } else if let Ok((held, Ok(()))) = joined {
                        info!(set = %name, fingerprint = %held.fingerprint, "revoked superseded token");
                    }
                }
                () = sleep_until(expiry.unwrap_or(next_issue)), if expiry.is_some() => {
                    if let Some(h) = current.take() {
                        error!(set = %name, fingerprint = %h.fingerprint,
                            "token expired with no replacement; removing its file");
                        if let Err(e) = self.sink.remove().await {
                            error!(set = %name, error = %chain(&e), "could not remove expired token");
                        }
                        self.stats.send_modify(SetStats::token_expired);
                        self.state.send_replace(SetState::Failing {
                            has_token: false,
                            error: "token expired with no replacement".into(),
                        });
                    }
                }
                () = sleep_until(next_revoke.unwrap_or(next_issue)), if next_revoke.is_some() => {
                    let now = Instant::now();
                    let (due, later): (Vec<_>, Vec<_>) =
                        superseded.drain(..).partition(|(_, at)| *at <= now);
                    superseded = later;
                    for (held, _) in due {
                        if held.expires_at <= now {
                            info!(set = %name, fingerprint = %held.fingerprint,
                                "superseded token expired before its revocation; nothing to revoke");
                            continue;
                        }
                        let p = Arc::clone(&self.provider);
                        revoking.spawn(async move {
                            let r = p.revoke(&held.token).await;
                            (held, r)
                        });
                    }
                }
                () = sleep_until(next_issue) => {
                    last_issue = Some(Instant::now());
                    self.stats.send_modify(SetStats::issue_started);
                    let issue = self.provider.issue(&self.cfg.scopes);
                    tokio::pin!(issue);
                    let result = tokio::select! {
                        biased;
                        r = &mut issue => r,
                        changed = self.stop.changed() => {
                            // Stop arrived mid-issue. The provider may already have minted the
                            // token, so wait for the answer (up to the deadline) and revoke it.
                            deadline = stop_deadline(&self.stop, changed);
                            match timeout_at(deadline, issue).await {
                                Ok(Ok(issued)) => {
                                    let (held, _) = Held::from_issued(issued);
                                    info!(set = %name, fingerprint = %held.fingerprint,
                                        "token issued while stopping; revoking it");
                                    orphans.push(held);
                                }
                                Ok(Err(e)) => warn!(set = %name, error = %chain(&e), "issue in flight at stop failed"),
                                Err(_) => warn!(set = %name, "issue in flight at stop did not finish by the deadline; if the provider minted it, it will expire on its own"),
                            }
                            break;
                        }
                    };
                    match result {
                        Ok(issued) => {
                            self.stats.send_modify(SetStats::issue_succeeded);
                            let lifetime = issued.lifetime;
                            let issued_at = issued.issued_at;
                            let (held, meta) = Held::from_issued(issued);
                            match self.sink.write(&held.token, &meta).await {
                                Ok(()) => {
                                    attempt = 0;
                                    next_issue = issued_at + refresh_after(lifetime, &self.cfg.refresh, (self.jitter)());
                                    self.stats.send_modify(|s| s.written(&held.fingerprint, meta.expires_at, next_issue));
                                    info!(set = %name, provider = %self.cfg.provider,
                                        fingerprint = %held.fingerprint,
                                        expires_at = %humantime::format_rfc3339_seconds(meta.expires_at),
                                        expires_in = %humantime::format_duration(whole_secs(lifetime)),
                                        refresh_in = %humantime::format_duration(whole_secs(next_issue.saturating_duration_since(Instant::now()))),
                                        "token written");
                                    self.state.send_replace(SetState::Fresh {
                                        fingerprint: held.fingerprint.clone(),
                                        expires_at: held.expires_at,
                                        next_refresh: next_issue,
                                    });
                                    if let Some(old) = current.replace(held) {
                                        superseded.push((old, Instant::now() + self.cfg.revoke_superseded_after));
                                    }
                                }
                                Err(e) => {
                                    // The file still holds the previous token (or nothing); the
                                    // new token was never seen by anyone, so revoke it now.
                                    let delay = retry_after(RetryClass::Transient, attempt, None, (self.jitter)());
                                    attempt = attempt.saturating_add(1);
                                    next_issue = self.retry_at(delay, last_issue);
                                    error!(set = %name, fingerprint = %held.fingerprint, error = %chain(&e),
                                        retry_in = %humantime::format_duration(whole_secs(delay)),
                                        "could not write the token; revoking it and retrying");
                                    superseded.push((held, Instant::now()));
                                    self.stats.send_modify(|s| s.issue_failed(chain(&e), next_issue));
                                    self.state.send_replace(SetState::Failing {
                                        has_token: current.is_some(),
                                        error: chain(&e),
                                    });
                                }
                            }
                        }
                        Err(e) => {
                            let delay = retry_after(e.retry_class(), attempt, e.retry_after(), (self.jitter)());
                            attempt = attempt.saturating_add(1);
                            next_issue = self.retry_at(delay, last_issue);
                            let retry_in = humantime::format_duration(whole_secs(delay));
                            match e.retry_class() {
                                RetryClass::Slow => error!(set = %name, provider = %self.cfg.provider,
                                    error = %chain(&e), %retry_in,
                                    "provider refused to issue a token; check the credentials and scopes"),
                                RetryClass::Transient => warn!(set = %name, provider = %self.cfg.provider,
                                    error = %chain(&e), %retry_in, "could not get a token"),
                            }
                            self.stats.send_modify(|s| s.issue_failed(chain(&e), next_issue));
                            self.state.send_replace(SetState::Failing {
                                has_token: current.is_some(),
                                error: chain(&e),
                            });
                        }
                    }
                }
            }
        }

        // Stop: collect every live token this set holds and revoke them together.
        let mut outcome = SetOutcome {
            set: name.clone(),
            ..SetOutcome::default()
        };
        if let Ok(Some(pending)) = timeout_at(deadline, async {
            let mut back = Vec::new();
            while let Some(joined) = revoking.join_next().await {
                if let Ok((held, Err(_))) = joined {
                    back.push(held);
                }
            }
            Some(back)
        })
        .await
        {
            orphans.extend(pending);
        } else {
            revoking.abort_all();
        }
        let mut to_revoke: Vec<Held> = orphans;
        to_revoke.extend(superseded.into_iter().map(|(h, _)| h));
        let mut current_revoked = false;
        let current_fp = current.as_ref().map(|h| h.fingerprint.clone());
        match (current, self.cfg.on_shutdown) {
            (Some(h), OnShutdown::Revoke) => to_revoke.push(h),
            (Some(h), OnShutdown::Keep) => {
                info!(set = %name, fingerprint = %h.fingerprint, "keeping the token at stop (on_shutdown: keep)");
                outcome.kept = Some(h.fingerprint);
            }
            (None, _) => {}
        }
        let now = Instant::now();
        let (live, expired): (Vec<_>, Vec<_>) =
            to_revoke.into_iter().partition(|h| h.expires_at > now);
        drop(expired);
        let results = join_all(
            live.iter()
                .map(|h| revoke_until(self.provider.as_ref(), &h.token, deadline)),
        )
        .await;
        for (h, r) in live.iter().zip(results) {
            self.stats.send_modify(|s| s.revoke_result(r.is_ok()));
            match r {
                Ok(()) => {
                    if current_fp.as_deref() == Some(&h.fingerprint) {
                        current_revoked = true;
                    }
                    outcome.revoked.push(h.fingerprint.clone());
                }
                Err(e) => {
                    error!(set = %name, fingerprint = %h.fingerprint, error = %e, "could not revoke token");
                    outcome.failed.push((h.fingerprint.clone(), e));
                }
            }
        }
        if !outcome.revoked.is_empty() {
            info!(set = %name, provider = %self.cfg.provider, fingerprints = %outcome.revoked.join(","), "revoked");
        }
        // The file goes when its token is revoked (or gone); a token that could not be revoked
        // stays in place, still usable, until it expires.
        if outcome.kept.is_none() && (current_revoked || current_fp.is_none()) {
            if let Err(e) = self.sink.remove().await {
                error!(set = %name, error = %chain(&e), "could not remove the token file");
            }
        }
        let still_live = outcome.failed.len() + usize::from(outcome.kept.is_some());
        self.stats.send_if_modified(|s| s.set_live(still_live));
        self.state.send_replace(SetState::Stopped);
        outcome
    }
}

/// The deadline the daemon sent. If it dropped its end without one (it is going away),
/// stop quickly rather than hang.
fn stop_deadline(
    stop: &watch::Receiver<Option<Instant>>,
    _changed: Result<(), watch::error::RecvError>,
) -> Instant {
    stop.borrow()
        .unwrap_or_else(|| Instant::now() + STOP_RETRY_CAP)
}

/// Revoke `token`, retrying transient failures until `deadline`.
async fn revoke_until<P: TokenProvider>(
    provider: &P,
    token: &Secret,
    deadline: Instant,
) -> Result<(), String> {
    let mut pause = STOP_RETRY_BASE;
    loop {
        match timeout_at(deadline, provider.revoke(token)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) if e.retry_class() == RetryClass::Transient => {
                if Instant::now() + pause >= deadline {
                    return Err(chain(&e));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(STOP_RETRY_CAP);
            }
            Ok(Err(e)) => return Err(chain(&e)),
            Err(_) => return Err("shutdown_timeout reached before the provider answered".into()),
        }
    }
}

fn whole_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// How the daemon ended.
#[derive(Debug, Default)]
pub struct RunReport {
    pub sets: Vec<SetOutcome>,
    /// Sets whose task did not finish by the deadline.
    pub unfinished: Vec<String>,
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

struct Running {
    stop: watch::Sender<Option<Instant>>,
    state: watch::Receiver<SetState>,
}

/// Build every provider once, with the shared HTTP client.
pub fn build_providers(config: &Config) -> Result<HashMap<String, Arc<Provider>>, DaemonError> {
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

/// Run the daemon until `control` says stop; revoke everything; report.
///
/// `on_ready` is called once, when every set first has a valid token in place. Every set is
/// registered on `board`, which `tokenkeeper status` and the metrics read.
pub async fn run<P: TokenProvider + 'static>(
    config: Config,
    providers: HashMap<String, Arc<P>>,
    mut control: mpsc::Receiver<Control>,
    board: Arc<Board>,
    mut on_ready: impl FnMut(),
) -> Result<RunReport, DaemonError> {
    let (rotate_tx, _) = broadcast::channel(16);
    let mut tasks = JoinSet::new();
    let mut running: Vec<(String, Running)> = Vec::new();
    for set in &config.sets {
        let provider =
            providers
                .get(&set.provider)
                .ok_or_else(|| DaemonError::MissingProvider {
                    set: set.name.clone(),
                    provider: set.provider.clone(),
                })?;
        let path = set.file.path.clone();
        let _ = tokio::task::spawn_blocking(move || sink::remove_stale_temps(&path)).await;
        let (stop_tx, stop_rx) = watch::channel(None);
        let (state_tx, state_rx) = watch::channel(SetState::Starting);
        let stats = board.register(set, state_rx.clone());
        let task = SetTask {
            cfg: set.clone(),
            provider: Arc::clone(provider),
            sink: FileSink::new(set),
            jitter: random_jitter(),
            stop: stop_rx,
            rotate: rotate_tx.subscribe(),
            state: state_tx,
            stats,
        };
        tasks.spawn(task.run());
        running.push((
            set.name.clone(),
            Running {
                stop: stop_tx,
                state: state_rx,
            },
        ));
    }
    info!(sets = config.sets.len(), "started");

    let mut ready = false;
    let (any_change_tx, mut any_change) = mpsc::channel::<()>(1);
    for (_, r) in &running {
        let mut rx = r.state.clone();
        let tx = any_change_tx.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                if tx.send(()).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(any_change_tx);

    loop {
        tokio::select! {
            c = control.recv() => match c {
                Some(Control::Rotate) => {
                    info!("rotating every set");
                    let _ = rotate_tx.send(());
                }
                Some(Control::Reload) => {
                    warn!("SIGHUP: reloading the configuration is not supported by this version yet; running on with the current one");
                }
                Some(Control::Shutdown) | None => break,
            },
            Some(()) = any_change.recv(), if !ready => {
                if running.iter().all(|(_, r)| matches!(*r.state.borrow(), SetState::Fresh { .. })) {
                    ready = true;
                    info!(sets = running.len(), "ready: every set has a valid token");
                    on_ready();
                }
            }
        }
    }

    crate::systemd::stopping();
    board.set_phase(Phase::Stopping);
    let deadline = Instant::now() + config.shutdown_timeout;
    info!(
        timeout = %humantime::format_duration(config.shutdown_timeout),
        "stopping: revoking every token"
    );
    for (_, r) in &running {
        r.stop.send_replace(Some(deadline));
    }
    let mut report = RunReport::default();
    // A little grace past the deadline for tasks to report what they could not do.
    let grace = deadline + STOP_RETRY_BASE;
    while let Ok(Some(joined)) = timeout_at(grace, tasks.join_next()).await {
        match joined {
            Ok(outcome) => report.sets.push(outcome),
            Err(e) => error!(error = %e, "a set's task failed"),
        }
    }
    let finished: Vec<&str> = report.sets.iter().map(|s| s.set.as_str()).collect();
    report.unfinished = running
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| !finished.contains(&n.as_str()))
        .collect();
    tasks.abort_all();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileFormat, RefreshPolicy};
    use crate::provider::Introspection;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// A provider whose every call is recorded with the (paused) time it happened.
    #[derive(Default)]
    struct Mock {
        s: Mutex<MockState>,
    }

    #[derive(Default)]
    struct MockState {
        lifetime: Duration,
        issue_delay: Duration,
        next: u32,
        issued: Vec<(String, Instant)>,
        revoked: Vec<(String, Instant)>,
        /// Failures to return from the next issue calls (status codes; 0 = transport-like 503).
        fail: VecDeque<u16>,
        fail_all: Option<u16>,
        fail_revoke: bool,
        /// Every issue call, failed or not.
        attempts: Vec<Instant>,
    }

    impl Mock {
        fn new(lifetime: Duration) -> Arc<Mock> {
            let m = Mock::default();
            m.s.lock().unwrap().lifetime = lifetime;
            Arc::new(m)
        }
        fn issued(&self) -> Vec<(String, Instant)> {
            self.s.lock().unwrap().issued.clone()
        }
        fn revoked(&self) -> Vec<(String, Instant)> {
            self.s.lock().unwrap().revoked.clone()
        }
        fn live(&self) -> Vec<String> {
            let s = self.s.lock().unwrap();
            let now = Instant::now();
            s.issued
                .iter()
                .filter(|(t, at)| *at + s.lifetime > now && !s.revoked.iter().any(|(r, _)| r == t))
                .map(|(t, _)| t.clone())
                .collect()
        }
    }

    fn failure(status: u16) -> ProviderError {
        if status >= 500 || status == 429 {
            ProviderError::Unavailable {
                operation: "token request",
                status,
                detail: String::new(),
                retry_after: None,
            }
        } else {
            ProviderError::Refused {
                operation: "token request",
                status,
                detail: String::new(),
            }
        }
    }

    impl TokenProvider for Mock {
        async fn issue(&self, _scopes: &[String]) -> Result<Issued, ProviderError> {
            let issued_at = Instant::now();
            let (delay, fail) = {
                let mut s = self.s.lock().unwrap();
                s.attempts.push(issued_at);
                let fail = s.fail.pop_front().or(s.fail_all);
                (s.issue_delay, fail)
            };
            if let Some(status) = fail {
                return Err(failure(status));
            }
            let (token, lifetime) = {
                let mut s = self.s.lock().unwrap();
                s.next += 1;
                let token = format!("tok{}", s.next);
                s.issued.push((token.clone(), issued_at));
                (token, s.lifetime)
            };
            // Minted first, answered later: like a slow server.
            tokio::time::sleep(delay).await;
            Ok(Issued {
                token: Secret::new(token),
                token_type: "Bearer".into(),
                scope: "api".into(),
                issued_at,
                lifetime,
            })
        }
        async fn revoke(&self, token: &Secret) -> Result<(), ProviderError> {
            let mut s = self.s.lock().unwrap();
            if s.fail_revoke {
                return Err(failure(403));
            }
            s.revoked.push((token.expose().to_string(), Instant::now()));
            Ok(())
        }
        async fn introspect(&self, _token: &Secret) -> Result<Introspection, ProviderError> {
            Ok(Introspection::Inactive)
        }
    }

    #[derive(Debug, Clone, PartialEq)]
    enum Ev {
        Write(String, Instant),
        Remove(Instant),
    }

    #[derive(Clone, Default)]
    struct MemSink {
        ev: Arc<Mutex<Vec<Ev>>>,
    }

    impl MemSink {
        fn events(&self) -> Vec<Ev> {
            self.ev.lock().unwrap().clone()
        }
        /// What a reader would see now.
        fn content(&self) -> Option<String> {
            match self.ev.lock().unwrap().last() {
                Some(Ev::Write(t, _)) => Some(t.clone()),
                _ => None,
            }
        }
    }

    impl TokenSink for MemSink {
        async fn write(&self, token: &Secret, _m: &IssuedMeta) -> Result<(), SinkError> {
            self.ev
                .lock()
                .unwrap()
                .push(Ev::Write(token.expose().into(), Instant::now()));
            Ok(())
        }
        async fn remove(&self) -> Result<(), SinkError> {
            self.ev.lock().unwrap().push(Ev::Remove(Instant::now()));
            Ok(())
        }
    }

    fn set_cfg(at: f64, jitter: f64) -> SetConfig {
        SetConfig {
            name: "s".into(),
            provider: "p".into(),
            scopes: vec!["api".into()],
            file: FileConfig {
                path: "/nonexistent/s.token".into(),
                format: FileFormat::Raw,
                mode: 0o640,
                owner: None,
                group: None,
            },
            refresh: RefreshPolicy {
                at,
                jitter,
                min_interval: Duration::from_secs(1),
            },
            on_shutdown: OnShutdown::Revoke,
            revoke_superseded_after: Duration::from_secs(60),
        }
    }

    struct Harness {
        stop: watch::Sender<Option<Instant>>,
        rotate: broadcast::Sender<()>,
        task: tokio::task::JoinHandle<SetOutcome>,
        sink: MemSink,
    }

    fn start(cfg: SetConfig, p: &Arc<Mock>, u: f64) -> Harness {
        let (stop, stop_rx) = watch::channel(None);
        let (rotate, rotate_rx) = broadcast::channel(4);
        let (state, _) = watch::channel(SetState::Starting);
        let (stats, _) = watch::channel(SetStats::default());
        let sink = MemSink::default();
        let task = SetTask {
            cfg,
            provider: Arc::clone(p),
            sink: sink.clone(),
            jitter: Arc::new(move || u),
            stop: stop_rx,
            rotate: rotate_rx,
            state,
            stats,
        };
        let task = tokio::spawn(task.run());
        Harness {
            stop,
            rotate,
            task,
            sink,
        }
    }

    impl Harness {
        async fn stop(self, timeout: Duration) -> (SetOutcome, MemSink) {
            self.stop.send_replace(Some(Instant::now() + timeout));
            (self.task.await.unwrap(), self.sink)
        }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[tokio::test(start_paused = true)]
    async fn refreshes_at_the_planned_time_and_revokes_the_superseded_token_later() {
        let t0 = Instant::now();
        let p = Mock::new(S(900));
        let h = start(set_cfg(0.66, 0.10), &p, 0.0);
        tokio::time::sleep(S(1300)).await;
        let issued: Vec<Duration> = p.issued().iter().map(|(_, at)| *at - t0).collect();
        // u = 0: exactly 66 % of 900 s = 594 s apart.
        assert_eq!(issued, vec![S(0), S(594), S(1188)]);
        let revoked: Vec<(String, Duration)> = p
            .revoked()
            .iter()
            .map(|(t, at)| (t.clone(), *at - t0))
            .collect();
        assert_eq!(
            revoked,
            vec![("tok1".into(), S(654)), ("tok2".into(), S(1248))]
        );
        assert_eq!(h.sink.content().as_deref(), Some("tok3"));
        // At most two live tokens at any time.
        assert_eq!(p.live(), vec!["tok3".to_string()]);
        let (outcome, sink) = h.stop(S(5)).await;
        assert_eq!(outcome.revoked.len(), 1);
        assert!(outcome.failed.is_empty());
        assert!(p.live().is_empty());
        assert!(matches!(sink.events().last(), Some(Ev::Remove(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_brings_the_refresh_forward() {
        let t0 = Instant::now();
        let p = Mock::new(S(900));
        let h = start(set_cfg(0.66, 0.10), &p, 0.5);
        tokio::time::sleep(S(600)).await;
        let issued: Vec<Duration> = p.issued().iter().map(|(_, at)| *at - t0).collect();
        // 594 s − 0.5 × 90 s = 549 s.
        assert_eq!(issued, vec![S(0), S(549)]);
        h.stop(S(5)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_keeps_the_token_until_it_expires_then_removes_it_and_recovers() {
        let t0 = Instant::now();
        let p = Mock::new(S(100));
        let h = start(set_cfg(0.5, 0.0), &p, 1.0);
        tokio::time::sleep(S(1)).await;
        p.s.lock().unwrap().fail_all = Some(503);
        // Retries from 50 s on fail; the token stays in place until 100 s.
        tokio::time::sleep(S(98)).await;
        assert_eq!(h.sink.content().as_deref(), Some("tok1"));
        tokio::time::sleep(S(2)).await;
        assert_eq!(h.sink.content(), None, "{:?}", h.sink.events());
        let removed_at = h
            .sink
            .events()
            .iter()
            .find_map(|e| match e {
                Ev::Remove(at) => Some(*at - t0),
                _ => None,
            })
            .unwrap();
        assert_eq!(removed_at, S(100));
        p.s.lock().unwrap().fail_all = None;
        // Backoff is capped at 60 s, so a new token is in place within a minute.
        tokio::time::sleep(S(61)).await;
        assert_eq!(h.sink.content().as_deref(), Some("tok2"));
        h.stop(S(5)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_back_off_exponentially() {
        let t0 = Instant::now();
        let p = Mock::new(S(900));
        p.s.lock().unwrap().fail = VecDeque::from(vec![503, 503, 503, 503]);
        // u = 1: the backoff ceiling itself: 1, 2, 4, 8 s.
        let h = start(set_cfg(0.66, 0.0), &p, 1.0);
        tokio::time::sleep(S(20)).await;
        let issued: Vec<Duration> = p.issued().iter().map(|(_, at)| *at - t0).collect();
        assert_eq!(issued, vec![S(15)]);
        h.stop(S(5)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_retried_slowly() {
        let p = Mock::new(S(900));
        p.s.lock().unwrap().fail_all = Some(401);
        let h = start(set_cfg(0.66, 0.0), &p, 0.0);
        tokio::time::sleep(S(600)).await;
        let attempts = p.s.lock().unwrap().attempts.clone();
        // With u = 0 the slow class waits exactly its 30 s floor: 0, 30, …, 600 s at most.
        assert!(attempts.len() <= 21, "{} attempts", attempts.len());
        for w in attempts.windows(2) {
            assert!(
                w[1] - w[0] >= crate::schedule::SLOW_RETRY_FLOOR,
                "{:?}",
                w[1] - w[0]
            );
        }
        p.s.lock().unwrap().fail_all = None;
        tokio::time::sleep(S(31)).await;
        assert_eq!(h.sink.content().as_deref(), Some("tok1"));
        h.stop(S(5)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn stop_revokes_current_superseded_and_in_flight_tokens() {
        let p = Mock::new(S(900));
        let h = start(set_cfg(0.66, 0.0), &p, 0.0);
        tokio::time::sleep(S(595)).await; // tok2 written at 594; tok1 superseded
        p.s.lock().unwrap().issue_delay = S(3);
        let _ = h.rotate.send(());
        tokio::time::sleep(Duration::from_millis(1500)).await; // tok3 minted, answer pending
        assert_eq!(p.issued().len(), 3);
        let (outcome, sink) = h.stop(S(10)).await;
        let mut revoked: Vec<String> = p.revoked().into_iter().map(|(t, _)| t).collect();
        revoked.sort();
        assert_eq!(revoked, vec!["tok1", "tok2", "tok3"]);
        assert_eq!(outcome.revoked.len(), 3);
        assert!(p.live().is_empty());
        // tok3 was never written; the file held tok2 and is gone.
        assert_eq!(sink.content(), None);
        assert!(
            !sink
                .events()
                .iter()
                .any(|e| matches!(e, Ev::Write(t, _) if t == "tok3"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_revocation_keeps_the_file_and_is_reported() {
        let p = Mock::new(S(900));
        let h = start(set_cfg(0.66, 0.0), &p, 0.0);
        tokio::time::sleep(S(1)).await;
        p.s.lock().unwrap().fail_revoke = true;
        let (outcome, sink) = h.stop(S(5)).await;
        assert_eq!(outcome.failed.len(), 1);
        assert_eq!(sink.content().as_deref(), Some("tok1"));
    }

    #[tokio::test(start_paused = true)]
    async fn keep_leaves_the_current_token_in_place() {
        let p = Mock::new(S(900));
        let mut cfg = set_cfg(0.66, 0.0);
        cfg.on_shutdown = OnShutdown::Keep;
        let h = start(cfg, &p, 0.0);
        tokio::time::sleep(S(1)).await;
        let (outcome, sink) = h.stop(S(5)).await;
        assert!(outcome.kept.is_some());
        assert!(p.revoked().is_empty());
        assert_eq!(sink.content().as_deref(), Some("tok1"));
    }

    #[tokio::test(start_paused = true)]
    async fn rotate_respects_min_interval() {
        let t0 = Instant::now();
        let p = Mock::new(S(900));
        let h = start(set_cfg(0.66, 0.0), &p, 0.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = h.rotate.send(());
        tokio::time::sleep(S(5)).await;
        let issued: Vec<Duration> = p.issued().iter().map(|(_, at)| *at - t0).collect();
        assert_eq!(issued, vec![S(0), S(1)]);
        h.stop(S(5)).await;
    }
}
