//! `tokenkeeper revoke`: revoke the journaled tokens after a crash or before decommissioning.

use std::path::Path;

use tracing::error;

use tokenkeeper::config::{self, Loaded};
use tokenkeeper::daemon;
use tokenkeeper::error_chain as chain;
use tokenkeeper::journal;

use super::config_error::print_config_error;
use super::logging::init_logging;
use super::{
    EXIT_CANTCREAT, EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_TEMPFAIL, EXIT_USAGE, open_state,
};

pub(crate) async fn revoke(path: &Path, sets: Vec<String>) -> u8 {
    let Loaded { config, .. } = match config::load(path) {
        Ok(l) => l,
        Err(e) => {
            print_config_error(&e);
            return EXIT_CONFIG;
        }
    };
    init_logging(config.log_level.as_deref());
    let providers = match daemon::build_providers(&config) {
        Ok(p) => p,
        Err(e) => {
            error!("{}", chain(&e));
            return EXIT_CONFIG;
        }
    };
    let (_lock, entries) = match open_state(&config.state_dir) {
        Ok(s) => s,
        Err(EXIT_TEMPFAIL) => {
            say_err!(
                "tokenkeeper: the daemon is running on {}; stop it instead: it revokes every token at stop",
                config.state_dir.display()
            );
            return EXIT_TEMPFAIL;
        }
        Err(code) => return code,
    };
    // A set the config no longer names may still have journaled tokens to revoke; a name
    // in neither is a typo, and revoking nothing for it must not look like success.
    let unknown: Vec<&str> = sets
        .iter()
        .filter(|s| {
            !config.sets.iter().any(|c| &c.name == *s) && !entries.iter().any(|e| &e.set == *s)
        })
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = config.sets.iter().map(|s| s.name.as_str()).collect();
        say_err!(
            "tokenkeeper: no scope set named {}, configured or journaled; configured sets: {}",
            unknown.join(", "),
            known.join(", ")
        );
        return EXIT_USAGE;
    }
    for s in &sets {
        if !entries.iter().any(|e| &e.set == s) {
            say!("{s}: no journaled token");
        }
    }
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    let selected = |e: &journal::Entry| sets.is_empty() || sets.contains(&e.set);
    let report =
        match daemon::revoke_journaled(&config.state_dir, entries, selected, &providers, deadline)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                error!("{}", chain(&e));
                return EXIT_CANTCREAT;
            }
        };
    let mut failed = 0;
    for r in &report {
        match &r.result {
            Ok(()) => say!("{}: revoked {}", r.set, r.fingerprint),
            Err(why) => {
                failed += 1;
                say!("{}: FAILED to revoke {}: {why}", r.set, r.fingerprint);
            }
        }
    }
    say!("{} revoked, {failed} failed", report.len() - failed);
    if failed == 0 { EXIT_OK } else { EXIT_FAILED }
}
