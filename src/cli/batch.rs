//! What `once` and `exec` share.

use std::path::Path;
use std::sync::Arc;

use tracing::{error, warn};

use tokenkeeper::config::{self, Loaded};
use tokenkeeper::error_chain as chain;
use tokenkeeper::journal::{self, StateLock};
use tokenkeeper::{batch, daemon};

use super::config_error::print_config_error;
use super::logging::init_logging;
use super::{EXIT_CONFIG, EXIT_TEMPFAIL, EXIT_USAGE, open_state};

/// What `once` and `exec` share: load the config, choose the sets, build their providers,
/// take the state directory and start its journal. `command` names the caller in messages.
pub(crate) async fn batch_setup(
    command: &str,
    path: &Path,
    sets: &[String],
) -> Result<
    (
        config::Config,
        std::collections::HashMap<String, Arc<tokenkeeper::provider::Provider>>,
        StateLock,
        journal::Journal,
        Vec<journal::Entry>,
    ),
    u8,
> {
    let Loaded { config, warnings } = config::load(path).map_err(|e| {
        print_config_error(&e);
        EXIT_CONFIG
    })?;
    init_logging(config.log_level.as_deref());
    for w in &warnings {
        warn!("{}: {w}", path.display());
    }
    let chosen = batch::select(&config, sets).map_err(|e| {
        say_err!("tokenkeeper: {e}");
        EXIT_USAGE
    })?;
    refuse_group_paths(command, &chosen).map_err(|why| {
        say_err!("tokenkeeper: {why}");
        EXIT_CONFIG
    })?;
    let providers = daemon::build_providers(&chosen).map_err(|e| {
        error!("{}", chain(&e));
        EXIT_CONFIG
    })?;
    let (lock, entries) = match open_state(&chosen.state_dir) {
        Ok(s) => s,
        Err(EXIT_TEMPFAIL) => {
            say_err!(
                "tokenkeeper: another tokenkeeper (the daemon, or another once/exec) holds {}; it keeps the tokens fresh already, or try again when it is done",
                chosen.state_dir.display()
            );
            return Err(EXIT_TEMPFAIL);
        }
        Err(code) => return Err(code),
    };
    let journal = journal::Journal::start(chosen.state_dir.clone(), entries.clone());
    Ok((chosen, providers, lock, journal, entries))
}

/// Why `command` may not serve `chosen`: with `ha:`, a set that writes a store path writes
/// what the group's leader serves from it, and a batch run takes no lease. It would write
/// over the leader's token, under the leader, with one the leader never revokes.
fn refuse_group_paths(command: &str, chosen: &config::Config) -> Result<(), String> {
    if chosen.ha.is_none() {
        return Ok(());
    }
    let shared: Vec<&str> = chosen
        .sets
        .iter()
        .filter(|s| s.store.is_some())
        .map(|s| s.name.as_str())
        .collect();
    if shared.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{command} does not take the HA group's lease (ha:), so it cannot write the store paths the group's leader serves: {} write one; name only sets without a store:, or read the token from the store",
        shared.join(", ")
    ))
}
