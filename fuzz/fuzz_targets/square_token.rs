//! Any answer to Square's ObtainToken (input framing: fuzz/src/lib.rs). Square's `Date` is
//! fixed so that every input reads the same; the local clock is Square's.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use tokenkeeper::provider::square::parse_token_answer;
use tokenkeeper_fuzz::{Answer, check_error};

/// The lifetime cap square.rs applies (90 days).
const MAX_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// The lengths of a refresh token Square takes back (its spec's `minLength`/`maxLength`).
const REFRESH_TOKEN_LEN: std::ops::RangeInclusive<usize> = 2..=1024;
const DATE: &str = "Thu, 03 Apr 2025 18:31:06 GMT";

fuzz_target!(|data: &[u8]| {
    let Some(answer) = Answer::split(data) else {
        return;
    };
    let now = httpdate::parse_http_date(DATE).unwrap_or(SystemTime::UNIX_EPOCH);
    let parsed = parse_token_answer(
        "ObtainToken",
        answer.status,
        answer.retry_after,
        answer.body,
        Some(DATE),
        now,
    );
    match parsed {
        Ok(t) => {
            assert_eq!(answer.status, 200, "a token answer from a non-200 answer");
            assert!(!t.expires_at.chars().any(char::is_control));
            // The daemon saves a rotated refresh token over the working one and presents it
            // next time: it must be one Square could take back, b64token padding included.
            if let Some(refresh) = &t.refresh_token {
                let refresh = refresh.expose();
                let unpadded = refresh.trim_end_matches('=');
                assert!(
                    REFRESH_TOKEN_LEN.contains(&refresh.len())
                        && !unpadded.is_empty()
                        && unpadded
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)),
                    "refresh token Square would not issue ({} bytes)",
                    refresh.len()
                );
            }
            if let Some(clock) = &t.clock {
                assert!(!clock.chars().any(char::is_control));
            }
            match &t.access {
                Ok((token, lifetime)) => {
                    // The token goes into env and header files verbatim: only b64token characters.
                    let token = token.expose();
                    assert!(
                        !token.is_empty()
                            && token
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)),
                        "token with characters a bearer token cannot have"
                    );
                    assert!(!lifetime.is_zero() && *lifetime <= MAX_LIFETIME);
                }
                Err(e) => check_error(e, &answer),
            }
        }
        Err(e) => check_error(&e, &answer),
    }
});
