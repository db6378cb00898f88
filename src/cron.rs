//! `rotate:`: cron-scheduled rotation of one set, for example just before a nightly batch
//! window.
//!
//! Expressions are parsed by the `cron` crate (seconds first: `sec min hour dom mon dow
//! [year]`, the same six-field form tokio-cron-scheduler reads) and scheduled here on tokio's
//! clock, so paused-time tests drive every rotation. A scheduled rotation is never run by this
//! module: it is a message on the set's own rotate channel, which the set's task reads between
//! refreshes, so a rotation and that set's refresh never run at once.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

use serde_yaml::Value;

use crate::settings::{Report, Rule, describe};
use crate::status::{SetReport, SetState};

/// Largest delay added to a scheduled rotation, per set. Sets that share a schedule are
/// spread over this window instead of all asking the provider in the same second: a few
/// seconds keep them well inside any batch window while easing the provider's rate limit.
pub const SPREAD: Duration = Duration::from_secs(5);

/// Room in a set's rotate channel. Requests are coalesced (one unread request means "rotate
/// once more"), so one slot is used; the rest is slack.
const SET_QUEUE: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum CronError {
    #[error(
        "`{expr}` is not a cron expression with seconds (sec min hour day-of-month month day-of-week [year]), e.g. \"0 55 1 * * *\""
    )]
    Parse {
        expr: String,
        #[source]
        source: cron::error::Error,
    },
    #[error("`{expr}` never fires")]
    Never { expr: String },
}

/// A checked cron expression. Equal when the text is equal, so a reload sees no change in an
/// unchanged set.
#[derive(Clone)]
pub struct RotateSchedule {
    text: String,
    schedule: cron::Schedule,
}

/// A set's `rotate:` as written: a quoted cron expression with seconds.
impl Rule for RotateSchedule {
    type Value = RotateSchedule;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<RotateSchedule> {
        let Value::String(text) = value else {
            r.bad(
                parent,
                key,
                format!(
                    "{key} must be a quoted cron expression with seconds such as \"0 55 1 * * *\", not {}",
                    describe(value)
                ),
            );
            return None;
        };
        match RotateSchedule::parse(text) {
            Ok(s) => Some(s),
            Err(e) => {
                r.bad(parent, key, format!("{key} {}", crate::error_chain(&e)));
                None
            }
        }
    }
}

impl std::fmt::Debug for RotateSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RotateSchedule({:?})", self.text)
    }
}

impl PartialEq for RotateSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl RotateSchedule {
    pub fn parse(text: &str) -> Result<RotateSchedule, CronError> {
        let text = text.trim();
        let schedule = cron::Schedule::from_str(text).map_err(|source| CronError::Parse {
            expr: text.to_string(),
            source,
        })?;
        let parsed = RotateSchedule {
            text: text.to_string(),
            schedule,
        };
        if parsed.next_after(crate::clock::now_wall()).is_none() {
            return Err(CronError::Never {
                expr: text.to_string(),
            });
        }
        Ok(parsed)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first time strictly after `t` that the expression names, in the machine's local
    /// time zone (batch windows are written in local time).
    pub fn next_after(&self, t: SystemTime) -> Option<SystemTime> {
        let local: chrono::DateTime<chrono::Local> = t.into();
        self.schedule
            .after(&local)
            .next()
            .map(|d| SystemTime::from(d.with_timezone(&chrono::Utc)))
    }
}

/// This set's delay within [`SPREAD`]: deterministic (a hash of the name), so a set always
/// rotates at the same moment and different sets at different moments.
pub fn spread(set: &str) -> Duration {
    let digest = Sha256::digest(set.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let window = u64::try_from(SPREAD.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(u64::from_be_bytes(first) % window)
}

/// Wall-clock time; tests give one that moves with tokio's paused clock.
pub type WallClock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The real wall clock: a cron expression names wall-clock times, and a clock set forward or
/// back (NTP, suspend) moves the next rotation with it.
pub fn system_clock() -> WallClock {
    Arc::new(crate::clock::now_wall)
}

/// Give a set its own rotate channel: everything from `global` (SIGUSR1), plus a message at
/// each time `schedule` names (delayed by the set's [`spread`]). The forwarding task ends
/// when the set stops (its `state` says so or is dropped) or the daemon drops `global`.
/// Without a schedule the set listens to `global` itself: no task, so 10,000 sets without
/// `rotate:` cost nothing here.
pub fn set_rotations(
    set: &str,
    schedule: Option<RotateSchedule>,
    mut global: broadcast::Receiver<()>,
    report: &SetReport,
    clock: WallClock,
) -> broadcast::Receiver<()> {
    if schedule.is_none() {
        return global;
    }
    let mut state = report.subscribe_state();
    let (tx, rx) = broadcast::channel(SET_QUEUE);
    let set = set.to_string();
    let offset = spread(&set);
    tokio::spawn(async move {
        // The last time the schedule fired, so a clock that has not moved on (or moved back)
        // never fires the same time twice.
        let mut last: Option<SystemTime> = None;
        loop {
            let now_wall = clock();
            let from = last.map_or(now_wall, |l| l.max(now_wall));
            let next = schedule.as_ref().and_then(|s| s.next_after(from));
            let due = next.map(|at| {
                Instant::now() + at.duration_since(now_wall).unwrap_or(Duration::ZERO) + offset
            });
            tokio::select! {
                r = global.recv() => match r {
                    Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => request(&tx),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                () = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    last = next;
                    info!(set = %set, schedule = %schedule.as_ref().map_or("", |s| s.as_str()),
                        "scheduled rotation");
                    if tx.receiver_count() == 0 {
                        warn!(set = %set, "scheduled rotation not delivered: the set has stopped");
                        break;
                    }
                    request(&tx);
                }
                changed = state.changed() => {
                    if changed.is_err() || matches!(*state.borrow(), SetState::Stopped) {
                        debug!(set = %set, "rotation schedule ends with its set");
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// Ask the set to rotate, unless a request it has not read yet already does: a set that fell
/// behind a burst (SIGUSR1 in a loop) must see one request, never a lag error, which its loop
/// would only notice at its next event.
fn request(tx: &broadcast::Sender<()>) {
    if tx.is_empty() {
        let _ = tx.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_are_checked() {
        assert!(RotateSchedule::parse("0 0 2 * * *").is_ok());
        assert!(RotateSchedule::parse("0 */5 * * * Mon-Fri").is_ok());
        let e = RotateSchedule::parse("0 0 2 * *").unwrap_err();
        assert!(matches!(e, CronError::Parse { .. }), "{e}");
        assert!(RotateSchedule::parse("every night").is_err());
        let never = RotateSchedule::parse("0 0 0 1 1 * 2001").unwrap_err();
        assert!(matches!(never, CronError::Never { .. }), "{never}");
    }

    #[test]
    fn equality_is_by_text_and_debug_shows_it() {
        let a = RotateSchedule::parse("0 0 2 * * *").unwrap();
        let b = RotateSchedule::parse(" 0 0 2 * * * ").unwrap();
        assert_eq!(a, b);
        assert_eq!(format!("{a:?}"), "RotateSchedule(\"0 0 2 * * *\")");
    }

    #[test]
    fn spread_is_stable_bounded_and_differs_between_sets() {
        assert_eq!(spread("orders"), spread("orders"));
        let all: Vec<Duration> = (0..50).map(|i| spread(&format!("set-{i}"))).collect();
        assert!(all.iter().all(|d| *d < SPREAD));
        let mut distinct = all.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 40, "{distinct:?}");
    }

    /// A wall clock that starts at a whole minute and moves with tokio's (paused) clock.
    fn paused_clock() -> WallClock {
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 / 60 * 60);
        let t0 = Instant::now();
        Arc::new(move || base + (Instant::now() - t0))
    }

    #[tokio::test(start_paused = true)]
    async fn a_schedule_fires_at_its_times_plus_the_sets_spread() {
        let t0 = Instant::now();
        let (global, _) = broadcast::channel(4);
        let report = SetReport::detached();
        let every_30s = RotateSchedule::parse("*/30 * * * * *").unwrap();
        let mut rx = set_rotations(
            "nightly",
            Some(every_30s),
            global.subscribe(),
            &report,
            paused_clock(),
        );
        let mut at = Vec::new();
        for _ in 0..3 {
            rx.recv().await.unwrap();
            at.push(Instant::now() - t0);
        }
        let off = spread("nightly");
        assert_eq!(
            at,
            vec![
                Duration::from_secs(30) + off,
                Duration::from_secs(60) + off,
                Duration::from_secs(90) + off
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sets_sharing_a_schedule_fire_at_different_moments() {
        let (global, _) = broadcast::channel(4);
        let report = SetReport::detached();
        let clock = paused_clock();
        let t0 = Instant::now();
        let mut times = Vec::new();
        for name in ["a", "b", "c"] {
            let mut rx = set_rotations(
                name,
                RotateSchedule::parse("0 * * * * *").ok(),
                global.subscribe(),
                &report,
                Arc::clone(&clock),
            );
            times.push(tokio::spawn(async move {
                rx.recv().await.unwrap();
                Instant::now()
            }));
        }
        let mut seen = Vec::new();
        for t in times {
            seen.push(t.await.unwrap() - t0);
        }
        for d in &seen {
            assert!(*d >= Duration::from_secs(60) && *d < Duration::from_secs(60) + SPREAD);
        }
        seen.dedup();
        assert_eq!(seen.len(), 3, "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_global_rotate_reaches_the_set_and_the_task_ends_with_the_set() {
        let (global, _) = broadcast::channel(4);
        let report = SetReport::detached();
        // Without a schedule the set reads the global channel itself.
        let mut plain = set_rotations("p", None, global.subscribe(), &report, paused_clock());
        global.send(()).unwrap();
        plain.recv().await.unwrap();
        assert_eq!(plain.len(), 0);

        let yearly = RotateSchedule::parse("0 0 0 1 1 *").unwrap();
        let mut rx = set_rotations(
            "s",
            Some(yearly),
            global.subscribe(),
            &report,
            paused_clock(),
        );
        global.send(()).unwrap();
        rx.recv().await.unwrap();
        report.state(SetState::Stopped);
        // The forwarder drops its sender once it sees the set stop.
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Closed)
        ));
    }
}
