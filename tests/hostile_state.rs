//! A hostile machine: a state directory or journal someone else made, the state directory
//! removed under the daemon, extreme durations, configs built to cost, and token paths that
//! point at what tokenkeeper must never overwrite or delete. The real binary, real signals,
//! the strict development provider on 127.0.0.1.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// The uid and gid of `nobody`: a user other than the daemon's (the tests run as root).
const OTHER: u32 = 65534;

fn set(name: &str, path: &Path) -> String {
    common::set(name, "api", path, "")
}

fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Enough for the daemon with a large config; far below what an unbounded read reaches.
const MEMORY_CAP: u64 = 2 << 30;

fn check(cfg: &Path) -> Output {
    run_bounded(&["check", "-c", cfg.to_str().unwrap()], Some(MEMORY_CAP))
}

fn revoke(cfg: &Path) -> Output {
    run_bounded(&["revoke", "-c", cfg.to_str().unwrap()], Some(MEMORY_CAP))
}

fn start(dir: &Path, cfg: &Path) -> Daemon {
    Daemon::spawn(dir, &["run", "-c", cfg.to_str().unwrap()], 0o022, &[])
}

/// A journal holding one token of set `gone` (no longer configured) of provider `dev`, whose
/// file is `file`, as a planted or left-over journal would.
fn journal_entry(token: &str, file: &Path) -> String {
    let now = tokenkeeper::clock::now_wall();
    let t = |d: u64| humantime::format_rfc3339_millis(now + Duration::from_secs(d)).to_string();
    format!(
        r#"{{"set":"gone","provider":"dev","fingerprint":"{fp}","token":"{token}","token_type":"Bearer","scope":"api","issued_at":"{issued}","expires_at":"{expires}","refresh_at":"{refresh}","config_hash":"0000000000000000","file":"{file}"}}"#,
        fp = tokenkeeper::secret::fingerprint(token),
        issued = t(0),
        expires = t(900),
        refresh = t(600),
        file = file.display(),
    )
}

/// A journal log holding `entries`, as the daemon writes it, in place of whatever is there.
fn plant_journal(state: &Path, entries: &[String]) {
    let records: String = entries
        .iter()
        .map(|e| format!("{{\"record\":{e}}}\n"))
        .collect();
    std::fs::write(
        state.join("journal.log"),
        format!("{{\"version\":2}}\n{records}"),
    )
    .unwrap();
    chmod(&state.join("journal.log"), 0o600);
}

// ---------------------------------------------------------------------------------------------
// 2. The state directory is not trusted blindly.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_state_dir_journal_or_lock_open_to_another_user_is_refused_and_not_believed() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let tok = dir.path().join("t.token");
    let victim = dir.path().join("victim");
    let cfg = write_config(dir.path(), &config(&p, dir.path(), "", &set("s", &tok)));

    // (what to do to a fresh state directory, the reason the daemon must give)
    type Spoil = fn(&Path);
    let cases: Vec<(&str, Spoil, &str)> = vec![
        (
            "state_dir owned by another user",
            |s| chown(s, OTHER),
            "is owned by uid 65534",
        ),
        (
            "state_dir writable by others",
            |s| chmod(s, 0o777),
            "is writable by group or others (mode 0777)",
        ),
        (
            "state_dir writable by its group",
            |s| chmod(s, 0o770),
            "is writable by group or others (mode 0770)",
        ),
        (
            "journal owned by another user",
            |s| chown(&s.join("journal.log"), OTHER),
            "journal.log is owned by uid 65534",
        ),
        (
            "journal writable by others",
            |s| chmod(&s.join("journal.log"), 0o666),
            "journal.log is writable by group or others (mode 0666)",
        ),
        (
            "journal a symlink",
            |s| {
                let real = s.parent().unwrap().join("elsewhere.json");
                std::fs::rename(s.join("journal.log"), &real).unwrap();
                std::os::unix::fs::symlink(&real, s.join("journal.log")).unwrap();
            },
            "journal.log is not a regular file",
        ),
        (
            "lock owned by another user",
            |s| {
                std::fs::write(s.join("lock"), "").unwrap();
                chmod(&s.join("lock"), 0o600);
                chown(&s.join("lock"), OTHER);
            },
            "lock is owned by uid 65534",
        ),
    ];
    for (what, spoil, reason) in cases {
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir(&state).unwrap();
        chmod(&state, 0o700);
        std::fs::write(&victim, "precious").unwrap();
        plant_journal(&state, &[journal_entry("planted-token", &victim)]);
        spoil(&state);

        let mut d = start(dir.path(), &cfg);
        let status = d.wait(PATIENCE).await;
        let out = d.output();
        assert_eq!(status.code(), Some(78), "{what}: {out}");
        assert!(out.contains(reason), "{what}: want {reason:?} in:\n{out}");
        assert_eq!(read(&victim).as_deref(), Some("precious"), "{what}: {out}");
        assert!(!tok.exists(), "{what}: a token was written: {out}");

        let o = revoke(&cfg);
        assert_eq!(o.code, Some(78), "{what}: revoke: {}", o.stderr);
        assert!(o.stderr.contains(reason), "{what}: revoke: {}", o.stderr);
        assert_eq!(read(&victim).as_deref(), Some("precious"), "{what}");
    }
    assert!(p.issued_tokens().is_empty());
    assert_eq!(p.requests().revoke, 0, "a planted token was revoked");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_journaled_file_is_removed_only_while_it_holds_the_token_written_there() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let tok = dir.path().join("t.token");
    let cfg = write_config(dir.path(), &config(&p, dir.path(), "", &set("s", &tok)));

    for command in ["run", "revoke"] {
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir(&state).unwrap();
        chmod(&state, 0o700);
        // A file some other program owns now, named by a journal entry.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        // Still the token file as written (raw and json formats).
        let raw = dir.path().join("raw.token");
        std::fs::write(&raw, "tok-raw").unwrap();
        let json = dir.path().join("json.token");
        let expires = tokenkeeper::clock::now_wall() + Duration::from_secs(900);
        std::fs::write(
            &json,
            format!(
                "{{\"access_token\":\"tok-json\",\"token_type\":\"Bearer\",\"expires_at\":\"{}\",\"scope\":\"api\",\"set\":\"gone\"}}\n",
                humantime::format_rfc3339_seconds(expires)
            ),
        )
        .unwrap();
        // A symlink to a file holding the token: not followed, not removed.
        let target = dir.path().join("target");
        std::fs::write(&target, "tok-link").unwrap();
        let link = dir.path().join("link.token");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let entries = [
            journal_entry("tok-victim", &victim),
            journal_entry("tok-raw", &raw),
            journal_entry("tok-json", &json),
            journal_entry("tok-link", &link),
        ];
        plant_journal(&state, &entries);

        if command == "run" {
            let mut d = start(dir.path(), &cfg);
            assert!(
                wait_until(PATIENCE, || tok.exists()).await,
                "{}",
                d.output()
            );
            assert!(
                wait_until(PATIENCE, || d
                    .output()
                    .matches("revoked a journaled token of a set no longer configured")
                    .count()
                    == 4)
                .await,
                "{}",
                d.output()
            );
            assert!(
                wait_until(PATIENCE, || !raw.exists() && !json.exists()).await,
                "{}",
                d.output()
            );
            stop_clean(&mut d).await;
            assert!(
                d.output()
                    .contains("no longer holds the token written there"),
                "{}",
                d.output()
            );
        } else {
            let o = revoke(&cfg);
            assert_eq!(o.code, Some(0), "{}{}", o.stdout, o.stderr);
            assert!(o.stdout.contains("4 revoked, 0 failed"), "{}", o.stdout);
            assert!(!raw.exists() && !json.exists(), "{}", o.stderr);
        }
        assert_eq!(read(&victim).as_deref(), Some("precious"), "{command}");
        assert_eq!(read(&target).as_deref(), Some("tok-link"), "{command}");
        assert!(
            std::fs::symlink_metadata(&link).is_ok(),
            "{command}: the symlink went"
        );
    }
    assert!(p.live_tokens().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn leftover_journal_copies_are_swept_at_start() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let tok = dir.path().join("t.token");
    let cfg = write_config(dir.path(), &config(&p, dir.path(), "", &set("s", &tok)));
    let mut d = start(dir.path(), &cfg);
    assert!(
        wait_until(PATIENCE, || tok.exists()).await,
        "{}",
        d.output()
    );
    d.signal(Signal::SIGKILL);
    d.wait(PATIENCE).await;
    // What a SIGKILL during a compaction leaves: a copy of the journal, token records and all,
    // under the name the compaction writes it as (`.journal.log.`, six random characters,
    // `.tmp`).
    let journal = std::fs::read(state.join("journal.log")).unwrap();
    let token = read(&tok).unwrap();
    assert!(String::from_utf8_lossy(&journal).contains(&token));
    let copies = [".journal.log.a1B2c3.tmp", ".journal.log.Zz9Yy8.tmp"];
    for c in copies {
        std::fs::write(state.join(c), &journal).unwrap();
        chmod(&state.join(c), 0o600);
    }
    // Not the journal's leftovers, or not files: left alone.
    let others = [
        ".status.json.a1B2c3.tmp",
        "journal.log.a1B2c3.tmp",
        ".journal.log.a1B2c3.tmp.keep",
        "notes",
    ];
    for o in others {
        std::fs::write(state.join(o), "keep").unwrap();
    }
    let subdir = state.join(".journal.log.dir123.tmp");
    std::fs::create_dir(&subdir).unwrap();
    let outside = dir.path().join("outside");
    std::fs::write(&outside, "keep").unwrap();
    let link = state.join(".journal.log.lnk123.tmp");
    std::os::unix::fs::symlink(&outside, &link).unwrap();

    let mut d = start(dir.path(), &cfg);
    assert!(
        wait_until(PATIENCE, || d.output().contains("ready")).await,
        "{}",
        d.output()
    );
    for c in copies {
        assert!(
            !state.join(c).exists(),
            "{c} is still there:\n{}",
            d.output()
        );
    }
    for o in others {
        assert_eq!(read(&state.join(o)).as_deref(), Some("keep"), "{o}");
    }
    assert!(subdir.is_dir());
    assert!(std::fs::symlink_metadata(&link).is_ok(), "the symlink went");
    assert_eq!(read(&outside).as_deref(), Some("keep"));
    stop_clean(&mut d).await;
    assert!(p.live_tokens().is_empty(), "{}", d.output());
}

// ---------------------------------------------------------------------------------------------
// 5. One process per state directory, even when the directory is removed under it.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn removing_the_state_dir_under_the_daemon_keeps_it_the_only_process_there() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let tok = dir.path().join("t.token");
    let cfg = write_config(dir.path(), &config(&p, dir.path(), "", &set("s", &tok)));
    let mut d = start(dir.path(), &cfg);
    assert!(
        wait_until(PATIENCE, || tok.exists()).await,
        "{}",
        d.output()
    );
    let token = read(&tok).unwrap();

    std::fs::remove_dir_all(&state).unwrap();
    // The daemon notices and takes the lock again; until it does, the test only waits.
    let _ = wait_until(PATIENCE, || state.join("lock").exists()).await;

    let o = revoke(&cfg);
    assert_eq!(
        o.code,
        Some(75),
        "revoke ran beside the daemon: {}",
        o.stderr
    );
    assert!(o.stderr.contains("the daemon is running"), "{}", o.stderr);
    assert_eq!(read(&tok).as_deref(), Some(token.as_str()));
    assert!(p.is_live(&token));

    let mut second = start(dir.path(), &cfg);
    let status = second.wait(PATIENCE).await;
    assert_eq!(status.code(), Some(75), "{}", second.output());

    // What the daemon holds is journaled again in the new directory.
    let journal = read(&state.join("journal.log")).unwrap_or_default();
    assert!(
        journal.contains(&tokenkeeper::secret::fingerprint(&token)),
        "{journal}"
    );
    stop_clean(&mut d).await;
    assert!(p.live_tokens().is_empty());
    assert!(!tok.exists());
}

// ---------------------------------------------------------------------------------------------
// 6. Extreme durations.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn durations_beyond_their_bound_are_refused_by_check_and_run() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("t.token");
    let oauth2 = format!(
        "state_dir: {}/state\nproviders:\n  o:\n    kind: oauth2\n    token_url: http://127.0.0.1:9/token\n    client_id: c\n    client_secret: {{ env: TK_TEST_APP_TOKEN }}\n    default_lifetime: 500000000y\nscope_sets:\n  - name: s\n    provider: o\n    scopes: [api]\n    file: {{ path: {} }}\n",
        dir.path().display(),
        tok.display()
    );
    let cases = [
        (
            "min_interval",
            config(
                &p,
                dir.path(),
                "defaults:\n  refresh: { min_interval: 8000y }",
                &set("s", &tok),
            ),
            "defaults.refresh.min_interval",
        ),
        ("default_lifetime", oauth2, "providers.o.default_lifetime"),
        (
            "shutdown_timeout",
            config(&p, dir.path(), "shutdown_timeout: 1000y", &set("s", &tok)),
            "shutdown_timeout",
        ),
        (
            "revoke_superseded_after",
            config(
                &p,
                dir.path(),
                "defaults:\n  revoke_superseded_after: 100000y",
                &set("s", &tok),
            ),
            "defaults.revoke_superseded_after",
        ),
    ];
    for (what, yaml, at) in cases {
        let cfg = write_config(dir.path(), &yaml);
        let o = check(&cfg);
        assert_eq!(o.code, Some(78), "{what}: {}", o.stderr);
        assert!(o.stderr.contains(at), "{what}: want {at:?} in {}", o.stderr);
        assert!(o.stderr.contains("must be at most"), "{what}: {}", o.stderr);
        assert!(!o.stderr.contains("panicked"), "{what}: {}", o.stderr);
        let mut d = start(dir.path(), &cfg);
        let status = d.wait(PATIENCE).await;
        assert_eq!(status.code(), Some(78), "{what}: {}", d.output());
    }
    assert!(p.issued_tokens().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 10. Configs built to cost.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_config_that_is_not_a_regular_file_or_too_large_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let o = check(Path::new("/dev/zero"));
    assert_eq!(o.code, Some(78), "{}", o.stderr);
    assert!(o.stderr.contains("not a regular file"), "{}", o.stderr);

    let fifo = dir.path().join("fifo.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let o = check(&fifo);
    assert_eq!(o.code, Some(78), "{}", o.stderr);
    assert!(o.stderr.contains("not a regular file"), "{}", o.stderr);

    // Past the cap, even if all comment.
    let big = dir.path().join("big.yaml");
    let line = format!("#{}\n", "x".repeat(1023));
    let lines = usize::try_from(tokenkeeper::config::MAX_CONFIG_BYTES >> 10).unwrap() + 1;
    std::fs::write(&big, line.repeat(lines)).unwrap();
    let o = check(&big);
    assert_eq!(o.code, Some(78), "{}", o.stderr);
    assert!(o.stderr.contains("larger than"), "{}", o.stderr);
}

#[test]
fn deep_nesting_and_long_numbers_are_refused_or_parsed_in_linear_time() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "flow nesting",
            format!("scope_sets: {}", "[".repeat(100_000)),
            "nested",
        ),
        (
            "flow mapping nesting",
            format!("scope_sets: {}", "{a: ".repeat(100_000)),
            "nested",
        ),
        (
            "block nesting",
            // 2,000 levels: each a line indented one more (2 MB in all, under the size cap).
            (0..2_000)
                .map(|i| format!("{}k:\n", " ".repeat(i)))
                .collect::<String>(),
            "nested",
        ),
        (
            "compact sequences",
            format!("scope_sets:\n{}x\n", "- ".repeat(100_000)),
            "nested",
        ),
        (
            "a long number",
            format!("shutdown_timeout: {}\n", "9".repeat(3 << 20)),
            "shutdown_timeout",
        ),
    ];
    for (what, yaml, want) in cases {
        let cfg = dir.path().join("deep.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let o = check(&cfg);
        assert_eq!(o.code, Some(78), "{what}: {}", o.stderr);
        assert!(
            o.stderr.contains(want),
            "{what}: want {want:?} in {}",
            o.stderr
        );
        assert!(!o.stderr.contains("panicked"), "{what}: {}", o.stderr);
    }
}

#[test]
fn a_ten_thousand_set_config_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = format!(
        "state_dir: {}/state\nproviders:\n  dev:\n    kind: voucherify\n    base_url: http://127.0.0.1:9\n    app_id: {{ env: TK_TEST_APP_ID }}\n    app_token: {{ env: TK_TEST_APP_TOKEN }}\nscope_sets:\n",
        dir.path().display()
    );
    for i in 0..10_000 {
        yaml.push_str(&format!(
            "  - name: set-{i:05}\n    provider: dev\n    scopes: [orders, customers]\n    file: {{ path: /run/tk-test/many/set-{i:05}.token, mode: \"0640\", format: json }}\n"
        ));
    }
    assert!(yaml.len() > 1_000_000, "{}", yaml.len());
    let cfg = write_config(dir.path(), &yaml);
    let o = check(&cfg);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        o.stdout.contains("ok (10000 scope sets, 1 provider)"),
        "{}",
        o.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_during_a_reload_that_never_finishes_still_revokes() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("t.token");
    let yaml = config(&p, dir.path(), "", &set("s", &tok));
    let cfg = write_config(dir.path(), &yaml);
    let mut d = start(dir.path(), &cfg);
    assert!(
        wait_until(PATIENCE, || tok.exists()).await,
        "{}",
        d.output()
    );

    // A secret that is a FIFO nobody writes: reading it blocks for as long as nobody does.
    let fifo = dir.path().join("app-token");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    write_config(
        dir.path(),
        &yaml.replace(
            "app_token: { env: TK_TEST_APP_TOKEN }",
            &format!("app_token: {{ file: {} }}", fifo.display()),
        ),
    );
    d.signal(Signal::SIGHUP);
    // Give the reload time to reach the FIFO; nothing can tell from outside that it has.
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.signal(Signal::SIGTERM);
    let status = d.wait(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{}", d.output());
    assert!(p.live_tokens().is_empty(), "{}", d.output());
    assert!(!tok.exists());
}

// ---------------------------------------------------------------------------------------------
// 11. Token paths that must never be token files.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn dangerous_token_paths_are_refused_at_check_and_run() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg_path = d.join("config.yaml");
    let state = d.join("state");
    let prom = d.join("tk.prom");
    let metrics = format!("metrics: {{ textfile: {} }}", prom.display());
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "the config itself",
            cfg_path.display().to_string(),
            "is the configuration file",
        ),
        (
            "the journal",
            state.join("journal.log").display().to_string(),
            "is inside state_dir",
        ),
        (
            "the lock",
            state.join("lock").display().to_string(),
            "is inside state_dir",
        ),
        (
            "the status file",
            state.join("status.json").display().to_string(),
            "is inside state_dir",
        ),
        (
            "the metrics file",
            prom.display().to_string(),
            "is the metrics textfile",
        ),
        (
            "under /proc",
            "/proc/self/attr/current".into(),
            "under /proc",
        ),
        ("under /sys", "/sys/kernel/notes".into(), "under /sys"),
        ("under /dev", "/dev/shm/t.token".into(), "under /dev"),
        (
            "a newline",
            format!("\"{}/a\\nb.token\"", d.display()),
            "control character",
        ),
        (
            "a NUL",
            format!("\"{}/a\\0b.token\"", d.display()),
            "control character",
        ),
        ("a `..`", format!("{}/x/../t.token", d.display()), "`..`"),
    ];
    for (what, path, want) in cases {
        let sets = format!(
            "  - name: s\n    provider: dev\n    scopes: [api]\n    file: {{ path: {path} }}\n"
        );
        std::fs::write(&cfg_path, config(&p, d, &metrics, &sets)).unwrap();
        let before = std::fs::read(&cfg_path).unwrap();
        let o = check(&cfg_path);
        assert_eq!(o.code, Some(78), "{what}: {}", o.stderr);
        assert!(
            o.stderr.contains(want),
            "{what}: want {want:?} in {}",
            o.stderr
        );
        let mut daemon = start(d, &cfg_path);
        let status = daemon.wait(PATIENCE).await;
        assert_eq!(status.code(), Some(78), "{what}: {}", daemon.output());
        assert!(
            daemon.output().contains(want),
            "{what}: {}",
            daemon.output()
        );
        assert_eq!(std::fs::read(&cfg_path).unwrap(), before, "{what}");
    }
    assert!(p.issued_tokens().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_directory_another_user_controls_is_refused() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let theirs = d.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    chmod(&theirs, 0o755);
    chown(&theirs, OTHER);
    let open = d.join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let sticky = d.join("sticky");
    std::fs::create_dir(&sticky).unwrap();
    chmod(&sticky, 0o1777);
    let cases = [
        (
            theirs.join("t.token"),
            Some(format!("{} is owned by uid 65534", theirs.display())),
        ),
        // Below it, not yet made: the directory that exists decides.
        (
            theirs.join("sub/t.token"),
            Some(format!("{} is owned by uid 65534", theirs.display())),
        ),
        (
            open.join("t.token"),
            Some(format!(
                "{} is writable by others without the sticky bit",
                open.display()
            )),
        ),
        (sticky.join("t.token"), None),
    ];
    for (path, want) in cases {
        let cfg = write_config(d, &config(&p, d, "", &set("s", &path)));
        let o = check(&cfg);
        match &want {
            Some(want) => {
                assert_eq!(o.code, Some(78), "{}: {}", path.display(), o.stderr);
                assert!(
                    o.stderr.contains(want.as_str()),
                    "want {want:?} in {}",
                    o.stderr
                );
            }
            None => assert_eq!(o.code, Some(0), "{}: {}", path.display(), o.stderr),
        }
    }
    // Through symlinks: into a kernel tree, into state_dir, or onto another set's file.
    let kernel = d.join("kernel");
    std::os::unix::fs::symlink("/sys/kernel", &kernel).unwrap();
    std::fs::create_dir_all(d.join("state")).unwrap();
    chmod(&d.join("state"), 0o700);
    let state_alias = d.join("state-alias");
    std::os::unix::fs::symlink(d.join("state"), &state_alias).unwrap();
    let real = d.join("real");
    std::fs::create_dir(&real).unwrap();
    let alias = d.join("alias");
    std::os::unix::fs::symlink(&real, &alias).unwrap();
    let cases = [
        (
            set("s", &kernel.join("t.token")),
            "through a symlink, under /sys".to_string(),
        ),
        (
            set("s", &state_alias.join("journal.log")),
            "through a symlink, inside state_dir".to_string(),
        ),
        (
            set("a", &real.join("t.token")) + &set("b", &alias.join("t.token")),
            "is the same file as the path of scope_sets[0] (a), through a symlink".to_string(),
        ),
    ];
    for (sets, want) in cases {
        let cfg = write_config(d, &config(&p, d, "", &sets));
        let o = check(&cfg);
        assert_eq!(o.code, Some(78), "{want}: {}", o.stderr);
        assert!(
            o.stderr.contains(want.as_str()),
            "want {want:?} in {}",
            o.stderr
        );
    }

    // At run, too: the daemon never writes into such a directory.
    let cfg = write_config(d, &config(&p, d, "", &set("s", &theirs.join("t.token"))));
    let mut daemon = start(d, &cfg);
    let status = daemon.wait(PATIENCE).await;
    assert_eq!(status.code(), Some(78), "{}", daemon.output());
    assert!(!theirs.join("t.token").exists());
    assert!(p.issued_tokens().is_empty());
}

/// A running set's file replaced behind the daemon's back (by another program writing there,
/// or a symlink to something precious): at stop the token is revoked, and what is there now is
/// left alone, since the daemon did not write it.
#[tokio::test(flavor = "multi_thread")]
async fn at_stop_a_token_file_replaced_since_it_was_written_is_left_alone() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let replaced = dir.path().join("replaced.token");
    let linked = dir.path().join("linked.token");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let sets = set("a", &replaced) + &set("b", &linked);
    let cfg = write_config(dir.path(), &config(&p, dir.path(), "", &sets));
    let mut d = start(dir.path(), &cfg);
    assert!(
        wait_until(PATIENCE, || replaced.exists() && linked.exists()).await,
        "{}",
        d.output()
    );
    std::fs::write(&replaced, "another program's file").unwrap();
    std::fs::remove_file(&linked).unwrap();
    std::os::unix::fs::symlink(&victim, &linked).unwrap();
    stop_clean(&mut d).await;
    assert!(p.live_tokens().is_empty(), "{}", d.output());
    assert_eq!(
        read(&replaced).as_deref(),
        Some("another program's file"),
        "{}",
        d.output()
    );
    assert!(
        std::fs::symlink_metadata(&linked).is_ok(),
        "the symlink went"
    );
    assert_eq!(read(&victim).as_deref(), Some("precious"));
    assert!(
        d.output().contains("not removing the token file"),
        "{}",
        d.output()
    );
}
