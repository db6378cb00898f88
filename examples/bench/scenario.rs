//! The driver: where files go, the fake's ceiling, the idle scenario, the scaling scenarios.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use tokenkeeper::devprovider::{DEV_APP_ID, DEV_APP_TOKEN};

use crate::procfs::{self, Ended};
use crate::report::{self, Ceiling, Idle, Scaled};

/// Sets in the small, idle scenario (the target's "10 sets").
pub const IDLE_SETS: usize = 10;
/// The scaling table's sizes: the targets speak of 10,000 sets, and of 100,000 costing at most
/// ten times as much; 1,000 shows where the curve starts.
const SCALES: &[usize] = &[1_000, 10_000, 100_000];
/// Requests per provider in flight at once, for the daemon (`max_concurrent_requests`) and
/// for the bare client alike, so the two are compared at the same concurrency.
pub const CONCURRENCY: usize = 16;
/// Tokens the curl+jq+mv loop issues: enough for a stable per-token figure, few enough that
/// the loop (a few ms of fork/exec per token) takes seconds, not minutes.
const CURL_TOKENS: usize = 300;
/// How long a scaling scenario's daemon idles between its last file and SIGTERM, so the CPU per
/// token covers a whole life (start, issue, idle, revoke) as the target asks, without the idle
/// share (a few wake-ups a second) swamping the rest.
pub const SCALE_IDLE: Duration = Duration::from_secs(5);
/// How long to wait for any step per 10,000 sets before declaring the scenario failed: far
/// above any figure measured, so a slow build shows as slow, not as a failure.
const PATIENCE_PER_10K: Duration = Duration::from_secs(120);

/// A child process that is killed (by its own PID) if the harness panics, so a failed run
/// leaves no fake provider or daemon behind.
pub struct Guard(pub Option<Child>);

impl Guard {
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }
    pub fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }
    /// Reap it, with its lifetime's resource use; the guard then has nothing left to kill.
    pub fn wait_with_usage(mut self) -> Ended {
        procfs::wait_with_usage(self.0.take().unwrap())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut()
            && c.try_wait().ok().flatten().is_none()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The production layout: token files on a tmpfs (the shipped unit writes them to
/// /run/tokenkeeper), the state directory (journal, status file) on a real disk (the unit's
/// /var/lib/tokenkeeper).
pub struct Layout {
    pub tokens: PathBuf,
    pub state: PathBuf,
    pub tokens_fs: String,
    pub state_fs: String,
    /// A tmpfs this harness mounted for the token files, unmounted when done.
    mounted: Option<PathBuf>,
}

/// Room for the token files of the largest scale many times over (each is under 100 bytes,
/// in a 4 KiB page).
const TOKENS_TMPFS_SIZE: &str = "2g";

impl Layout {
    /// Token files go to `BENCH_TOKENS_DIR`; else, as root, to a tmpfs mounted for the run at
    /// `/run/tkbench-PID`, a path as short as the unit's `/run/tokenkeeper` (100,000 sets
    /// with long paths make a config past the 16 MiB cap; tokenkeeper refuses token paths
    /// under /dev, so /dev/shm will not do); else to `XDG_RUNTIME_DIR`, a tmpfs on systemd
    /// machines.
    pub fn new(state_root: &Path) -> Layout {
        let mut mounted = None;
        let tokens_root = match std::env::var_os("BENCH_TOKENS_DIR") {
            Some(d) => PathBuf::from(d),
            None if nix::unistd::geteuid().is_root() => {
                let dir = PathBuf::from(format!("/run/tkbench-{}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                let ok = Command::new("mount")
                    .args(["-t", "tmpfs", "-o"])
                    .arg(format!("size={TOKENS_TMPFS_SIZE},mode=0755"))
                    .arg("tmpfs")
                    .arg(&dir)
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    mounted = Some(dir.clone());
                }
                dir
            }
            None => {
                std::env::var_os("XDG_RUNTIME_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
            }
        };
        let tokens = if mounted.is_some() {
            tokens_root
        } else {
            tokens_root.join(format!("tokenkeeper-bench-{}", std::process::id()))
        };
        std::fs::create_dir_all(&tokens).unwrap();
        Layout {
            tokens_fs: procfs::fs_type(&tokens),
            state_fs: procfs::fs_type(state_root),
            tokens,
            state: state_root.to_path_buf(),
            mounted,
        }
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tokens);
        if let Some(m) = &self.mounted {
            let _ = Command::new("umount").arg(m).status();
            let _ = std::fs::remove_dir(m);
        }
    }
}

/// One daemon binary under test, with the label its figures are printed under.
pub struct Build {
    pub label: String,
    pub bin: PathBuf,
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn driver() {
    let runs: usize = env_or("BENCH_RUNS", 3);
    // 100,000 sets take a minute or more a run; once is enough to see whether cost is linear.
    let large_runs: usize = env_or("BENCH_LARGE_RUNS", 1);
    let idle_secs: u64 = env_or("BENCH_IDLE_SECS", 60);
    let scales: Vec<usize> = std::env::var("BENCH_SCALES").map_or_else(
        |_| SCALES.to_vec(),
        |v| v.split(',').map(|n| n.trim().parse().unwrap()).collect(),
    );
    let me = std::env::current_exe().unwrap();
    let mut builds = vec![Build {
        label: "this build".into(),
        bin: std::env::var_os("TOKENKEEPER_BIN").map_or_else(
            || me.parent().unwrap().parent().unwrap().join("tokenkeeper"),
            PathBuf::from,
        ),
    }];
    // A second build (say, the previous release) measured in the same run, on the same fake,
    // so the two tables differ only by the code. Its sizes may be fewer: a build whose cost
    // grows with the square of the sets may not finish the largest in any useful time.
    if let Some(bin) = std::env::var_os("BENCH_BASELINE_BIN") {
        builds.push(Build {
            label: format!("baseline {}", Path::new(&bin).display()),
            bin: PathBuf::from(bin),
        });
    }
    let baseline_scales: Vec<usize> = std::env::var("BENCH_BASELINE_SCALES").map_or_else(
        |_| scales.clone(),
        |v| v.split(',').map(|n| n.trim().parse().unwrap()).collect(),
    );
    // The state directory must be on a disk: the repository's target folder is, on every
    // machine this is run on, unless BENCH_STATE_DIR says otherwise.
    let state_root = std::env::var_os("BENCH_STATE_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-state"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&state_root).unwrap();
    let work = tempfile::Builder::new()
        .prefix("run.")
        .tempdir_in(&state_root)
        .unwrap();
    let layout = Layout::new(work.path());
    report::layout(&layout);

    let mut fake = Guard(Some(
        Command::new(&me)
            .arg("fake")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let mut url = String::new();
    BufReader::new(fake.child().stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    let url = url.trim().to_string();
    eprintln!(
        "fake provider at {url}; {runs} run(s) ({large_runs} at 100,000 sets and more), idle window {idle_secs} s"
    );

    let ceilings: Vec<Ceiling> = scales
        .iter()
        .map(|&n| ceiling(&me, &url, n, fake.pid()))
        .collect();
    report::ceilings(&ceilings);

    let mut idles = Vec::new();
    let mut tables = Vec::new();
    for (i, b) in builds.iter().enumerate() {
        idles.push(idle(b, &layout, &url, runs, idle_secs));
        let mut rows = Vec::new();
        for &n in if i == 0 { &scales } else { &baseline_scales } {
            let r = if n >= 100_000 { large_runs } else { runs };
            let all: Vec<Scaled> = (0..r).map(|i| scaled(b, &layout, &url, n, i)).collect();
            rows.push(report::median_of(n, &all));
        }
        tables.push(rows);
    }
    let curl: Vec<f64> = (0..runs)
        .filter_map(|r| curl_loop(&url, &layout.state.join(format!("curl{r}"))))
        .collect();
    drop(fake);
    report::all(&builds, &idles, &tables, &ceilings, &curl, runs, idle_secs);
}

/// The fake's own ceiling: the bare client's requests for `n` tokens, with the client's and
/// the fake's CPU per token.
fn ceiling(me: &Path, url: &str, n: usize, fake_pid: u32) -> Ceiling {
    let fake_before = procfs::cpu_secs(fake_pid);
    let client = Guard(Some(
        Command::new(me)
            .args(["client", url, &n.to_string(), &CONCURRENCY.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let mut out = String::new();
    let mut client = client;
    BufReader::new(client.child().stdout.take().unwrap())
        .read_line(&mut out)
        .unwrap();
    let ended = client.wait_with_usage();
    assert!(ended.success, "bare client failed");
    let secs: f64 = out.trim().parse().unwrap();
    let fake_cpu = procfs::cpu_secs(fake_pid) - fake_before;
    eprintln!("bare client: {n} requests in {secs:.2} s");
    Ceiling {
        sets: n,
        secs,
        client_cpu_us: ended.cpu_secs / n as f64 * 1e6,
        fake_cpu_us: fake_cpu / n as f64 * 1e6,
    }
}

fn config(layout: &Layout, name: &str, url: &str, sets: usize) -> PathBuf {
    config_with(layout, name, url, sets, "", &|_| String::new())
}

/// The scaling scenarios' config, with `top` (top-level keys) added and `per_set(i)` added to
/// set `i`'s flow mapping (`, key: value`).
pub fn config_with(
    layout: &Layout,
    name: &str,
    url: &str,
    sets: usize,
    top: &str,
    per_set: &dyn Fn(usize) -> String,
) -> PathBuf {
    let dir = layout.state.join(name);
    let tokens = layout.tokens.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&tokens).unwrap();
    let mut y = format!(
        "state_dir: {d}/state\nshutdown_timeout: 60s\nlog_level: warn\n{top}\
         providers:\n  dev:\n    kind: voucherify\n    base_url: {url}\n    \
         app_id: {DEV_APP_ID}\n    app_token: {DEV_APP_TOKEN}\n    \
         max_live_tokens: 10000000\n    issue_rate: 10000000/s\n    issue_burst: 10000000\n    \
         max_concurrent_requests: {CONCURRENCY}\nscope_sets:\n",
        d = dir.display()
    );
    for i in 0..sets {
        y.push_str(&format!(
            "  - {{ name: s{i}, provider: dev, scopes: [api], file: {{ path: {d}/s{i}.token }}{extra} }}\n",
            d = tokens.display(),
            extra = per_set(i)
        ));
    }
    let path = dir.join("config.yaml");
    std::fs::write(&path, y).unwrap();
    path
}

pub fn tokens_in(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".token"))
                .count()
        })
        .unwrap_or(0)
}

pub fn start_daemon(b: &Build, config: &Path) -> Guard {
    let log = std::fs::File::create(config.with_file_name("daemon.log")).unwrap();
    Guard(Some(
        Command::new(&b.bin)
            .args(["run", "-c"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    ))
}

fn patience(sets: usize) -> Duration {
    PATIENCE_PER_10K * (sets.div_ceil(10_000).max(1) as u32)
}

/// Between two listings of the token directory, the harness waits at least this many times as
/// long as the last listing took. Listing 100,000 files takes tens of milliseconds of CPU on
/// the cores the daemon runs on: listed every 5 ms, the harness took a core from the daemon at
/// 100,000 sets (its cost growing with the square of the sets) and not at 10,000.
const LISTING_DUTY: u32 = 20;

/// The shortest wait between two listings: the first file of 1,000 sets comes within tens of
/// milliseconds.
const MIN_LISTING_GAP: Duration = Duration::from_millis(5);

/// When the first and the last `.token` file in `dir` were written (their modification
/// times), from `since`.
fn written_span(dir: &Path, since: SystemTime) -> Option<(Duration, Duration)> {
    let times: Vec<SystemTime> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".token"))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .collect();
    let from = |t: &SystemTime| t.duration_since(since).unwrap_or(Duration::ZERO);
    Some((from(times.iter().min()?), from(times.iter().max()?)))
}

/// Wait until `n` token files exist in `dir`; returns when the first was written and when the
/// last was, both from now, by the files' modification times: a listing shows them late by up
/// to its gap (see [`LISTING_DUTY`]).
pub fn wait_for_tokens(dir: &Path, n: usize, d: &mut Guard) -> (Duration, Duration) {
    let start = Instant::now();
    let since = tokenkeeper::clock::now_wall();
    loop {
        let listed = Instant::now();
        let have = tokens_in(dir);
        if have >= n {
            let all = start.elapsed();
            return written_span(dir, since).unwrap_or((all, all));
        }
        if let Some(st) = d.child().try_wait().unwrap() {
            panic!("daemon exited early ({st}); see its daemon.log beside the config");
        }
        assert!(
            start.elapsed() < patience(n),
            "tokens never all appeared in {}",
            dir.display()
        );
        std::thread::sleep(MIN_LISTING_GAP.max(listed.elapsed() * LISTING_DUTY));
    }
}

pub fn sigterm(d: &Guard) {
    let pid = nix::unistd::Pid::from_raw(d.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
}

/// 10 sets, idle: resident memory and wake-ups over the idle window. Every run's daemon at
/// once, since idle daemons do not disturb one another.
fn idle(b: &Build, layout: &Layout, url: &str, runs: usize, idle_secs: u64) -> Idle {
    let mut daemons = Vec::new();
    for r in 0..runs {
        let name = format!("idle-{}-{r}", fastrand::u32(..));
        let cfg = config(layout, &name, url, IDLE_SETS);
        let mut d = start_daemon(b, &cfg);
        wait_for_tokens(&layout.tokens.join(&name), IDLE_SETS, &mut d);
        daemons.push(d);
    }
    // Start-up work (blocking-pool threads finishing, the first status writes) settles first.
    std::thread::sleep(Duration::from_secs(2));
    let before: Vec<u64> = daemons
        .iter()
        .map(|d| procfs::voluntary_switches(d.pid()))
        .collect();
    eprintln!(
        "{}: idle, {runs} daemon(s) with {IDLE_SETS} sets, watching for {idle_secs} s",
        b.label
    );
    std::thread::sleep(Duration::from_secs(idle_secs));
    let mut f = Idle::default();
    for (d, before) in daemons.into_iter().zip(before) {
        let pid = d.pid();
        let woke = procfs::voluntary_switches(pid).saturating_sub(before);
        f.wakeups.push(woke as f64 / idle_secs as f64);
        f.rss_mib
            .push(procfs::status_field(pid, "VmHWM") as f64 / 1024.0);
        f.anon_mib
            .push(procfs::status_field(pid, "RssAnon") as f64 / 1024.0);
        sigterm(&d);
        d.wait_with_usage();
    }
    f
}

/// `n` sets, one run: start to every file written, memory, a short idle, SIGTERM to exit, and
/// the daemon's CPU over that whole life.
fn scaled(b: &Build, layout: &Layout, url: &str, n: usize, run: usize) -> Scaled {
    // Short: it is in every token path of the config, 100,000 times.
    let name = format!("{n}-{run}-{:x}", fastrand::u16(..));
    let cfg = config(layout, &name, url, n);
    let tokens = layout.tokens.join(&name);
    let mut d = start_daemon(b, &cfg);
    let (first, all) = wait_for_tokens(&tokens, n, &mut d);
    // Let the last journal and status writes land before reading the resident memory.
    std::thread::sleep(Duration::from_millis(500));
    let settled = procfs::status_field(d.pid(), "VmRSS") as f64 / 1024.0;
    std::thread::sleep(SCALE_IDLE.saturating_sub(Duration::from_millis(500)));
    let stop_at = Instant::now();
    sigterm(&d);
    let ended = d.wait_with_usage();
    let stop = stop_at.elapsed();
    let ok = ended.success && tokens_in(&tokens) == 0;
    let s = Scaled {
        sets: n,
        written: all.as_secs_f64(),
        issuing: (all - first).as_secs_f64(),
        peak_rss_mib: ended.peak_rss_mib,
        settled_rss_mib: settled,
        cpu_per_token_us: ended.cpu_secs / n as f64 * 1e6,
        stop: stop.as_secs_f64(),
        all_revoked: ok,
    };
    eprintln!(
        "{} {n} sets run {run}: all written {:.2} s, peak {:.1} MiB, cpu {:.0} µs/token, stop {:.2} s ({})",
        b.label,
        s.written,
        s.peak_rss_mib,
        s.cpu_per_token_us,
        s.stop,
        if ok { "all revoked" } else { "NOT all revoked" }
    );
    let _ = std::fs::remove_dir_all(&tokens);
    let _ = std::fs::remove_dir_all(layout.state.join(&name));
    s
}

/// The cron-style loop, CPU per token including every child (curl, jq, mv), from bash's
/// `times` (children's user and system time). None when curl or jq is missing.
fn curl_loop(url: &str, dir: &Path) -> Option<f64> {
    for tool in ["curl", "jq"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            eprintln!(
                "!!! SKIPPING the curl+jq+mv baseline: {tool} is not installed (apt-get install curl jq)"
            );
            return None;
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    let script = format!(
        r#"set -e
cd {d}
for i in $(seq 1 {CURL_TOKENS}); do
  curl -sf -X POST -H 'X-App-Id: {DEV_APP_ID}' -H 'X-App-Token: {DEV_APP_TOKEN}' \
    -H 'Accept: application/json' -d grant_type=client_credentials -d scope=api \
    {url}/v1/oauth/token | jq -r .access_token > "t$i.tmp"
  mv "t$i.tmp" "t$i.token"
done
times
"#,
        d = dir.display()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "curl loop failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `times` prints the shell's own user/sys, then its children's: count both.
    let text = String::from_utf8_lossy(&out.stdout);
    let total: f64 = text.split_whitespace().filter_map(parse_times).sum();
    let _ = std::fs::remove_dir_all(dir);
    Some(total / CURL_TOKENS as f64 * 1e6)
}

/// `1m2.345s` → 62.345.
fn parse_times(s: &str) -> Option<f64> {
    let (m, rest) = s.split_once('m')?;
    let secs = rest.strip_suffix('s')?;
    Some(m.parse::<f64>().ok()? * 60.0 + secs.parse::<f64>().ok()?)
}
