//! `tokenkeeper exec`: run a command with fresh tokens, revoked when it exits.

use std::path::Path;

use tracing::error;

use tokenkeeper::batch;
use tokenkeeper::error_chain as chain;

use super::batch::batch_setup;
use super::{EXIT_CANNOT_EXECUTE, EXIT_FAILED, EXIT_NOT_FOUND, EXIT_UNAVAILABLE};

pub(crate) async fn exec(path: &Path, sets: Vec<String>, opts: batch::ExecOptions) -> u8 {
    let (config, providers, _lock, journal, entries) = match batch_setup("exec", path, &sets).await
    {
        Ok(s) => s,
        Err(code) => return code,
    };
    match batch::exec(config, providers, journal, entries, opts).await {
        Ok(batch::ExecOutcome::Ran {
            code,
            revoke_failed,
        }) => {
            if !revoke_failed.is_empty() {
                error!(
                    "could not revoke every token of: {}; they stay in the journal for the next start or `tokenkeeper revoke`",
                    revoke_failed.join(", ")
                );
            }
            code
        }
        Ok(batch::ExecOutcome::NoTokens { failed }) => {
            let names: Vec<&str> = failed.iter().map(|(s, _)| s.as_str()).collect();
            say_err!(
                "tokenkeeper: no token for {}; the command was not run",
                names.join(", ")
            );
            EXIT_UNAVAILABLE
        }
        Ok(batch::ExecOutcome::SpawnFailed { not_found, error }) => {
            say_err!("tokenkeeper: cannot run the command: {error}");
            if not_found {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_EXECUTE
            }
        }
        Ok(batch::ExecOutcome::Interrupted { signal }) => {
            u8::try_from(128 + signal).unwrap_or(EXIT_FAILED)
        }
        Err(e) => {
            error!("{}", chain(&e));
            EXIT_FAILED
        }
    }
}
