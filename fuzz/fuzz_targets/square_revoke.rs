//! Any answer to Square's RevokeToken (input framing: fuzz/src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenkeeper::provider::square::parse_revoke_answer;
use tokenkeeper_fuzz::{Answer, check_error};

fuzz_target!(|data: &[u8]| {
    let Some(answer) = Answer::split(data) else {
        return;
    };
    match parse_revoke_answer(answer.status, answer.retry_after, answer.body) {
        // 401 only with an ACCESS_TOKEN_EXPIRED or _REVOKED code: already unusable.
        Ok(()) => assert!(
            matches!(answer.status, 200 | 401 | 404),
            "HTTP {} counted as revoked",
            answer.status
        ),
        Err(e) => check_error(&e, &answer),
    }
});
