//! Any answer to an RFC 7009 revocation request: a status and, on failure, an RFC 6749 error
//! body (input framing: fuzz/src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenkeeper::provider::oauth2::parse_revoke_answer;
use tokenkeeper_fuzz::{Answer, check_error};

fuzz_target!(|data: &[u8]| {
    let Some(answer) = Answer::split(data) else {
        return;
    };
    match parse_revoke_answer(answer.status, answer.retry_after, answer.body) {
        Ok(()) => assert_eq!(
            answer.status, 200,
            "HTTP {} counted as revoked",
            answer.status
        ),
        Err(e) => check_error(&e, &answer),
    }
});
