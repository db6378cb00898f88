//! How a config that does not load is reported: every problem, then the warnings.

use std::path::Path;

use tokenkeeper::config::{self, ConfigError};
use tokenkeeper::error_chain as chain;

/// Print a config error with every problem, one per line, as `FILE:LINE:COL: AT: MESSAGE`
/// (the form editors and CI annotate), then its warnings.
pub(crate) fn print_config_error(e: &ConfigError) {
    match e {
        ConfigError::Invalid {
            path,
            problems,
            warnings,
        } => {
            for p in problems {
                match (p.line, p.column) {
                    (Some(line), Some(col)) => {
                        say_err!("error: {}:{line}:{col}: {}", path.display(), located(p))
                    }
                    _ => say_err!("error: {}: {}", path.display(), located(p)),
                }
            }
            print_warnings(path, warnings);
            say_err!("tokenkeeper: {e}");
        }
        other => say_err!("tokenkeeper: {}", chain(other)),
    }
}

/// `AT: MESSAGE`, or the message alone for a problem with the whole file.
fn located(p: &config::Problem) -> String {
    if p.at.is_empty() {
        p.message.clone()
    } else {
        format!("{}: {}", p.at, p.message)
    }
}

pub(crate) fn print_warnings(path: &Path, warnings: &[String]) {
    for w in warnings {
        say_err!("warning: {}: {w}", path.display());
    }
}
