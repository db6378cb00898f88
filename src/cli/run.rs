//! `tokenkeeper run`: the daemon in the foreground, standing by for the lease first with `ha:`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use tokenkeeper::config::{self, ConfigError, Loaded};
use tokenkeeper::daemon::{self, RunReport};
use tokenkeeper::error_chain as chain;
use tokenkeeper::journal;
use tokenkeeper::reporter::ReporterOptions;
use tokenkeeper::status::{self, Board, Phase};
use tokenkeeper::store::ha;
use tokenkeeper::store::standby::{self, Outcome};
use tokenkeeper::{metrics, signals, systemd};

use super::config_error::print_config_error;
use super::logging::init_logging;
use super::{EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_OSERR, open_state};
use tokenkeeper::status::plural;

/// At stop, how long the last status and metrics write may take before the process exits
/// without it: a write is milliseconds, and stop must not hang on a stuck disk.
const FINAL_REPORT_LIMIT: Duration = Duration::from_secs(2);

/// At stop, how long a hook's process group gets between SIGTERM and SIGKILL: a hook asked to
/// stop ends in milliseconds, and the whole stop must fit systemd's TimeoutStopSec (30 s in the
/// shipped unit) after up to `shutdown_timeout` (20 s by default) of revocation.
const HOOKS_STOP_GRACE: Duration = Duration::from_secs(2);

/// Exit at once on a second stop signal: the operator has chosen speed over revocation.
fn exit_now() {
    std::process::exit(i32::from(EXIT_FAILED));
}

/// Lift the soft limit on open files to the hard one: a low soft limit starves token and
/// journal writes long before the hard limit would.
fn raise_nofile_limit() {
    match tokenkeeper::limits::raise_nofile_limit() {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => warn!(error = %e, "cannot raise the open files limit"),
    }
}

pub(crate) async fn run(path: &Path) -> u8 {
    let Loaded { config, warnings } = match config::load(path) {
        Ok(l) => l,
        Err(e) => {
            print_config_error(&e);
            return EXIT_CONFIG;
        }
    };
    init_logging(config.log_level.as_deref());
    raise_nofile_limit();
    for w in &warnings {
        warn!("{}: {w}", path.display());
    }
    // The YAML parser's events for a large config are garbage now.
    tokenkeeper::memory::release_free();
    run_daemon(config, Some(path.to_path_buf())).await
}

/// SIGHUP re-reads `path` with the same checks as a start (every problem is logged, and the
/// daemon runs on with the old config), and builds providers for new or changed ones.
fn reloader(path: PathBuf) -> daemon::Reloader<tokenkeeper::provider::Provider> {
    let http = tokenkeeper::provider::http_client();
    daemon::Reloader {
        load: Arc::new(move || match config::load(&path) {
            Ok(Loaded { config, warnings }) => {
                for w in &warnings {
                    warn!("{}: {w}", path.display());
                }
                Ok(config)
            }
            Err(ConfigError::Invalid { problems, .. }) => Err(problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; ")),
            Err(e) => Err(chain(&e)),
        }),
        build: Box::new(move |pcfg| {
            let http = http.as_ref().map_err(|e| chain(e))?;
            tokenkeeper::provider::Provider::build(pcfg, http)
                .map(std::sync::Arc::new)
                .map_err(|e| chain(&e))
        }),
    }
}

pub(crate) async fn run_daemon(config: config::Config, path: Option<PathBuf>) -> u8 {
    // Handlers first: from here on, a stop signal means "revoke", never "die".
    let control = match signals::listen(exit_now) {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot install signal handlers");
            return EXIT_OSERR;
        }
    };
    // Stopped while the config was read: nothing is issued yet, and the journal's tokens
    // (if any) wait for the next start.
    if signals::stop_requested().is_some() {
        info!("stop signal received before the start; exiting without issuing anything");
        return EXIT_OK;
    }
    let providers = match daemon::build_providers(&config) {
        Ok(p) => p,
        Err(e) => {
            error!("{}", chain(&e));
            return EXIT_CONFIG;
        }
    };
    let (lock, entries) = match open_state(&config.state_dir) {
        Ok(s) => s,
        Err(code) => return code,
    };
    // The writer holds the lock, and takes it again should the directory be removed.
    let journal = journal::Journal::start_locked(config.state_dir.clone(), entries.clone(), lock);
    let board = Board::new();
    let reporter = tokio::spawn(tokenkeeper::reporter::run(
        Arc::clone(&board),
        ReporterOptions {
            status_file: config.state_dir.join(status::STATUS_FILE),
            metrics_textfile: config.metrics.textfile.clone(),
            watchdog: systemd::watchdog_interval(),
        },
    ));
    // Metrics are advice, the token files are what applications need: a taken port does not
    // stop the daemon (a start refused for it would leave every application without a token,
    // and systemd would retry it every few seconds). It is logged loudly and stays in view, in
    // `status`, `status.json` and `systemctl status`, for as long as the daemon runs.
    let metrics_server = match config.metrics.listen {
        Some(addr) => match metrics::bind(addr).await {
            Ok(listener) => Some(tokio::spawn(metrics::serve(listener, Arc::clone(&board)))),
            Err(e) => {
                error!("{}; running on without it", chain(&e));
                board.set_metrics_error(chain(&e));
                None
            }
        },
        None => None,
    };
    // systemd starts dependants once every token file exists (Type=notify): the status
    // reporter sends READY=1 once it has published the running phase.
    let on_ready = {
        let board = Arc::clone(&board);
        move || {
            board.set_phase(Phase::Running);
            // The start's burst (a request, a journal record and a file write per set) is over.
            tokenkeeper::memory::release_free();
        }
    };
    let reload = path.map(reloader);
    let shutdown_timeout = config.shutdown_timeout;
    // With `ha:`, stand by until this instance holds the lease; then lead with a control
    // channel that turns a stop into a handover when a standby can carry on.
    let mut control = control;
    let lease = match &config.ha {
        Some(ha) => match ha::Lease::new(&config, ha) {
            Ok(Some(l)) => Some(Arc::new(l)),
            Ok(None) => {
                error!(store = %ha.store, "ha.store is not configured");
                return EXIT_CONFIG;
            }
            Err(e) => {
                error!("{}", chain(&e));
                return EXIT_CONFIG;
            }
        },
        None => None,
    };
    let lead = |control| {
        daemon::run(
            config,
            providers,
            journal,
            entries,
            control,
            reload,
            Arc::clone(&board),
            on_ready,
        )
    };
    let (result, lost) = match lease {
        Some(lease) => match standby::run(&lease, &board, &mut control, systemd::ready, lead).await
        {
            Outcome::Led { result, lost } => (result, lost),
            Outcome::Stopped(_lead) => {
                board.set_phase(Phase::Stopped);
                let _ = tokio::time::timeout(FINAL_REPORT_LIMIT, reporter).await;
                return EXIT_OK;
            }
        },
        None => (lead(control).await, false),
    };
    // The tokens are revoked: a hook still running (or what one left behind) has nothing
    // left to do, and must not outlive the daemon holding its stderr.
    tokenkeeper::hooks::end_all(HOOKS_STOP_GRACE.min(shutdown_timeout)).await;
    board.set_phase(Phase::Stopped);
    let _ = tokio::time::timeout(FINAL_REPORT_LIMIT, reporter).await;
    if let Some(server) = metrics_server {
        server.abort();
    }
    match result {
        // Another instance leads now: exit non-zero so systemd restarts this one as a standby.
        Ok(_) if lost => {
            error!("lost the lease to another instance; handed the tokens over");
            EXIT_FAILED
        }
        Ok(report) => summarize(&report),
        Err(e) => {
            error!("{}", chain(&e));
            EXIT_CONFIG
        }
    }
}

/// Log the one-line stop summary and pick the exit code.
fn summarize(report: &RunReport) -> u8 {
    let failed = report.failed_sets();
    let kept: usize = report.sets.iter().filter(|s| s.kept.is_some()).count();
    // The sets this stop revoked tokens of, as its log lines name them.
    let sets = report.sets.iter().filter(|s| !s.revoked.is_empty()).count();
    let expiring: usize = report.sets.iter().map(|s| s.expiring.len()).sum();
    let expiring_note = if expiring > 0 {
        format!(
            "; {expiring} token{} left to expire on {} own (not revocable)",
            plural(expiring),
            if expiring == 1 { "its" } else { "their" }
        )
    } else {
        String::new()
    };
    if !report.crashed.is_empty() {
        error!(
            revoked = report.revoked_count(),
            "stopped: revoked {} token{}, but the task of {} failed (a bug: please report it){}",
            report.revoked_count(),
            plural(report.revoked_count()),
            report.crashed.join(", "),
            if failed.is_empty() {
                "; its journaled tokens were revoked in its place".to_string()
            } else {
                format!("; could not revoke every token of: {}", failed.join(", "))
            }
        );
        EXIT_FAILED
    } else if failed.is_empty() {
        info!(
            revoked = report.revoked_count(),
            kept,
            expiring,
            "stopped: revoked {} token{} across {sets} set{}{expiring_note}",
            report.revoked_count(),
            plural(report.revoked_count()),
            plural(sets)
        );
        EXIT_OK
    } else {
        error!(
            revoked = report.revoked_count(),
            "stopped: revoked {} token{}, but could not revoke every token of: {}",
            report.revoked_count(),
            plural(report.revoked_count()),
            failed.join(", ")
        );
        EXIT_FAILED
    }
}
