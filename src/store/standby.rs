//! The HA stand-by loop: stand by until this instance holds the lease, lead while it does,
//! and give the lease up once the daemon has stopped.
//!
//! The daemon is passed in by the caller, so the store does not depend on it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::control::Control;
use crate::error_chain as chain;
use crate::status::{self, Board};
use crate::store::ha::Lease;
use crate::store::vault::StoreError;

/// What the stand-by loop needs of a lease: [`Lease`] in production, a fake in tests.
pub trait Election: Send + Sync + 'static {
    /// This instance's name in the lease.
    fn id(&self) -> &str;
    /// See [`Lease::wait_for_lease`].
    fn wait_for_lease(&self, on_leader: impl Fn(Option<String>)) -> impl Future<Output = ()>;
    /// See [`Lease::keep`].
    fn keep(&self) -> impl Future<Output = ()> + Send;
    /// See [`Lease::live_standby`].
    fn live_standby(&self) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
    /// See [`Lease::release`].
    fn release(&self) -> impl Future<Output = Result<(), StoreError>>;
    /// See [`Lease::leave`].
    fn leave(&self) -> impl Future<Output = ()>;
}

impl Election for Lease {
    fn id(&self) -> &str {
        &self.id
    }

    fn wait_for_lease(&self, on_leader: impl Fn(Option<String>)) -> impl Future<Output = ()> {
        Lease::wait_for_lease(self, on_leader)
    }

    fn keep(&self) -> impl Future<Output = ()> + Send {
        Lease::keep(self)
    }

    fn live_standby(&self) -> impl Future<Output = Result<Option<String>, StoreError>> + Send {
        Lease::live_standby(self)
    }

    fn release(&self) -> impl Future<Output = Result<(), StoreError>> {
        Lease::release(self)
    }

    fn leave(&self) -> impl Future<Output = ()> {
        Lease::leave(self)
    }
}

/// How [`run`] ended.
pub enum Outcome<T, D> {
    /// A stop signal came while standing by: the daemon never ran. It is handed back
    /// uncalled, so that what it owns (the journal and its lock) lives as long as the caller
    /// chooses.
    Stopped(D),
    /// This instance led and ran the daemon, which returned `result`. `lost` when the lease
    /// was lost while leading: another instance leads now.
    Led { result: T, lost: bool },
}

/// Stand by until this instance holds the lease, then run `daemon` with a control channel
/// that turns a stop into a handover when a standby can carry on, and a lost lease into a
/// handover; once it returns, give the lease up and leave the group. A stop signal on
/// `control` while standing by ends the stand-by without running `daemon`. `ready` is called
/// once standing by starts: a standby is a started service.
pub async fn run<L, D, F, T>(
    lease: &Arc<L>,
    board: &Arc<Board>,
    control: &mut mpsc::Receiver<Control>,
    ready: impl FnOnce(),
    daemon: D,
) -> Outcome<T, D>
where
    L: Election,
    D: FnOnce(mpsc::Receiver<Control>) -> F,
    F: Future<Output = T>,
{
    match stand_by(lease, board, control, ready).await {
        Some(l) => {
            let result = daemon(l.control).await;
            l.keeper.abort();
            let lost = l.lost.load(Ordering::SeqCst);
            // The sets have stopped writing: let a standby take over now rather than at expiry.
            if let Err(e) = lease.release().await {
                warn!(error = %chain(&e), "could not release the lease; a standby takes over when it expires");
            }
            lease.leave().await;
            Outcome::Led { result, lost }
        }
        None => {
            lease.leave().await;
            Outcome::Stopped(daemon)
        }
    }
}

/// What a standby gets once it holds the lease.
struct Leading {
    /// What `daemon::run` reads: the signals, with a stop turned into a handover when a
    /// standby is live, and a handover when the lease is lost.
    control: mpsc::Receiver<Control>,
    /// Renews the lease while leading.
    keeper: tokio::task::JoinHandle<()>,
    /// Set when the lease was lost while leading.
    lost: Arc<AtomicBool>,
}

/// Stand by until this instance holds the lease (`Some`), or until a stop signal (`None`).
async fn stand_by<L: Election>(
    lease: &Arc<L>,
    board: &Arc<Board>,
    control: &mut mpsc::Receiver<Control>,
    ready: impl FnOnce(),
) -> Option<Leading> {
    let role = |role: &str, leader: Option<String>| status::HaStatus {
        instance: lease.id().to_string(),
        role: role.into(),
        leader,
    };
    board.set_ha(role("standby", None));
    info!(instance = %lease.id(), "standing by for the lease");
    // A standby is a started service: systemd must not time out its start.
    ready();
    let wait = lease.wait_for_lease(|leader| board.set_ha(role("standby", leader)));
    tokio::pin!(wait);
    loop {
        tokio::select! {
            () = &mut wait => break,
            c = control.recv() => match c {
                Some(Control::Shutdown) | Some(Control::Handover) | None => {
                    info!("stopping while standing by: nothing to revoke");
                    return None;
                }
                Some(other) => info!(?other, "standing by: ignored until this instance leads"),
            },
        }
    }
    info!(instance = %lease.id(), "leading: this instance holds the lease");
    board.set_ha(role("leader", Some(lease.id().to_string())));
    let (tx, rx) = mpsc::channel(8);
    let lost = Arc::new(AtomicBool::new(false));
    let keeper = {
        let lease = Arc::clone(lease);
        let tx = tx.clone();
        let lost = Arc::clone(&lost);
        tokio::spawn(async move {
            lease.keep().await;
            lost.store(true, Ordering::SeqCst);
            let _ = tx.send(Control::Handover).await;
        })
    };
    // Forward the signals; a stop becomes a handover when another instance can carry on.
    let mut signals = std::mem::replace(control, mpsc::channel(1).1);
    let lease = Arc::clone(lease);
    tokio::spawn(async move {
        while let Some(c) = signals.recv().await {
            let c = match c {
                Control::Shutdown => match lease.live_standby().await {
                    Ok(Some(standby)) => {
                        info!(%standby, "a standby is live: handing over instead of revoking");
                        Control::Handover
                    }
                    Ok(None) => Control::Shutdown,
                    Err(e) => {
                        warn!(error = %chain(&e), "cannot tell whether a standby is live; revoking");
                        Control::Shutdown
                    }
                },
                other => other,
            };
            if tx.send(c).await.is_err() {
                break;
            }
        }
    });
    Some(Leading {
        control: rx,
        keeper,
        lost,
    })
}
