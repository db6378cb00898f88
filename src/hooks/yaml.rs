//! A set's `on_rotate:` read from the YAML: the command, the signal and the unit to reload.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

use crate::settings::{Field, KERNEL_TREES, Report, Rule, join, normalize};

use super::{OnRotate, SignalHook};

#[derive(Deserialize)]
pub struct RawOnRotate {
    pub exec: Option<Value>,
    pub timeout: Option<Field<HookTimeout>>,
    pub signal: Option<RawSignalHook>,
    pub reload_unit: Option<Value>,
}

#[derive(Deserialize)]
pub struct RawSignalHook {
    pub pidfile: Option<String>,
    pub signal: Option<String>,
}

/// How long an `on_rotate` command may run by default: long enough for a service's reload
/// (systemd's own default job timeout is 90 s, but reloads take seconds), short enough that a
/// hung one is noticed well before the next token.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// Signals `on_rotate.signal` may send: the ones applications use for "re-read your files",
/// plus the polite stops. SIGKILL and SIGSTOP are refused: nothing reloads on them.
pub const HOOK_SIGNALS: &[(&str, nix::sys::signal::Signal)] = &[
    ("SIGHUP", nix::sys::signal::Signal::SIGHUP),
    ("SIGUSR1", nix::sys::signal::Signal::SIGUSR1),
    ("SIGUSR2", nix::sys::signal::Signal::SIGUSR2),
    ("SIGWINCH", nix::sys::signal::Signal::SIGWINCH),
    ("SIGALRM", nix::sys::signal::Signal::SIGALRM),
    ("SIGTERM", nix::sys::signal::Signal::SIGTERM),
    ("SIGINT", nix::sys::signal::Signal::SIGINT),
    ("SIGQUIT", nix::sys::signal::Signal::SIGQUIT),
];

/// `on_rotate.timeout`: above zero, for a command needs time to run.
pub struct HookTimeout;

impl Rule for HookTimeout {
    type Value = Duration;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<Duration> {
        let why = ": a command needs time to run";
        r.positive_duration(parent, key, Some(value), why)
            .ok()
            .flatten()
    }
}

/// Check a set's `on_rotate:` mapping `raw` at `at`, every problem going to `report`.
#[allow(clippy::result_unit_err)] // the problems are in the report; Err only says there were some
pub fn on_rotate(report: &mut Report, at: &str, raw: &RawOnRotate) -> Result<OnRotate, ()> {
    let mut ok = true;
    let exec = match &raw.exec {
        None => None,
        Some(Value::Sequence(items)) if !items.is_empty() => {
            let argv: Vec<String> = items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            if argv.len() != items.len() || argv[0].is_empty() {
                report.bad(at, "exec", "exec must list the command and its arguments as strings, e.g. [\"/usr/bin/app-reload\", \"--soft\"]");
                ok = false;
            } else if !std::path::Path::new(&argv[0]).is_absolute() {
                report.bad(at, "exec", format!(
                    "exec's program `{}` must be an absolute path, e.g. [\"/usr/bin/app-reload\"]: PATH is not searched, so that whoever may put a program earlier on it cannot choose what runs",
                    argv[0].escape_debug()
                ));
                ok = false;
            } else if let Some(why) =
                crate::trust::program_open_to_others(std::path::Path::new(&argv[0]))
            {
                report.bad(at, "exec", format!(
                    "exec's program `{}`: {why}, who could choose what runs as tokenkeeper's user",
                    argv[0].escape_debug()
                ));
                ok = false;
            }
            Some(argv)
        }
        Some(_) => {
            report.bad(at, "exec", "exec must be a non-empty list: the command and its arguments (no shell), e.g. [\"/usr/bin/app-reload\"]");
            ok = false;
            None
        }
    };
    let timeout = report
        .read(at, "timeout", raw.timeout.as_ref())
        .map(|t| t.unwrap_or(DEFAULT_HOOK_TIMEOUT));
    let signal = match &raw.signal {
        None => None,
        Some(sig) => {
            let sig_at = join(at, "signal");
            let pidfile = match sig.pidfile.as_deref() {
                None => {
                    report.missing(&sig_at, "pidfile", "the file holding the pid to signal");
                    None
                }
                Some(p) => match pidfile_problem(p) {
                    Some(why) => {
                        report.bad(&sig_at, "pidfile", why);
                        None
                    }
                    None => Some(normalize(Path::new(p))),
                },
            };
            let name = sig
                .signal
                .as_deref()
                .unwrap_or("SIGHUP")
                .trim()
                .to_ascii_uppercase();
            let full = if name.starts_with("SIG") {
                name
            } else {
                format!("SIG{name}")
            };
            let signal = match HOOK_SIGNALS.iter().find(|(n, _)| *n == full) {
                Some((_, s)) => Some(*s),
                None => {
                    let names: Vec<&str> = HOOK_SIGNALS.iter().map(|(n, _)| *n).collect();
                    report.bad(
                        &sig_at,
                        "signal",
                        format!("signal `{full}` must be one of {}", names.join(", ")),
                    );
                    None
                }
            };
            match (pidfile, signal) {
                (Some(pidfile), Some(signal)) => Some(SignalHook { pidfile, signal }),
                _ => {
                    ok = false;
                    None
                }
            }
        }
    };
    let reload_unit = match &raw.reload_unit {
        None => None,
        Some(Value::String(u))
            if !u.is_empty() && !u.starts_with('-') && !u.contains(char::is_whitespace) =>
        {
            Some(u.clone())
        }
        Some(_) => {
            report.bad(
                at,
                "reload_unit",
                "reload_unit must be one systemd unit name such as \"app.service\"",
            );
            ok = false;
            None
        }
    };
    match (ok, timeout) {
        (true, Ok(timeout)) => Ok(OnRotate {
            exec,
            timeout,
            signal,
            reload_unit,
        }),
        _ => Err(()),
    }
}

/// Why `path` cannot be an `on_rotate` pidfile, as far as the config alone tells: the file
/// itself is checked at each use (`hooks::pidfile`).
fn pidfile_problem(path: &str) -> Option<String> {
    if path.chars().any(char::is_control) {
        return Some(format!(
            "pidfile `{}` holds a control character",
            path.escape_default()
        ));
    }
    if !Path::new(path).is_absolute() {
        return Some(format!("pidfile `{path}` must be an absolute path"));
    }
    let normal = normalize(Path::new(path));
    KERNEL_TREES
        .iter()
        .find(|k| normal.starts_with(k))
        .map(|k| format!("pidfile `{path}` is under {k}, the kernel's files, not a pidfile"))
}
