//! Voucherify's error bodies and status classes, through the revoke answer: it is nothing but
//! a status and, on failure, an error body, so every input lands in the error path that all
//! three operations share (input framing: fuzz/src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenkeeper::provider::voucherify::parse_revoke_answer;
use tokenkeeper_fuzz::{Answer, check_error};

fuzz_target!(|data: &[u8]| {
    let Some(answer) = Answer::split(data) else {
        return;
    };
    match parse_revoke_answer(answer.status, answer.retry_after, answer.body) {
        Ok(()) => assert!(
            matches!(answer.status, 200 | 204 | 404),
            "HTTP {} counted as revoked",
            answer.status
        ),
        Err(e) => check_error(&e, &answer),
    }
});
