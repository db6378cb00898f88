//! The performance benchmark behind the README's "Performance" table (issue 7). Run it with
//! `bench/run.sh`, which builds everything in release mode first.
//!
//! One binary, three roles, so a fresh clone needs nothing but cargo:
//! - `bench fake`: the development Voucherify provider (the one `tokenkeeper dev-provider`
//!   serves), with room for any number of live tokens, in its own process so its CPU is never
//!   counted as the daemon's. Prints its base URL, serves until killed.
//! - `bench client URL N C`: the bare keep-alive HTTP client baseline: N token requests with C
//!   in flight, through one reqwest client built like the daemon's. Prints seconds taken.
//! - `bench [run]`: the driver. Starts the fake, runs every scenario `BENCH_RUNS` times and
//!   prints the median of each figure beside its target.
//!
//! This is a harness, not daemon code: it reads the monotonic clock directly and unwraps
//! set-up failures (a benchmark that cannot start has nothing to report).
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokenkeeper::devprovider::{DEV_APP_ID, DEV_APP_TOKEN, DevProvider, DevProviderOptions};

/// Sets in the small, idle scenario (the issue's "10 sets").
const IDLE_SETS: usize = 10;
/// Sets in the large scenario (the issue's "10,000 sets").
const MANY_SETS: usize = 10_000;
/// Requests per provider in flight at once, for the daemon (`max_concurrent_requests`) and
/// for the bare client alike, so the two are compared at the same concurrency.
const CONCURRENCY: usize = 16;
/// Tokens the curl+jq+mv loop issues: enough for a stable per-token figure, few enough that
/// the loop (a few ms of fork/exec per token) takes seconds, not minutes.
const CURL_TOKENS: usize = 300;
/// Token lifetime the fake grants: long, so nothing is refreshed during a scenario and the
/// idle scenario is truly idle between refreshes.
const LIFETIME: Duration = Duration::from_secs(900);
/// How long to wait for anything before declaring the scenario failed.
const PATIENCE: Duration = Duration::from_secs(120);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fake") => fake(),
        Some("client") => client(&args[1], args[2].parse().unwrap(), args[3].parse().unwrap()),
        None | Some("run") => driver(),
        Some(other) => {
            eprintln!("usage: bench [run | fake | client URL N CONCURRENCY] (got {other:?})");
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fake provider and the bare client.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn fake() {
    runtime().block_on(async {
        let opts = DevProviderOptions {
            lifetime: LIFETIME,
            // Every scenario's tokens at once, several runs over: the provider's own cap must
            // never be what a scenario measures.
            max_live_tokens: 10_000_000,
            ..DevProviderOptions::default()
        };
        let p = DevProvider::start(([127, 0, 0, 1], 0).into(), opts)
            .await
            .unwrap();
        println!("{}", p.base_url());
        std::io::stdout().flush().unwrap();
        std::future::pending::<()>().await;
    });
}

fn client(url: &str, n: usize, concurrency: usize) {
    let secs = runtime().block_on(async {
        tokenkeeper::init_tls();
        let http = tokenkeeper::provider::http_client().unwrap();
        let url = format!("{url}/v1/oauth/token");
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start = Instant::now();
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (http, url, next) = (http.clone(), url.clone(), next.clone());
                tokio::spawn(async move {
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                        let resp = http
                            .post(&url)
                            .header("x-app-id", DEV_APP_ID)
                            .header("x-app-token", DEV_APP_TOKEN)
                            .header("accept", "application/json")
                            .form(&[("grant_type", "client_credentials"), ("scope", "api")])
                            .send()
                            .await
                            .unwrap();
                        assert!(resp.status().is_success(), "{}", resp.status());
                        let body = resp.bytes().await.unwrap();
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        assert!(v["access_token"].is_string());
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        start.elapsed().as_secs_f64()
    });
    println!("{secs}");
}

// ---------------------------------------------------------------------------------------------
// /proc readings.

/// `Name:   value kB`-style field of /proc/PID/status, as a number.
fn status_field(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Voluntary context switches of every thread of the process: each is a wake-up of a thread
/// that had gone to sleep. (The process-level line counts the main thread only.)
fn voluntary_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// User plus system CPU seconds the process has used (all its threads).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name, which may itself hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux architecture this runs on; getconf confirms.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

// ---------------------------------------------------------------------------------------------
// The driver.

/// A child process that is killed (by its own PID) if the harness panics, so a failed run
/// leaves no fake provider or daemon behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

struct Paths {
    daemon: PathBuf,
    me: PathBuf,
    work: PathBuf,
}

fn config(dir: &Path, url: &str, sets: usize) -> PathBuf {
    let mut y = format!(
        "state_dir: {d}/state\nshutdown_timeout: 20s\nlog_level: warn\n\
         providers:\n  dev:\n    kind: voucherify\n    base_url: {url}\n    \
         app_id: {DEV_APP_ID}\n    app_token: {DEV_APP_TOKEN}\n    \
         max_live_tokens: 1000000\n    issue_rate: 1000000/s\n    issue_burst: 1000000\n    \
         max_concurrent_requests: {CONCURRENCY}\nscope_sets:\n",
        d = dir.display()
    );
    for i in 0..sets {
        y.push_str(&format!(
            "  - {{ name: s{i}, provider: dev, scopes: [api], file: {{ path: {d}/s{i}.token }} }}\n",
            d = tokens_dir(dir).display()
        ));
    }
    let path = dir.join("config.yaml");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&path, y).unwrap();
    path
}

/// Where a scenario's token files go: a tmpfs, as in production, where the shipped unit
/// writes them to /run/tokenkeeper (`RuntimeDirectory=`). The state directory (the journal)
/// stays on disk, under `dir`.
fn tokens_dir(dir: &Path) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() { shm } else { dir };
    base.join(format!(
        "tokenkeeper-bench-{}-{}",
        std::process::id(),
        dir.file_name().unwrap().to_string_lossy()
    ))
}

fn tokens_in(dir: &Path) -> usize {
    std::fs::read_dir(tokens_dir(dir))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".token"))
                .count()
        })
        .unwrap_or(0)
}

fn start_daemon(p: &Paths, dir: &Path) -> Guard {
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    Guard(
        Command::new(&p.daemon)
            .args(["run", "-c"])
            .arg(dir.join("config.yaml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Wait until `n` token files exist; returns when the first appeared and when the last did,
/// both from now.
fn wait_for_tokens(dir: &Path, n: usize, child: &mut Child) -> (Duration, Duration) {
    let start = Instant::now();
    let mut first = None;
    loop {
        let have = tokens_in(dir);
        if have > 0 && first.is_none() {
            first = Some(start.elapsed());
        }
        if have >= n {
            break;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "daemon exited early ({st}); see {}",
                dir.join("daemon.log").display()
            );
        }
        assert!(
            start.elapsed() < PATIENCE,
            "tokens never all appeared in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let all = start.elapsed();
    (first.unwrap_or(all), all)
}

/// SIGTERM, then the time until the process is gone, and whether it exited 0 (every token
/// revoked) with every token file removed.
fn stop(child: &mut Child, dir: &Path) -> (Duration, bool) {
    let start = Instant::now();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let took = start.elapsed();
    (took, status.success() && tokens_in(dir) == 0)
}

#[derive(Default)]
struct Figures {
    idle_rss_mib: Vec<f64>,
    /// The idle daemon's private (anonymous) resident memory; the rest of its RSS is the
    /// executable's and libc's code pages, shared with every other process running them.
    idle_anon_mib: Vec<f64>,
    idle_wakeups: Vec<f64>,
    many_all_written: Vec<f64>,
    /// From the first token file to the last: the issuing itself, without start-up (reading
    /// and checking the config, starting 10,000 tasks).
    many_issuing: Vec<f64>,
    many_rss_mib: Vec<f64>,
    /// Resident memory once started (VmRSS), beside the peak (VmHWM).
    many_rss_settled_mib: Vec<f64>,
    many_stop: Vec<f64>,
    many_stop_ok: Vec<bool>,
    daemon_cpu_per_token_us: Vec<f64>,
    curl_cpu_per_token_us: Vec<f64>,
    client_secs: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn driver() {
    let runs: usize = env_or("BENCH_RUNS", 3);
    let idle_secs: u64 = env_or("BENCH_IDLE_SECS", 60);
    let me = std::env::current_exe().unwrap();
    let daemon = std::env::var_os("TOKENKEEPER_BIN").map_or_else(
        || me.parent().unwrap().parent().unwrap().join("tokenkeeper"),
        PathBuf::from,
    );
    let work = tempfile::Builder::new()
        .prefix("tokenkeeper-bench.")
        .tempdir()
        .unwrap();
    let p = Paths {
        daemon,
        me: me.clone(),
        work: work.path().to_path_buf(),
    };

    let mut fake = Guard(
        Command::new(&p.me)
            .arg("fake")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut url = String::new();
    BufReader::new(fake.0.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    let url = url.trim().to_string();
    eprintln!("fake provider at {url}; {runs} run(s), idle window {idle_secs} s");

    let mut f = Figures::default();

    // Idle: every run's daemon at once, since idle daemons do not disturb one another.
    let mut idle = Vec::new();
    for r in 0..runs {
        let dir = p.work.join(format!("idle{r}"));
        config(&dir, &url, IDLE_SETS);
        let mut child = start_daemon(&p, &dir);
        wait_for_tokens(&dir, IDLE_SETS, &mut child.0);
        idle.push((child, dir));
    }
    // Start-up work (blocking-pool threads finishing, the first status writes) settles first.
    std::thread::sleep(Duration::from_secs(2));
    let before: Vec<u64> = idle
        .iter()
        .map(|(c, _)| voluntary_switches(c.0.id()))
        .collect();
    eprintln!("idle: {runs} daemon(s) with {IDLE_SETS} sets, watching for {idle_secs} s");
    std::thread::sleep(Duration::from_secs(idle_secs));
    for ((mut child, dir), b) in idle.into_iter().zip(before) {
        let pid = child.0.id();
        let woke = voluntary_switches(pid).saturating_sub(b);
        f.idle_wakeups.push(woke as f64 / idle_secs as f64);
        f.idle_rss_mib
            .push(status_field(pid, "VmHWM") as f64 / 1024.0);
        f.idle_anon_mib
            .push(status_field(pid, "RssAnon") as f64 / 1024.0);
        stop(&mut child.0, &dir);
        let _ = std::fs::remove_dir_all(tokens_dir(&dir));
    }

    for r in 0..runs {
        // 10,000 sets: start to every file written, peak memory, CPU per token, stop.
        let dir = p.work.join(format!("many{r}"));
        config(&dir, &url, MANY_SETS);
        let mut child = start_daemon(&p, &dir);
        let (first, took) = wait_for_tokens(&dir, MANY_SETS, &mut child.0);
        f.many_issuing.push((took - first).as_secs_f64());
        let cpu = cpu_secs(child.0.id());
        f.many_all_written.push(took.as_secs_f64());
        f.daemon_cpu_per_token_us.push(cpu / MANY_SETS as f64 * 1e6);
        // Let the last journal and status writes land before reading the peak.
        std::thread::sleep(Duration::from_millis(500));
        f.many_rss_mib
            .push(status_field(child.0.id(), "VmHWM") as f64 / 1024.0);
        f.many_rss_settled_mib
            .push(status_field(child.0.id(), "VmRSS") as f64 / 1024.0);
        let (t, ok) = stop(&mut child.0, &dir);
        f.many_stop.push(t.as_secs_f64());
        f.many_stop_ok.push(ok);
        eprintln!(
            "10k run {r}: all written {:.2} s, cpu {:.0} µs/token, stop {:.2} s ({})",
            took.as_secs_f64(),
            cpu / MANY_SETS as f64 * 1e6,
            t.as_secs_f64(),
            if ok { "all revoked" } else { "NOT all revoked" }
        );
        let _ = std::fs::remove_dir_all(tokens_dir(&dir));
        let _ = std::fs::remove_dir_all(&dir);

        // The bare client, same fake, same number of requests, same concurrency.
        let out = Command::new(&p.me)
            .args([
                "client",
                &url,
                &MANY_SETS.to_string(),
                &CONCURRENCY.to_string(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "bare client failed");
        let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        f.client_secs.push(secs);
        eprintln!("bare client run {r}: {secs:.2} s for {MANY_SETS} requests");

        // The operator's loop: curl, jq, a temporary file, mv; one token at a time.
        if let Some(us) = curl_loop(&url, &p.work.join(format!("curl{r}"))) {
            f.curl_cpu_per_token_us.push(us);
            eprintln!("curl loop run {r}: {us:.0} µs CPU/token");
        }
    }
    drop(fake);
    report(&f, runs, idle_secs);
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

fn report(f: &Figures, runs: usize, idle_secs: u64) {
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let idle_rss = median(&f.idle_rss_mib);
    let idle_anon = median(&f.idle_anon_mib);
    let settled = median(&f.many_rss_settled_mib);
    let idle_wake = median(&f.idle_wakeups);
    let written = median(&f.many_all_written);
    let rss = median(&f.many_rss_mib);
    let stop = median(&f.many_stop);
    let all_revoked = f.many_stop_ok.iter().all(|&b| b);
    let daemon_cpu = median(&f.daemon_cpu_per_token_us);
    let curl_cpu = median(&f.curl_cpu_per_token_us);
    let cpu_ratio = curl_cpu / daemon_cpu;
    let client = median(&f.client_secs);
    let issuing = median(&f.many_issuing);
    let overhead = issuing / client;
    println!();
    println!(
        "median of {runs} run(s); idle window {idle_secs} s; {MANY_SETS} sets; concurrency {CONCURRENCY}"
    );
    println!("| scenario | figure | target | |");
    println!("|---|---|---|---|");
    println!(
        "| 10 sets, idle | RSS {idle_rss:.1} MiB ({idle_anon:.1} MiB private, the rest code pages) | ≤ 8 MiB | {} |",
        verdict(idle_rss <= 8.0)
    );
    println!(
        "| 10 sets, idle | {idle_wake:.2} wake-ups/s | ≤ 1/s | {} |",
        verdict(idle_wake <= 1.0)
    );
    println!(
        "| 10,000 sets | every file written in {written:.2} s | ≤ 2 s | {} |",
        verdict(written <= 2.0)
    );
    println!(
        "| 10,000 sets | peak RSS {rss:.1} MiB; {settled:.1} MiB once started | ≤ 32 MiB | {} |",
        verdict(rss <= 32.0)
    );
    println!(
        "| 10,000 sets | SIGTERM to exit {stop:.2} s, {} | ≤ 2 s, all revoked | {} |",
        if all_revoked {
            "all revoked"
        } else {
            "NOT all revoked"
        },
        verdict(stop <= 2.0 && all_revoked)
    );
    if f.curl_cpu_per_token_us.is_empty() {
        println!(
            "| CPU per token | daemon {daemon_cpu:.0} µs; curl+jq+mv SKIPPED | ≥ 100x less | SKIPPED |"
        );
    } else {
        println!(
            "| CPU per token | daemon {daemon_cpu:.0} µs vs curl+jq+mv {curl_cpu:.0} µs: {cpu_ratio:.0}x less | ≥ 100x less | {} |",
            verdict(cpu_ratio >= 100.0)
        );
    }
    println!(
        "| overhead | daemon {issuing:.2} s from first file to last ({written:.2} s from start) vs bare client {client:.2} s for {MANY_SETS} tokens: {overhead:.2}x | ≤ 1.5x | {} |",
        verdict(overhead <= 1.5)
    );
}
