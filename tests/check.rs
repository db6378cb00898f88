//! `tokenkeeper check` and `run` on bad configs: exit 78 with a message naming the problem.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use common::BIN;

/// A valid config; each case below breaks one thing in it.
const GOOD: &str = r#"
providers:
  vf:
    kind: voucherify
    base_url: http://127.0.0.1:9
    app_id: { env: TK_CHECK_APP_ID }
    app_token: { env: TK_CHECK_APP_TOKEN }
scope_sets:
  - name: orders-sync
    provider: vf
    scopes: [orders, customers]
    file: { path: /run/tk-test/orders.token, mode: "0640" }
  - name: reports
    provider: vf
    scopes: [vouchers]
    file: { path: /run/tk-test/reports.json, format: json }
"#;

fn tokenkeeper(cmd: &str, dir: &std::path::Path, yaml: &str, env: &[(&str, &str)]) -> Output {
    tokenkeeper_args(cmd, dir, yaml, env, &[])
}

fn tokenkeeper_args(
    cmd: &str,
    dir: &std::path::Path,
    yaml: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> Output {
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut c = Command::new(BIN);
    c.args([cmd, "-c", path.to_str().unwrap()])
        .args(args)
        .env("TK_CHECK_APP_ID", "id")
        .env("TK_CHECK_APP_TOKEN", "token")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_good_config_passes() {
    let dir = tempfile::tempdir().unwrap();
    let o = tokenkeeper("check", dir.path(), GOOD, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok (2 scope sets, 1 provider)"));
}

#[test]
fn each_bad_config_exits_78_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("open-key");
    std::fs::write(&key, "k").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let open_key = format!("app_token: {{ file: {} }}", key.display());
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key, with its line",
            GOOD.replace("scopes: [vouchers]", "scopes: [vouchers]\n    scope: [x]"),
            ":16:5: scope_sets[1] (reports): unknown key `scope`",
        ),
        (
            "duplicate set names",
            GOOD.replace("name: reports", "name: orders-sync"),
            "scope set name `orders-sync` is used twice",
        ),
        (
            "two sets writing the same file",
            GOOD.replace("/run/tk-test/reports.json", "/run/tk-test/orders.token"),
            "is also the file of scope_sets[0] (orders-sync)",
        ),
        (
            "unknown provider",
            GOOD.replace(
                "provider: vf\n    scopes: [vouchers]",
                "provider: nope\n    scopes: [vouchers]",
            ),
            "unknown provider `nope`",
        ),
        (
            "empty scopes",
            GOOD.replace("scopes: [vouchers]", "scopes: []"),
            "scopes is empty",
        ),
        (
            "scope with a comma",
            GOOD.replace("scopes: [vouchers]", "scopes: [\"vouchers,campaigns\"]"),
            "contains a comma",
        ),
        (
            "scope with a space",
            GOOD.replace("scopes: [vouchers]", "scopes: [\"vouchers campaigns\"]"),
            "contains whitespace",
        ),
        (
            "mode as an integer",
            GOOD.replace("mode: \"0640\"", "mode: 640"),
            "mode must be a quoted octal string",
        ),
        (
            "relative file path",
            GOOD.replace("/run/tk-test/reports.json", "reports.json"),
            "must be an absolute path",
        ),
        (
            "http to a remote host",
            GOOD.replace("http://127.0.0.1:9", "http://api.voucherify.io"),
            "http:// is allowed only for loopback hosts",
        ),
        (
            "missing environment variable",
            GOOD.replace("TK_CHECK_APP_ID", "TK_CHECK_NOT_SET"),
            "environment variable TK_CHECK_NOT_SET is not set",
        ),
        (
            "missing secret file",
            GOOD.replace(
                "app_token: { env: TK_CHECK_APP_TOKEN }",
                "app_token: { file: /nonexistent/key }",
            ),
            "cannot read /nonexistent/key",
        ),
        (
            "secret file readable by others",
            GOOD.replace("app_token: { env: TK_CHECK_APP_TOKEN }", &open_key),
            "is readable by group or others (mode 0644)",
        ),
        (
            "YAML syntax error, with line and column",
            GOOD.replace("scopes: [vouchers]", "scopes: [vouchers"),
            "config.yaml:16:9: did not find expected",
        ),
    ];
    for (what, yaml, want) in &cases {
        let o = tokenkeeper("check", dir.path(), yaml, &[]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(78), "{what}: {err}");
        assert!(err.contains(want), "{what}: want {want:?} in:\n{err}");
    }
}

#[test]
fn a_missing_credential_fails_check_inside_systemd_and_outside() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = GOOD.replace(
        "app_id: { env: TK_CHECK_APP_ID }",
        "app_id: { credential: vf-id }",
    );
    // Outside the service, check looks where the shipped unit loads credentials from.
    let unit_folder = dir.path().join("unit-creds");
    std::fs::create_dir(&unit_folder).unwrap();
    let folder_arg = ["--credentials-dir", unit_folder.to_str().unwrap()];
    let o = tokenkeeper_args("check", dir.path(), &yaml, &[], &folder_arg);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    let want = format!(
        "systemd credential vf-id: there is no {}",
        unit_folder.join("vf-id").display()
    );
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    assert!(stderr(&o).contains("providers.vf.app_id"), "{}", stderr(&o));
    std::fs::write(unit_folder.join("vf-id"), "id").unwrap();
    let o = tokenkeeper_args("check", dir.path(), &yaml, &[], &folder_arg);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("not checked"), "{}", stderr(&o));
    // By default, the shipped unit's folder.
    if !std::path::Path::new("/etc/tokenkeeper/credentials/vf-id").exists() {
        let o = tokenkeeper("check", dir.path(), &yaml, &[]);
        assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("there is no /etc/tokenkeeper/credentials/vf-id"),
            "{}",
            stderr(&o)
        );
    }

    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    let env = [("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())];
    let o = tokenkeeper("check", dir.path(), &yaml, &env);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    assert!(stderr(&o).contains("providers.vf.app_id"), "{}", stderr(&o));

    std::fs::write(creds.join("vf-id"), "id").unwrap();
    let o = tokenkeeper("check", dir.path(), &yaml, &env);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// The shipped unit loads the whole credentials folder under the ID `tokenkeeper`, and systemd
/// names each of its files `tokenkeeper_FILE`: `{ credential: NAME }` finds the file NAME so,
/// and a credential loaded under its own name still comes first.
#[test]
fn a_credential_is_found_in_the_folder_the_unit_loads() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = GOOD.replace(
        "app_id: { env: TK_CHECK_APP_ID }",
        "app_id: { credential: vf-id }",
    );
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    let env = [("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())];
    // Another folder's file, or the name alone with another prefix, is not it.
    std::fs::write(creds.join("other_vf-id"), "id").unwrap();
    let o = tokenkeeper("check", dir.path(), &yaml, &env);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("creds/vf-id"),
        "names the credential it looked for: {}",
        stderr(&o)
    );

    std::fs::write(creds.join("tokenkeeper_vf-id"), "id").unwrap();
    let o = tokenkeeper("check", dir.path(), &yaml, &env);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // A credential of its own name wins over the folder's file: an empty one is refused.
    std::fs::write(creds.join("vf-id"), "").unwrap();
    let o = tokenkeeper("check", dir.path(), &yaml, &env);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
}

#[test]
fn an_undocumented_scope_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let o = tokenkeeper(
        "check",
        dir.path(),
        &GOOD.replace("scopes: [vouchers]", "scopes: [vouchers, brand-new-scope]"),
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning:") && stderr(&o).contains("brand-new-scope"));
}

#[test]
fn several_problems_are_all_listed() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = GOOD
        .replace("mode: \"0640\"", "mode: 640")
        .replace("scopes: [vouchers]", "scopes: []")
        .replace("TK_CHECK_APP_ID", "TK_CHECK_NOT_SET");
    let o = tokenkeeper("check", dir.path(), &yaml, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(78));
    for want in [
        "mode must be",
        "scopes is empty",
        "TK_CHECK_NOT_SET",
        "3 problem(s)",
    ] {
        assert!(err.contains(want), "want {want:?} in:\n{err}");
    }
}

#[test]
fn run_refuses_a_bad_config_before_doing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("never.token");
    let yaml = GOOD
        .replace("/run/tk-test/orders.token", target.to_str().unwrap())
        .replace("scopes: [vouchers]", "scopes: []");
    let o = tokenkeeper("run", dir.path(), &yaml, &[]);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    assert!(stderr(&o).contains("scopes is empty"));
    assert!(!target.exists());
}

#[test]
fn a_metrics_textfile_in_a_folder_that_does_not_exist_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("textfile_collector");
    let yaml = format!(
        "metrics: {{ textfile: {}/tokenkeeper.prom }}\n{GOOD}",
        missing.display()
    );
    let o = tokenkeeper("check", dir.path(), &yaml, &[]);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    let want = format!(
        "metrics.textfile: the textfile's folder {} does not exist",
        missing.display()
    );
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    // `run` refuses it too, before doing anything.
    let o = tokenkeeper("run", dir.path(), &yaml, &[]);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    std::fs::create_dir(&missing).unwrap();
    let o = tokenkeeper("check", dir.path(), &yaml, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn every_key_given_twice_in_one_mapping_is_refused_naming_both_lines() {
    let dir = tempfile::tempdir().unwrap();
    // A provider named twice (the second would replace the first), and a mode given twice.
    let yaml = GOOD
        .replace(
            "scope_sets:\n",
            "  vf:\n    kind: voucherify\n    base_url: http://127.0.0.1:10\n    app_id: { env: TK_CHECK_APP_ID }\n    app_token: { env: TK_CHECK_APP_TOKEN }\nscope_sets:\n",
        )
        .replace("mode: \"0640\" }", "mode: \"0640\", mode: \"0600\" }");
    let o = tokenkeeper("check", dir.path(), &yaml, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(
        err.contains("config.yaml:8:3: providers: `vf` is given twice in this mapping, at line 3 and again at line 8: keep one"),
        "{err}"
    );
    assert!(
        err.contains("scope_sets[0].file: `mode` is given twice in this mapping, at line 17 and again at line 17"),
        "{err}"
    );
    assert!(err.contains("2 problem(s)"), "{err}");
}
