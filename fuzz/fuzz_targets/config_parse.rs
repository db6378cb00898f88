//! Any text as a configuration: `config::parse` must answer with a config or with problems,
//! never panic. It reads no secret and touches no file, so every input is safe to run.
//!
//! Each input is also tried nested past [`config::MAX_NESTING`] and, now and then, grown past
//! [`config::MAX_CONFIG_BYTES`]: both must be refused for that reason, whatever the text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tokenkeeper::config::{self, ConfigError, MAX_CONFIG_BYTES, MAX_NESTING};

/// What opens one more level of nesting: flow sequences, flow mappings, compact sequences.
const OPENERS: &[&str] = &["[", "{a: ", "- "];

/// One input in this many is also grown past the size cap: each such run builds 16 MiB of
/// text, and a hundred or so a minute cover the check without slowing the rest down.
const GROW_ONE_IN: u8 = 255;

fn problems(text: &str) -> Vec<String> {
    match config::parse(text, Path::new("fuzz.yaml")) {
        // Debug and Display run too: a config is logged at start, and refusals are printed.
        Ok(loaded) => {
            let _ = format!("{loaded:?}");
            Vec::new()
        }
        Err(e) => {
            let _ = tokenkeeper::error_chain(&e);
            match &e {
                ConfigError::Invalid { problems, .. } => {
                    // A refusal that lists nothing leaves the operator nothing to fix.
                    assert!(!problems.is_empty(), "refused without a problem");
                    problems.iter().map(|p| p.to_string()).collect()
                }
                ConfigError::Read { .. } | ConfigError::Unsafe { .. } => {
                    unreachable!("parse reads no file and judges no file's owner")
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The daemon reads the file as UTF-8, so only UTF-8 ever reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    problems(text);

    let pick = data.first().copied().unwrap_or(0);
    let opener = OPENERS[usize::from(pick) % OPENERS.len()];
    let deep = format!(
        "{}{text}",
        opener.repeat(MAX_NESTING + 1 + usize::from(pick))
    );
    let refused = problems(&deep);
    assert!(
        refused.iter().any(|p| p.contains("nested deeper than")),
        "nesting past the cap was not refused for it: {refused:?}"
    );

    if pick % GROW_ONE_IN == 0 {
        let pad = usize::try_from(MAX_CONFIG_BYTES).unwrap_or(usize::MAX) + 1;
        let mut big = String::with_capacity(text.len() + pad + 2);
        big.push_str(text);
        big.push_str("\n#");
        big.extend(std::iter::repeat_n('x', pad));
        let refused = problems(&big);
        assert!(
            refused.iter().any(|p| p.contains("larger than")),
            "text past the size cap was not refused for it: {refused:?}"
        );
    }
});
