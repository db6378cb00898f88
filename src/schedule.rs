//! Pure refresh and backoff arithmetic. No clocks and no randomness in here: callers pass the
//! random draw (`u`, uniform in [0, 1)) so tests can pin it.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefreshPolicy {
    /// Fraction of the lifetime after which the token is replaced, in (0, 1].
    pub at: f64,
    /// Largest fraction of the lifetime by which that moment is brought forward at random,
    /// in [0, at).
    pub jitter: f64,
    /// Floor between two issues for one set.
    pub min_interval: Duration,
}

/// First retry delay after a failure. One second lets a blip clear without hammering.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);

/// Longest delay for retryable failures (5xx, 429, network). A minute bounds how long a
/// recovered provider waits to be used again, while keeping a fleet's retries sparse.
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// Delay floor for refusals that a retry will not fix by itself (400, 401, 403): someone has
/// to change a key or a scope, so retrying faster than every 30 s only fills the logs.
pub const SLOW_RETRY_FLOOR: Duration = Duration::from_secs(30);

/// Ceiling for slow retries: an operator who fixes the key sees tokens within 5 minutes.
pub const SLOW_RETRY_CAP: Duration = Duration::from_secs(300);

/// Longest `Retry-After` we honour. A provider asking for an hour is more likely wrong than
/// right, and the token in the file may expire long before.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(600);

/// How long after issue a token should be replaced:
/// `lifetime × at − u × lifetime × jitter`, but never less than `min_interval`.
///
/// For a 900 s token with the defaults (66 %, 10 %): 594 s at u = 0 down to just over 504 s
/// as u approaches 1.
pub fn refresh_after(lifetime: Duration, policy: &RefreshPolicy, u: f64) -> Duration {
    let u = u.clamp(0.0, 1.0);
    let secs = lifetime.as_secs_f64() * (policy.at - u * policy.jitter);
    let planned = Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(lifetime);
    planned.max(policy.min_interval)
}

/// What kind of failure a retry follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// Network errors, timeouts, 5xx, 429: exponential backoff.
    Transient,
    /// 400/401/403 and answers we cannot parse: a human must act; retry slowly.
    Slow,
}

/// Delay before retry number `attempt` (0 for the first retry after a failure), with full
/// jitter: uniform in [0, min(cap, base × 2^attempt)). A `Retry-After` from the provider is a
/// floor (capped at [`RETRY_AFTER_CAP`]). Slow failures wait between [`SLOW_RETRY_FLOOR`] and
/// [`SLOW_RETRY_CAP`].
pub fn retry_after(
    class: RetryClass,
    attempt: u32,
    server_retry_after: Option<Duration>,
    u: f64,
) -> Duration {
    let u = u.clamp(0.0, 1.0);
    let delay = match class {
        RetryClass::Transient => exp_ceiling(attempt, BACKOFF_CAP).mul_f64(u),
        RetryClass::Slow => {
            // Jitter only above the floor: the floor is the point of the slow class.
            let ceiling = exp_ceiling(attempt, SLOW_RETRY_CAP).max(SLOW_RETRY_FLOOR * 2);
            SLOW_RETRY_FLOOR + (ceiling - SLOW_RETRY_FLOOR).mul_f64(u)
        }
    };
    match server_retry_after {
        Some(ra) => delay.max(ra.min(RETRY_AFTER_CAP)),
        None => delay,
    }
}

/// `min(cap, BACKOFF_BASE × 2^attempt)` without overflow.
fn exp_ceiling(attempt: u32, cap: Duration) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    BACKOFF_BASE.saturating_mul(factor).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(at: f64, jitter: f64, min_ms: u64) -> RefreshPolicy {
        RefreshPolicy {
            at,
            jitter,
            min_interval: Duration::from_millis(min_ms),
        }
    }

    #[test]
    fn refresh_table() {
        let s = Duration::from_secs;
        let cases = [
            // lifetime, at, jitter, min_interval ms, u, expected
            (
                s(900),
                0.66,
                0.10,
                1000,
                0.0,
                Duration::from_millis(594_000),
            ),
            (
                s(900),
                0.66,
                0.10,
                1000,
                0.5,
                Duration::from_millis(549_000),
            ),
            (
                s(900),
                0.66,
                0.10,
                1000,
                1.0,
                Duration::from_millis(504_000),
            ),
            (s(900), 1.0, 0.0, 1000, 0.7, s(900)),
            (s(10), 0.5, 0.0, 1000, 0.0, s(5)),
            // min_interval wins over a tiny lifetime fraction
            (s(2), 0.01, 0.0, 1000, 0.0, s(1)),
            // jitter never pushes below zero or below min_interval
            (s(100), 0.1, 0.1, 5, 1.0, Duration::from_millis(5)),
        ];
        for (lifetime, at, jitter, min_ms, u, want) in cases {
            let got = refresh_after(lifetime, &policy(at, jitter, min_ms), u);
            let diff = got.abs_diff(want);
            assert!(
                diff < Duration::from_micros(1),
                "lifetime {lifetime:?} at {at} jitter {jitter} u {u}: got {got:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn voucherify_token_is_replaced_between_504_and_594_seconds() {
        let p = policy(0.66, 0.10, 1000);
        for i in 0..100 {
            let u = i as f64 / 100.0;
            let d = refresh_after(Duration::from_secs(900), &p, u);
            assert!(
                d > Duration::from_secs(504) && d <= Duration::from_secs(594),
                "{d:?}"
            );
        }
    }

    #[test]
    fn transient_backoff_doubles_from_one_second_to_a_minute_with_full_jitter() {
        let s = Duration::from_secs;
        // u just under 1 shows the ceiling; u = 0 shows full jitter reaches zero.
        let top = |a| retry_after(RetryClass::Transient, a, None, 1.0);
        assert_eq!(top(0), s(1));
        assert_eq!(top(1), s(2));
        assert_eq!(top(2), s(4));
        assert_eq!(top(5), s(32));
        assert_eq!(top(6), s(60));
        assert_eq!(top(40), s(60));
        assert_eq!(top(u32::MAX), s(60));
        assert_eq!(retry_after(RetryClass::Transient, 3, None, 0.0), s(0));
        assert_eq!(retry_after(RetryClass::Transient, 3, None, 0.5), s(4));
    }

    #[test]
    fn retry_after_header_is_a_floor_with_a_cap() {
        let s = Duration::from_secs;
        assert_eq!(
            retry_after(RetryClass::Transient, 0, Some(s(17)), 0.3),
            s(17)
        );
        assert_eq!(
            retry_after(RetryClass::Transient, 6, Some(s(2)), 1.0),
            s(60)
        );
        assert_eq!(
            retry_after(RetryClass::Transient, 0, Some(s(86_400)), 0.0),
            RETRY_AFTER_CAP
        );
    }

    #[test]
    fn slow_retries_never_come_faster_than_the_floor() {
        for attempt in [0, 1, 5, 10, 100] {
            for u in [0.0, 0.5, 1.0] {
                let d = retry_after(RetryClass::Slow, attempt, None, u);
                assert!(
                    d >= SLOW_RETRY_FLOOR && d <= SLOW_RETRY_CAP,
                    "{attempt} {u} {d:?}"
                );
            }
        }
        assert_eq!(
            retry_after(RetryClass::Slow, 100, None, 1.0),
            SLOW_RETRY_CAP
        );
    }
}
