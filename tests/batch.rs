//! `once`, `exec`, `rotate:` and `on_rotate:` with the built binary against the strict
//! development provider on 127.0.0.1, with real signals.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use tokenkeeper::secret::Secret;

fn set(name: &str, path: &Path, extra: &str) -> String {
    format!(
        "  - name: {name}\n    provider: dev\n    scopes: [api]\n    file: {{ path: {} }}\n{extra}",
        path.display()
    )
}

fn cfg_file(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn spawn(dir: &Path, cfg: &Path, args: &[&str]) -> Daemon {
    let mut all = vec![args[0], "-c", cfg.to_str().unwrap()];
    all.extend_from_slice(&args[1..]);
    Daemon::spawn(dir, &all, 0o022, &[])
}

async fn finish(d: &mut Daemon) -> Option<i32> {
    d.wait(Duration::from_secs(60)).await.code()
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_keeps_a_long_job_supplied_then_passes_its_status_back_and_revokes() {
    let lifetime = Duration::from_secs(4);
    let p = provider(lifetime).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s.token");
    let seen = dir.path().join("seen");
    let cfg = cfg_file(dir.path(), &config(&p, dir.path(), "", &set("s", &f, "")));
    // Wait for the file to change, then run on past the first token's lifetime.
    let script = format!(
        r#"f="$TOKENKEEPER_S_FILE"; first=$(cat "$f"); echo "$first" > {seen}
i=0; while [ $i -lt 400 ]; do t=$(cat "$f"); if [ "$t" != "$first" ]; then echo "$t" >> {seen}; sleep 3; exit 7; fi; sleep 0.05; i=$((i+1)); done; exit 1"#,
        seen = seen.display()
    );
    let mut d = spawn(dir.path(), &cfg, &["exec", "--", "/bin/sh", "-c", &script]);
    assert_eq!(finish(&mut d).await, Some(7), "{}", d.output());
    let seen = read(&seen).unwrap();
    let tokens: Vec<&str> = seen.lines().collect();
    assert_eq!(tokens.len(), 2, "{seen}");
    let issued = p.issued_with_times();
    let at = |t: &str| issued.iter().find(|(x, _)| x == t).unwrap().1;
    assert!(
        at(tokens[1]) < at(tokens[0]) + lifetime,
        "the replacement came after the first token expired"
    );
    // Afterwards: every token revoked, the file gone, nothing left in the journal.
    assert!(p.live_tokens().is_empty(), "{}", d.output());
    // The first expired on its own meanwhile; the one in use was revoked.
    assert!(p.revoked_tokens().contains(&tokens[1].to_string()));
    assert!(!f.exists());
    let journal = tokenkeeper::journal::load(&dir.path().join("state")).unwrap();
    assert!(journal.iter().all(|e| e.set != "s"), "{journal:?}");
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_forwards_signals_and_reports_death_by_signal() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s.token");
    let cfg = cfg_file(dir.path(), &config(&p, dir.path(), "", &set("s", &f, "")));
    let got = dir.path().join("got");
    let started = dir.path().join("started");
    let script = format!(
        "trap 'echo TERM >> {got}; exit 3' TERM; trap 'echo HUP >> {got}' HUP; trap 'echo INT >> {got}' INT; touch {started}; while :; do sleep 0.05; done",
        got = got.display(),
        started = started.display()
    );
    let mut d = spawn(dir.path(), &cfg, &["exec", "--", "/bin/sh", "-c", &script]);
    assert!(
        wait_until(PATIENCE, || started.exists()).await,
        "{}",
        d.output()
    );
    d.signal(Signal::SIGHUP);
    assert!(wait_until(PATIENCE, || read(&got).is_some_and(|g| g.contains("HUP"))).await);
    d.signal(Signal::SIGINT);
    assert!(wait_until(PATIENCE, || read(&got).is_some_and(|g| g.contains("INT"))).await);
    assert!(f.exists(), "SIGHUP and SIGINT are the child's, not ours");
    d.signal(Signal::SIGTERM);
    assert_eq!(finish(&mut d).await, Some(3), "{}", d.output());
    assert_eq!(read(&got).unwrap(), "HUP\nINT\nTERM\n");
    assert!(p.live_tokens().is_empty());

    let mut d = spawn(
        dir.path(),
        &cfg,
        &["exec", "--", "/bin/sh", "-c", "kill -KILL $$"],
    );
    assert_eq!(finish(&mut d).await, Some(128 + 9), "{}", d.output());
    assert!(p.live_tokens().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_issues_only_for_the_sets_it_names_and_exports_them() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.token"));
    let sets = format!(
        "  - name: my-a\n    provider: dev\n    scopes: [api]\n    file: {{ path: {}, format: json }}\n",
        a.display()
    ) + &set("b", &b, "");
    let cfg = cfg_file(dir.path(), &config(&p, dir.path(), "", &sets));
    let check = r#"test "$TOKENKEEPER_MY_A_FILE" = "$0" && test -z "$TOKENKEEPER_B_FILE" && grep -q "\"access_token\":\"$TOKENKEEPER_MY_A_TOKEN\"" "$TOKENKEEPER_MY_A_FILE" && test -z "$TOKENKEEPER_B_TOKEN""#;
    let a_path = a.to_str().unwrap();
    let mut d = spawn(
        dir.path(),
        &cfg,
        &[
            "exec",
            "--set",
            "my-a",
            "--env-token",
            "--",
            "/bin/sh",
            "-c",
            check,
            a_path,
        ],
    );
    assert_eq!(finish(&mut d).await, Some(0), "{}", d.output());
    assert_eq!(p.issued_tokens().len(), 1, "{}", d.output());
    assert!(!b.exists() && !a.exists());
    assert!(p.live_tokens().is_empty());

    // Unknown set: a usage error, nothing issued.
    let mut d = spawn(dir.path(), &cfg, &["exec", "--set", "c", "--", "true"]);
    assert_eq!(finish(&mut d).await, Some(64), "{}", d.output());

    // No token obtainable: the command is not run, and the code says why.
    p.set_outage(Some(503));
    let marker = dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let mut d = spawn(
        dir.path(),
        &cfg,
        &[
            "exec",
            "--set",
            "b",
            "--start-timeout",
            "2s",
            "--",
            "/bin/sh",
            "-c",
            &touch,
        ],
    );
    assert_eq!(finish(&mut d).await, Some(69), "{}", d.output());
    assert!(!marker.exists());
    p.set_outage(None);

    // No such command: 127, and the tokens obtained for it are revoked.
    let mut d = spawn(dir.path(), &cfg, &["exec", "--", "/nonexistent/job"]);
    assert_eq!(finish(&mut d).await, Some(127), "{}", d.output());
    assert!(p.live_tokens().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn once_leaves_its_tokens_live_and_reuses_them_and_runs_on_rotate() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s.token");
    let hooks = dir.path().join("hooks.log");
    let on_rotate = format!(
        "    on_rotate:\n      exec: [/bin/sh, -c, 'echo \"$TOKENKEEPER_SET $TOKENKEEPER_FILE $TOKENKEEPER_FINGERPRINT\" >> {}']\n",
        hooks.display()
    );
    let cfg = cfg_file(
        dir.path(),
        &config(&p, dir.path(), "", &set("s", &f, &on_rotate)),
    );
    let mut d = spawn(dir.path(), &cfg, &["once"]);
    assert_eq!(finish(&mut d).await, Some(0), "{}", d.output());
    let first = read(&f).unwrap();
    assert_eq!(p.live_tokens(), vec![first.clone()]);
    let fp = Secret::new(first.as_str()).fingerprint();
    assert_eq!(
        read(&hooks).unwrap(),
        format!("s {} {fp}\n", f.display()),
        "{}",
        d.output()
    );

    // Again: the journaled token has more than half its life left, so it is reused.
    let mut d = spawn(dir.path(), &cfg, &["once", "s"]);
    assert_eq!(finish(&mut d).await, Some(0), "{}", d.output());
    assert_eq!(read(&f).unwrap(), first);
    assert_eq!(p.issued_tokens().len(), 1);

    // Demanding more than a token's whole life: a new one is tried (and kept), the old one
    // is not revoked, and since no token lasts that long, once says so and exits 69.
    let mut d = spawn(dir.path(), &cfg, &["once", "--min-remaining", "1000s"]);
    assert_eq!(finish(&mut d).await, Some(69), "{}", d.output());
    assert!(
        d.output().contains("less than --min-remaining 16m 40s"),
        "{}",
        d.output()
    );
    assert_ne!(read(&f).unwrap(), first);
    assert_eq!(p.live_tokens().len(), 2);
    assert!(p.revoked_tokens().is_empty());
    assert_eq!(
        read(&hooks).unwrap().lines().count(),
        2,
        "{}\n{}",
        read(&hooks).unwrap(),
        d.output()
    );

    // While the daemon holds the state directory, once refuses (75) and says why.
    let mut daemon = spawn(dir.path(), &cfg, &["run"]);
    daemon.wait_for_log("ready").await;
    let mut d = spawn(dir.path(), &cfg, &["once"]);
    assert_eq!(finish(&mut d).await, Some(75), "{}", d.output());
    assert!(d.output().contains("holds"), "{}", d.output());
    // The daemon adopts the newest and revokes the rest at stop.
    daemon.signal(Signal::SIGTERM);
    assert_eq!(finish(&mut daemon).await, Some(0), "{}", daemon.output());
    assert!(p.live_tokens().is_empty(), "{:?}", p.live_tokens());
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_set_makes_once_exit_69_naming_it() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s.token");
    let cfg = cfg_file(dir.path(), &config(&p, dir.path(), "", &set("s", &f, "")));
    p.set_outage(Some(503));
    let mut d = spawn(dir.path(), &cfg, &["once", "--timeout", "2s"]);
    assert_eq!(finish(&mut d).await, Some(69), "{}", d.output());
    assert!(
        d.output().contains("no valid token for: s"),
        "{}",
        d.output()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn once_refuses_a_token_shorter_than_min_remaining() {
    // The provider grants 30 s; the job asked for 40 s: no token it can get would do.
    let p = provider(Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s.token");
    let cfg = cfg_file(dir.path(), &config(&p, dir.path(), "", &set("s", &f, "")));
    let mut d = spawn(dir.path(), &cfg, &["once", "--min-remaining", "40s", "s"]);
    assert_eq!(finish(&mut d).await, Some(69), "{}", d.output());
    let out = d.output();
    assert!(out.contains("s: FAILED"), "{out}");
    assert!(out.contains("less than --min-remaining 40s"), "{out}");
    assert!(out.contains("no valid token for: s"), "{out}");
    // Never revokes: the short token stays where it was written.
    assert!(read(&f).is_some_and(|t| p.is_live(&t)), "{out}");
    // A request the provider can meet still passes, reusing that token.
    let mut d = spawn(dir.path(), &cfg, &["once", "--min-remaining", "20s", "s"]);
    assert_eq!(finish(&mut d).await, Some(0), "{}", d.output());
    assert_eq!(p.issued_tokens().len(), 1, "{}", d.output());
}

/// `once` and `exec` do not take an HA group's lease, so with `ha:` they refuse the sets that
/// write a store path: they would write over what the group's leader serves from it, under
/// the leader. Nothing is issued for them; a set without a store is served as usual.
#[tokio::test(flavor = "multi_thread")]
async fn once_and_exec_refuse_the_store_sets_of_an_ha_group() {
    use std::os::unix::fs::PermissionsExt;
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("bao-token");
    std::fs::write(&token, "s.root").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Port 9 (discard): nothing may be asked of the store before the refusal.
    let top = format!(
        "stores:\n  bao:\n    kind: vault\n    address: http://127.0.0.1:9\n    mount: secret\n    auth: {{ token: {{ file: {} }} }}\nha: {{ store: bao }}\n",
        token.display()
    );
    let (shared, plain) = (
        dir.path().join("shared.token"),
        dir.path().join("plain.token"),
    );
    let sets = set(
        "shared",
        &shared,
        "    store: { name: bao, path: tokenkeeper/shared }\n",
    ) + &set("plain", &plain, "");
    let cfg = cfg_file(dir.path(), &config(&p, dir.path(), &top, &sets));
    for args in [&["once"][..], &["exec", "--", "/bin/true"][..]] {
        let mut d = spawn(dir.path(), &cfg, args);
        assert_eq!(finish(&mut d).await, Some(78), "{args:?}: {}", d.output());
        let out = d.output();
        assert!(
            out.contains("shared") && out.contains("lease") && out.contains(args[0]),
            "{out}"
        );
        assert!(p.issued_tokens().is_empty(), "{args:?}: {out}");
    }
    let mut d = spawn(dir.path(), &cfg, &["once", "plain"]);
    assert_eq!(finish(&mut d).await, Some(0), "{}", d.output());
    assert_eq!(p.issued_tokens().len(), 1);
    assert!(read(&plain).is_some() && read(&shared).is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cron_rotation_replaces_a_long_lived_token_on_schedule() {
    let p = provider(Duration::from_secs(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s.token");
    let cfg = cfg_file(
        dir.path(),
        &config(
            &p,
            dir.path(),
            "defaults:\n  revoke_superseded_after: 1s",
            &set("s", &f, "    rotate: \"*/2 * * * * *\"\n"),
        ),
    );
    let mut d = spawn(dir.path(), &cfg, &["run"]);
    assert!(wait_until(PATIENCE, || f.exists()).await, "{}", d.output());
    let first = read(&f).unwrap();
    assert!(
        wait_until(PATIENCE, || read(&f).is_some_and(|t| t != first)).await,
        "{}",
        d.output()
    );
    d.wait_for_log("scheduled rotation").await;
    // The superseded token is revoked as after any refresh.
    assert!(wait_until(PATIENCE, || !p.is_live(&first)).await);
    d.signal(Signal::SIGTERM);
    assert_eq!(finish(&mut d).await, Some(0), "{}", d.output());
    assert!(p.live_tokens().is_empty());
}

/// The examples in config/ are what the README points users at: each must pass the checks
/// (secrets aside: they name credentials this machine does not have), and so must the
/// templates beside them.
#[test]
fn the_example_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            // Their templates are installed under /etc/tokenkeeper/templates; here they are
            // read from config/templates.
            let text = std::fs::read_to_string(&path).unwrap().replace(
                "/etc/tokenkeeper/templates/",
                &format!("{}/templates/", dir.display()),
            );
            if let Err(e) = tokenkeeper::config::parse(&text, &path) {
                panic!("{}: {e:?}", path.display());
            }
            seen += 1;
        }
    }
    assert!(seen >= 4, "{seen}");
}
