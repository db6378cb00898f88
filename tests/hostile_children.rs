//! The processes the daemon starts or signals, under hostile conditions: a pidfile another
//! user could write, one naming the daemon or another user's process, secrets in the
//! environment children would inherit, a hook still running at stop. The built binary against
//! the strict development provider on 127.0.0.1, with real signals. The tests run as root
//! (as the daemon may): "another user" is `nobody` (65534).
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// `nobody`: a user other than the daemon's, on every Linux.
const OTHER_USER: u32 = 65534;

/// A process that waits to be signalled (or killed when the test ends).
struct Victim(Child);

impl Victim {
    fn start(uid: Option<u32>) -> Victim {
        let mut cmd = Command::new("sleep");
        cmd.arg("300").stdin(Stdio::null());
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        Victim(cmd.spawn().unwrap())
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Write `pid` into `path` with `mode`.
fn pidfile(path: &Path, pid: u32, mode: u32) {
    std::fs::write(path, format!("{pid}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A set whose `on_rotate` sends `signal` to the pid in `pidfile`.
fn signal_set(name: &str, dir: &Path, pidfile: &Path, signal: &str) -> String {
    set(
        name,
        "api",
        &dir.join(format!("{name}.token")),
        &format!(
            " }}\n    on_rotate: {{ signal: {{ pidfile: {}, signal: {signal} }}",
            pidfile.display()
        ),
    )
}

/// The log lines that say a hook failed and name `pidfile`.
fn refusal<'a>(log: &'a str, pidfile: &Path) -> Option<&'a str> {
    let name = pidfile.display().to_string();
    log.lines()
        .find(|l| l.contains("on_rotate failed") && l.contains(&name))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pidfile_another_user_could_write_or_naming_the_daemon_is_refused() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // Root's processes, named by pidfiles root should never believe.
    let mut open_victim = Victim::start(None);
    let open = d.join("open.pid");
    pidfile(&open, open_victim.pid(), 0o666);
    let mut foreign_file_victim = Victim::start(None);
    let foreign_file = d.join("foreign-file.pid");
    pidfile(&foreign_file, foreign_file_victim.pid(), 0o644);
    std::os::unix::fs::chown(&foreign_file, Some(OTHER_USER), Some(OTHER_USER)).unwrap();
    let mut linked_victim = Victim::start(None);
    let linked_target = d.join("linked-target.pid");
    pidfile(&linked_target, linked_victim.pid(), 0o644);
    let linked = d.join("linked.pid");
    std::os::unix::fs::symlink(&linked_target, &linked).unwrap();
    // Another user's process, named by a pidfile root wrote.
    let mut foreign_victim = Victim::start(Some(OTHER_USER));
    let foreign = d.join("foreign.pid");
    pidfile(&foreign, foreign_victim.pid(), 0o644);
    // A FIFO: reading it would block the hook for ever.
    let fifo = d.join("fifo.pid");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // The daemon's own pid: SIGUSR1 would make it rotate every set, and so on for ever.
    let own = d.join("own.pid");
    // Root's own child, named by root's own 0644 pidfile: this one is signalled.
    let mut good_victim = Victim::start(None);
    let good = d.join("good.pid");
    pidfile(&good, good_victim.pid(), 0o644);

    let refused = [
        ("open", &open, "SIGTERM", "writable by group or others"),
        (
            "foreign-file",
            &foreign_file,
            "SIGTERM",
            "owned by uid 65534",
        ),
        ("linked", &linked, "SIGTERM", "symbolic link"),
        ("foreign", &foreign, "SIGTERM", "another user"),
        ("fifo", &fifo, "SIGTERM", "not a regular file"),
        ("own", &own, "SIGUSR1", "this daemon"),
    ];
    let mut sets: String = refused
        .iter()
        .map(|(name, path, sig, _)| signal_set(name, d, path, sig))
        .collect();
    sets += &signal_set("good", d, &good, "SIGTERM");
    let cfg = write_config(d, &config(&p, d, "", &sets));
    // The shell writes its pid, then becomes the daemon: the pidfile names the daemon from
    // before its first token.
    let log = d.join("daemon.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new("/bin/sh")
        .args(["-c", r#"echo $$ > "$1"; exec "$0" run -c "$2""#, BIN])
        .arg(&own)
        .arg(&cfg)
        .env("TK_TEST_APP_ID", tokenkeeper::devprovider::DEV_APP_ID)
        .env("TK_TEST_APP_TOKEN", tokenkeeper::devprovider::DEV_APP_TOKEN)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut daemon = Daemon { child, log };

    let status = good_victim.0.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(Signal::SIGTERM as i32),
        "the good pidfile's process was not signalled:\n{}",
        daemon.output()
    );
    for (name, path, _, why) in &refused {
        let seen = wait_until(PATIENCE, || refusal(&daemon.output(), path).is_some()).await;
        assert!(seen, "set {name}: no refusal logged:\n{}", daemon.output());
        let out = daemon.output();
        let line = refusal(&out, path).unwrap();
        assert!(
            line.contains(why),
            "set {name}: not refused for {why:?}: {line}"
        );
    }
    assert!(
        open_victim.alive(),
        "signalled through a world-writable pidfile"
    );
    assert!(
        foreign_file_victim.alive(),
        "signalled through another user's pidfile"
    );
    assert!(linked_victim.alive(), "signalled through a symbolic link");
    assert!(foreign_victim.alive(), "signalled another user's process");
    assert_eq!(
        daemon.child.try_wait().unwrap(),
        None,
        "{}",
        daemon.output()
    );
    stop_clean(&mut daemon).await;
    // One token per set: the daemon never made itself rotate.
    assert_eq!(
        p.issued_tokens().len(),
        refused.len() + 1,
        "{}",
        daemon.output()
    );

    // What `check` can see without running: a pidfile in the kernel's trees, or whose name
    // holds a control character.
    for bad in [
        "/proc/self/stat",
        "/sys/kernel/x.pid",
        "/dev/null",
        "/run/a\\nb.pid",
    ] {
        let sets = set(
            "s",
            "api",
            &d.join("s.token"),
            &format!(" }}\n    on_rotate: {{ signal: {{ pidfile: \"{bad}\" }}"),
        );
        let cfg = write_config(d, &config(&p, d, "", &sets));
        let out = Command::new(BIN)
            .args(["check", "--offline", "-c", cfg.to_str().unwrap()])
            .env("TK_TEST_APP_ID", "id")
            .env("TK_TEST_APP_TOKEN", "token")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(78),
            "pidfile {bad} passed check: {err}"
        );
        assert!(err.contains("pidfile"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn children_inherit_no_secret_from_the_environment() {
    // Keys that look real: a dev constant could hide a leak behind a common word.
    let app_id = format!("tkId{}", fastrand::u64(..));
    let app_token = format!("tkLive{}", fastrand::u64(..));
    let p = tokenkeeper::devprovider::DevProvider::start(
        "127.0.0.1:0".parse().unwrap(),
        tokenkeeper::devprovider::DevProviderOptions {
            app_id: app_id.clone(),
            app_token: app_token.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let creds = d.join("credentials");
    std::fs::create_dir(&creds).unwrap();
    let hook_env = d.join("hook.env");
    let exec_env = d.join("exec.env");
    let sets = set(
        "s",
        "api",
        &d.join("s.token"),
        &format!(
            " }}\n    on_rotate: {{ exec: [/bin/sh, -c, 'env > {}']",
            hook_env.display(),
        ),
    );
    let cfg = write_config(d, &config(&p, d, "", &sets));
    let script = format!("env > {}", exec_env.display());
    let env = [
        ("TK_TEST_APP_ID", app_id.as_str()),
        ("TK_TEST_APP_TOKEN", app_token.as_str()),
        ("CREDENTIALS_DIRECTORY", creds.to_str().unwrap()),
    ];
    let args = [
        "exec",
        "-c",
        cfg.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        &script,
    ];
    let mut daemon = Daemon::spawn(d, &args, 0o022, &env);
    let status = daemon.wait(PATIENCE * 2).await;
    assert_eq!(status.code(), Some(0), "{}", daemon.output());
    for (who, path) in [("the exec command", &exec_env), ("the hook", &hook_env)] {
        let env = read(path).unwrap_or_else(|| panic!("{who} left no environment dump"));
        assert!(env.contains("TOKENKEEPER_"), "{who}: {env}");
        for secret in [&app_id, &app_token] {
            assert!(!env.contains(secret.as_str()), "{who} got a key:\n{env}");
        }
        for name in [
            "TK_TEST_APP_ID",
            "TK_TEST_APP_TOKEN",
            "CREDENTIALS_DIRECTORY",
        ] {
            assert!(!env.contains(name), "{who} got {name}:\n{env}");
        }
    }
}

/// Live (not yet dead) processes in process group `pgid`.
fn live_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so count from its ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) && fields[0] != "Z" {
            out.push(pid);
        }
    }
    out
}

/// Kills, when the test ends, the hook processes it read from `files` (one pid per line).
struct Leftovers(Vec<PathBuf>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for f in &self.0 {
            for pid in read(f).unwrap_or_default().split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hook_running_at_stop_has_its_whole_process_group_ended() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Set `waits`: the hook waits for its background child. Set `left`: the hook exits and
    // leaves the child behind in its group. Both children hold the daemon's stderr.
    let pids = |name: &str| d.join(format!("{name}.pids"));
    let hook = |name: &str, tail: &str| {
        set(
            name,
            "api",
            &d.join(format!("{name}.token")),
            &format!(
                " }}\n    on_rotate: {{ timeout: 10m, exec: [/bin/sh, -c, 'sleep 300 & echo $$ $! > {}; {tail}']",
                pids(name).display(),
            ),
        )
    };
    let sets = hook("waits", "wait") + &hook("left", "exit 0");
    let cfg = write_config(d, &config(&p, d, "shutdown_timeout: 10s", &sets));
    let _leftovers = Leftovers(vec![pids("waits"), pids("left")]);

    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    let child = Command::new(BIN)
        .args(["run", "-c", cfg.to_str().unwrap()])
        .env("TK_TEST_APP_ID", tokenkeeper::devprovider::DEV_APP_ID)
        .env("TK_TEST_APP_TOKEN", tokenkeeper::devprovider::DEV_APP_TOKEN)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end.try_clone().unwrap()))
        .stderr(Stdio::from(write_end))
        .spawn()
        .unwrap();
    let mut daemon = Daemon {
        child,
        log: "/nonexistent/tokenkeeper-test.log".into(),
    };
    // The pipe's reader: what the daemon and its children wrote, once every writer is gone.
    let (eof_tx, eof_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::fs::File::from(read_end).read_to_string(&mut text);
        let _ = eof_tx.send(text);
    });

    let started = |name: &str| read(&pids(name)).is_some_and(|t| t.ends_with('\n'));
    let up = wait_until(PATIENCE, || started("waits") && started("left")).await;
    assert!(up, "the hooks never started");
    let groups: Vec<i32> = ["waits", "left"]
        .iter()
        .map(|n| {
            read(&pids(n))
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    for g in &groups {
        assert!(!live_members(*g).is_empty(), "group {g} is not running");
    }
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait(PATIENCE).await;
    let output = eof_rx.recv_timeout(PATIENCE);
    for g in &groups {
        let left = live_members(*g);
        assert!(left.is_empty(), "group {g} outlived the daemon: {left:?}");
    }
    let output = output.expect("the daemon's stderr is still held open after it exited");
    assert_eq!(status.code(), Some(0), "{output}");
}
