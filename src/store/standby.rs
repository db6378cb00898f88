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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use tokio::sync::watch;

    use super::*;

    /// A lease held by another instance ("other") until `win` is set, and kept until `lose`
    /// is set; it records what the loop did with it.
    struct FakeLease {
        win: watch::Sender<bool>,
        lose: watch::Sender<bool>,
        standby: Mutex<Option<String>>,
        released: AtomicBool,
        left: AtomicBool,
    }

    impl FakeLease {
        fn new(won: bool) -> Arc<FakeLease> {
            Arc::new(FakeLease {
                win: watch::channel(won).0,
                lose: watch::channel(false).0,
                standby: Mutex::new(None),
                released: AtomicBool::new(false),
                left: AtomicBool::new(false),
            })
        }
    }

    impl Election for FakeLease {
        fn id(&self) -> &str {
            "me"
        }

        async fn wait_for_lease(&self, on_leader: impl Fn(Option<String>)) {
            let mut won = self.win.subscribe();
            if !*won.borrow() {
                on_leader(Some("other".into()));
            }
            let _ = won.wait_for(|w| *w).await;
        }

        async fn keep(&self) {
            let _ = self.lose.subscribe().wait_for(|l| *l).await;
        }

        async fn live_standby(&self) -> Result<Option<String>, StoreError> {
            Ok(self.standby.lock().map(|s| s.clone()).unwrap_or_default())
        }

        async fn release(&self) -> Result<(), StoreError> {
            self.released.store(true, Ordering::SeqCst);
            Ok(())
        }

        async fn leave(&self) {
            self.left.store(true, Ordering::SeqCst);
        }
    }

    fn ha(board: &Board) -> Option<status::HaStatus> {
        board.snapshot(crate::clock::now_wall()).ha
    }

    fn role(role: &str, leader: &str) -> Option<status::HaStatus> {
        Some(status::HaStatus {
            instance: "me".into(),
            role: role.into(),
            leader: Some(leader.into()),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_runs_the_daemon_only_once_it_wins_the_lease() {
        let lease = FakeLease::new(false);
        let board = Board::new();
        let (_tx, mut control) = mpsc::channel(8);
        let ready = AtomicBool::new(false);
        let ran = AtomicBool::new(false);
        let daemon = |_control| async {
            ran.store(true, Ordering::SeqCst);
            7
        };
        let standing = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            assert!(
                ready.load(Ordering::SeqCst),
                "a standby is a started service"
            );
            assert!(!ran.load(Ordering::SeqCst), "ran without the lease");
            assert_eq!(ha(&board), role("standby", "other"));
            let _ = lease.win.send(true);
        };
        let ready_now = || ready.store(true, Ordering::SeqCst);
        let (outcome, ()) = tokio::join!(
            run(&lease, &board, &mut control, ready_now, daemon),
            standing
        );
        assert!(matches!(
            outcome,
            Outcome::Led {
                result: 7,
                lost: false
            }
        ));
        assert!(ran.load(Ordering::SeqCst));
        assert_eq!(ha(&board), role("leader", "me"));
        assert!(
            lease.released.load(Ordering::SeqCst),
            "must release the lease"
        );
        assert!(lease.left.load(Ordering::SeqCst), "must leave the group");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_while_standing_by_stops_without_running_the_daemon() {
        for stop in [Some(Control::Shutdown), Some(Control::Handover), None] {
            let lease = FakeLease::new(false);
            let board = Board::new();
            let (tx, mut control) = mpsc::channel(8);
            // The signals come once the loop stands by (it has seen the other leader): sent
            // before, they would race the first look at the lease.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                // Not a stop: ignored while standing by.
                let _ = tx.send(Control::Rotate).await;
                let _ = tx.send(Control::Reload).await;
                if let Some(c) = stop {
                    let _ = tx.send(c).await;
                }
            });
            let runs = AtomicUsize::new(0);
            let daemon = |_control| async {
                runs.fetch_add(1, Ordering::SeqCst);
            };
            let outcome = tokio::time::timeout(
                Duration::from_secs(3600),
                run(&lease, &board, &mut control, || {}, daemon),
            )
            .await;
            assert!(matches!(outcome, Ok(Outcome::Stopped(_))), "{stop:?}");
            assert_eq!(runs.load(Ordering::SeqCst), 0, "{stop:?}: ran");
            assert!(lease.left.load(Ordering::SeqCst), "{stop:?}: must leave");
            assert!(
                !lease.released.load(Ordering::SeqCst),
                "{stop:?}: never held it"
            );
            assert_eq!(ha(&board), role("standby", "other"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn losing_the_lease_while_leading_hands_over() {
        let lease = FakeLease::new(true);
        let board = Board::new();
        let (_tx, mut control) = mpsc::channel(8);
        let lose = &lease.lose;
        let daemon = |mut control: mpsc::Receiver<Control>| async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let _ = lose.send(true);
            control.recv().await
        };
        let outcome = tokio::time::timeout(
            Duration::from_secs(3600),
            run(&lease, &board, &mut control, || {}, daemon),
        )
        .await;
        assert!(matches!(
            outcome,
            Ok(Outcome::Led {
                result: Some(Control::Handover),
                lost: true
            })
        ));
        assert!(lease.left.load(Ordering::SeqCst));
    }

    /// What the daemon reads for each signal sent while leading, with or without a live
    /// standby.
    async fn lead_and_signal(standby: Option<&str>, signals: &[Control]) -> Vec<Control> {
        let lease = FakeLease::new(true);
        if let Ok(mut s) = lease.standby.lock() {
            *s = standby.map(String::from);
        }
        let board = Board::new();
        let (tx, mut control) = mpsc::channel(8);
        let daemon = |mut control: mpsc::Receiver<Control>| async move {
            let mut got = Vec::new();
            for &c in signals {
                let _ = tx.send(c).await;
                got.extend(control.recv().await);
            }
            got
        };
        match run(&lease, &board, &mut control, || {}, daemon).await {
            Outcome::Led { result, lost } => {
                assert!(!lost);
                assert!(lease.released.load(Ordering::SeqCst));
                result
            }
            Outcome::Stopped(_) => panic!("stopped while holding the lease"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_while_leading_hands_over_to_a_live_standby() {
        let got = lead_and_signal(Some("b"), &[Control::Rotate, Control::Shutdown]).await;
        assert_eq!(got, [Control::Rotate, Control::Handover]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_while_leading_without_a_standby_revokes() {
        let got = lead_and_signal(None, &[Control::Reload, Control::Shutdown]).await;
        assert_eq!(got, [Control::Reload, Control::Shutdown]);
    }
}
