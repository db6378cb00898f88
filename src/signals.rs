//! SIGTERM, SIGINT, SIGHUP and SIGUSR1 turned into [`Control`] messages for the daemon.

use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_tokio::Signals;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::daemon::Control;

/// Room for signals the daemon has not read yet. Signals arrive by the handful; a full
/// channel only drops a duplicate rotate or reload.
const CONTROL_QUEUE: usize = 16;

/// Start listening for the daemon's signals. The handlers are installed before this returns,
/// so no signal from then on takes its default action (which for all four is to die without
/// revoking anything).
///
/// A second SIGTERM or SIGINT calls `on_second_stop`, which is expected to exit at once.
pub fn listen(on_second_stop: fn()) -> std::io::Result<mpsc::Receiver<Control>> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
    tokio::spawn(async move {
        let mut stopping = false;
        while let Some(sig) = signals.next().await {
            let control = match sig {
                SIGTERM | SIGINT if stopping => {
                    warn!(
                        signal = sig,
                        "second stop signal: exiting at once, without revoking"
                    );
                    on_second_stop();
                    continue;
                }
                SIGTERM | SIGINT => {
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
