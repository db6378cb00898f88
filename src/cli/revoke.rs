//! `tokenkeeper revoke`: revoke the journaled tokens after a crash or before decommissioning.

use std::collections::HashMap;
use std::path::Path;

use tracing::error;

use tokenkeeper::config::{self, Loaded};
use tokenkeeper::daemon;
use tokenkeeper::error_chain as chain;
use tokenkeeper::journal;
use tokenkeeper::store::ha;

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
    let chosen = |e: &journal::Entry| sets.is_empty() || sets.contains(&e.set);
    // In an HA group, a token the store still holds may be served by the member that took
    // over: asked before anything is revoked, so that the deadline is the revocations' own.
    let group = Group::ask(&config, &entries, chosen).await;
    let handed: Vec<&journal::Entry> = entries
        .iter()
        .filter(|e| chosen(e) && group.served.contains_key(&e.fingerprint))
        .collect();
    for e in &handed {
        let leader = group.served.get(&e.fingerprint).map_or("-", String::as_str);
        say!(
            "{}: left live {}: {leader} leads the group and serves it from the store; kept in the journal for a later revoke",
            e.set,
            e.fingerprint
        );
    }
    let mut undecided = 0;
    if let Some(why) = &group.unknown {
        for e in entries.iter().filter(|e| chosen(e) && group.may_serve(e)) {
            undecided += 1;
            say!(
                "{}: NOT revoked {}: cannot tell whether another member of the group serves it ({why}); kept in the journal: run `tokenkeeper revoke` again once the store answers",
                e.set,
                e.fingerprint
            );
        }
    }
    // Left live ones stay journaled: should their leader die with nobody to take over, a
    // later revoke here revokes them.
    let selected = |e: &journal::Entry| {
        chosen(e)
            && !group.served.contains_key(&e.fingerprint)
            && !(group.unknown.is_some() && group.may_serve(e))
    };
    let handed = handed.len();
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
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
    // A revoked token the store still holds would be handed to every reader of the store.
    let revoked: Vec<(&str, &str)> = report
        .iter()
        .filter(|r| r.result.is_ok())
        .map(|r| (r.set.as_str(), r.fingerprint.as_str()))
        .collect();
    let mut uncleared = 0;
    // Bounded like the revocations: a store that hangs must not hold the command for ever.
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    for (set, cleared) in ha::clear_revoked(&config, &revoked, deadline).await {
        match cleared {
            Ok(()) => say!("{set}: removed it from the store"),
            Err(why) => {
                uncleared += 1;
                say!(
                    "{set}: FAILED to remove the revoked token from the store: {why}; remove the path by hand"
                );
            }
        }
    }
    let left = if handed == 0 {
        String::new()
    } else {
        format!(", {handed} left live for the group's leader")
    };
    let failed = failed + undecided;
    let uncleared_text = if uncleared == 0 {
        String::new()
    } else {
        format!(", {uncleared} still in the store")
    };
    say!(
        "{} revoked, {failed} failed{left}{uncleared_text}",
        report.len() + undecided - failed
    );
    if failed == 0 && uncleared == 0 {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// What the HA group says of the journaled tokens, before `revoke` touches any.
struct Group<'c> {
    config: &'c config::Config,
    /// Tokens another member serves now (fingerprint: leader): left live.
    served: HashMap<String, String>,
    /// Why the group could not be asked: then no token the store may hold is revoked.
    unknown: Option<String>,
}

impl<'c> Group<'c> {
    async fn ask(
        config: &'c config::Config,
        entries: &[journal::Entry],
        chosen: impl Fn(&journal::Entry) -> bool,
    ) -> Group<'c> {
        let chosen: Vec<&journal::Entry> = entries.iter().filter(|e| chosen(e)).collect();
        let (served, unknown) = match ha::served_by_the_group(config, &chosen).await {
            Ok(served) => (served, None),
            Err(e) => (HashMap::new(), Some(chain(&e))),
        };
        Group {
            config,
            served,
            unknown,
        }
    }

    /// Whether another member could serve `e`: with `ha:`, when its set writes a store path
    /// the member taking over adopts from.
    fn may_serve(&self, e: &journal::Entry) -> bool {
        self.config.ha.is_some()
            && self
                .config
                .sets
                .iter()
                .any(|s| s.name == e.set && s.store.is_some())
    }
}
