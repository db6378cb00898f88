//! The daemon's clocks. Deadlines are tokio [`Instant`]s: monotonic, so a clock step cannot
//! fire a refresh early or late, and paused in tests. Other processes (the journal's reader,
//! `tokenkeeper status`, a token file's `expires_at`, a store's lease) need wall-clock time,
//! and it is read here only ([`now_wall`]; clippy.toml refuses `SystemTime::now` elsewhere):
//! code that decides by it (adopting a journaled or stored token, whether one has expired)
//! takes the time as a parameter, so a test can choose it.

use std::time::SystemTime;

use tokio::time::Instant;

/// The wall-clock time now. Read it once per decision and pass it down: two reads a moment
/// apart can disagree about a token expiring between them.
#[allow(clippy::disallowed_methods)] // the one place the wall clock is read
pub fn now_wall() -> SystemTime {
    SystemTime::now()
}

/// The wall-clock time of a monotonic instant, as far as the two clocks agree now.
pub fn wall(at: Instant) -> SystemTime {
    let now = Instant::now();
    let wall_now = now_wall();
    if at >= now {
        wall_now + (at - now)
    } else {
        wall_now - (now - at)
    }
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z): humantime refuses later
/// times, and its `to_string` then panics.
pub(crate) const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

/// `t` brought into what RFC 3339 can write: from the epoch (humantime panics before it) to
/// the end of year 9999. Configured durations are bounded far inside this, so only a
/// bug or a corrupt clock gets here; a saturated time is still the safe answer, a panic not.
pub fn rfc3339_range(t: SystemTime) -> SystemTime {
    let last = std::time::UNIX_EPOCH + std::time::Duration::from_secs(LAST_RFC3339_SECOND);
    t.clamp(std::time::UNIX_EPOCH, last)
}
