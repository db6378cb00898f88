//! The subcommands, one file each, and what they share: printing, logging, config errors,
//! the exit codes and the state directory.

#[macro_use]
mod output;

mod batch;
pub(crate) mod check;
mod config_error;
pub(crate) mod demo;
pub(crate) mod dev_provider;
pub(crate) mod exec;
pub(crate) mod generate;
mod logging;
pub(crate) mod once;
pub(crate) mod revoke;
pub(crate) mod run;
pub(crate) mod status;

use std::path::Path;

use tracing::error;

use tokenkeeper::error_chain as chain;
use tokenkeeper::journal::{self, JournalError, StateLock};

/// Exit codes. 78 is `EX_CONFIG` from sysexits.h: the unit's `RestartPreventExitStatus=78`
/// keeps systemd from restarting into the same bad config.
pub(crate) const EXIT_OK: u8 = 0;
/// Some tokens could not be revoked, or some sets failed.
pub(crate) const EXIT_FAILED: u8 = 1;
pub(crate) const EXIT_CONFIG: u8 = 78;
/// The runtime's worker threads as `TOKIO_WORKER_THREADS` asks, if it is set. Tokio reads the
/// variable itself and panics on a value that is not a positive number; read here first, such
/// a value is an error that says so, not a panic.
pub(crate) fn worker_threads() -> Result<Option<usize>, String> {
    const VAR: &str = "TOKIO_WORKER_THREADS";
    match std::env::var_os(VAR) {
        None => Ok(None),
        Some(value) => match value.to_str().and_then(|v| v.trim().parse::<usize>().ok()) {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(format!(
                "{VAR} is set to {}, which is not a positive number of threads; unset it or give one",
                tokenkeeper::shown(&value.to_string_lossy())
            )),
        },
    }
}

/// `EX_DATAERR`: the state journal cannot be read, so which tokens are live is unknown.
pub(crate) const EXIT_DATAERR: u8 = 65;
/// `EX_CANTCREAT`: the state directory or journal cannot be created or written.
pub(crate) const EXIT_CANTCREAT: u8 = 73;
/// `EX_TEMPFAIL`: another tokenkeeper process holds the state directory.
pub(crate) const EXIT_TEMPFAIL: u8 = 75;
/// `EX_OSERR`: the operating system refused something we need (signals, a socket).
pub(crate) const EXIT_OSERR: u8 = 71;
/// `once`/`exec`: `EX_UNAVAILABLE`: some set could not get a token (the provider refused or
/// could not be reached), so `exec` did not run its command.
pub(crate) const EXIT_UNAVAILABLE: u8 = 69;
/// `EX_USAGE`: a set named on the command line is not in the config.
pub(crate) const EXIT_USAGE: u8 = 64;
/// `exec`: the command exists but could not be run; what shells answer in that case.
pub(crate) const EXIT_CANNOT_EXECUTE: u8 = 126;
/// `exec`: no such command; what shells answer in that case.
pub(crate) const EXIT_NOT_FOUND: u8 = 127;
/// `status`: the daemon is not running. 3 is what LSB init scripts and `systemctl status`
/// use for "program is not running", so scripts can treat both alike.
pub(crate) const EXIT_NOT_RUNNING: u8 = 3;
/// `status`: the state is unknown (the status file cannot be read). LSB's 4.
pub(crate) const EXIT_STATUS_UNKNOWN: u8 = 4;

/// Take the state directory and read its journal. The lock is held as long as the returned
/// value lives.
pub(crate) fn open_state(dir: &Path) -> Result<(StateLock, Vec<journal::Entry>), u8> {
    open_state_from(dir, None)
}

/// [`open_state`], with the lock a predecessor kept open across a restart in place when
/// `inherited` names its descriptor.
pub(crate) fn open_state_from(
    dir: &Path,
    inherited: Option<std::os::fd::RawFd>,
) -> Result<(StateLock, Vec<journal::Entry>), u8> {
    let code = |e: &JournalError| match e {
        JournalError::Locked { .. } => EXIT_TEMPFAIL,
        // Like a bad config: restarting cannot help until an operator fixes owner or mode.
        JournalError::Unsafe { .. } => EXIT_CONFIG,
        JournalError::Corrupt { .. } | JournalError::Version { .. } => EXIT_DATAERR,
        JournalError::Io { .. } | JournalError::Write(_) | JournalError::Closed => EXIT_CANTCREAT,
    };
    let lock = match inherited {
        Some(fd) => journal::lock_inherited(dir, fd),
        None => journal::lock_state_dir(dir),
    };
    let lock = lock.map_err(|e| {
        error!("{}", chain(&e));
        code(&e)
    })?;
    let entries = journal::load(dir).map_err(|e| {
        error!(
            "{}; move it aside to start afresh (its tokens then expire on their own)",
            chain(&e)
        );
        code(&e)
    })?;
    Ok((lock, entries))
}
