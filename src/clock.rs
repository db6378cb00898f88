//! The one conversion between the two clocks the daemon keeps. Deadlines are tokio
//! [`Instant`]s: monotonic, so a clock step cannot fire a refresh early or late, and paused in
//! tests. Other processes (the journal's reader, `tokenkeeper status`, a token file's
//! `expires_at`) need wall-clock time.

use std::time::SystemTime;

use tokio::time::Instant;

/// The wall-clock time of a monotonic instant, as far as the two clocks agree now.
pub fn wall(at: Instant) -> SystemTime {
    let now = Instant::now();
    if at >= now {
        SystemTime::now() + (at - now)
    } else {
        SystemTime::now() - (now - at)
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
