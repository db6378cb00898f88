//! `tokenkeeper once`: make sure each set has a token valid for long enough, then exit.

use std::path::Path;
use std::time::Duration;

use tracing::error;

use tokenkeeper::batch;
use tokenkeeper::error_chain as chain;

use super::batch::batch_setup;
use super::{EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE};

pub(crate) async fn once(
    path: &Path,
    sets: Vec<String>,
    min_remaining: Option<Duration>,
    timeout: Duration,
) -> u8 {
    let (config, providers, _lock, journal, entries) = match batch_setup("once", path, &sets).await
    {
        Ok(s) => s,
        Err(code) => return code,
    };
    match batch::once(config, providers, journal, &entries, min_remaining, timeout).await {
        Ok(outcome) => {
            for s in &outcome.ok {
                say!("{s}: ok");
            }
            for (s, why) in &outcome.failed {
                say!("{s}: FAILED: {why}");
            }
            if outcome.failed.is_empty() {
                EXIT_OK
            } else {
                let names: Vec<&str> = outcome.failed.iter().map(|(s, _)| s.as_str()).collect();
                say_err!("tokenkeeper: no valid token for: {}", names.join(", "));
                EXIT_UNAVAILABLE
            }
        }
        Err(e) => {
            error!("{}", chain(&e));
            EXIT_FAILED
        }
    }
}
