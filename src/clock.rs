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
