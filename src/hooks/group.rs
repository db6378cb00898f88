//! The process groups of hook commands, ended at stop. Each command runs as the leader of a
//! group of its own, and whatever it starts stays in that group unless it moves out on
//! purpose: a `sleep &` left behind, or still running at stop, would otherwise outlive the
//! daemon holding its stderr (a `| tee`, a supervisor's pipe, never reaching end of file).

use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::time::Instant;
use tracing::{info, warn};

/// After SIGKILL, how long the kernel gets to take the processes down (it needs no more than
/// a scheduler tick or two; a process stuck in the kernel cannot be waited for).
const KILL_WAIT: Duration = Duration::from_secs(1);

/// How often the groups are looked at while they end: fine enough not to delay the exit,
/// coarse enough that the scans of /proc cost nothing.
const POLL: Duration = Duration::from_millis(20);

/// Groups of hook commands that may still have members, and whether the stop has come (no
/// group starts after that).
struct Registry {
    groups: Vec<i32>,
    stopping: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    groups: Vec::new(),
    stopping: false,
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether the stop has come: a hook not started by now is not started at all.
pub(super) fn stopping() -> bool {
    registry().stopping
}

/// Remember the group `pgid` of a command just started, to end it at stop. When the stop
/// came in between, the group is killed at once and `false` returned.
pub(super) fn register(pgid: i32) -> bool {
    let mut r = registry();
    if r.stopping {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        return false;
    }
    r.groups.push(pgid);
    true
}

/// The leader of `pgid` has exited: forget the group if nothing of it lives on. One that
/// does (a command that left a child behind) is ended at stop.
pub(super) fn settle(pgid: i32) {
    if !alive(pgid) {
        registry().groups.retain(|g| *g != pgid);
    }
}

/// End every hook's process group still alive: SIGTERM, then SIGKILL after `grace`, and
/// return once none is left or [`KILL_WAIT`] has passed after the SIGKILL. From now on no
/// hook command starts.
pub async fn end_all(grace: Duration) {
    let groups = {
        let mut r = registry();
        r.stopping = true;
        std::mem::take(&mut r.groups)
    };
    let mut live: Vec<i32> = groups.into_iter().filter(|g| alive(*g)).collect();
    if live.is_empty() {
        return;
    }
    info!(
        groups = live.len(),
        "stopping: ending the hook commands still running"
    );
    for g in &live {
        let _ = killpg(Pid::from_raw(*g), Signal::SIGTERM);
    }
    live = wait_gone(live, Instant::now() + grace).await;
    if live.is_empty() {
        return;
    }
    for g in &live {
        warn!(
            pgid = g,
            "a hook's process group ignored SIGTERM; killing it"
        );
        let _ = killpg(Pid::from_raw(*g), Signal::SIGKILL);
    }
    let left = wait_gone(live, Instant::now() + KILL_WAIT).await;
    if !left.is_empty() {
        warn!(groups = ?left, "hook process groups still alive after SIGKILL");
    }
}

/// The groups of `groups` still alive at `deadline` (or sooner, once none is).
async fn wait_gone(mut groups: Vec<i32>, deadline: Instant) -> Vec<i32> {
    loop {
        groups.retain(|g| alive(*g));
        if groups.is_empty() || Instant::now() >= deadline {
            return groups;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether process group `pgid` has a member that has not yet died, in this daemon's session
/// (every hook's group is: a group of that number elsewhere is another's, the number reused).
fn alive(pgid: i32) -> bool {
    let Some(session) = stat_of("self").map(|s| s.session) else {
        // Without /proc: whether anything of the group, dead or alive, remains.
        return killpg(Pid::from_raw(pgid), None) != Err(Errno::ESRCH);
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return killpg(Pid::from_raw(pgid), None) != Err(Errno::ESRCH);
    };
    entries.flatten().any(|e| {
        e.file_name()
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(stat_of)
            .is_some_and(|s| s.pgrp == pgid && s.session == session && s.state != 'Z')
    })
}

/// What `/proc/PID/stat` says of a process's state, group and session.
struct Stat {
    state: char,
    pgrp: i32,
    session: i32,
}

fn stat_of(pid: &str) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp session ...`; comm may hold spaces and parentheses.
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    Some(Stat {
        state,
        pgrp,
        session,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_in_its_own_group_and_session() {
        let me = stat_of("self").unwrap();
        assert_ne!(me.state, 'Z');
        assert!(alive(me.pgrp));
        // A group nobody has: pids are below 2^22.
        assert!(!alive(1 << 23));
    }
}
