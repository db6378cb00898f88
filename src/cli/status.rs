//! `tokenkeeper status`: each set's state, from the running daemon's status file.

use std::path::Path;

use tokenkeeper::config;
use tokenkeeper::error_chain as chain;
use tokenkeeper::status::{self, Liveness};

use super::config_error::print_config_error;
use super::{EXIT_CONFIG, EXIT_NOT_RUNNING, EXIT_OK, EXIT_STATUS_UNKNOWN};

/// `tokenkeeper status`: read the status file the daemon keeps in its state directory.
pub(crate) fn show_status(path: &Path, json: bool) -> u8 {
    // The config only tells where the state directory is; its secrets are not needed (and
    // not readable outside the service), so they are not checked.
    let text = match config::read_text(path) {
        Ok(t) => t,
        Err(e) => {
            say_err!("tokenkeeper: {}", chain(&e));
            return EXIT_CONFIG;
        }
    };
    let config = match config::parse(&text, path) {
        Ok(l) => l.config,
        Err(e) => {
            print_config_error(&e);
            return EXIT_CONFIG;
        }
    };
    let file = config.state_dir.join(status::STATUS_FILE);
    let snap = match status::read_status_file(&file) {
        Ok(s) => s,
        Err(status::StatusError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            say_err!(
                "tokenkeeper is not running: no status file at {} (has the daemon ever run with this config's state_dir?)",
                file.display()
            );
            return EXIT_NOT_RUNNING;
        }
        Err(e) => {
            let hint = match &e {
                status::StatusError::Read { source, .. }
                    if source.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    " (the state directory is the daemon's alone: run this as root)"
                }
                _ => "",
            };
            say_err!("tokenkeeper: {}{hint}", chain(&e));
            return EXIT_STATUS_UNKNOWN;
        }
    };
    let now = tokenkeeper::clock::now_wall();
    let live = status::liveness(&snap, now, status::pid_alive);
    if json {
        let v = status::render_json(&snap, &live, now);
        say!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
        );
    } else {
        use std::io::Write as _;
        let _ = write!(
            std::io::stdout(),
            "{}",
            status::render_table(&snap, &live, now)
        );
    }
    if live == Liveness::Running {
        EXIT_OK
    } else {
        if json {
            // The table says it in its first line; JSON readers get it on stderr too.
            say_err!("{}", status::not_running_message(&snap, &live, now));
        }
        EXIT_NOT_RUNNING
    }
}
