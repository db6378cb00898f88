//! `on_rotate:`: tell an application that its set has a new token, for the ones that read
//! the file only at start or on a signal.
//!
//! A watcher per set follows the set's stats (where every newly written token appears by
//! fingerprint) and runs the hooks on a task of its own, one run at a time: a slow or hung
//! hook never delays the set's refresh, nor any other set. A command that outlives its
//! timeout is killed with its whole process group, and at stop every group still alive is
//! ended ([`end_all`]). A signal goes only where a pidfile the daemon may believe points
//! ([`pidfile`]). No hook inherits a secret of the daemon's environment
//! ([`crate::secret::hidden_env`]). Failures are logged and counted, and never stop anything.

mod group;
pub mod pidfile;
pub mod yaml;

pub use group::end_all;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::secret::hidden_env;
use crate::status::SetReport;

/// What to do after a set's new token is written. Every part is optional; all that are given
/// run, in this order: `exec`, `signal`, `reload_unit`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OnRotate {
    /// A command (argv, no shell) run with TOKENKEEPER_SET, TOKENKEEPER_FILE and
    /// TOKENKEEPER_FINGERPRINT in its environment.
    pub exec: Option<Vec<String>>,
    /// How long a command (`exec` or `systemctl reload`) may run before its process group is
    /// killed.
    pub timeout: Duration,
    /// A signal for the process whose pid a file holds (read afresh each time).
    pub signal: Option<SignalHook>,
    /// A systemd unit to reload (`systemctl reload UNIT`).
    pub reload_unit: Option<String>,
}

impl OnRotate {
    pub fn is_empty(&self) -> bool {
        self.exec.is_none() && self.signal.is_none() && self.reload_unit.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SignalHook {
    pub pidfile: PathBuf,
    pub signal: nix::sys::signal::Signal,
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {timeout:?}; its process group was killed")]
    Timeout { program: String, timeout: Duration },
    #[error("{program} failed: {status}")]
    Status {
        program: String,
        status: std::process::ExitStatus,
    },
    #[error("waiting for {program}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pidfile(#[from] pidfile::PidfileError),
    #[error("not starting {program}: the daemon is stopping")]
    Stopping { program: String },
    #[error("cannot send {signal} to pid {pid} (from {path})", path = path.display())]
    Signal {
        signal: Signal,
        pid: i32,
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
}

/// Runs and failures of one set's hooks, over the life of the process.
#[derive(Debug, Default)]
pub struct HookCounters {
    pub runs: AtomicU64,
    pub failures: AtomicU64,
}

/// Watchers started by [`watch`], so a short-lived command (`once`) can let the last hooks
/// finish before it exits. Process-wide because hooks are this process's children.
static WATCHERS: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());

/// Follow `stats` of the set `name` and run its `on_rotate` hooks after each new token;
/// nothing if the set has none. `file` is the set's token file, if it has one: a store-only
/// set's hooks see TOKENKEEPER_FILE empty. The watcher ends once the set's task has ended
/// (and its last hooks ran).
pub fn watch(name: &str, file: Option<&Path>, hooks: Option<&OnRotate>, report: &SetReport) {
    let Some(hooks) = hooks.cloned() else {
        return;
    };
    let mut stats = report.subscribe_stats();
    let name = name.to_string();
    let file = file.map(Path::to_path_buf).unwrap_or_default();
    let handle = tokio::spawn(async move {
        let counters = HookCounters::default();
        let mut last = stats.borrow_and_update().fingerprint.clone();
        // `changed` reports a value not yet seen even after the set's task is gone, so the
        // last token's hooks run too.
        while stats.changed().await.is_ok() {
            let (fp, adopted) = {
                let s = stats.borrow_and_update();
                (s.fingerprint.clone(), s.adopted.clone())
            };
            // A token taken back at start was in place before: nothing rotated.
            if fp.is_none() || fp == last || fp == adopted {
                last = fp;
                continue;
            }
            last = fp.clone();
            let fp = fp.unwrap_or_default();
            run_all(&name, &file, &fp, &hooks, &counters).await;
        }
    });
    if let Ok(mut w) = WATCHERS.lock() {
        w.retain(|h| !h.is_finished());
        w.push(handle);
    }
}

/// Wait (until `deadline`) for every watcher whose set has stopped to run its last hooks.
pub async fn finish(deadline: Instant) {
    let handles: Vec<JoinHandle<()>> = match WATCHERS.lock() {
        Ok(mut w) => w.drain(..).collect(),
        Err(_) => return,
    };
    for h in handles {
        let abort = h.abort_handle();
        if tokio::time::timeout_at(deadline, h).await.is_err() {
            abort.abort();
        }
    }
}

/// Run every hook of one set for the token `fingerprint`, in order, each failure logged.
pub async fn run_all(
    set: &str,
    file: &Path,
    fingerprint: &str,
    hooks: &OnRotate,
    counters: &HookCounters,
) {
    let env = [
        ("TOKENKEEPER_SET", set.to_string()),
        ("TOKENKEEPER_FILE", file.display().to_string()),
        ("TOKENKEEPER_FINGERPRINT", fingerprint.to_string()),
    ];
    let mut results: Vec<(&str, Result<(), HookError>)> = Vec::new();
    if let Some(argv) = &hooks.exec {
        results.push(("exec", run_command(argv, &env, hooks.timeout).await));
    }
    if let Some(sig) = &hooks.signal {
        results.push(("signal", send_signal(&sig.pidfile, sig.signal).await));
    }
    if let Some(unit) = &hooks.reload_unit {
        let argv = [systemctl(), "reload".to_string(), unit.clone()];
        results.push(("reload_unit", run_command(&argv, &env, hooks.timeout).await));
    }
    for (hook, r) in results {
        let runs = counters.runs.fetch_add(1, Ordering::Relaxed) + 1;
        match r {
            Ok(()) => info!(set, fingerprint, hook, "on_rotate done"),
            Err(e) => {
                let failures = counters.failures.fetch_add(1, Ordering::Relaxed) + 1;
                warn!(set, fingerprint, hook, error = %crate::error_chain(&e), failures, runs,
                    "on_rotate failed; the token is in place regardless");
            }
        }
    }
}

/// Run `argv` (no shell) with `env`, in a process group of its own so that a timeout, or
/// the stop, kills whatever it started too.
/// Where `systemctl` is: by its absolute path, never found through PATH, so that whoever may
/// put a program earlier on PATH cannot run as the daemon's user. `/usr/bin` on a merged-/usr
/// system (every current distribution), `/bin` on an older one.
fn systemctl() -> String {
    const PLACES: [&str; 2] = ["/usr/bin/systemctl", "/bin/systemctl"];
    PLACES
        .iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or(&PLACES[0])
        .to_string()
}

async fn run_command(
    argv: &[String],
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<(), HookError> {
    let program = argv.first().cloned().unwrap_or_default();
    if group::stopping() {
        return Err(HookError::Stopping { program });
    }
    let mut cmd = tokio::process::Command::new(&program);
    for name in hidden_env() {
        cmd.env_remove(name);
    }
    // A token exported by a `tokenkeeper exec` this daemon runs under: hooks never get one.
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_some_and(|n| n.starts_with("TOKENKEEPER_") && n.ends_with("_TOKEN"))
        {
            cmd.env_remove(name);
        }
    }
    let mut child = cmd
        .args(argv.iter().skip(1))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HookError::Spawn {
            program: program.clone(),
            source,
        })?;
    // The group's id is the leader's pid (process_group(0) above).
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    if let Some(pgid) = pgid
        && !group::register(pgid)
    {
        let _ = child.wait().await;
        return Err(HookError::Stopping { program });
    }
    let result = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(HookError::Status { program, status }),
        Ok(Err(source)) => Err(HookError::Wait { program, source }),
        Err(_) => {
            if let Some(pgid) = pgid {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            let _ = child.kill().await;
            Err(HookError::Timeout { program, timeout })
        }
    };
    if let Some(pgid) = pgid {
        group::settle(pgid);
    }
    result
}

/// Send `signal` to the pid `pidfile` holds now (an application restarted since the last
/// token has a new pid), if the file and the process pass [`pidfile::target`]'s checks.
async fn send_signal(pidfile: &Path, signal: Signal) -> Result<(), HookError> {
    let target = pidfile::target(pidfile).await?;
    target.send(signal).map_err(|source| HookError::Signal {
        signal,
        pid: target.pid,
        path: pidfile.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::kill;

    fn hooks(exec: &[&str], timeout: Duration) -> OnRotate {
        OnRotate {
            exec: Some(exec.iter().map(|s| s.to_string()).collect()),
            timeout,
            signal: None,
            reload_unit: None,
        }
    }

    #[tokio::test]
    async fn a_command_gets_the_set_file_and_fingerprint_but_never_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let script = format!("env > {}", out.display());
        let c = HookCounters::default();
        let h = hooks(&["/bin/sh", "-c", &script], Duration::from_secs(10));
        run_all(
            "orders",
            Path::new("/run/t/orders.token"),
            "abcd1234",
            &h,
            &c,
        )
        .await;
        let env = std::fs::read_to_string(&out).unwrap();
        assert!(env.contains("TOKENKEEPER_SET=orders\n"), "{env}");
        assert!(env.contains("TOKENKEEPER_FILE=/run/t/orders.token\n"));
        assert!(env.contains("TOKENKEEPER_FINGERPRINT=abcd1234\n"));
        assert!(!env.contains("TOKENKEEPER_TOKEN"));
        assert_eq!(c.runs.load(Ordering::Relaxed), 1);
        assert_eq!(c.failures.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_hung_command_and_its_children_are_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // The shell and a grandchild of it both hang.
        let script = format!("sleep 1000 & echo $$ $! > {}; wait", pids.display());
        let c = HookCounters::default();
        let h = hooks(&["/bin/sh", "-c", &script], Duration::from_millis(500));
        let err = run_command(h.exec.as_ref().unwrap(), &[], h.timeout)
            .await
            .unwrap_err();
        assert!(matches!(err, HookError::Timeout { .. }), "{err}");
        let text = std::fs::read_to_string(&pids).unwrap();
        for pid in text.split_whitespace() {
            let pid = Pid::from_raw(pid.parse().unwrap());
            // Killed (and the shell reaped); the orphaned sleep is reaped by init, so wait.
            let mut gone = false;
            for _ in 0..200 {
                if kill(pid, None).is_err() {
                    gone = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(gone, "pid {pid} survived the timeout");
        }
        run_all("s", Path::new("/f"), "fp", &h, &c).await;
        assert_eq!(c.failures.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn failures_are_counted_and_every_hook_still_runs() {
        let dir = tempfile::tempdir().unwrap();
        let c = HookCounters::default();
        let h = OnRotate {
            exec: Some(vec!["/nonexistent/reload".into()]),
            timeout: Duration::from_secs(5),
            signal: Some(SignalHook {
                pidfile: dir.path().join("missing.pid"),
                signal: Signal::SIGHUP,
            }),
            reload_unit: None,
        };
        run_all("s", Path::new("/f"), "fp", &h, &c).await;
        assert_eq!(c.runs.load(Ordering::Relaxed), 2);
        assert_eq!(c.failures.load(Ordering::Relaxed), 2);
        std::fs::write(dir.path().join("missing.pid"), "1\n").unwrap();
        let err = send_signal(&dir.path().join("missing.pid"), Signal::SIGHUP)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                HookError::Pidfile(pidfile::PidfileError::BadPid { .. })
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_signal_goes_to_the_pid_in_the_file_read_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("app.pid");
        let mut child = tokio::process::Command::new("sleep")
            .arg("1000")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        std::fs::write(&pidfile, format!("{}\n", child.id().unwrap())).unwrap();
        send_signal(&pidfile, Signal::SIGTERM).await.unwrap();
        let status = child.wait().await.unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
    }
}
