//! A set's `on_rotate:` read from the YAML: the command, the signal and the unit to reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

use crate::settings::{Field, KERNEL_TREES, Report, Rule, join, normalize};

use super::{OnRotate, SignalHook};

#[derive(Deserialize)]
pub struct RawOnRotate {
    pub exec: Option<Field<Command>>,
    pub timeout: Option<Field<HookTimeout>>,
    pub signal: Option<RawSignalHook>,
    pub reload_unit: Option<Field<UnitName>>,
}

#[derive(Deserialize)]
pub struct RawSignalHook {
    pub pidfile: Option<Field<Pidfile>>,
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
        r.positive_duration(parent, key, value, why)
    }
}

/// `exec`: the command and its arguments (no shell), its program an absolute path that only
/// its owner or root could have written.
pub struct Command;

impl Rule for Command {
    type Value = Vec<String>;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<Vec<String>> {
        let items = match value {
            Value::Sequence(items) if !items.is_empty() => items,
            _ => {
                r.bad(parent, key, "exec must be a non-empty list: the command and its arguments (no shell), e.g. [\"/usr/bin/app-reload\"]");
                return None;
            }
        };
        let argv: Vec<String> = items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        if argv.len() != items.len() || argv[0].is_empty() {
            r.bad(parent, key, "exec must list the command and its arguments as strings, e.g. [\"/usr/bin/app-reload\", \"--soft\"]");
            return None;
        }
        let program = Path::new(&argv[0]);
        let why = if !program.is_absolute() {
            format!(
                "exec's program `{}` must be an absolute path, e.g. [\"/usr/bin/app-reload\"]: PATH is not searched, so that whoever may put a program earlier on it cannot choose what runs",
                argv[0].escape_debug()
            )
        } else if let Some(why) = crate::trust::program_open_to_others(program) {
            format!(
                "exec's program `{}`: {why}, who could choose what runs as tokenkeeper's user",
                argv[0].escape_debug()
            )
        } else {
            return Some(argv);
        };
        r.bad(parent, key, why);
        None
    }
}

/// `reload_unit`: one systemd unit name, which `systemctl reload` cannot take for an option.
pub struct UnitName;

impl Rule for UnitName {
    type Value = String;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<String> {
        match value {
            Value::String(u)
                if !u.is_empty() && !u.starts_with('-') && !u.contains(char::is_whitespace) =>
            {
                Some(u.clone())
            }
            _ => {
                r.bad(
                    parent,
                    key,
                    "reload_unit must be one systemd unit name such as \"app.service\"",
                );
                None
            }
        }
    }
}

/// Check a set's `on_rotate:` mapping `raw` at `at`, every problem going to `report`.
#[allow(clippy::result_unit_err)] // the problems are in the report; Err only says there were some
pub fn on_rotate(report: &mut Report, at: &str, raw: &RawOnRotate) -> Result<OnRotate, ()> {
    let mut ok = true;
    let exec = report.read(at, "exec", raw.exec.as_ref());
    ok &= exec.is_ok();
    let exec = exec.ok().flatten();
    let timeout = report
        .read(at, "timeout", raw.timeout.as_ref())
        .map(|t| t.unwrap_or(DEFAULT_HOOK_TIMEOUT));
    let signal = match &raw.signal {
        None => None,
        Some(sig) => {
            let sig_at = join(at, "signal");
            let what = "the file holding the pid to signal";
            let pidfile = report.required(&sig_at, "pidfile", sig.pidfile.as_ref(), what);
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
    let reload_unit = report.read(at, "reload_unit", raw.reload_unit.as_ref());
    ok &= reload_unit.is_ok();
    let reload_unit = reload_unit.ok().flatten();
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

/// `on_rotate.signal.pidfile`: where the pid to signal is read, afresh each time.
pub struct Pidfile;

impl Rule for Pidfile {
    type Value = PathBuf;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<PathBuf> {
        let path = r.text(parent, key, value)?;
        match pidfile_problem(path) {
            Some(why) => {
                r.bad(parent, key, why);
                None
            }
            None => Some(normalize(Path::new(path))),
        }
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
