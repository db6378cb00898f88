//! Square's timestamps, and how long a token has left read against Square's clock rather
//! than a possibly wrong local one.

use std::time::{Duration, SystemTime};

/// Longest lifetime we believe. Square grants 30 days (24 h when short-lived); 90 days means
/// a broken answer or a clock far off.
const MAX_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// How far the local clock may differ from Square's `Date` before we say it looks wrong.
/// Five minutes is Kerberos' tolerance: NTP keeps hosts within milliseconds, so more than
/// this is a broken clock, not jitter.
const CLOCK_SKEW_LIMIT: Duration = Duration::from_secs(300);

/// An RFC 3339 / ISO 8601 timestamp as Square writes them: `2025-04-03T18:31:06Z`, with or
/// without fractional seconds, or with a `+HH:MM` offset.
pub fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if !text.is_ascii() {
        return None;
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Some(t);
    }
    let (base, offset) = text.split_at(text.len().checked_sub(6)?);
    let bytes = offset.as_bytes();
    if bytes[3] != b':' {
        return None;
    }
    let hours: u64 = offset[1..3].parse().ok()?;
    let minutes: u64 = offset[4..6].parse().ok()?;
    let shift = Duration::from_secs(hours * 3600 + minutes * 60);
    let local = humantime::parse_rfc3339_weak(base).ok()?;
    match bytes[0] {
        // 10:00+02:00 is 08:00 UTC.
        b'+' => local.checked_sub(shift),
        b'-' => local.checked_add(shift),
        _ => None,
    }
}

/// How long a token that expires at `expires_at` has left, and what looks wrong with the
/// local clock. The reference is Square's own `Date` when it sent one, so a wrong local clock
/// cannot stretch or shrink the lifetime; the local clock is only compared with it.
pub fn lifetime(
    expires_at: SystemTime,
    server_date: Option<SystemTime>,
    now: SystemTime,
) -> (Option<Duration>, Option<String>) {
    let mut clock = None;
    let reference = match server_date {
        Some(date) => {
            let (skew, direction) = match now.duration_since(date) {
                Ok(ahead) => (ahead, "ahead of"),
                Err(e) => (e.duration(), "behind"),
            };
            if skew > CLOCK_SKEW_LIMIT {
                clock = Some(format!(
                    "the local clock is {} {direction} Square's; token files show expiry times in the local clock, so fix the clock (NTP)",
                    humantime::format_duration(Duration::from_secs(skew.as_secs()))
                ));
            }
            date
        }
        None => {
            if expires_at <= now {
                clock = Some(
                    "Square answered with a token that has already expired by the local clock; the clock looks wrong".to_string(),
                );
            }
            now
        }
    };
    let left = expires_at
        .duration_since(reference)
        .ok()
        .filter(|d| !d.is_zero() && *d <= MAX_LIFETIME);
    (left, clock)
}
