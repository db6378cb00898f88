//! Any answer to an RFC 6749 client_credentials token request (input framing:
//! fuzz/src/lib.rs).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokenkeeper::provider::oauth2::parse_token_answer;
use tokenkeeper_fuzz::{Answer, check_error};

/// The lifetime cap oauth2.rs applies (a year); a longer one must never get through.
const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

fuzz_target!(|data: &[u8]| {
    let Some(answer) = Answer::split(data) else {
        return;
    };
    let issued_at = tokio::time::Instant::now();
    match parse_token_answer(
        answer.status,
        answer.retry_after,
        answer.body,
        issued_at,
        "read write",
        DEFAULT_LIFETIME,
    ) {
        Ok(t) => {
            assert_eq!(answer.status, 200, "a token from a non-200 answer");
            let issued = &t.issued;
            // The token goes into env and header files verbatim: only b64token characters.
            let token = issued.token.expose();
            assert!(
                !token.is_empty()
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)),
                "token with characters a bearer token cannot have"
            );
            assert!(issued.token_type.eq_ignore_ascii_case("bearer"));
            assert!(!issued.scope.chars().any(char::is_control));
            assert!(!issued.lifetime.is_zero() && issued.lifetime <= MAX_LIFETIME);
            assert!(!t.default_lifetime_used || issued.lifetime == DEFAULT_LIFETIME);
            // The daemon computes the expiry; it must not overflow.
            let _ = issued.expires_at();
        }
        Err(e) => check_error(&e, &answer),
    }
});
