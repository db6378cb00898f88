//! Publishes the board: the status file, the textfile metrics and systemd's `STATUS=`,
//! `READY=1` and watchdog pings, on every change and every heartbeat. It sits above both
//! [`crate::status`] and [`crate::metrics`], so that neither needs the other.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info, warn};

use crate::status::{Board, HEARTBEAT, Phase, Snapshot, summary, write_status_file};
use crate::{metrics, systemd};

/// Changes are published at most this often. A start with 10,000 sets changes the board tens
/// of thousands of times, and each publication renders every set and rewrites the file; a
/// person or a script reading the status needs no more than a few updates a second.
const MIN_PUBLISH_GAP: Duration = Duration::from_millis(500);

/// Between two publications driven by changes, the reporter waits at least this many times as
/// long as the last one took. A publication's cost grows with the sets (100,000 render and
/// write in a few hundred milliseconds), and while they start the board changes all the time:
/// a fixed gap would make the status file's cost grow with the square of the sets. Twenty keeps
/// publishing under 5% of one core's time whatever their number.
const PUBLISH_DUTY: u32 = 20;

/// The gap before the next change-driven publication, after one that took `took`.
fn publish_gap(took: Duration) -> Duration {
    MIN_PUBLISH_GAP.max(took.saturating_mul(PUBLISH_DUTY))
}

/// Where the reporter publishes.
#[derive(Debug, Clone)]
pub struct ReporterOptions {
    /// `state_dir/status.json`.
    pub status_file: PathBuf,
    /// Prometheus textfile, if configured.
    pub metrics_textfile: Option<PathBuf>,
    /// Half of `WatchdogSec=`, if systemd wants pings.
    pub watchdog: Option<Duration>,
}

/// Publish the board on every change and every [`HEARTBEAT`] until its phase is
/// [`Phase::Stopped`], then publish once more and return. Failures to write are logged (once
/// each, and their recovery) and never stop the daemon: status is advice, tokens are the job.
pub async fn run(board: Arc<Board>, opts: ReporterOptions) {
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Never fires when there is no watchdog; the branch below is disabled then anyway.
    let mut watchdog = tokio::time::interval(opts.watchdog.unwrap_or(Duration::from_secs(3600)));
    watchdog.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_failure: Option<String> = None;
    let mut last_line = String::new();
    let mut last_publish: Option<Instant> = None;
    let mut last_phase: Option<Phase> = None;
    let mut ready_sent = false;
    let mut gap = MIN_PUBLISH_GAP;
    loop {
        tokio::select! {
            () = board.changed() => {
                // Coalesce: what changes during the gap goes out in one publication; a new
                // phase (ready, stopping) goes out at once.
                if let Some(last) = last_publish
                    && last_phase == Some(board.phase())
                {
                    tokio::select! {
                        () = tokio::time::sleep_until(last + gap) => {}
                        () = board.phase_changed() => {}
                    }
                }
            }
            _ = heartbeat.tick() => {}
            _ = watchdog.tick(), if opts.watchdog.is_some() => {
                systemd::watchdog_ping();
                continue;
            }
        }
        let started = Instant::now();
        last_publish = Some(started);
        let snap = board.snapshot(crate::clock::now_wall());
        let phase = snap.phase;
        last_phase = Some(phase);
        let line = summary(&snap, crate::clock::now_wall());
        // systemd keeps the last STATUS=; resend only when it reads differently.
        if line != last_line {
            systemd::status(&line);
            last_line = line;
        }
        let result = publish(snap, &opts).await;
        gap = publish_gap(started.elapsed());
        match (&result, &last_failure) {
            (Ok(()), Some(_)) => {
                info!("status and metrics files are written again");
                last_failure = None;
            }
            (Err(e), prev) if prev.as_deref() != Some(e.as_str()) => {
                warn!(error = %e, "cannot publish status; will keep trying every {}s", HEARTBEAT.as_secs());
                last_failure = Some(e.clone());
            }
            _ => {}
        }
        // READY=1 only once the status file and STATUS= say so: whoever systemd starts next,
        // or `tokenkeeper status` right after `systemctl start`, sees the sets fresh.
        if phase == Phase::Running && !ready_sent {
            systemd::ready();
            ready_sent = true;
        }
        if phase == Phase::Stopped {
            return;
        }
    }
}

/// Write the status file and the textfile metrics on the blocking pool. The snapshot moves
/// there: at 100,000 sets a copy would cost as much as taking it.
async fn publish(snap: Snapshot, opts: &ReporterOptions) -> Result<(), String> {
    let opts = opts.clone();
    tokio::task::spawn_blocking(move || {
        let mut errors = Vec::new();
        if let Err(e) = write_status_file(&opts.status_file, &snap) {
            errors.push(crate::error_chain(&e));
        }
        if let Some(path) = &opts.metrics_textfile
            && let Err(e) = metrics::write_textfile(path, &snap)
        {
            errors.push(crate::error_chain(&e));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    })
    .await
    .unwrap_or_else(|e| Err(format!("the status writer thread failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_grows_with_what_a_publication_costs() {
        // A cheap publication (a few sets) keeps the fixed floor.
        assert_eq!(publish_gap(Duration::from_millis(2)), MIN_PUBLISH_GAP);
        assert_eq!(publish_gap(Duration::ZERO), MIN_PUBLISH_GAP);
        // A costly one (100,000 sets) spaces the next out, so it stays a small share of time.
        assert_eq!(
            publish_gap(Duration::from_millis(300)),
            Duration::from_secs(6)
        );
        assert_eq!(publish_gap(Duration::MAX), Duration::MAX);
    }
}
