//! A planned restart in place: `systemctl reload` (SIGHUP) after the binary on disk was
//! replaced. The running daemon checks the new binary with the config, takes every token back
//! from its sets (current and superseded, with their schedule), makes the journal durable and
//! execs the new binary with the same PID, the state directory's lock and a plan of the
//! schedule. The successor adopts every token without asking the provider for anything and
//! writes each file again by renaming over it, so no file ever goes missing.
//!
//! Why exec in place rather than a second process beside the first: the PID systemd watches
//! stays the same (no `MAINPID=` dance, no window where two daemons hold one state directory),
//! the lock is carried across as an open descriptor (nobody can take it in between), and a
//! stop signal that arrives meanwhile stays pending across the exec, so it still revokes.

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{info, warn};

use super::live::Live;
use super::set_task::HANDOVER_WAIT;
use super::{Handover, Order};
use crate::clock::wall;
use crate::control::Control;
use crate::store::SetSink;

/// The argument (`--handover=VALUE`, last) that tells the successor it is taking over: its
/// value is `LOCK_FD:PLAN_FD` (`-` for a descriptor not passed). Taken out before the
/// arguments are parsed. An argument, not an environment variable: the environment goes on to
/// every hook the daemon runs, and the daemon never changes its own (other threads read it).
pub const HANDOVER_ARG: &str = "--handover";

/// How long the new binary's `check` may take before the restart is abandoned: it reads the
/// config and its secrets, offline, which takes milliseconds; a binary that hangs is as good
/// as one that fails.
const PREFLIGHT_LIMIT: Duration = Duration::from_secs(30);

/// The most of the new binary's `check` output quoted in the log: its last line says why.
const PREFLIGHT_QUOTE: usize = 2048;

/// A plan larger than this is not believed: about 100 bytes a token, so 64 MiB is room for
/// 600,000 tokens, far past the sets any config holds.
const PLAN_LIMIT: u64 = 64 << 20;

/// The name the plan's memory file carries, checked by the successor before it reads a
/// descriptor it was told about.
const PLAN_NAME: &str = "tokenkeeper-handover";

/// Each token handed over, by fingerprint, with when it is due: its replacement (current) or
/// its revocation (superseded). Wall-clock times, like the journal's: the monotonic clock
/// survives an exec, but not its meaning in tokio's paused tests.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub current: Vec<(String, SystemTime)>,
    pub superseded: Vec<(String, SystemTime)>,
}

/// What a handed-over token is to its set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Role {
    Current,
    Superseded,
}

/// A plan looked up by fingerprint, with its due times on the daemon's clock.
pub(super) type Inherited = HashMap<String, (Role, Instant)>;

impl Plan {
    /// The plan on the daemon's clock, its wall-clock times read as they stand at `now`: a
    /// time already past is due at once.
    pub(super) fn into_inherited(self, now: SystemTime) -> Inherited {
        let at = |t: SystemTime| Instant::now() + t.duration_since(now).unwrap_or_default();
        let current = self
            .current
            .into_iter()
            .map(|(f, t)| (f, (Role::Current, at(t))));
        let superseded = (self.superseded.into_iter()).map(|(f, t)| (f, (Role::Superseded, at(t))));
        current.chain(superseded).collect()
    }
}

/// The binary that runs and the config it runs with, to tell at SIGHUP whether a new binary
/// has been put in its place, and to exec it.
#[derive(Debug, Clone)]
pub struct Restart {
    /// Where the running binary was started from.
    exe: PathBuf,
    /// The device and inode of the running binary: a package manager renames the new one
    /// over the path, so the path then names another inode.
    running: (u64, u64),
    config: PathBuf,
    /// The state directory lock's descriptor, kept open across the exec.
    lock_fd: Option<RawFd>,
}

fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| (m.dev(), m.ino()))
}

impl Restart {
    /// The running binary, from `/proc/self/exe`; `config` is the path `run` was given.
    pub fn current(config: &Path, lock_fd: Option<RawFd>) -> std::io::Result<Restart> {
        let link = std::fs::read_link("/proc/self/exe")?;
        // Already replaced before we looked: the path is the binary to run next.
        let exe = match link.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
            Some(p) => PathBuf::from(std::ffi::OsStr::from_bytes(p)),
            None => link,
        };
        Ok(Restart {
            exe,
            running: identity(Path::new("/proc/self/exe"))?,
            config: config.to_path_buf(),
            lock_fd,
        })
    }

    /// Whether the binary at the path this one was started from is another file now.
    pub fn replaced(&self) -> bool {
        identity(&self.exe).is_ok_and(|id| id != self.running)
    }

    /// Run `NEW check --offline -c CONFIG`: the new binary must run here and load the config
    /// before it is trusted with the tokens. `Err` says why not.
    pub async fn preflight(&self) -> Result<(), String> {
        let child = tokio::process::Command::new(&self.exe)
            .args(["check", "--offline", "-c"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.exe.display()))?;
        let out = tokio::time::timeout(PREFLIGHT_LIMIT, child.wait_with_output())
            .await
            .map_err(|_| format!("{} check did not finish in time", self.exe.display()))?
            .map_err(|e| format!("{} check: {e}", self.exe.display()))?;
        if out.status.success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&out.stderr);
        let text = text.trim();
        let from = text.len().saturating_sub(PREFLIGHT_QUOTE);
        let tail = text.get(from..).unwrap_or_default();
        Err(format!(
            "{} check -c {} failed ({}): {}",
            self.exe.display(),
            self.config.display(),
            out.status,
            crate::shown(tail)
        ))
    }

    /// Replace this process with the new binary, handing it the lock and `plan`. Returns only
    /// if the exec failed, with why; the signals are then taken as before.
    pub fn exec(&self, plan: &Plan) -> std::io::Error {
        match self.try_exec(plan) {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    fn try_exec(&self, plan: &Plan) -> std::io::Result<std::convert::Infallible> {
        let plan_file = plan_file(plan)?;
        let lock = self.lock_fd.filter(|fd| lock_still_ours(*fd));
        let fd_text = |fd: Option<RawFd>| fd.map_or_else(|| "-".to_string(), |f| f.to_string());
        let marker = format!("{}:{}", fd_text(lock), plan_file.as_raw_fd());
        let argv = handover_argv(std::env::args_os().collect(), &marker);
        let c = |b: &[u8]| CString::new(b).map_err(std::io::Error::other);
        let exe = c(self.exe.as_os_str().as_bytes())?;
        let argv: Vec<CString> = argv
            .iter()
            .map(|a| c(a.as_bytes()))
            .collect::<Result<_, _>>()?;
        let envp: Vec<CString> = std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                c(&kv)
            })
            .collect::<Result<_, _>>()?;
        let ptrs = |v: &[CString]| {
            let mut p: Vec<*const libc::c_char> = v.iter().map(|s| s.as_ptr()).collect();
            p.push(std::ptr::null());
            p
        };
        let (argv_p, envp_p) = (ptrs(&argv), ptrs(&envp));
        let passed: Vec<RawFd> = lock.into_iter().chain([plan_file.as_raw_fd()]).collect();
        let held = crate::signals::hold_for_exec()?;
        for fd in &passed {
            set_cloexec(*fd, false);
        }
        // SAFETY: every pointer is to a NUL-terminated string alive until the call returns,
        // and both arrays end with a null pointer.
        unsafe { libc::execve(exe.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
        let e = std::io::Error::last_os_error();
        for fd in &passed {
            set_cloexec(*fd, true);
        }
        crate::signals::release_after_exec(held);
        Err(e)
    }
}

/// `argv` with any earlier handover marker taken out and `marker` added at the end (the
/// `run` subcommand's arguments come last), joined to its name so that a value starting
/// with `-` is not taken for an option.
fn handover_argv(argv: Vec<OsString>, marker: &str) -> Vec<OsString> {
    let prefix = format!("{HANDOVER_ARG}=");
    let mut out: Vec<OsString> = argv
        .into_iter()
        .filter(|a| !a.as_bytes().starts_with(prefix.as_bytes()))
        .collect();
    out.push(format!("{prefix}{marker}").into());
    out
}

fn set_cloexec(fd: RawFd, on: bool) {
    // SAFETY: F_SETFD on a descriptor this process holds changes only its close-on-exec flag.
    unsafe { libc::fcntl(fd, libc::F_SETFD, if on { libc::FD_CLOEXEC } else { 0 }) };
}

/// Whether `fd` is still open on the state directory's lock file: the journal writer takes
/// the lock again (another descriptor) if the directory was removed under it.
fn lock_still_ours(fd: RawFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .is_ok_and(|p| p.file_name() == Some(std::ffi::OsStr::new(crate::journal::LOCK_FILE)))
}

/// The plan in a memory file, for the successor to read by its descriptor: nothing on disk
/// that a crash could leave behind for a later start to misread.
fn plan_file(plan: &Plan) -> std::io::Result<std::fs::File> {
    let name = c_name();
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new descriptor
    // this process owns, or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    serde_json::to_writer(&mut file, plan).map_err(std::io::Error::other)?;
    file.flush()?;
    file.rewind()?;
    Ok(file)
}

fn c_name() -> CString {
    CString::new(PLAN_NAME).unwrap_or_default()
}

/// What a successor was handed: the lock's descriptor and the plan, from the value of
/// [`HANDOVER_ARG`]. A plan that cannot be read is logged and left out: the tokens are all in
/// the journal, and a start without a plan checks each with the provider instead.
pub fn inherited(marker: &str) -> (Option<RawFd>, Option<Plan>) {
    let mut parts = marker.splitn(2, ':');
    let fd = |s: Option<&str>| s.and_then(|s| s.parse::<RawFd>().ok()).filter(|fd| *fd > 2);
    let (lock, plan_fd) = (fd(parts.next()), fd(parts.next()));
    let plan = plan_fd.and_then(|fd| match read_plan(fd) {
        Ok(p) => Some(p),
        Err(e) => {
            warn!(error = %e, "cannot read the handover plan; checking each journaled token with its provider instead");
            None
        }
    });
    (lock, plan)
}

fn read_plan(fd: RawFd) -> std::io::Result<Plan> {
    // Only a descriptor that is the memory file the predecessor made is taken (and closed).
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))?;
    if !link
        .as_os_str()
        .as_bytes()
        .starts_with(format!("/memfd:{PLAN_NAME}").as_bytes())
    {
        return Err(std::io::Error::other(format!(
            "descriptor {fd} is not the handover plan"
        )));
    }
    // SAFETY: the descriptor is the predecessor's plan, passed to this process alone.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut text = Vec::new();
    file.take(PLAN_LIMIT).read_to_end(&mut text)?;
    serde_json::from_slice(&text).map_err(std::io::Error::other)
}

/// How the new binary's check ended, or the stop that came first.
pub(super) enum Preflight {
    Passed,
    Failed,
    Stopped(Control),
}

/// Check the new binary while still taking control messages: a stop is never held up by it.
pub(super) async fn preflight_or_stop(
    restart: &Restart,
    control: &mut mpsc::Receiver<Control>,
    rotate: &broadcast::Sender<()>,
) -> Preflight {
    info!(binary = %restart.exe.display(), "the binary has been replaced: checking the new one before handing the tokens to it");
    match super::reload::unless_stopped(restart.preflight(), control, rotate).await {
        Ok(Ok(())) => Preflight::Passed,
        Ok(Err(why)) => {
            warn!(error = %why, "the new binary cannot take over; this one keeps serving");
            Preflight::Failed
        }
        Err(c) => Preflight::Stopped(c),
    }
}

/// Take every set's tokens back for the successor, once each has settled what it was doing
/// (a token request under way, revocations under way). A set that does not answer in time
/// keeps its tokens in the journal, where the successor finds them and checks each with the
/// provider.
pub(super) async fn take_back(live: &mut [Live]) -> Plan {
    let mut replies = Vec::with_capacity(live.len());
    for l in live.iter_mut() {
        let (tx, rx) = oneshot::channel::<Handover<SetSink>>();
        l.order(Order::Handover(tx));
        replies.push(rx);
    }
    // A little past the sets' own wait, so a set that settles at its limit is still heard.
    let until = Instant::now() + HANDOVER_WAIT + Duration::from_secs(1);
    let handed = join_all(
        replies
            .into_iter()
            .map(|rx| tokio::time::timeout_at(until, rx)),
    )
    .await;
    let mut plan = Plan::default();
    for h in handed.into_iter().flatten().flatten() {
        let start = h.start;
        if let Some((held, _, refresh)) = &start.current {
            plan.current
                .push((held.fingerprint().to_string(), wall(*refresh)));
        }
        for (held, at) in &start.superseded {
            plan.superseded
                .push((held.fingerprint().to_string(), wall(*at)));
        }
        // Dropping the start drops the sink as it is: the file stays for the successor.
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_replaces_an_earlier_one_and_goes_last() {
        let argv = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let got = handover_argv(
            argv(&["tk", "run", "-c", "x.yaml", "--handover=5:6"]),
            "7:8",
        );
        assert_eq!(got, argv(&["tk", "run", "-c", "x.yaml", "--handover=7:8"]));
        let got = handover_argv(argv(&["tk", "run", "--handover=1:2", "-c", "y"]), "-:3");
        assert_eq!(got, argv(&["tk", "run", "-c", "y", "--handover=-:3"]));
    }

    #[test]
    fn a_plan_survives_its_memory_file() {
        let plan = Plan {
            current: vec![("aa".into(), SystemTime::UNIX_EPOCH + Duration::from_secs(5))],
            superseded: vec![("bb".into(), SystemTime::UNIX_EPOCH)],
        };
        let file = plan_file(&plan).unwrap();
        let fd = file.as_raw_fd();
        std::mem::forget(file);
        assert_eq!(read_plan(fd).unwrap(), plan);
    }

    #[tokio::test(start_paused = true)]
    async fn a_plans_times_are_due_after_the_time_given() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let plan = Plan {
            current: vec![("aa".into(), now + Duration::from_secs(300))],
            superseded: vec![("bb".into(), now - Duration::from_secs(5))],
        };
        let t0 = Instant::now();
        let got = plan.into_inherited(now);
        assert_eq!(got["aa"], (Role::Current, t0 + Duration::from_secs(300)));
        // Already past at `now`: due at once.
        assert_eq!(got["bb"], (Role::Superseded, t0));
    }

    #[test]
    fn a_descriptor_that_is_not_the_plan_is_left_alone() {
        let f = tempfile::tempfile().unwrap();
        assert!(read_plan(f.as_raw_fd()).is_err());
        // Still open: read_plan did not take it.
        assert!(f.metadata().is_ok());
        let (lock, plan) = inherited("x:y");
        assert_eq!((lock, plan), (None, None));
    }
}
