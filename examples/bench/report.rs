//! The figures, the tables that print them, and each target's verdict.

use crate::scenario::{Build, CONCURRENCY, IDLE_SETS, Layout, SCALE_IDLE};

/// The fake provider's ceiling at one size: the bare keep-alive client's time for that many
/// token requests, and what each request cost the client and the fake.
pub struct Ceiling {
    pub sets: usize,
    pub secs: f64,
    pub client_cpu_us: f64,
    pub fake_cpu_us: f64,
}

#[derive(Default)]
pub struct Idle {
    pub rss_mib: Vec<f64>,
    /// The idle daemon's private (anonymous) resident memory; the rest of its RSS is the
    /// executable's and libc's code pages, shared with every other process running them.
    pub anon_mib: Vec<f64>,
    pub wakeups: Vec<f64>,
}

/// One scaling scenario's figures (or their medians).
#[derive(Clone, Copy)]
pub struct Scaled {
    pub sets: usize,
    /// Start to every token file written.
    pub written: f64,
    /// First token file to last: the issuing itself, without start-up (reading and checking
    /// the config, starting the tasks).
    pub issuing: f64,
    /// Peak resident memory over the daemon's whole life (wait4's ru_maxrss).
    pub peak_rss_mib: f64,
    /// Resident memory half a second after the last file.
    pub settled_rss_mib: f64,
    /// CPU over the whole life (start, issue, idle, revoke) divided by the sets.
    pub cpu_per_token_us: f64,
    pub stop: f64,
    pub all_revoked: bool,
}

fn median(v: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.into_iter().collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Each figure's median over the runs; "all revoked" only if every run revoked all.
pub fn median_of(sets: usize, runs: &[Scaled]) -> Scaled {
    let m = |f: fn(&Scaled) -> f64| median(runs.iter().map(f));
    Scaled {
        sets,
        written: m(|s| s.written),
        issuing: m(|s| s.issuing),
        peak_rss_mib: m(|s| s.peak_rss_mib),
        settled_rss_mib: m(|s| s.settled_rss_mib),
        cpu_per_token_us: m(|s| s.cpu_per_token_us),
        stop: m(|s| s.stop),
        all_revoked: runs.iter().all(|s| s.all_revoked),
    }
}

pub fn layout(l: &Layout) {
    println!("token files: {} ({})", l.tokens.display(), l.tokens_fs);
    println!(
        "state directory (journal, status file): {} ({})",
        l.state.display(),
        l.state_fs
    );
    if l.tokens_fs != "tmpfs" {
        println!("!!! token files are not on a tmpfs: run as root, or set BENCH_TOKENS_DIR to one");
    }
    if l.state_fs == "tmpfs" || l.state_fs == "ramfs" {
        println!(
            "!!! NOT the production layout: the state directory is on {}; set BENCH_STATE_DIR to a folder on a disk",
            l.state_fs
        );
    }
}

pub fn ceilings(c: &[Ceiling]) {
    println!();
    println!("fake provider's ceiling: a bare keep-alive client, {CONCURRENCY} requests in flight");
    println!("| requests | time | requests/s | client CPU per request | fake CPU per request |");
    println!("|---|---|---|---|---|");
    for c in c {
        println!(
            "| {} | {:.2} s | {:.0} | {:.0} µs | {:.0} µs |",
            c.sets,
            c.secs,
            c.sets as f64 / c.secs,
            c.client_cpu_us,
            c.fake_cpu_us
        );
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

pub fn all(
    builds: &[Build],
    idles: &[Idle],
    tables: &[Vec<Scaled>],
    ceilings: &[Ceiling],
    curl: &[f64],
    runs: usize,
    idle_secs: u64,
) {
    println!();
    println!(
        "median of {runs} run(s) (one at 100,000 sets unless BENCH_LARGE_RUNS says otherwise); each scaling daemon idles {} s before SIGTERM",
        SCALE_IDLE.as_secs()
    );
    for (b, rows) in builds.iter().zip(tables) {
        println!();
        println!("scaling, {} ({})", b.label, b.bin.display());
        println!(
            "| sets | every file written | first file to last | peak RSS | RSS once started | CPU per token (start, issue, idle, revoke) | SIGTERM to exit |"
        );
        println!("|---|---|---|---|---|---|---|");
        for s in rows {
            println!(
                "| {} | {:.2} s | {:.2} s | {:.1} MiB | {:.1} MiB | {:.0} µs | {:.2} s{} |",
                s.sets,
                s.written,
                s.issuing,
                s.peak_rss_mib,
                s.settled_rss_mib,
                s.cpu_per_token_us,
                s.stop,
                if s.all_revoked {
                    ", all revoked"
                } else {
                    ", NOT all revoked"
                }
            );
        }
    }
    let curl = median(curl.iter().copied());
    for ((b, rows), idle) in builds.iter().zip(tables).zip(idles) {
        targets(b, rows, idle, ceilings, curl, idle_secs);
    }
}

fn targets(b: &Build, rows: &[Scaled], idle: &Idle, ceilings: &[Ceiling], curl: f64, secs: u64) {
    println!();
    println!("targets, {}", b.label);
    println!("| target | figure | |");
    println!("|---|---|---|");
    let rss = median(idle.rss_mib.iter().copied());
    let anon = median(idle.anon_mib.iter().copied());
    let wake = median(idle.wakeups.iter().copied());
    println!(
        "| {IDLE_SETS} sets idle: RSS ≤ 8 MiB | {rss:.1} MiB ({anon:.1} MiB private, the rest code pages) | {} |",
        verdict(rss <= 8.0)
    );
    println!(
        "| {IDLE_SETS} sets idle: ≤ 1 wake-up/s | {wake:.2}/s over {secs} s | {} |",
        verdict(wake <= 1.0)
    );
    let at = |n: usize| rows.iter().find(|s| s.sets == n);
    if let Some(s) = at(10_000) {
        println!(
            "| 10,000 sets written ≤ 2 s | {:.2} s | {} |",
            s.written,
            verdict(s.written <= 2.0)
        );
        println!(
            "| 10,000 sets stopped, all revoked, ≤ 2 s | {:.2} s, {} | {} |",
            s.stop,
            if s.all_revoked {
                "all revoked"
            } else {
                "NOT all revoked"
            },
            verdict(s.stop <= 2.0 && s.all_revoked)
        );
        println!(
            "| CPU per token ≤ 150 µs | {:.0} µs | {} |",
            s.cpu_per_token_us,
            verdict(s.cpu_per_token_us <= 150.0)
        );
        println!(
            "| peak RSS at 10,000 sets ≤ 32 MiB | {:.1} MiB ({:.1} once started) | {} |",
            s.peak_rss_mib,
            s.settled_rss_mib,
            verdict(s.peak_rss_mib <= 32.0)
        );
        if let Some(c) = ceilings.iter().find(|c| c.sets == 10_000) {
            let o = s.issuing / c.secs;
            println!(
                "| issue overhead ≤ 1.5x a bare client | {:.2} s first file to last vs {:.2} s: {o:.2}x | {} |",
                s.issuing,
                c.secs,
                verdict(o <= 1.5)
            );
        }
        if curl.is_finite() {
            println!(
                "| CPU per token vs curl+jq+mv (≥ 100x less) | {curl:.0} µs: {:.0}x less | {} |",
                curl / s.cpu_per_token_us,
                verdict(curl / s.cpu_per_token_us >= 100.0)
            );
        }
        if let Some(l) = at(100_000) {
            let time = l.written / s.written;
            let cpu = (l.cpu_per_token_us * 100_000.0) / (s.cpu_per_token_us * 10_000.0);
            println!(
                "| 100,000 sets cost ≤ 10x 10,000 | time to written {time:.1}x, CPU {cpu:.1}x | {} |",
                verdict(time <= 10.0 && cpu <= 10.0)
            );
        }
    }
}
