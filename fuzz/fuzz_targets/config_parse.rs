//! Any text as a configuration: `config::parse` must answer with a config or with problems,
//! never panic. It reads no secret and touches no file, so every input is safe to run.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tokenkeeper::config::{self, ConfigError};

fuzz_target!(|data: &[u8]| {
    // The daemon reads the file with read_to_string, so only UTF-8 ever reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::parse(text, Path::new("fuzz.yaml")) {
        // Debug and Display run too: a config is logged at start, and refusals are printed.
        Ok(loaded) => {
            let _ = format!("{loaded:?}");
        }
        Err(e) => {
            if let ConfigError::Invalid { problems, .. } = &e {
                // A refusal that lists nothing leaves the operator nothing to fix.
                assert!(!problems.is_empty(), "refused without a problem");
                for p in problems {
                    let _ = p.to_string();
                }
            }
            let _ = tokenkeeper::error_chain(&e);
        }
    }
});
