//! `file.template` with the built binary: `check` refusing broken templates, `run` rendering
//! and re-reading at SIGHUP, `once` and `exec` rendering, and a template that fails only
//! with a real token making its set fail without quoting the token.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const INI: &str = "[auth]\ntoken = {{ access_token }}\nexpires = {{ expires_at }}\nset = {{ set }}/{{ provider }}/{{ scope }}\n";

fn template_set(name: &str, path: &Path, template: &Path) -> String {
    format!(
        "  - name: {name}\n    provider: dev\n    scopes: [api]\n    file: {{ path: {}, template: {}, mode: \"0640\" }}\n",
        path.display(),
        template.display()
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `check -c`, with the test's credentials: exit code and stderr.
fn check(cfg: &Path) -> (Option<i32>, String) {
    let o = Command::new(BIN)
        .args(["check", "-c", cfg.to_str().unwrap()])
        .env("TK_TEST_APP_ID", "id")
        .env("TK_TEST_APP_TOKEN", "token")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn token_line(text: &str) -> &str {
    text.lines()
        .find_map(|l| l.strip_prefix("token = "))
        .unwrap_or_else(|| panic!("no token line in {text:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn check_refuses_a_broken_template_naming_it_its_line_and_the_name() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("app.ini");
    let t = dir.path().join("app.ini.tmpl");
    let cfg = write(
        dir.path(),
        "config.yaml",
        &config(&p, dir.path(), "", &template_set("legacy", &f, &t)),
    );
    std::fs::write(&t, INI).unwrap();
    let (code, err) = check(&cfg);
    assert_eq!(code, Some(0), "{err}");

    let tp = t.display().to_string();
    let cases = [
        (
            "an unknown variable, in a branch not taken",
            "[auth]\n{% if false %}\ntoken = {{ acess_token }}\n{% endif %}\n",
            format!("template {tp}, line 3: unknown variable `acess_token`"),
        ),
        (
            "a syntax error",
            "[auth]\ntoken = {{ access_token }\n",
            format!("template {tp}, line 2: syntax error"),
        ),
        (
            "an unknown filter",
            "token = {{ access_token | yaml }}\n",
            format!("template {tp}, line 1:"),
        ),
    ];
    for (what, text, want) in &cases {
        std::fs::write(&t, text).unwrap();
        let (code, err) = check(&cfg);
        assert_eq!(code, Some(78), "{what}: {err}");
        assert!(
            err.contains(want.as_str()),
            "{what}: want {want:?} in:\n{err}"
        );
        assert!(
            err.contains("scope_sets[0] (legacy).file.template"),
            "{what}: {err}"
        );
    }
    // A format beside the template: refused, and the template checked all the same.
    std::fs::write(&t, "{{ nope }}").unwrap();
    let both = config(&p, dir.path(), "", &template_set("legacy", &f, &t))
        .replace("mode: \"0640\"", "format: json");
    std::fs::write(&cfg, both).unwrap();
    let (code, err) = check(&cfg);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("`format` and `template` exclude each other"),
        "{err}"
    );
    assert!(err.contains("unknown variable `nope`"), "{err}");

    std::fs::remove_file(&t).unwrap();
    let (code, err) = check(&cfg);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains(&format!("cannot read template {tp}")), "{err}");
    std::fs::create_dir(&t).unwrap();
    let (code, err) = check(&cfg);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("not a regular file"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_renders_the_template_rereads_it_at_sighup_and_removes_the_file_at_stop() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("app/app.ini");
    let t = write(dir.path(), "app.ini.tmpl", INI);
    let cfg = write(
        dir.path(),
        "config.yaml",
        &config(&p, dir.path(), "", &template_set("legacy", &f, &t)),
    );
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[],
    );
    d.wait_for_log("ready").await;
    let text = read(&f).unwrap();
    let token = token_line(&text).to_string();
    assert_eq!(p.live_tokens(), vec![token.clone()]);
    assert!(text.starts_with("[auth]\ntoken = "), "{text}");
    assert!(text.ends_with("set = legacy/dev/api\n"), "{text:?}");
    assert_eq!(mode(&f), 0o640);

    // A changed template, read at SIGHUP: the file takes its shape, with the same token.
    std::fs::write(
        &t,
        "<auth token={{ access_token | xml | json }} until=\"{{ expires_at_unix }}\"/>\n",
    )
    .unwrap();
    d.signal(Signal::SIGHUP);
    assert!(
        wait_until(PATIENCE, || read(&f)
            .is_some_and(|x| x.starts_with("<auth")))
        .await,
        "{}",
        d.output()
    );
    let text = read(&f).unwrap();
    assert!(
        text.starts_with(&format!("<auth token=\"{token}\" until=\"")),
        "{text}"
    );
    assert_eq!(p.issued_tokens().len(), 1, "{}", d.output());

    // A broken template at SIGHUP is refused like any broken config; the file stays.
    std::fs::write(&t, "{{ nope }}").unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_for_log("reload refused").await;
    assert_eq!(read(&f).unwrap(), text);

    stop_clean(&mut d).await;
    assert!(!f.exists(), "{}", d.output());
    assert!(p.live_tokens().is_empty());
    assert!(!d.output().contains(&token), "{}", d.output());
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

#[tokio::test(flavor = "multi_thread")]
async fn once_and_exec_render_the_template() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("app.ini");
    let t = write(dir.path(), "app.ini.tmpl", INI);
    let cfg = write(
        dir.path(),
        "config.yaml",
        &config(&p, dir.path(), "", &template_set("legacy", &f, &t)),
    );
    let c = cfg.to_str().unwrap();
    let mut d = Daemon::spawn(dir.path(), &["once", "-c", c], 0o022, &[]);
    assert_eq!(d.wait(PATIENCE).await.code(), Some(0), "{}", d.output());
    let token = token_line(&read(&f).unwrap()).to_string();
    assert_eq!(p.live_tokens(), vec![token.clone()]);

    let seen = dir.path().join("seen");
    let script = format!(r#"cat "$TOKENKEEPER_LEGACY_FILE" > {}"#, seen.display());
    let mut d = Daemon::spawn(
        dir.path(),
        &["exec", "-c", c, "--", "/bin/sh", "-c", &script],
        0o022,
        &[],
    );
    assert_eq!(d.wait(PATIENCE).await.code(), Some(0), "{}", d.output());
    let seen = read(&seen).unwrap();
    assert!(seen.starts_with("[auth]\ntoken = "), "{seen}");
    assert!(seen.ends_with("set = legacy/dev/api\n"), "{seen:?}");
    // exec revokes what it used and removes the file.
    assert!(p.live_tokens().is_empty(), "{}", d.output());
    assert!(!f.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_that_fails_only_with_a_real_token_fails_its_set_without_quoting_it() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("app.ini");
    // Valid, and fine with check's stand-in token; a division by zero with any other.
    let t = write(
        dir.path(),
        "app.ini.tmpl",
        "[auth]\n{% if access_token != \"tokenkeeper-check-stand-in-token\" %}token = {{ access_token ~ (1 / 0) }}{% endif %}\n",
    );
    let cfg = write(
        dir.path(),
        "config.yaml",
        &config(&p, dir.path(), "", &template_set("legacy", &f, &t)),
    );
    assert_eq!(check(&cfg).0, Some(0));
    let mut d = Daemon::spawn(
        dir.path(),
        &["once", "-c", cfg.to_str().unwrap(), "--timeout", "3s"],
        0o022,
        &[],
    );
    assert_eq!(d.wait(PATIENCE).await.code(), Some(69), "{}", d.output());
    let out = d.output();
    assert!(out.contains("no valid token for: legacy"), "{out}");
    assert!(
        out.contains(&format!(
            "template {}, line 2: invalid operation",
            t.display()
        )),
        "{out}"
    );
    assert!(!f.exists());
    let issued = p.issued_tokens();
    assert!(!issued.is_empty());
    for token in &issued {
        assert!(
            !out.contains(token.as_str()),
            "the token is in the output:\n{out}"
        );
    }
}
