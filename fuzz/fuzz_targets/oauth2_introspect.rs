//! Any answer to an RFC 7662 introspection request (input framing: fuzz/src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenkeeper::provider::oauth2::parse_introspect_answer;
use tokenkeeper_fuzz::{Answer, check_error};

/// A fixed "now" (2025-04-03), so every input reads the same.
const NOW: u64 = 1_743_705_066;

fuzz_target!(|data: &[u8]| {
    let Some(answer) = Answer::split(data) else {
        return;
    };
    match parse_introspect_answer(answer.status, answer.retry_after, answer.body, NOW) {
        Ok(_) => assert_eq!(answer.status, 200, "an introspection from a non-200 answer"),
        Err(e) => check_error(&e, &answer),
    }
});
