//! Any answer to Voucherify's `POST /v1/oauth/introspect` (input framing: fuzz/src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenkeeper::provider::voucherify::parse_introspect_answer;
use tokenkeeper_fuzz::{Answer, check_error};

/// A fixed "now", so a crash reproduces whatever the clock says.
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
