//! Any answer to Square's RetrieveTokenStatus (input framing: fuzz/src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenkeeper::provider::Introspection;
use tokenkeeper::provider::square::parse_status_answer;
use tokenkeeper_fuzz::{Answer, check_error};

fuzz_target!(|data: &[u8]| {
    let Some(answer) = Answer::split(data) else {
        return;
    };
    match parse_status_answer(
        answer.status,
        answer.retry_after,
        answer.body,
        tokenkeeper::clock::now_wall(),
    ) {
        Ok(Introspection::Active { .. }) => {
            assert_eq!(answer.status, 200, "an active token from a non-200 answer")
        }
        // 401 is how Square says expired, revoked or unknown.
        Ok(Introspection::Inactive) => assert!(
            matches!(answer.status, 200 | 401),
            "HTTP {} counted as inactive",
            answer.status
        ),
        Err(e) => check_error(&e, &answer),
    }
});
