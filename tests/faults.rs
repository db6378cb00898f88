//! Never leak, never lose: crashes, restarts, provider faults and disk faults, with the built
//! binary against the strict development provider on 127.0.0.1.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn start(dir: &Path, cfg: &Path) -> Daemon {
    Daemon::spawn(dir, &["run", "-c", cfg.to_str().unwrap()], 0o022, &[])
}

fn revoke_cmd(cfg: &Path, sets: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["revoke", "-c", cfg.to_str().unwrap()])
        .args(sets)
        .env("TK_TEST_APP_ID", tokenkeeper::devprovider::DEV_APP_ID)
        .env("TK_TEST_APP_TOKEN", tokenkeeper::devprovider::DEV_APP_TOKEN)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

async fn kill(d: &mut Daemon) {
    d.signal(Signal::SIGKILL);
    d.wait(PATIENCE).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_reuses_the_journaled_token_instead_of_issuing() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = write_config(
        dir.path(),
        &config(&p, dir.path(), "", &set("s", "api", &f, "")),
    );
    let mut d = start(dir.path(), &cfg);
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    let first = read(&f).unwrap();
    kill(&mut d).await;
    // The journal is owner-only in an owner-only directory.
    assert_eq!(mode(&dir.path().join("state")), 0o700);
    assert_eq!(mode(&dir.path().join("state/journal.log")), 0o600);
    std::fs::remove_file(&f).unwrap();

    let mut d = start(dir.path(), &cfg);
    d.wait_for_log("reusing the token it already holds").await;
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    assert_eq!(read(&f).unwrap(), first, "the file holds the reused token");
    assert_eq!(p.issued_tokens().len(), 1, "a restart issued a new token");
    assert!(
        p.requests().introspect >= 1,
        "the reused token was not checked"
    );
    stop_clean(&mut d).await;
    assert!(p.live_tokens().is_empty());
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_replaces_what_no_longer_fits_and_revokes_the_old_tokens() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.token");
    let b = dir.path().join("b.token");
    let both = set("a", "api", &a, "") + &set("b", "orders", &b, "");
    let cfg = write_config(dir.path(), &config(&p, dir.path(), "", &both));
    let mut d = start(dir.path(), &cfg);
    assert!(
        wait_until(PATIENCE, || a.exists() && b.exists()).await,
        "{}",
        d.output()
    );
    let (old_a, old_b) = (read(&a).unwrap(), read(&b).unwrap());
    kill(&mut d).await;

    // Set a changes its scopes; set b is gone from the config.
    write_config(
        dir.path(),
        &config(
            &p,
            dir.path(),
            "defaults:\n  revoke_superseded_after: 200ms",
            &set("a", "api, vouchers", &a, ""),
        ),
    );
    let mut d = start(dir.path(), &cfg);
    assert!(
        wait_until(PATIENCE, || read(&a).is_some_and(|t| t != old_a)).await,
        "{}",
        d.output()
    );
    let new_a = read(&a).unwrap();
    assert_eq!(p.scopes_of(&new_a).unwrap(), vec!["api", "vouchers"]);
    assert!(
        wait_until(PATIENCE, || !p.is_live(&old_a) && !p.is_live(&old_b)).await,
        "old tokens not revoked:\n{}",
        d.output()
    );
    assert!(p.revoked_tokens().contains(&old_a) && p.revoked_tokens().contains(&old_b));
    assert!(
        wait_until(PATIENCE, || !b.exists()).await,
        "the removed set's file is still there"
    );
    stop_clean(&mut d).await;
    assert!(p.live_tokens().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_due_for_refresh_at_restart_is_replaced() {
    let p = provider(Duration::from_secs(4)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = write_config(
        dir.path(),
        &config(
            &p,
            dir.path(),
            "defaults:\n  refresh: { at: 25%, jitter: 0%, min_interval: 100ms }\n  revoke_superseded_after: 100ms",
            &set("s", "api", &f, ""),
        ),
    );
    let mut d = start(dir.path(), &cfg);
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    let first = read(&f).unwrap();
    kill(&mut d).await;
    // Past its refresh time (1 s), still valid (4 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut d = start(dir.path(), &cfg);
    assert!(
        wait_until(PATIENCE, || read(&f).is_some_and(|t| t != first)).await,
        "{}",
        d.output()
    );
    assert!(
        wait_until(PATIENCE, || p.revoked_tokens().contains(&first)).await,
        "{}",
        d.output()
    );
    stop_clean(&mut d).await;
    assert!(p.live_tokens().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_cleans_up_after_a_crash_and_refuses_while_the_daemon_runs() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.token");
    let b = dir.path().join("b.token");
    let cfg = write_config(
        dir.path(),
        &config(
            &p,
            dir.path(),
            "",
            &(set("a", "api", &a, "") + &set("b", "orders", &b, "")),
        ),
    );
    let mut d = start(dir.path(), &cfg);
    assert!(
        wait_until(PATIENCE, || a.exists() && b.exists()).await,
        "{}",
        d.output()
    );

    let o = revoke_cmd(&cfg, &[]);
    assert_eq!(o.status.code(), Some(75), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("the daemon is running"));
    assert_eq!(p.live_tokens().len(), 2);

    kill(&mut d).await;
    // A name neither configured nor journaled is a mistake, not "nothing to do": nothing is
    // revoked, not even the sets named beside it.
    let o = revoke_cmd(&cfg, &["b", "nosuchset"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(64), "{err}");
    assert!(
        err.contains(
            "no scope set named nosuchset, configured or journaled; configured sets: a, b"
        ),
        "{err}"
    );
    assert_eq!(p.live_tokens().len(), 2);
    let o = revoke_cmd(&cfg, &["b"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("b: revoked ") && out.contains("1 revoked, 0 failed"),
        "{out}"
    );
    assert!(!b.exists() && a.exists());
    assert_eq!(p.live_tokens().len(), 1);

    let o = revoke_cmd(&cfg, &[]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("a: revoked "), "{out}");
    assert!(!a.exists());
    assert!(p.live_tokens().is_empty());
    let journal = tokenkeeper::journal::load(&dir.path().join("state")).unwrap();
    assert!(journal.is_empty(), "{journal:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_down_at_stop_is_bounded_and_the_tokens_are_revoked_later() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = write_config(
        dir.path(),
        &config(
            &p,
            dir.path(),
            "shutdown_timeout: 2s",
            &set("s", "api", &f, ""),
        ),
    );
    let mut d = start(dir.path(), &cfg);
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    p.set_revoke_status(Some(503));
    let t = Instant::now();
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(PATIENCE).await.code(), Some(1), "{}", d.output());
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "stop took {:?}",
        t.elapsed()
    );
    assert_eq!(p.live_tokens().len(), 1);
    p.set_revoke_status(None);
    let o = revoke_cmd(&cfg, &[]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(p.live_tokens().is_empty());
}

/// A stop that gives up on a revocation (the deadline, or a second signal) leaves no file
/// holding that token: the provider may still carry the revocation out a moment later, and
/// an application must not be handed a token that is revoked under it. The token stays in
/// the journal, and `revoke` finishes the job.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_the_stop_gave_up_on_is_in_no_file() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.token"), dir.path().join("b.token"));
    let cfg = write_config(
        dir.path(),
        &config(
            &p,
            dir.path(),
            "shutdown_timeout: 1s",
            &(set("a", "api", &a, "") + &set("b", "orders", &b, "")),
        ),
    );
    // The deadline runs out while the provider sits on the revocations.
    let mut d = start(dir.path(), &cfg);
    assert!(
        wait_until(PATIENCE, || a.exists() && b.exists()).await,
        "{}",
        d.output()
    );
    p.set_revoke_delay(Duration::from_secs(30));
    d.signal(Signal::SIGTERM);
    // Gone while the daemon still waits on the provider, not only once it exits.
    assert!(
        wait_until(PATIENCE, || !a.exists() && !b.exists()).await,
        "{}",
        d.output()
    );
    assert_eq!(d.wait(PATIENCE).await.code(), Some(1), "{}", d.output());
    assert!(!a.exists() && !b.exists());
    assert_eq!(p.live_tokens().len(), 2);
    p.set_revoke_delay(Duration::ZERO);
    let o = revoke_cmd(&cfg, &[]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(p.live_tokens().is_empty());

    // A second signal cuts the stop short: the files went at the first.
    let mut d = start(dir.path(), &cfg);
    assert!(
        wait_until(PATIENCE, || a.exists() && b.exists()).await,
        "{}",
        d.output()
    );
    p.set_revoke_delay(Duration::from_secs(30));
    d.signal(Signal::SIGTERM);
    assert!(
        wait_until(PATIENCE, || !a.exists() && !b.exists()).await,
        "{}",
        d.output()
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(PATIENCE).await.code(), Some(1), "{}", d.output());
    assert!(!a.exists() && !b.exists());
    p.set_revoke_delay(Duration::ZERO);
    let o = revoke_cmd(&cfg, &[]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(p.live_tokens().is_empty());
}

/// SIGKILL at random moments, over and over, while a reader watches the files: they are
/// always whole, restarts reuse journaled tokens, and after a final clean stop nothing is
/// left live but what a kill caught between the provider's answer and the journal.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_loses_nothing() {
    /// Enough kills to land in every phase (start, issue, write, rotate, idle) many times.
    const ITERATIONS: usize = 40;
    let p = Arc::new(provider(Duration::from_secs(900)).await);
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("t.token");
    let json = dir.path().join("t.json");
    let cfg = write_config(
        dir.path(),
        &config_with(
            &p,
            dir.path(),
            // A crash loop must stay under the cap.
            "max_live_tokens: 6\n    issue_rate: 10000/s\n    issue_burst: 10000",
            "defaults:\n  refresh: { min_interval: 1ms }\n  revoke_superseded_after: 50ms",
            &(set("r", "api", &raw, "") + &set("j", "orders", &json, ", format: json")),
        ),
    );

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (p, done, raw, json) = (Arc::clone(&p), Arc::clone(&done), raw.clone(), json.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            let mut known: HashSet<String> = HashSet::new();
            // Every token a file held: the daemon journals a token before it writes it.
            let mut seen: HashSet<String> = HashSet::new();
            let mut check = |tok: &str, what: &str| {
                assert!(!tok.is_empty(), "empty {what}");
                if !known.contains(tok) {
                    known = p.issued_tokens().into_iter().collect();
                    assert!(known.contains(tok), "{what} holds a token never issued");
                }
                if !seen.contains(tok) {
                    seen.insert(tok.to_owned());
                }
            };
            while !done.load(Ordering::Relaxed) {
                if let Ok(r) = std::fs::read_to_string(&raw) {
                    check(&r, "raw file");
                    reads += 1;
                }
                if let Ok(j) = std::fs::read_to_string(&json) {
                    let v: serde_json::Value = serde_json::from_str(&j)
                        .unwrap_or_else(|e| panic!("torn json ({e}): {j:?}"));
                    check(v["access_token"].as_str().unwrap_or(""), "json file");
                }
            }
            (reads, seen)
        })
    };

    // The two clocks at one moment: mint times are tokio's, log lines are the wall clock's.
    let clock = (tokio::time::Instant::now(), tokenkeeper::clock::now_wall());
    let mut kills = Vec::new();
    // For the report of a leak: each run's start and log, and what the journal held after
    // each kill.
    let mut runs = Vec::new();
    let mut journaled_after_kill = Vec::new();
    let mut rotations = 0;
    for i in 0..ITERATIONS {
        let mut d = start(dir.path(), &cfg);
        runs.push((tokio::time::Instant::now(), d.log.clone()));
        if i % 2 == 1 {
            // Let it settle, then rotate so the kill can land mid-issue or mid-write.
            wait_until(PATIENCE, || raw.exists() && json.exists()).await;
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..50))).await;
            d.signal(Signal::SIGUSR1);
            rotations += 1;
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..150))).await;
        d.signal(Signal::SIGKILL);
        kills.push(tokio::time::Instant::now());
        d.wait(PATIENCE).await;
        journaled_after_kill.push(journaled_fingerprints(dir.path()));
        assert!(
            p.live_tokens().len() <= 6 + kills.len(),
            "live tokens beyond the cap"
        );
    }
    // A final clean run: ready, then stopped.
    let mut d = start(dir.path(), &cfg);
    runs.push((tokio::time::Instant::now(), d.log.clone()));
    assert!(
        wait_until(PATIENCE, || {
            read(&raw).is_some_and(|t| p.is_live(&t)) && json.exists()
        })
        .await,
        "{}",
        d.output()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_clean(&mut d).await;
    done.store(true, Ordering::Relaxed);
    let (reads, seen) = reader.join().expect("a reader saw a broken file");

    let issued = p.issued_with_times();
    let leaked: Vec<_> = issued.iter().filter(|(t, _)| p.is_live(t)).collect();
    let journaled_at_end = journaled_fingerprints(dir.path());
    let reports: Vec<String> = leaked
        .iter()
        .map(|(tok, minted)| {
            describe_leak(
                tok,
                *minted,
                &kills,
                &runs,
                &journaled_after_kill,
                &journaled_at_end,
            )
        })
        .collect();
    for r in &reports {
        // The first line only: the daemon's log is for a failure's message.
        eprintln!("sigkill: leaked {}", r.lines().next().unwrap_or_default());
    }
    let logs: Vec<String> = runs
        .iter()
        .map(|(_, log)| std::fs::read_to_string(log).unwrap())
        .collect();
    for ((tok, minted), report) in leaked.iter().zip(&reports) {
        let fp = tokenkeeper::secret::fingerprint(tok);
        let leak = Leaked {
            minted: *minted,
            journaled: journaled_at_end.contains(&fp)
                || journaled_after_kill.iter().any(|j| j.contains(&fp)),
            held: seen.contains(tok.as_str()) || logs.iter().any(|l| l.contains(&fp)),
        };
        if let Some(why) = unexplained(&leak, &kills) {
            panic!("a token is still live after the clean stop, and {why}: {report}");
        }
    }
    // Each start either reuses a token or replaces one a kill caught mid-rotation; without
    // the journal every start would mint two.
    assert!(
        issued.len() < 2 * (ITERATIONS + 1),
        "{} tokens for {ITERATIONS} restarts: restarts are not reusing tokens",
        issued.len()
    );
    // How long the daemons took from the provider's mint to the file write (which follows
    // the durable journal record), for the tokens that got that far: the load the test ran
    // under, in the terms of the window above.
    let mut written: Vec<Duration> = issued
        .iter()
        .filter_map(|(tok, minted)| {
            let fp = tokenkeeper::secret::fingerprint(tok);
            let at = written_at(&runs, &fp)?;
            let minted = clock.1 + (*minted - clock.0);
            at.duration_since(minted).ok()
        })
        .collect();
    written.sort();
    eprintln!("sigkill: mint to file write: {written:?}");
    eprintln!(
        "sigkill: {ITERATIONS} kills, {rotations} rotations, {} tokens issued, {} leaked by kills mid-issue, {reads} reads",
        issued.len(),
        leaked.len()
    );
}

/// SIGKILL while a start is issuing for many sets at once, the journal busiest: every token
/// the provider minted before the kill's window is in the journal the kill left, every token
/// file holds a journaled token, and a clean restart and stop leave only what the window
/// excuses live.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_in_the_middle_of_a_large_batch_finds_every_minted_token_journaled() {
    /// Large enough that the kill lands among hundreds of records in flight, with group
    /// commits of many records each.
    const SETS: usize = 2_000;
    let p = tokenkeeper::devprovider::DevProvider::start(
        "127.0.0.1:0".parse().unwrap(),
        tokenkeeper::devprovider::DevProviderOptions {
            lifetime: Duration::from_secs(900),
            max_live_tokens: 4 * SETS,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let sets: String = (0..SETS)
        .map(|i| {
            set(
                &format!("s{i}"),
                "api",
                &tokens.join(format!("s{i}.token")),
                "",
            )
        })
        .collect();
    let cfg = write_config(
        dir.path(),
        &config_with(
            &p,
            dir.path(),
            &format!(
                "max_live_tokens: {}\n    issue_rate: 100000/s\n    issue_burst: 100000",
                4 * SETS
            ),
            "log_level: warn",
            &sets,
        ),
    );
    let mut d = start(dir.path(), &cfg);
    assert!(
        wait_until(PATIENCE, || p.issued_tokens().len() >= SETS / 2).await,
        "{}",
        d.output()
    );
    d.signal(Signal::SIGKILL);
    let kill = tokio::time::Instant::now();
    d.wait(PATIENCE).await;

    let journaled = journaled_fingerprints(dir.path());
    let minted = p.issued_with_times();
    assert!(
        minted.len() < SETS,
        "the kill came after the batch: {}",
        minted.len()
    );
    let missing: Vec<String> = minted
        .iter()
        .filter(|(_, at)| *at + KILL_WINDOW < kill)
        .map(|(t, _)| tokenkeeper::secret::fingerprint(t))
        .filter(|fp| !journaled.contains(fp))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} tokens minted before the kill's window are not in the journal: {:?}",
        missing.len(),
        minted.len(),
        &missing[..missing.len().min(5)]
    );
    // Journaled before written: no file holds a token the journal lost. A temporary file the
    // kill cut short holds the start of one (the next start removes it).
    let journal_tokens: Vec<String> = tokenkeeper::journal::load(&dir.path().join("state"))
        .unwrap()
        .into_iter()
        .map(|e| e.token.expose().to_string())
        .collect();
    let mut files = 0;
    for e in std::fs::read_dir(&tokens).unwrap().flatten() {
        let t = std::fs::read_to_string(e.path()).unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".tmp") {
            assert!(
                journal_tokens.iter().any(|j| j.starts_with(&t)),
                "{} holds what is no part of a journaled token",
                e.path().display()
            );
            continue;
        }
        assert!(
            journaled.contains(&tokenkeeper::secret::fingerprint(&t)),
            "{} holds a token the journal does not",
            e.path().display()
        );
        files += 1;
    }
    eprintln!(
        "sigkill mid-batch: {} minted, {} journaled, {files} files at the kill",
        minted.len(),
        journaled.len()
    );

    // A clean start adopts or revokes what the journal holds; its stop revokes the rest.
    let mut d = start(dir.path(), &cfg);
    assert!(
        wait_until(PATIENCE, || tokens_in(&tokens) == SETS).await,
        "{}",
        d.output()
    );
    stop_clean(&mut d).await;
    let left: Vec<_> = p
        .issued_with_times()
        .into_iter()
        .filter(|(t, at)| p.is_live(t) && !(*at + KILL_WINDOW >= kill && *at <= kill + IN_FLIGHT))
        .collect();
    assert!(left.is_empty(), "{} tokens left live", left.len());
}

fn tokens_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.flatten().count())
}

/// A token minted this long before a kill may not have had its journal record on disk when
/// the kill landed: the provider answers, the daemon reads the answer, and the journal writer
/// makes the record durable, behind at most one commit already under way, each commit two
/// fsyncs on the real disk. On a loaded 2-core machine (load average 4 to 5, the faults suite
/// run one or two at a time) that took up to 100.6 ms: the slowest of 135 such tokens over 82
/// runs, and one of the six failures the 100 ms this window used to be gave in those runs.
/// Five times the slowest seen leaves room for a slower CI machine. The window only has to
/// bound how long a daemon sits on a token it has not journaled: whether a token was
/// journaled, or handled as if it was, is judged by the journal, the files and the logs
/// instead (see [`unexplained`]), whatever its timing.
const KILL_WINDOW: Duration = Duration::from_millis(500);

/// A token minted this long after a kill may still be the killed daemon's: its request was
/// in the provider's socket when the kill landed, and the provider, which runs in this test
/// process, handled it afterwards. Seen up to 0.66 ms after the kill in the same 82 runs, and
/// behind five of those six failures: the old window wanted every leaked token minted before
/// a kill. A hundred milliseconds allow for this test process waiting for a core on a loaded
/// machine; a token minted later than that after the last kill is the clean run's, which must
/// leak nothing.
const IN_FLIGHT: Duration = Duration::from_millis(100);

/// What the SIGKILL test knows of a token still live after the final clean stop.
struct Leaked {
    minted: tokio::time::Instant,
    /// Held by the journal that some kill left behind, or by the final one.
    journaled: bool,
    /// Seen in a token file, or named in a daemon's log: a daemon had it in hand, which
    /// happens only once its journal record is on disk (or the record failed, loudly).
    held: bool,
}

/// Why `leak` is more than a kill caught between the provider's answer and the durable
/// journal record, the one leak a crash may cause (the provider has no way to list tokens);
/// `None` if that is all it is.
fn unexplained(leak: &Leaked, kills: &[tokio::time::Instant]) -> Option<&'static str> {
    if leak.journaled {
        return Some("the journal held it, so a later start or the clean stop had to revoke it");
    }
    if leak.held {
        return Some("a daemon held it (in a file or a log line), so it had been journaled");
    }
    let caught = kills
        .iter()
        .any(|k| leak.minted + KILL_WINDOW >= *k && leak.minted <= *k + IN_FLIGHT);
    (!caught).then_some("it was minted outside every kill's window")
}

#[test]
fn the_sigkill_test_excuses_only_tokens_a_kill_caught_before_the_journal() {
    let ms = Duration::from_millis;
    let kill = tokio::time::Instant::now() + Duration::from_secs(60);
    let leak = |minted, journaled, held| Leaked {
        minted,
        journaled,
        held,
    };
    // In the daemon's hands when the kill landed (as slow as seen, or as slow as allowed), or
    // still on its way to the provider.
    for minted in [
        kill - ms(101),
        kill - KILL_WINDOW,
        kill + ms(1),
        kill + IN_FLIGHT,
    ] {
        assert_eq!(unexplained(&leak(minted, false, false), &[kill]), None);
    }
    // Journaled, or far enough along to be written: a later start had to revoke it.
    assert!(unexplained(&leak(kill - ms(1), true, false), &[kill]).is_some());
    assert!(unexplained(&leak(kill - ms(1), false, true), &[kill]).is_some());
    // Minted long before any kill, or in the clean run after the last one.
    for minted in [
        kill - KILL_WINDOW - ms(1),
        kill - ms(5000),
        kill + IN_FLIGHT + ms(1),
    ] {
        assert!(unexplained(&leak(minted, false, false), &[kill]).is_some());
    }
}

/// Fingerprints of the tokens the journal in `dir/state` holds now; none if there is no
/// journal yet. The daemon is not running: the file is whole, or the test fails.
fn journaled_fingerprints(dir: &Path) -> HashSet<String> {
    tokenkeeper::journal::load(&dir.join("state"))
        .expect("a corrupt journal")
        .into_iter()
        .map(|e| e.fingerprint)
        .collect()
}

/// When a daemon logged writing the token with fingerprint `fp` to its file, by its log.
fn written_at(runs: &[(tokio::time::Instant, PathBuf)], fp: &str) -> Option<std::time::SystemTime> {
    let needle = format!("fingerprint={fp}");
    runs.iter().find_map(|(_, log)| {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.lines()
            .find(|l| l.contains("token written") && l.contains(&needle))
            .and_then(|l| humantime::parse_rfc3339(l.split_whitespace().next()?).ok())
    })
}

/// Where a leaked token came from, for the assertion message: when it was minted relative to
/// the kills and starts around it, whether any journal (after each kill, and at the end) held
/// it, and what the daemons logged about it.
fn describe_leak(
    token: &str,
    minted: tokio::time::Instant,
    kills: &[tokio::time::Instant],
    runs: &[(tokio::time::Instant, PathBuf)],
    journaled_after_kill: &[HashSet<String>],
    journaled_at_end: &HashSet<String>,
) -> String {
    let fp = tokenkeeper::secret::fingerprint(token);
    let before = kills.iter().enumerate().rfind(|(_, k)| **k <= minted);
    let after = kills.iter().enumerate().find(|(_, k)| **k > minted);
    let run = runs.iter().rposition(|(s, _)| *s <= minted);
    let mut out = format!("{fp}: minted during run {run:?}");
    if let Some(r) = run {
        out += &format!(" ({:?} after it started)", minted - runs[r].0);
    }
    if let Some((i, k)) = before {
        out += &format!(", {:?} after kill {i}", minted - *k);
    }
    if let Some((i, k)) = after {
        out += &format!(", {:?} before kill {i}", *k - minted);
    }
    let in_journal: Vec<usize> = journaled_after_kill
        .iter()
        .enumerate()
        .filter(|(_, j)| j.contains(&fp))
        .map(|(i, _)| i)
        .collect();
    out += &format!(
        "; in the journal after kills {in_journal:?}, at the end: {}",
        journaled_at_end.contains(&fp)
    );
    for (i, (_, log)) in runs.iter().enumerate() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains(&fp)) {
            out += &format!("\n  run {i}: {line}");
        }
    }
    // The whole log of the run it was minted in: what that daemon was doing meanwhile.
    if let Some(r) = run {
        let text = std::fs::read_to_string(&runs[r].1).unwrap_or_default();
        out += &format!("\n  log of run {r}:\n{text}");
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_down_at_start_is_retried_with_backoff_then_recovers() {
    let p = provider(Duration::from_secs(900)).await;
    p.set_outage(Some(503));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = write_config(
        dir.path(),
        &config(&p, dir.path(), "", &set("s", "api", &f, "")),
    );
    let mut d = start(dir.path(), &cfg);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!f.exists());
    // Backoff from 1 s (with min_interval 1 s): a handful of attempts, not a spin.
    let attempts = p.requests().token;
    assert!((1..=5).contains(&attempts), "{attempts} attempts in 3 s");
    p.set_outage(None);
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    stop_clean(&mut d).await;
    assert!(p.live_tokens().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flapping_provider_never_leaves_a_bad_file() {
    let p = Arc::new(provider(Duration::from_secs(2)).await);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = write_config(
        dir.path(),
        &config(
            &p,
            dir.path(),
            "defaults:\n  refresh: { at: 30%, jitter: 0%, min_interval: 50ms }\n  revoke_superseded_after: 100ms",
            &set("s", "api", &f, ""),
        ),
    );
    let mut d = start(dir.path(), &cfg);
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    let t = Instant::now();
    let mut down = false;
    while t.elapsed() < Duration::from_secs(5) {
        down = !down;
        p.set_drop_connections(down);
        let phase = Instant::now();
        while phase.elapsed() < Duration::from_millis(300) {
            // Present means valid: never an expired, revoked or unknown token.
            if let Some(tok) = read(&f) {
                assert!(p.is_live(&tok), "the file holds a dead token");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    p.set_drop_connections(false);
    assert!(
        wait_until(PATIENCE, || read(&f).is_some_and(|t| p.is_live(&t))).await,
        "{}",
        d.output()
    );
    stop_clean(&mut d).await;
    assert!(p.live_tokens().is_empty(), "{}", d.output());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_slower_than_the_timeout_is_retried() {
    let p = provider(Duration::from_secs(900)).await;
    p.set_issue_delay(Duration::from_secs(3));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = write_config(
        dir.path(),
        &config_with(
            &p,
            dir.path(),
            "timeout: 1s\n    issue_rate: 10000/s\n    issue_burst: 10000",
            "",
            &set("s", "api", &f, ""),
        ),
    );
    let mut d = start(dir.path(), &cfg);
    d.wait_for_log("could not get a token").await;
    assert!(!f.exists());
    p.set_issue_delay(Duration::ZERO);
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    let timed_out = p.issued_tokens().len() - 1;
    stop_clean(&mut d).await;
    // Tokens minted for requests we gave up on are unknowable to us; nothing else is live.
    assert!(
        p.live_tokens().len() <= timed_out,
        "{} live after stop, {timed_out} timed out",
        p.live_tokens().len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_requests_honours_retry_after() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = write_config(
        dir.path(),
        &config(
            &p,
            dir.path(),
            "defaults:\n  refresh: { min_interval: 10ms }",
            &set("s", "api", &f, ""),
        ),
    );
    let mut d = start(dir.path(), &cfg);
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    let first = read(&f).unwrap();
    p.fail_next_issues(1, 429, Some(2));
    let before = p.requests().token;
    // The 429 comes after this moment, and the retry at least 2 s after the 429: so the new
    // token cannot be minted sooner than 2 s from here, however loaded the machine is.
    let asked = tokio::time::Instant::now();
    d.signal(Signal::SIGUSR1);
    assert!(wait_until(PATIENCE, || p.requests().token > before).await);
    assert!(
        wait_until(PATIENCE, || read(&f).is_some_and(|t| t != first)).await,
        "{}",
        d.output()
    );
    let minted = p.issued_with_times()[1].1;
    assert!(
        minted >= asked + Duration::from_secs(2),
        "retried {:?} after the signal, despite Retry-After: 2",
        minted - asked
    );
    stop_clean(&mut d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_api_key_is_reported_and_never_spins() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = write_config(
        dir.path(),
        &config(&p, dir.path(), "", &set("s", "api", &f, "")),
    );
    let mut d = start(dir.path(), &cfg);
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    let first = read(&f).unwrap();
    kill(&mut d).await;
    p.set_app_token("regenerated-elsewhere");
    let before = p.requests();
    let mut d = start(dir.path(), &cfg);
    d.wait_for_log("HTTP 401").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = p.requests();
    // One introspection, then one issue attempt: refusals wait at least 30 s.
    assert!(after.token - before.token <= 1, "{after:?}");
    assert!(after.introspect - before.introspect <= 1, "{after:?}");
    // The journaled token is still valid by the clock: it stays in place meanwhile.
    assert_eq!(read(&f).as_deref(), Some(first.as_str()));
    assert!(d.output().contains("key=unauthorized"), "{}", d.output());
    d.signal(Signal::SIGTERM);
    d.wait(PATIENCE).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_budget_caps_live_tokens_and_says_why() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.token");
    let b = dir.path().join("b.token");
    let cfg = write_config(
        dir.path(),
        &config_with(
            &p,
            dir.path(),
            "max_live_tokens: 1",
            "",
            &(set("a", "api", &a, "") + &set("b", "orders", &b, "")),
        ),
    );
    let mut d = start(dir.path(), &cfg);
    d.wait_for_log("token budget exhausted: 1 live tokens held, max_live_tokens is 1")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(p.issued_tokens().len(), 1);
    assert!(a.exists() != b.exists(), "exactly one set has its token");
    stop_clean(&mut d).await;
    assert!(p.live_tokens().is_empty());
}

/// Disk faults need root, to mount a tiny tmpfs. Without it the test fails rather than pass
/// having checked nothing.
fn require_mount() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test mounts a 64 KiB tmpfs to fill it, which needs root: run the suite as root \
         (CI does), or leave this test out by name with `cargo test -- --skip disk`"
    );
}

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let s = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(s.success(), "mount tmpfs failed");
        Tmpfs(dir.to_path_buf())
    }
    fn remount(&self, opts: &str) {
        let s = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(s.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_or_read_only_disk_keeps_the_old_file_and_writing_resumes() {
    require_mount();
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&dir.path().join("tokens"), "64k");
    let f = fs.0.join("t.token");
    let cfg = write_config(
        dir.path(),
        &config(
            &p,
            dir.path(),
            "defaults:\n  refresh: { min_interval: 10ms }\n  revoke_superseded_after: 0s",
            &set("s", "api", &f, ", format: json"),
        ),
    );
    let mut d = start(dir.path(), &cfg);
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    let first = read(&f).unwrap();

    // Full: fill every block but what the token file holds.
    let filler = fs.0.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 64 * 1024]);
    d.signal(Signal::SIGUSR1);
    d.wait_for_log("could not write the token").await;
    assert_eq!(read(&f).unwrap(), first, "the old file was damaged");
    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_until(PATIENCE, || read(&f).is_some_and(|t| t != first)).await,
        "writing did not resume after space was freed:\n{}",
        d.output()
    );

    // Read-only.
    let second = read(&f).unwrap();
    fs.remount("ro");
    d.signal(Signal::SIGUSR1);
    assert!(
        wait_until(PATIENCE, || d
            .output()
            .matches("could not write the token")
            .count()
            >= 2)
        .await
    );
    assert_eq!(read(&f).unwrap(), second);
    fs.remount("rw");
    assert!(
        wait_until(PATIENCE, || read(&f).is_some_and(|t| t != second)).await,
        "{}",
        d.output()
    );
    stop_clean(&mut d).await;
    // Tokens issued but never written were revoked at once: nothing leaks.
    assert!(p.live_tokens().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_directory_a_symlink_or_a_directory_in_the_way() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let f = out.join("t.token");
    let cfg = write_config(
        dir.path(),
        &config(
            &p,
            dir.path(),
            "defaults:\n  refresh: { min_interval: 10ms }",
            &set("s", "api", &f, ""),
        ),
    );
    let mut d = start(dir.path(), &cfg);
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());

    // The whole directory removed: it is created again at the next write.
    std::fs::remove_dir_all(&out).unwrap();
    d.signal(Signal::SIGUSR1);
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    assert_eq!(mode(&out), 0o750);

    // A symlink put in place of the file is replaced, and its target left alone.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::fs::remove_file(&f).unwrap();
    std::os::unix::fs::symlink(&victim, &f).unwrap();
    d.signal(Signal::SIGUSR1);
    assert!(
        wait_until(PATIENCE, || !std::fs::symlink_metadata(&f)
            .unwrap()
            .file_type()
            .is_symlink())
        .await
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(p.is_live(&read(&f).unwrap()));

    // A directory in the way: reported, and writing resumes once it is gone.
    std::fs::remove_file(&f).unwrap();
    std::fs::create_dir(&f).unwrap();
    d.signal(Signal::SIGUSR1);
    d.wait_for_log("could not write the token").await;
    std::fs::remove_dir(&f).unwrap();
    assert!(
        wait_until(PATIENCE, || read(&f).is_some_and(|t| p.is_live(&t))).await,
        "{}",
        d.output()
    );
    stop_clean(&mut d).await;
    assert!(p.live_tokens().is_empty());
}
