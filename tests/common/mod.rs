//! Shared pieces of the integration tests: the real binary, run against the strict
//! development provider on 127.0.0.1, with real signals.
#![allow(clippy::disallowed_methods)] // integration tests live in real time
#![allow(dead_code)] // each test file uses its own subset

pub mod bao;
pub mod django;
pub mod relay;
pub mod tools;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokenkeeper::devprovider::{DevProvider, DevProviderOptions};

pub const BIN: &str = env!("CARGO_BIN_EXE_tokenkeeper");

/// How long any single wait in these tests may take before it counts as a failure. Generous:
/// the tests wait for events, they never time them.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub async fn provider(lifetime: Duration) -> DevProvider {
    DevProvider::start(
        "127.0.0.1:0".parse().unwrap(),
        DevProviderOptions {
            lifetime,
            ..DevProviderOptions::default()
        },
    )
    .await
    .unwrap()
}

/// A config with its state in `dir`, one voucherify provider named `dev` pointing at `p`, and
/// the given sets (YAML list items, indented by two spaces) and extra top-level lines. The
/// issue rate is lifted far above the default so tests that rotate hundreds of times are not
/// paced by it; [`config_with`] sets provider keys of a test's own.
pub fn config(p: &DevProvider, dir: &Path, top: &str, sets: &str) -> String {
    config_with(
        p,
        dir,
        "issue_rate: 10000/s\n    issue_burst: 10000",
        top,
        sets,
    )
}

/// [`config`] with `provider_keys` (lines indented by four spaces after the first) added to the
/// provider.
pub fn config_with(
    p: &DevProvider,
    dir: &Path,
    provider_keys: &str,
    top: &str,
    sets: &str,
) -> String {
    format!(
        "state_dir: {}/state\n{top}\nproviders:\n  dev:\n    kind: voucherify\n    base_url: {}\n    app_id: {{ env: TK_TEST_APP_ID }}\n    app_token: {{ env: TK_TEST_APP_TOKEN }}\n    {provider_keys}\nscope_sets:\n{sets}",
        dir.display(),
        p.base_url()
    )
}

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Start `tokenkeeper ARGS` with its output going to a file, under `umask`.
    pub fn spawn(dir: &Path, args: &[&str], umask: u32, env: &[(&str, &str)]) -> Daemon {
        let log = dir.join(format!("daemon-{}.log", fastrand::u32(..)));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("TK_TEST_APP_ID", tokenkeeper::devprovider::DEV_APP_ID)
            .env("TK_TEST_APP_TOKEN", tokenkeeper::devprovider::DEV_APP_TOKEN)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("CREDENTIALS_DIRECTORY")
            // A test's CA is trusted where it says so, never through the environment.
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mask = nix::sys::stat::Mode::from_bits_truncate(umask);
        // SAFETY: umask(2) is async-signal-safe and touches nothing but the child's own state.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::stat::umask(mask);
                Ok(())
            });
        }
        Daemon {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    pub fn run(dir: &Path, config_yaml: &str, umask: u32) -> Daemon {
        let cfg = write_config(dir, config_yaml);
        Daemon::spawn(dir, &["run", "-c", cfg.to_str().unwrap()], umask, &[])
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// The names of the daemon's threads, as `/proc` shows them.
    pub fn threads(&self) -> Vec<String> {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(tasks)
            .map(|d| {
                d.flatten()
                    .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                    .map(|n| n.trim().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait for the process to exit; panics (after killing it) if it does not within `limit`.
    pub async fn wait(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "daemon did not exit within {limit:?}; output:\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_for_log(&self, needle: &str) {
        let out = wait_until(PATIENCE, || self.output().contains(needle)).await;
        assert!(
            out,
            "{needle:?} never appeared in the output:\n{}",
            self.output()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A test that failed half-way must not leave its daemon running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Poll `cond` every 10 ms until it holds or `limit` passes; returns whether it held.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

pub fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

/// Write a config into `dir` and return its path. Unless the config names its own
/// `state_dir`, the state (status file, journal) goes to `dir/state`: tests never touch the
/// host's /var/lib/tokenkeeper, nor share a state directory with each other.
pub fn write_config(dir: &Path, config_yaml: &str) -> PathBuf {
    let cfg = dir.join(format!("config-{}.yaml", fastrand::u32(..)));
    let text = if config_yaml.lines().any(|l| l.starts_with("state_dir:")) {
        config_yaml.to_string()
    } else {
        format!("state_dir: {}\n{config_yaml}", dir.join("state").display())
    };
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// What a short-lived command printed, and how it exited.
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run `tokenkeeper ARGS` to completion (for `status`, `check`).
pub fn tokenkeeper(args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("TOKENKEEPER_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run `tokenkeeper ARGS` to completion with the test credentials, killing it (and failing)
/// if it takes longer than [`PATIENCE`]: a command blocked on a FIFO never returns by itself.
/// Its address space is capped at `memory` bytes, if given, so that a runaway read fails the
/// test instead of the machine; it runs in a process group of its own, so that a hung run is
/// killed with all it started.
pub fn run_bounded(args: &[&str], memory: Option<u64>) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("TK_TEST_APP_ID", tokenkeeper::devprovider::DEV_APP_ID)
        .env("TK_TEST_APP_TOKEN", tokenkeeper::devprovider::DEV_APP_TOKEN)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("TOKENKEEPER_CONFIG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .process_group(0);
    // SAFETY: setrlimit(2) is async-signal-safe and touches only the child.
    if let Some(memory) = memory {
        unsafe {
            cmd.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: memory,
                    rlim_max: memory,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tokenkeeper {args:?} did not finish within {PATIENCE:?}; stderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        code: status.code(),
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

/// A process's peak resident set so far (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A stand-in for systemd's notification socket: collects what the daemon sends.
pub struct NotifySocket {
    pub path: PathBuf,
    sock: std::os::unix::net::UnixDatagram,
    pub received: Vec<String>,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        NotifySocket {
            path,
            sock,
            received: Vec::new(),
        }
    }

    /// Read every datagram waiting; returns the new ones.
    pub fn drain(&mut self) -> Vec<String> {
        let mut new = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            new.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.received.extend(new.iter().cloned());
        new
    }
}

/// A scope set on the `dev` provider (YAML list item), its token file at `path`; `extra` goes
/// inside `file:` (such as `, format: json`).
pub fn set(name: &str, scopes: &str, path: &Path, extra: &str) -> String {
    format!(
        "  - name: {name}\n    provider: dev\n    scopes: [{scopes}]\n    file: {{ path: {}{extra} }}\n",
        path.display()
    )
}

/// SIGTERM, and the daemon exits 0: every token revoked.
pub async fn stop_clean(d: &mut Daemon) {
    d.signal(Signal::SIGTERM);
    let status = d.wait(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{}", d.output());
}

/// `tokenkeeper status --json`, or Null while the daemon has not written its first status.
pub fn status_json(cfg: &Path) -> serde_json::Value {
    serde_json::from_str(&tokenkeeper(&["status", "--json", "-c", cfg.to_str().unwrap()]).stdout)
        .unwrap_or_default()
}
