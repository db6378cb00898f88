//! SIGTERM, SIGINT, SIGHUP and SIGUSR1 turned into [`Control`] messages for the daemon.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_tokio::Signals;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::control::Control;

/// Room for signals the daemon has not read yet. Signals arrive by the handful; a full
/// channel only drops a duplicate rotate or reload.
const CONTROL_QUEUE: usize = 16;

/// Stop signals (SIGTERM, SIGINT) received since [`install_early`], counted by the handler
/// itself: the count tells a first stop from a second one however the deliveries are
/// coalesced, and whether one came before anyone listened.
static STOPS: AtomicUsize = AtomicUsize::new(0);
/// The first stop signal's number, 0 for none yet.
static FIRST_STOP: AtomicI32 = AtomicI32::new(0);
/// While the daemon execs its successor ([`hold_for_exec`]): the thread that execs, to which
/// a stop signal that lands on another thread is sent on, to stay pending across the exec.
static FORWARD_TO: AtomicUsize = AtomicUsize::new(0);
static FORWARDING: AtomicBool = AtomicBool::new(false);
/// Whether [`install_early`] has succeeded (it runs on the main thread, then in [`listen`]).
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Take SIGTERM, SIGINT, SIGHUP and SIGUSR1 away from their default action (death, with every
/// token left live) before anything else runs: the config load, the runtime, the journal.
/// A stop signal is counted, to be acted on once the daemon listens ([`stop_requested`],
/// [`listen`]); a reload or rotate before that has nothing to act on (the config is being read
/// now, and the first tokens are about to be issued), so it is dropped. Signals blocked by
/// whoever started us are unblocked, so one sent before we could take it is acted on too.
/// Calling it again does nothing.
pub fn install_early() -> std::io::Result<()> {
    if INSTALLED.load(Ordering::SeqCst) {
        return Ok(());
    }
    let mut ids = Vec::new();
    let installed = register_early(&mut ids);
    if installed.is_err() {
        // All or nothing: a half-installed set registered again would count each stop twice.
        for id in ids {
            signal_hook::low_level::unregister(id);
        }
    } else {
        INSTALLED.store(true, Ordering::SeqCst);
    }
    installed
}

fn register_early(ids: &mut Vec<signal_hook::SigId>) -> std::io::Result<()> {
    for sig in [SIGTERM, SIGINT] {
        // SAFETY: the action does atomic operations and, during an exec (see
        // `hold_for_exec`), a pthread_kill to a thread that blocks `sig`, so it only stays
        // pending there: all async-signal-safe.
        ids.push(unsafe {
            signal_hook::low_level::register(sig, move || {
                let _ = FIRST_STOP.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
                STOPS.fetch_add(1, Ordering::SeqCst);
                if FORWARDING.load(Ordering::SeqCst) {
                    libc::pthread_kill(FORWARD_TO.load(Ordering::SeqCst) as libc::pthread_t, sig);
                }
            })
        }?);
    }
    for sig in [SIGHUP, SIGUSR1] {
        ids.push(signal_hook::flag::register(
            sig,
            Arc::new(AtomicBool::new(false)),
        )?);
    }
    // Threads started from here on (the runtime's) inherit the mask.
    nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_UNBLOCK,
        Some(&ours()),
        None,
    )
    .map_err(std::io::Error::from)
}

/// The first stop signal, if one has arrived since [`install_early`].
pub fn stop_requested() -> Option<i32> {
    if STOPS.load(Ordering::SeqCst) == 0 {
        return None;
    }
    Some(FIRST_STOP.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

/// The stop signals, SIGHUP and SIGUSR1, as a set.
fn ours() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGHUP,
        nix::sys::signal::Signal::SIGUSR1,
    ] {
        set.add(sig);
    }
    set
}

/// The calling thread's signal mask before [`hold_for_exec`].
pub struct Held(nix::sys::signal::SigSet);

/// Make ready to exec a successor: an exec resets every handler to the default action (death
/// without revoking), but keeps the mask and the pending signals. So the calling thread
/// blocks the daemon's signals, a stop signal that another thread catches from now on is sent
/// on to this one, and a stop that came since the start (during the handover) is made pending
/// here again. The successor's [`install_early`] unblocks them once its handlers are in
/// place, and the stop revokes every token it has adopted.
pub fn hold_for_exec() -> std::io::Result<Held> {
    let mut old = nix::sys::signal::SigSet::empty();
    nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_BLOCK,
        Some(&ours()),
        Some(&mut old),
    )
    .map_err(std::io::Error::from)?;
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    FORWARD_TO.store(me as usize, Ordering::SeqCst);
    FORWARDING.store(true, Ordering::SeqCst);
    if let Some(sig) = stop_requested() {
        // SAFETY: a signal to this very thread, which blocks it: it is only made pending.
        unsafe { libc::pthread_kill(me, sig) };
    }
    Ok(Held(old))
}

/// Undo [`hold_for_exec`] after an exec that failed. A stop made pending meanwhile is
/// delivered now and counts as a second one (the daemon exits at once): the sets have already
/// handed their tokens over, and the journal keeps them for the next start.
pub fn release_after_exec(held: Held) {
    FORWARDING.store(false, Ordering::SeqCst);
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&held.0),
        None,
    );
}

fn stops() -> usize {
    STOPS.load(Ordering::SeqCst)
}

/// Start listening for the daemon's signals. The handlers are installed before this returns,
/// so no signal from then on takes its default action (which for all four is to die without
/// revoking anything). A stop signal that came earlier (see [`install_early`]) is sent at once.
///
/// A second SIGTERM or SIGINT calls `on_second_stop`, which is expected to exit at once.
pub fn listen(on_second_stop: fn()) -> std::io::Result<mpsc::Receiver<Control>> {
    install_early()?;
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
    tokio::spawn(async move {
        let mut stopping = false;
        // Counted before this listened; its delivery may or may not show up below too, which
        // the count sorts out.
        if let Some(sig) = stop_requested() {
            stopping = true;
            info!(
                signal = name(sig),
                "stop signal received before the daemon started"
            );
            let _ = tx.send(Control::Shutdown).await;
            if stops() >= 2 {
                warn!("second stop signal: exiting at once, without revoking");
                on_second_stop();
            }
        }
        while let Some(sig) = signals.next().await {
            let control = match sig {
                SIGTERM | SIGINT => {
                    if stopping && stops() >= 2 {
                        warn!(
                            signal = sig,
                            "second stop signal: exiting at once, without revoking"
                        );
                        on_second_stop();
                        continue;
                    }
                    if stopping {
                        // The early one, delivered here as well.
                        continue;
                    }
                    stopping = true;
                    info!(signal = name(sig), "stop signal received");
                    Control::Shutdown
                }
                SIGHUP => Control::Reload,
                SIGUSR1 => Control::Rotate,
                _ => continue,
            };
            if control == Control::Shutdown {
                // Must arrive even if the queue is full of rotate requests.
                let _ = tx.send(control).await;
                // Two stops coalesced into one delivery.
                if stops() >= 2 {
                    warn!(
                        signal = sig,
                        "second stop signal: exiting at once, without revoking"
                    );
                    on_second_stop();
                }
            } else {
                let _ = tx.try_send(control);
            }
        }
    });
    Ok(rx)
}

fn name(sig: i32) -> &'static str {
    match sig {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        SIGHUP => "SIGHUP",
        SIGUSR1 => "SIGUSR1",
        _ => "other",
    }
}
