//! What every provider fuzz target shares: one framing of an HTTP answer as fuzz input, and
//! the checks any parsed answer or error must pass. See fuzz/README.md for the pattern.

use tokenkeeper::provider::ProviderError;

/// An HTTP answer as a fuzz input. The first line is `STATUS` or `STATUS RETRY-AFTER`; every
/// byte after that newline is the body. Text framing (rather than `arbitrary`) keeps the seed
/// files readable and lets them be copied from the contract's examples as they are.
#[derive(Debug)]
pub struct Answer<'a> {
    pub status: u16,
    pub retry_after: Option<&'a str>,
    pub body: &'a [u8],
}

impl<'a> Answer<'a> {
    /// `None` when the first line is not a status: such inputs test nothing of ours.
    pub fn split(data: &'a [u8]) -> Option<Answer<'a>> {
        let newline = data.iter().position(|&b| b == b'\n')?;
        let head = std::str::from_utf8(&data[..newline]).ok()?;
        let body = &data[newline + 1..];
        let (status, retry_after) = match head.split_once(' ') {
            Some((status, retry_after)) => (status, Some(retry_after)),
            None => (head, None),
        };
        Some(Answer {
            status: status.parse().ok()?,
            retry_after,
            body,
        })
    }
}

/// What every provider error must be, whatever the answer was.
pub fn check_error(e: &ProviderError, answer: &Answer<'_>) {
    // An error becomes one log line: a control character in it could forge another.
    let text = e.to_string();
    assert!(
        !text.chars().any(char::is_control),
        "control character in {text:?}"
    );
    match e {
        ProviderError::Refused { status, .. } | ProviderError::Unavailable { status, .. } => {
            assert_eq!(*status, answer.status, "error names another status");
            // The daemon retries "later" answers fast and refusals slowly: a mix-up either
            // hammers a provider that said no or sits out an outage.
            let later = matches!(answer.status, 408 | 429 | 500..=599);
            assert_eq!(
                matches!(e, ProviderError::Unavailable { .. }),
                later,
                "HTTP {} classed as {e:?}",
                answer.status
            );
        }
        ProviderError::Malformed { what, .. } => check_json_error(what),
        _ => {}
    }
}

/// The text serde_json's message leaves once every quoted string in it is blanked (the
/// providers' `json_error`). serde_json quotes strings from the body with Rust's escaping,
/// so a blanking that misreads `\"` lets the rest of a string (perhaps a token in the wrong
/// field) out, and swallows the message's tail instead. Either shows here: a backslash
/// outside the blanks, or a tail other than `line N column M`.
fn check_json_error(what: &str) {
    // The prefixes the providers start serde_json's message with (discovery's after the
    // document's URL, which has no spaces). Matched at the start only: other errors quote
    // the body, which may hold these very words.
    let Some(json) = [
        "not an OAuth token: ",
        "not an introspection answer: ",
        "not a token answer: ",
        "not a token status: ",
        "not a revoke answer: ",
    ]
    .iter()
    .find_map(|p| what.strip_prefix(p))
    .or_else(|| {
        what.split_once(" is not authorization server metadata: ")
            .filter(|(url, _)| !url.contains(' '))
            .map(|(_, json)| json)
    }) else {
        return;
    };
    // serde_json's one message with a backslash of its own.
    let json = json.replace(r"control character (\u0000-\u001F)", "");
    assert!(!json.contains('\\'), "a quoted string escaped: {what:?}");
    let tail_is_position = json
        .rsplit_once(" column ")
        .is_some_and(|(_, col)| !col.is_empty() && col.bytes().all(|b| b.is_ascii_digit()));
    assert!(tail_is_position, "message tail lost: {what:?}");
}
