//! Files a hostile or careless local user puts where the config points: a secret source that
//! is a FIFO nobody writes, a config file another user could rewrite (it chooses the commands
//! `on_rotate` runs), and a token path naming a file of the system's own. The built binary,
//! real signals, the development provider on 127.0.0.1.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// The uid and gid of `nobody`: a user other than the daemon's (the tests run as root).
const OTHER: u32 = 65534;

/// `check` and `run` on `cfg` both exit 78, and each says `needle`.
fn both_refuse(cfg: &Path, needle: &str, what: &str) {
    for command in ["check", "run"] {
        let o = run_bounded(&[command, "-c", cfg.to_str().unwrap()], None);
        assert_eq!(o.code, Some(78), "{what}: {command}: {}", o.stderr);
        assert!(
            o.stderr.contains(needle),
            "{what}: {command} does not say {needle:?}: {}",
            o.stderr
        );
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn fifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

/// A config like `config` gives, with the provider's API key read from `key`.
fn config_keyed(
    p: &tokenkeeper::devprovider::DevProvider,
    dir: &Path,
    key: &Path,
    sets: &str,
) -> String {
    config(p, dir, "", sets).replace(
        "app_token: { env: TK_TEST_APP_TOKEN }",
        &format!("app_token: {{ file: {} }}", key.display()),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_file_that_is_a_fifo_is_refused_without_blocking() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("app-token.fifo");
    fifo(&key);
    let f = d.join("t.token");
    let sets = set("s", "api", &f, "");
    let bad = write_config(d, &config_keyed(&p, d, &key, &sets));
    both_refuse(&bad, &key.display().to_string(), "a FIFO as app_token");
    both_refuse(&bad, "not a regular file", "a FIFO as app_token");

    // A running daemon reloaded onto it: the reload is refused at once, and the daemon
    // still stops on SIGTERM, revoking its token.
    let cfg = write_config(d, &config(&p, d, "", &sets));
    let mut daemon = Daemon::spawn(d, &["run", "-c", cfg.to_str().unwrap()], 0o022, &[]);
    assert!(
        wait_until(PATIENCE, || f.exists()).await,
        "{}",
        daemon.output()
    );
    std::fs::copy(&bad, &cfg).unwrap();
    daemon.signal(Signal::SIGHUP);
    daemon.wait_for_log("reload refused").await;
    let out = daemon.output();
    assert!(out.contains(&key.display().to_string()), "{out}");
    stop_clean(&mut daemon).await;
    assert!(p.live_tokens().is_empty(), "a token outlived the daemon");
    assert!(!f.exists());
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_another_user_could_write_is_refused() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = d.join("t.token");
    let yaml = config(&p, d, "", &set("s", "api", &f, ""));

    // Writable by everyone.
    let open = write_config(d, &yaml);
    chmod(&open, 0o666);
    both_refuse(&open, "writable by group or others", "a 0666 config");

    // Writable by its group.
    chmod(&open, 0o664);
    both_refuse(&open, "writable by group or others", "a 0664 config");

    // In a directory everyone may write, without the sticky bit: anyone may replace it.
    let shared = d.join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    let in_shared: PathBuf = write_config(&shared, &yaml);
    both_refuse(
        &in_shared,
        "writable by others without the sticky bit",
        "a config in a 0777 directory",
    );

    // Owned by another user who is not root.
    let theirs = write_config(d, &yaml);
    std::os::unix::fs::chown(&theirs, Some(OTHER), Some(OTHER)).unwrap();
    both_refuse(
        &theirs,
        &format!("owned by uid {OTHER}"),
        "another user's config",
    );

    // A running daemon whose config becomes writable by others refuses the reload, and
    // runs on.
    let cfg = write_config(d, &yaml);
    let mut daemon = Daemon::spawn(d, &["run", "-c", cfg.to_str().unwrap()], 0o022, &[]);
    assert!(
        wait_until(PATIENCE, || f.exists()).await,
        "{}",
        daemon.output()
    );
    chmod(&cfg, 0o666);
    daemon.signal(Signal::SIGHUP);
    daemon.wait_for_log("reload refused").await;
    assert!(
        daemon.output().contains("writable by group or others"),
        "{}",
        daemon.output()
    );
    stop_clean(&mut daemon).await;
    assert!(p.live_tokens().is_empty(), "a token outlived the daemon");
}

#[test]
fn a_token_path_in_a_system_directory_is_refused() {
    let before = std::fs::read("/etc/passwd").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The provider is never asked: the config is refused before anything is issued.
    let base = "http://127.0.0.1:9";
    for path in [
        "/etc/passwd",
        "/usr/lib/tokenkeeper-test.token",
        "/boot/t.token",
    ] {
        let yaml = format!(
            "providers:\n  dev:\n    kind: voucherify\n    base_url: {base}\n    app_id: {{ env: TK_TEST_APP_ID }}\n    app_token: {{ env: TK_TEST_APP_TOKEN }}\nscope_sets:\n{}",
            set("s", "api", Path::new(path), "")
        );
        let cfg = write_config(d, &yaml);
        let o = run_bounded(&["check", "-c", cfg.to_str().unwrap()], None);
        assert_eq!(o.code, Some(78), "{path}: {}", o.stderr);
        assert!(
            o.stderr.contains(path) && o.stderr.contains("system"),
            "{path}: {}",
            o.stderr
        );
    }
    // Through a symlink too: the directory it leads to is judged.
    let link = d.join("etc-link");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let through = link.join("passwd");
    let yaml = format!(
        "providers:\n  dev:\n    kind: voucherify\n    base_url: {base}\n    app_id: {{ env: TK_TEST_APP_ID }}\n    app_token: {{ env: TK_TEST_APP_TOKEN }}\nscope_sets:\n{}",
        set("s", "api", &through, "")
    );
    let cfg = write_config(d, &yaml);
    let o = run_bounded(&["check", "-c", cfg.to_str().unwrap()], None);
    assert_eq!(o.code, Some(78), "through a symlink: {}", o.stderr);
    assert!(o.stderr.contains("/etc"), "{}", o.stderr);
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_never_writes_through_a_link_planted_at_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let demo = d.join("demo");
    std::fs::create_dir(&demo).unwrap();
    let victim = d.join("victim");
    std::fs::write(&victim, "untouched\n").unwrap();
    std::os::unix::fs::symlink(&victim, demo.join("demo-config.yaml")).unwrap();
    let mut run = Daemon::spawn(d, &["demo", "--dir", demo.to_str().unwrap()], 0o022, &[]);
    run.wait_for_log("ready").await;
    stop_clean(&mut run).await;
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
    let cfg = demo.join("demo-config.yaml");
    assert!(!cfg.is_symlink(), "the link is still there");
    assert_eq!(mode(&cfg), 0o600);
}
