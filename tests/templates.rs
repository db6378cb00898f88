//! `file.template` with the built binary: `check` refusing broken templates, `run` rendering
//! and re-reading at SIGHUP, `once` and `exec` rendering, and a template that fails only
//! with a real token making its set fail without quoting the token.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;
mod fakes;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// Valid, and fine with check's stand-in token; a division by zero on line 2 with any other.
const FAILS_WITH_A_REAL_TOKEN: &str = "[auth]\n{% if access_token != \"tokenkeeper-check-stand-in-token\" %}token = {{ access_token | length / 0 }}{% endif %}\n";

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
    let t = write(dir.path(), "app.ini.tmpl", FAILS_WITH_A_REAL_TOKEN);
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

/// How many times `needle` is in the daemon's output so far.
fn count(d: &Daemon, needle: &str) -> usize {
    d.output().matches(needle).count()
}

/// Sends SIGHUP and waits for the reload to be refused, returning the output.
async fn refused_reload(d: &Daemon) -> String {
    let before = count(d, "reload refused");
    d.signal(Signal::SIGHUP);
    assert!(
        wait_until(PATIENCE, || count(d, "reload refused") > before).await,
        "{}",
        d.output()
    );
    d.output()
}

#[tokio::test(flavor = "multi_thread")]
async fn template_sources_an_outsider_could_control_are_refused() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = d.join("app.ini");
    let good = write(d, "app.ini.tmpl", INI);
    // With the key read from `key` when asked.
    let with_template = |t: &Path, key: Option<&Path>| {
        let mut text = config(&p, d, "", &template_set("legacy", &f, t));
        if let Some(key) = key {
            text = text.replace(
                "app_id: { env: TK_TEST_APP_ID }",
                &format!("app_id: {{ file: {} }}", key.display()),
            );
        }
        write(d, "config.yaml", &text)
    };
    let cfg = with_template(&good, None);
    assert_eq!(check(&cfg).0, Some(0), "{}", check(&cfg).1);

    // The daemon's own secrets, named directly or through a link.
    let state = d.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let journal = write(&state, "journal.log", "");
    let key = write(d, "app_token", "key-SECRET\n");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key_link = d.join("key-link.tmpl");
    symlink(&key, &key_link).unwrap();
    let env_link_dir = d.join("proc-link");
    symlink("/proc/self", &env_link_dir).unwrap();
    let cases: Vec<(&str, PathBuf, Option<&Path>, &str)> = vec![
        (
            "the journal",
            journal.clone(),
            None,
            "whose journal holds every live token",
        ),
        (
            "the config itself",
            d.join("config.yaml"),
            None,
            "is the configuration file",
        ),
        ("a key file", key.clone(), Some(&key), "is the secret file"),
        (
            "a key file through a link",
            key_link.clone(),
            Some(&key),
            "is the secret file",
        ),
        (
            "the environment",
            PathBuf::from("/proc/self/environ"),
            None,
            "is under /proc",
        ),
        (
            "the environment through a link",
            env_link_dir.join("environ"),
            None,
            "is under /proc",
        ),
    ];
    for (what, t, key, want) in &cases {
        let cfg = with_template(t, *key);
        let (code, err) = check(&cfg);
        assert_eq!(code, Some(78), "{what}: {err}");
        assert!(err.contains(want), "{what}: want {want:?} in:\n{err}");
        assert!(!err.contains("SECRET"), "{err}");
    }

    // Files and directories another user owns or may write: `nobody` stands for them.
    let nobody = nix::unistd::Uid::from_raw(65534);
    let theirs = d.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    let in_theirs = write(&theirs, "app.ini.tmpl", INI);
    std::os::unix::fs::chown(&theirs, Some(nobody.as_raw()), None).unwrap();
    let open = d.join("open");
    std::fs::create_dir(&open).unwrap();
    let in_open = write(&open, "app.ini.tmpl", INI);
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let group = d.join("group");
    std::fs::create_dir(&group).unwrap();
    let in_group = write(&group, "app.ini.tmpl", INI);
    std::fs::set_permissions(&group, std::fs::Permissions::from_mode(0o775)).unwrap();
    let their_file = write(d, "their.tmpl", INI);
    std::os::unix::fs::chown(&their_file, Some(nobody.as_raw()), None).unwrap();
    let writable = write(d, "writable.tmpl", INI);
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o666)).unwrap();
    let link = d.join("link.tmpl");
    symlink(&good, &link).unwrap();
    let cases = [
        (
            "a directory another user owns",
            in_theirs,
            "is owned by uid 65534",
        ),
        (
            "a directory others may write",
            in_open,
            "is writable by group or others without the sticky bit",
        ),
        (
            "a directory the group may write",
            in_group,
            "is writable by group or others without the sticky bit",
        ),
        (
            "a file another user owns",
            their_file,
            "is owned by uid 65534",
        ),
        (
            "a file others may write",
            writable,
            "is writable by group or others (mode 0666)",
        ),
        ("a symlink", link, "is a symlink"),
    ];
    for (what, t, want) in &cases {
        let cfg = with_template(t, None);
        let (code, err) = check(&cfg);
        assert_eq!(code, Some(78), "{what}: {err}");
        assert!(err.contains(want), "{what}: want {want:?} in:\n{err}");
        let mut run = Daemon::spawn(d, &["run", "-c", cfg.to_str().unwrap()], 0o022, &[]);
        assert_eq!(
            run.wait(PATIENCE).await.code(),
            Some(78),
            "{what}: {}",
            run.output()
        );
        assert!(run.output().contains(want), "{what}: {}", run.output());
    }
    std::fs::remove_file(&journal).unwrap();

    // At every read, not only at `check`: a template swapped for a link to a secret before a
    // reload is refused, and the file keeps what it held.
    let cfg = with_template(&good, None);
    let mut run = Daemon::spawn(d, &["run", "-c", cfg.to_str().unwrap()], 0o022, &[]);
    run.wait_for_log("ready").await;
    let before = read(&f).unwrap();
    std::fs::remove_file(&good).unwrap();
    symlink(&key, &good).unwrap();
    let out = refused_reload(&run).await;
    assert!(out.contains("is a symlink"), "{out}");
    std::fs::remove_file(&good).unwrap();
    write(d, "app.ini.tmpl", INI);
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o664)).unwrap();
    let out = refused_reload(&run).await;
    assert!(
        out.contains("is writable by group or others (mode 0664)"),
        "{out}"
    );
    assert_eq!(read(&f).unwrap(), before);
    stop_clean(&mut run).await;
    assert!(!run.output().contains("SECRET"), "{}", run.output());
}

/// `check -c CFG` as [`check`] runs it, and the largest resident set it reached, in KiB: its
/// own, from wait4(2), not the largest of every child this test binary has run.
fn check_with_peak(cfg: &Path) -> ((Option<i32>, String), u64) {
    let dir = tempfile::tempdir().unwrap();
    let err = dir.path().join("stderr");
    // Reaped by wait4 below, which std's wait cannot do: it alone gives the child's rusage.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(BIN)
        .args(["check", "-c", cfg.to_str().unwrap()])
        .env("TK_TEST_APP_ID", "id")
        .env("TK_TEST_APP_TOKEN", "token")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let mut status = 0;
    // SAFETY: a plain struct of integers, which wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing only into the two locals.
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let stderr = std::fs::read_to_string(&err).unwrap();
    ((code, stderr), u64::try_from(usage.ru_maxrss).unwrap())
}

/// What no template may make the daemon or `check` hold: a few times a template's bound.
const MEMORY_CEILING_KIB: u64 = 200 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn a_template_cannot_exhaust_memory_at_check_or_reload() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = d.join("app.ini");
    let t = write(d, "app.ini.tmpl", INI);
    let cfg = write(
        d,
        "config.yaml",
        &config(&p, d, "", &template_set("legacy", &f, &t)),
    );
    let doubling: String = std::iter::once("{% set a0 = access_token %}".to_string())
        .chain((1..=26).map(|i| format!("{{% set a{i} = a{} ~ a{} %}}", i - 1, i - 1)))
        .chain(std::iter::once("{{ a26 | length }}".to_string()))
        .collect();
    let lists: String = std::iter::once("{% set l0 = [access_token, access_token] %}".to_string())
        .chain((1..=26).map(|i| format!("{{% set l{i} = [l{}, l{}] %}}", i - 1, i - 1)))
        .chain(std::iter::once("{{ l26 }}".to_string()))
        .collect();
    let outside = "not part of the template language";
    let hostile = [
        // 85 bytes: a 100 MB string, printed eight times.
        ("{% set s = \"x\" * 100000000 %}{{ s }}{{ s }}{{ s }}{{ s }}{{ s }}{{ s }}{{ s }}{{ s }}".to_string(), outside),
        // A string doubled line by line: 32 bytes to 2 GB in 26 lines.
        (doubling, outside),
        // Lists of lists cost nothing to build, but printed they are the doubled text.
        (lists, "renders to more than the 2097152 bytes a token file may hold"),
    ];
    let checked: Vec<_> = hostile
        .iter()
        .map(|(text, _)| {
            std::fs::write(&t, text).unwrap();
            let (result, peak) = check_with_peak(&cfg);
            // The bound first: it is the point, whatever the messages say.
            assert!(
                peak < MEMORY_CEILING_KIB,
                "check peaked at {peak} KiB for {text}"
            );
            result
        })
        .collect();
    for ((text, want), (code, err)) in hostile.iter().zip(checked) {
        assert_eq!(code, Some(78), "{text}: {err}");
        assert!(err.contains(want), "{err}");
    }

    std::fs::write(&t, INI).unwrap();
    let mut run = Daemon::spawn(d, &["run", "-c", cfg.to_str().unwrap()], 0o022, &[]);
    run.wait_for_log("ready").await;
    let before = read(&f).unwrap();
    for (text, _) in &hostile {
        std::fs::write(&t, text).unwrap();
        refused_reload(&run).await;
    }
    let peak = peak_rss_kib(run.child.id());
    assert!(peak < MEMORY_CEILING_KIB, "the daemon peaked at {peak} KiB");
    let out = run.output();
    for (_, want) in &hostile {
        assert!(out.contains(want), "{out}");
    }
    assert_eq!(read(&f).unwrap(), before);
    stop_clean(&mut run).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_failing_only_with_a_real_token_does_not_churn_tokens() {
    let p = provider(Duration::from_secs(900)).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = d.join("app.ini");
    let t = write(d, "app.ini.tmpl", FAILS_WITH_A_REAL_TOKEN);
    let cfg = write(
        d,
        "config.yaml",
        &config(&p, d, "", &template_set("legacy", &f, &t)),
    );
    let mut run = Daemon::spawn(d, &["run", "-c", cfg.to_str().unwrap()], 0o022, &[]);
    run.wait_for_log("could not write the token").await;
    // Long enough for a transient backoff (1 s, then up to 2 s and 4 s) to have issued three
    // more: a template fails the same way with the next token, so none is asked for.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let out = run.output();
    assert_eq!(p.issued_tokens().len(), 1, "{out}");
    assert!(
        p.live_tokens().is_empty(),
        "the unused token was not revoked:\n{out}"
    );
    assert!(!f.exists());
    stop_clean(&mut run).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn filter_output_parses_in_its_format_or_the_value_is_refused() {
    let idp = fakes::oauth2::OAuth2Fake::start("client_secret_post", "tk", "pw").await;
    // What a provider may put in `scope`: valid JSON, yet not YAML's printable set (U+FFFE,
    // U+FFFF, DEL), read by YAML 1.1 as line breaks (U+2028, U+2029), or a BOM; and XML 1.0
    // can hold neither U+FFFE nor U+FFFF at all.
    let hostile = "orders\u{fffe}a\u{ffff}b\u{7f}c\u{2028}d\u{2029}e\u{feff}f\"g";
    idp.state().answer_scope = Some(hostile.into());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (yaml, xml) = (d.join("app.yaml"), d.join("app.xml"));
    let yaml_t = write(
        d,
        "app.yaml.tmpl",
        "token: {{ access_token | json }}\nscope: {{ scope | json }}\n",
    );
    let xml_t = write(
        d,
        "app.xml.tmpl",
        "<auth token=\"{{ access_token | xml }}\" scope=\"{{ scope | xml }}\"/>\n",
    );
    let set = |name: &str, path: &Path, t: &Path| {
        format!(
            "  - name: {name}\n    provider: idp\n    scopes: [orders]\n    file: {{ path: {}, template: {} }}\n",
            path.display(),
            t.display()
        )
    };
    let cfg = format!(
        "state_dir: {}/state\nproviders:\n  idp:\n    kind: oauth2\n    issuer: {}\n    client_id: tk\n    client_secret: {{ env: TK_IDP_SECRET }}\n    auth_method: client_secret_post\nscope_sets:\n{}{}",
        d.display(),
        idp.issuer(),
        set("yaml", &yaml, &yaml_t),
        set("xml", &xml, &xml_t)
    );
    let cfg = write(d, "config.yaml", &cfg);
    let mut run = Daemon::spawn(
        d,
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[("TK_IDP_SECRET", "pw")],
    );
    assert!(
        wait_until(PATIENCE, || yaml.exists()
            && run.output().contains("set=xml"))
        .await,
        "{}",
        run.output()
    );
    // Each file parses in its format, or its value was refused and the file never written.
    let text = read(&yaml).unwrap();
    let parsed: serde_yaml::Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("the YAML file does not parse ({e}):\n{text:?}"));
    let scope = parsed["scope"].as_str().unwrap();
    assert!(scope.starts_with("orders"), "{scope:?}");
    assert!(scope.ends_with("f\"g"), "{scope:?}");
    match read(&xml) {
        None => assert!(run.output().contains("xml filter"), "{}", run.output()),
        Some(text) => {
            let parsed = Command::new("python3")
                .args([
                    "-c",
                    "import sys, xml.dom.minidom as m; m.parseString(sys.stdin.buffer.read())",
                ])
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin.take().unwrap().write_all(text.as_bytes())?;
                    c.wait_with_output()
                })
                .expect("python3 runs");
            assert!(
                parsed.status.success(),
                "the XML file does not parse: {}\n{text:?}",
                String::from_utf8_lossy(&parsed.stderr)
            );
        }
    }
    stop_clean(&mut run).await;
    assert!(idp.live().is_empty(), "{}", run.output());
}
