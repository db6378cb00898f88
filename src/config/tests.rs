use super::*;
use std::os::unix::fs::PermissionsExt;

use crate::budget::IssueRate;
use crate::provider::{AuthMethod, SquareGrant};
use crate::secret::Secret;
use crate::sink::FileFormat;

use super::check::valid_set_name;
use super::raw::RawSet;
use super::text::{nesting_exceeds, strip_marks};
use crate::hooks::yaml::DEFAULT_HOOK_TIMEOUT;
use crate::provider::yaml::RawProviderCommon;
use crate::provider::yaml::{
    DEFAULT_ISSUE_PER_SECOND, DEFAULT_OAUTH2_LIFETIME, DEFAULT_PROVIDER_TIMEOUT,
    VOUCHERIFY_DEFAULT_URL,
};
use crate::settings::pct;
use crate::settings::{closest, fields_of, hide_raw_names};

/// A valid config every refusal test changes in one place.
const BASE: &str = r#"
providers:
  vf:
    kind: voucherify
    cluster: eu
    app_id: { env: VF_APP_ID }
    app_token: { credential: vf-app-token }
scope_sets:
  - name: orders-sync
    provider: vf
    scopes: [orders, customers]
    file:
      path: /run/tokenkeeper/orders.token
      mode: "0600"
  - name: vouchers
    provider: vf
    scopes: [vouchers]
    file:
      path: /run/tokenkeeper/vouchers.token
"#;

fn with(replacements: &[(&str, &str)]) -> String {
    let mut text = BASE.to_string();
    for (from, to) in replacements {
        assert!(text.contains(from), "BASE has no {from:?}");
        text = text.replacen(from, to, 1);
    }
    text
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text, Path::new("test.yaml")) {
        Ok(loaded) => panic!("accepted: {:#?}", loaded.config),
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(other) => panic!("{other}"),
    }
}

#[test]
fn nesting_is_counted_in_one_pass_before_the_parser() {
    assert_eq!(nesting_exceeds(BASE, MAX_NESTING), None);
    assert_eq!(nesting_exceeds(BASE, 4), None);
    assert_eq!(nesting_exceeds(BASE, 3), Some(6));
    let flow = format!("a:\n  b: {}{}", "[".repeat(62), "]".repeat(62));
    assert_eq!(nesting_exceeds(&flow, MAX_NESTING), None);
    let flow = format!("a:\n  b: {}{}", "[".repeat(63), "]".repeat(63));
    assert_eq!(nesting_exceeds(&flow, MAX_NESTING), Some(2));
    // Brackets in quotes and comments, and lines of a block scalar, are text.
    let text = format!(
        "a: \"{deep}\"\nb: '{deep}'\nc: 1 # {deep}\nd: |\n{lines}e: >-\n{lines}f: 1\n",
        deep = "[{".repeat(100),
        lines = (1..100)
            .map(|i| format!("{}x [{{\n", " ".repeat(i)))
            .collect::<String>(),
    );
    assert_eq!(nesting_exceeds(&text, MAX_NESTING), None);
    // Compact sequences nest on one line.
    let compact = format!("a:\n{}x\n", "- ".repeat(64));
    assert_eq!(nesting_exceeds(&compact, MAX_NESTING), Some(2));
    // Multi-byte characters anywhere are fine.
    assert_eq!(nesting_exceeds("a: é|\nb: ü\n", MAX_NESTING), None);
    let deep = format!("scope_sets: {}", "[".repeat(100_000));
    let p = problems(&deep);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].message.contains("nested deeper than 64"), "{}", p[0]);
}

#[test]
fn durations_are_bounded() {
    let text = with(&[(
        "scope_sets:",
        "shutdown_timeout: 3651d
scope_sets:",
    )]);
    let p = problems(&text);
    assert!(
        p.iter()
            .any(|p| p.message.contains("must be at most 3650d (ten years)")),
        "{p:?}"
    );
    let text = with(&[(
        "scope_sets:",
        "shutdown_timeout: 3650d
scope_sets:",
    )]);
    assert_eq!(accepted(&text).config.shutdown_timeout, MAX_DURATION);
}

fn accepted(text: &str) -> Loaded {
    match parse(text, Path::new("test.yaml")) {
        Ok(loaded) => loaded,
        Err(ConfigError::Invalid { problems, .. }) => {
            let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            panic!("refused:\n{}", list.join("\n"))
        }
        Err(other) => panic!("{other}"),
    }
}

#[test]
fn rotate_and_on_rotate_parse() {
    let loaded = accepted(&with(&[(
        "      mode: \"0600\"",
        "      mode: \"0600\"\n    rotate: \"0 55 1 * * *\"\n    on_rotate:\n      exec: [/usr/bin/app-reload, --soft]\n      timeout: 5s\n      signal: { pidfile: /run/app.pid, signal: USR1 }\n      reload_unit: app.service",
    )]));
    let s = &loaded.config.sets[0];
    assert_eq!(s.rotate.as_ref().map(|r| r.as_str()), Some("0 55 1 * * *"));
    assert_eq!(
        s.on_rotate.as_deref(),
        Some(&OnRotate {
            exec: Some(vec!["/usr/bin/app-reload".into(), "--soft".into()]),
            timeout: Duration::from_secs(5),
            signal: Some(SignalHook {
                pidfile: "/run/app.pid".into(),
                signal: nix::sys::signal::Signal::SIGUSR1,
            }),
            reload_unit: Some("app.service".into()),
        })
    );
    let other = &loaded.config.sets[1];
    assert!(other.rotate.is_none() && other.on_rotate.is_none());
    let hup = accepted(&with(&[(
        "      mode: \"0600\"",
        "      mode: \"0600\"\n    on_rotate: { signal: { pidfile: /run/app.pid } }",
    )]));
    let hup = hup.config.sets[0].on_rotate.as_deref().unwrap();
    assert_eq!(hup.timeout, DEFAULT_HOOK_TIMEOUT);
    assert_eq!(
        hup.signal.as_ref().map(|s| s.signal),
        Some(nix::sys::signal::Signal::SIGHUP)
    );
}

#[test]
fn rotate_and_on_rotate_refusals() {
    let add = |extra: &str| {
        with(&[(
            "      mode: \"0600\"",
            &format!("      mode: \"0600\"\n{extra}"),
        )])
    };
    let cases: Vec<(String, &[&str])> = vec![
        (
            add("    rotate: \"0 2 * * *\""),
            &[
                "15:5: scope_sets[0] (orders-sync).rotate",
                "not a cron expression with seconds",
            ],
        ),
        (
            add("    rotate: 5"),
            &["rotate must be a quoted cron expression"],
        ),
        (add("    rotate: \"0 0 0 1 1 * 2001\""), &["never fires"]),
        (
            add("    on_rotate: { exec: [] }"),
            &["on_rotate.exec", "non-empty list"],
        ),
        (
            add("    on_rotate: { exec: \"reload app\" }"),
            &["on_rotate.exec", "no shell"],
        ),
        (
            add("    on_rotate: { exec: [/bin/true], timeout: 0s }"),
            &["on_rotate.timeout", "more than 0s"],
        ),
        (
            add("    on_rotate: { exec: [app-reload, --soft] }"),
            &[
                "on_rotate.exec",
                "`app-reload` must be an absolute path",
                "PATH is not searched",
            ],
        ),
        (
            // /tmp is writable by everyone: sticky keeps others from swapping a file of
            // root's, but not from putting a program of theirs at a name nobody has taken.
            add("    on_rotate: { exec: [/tmp/tk-no-such-dir/app-reload] }"),
            &[
                "on_rotate.exec",
                "its directory /tmp (mode 1777) lets group or others make it",
                "who could choose what runs",
            ],
        ),
        (
            add("    on_rotate: { signal: { pidfile: app.pid, signal: KILL } }"),
            &[
                "on_rotate.signal.pidfile",
                "absolute",
                "signal `SIGKILL` must be one of",
            ],
        ),
        (
            add("    on_rotate: { signal: {} }"),
            &["on_rotate.signal: missing `pidfile`"],
        ),
        (
            add("    on_rotate: { reload_unit: \"--all\" }"),
            &["on_rotate.reload_unit"],
        ),
        (
            add("    on_rotate: { exce: [a] }"),
            &["unknown key `exce` (did you mean `exec`?)"],
        ),
    ];
    for (text, wanted) in cases {
        let all: Vec<String> = problems(&text).iter().map(|p| p.to_string()).collect();
        let joined = all.join("\n");
        for w in wanted {
            assert!(joined.contains(w), "{w:?} not in:\n{joined}");
        }
    }
}

#[test]
fn provider_budget_has_defaults_and_can_be_set() {
    let vf = &accepted(BASE).config.providers["vf"];
    assert_eq!(vf.max_live_tokens, 1000);
    assert_eq!(vf.issue_rate.per_second, 10.0);
    assert_eq!(vf.issue_rate.burst, 100);
    let text = BASE.replace(
        "    cluster: eu\n",
        "    cluster: eu\n    max_live_tokens: 200\n    issue_rate: 120/m\n    issue_burst: 5\n",
    );
    let vf = &accepted(&text).config.providers["vf"];
    assert_eq!(vf.max_live_tokens, 200);
    assert_eq!(vf.issue_rate.per_second, 2.0);
    assert_eq!(vf.issue_rate.burst, 5);
    for (bad, want) in [
        (
            "    max_live_tokens: 0\n",
            "max_live_tokens must be a whole number above 0",
        ),
        (
            "    max_live_tokens: \"10\"\n",
            "max_live_tokens must be a whole number above 0",
        ),
        ("    issue_rate: 10\n", "issue_rate must be a rate such as"),
        (
            "    issue_rate: 10/d\n",
            "issue_rate must be a rate such as",
        ),
        (
            "    issue_burst: -1\n",
            "issue_burst must be a whole number above 0",
        ),
    ] {
        let text = BASE.replace("    cluster: eu\n", &format!("    cluster: eu\n{bad}"));
        let Err(ConfigError::Invalid { problems, .. }) = parse(&text, Path::new("t.yaml")) else {
            panic!("{bad:?} accepted")
        };
        assert!(
            problems.iter().any(|p| p.message.contains(want)),
            "{bad:?}: {problems:?}"
        );
    }
}

#[test]
fn full_config_parses_with_defaults_and_overrides() {
    let text = r#"
state_dir: /var/lib/tk
shutdown_timeout: 45s
log_level: info
defaults:
  refresh: { at: 70%, jitter: 12.5%, min_interval: 2s }
  file: { mode: "0600", format: json }
  on_shutdown: keep
  revoke_superseded_after: 30s
providers:
  voucherify-eu:
    kind: voucherify
    base_url: https://api.voucherify.io/
    app_id: { credential: voucherify-app-id }
    app_token: { file: /etc/tokenkeeper/app-token }
    timeout: 10s
  us:
    kind: voucherify
    cluster: us1
    app_id: { env: US_APP_ID }
    app_token: { env: US_APP_TOKEN }
scope_sets:
  - name: orders-sync
    provider: voucherify-eu
    scopes: [orders, customers]
    file:
      path: /run/tokenkeeper/orders-sync.token
      format: raw
      mode: "0640"
      owner: root
      group: "0"
    refresh: { jitter: 5% }
    on_shutdown: revoke
    revoke_superseded_after: 0s
  - name: us_1
    provider: us
    scopes: [vouchers]
    file: { path: /run/tokenkeeper//./us.token, owner: 1000 }
"#;
    let loaded = accepted(text);
    let c = &loaded.config;
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/tk"));
    assert_eq!(c.shutdown_timeout, Duration::from_secs(45));
    assert_eq!(c.log_level.as_deref(), Some("info"));

    let eu = &c.providers["voucherify-eu"];
    assert_eq!(eu.timeout, Duration::from_secs(10));
    let ProviderKind::Voucherify {
        base_url,
        app_id,
        app_token,
    } = &eu.kind
    else {
        panic!("not voucherify")
    };
    assert_eq!(base_url.as_str(), "https://api.voucherify.io/");
    assert_eq!(base_url.path(), "/");
    assert_eq!(
        app_id,
        &SecretSource::Credential("voucherify-app-id".into())
    );
    assert_eq!(
        app_token,
        &SecretSource::File("/etc/tokenkeeper/app-token".into())
    );
    let us = &c.providers["us"];
    assert_eq!(us.timeout, DEFAULT_PROVIDER_TIMEOUT);
    let ProviderKind::Voucherify { base_url, .. } = &us.kind else {
        panic!("not voucherify")
    };
    assert_eq!(base_url.as_str(), "https://us1.api.voucherify.io/");

    let [orders, us_set] = c.sets.as_slice() else {
        panic!("{:?}", c.sets)
    };
    assert_eq!(orders.name, "orders-sync");
    assert_eq!(orders.provider, "voucherify-eu");
    assert_eq!(orders.scopes, ["orders", "customers"]);
    assert_eq!(
        orders.file.as_ref().unwrap(),
        &FileConfig {
            path: "/run/tokenkeeper/orders-sync.token".into(),
            format: FileFormat::Raw,
            mode: 0o640,
            owner: Some(0),
            group: Some(0),
        }
    );
    // jitter overridden, at and min_interval inherited from defaults.
    assert_eq!(orders.refresh.at, 0.70);
    assert_eq!(orders.refresh.jitter, 0.05);
    assert_eq!(orders.refresh.min_interval, Duration::from_secs(2));
    assert_eq!(orders.on_shutdown, OnShutdown::Revoke);
    assert_eq!(orders.revoke_superseded_after, Duration::ZERO);

    assert_eq!(
        us_set.file.as_ref().unwrap().path,
        PathBuf::from("/run/tokenkeeper/us.token")
    );
    assert_eq!(us_set.file.as_ref().unwrap().format, FileFormat::Json);
    assert_eq!(us_set.file.as_ref().unwrap().mode, 0o600);
    assert_eq!(us_set.file.as_ref().unwrap().owner, Some(1000));
    assert_eq!(us_set.file.as_ref().unwrap().group, None);
    assert_eq!(us_set.refresh.at, 0.70);
    assert_eq!(us_set.refresh.jitter, 0.125);
    assert_eq!(us_set.on_shutdown, OnShutdown::Keep);
    assert_eq!(us_set.revoke_superseded_after, Duration::from_secs(30));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn metrics_outputs_parse() {
    let c = accepted(&format!(
        "metrics: {{ textfile: /var/lib/node_exporter/textfile_collector/tokenkeeper.prom, listen: \"[::1]:9464\" }}\n{BASE}"
    ))
    .config;
    assert_eq!(
        c.metrics,
        MetricsConfig {
            textfile: Some(PathBuf::from(
                "/var/lib/node_exporter/textfile_collector/tokenkeeper.prom"
            )),
            listen: Some("[::1]:9464".parse().unwrap()),
        }
    );
}

#[test]
fn built_in_defaults() {
    let c = accepted(BASE).config;
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/tokenkeeper"));
    assert_eq!(c.shutdown_timeout, Duration::from_secs(20));
    assert_eq!(c.log_level, None);
    assert_eq!(c.metrics, MetricsConfig::default());
    let ProviderKind::Voucherify { base_url, .. } = &c.providers["vf"].kind else {
        panic!("not voucherify")
    };
    assert_eq!(base_url.as_str(), "https://api.voucherify.io/");
    let set = &c.sets[1];
    assert_eq!(
        set.refresh,
        RefreshPolicy {
            at: 0.66,
            jitter: 0.10,
            min_interval: Duration::from_secs(1)
        }
    );
    assert_eq!(set.file.as_ref().unwrap().mode, 0o640);
    assert_eq!(set.file.as_ref().unwrap().format, FileFormat::Raw);
    assert_eq!(set.on_shutdown, OnShutdown::Revoke);
    assert_eq!(set.revoke_superseded_after, Duration::from_secs(60));
    assert_eq!(c.sets[0].file.as_ref().unwrap().mode, 0o600);
}

/// Each refusal: (what it tests, config text, words one problem's Display must contain).
#[test]
fn refusals_name_the_rule() {
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "unknown key with line number",
            with(&[("      mode: \"0600\"", "      mdoe: \"0600\"")]),
            &[
                "14:7: scope_sets[0] (orders-sync).file: unknown key `mdoe` (did you mean `mode`?)",
            ],
        ),
        (
            "unknown store kind",
            format!("{BASE}stores:\n  s:\n    kind: consul\n    address: http://127.0.0.1:1\n    auth: {{ token: {{ env: T }} }}\n"),
            &["stores.s.kind: unknown store kind `consul`"],
        ),
        (
            "a set naming an unknown store",
            format!("{BASE}stores:\n  s:\n    kind: vault\n    address: http://127.0.0.1:1\n    auth: {{ token: {{ env: T }} }}\n")
                .replace("    file:", "    store: { name: nope, path: a/b }\n    file:"),
            &["store.name: unknown store `nope`; known stores: `s`"],
        ),
        (
            "a store path with ..",
            format!("{BASE}stores:\n  s:\n    kind: vault\n    address: http://127.0.0.1:1\n    auth: {{ token: {{ env: T }} }}\n")
                .replace("    file:", "    store: { name: s, path: a/../b }\n    file:"),
            &["store.path: path `a/../b` must be relative segments"],
        ),
        (
            "a set with neither file nor store",
            BASE.replace("    file:\n      path: /run/tokenkeeper/orders.token\n      mode: \"0600\"\n", ""),
            &["(orders-sync): missing `file`", "or a store:"],
        ),
        (
            "a store with both token and approle",
            format!("{BASE}stores:\n  s:\n    kind: vault\n    address: http://bao.example:8200\n    auth: {{ token: {{ env: T }}, approle: {{ role_id: x, secret_id: y }} }}\n"),
            &["auth gives both token and approle"],
        ),
        (
            "a store allowed no request at once",
            format!("{BASE}stores:\n  s:\n    kind: vault\n    address: http://127.0.0.1:1\n    auth: {{ token: {{ env: T }} }}\n    max_concurrent_requests: 0\n"),
            &["stores.s.max_concurrent_requests: max_concurrent_requests must be a whole number above 0"],
        ),
        (
            "duplicate set names",
            with(&[("name: vouchers", "name: orders-sync")]),
            &[
                "scope_sets[1] (orders-sync).name",
                "used twice",
                "scope_sets[0] and scope_sets[1]",
            ],
        ),
        (
            "duplicate file paths after normalization",
            with(&[(
                "/run/tokenkeeper/vouchers.token",
                "/run//tokenkeeper/./orders.token",
            )]),
            &[
                "scope_sets[1] (vouchers).file.path",
                "also the file of scope_sets[0] (orders-sync)",
            ],
        ),
        (
            "unknown provider",
            with(&[(
                "provider: vf\n    scopes: [vouchers]",
                "provider: vff\n    scopes: [vouchers]",
            )]),
            &["unknown provider `vff`", "known providers: `vf`"],
        ),
        (
            "empty scopes",
            with(&[("[vouchers]", "[]")]),
            &["scopes is empty"],
        ),
        (
            "scope with comma",
            with(&[("[vouchers]", "[\"vouchers,orders\"]")]),
            &["scopes[0]", "contains a comma", "space-separated"],
        ),
        (
            "scope with space",
            with(&[("[vouchers]", "[\"vouchers orders\"]")]),
            &["contains whitespace", "list each scope as its own entry"],
        ),
        (
            "scopes as one string",
            with(&[("[vouchers]", "vouchers orders")]),
            &["must be a list", "space-separated"],
        ),
        (
            "integer mode",
            with(&[("mode: \"0600\"", "mode: 600")]),
            &["mode must be a quoted octal string such as \"0640\"", "600"],
        ),
        (
            "YAML 1.2 octal mode",
            with(&[("mode: \"0600\"", "mode: 0o600")]),
            &["quoted octal string", "384"],
        ),
        (
            "mode too large",
            with(&[("\"0600\"", "\"1777\"")]),
            &["larger than 0777"],
        ),
        (
            "mode not octal",
            with(&[("\"0600\"", "\"0680\"")]),
            &["3 or 4 octal digits"],
        ),
        (
            "relative path",
            with(&[("/run/tokenkeeper/orders.token", "run/orders.token")]),
            &["file.path", "must be an absolute path"],
        ),
        (
            "directory path",
            with(&[("/run/tokenkeeper/orders.token", "/run/tokenkeeper/")]),
            &["must name a file"],
        ),
        (
            "missing file",
            with(&[(
                "    file:\n      path: /run/tokenkeeper/vouchers.token\n",
                "",
            )]),
            &["missing `file`"],
        ),
        (
            "http non-loopback URL",
            with(&[("cluster: eu", "base_url: http://api.voucherify.io")]),
            &[
                "providers.vf.base_url",
                "http:// is allowed only for loopback hosts",
            ],
        ),
        (
            "base_url with password, which is not repeated",
            with(&[(
                "cluster: eu",
                "base_url: https://u:hunter2@api.voucherify.io",
            )]),
            &["user name or password"],
        ),
        (
            "base_url with query",
            with(&[("cluster: eu", "base_url: https://a.example/?x=1")]),
            &["query"],
        ),
        (
            "base_url and cluster",
            with(&[(
                "cluster: eu",
                "cluster: eu\n    base_url: https://a.example",
            )]),
            &["not both"],
        ),
        (
            "unknown cluster",
            with(&[("cluster: eu", "cluster: mars")]),
            &["cluster `mars` must be one of eu, us1, as1"],
        ),
        (
            "bad percentage",
            with(&[(
                "    file:\n      path: /run/tokenkeeper/vouchers.token",
                "    refresh: { at: 0.66 }\n    file:\n      path: /run/tokenkeeper/vouchers.token",
            )]),
            &["refresh.at", "write it as a percentage, e.g. \"66%\""],
        ),
        (
            "percentage without %",
            format!("defaults:\n  refresh: {{ jitter: ten }}\n{BASE}"),
            &["defaults.refresh.jitter", "must be a percentage"],
        ),
        (
            "at above 100%",
            format!("defaults:\n  refresh: {{ at: 120% }}\n{BASE}"),
            &["at (120%) must be more than 0% and at most 100%"],
        ),
        (
            "at zero",
            format!("defaults:\n  refresh: {{ at: 0% }}\n{BASE}"),
            &["at (0%) must be more than 0%"],
        ),
        (
            "jitter >= at in defaults",
            format!("defaults:\n  refresh: {{ at: 50%, jitter: 50% }}\n{BASE}"),
            &[
                "defaults.refresh.jitter",
                "jitter (50%) must be smaller than at (50%)",
            ],
        ),
        (
            "set at below default jitter",
            with(&[(
                "    file:\n      path: /run/tokenkeeper/vouchers.token",
                "    refresh: { at: 5% }\n    file:\n      path: /run/tokenkeeper/vouchers.token",
            )]),
            &[
                "scope_sets[1] (vouchers).refresh.at",
                "jitter (10%) must be smaller than at (5%)",
            ],
        ),
        (
            "min_interval 0",
            format!("defaults:\n  refresh: {{ min_interval: 0s }}\n{BASE}"),
            &["min_interval must be more than 0s", "tight issuing loop"],
        ),
        (
            "duration without unit",
            format!("shutdown_timeout: 20\n{BASE}"),
            &["shutdown_timeout", "unit"],
        ),
        (
            "shutdown_timeout 0",
            format!("shutdown_timeout: 0s\n{BASE}"),
            &["shutdown_timeout must be more than 0s"],
        ),
        (
            "bad duration",
            format!("defaults:\n  revoke_superseded_after: soon\n{BASE}"),
            &["revoke_superseded_after `soon` is not a duration"],
        ),
        (
            "secret with two sources",
            with(&[("{ env: VF_APP_ID }", "{ env: VF_APP_ID, file: /k }")]),
            &["providers.vf.app_id", "`env` and `file`", "exactly one"],
        ),
        (
            "secret relative file",
            with(&[("{ env: VF_APP_ID }", "{ file: k }")]),
            &["must be an absolute path"],
        ),
        (
            "credential as path",
            with(&[("{ credential: vf-app-token }", "{ credential: /run/x }")]),
            &["bare credential name"],
        ),
        (
            "secret as number",
            with(&[("{ env: VF_APP_ID }", "12345")]),
            &["app_id must be { credential: NAME }", "not a number"],
        ),
        (
            "missing secret",
            with(&[("    app_id: { env: VF_APP_ID }\n", "")]),
            &["providers.vf", "missing `app_id`"],
        ),
        (
            "voucherify keys under square",
            with(&[("kind: voucherify", "kind: square")]),
            &[
                "providers.vf.cluster: `cluster` does not apply to kind `square` (it belongs to voucherify)",
            ],
        ),
        (
            "oauth2 without client",
            with(&[("kind: voucherify", "kind: oauth2")]),
            &["providers.vf: missing `client_id`"],
        ),
        (
            "unknown kind",
            with(&[("kind: voucherify", "kind: okta")]),
            &["unknown provider kind `okta`"],
        ),
        (
            "bad set name",
            with(&[("name: vouchers", "name: Vouchers")]),
            &["name `Vouchers` must start with"],
        ),
        (
            "missing name",
            with(&[("  - name: vouchers\n    provider", "  - provider")]),
            &["scope_sets[1]: missing `name`"],
        ),
        (
            "unknown user",
            with(&[("      mode: \"0600\"", "      owner: no-such-user-tk")]),
            &["unknown user `no-such-user-tk`"],
        ),
        (
            "unknown group",
            with(&[("      mode: \"0600\"", "      group: no-such-group-tk")]),
            &["unknown group `no-such-group-tk`"],
        ),
        (
            "bad format",
            with(&[("      mode: \"0600\"", "      format: yaml")]),
            &["format `yaml` must be one of raw, json, env, header"],
        ),
        (
            "bad on_shutdown",
            format!("defaults:\n  on_shutdown: maybe\n{BASE}"),
            &["on_shutdown `maybe` must be one of revoke, keep"],
        ),
        (
            "relative state_dir",
            format!("state_dir: state\n{BASE}"),
            &["state_dir `state` must be an absolute path"],
        ),
        (
            "relative metrics textfile",
            format!("metrics: {{ textfile: tk.prom }}\n{BASE}"),
            &["metrics.textfile", "must be an absolute path"],
        ),
        (
            "metrics textfile node_exporter would ignore",
            format!("metrics: {{ textfile: /var/lib/ne/tk.txt }}\n{BASE}"),
            &["metrics.textfile", "must end in `.prom`"],
        ),
        (
            "metrics listener open to the network",
            format!("metrics: {{ listen: \"0.0.0.0:9464\" }}\n{BASE}"),
            &["metrics.listen", "must be a loopback address"],
        ),
        (
            "metrics listener without a port",
            format!("metrics: {{ listen: 127.0.0.1 }}\n{BASE}"),
            &["metrics.listen", "is not an address and port"],
        ),
        (
            "misspelt metrics key",
            format!("metrics: {{ textfiel: /x.prom }}\n{BASE}"),
            &["unknown key `textfiel` (did you mean `textfile`?)"],
        ),
        (
            "bad log_level",
            format!("log_level: \"a=b=c\"\n{BASE}"),
            &["log_level"],
        ),
        (
            "no scope sets",
            with(&[(
                &BASE[BASE.find("scope_sets:").unwrap_or(0)..],
                "scope_sets: []\n",
            )]),
            &["no scope sets: nothing to do"],
        ),
        (
            "missing scope sets",
            "providers: {}\n".to_string(),
            &["no scope sets: nothing to do"],
        ),
        (
            "no providers",
            BASE.replacen(&BASE[..BASE.find("scope_sets:").unwrap_or(0)], "\n", 1),
            &["no providers"],
        ),
        (
            "empty file",
            "# nothing\n".to_string(),
            &["the configuration is empty"],
        ),
        (
            "not a mapping",
            "- a\n- b\n".to_string(),
            &["must be a YAML mapping", "not a list"],
        ),
        (
            // As long as the config has keys, a state_dir first: read in one pass, a list
            // must still not pass for a config read by position.
            "a list shaped like the config",
            "[/var/lib/x, null, null, null, null, null, null, null, null]\n".to_string(),
            &["must be a YAML mapping", "not a list"],
        ),
        (
            "wrong shape",
            with(&[(
                "    file:\n      path: /run/tokenkeeper/vouchers.token\n",
                "    file: [x]\n",
            )]),
            &["scope_sets[1] (vouchers).file: invalid type: sequence"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, text, needles) in &cases {
        let found: Vec<String> = match parse(text, Path::new("t.yaml")) {
            Ok(_) => vec!["<accepted>".into()],
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.iter().map(|p| p.to_string()).collect()
            }
            Err(other) => vec![other.to_string()],
        };
        if !found.iter().any(|p| needles.iter().all(|n| p.contains(n))) {
            failures.push(format!("{what}: wanted {needles:?}, got {found:#?}"));
        }
        if found.iter().any(|p| p.contains("hunter2")) {
            failures.push(format!("{what}: a password reached a message"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn yaml_syntax_error_has_line_and_column() {
    let problems = problems("providers:\n  vf: [\n");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!((problems[0].line, problems[0].column), (Some(3), Some(1)));
    assert!(
        !problems[0].message.contains(" at line "),
        "{}",
        problems[0]
    );
}

#[test]
fn several_problems_are_all_reported() {
    let text = with(&[
        ("mode: \"0600\"", "mode: 0600\n      mdoe: x"),
        ("name: vouchers", "name: orders-sync"),
        ("[vouchers]", "[]"),
        ("cluster: eu", "base_url: http://example.com"),
    ]);
    let found: Vec<String> = problems(&text).iter().map(|p| p.to_string()).collect();
    for needle in [
        "unknown key `mdoe`",
        "used twice",
        "scopes is empty",
        "http:// is allowed only for loopback hosts",
    ] {
        assert!(
            found.iter().any(|p| p.contains(needle)),
            "{needle} not in {found:#?}"
        );
    }
    // An unquoted 0600 is read as the string "0600" by this YAML parser: accepted.
    assert!(!found.iter().any(|p| p.contains("file.mode")), "{found:#?}");
}

#[test]
fn http_is_accepted_for_loopback_hosts() {
    for url in [
        "http://127.0.0.1:8080",
        "http://127.3.4.5/",
        "http://localhost:1234/v",
        "http://[::1]:9000/prefix/",
    ] {
        let text = with(&[("cluster: eu", &format!("base_url: {url}"))]);
        let c = accepted(&text).config;
        let ProviderKind::Voucherify { base_url, .. } = &c.providers["vf"].kind else {
            panic!("not voucherify")
        };
        assert_eq!(base_url.scheme(), "http");
        assert!(
            base_url.path() == "/" || !base_url.path().ends_with('/'),
            "{base_url}"
        );
    }
    let c = accepted(&with(&[(
        "cluster: eu",
        "base_url: https://proxy.example/voucherify/",
    )]))
    .config;
    let ProviderKind::Voucherify { base_url, .. } = &c.providers["vf"].kind else {
        panic!("not voucherify")
    };
    assert_eq!(base_url.as_str(), "https://proxy.example/voucherify");
}

#[test]
fn warnings_never_refusals() {
    let text = with(&[
        ("{ env: VF_APP_ID }", "\"plain-app-id-value\""),
        ("[vouchers]", "[vouchers, frobnicate, vouchers]"),
        ("mode: \"0600\"", "mode: \"0644\""),
    ]);
    let loaded = accepted(&text);
    let w = loaded.warnings.join("\n");
    assert!(w.contains("providers.vf.app_id is written in the config; prefer { credential: NAME }, { file: PATH } or { env: NAME }"), "{w}");
    assert!(!w.contains("plain-app-id-value"), "{w}");
    assert!(
        w.contains("scope `frobnicate` is not in Voucherify's documented list"),
        "{w}"
    );
    assert!(w.contains("scope `vouchers` is listed twice"), "{w}");
    assert!(w.contains("mode 0644 gives every local user access"), "{w}");
    assert_eq!(loaded.config.sets[1].scopes, ["vouchers", "frobnicate"]);
    let SecretSource::Plain(secret) = (match &loaded.config.providers["vf"].kind {
        ProviderKind::Voucherify { app_id, .. } => app_id,
        _ => panic!("not voucherify"),
    }) else {
        panic!("not plain")
    };
    assert_eq!(secret.expose(), "plain-app-id-value");
}

#[test]
fn unknown_keys_of_an_unknown_kind_are_not_listed() {
    let text = with(&[(
        "kind: voucherify",
        "kind: okta\n    issuer: https://login.example.com\n    tenant: x",
    )]);
    let found = problems(&text);
    assert!(
        !found
            .iter()
            .any(|p| p.message.contains("issuer") || p.message.contains("tenant")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|p| p.message.contains(
            "unknown provider kind `okta`; this version supports `voucherify`, `oauth2`, `square`"
        )),
        "{found:?}"
    );
}

/// One config naming all three provider kinds.
const MIXED: &str = r#"
state_dir: /var/lib/tk
defaults:
  on_shutdown: revoke
providers:
  vf:
    kind: voucherify
    app_id: { env: VF_APP_ID }
    app_token: { env: VF_APP_TOKEN }
  idp:
    kind: oauth2
    issuer: https://login.example.com/realms/ops
    client_id: tokenkeeper
    client_secret: { credential: idp-secret }
  entra:
    kind: oauth2
    token_url: https://login.example.com/t/oauth2/v2.0/token
    revocation_url: https://login.example.com/t/revoke
    client_id: 11111111-2222
    client_secret: { env: ENTRA_SECRET }
    auth_method: client_secret_post
    extra_params: { resource: "https://api.example.com", project_id: 42 }
    default_lifetime: 10m
    timeout: 5s
  shop:
    kind: square
    environment: sandbox
    client_id: sandbox-sq0idb-abc
    client_secret: { credential: square-secret }
    refresh_token: { credential: square-refresh }
  "pkce shop":
    kind: square
    client_id: sq0idp-x
    refresh_token: { env: SQ_REFRESH }
scope_sets:
  - name: vouchers
    provider: vf
    scopes: [vouchers]
    file: { path: /run/tk/v.token }
  - name: api
    provider: idp
    scopes: ["api://x/.default", "read,write"]
    file: { path: /run/tk/api.token }
  - name: graph
    provider: entra
    scopes: [https://graph.microsoft.com/.default]
    file: { path: /run/tk/graph.token }
  - name: orders
    provider: shop
    scopes: [ORDERS_READ, FROBNICATE_READ]
    file: { path: /run/tk/orders.token }
  - name: orders-revoked
    provider: shop
    scopes: [ORDERS_READ]
    file: { path: /run/tk/orders2.token }
    on_shutdown: revoke
  - name: pkce
    provider: pkce shop
    scopes: [ITEMS_READ]
    file: { path: /run/tk/pkce.token }
"#;

#[test]
fn all_three_kinds_in_one_config() {
    let loaded = accepted(MIXED);
    let c = &loaded.config;
    let ProviderKind::OAuth2 {
        endpoints,
        client_id,
        auth_method,
        extra_params,
        default_lifetime,
        ..
    } = &c.providers["idp"].kind
    else {
        panic!("not oauth2")
    };
    assert_eq!(
        endpoints,
        &OAuth2Endpoints::Discover {
            issuer: Url::parse("https://login.example.com/realms/ops").unwrap()
        }
    );
    assert_eq!(client_id, "tokenkeeper");
    assert_eq!(*auth_method, AuthMethod::ClientSecretBasic);
    assert!(extra_params.is_empty());
    assert_eq!(*default_lifetime, DEFAULT_OAUTH2_LIFETIME);
    let ProviderKind::OAuth2 {
        endpoints,
        auth_method,
        extra_params,
        default_lifetime,
        ..
    } = &c.providers["entra"].kind
    else {
        panic!("not oauth2")
    };
    let OAuth2Endpoints::Explicit {
        revocation_url,
        introspection_url,
        ..
    } = endpoints
    else {
        panic!("not explicit")
    };
    assert!(revocation_url.is_some() && introspection_url.is_none());
    assert_eq!(*auth_method, AuthMethod::ClientSecretPost);
    assert_eq!(extra_params["project_id"], "42");
    assert_eq!(*default_lifetime, Duration::from_secs(600));
    assert_eq!(c.providers["entra"].timeout, Duration::from_secs(5));

    let ProviderKind::Square {
        base_url,
        client_secret,
        grant,
        state_file,
        ..
    } = &c.providers["shop"].kind
    else {
        panic!("not square")
    };
    assert_eq!(base_url.as_str(), "https://connect.squareupsandbox.com/");
    assert!(client_secret.is_some());
    assert_eq!(
        grant,
        &SquareGrant::RefreshToken(SecretSource::Credential("square-refresh".into()))
    );
    assert_eq!(state_file, Path::new("/var/lib/tk/square-shop.json"));
    let ProviderKind::Square {
        base_url,
        client_secret,
        state_file,
        ..
    } = &c.providers["pkce shop"].kind
    else {
        panic!("not square")
    };
    assert_eq!(base_url.as_str(), "https://connect.squareup.com/");
    assert!(client_secret.is_none());
    let name = state_file.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("square-pkce_shop-") && name.ends_with(".json"),
        "{name}"
    );

    // defaults.on_shutdown: revoke applies to every kind but square.
    let on = |n: &str| c.sets.iter().find(|s| s.name == n).unwrap().on_shutdown;
    assert_eq!(on("vouchers"), OnShutdown::Revoke);
    assert_eq!(on("api"), OnShutdown::Revoke);
    assert_eq!(on("orders"), OnShutdown::Keep);
    assert_eq!(on("orders-revoked"), OnShutdown::Revoke);
    assert_eq!(on("pkce"), OnShutdown::Keep);
    // oauth2 scopes are free-form (a comma is a character like any other).
    assert_eq!(c.sets[1].scopes, ["api://x/.default", "read,write"]);

    let w = loaded.warnings.join("\n");
    assert!(
        w.contains("scope `FROBNICATE_READ` is not in Square's documented list"),
        "{w}"
    );
    assert!(!w.contains("ORDERS_READ"), "{w}");
    let secrets: Vec<String> = check_secrets(c)
        .0
        .iter()
        .map(|p| p.at.clone())
        .chain(check_secrets(c).1)
        .collect();
    for key in [
        "providers.idp.client_secret",
        "providers.entra.client_secret",
        "providers.shop.client_secret",
        "providers.shop.refresh_token",
        "providers.pkce shop.refresh_token",
    ] {
        assert!(
            secrets.iter().any(|s| s.starts_with(key)),
            "{key} not checked: {secrets:?}"
        );
    }
}

#[test]
fn oauth2_and_square_refusals() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "both issuer and token_url",
            "    issuer: https://a.example\n    token_url: https://a.example/t\n",
            &["give issuer", "not both"],
        ),
        ("no endpoint", "", &["missing `issuer`"]),
        (
            "revocation without token",
            "    revocation_url: https://a.example/r\n",
            &["missing `token_url`"],
        ),
        (
            "http issuer",
            "    issuer: http://login.example.com\n",
            &["issuer", "http:// is allowed only for loopback"],
        ),
        (
            "bad auth method",
            "    issuer: https://a.example\n    auth_method: client_secret_jwt\n",
            &[
                "auth_method `client_secret_jwt` must be one of client_secret_basic, client_secret_post, private_key_jwt, tls_client_auth",
            ],
        ),
        (
            "private_key_jwt with a client secret and no key",
            "    issuer: https://a.example\n    auth_method: private_key_jwt\n",
            &[
                "`client_secret` does not apply to auth_method private_key_jwt; it takes private_key and key_id",
            ],
        ),
        (
            "private_key_jwt without its key",
            "    issuer: https://a.example\n    auth_method: private_key_jwt\n",
            &["missing `private_key` (the client's PKCS#8 PEM key, RSA or EC P-256"],
        ),
        (
            "tls_client_auth without its key",
            "    issuer: https://a.example\n    auth_method: tls_client_auth\n    client_certificate: { file: /etc/tk/c.pem }\n",
            &["missing `client_key`"],
        ),
        (
            "a key under a secret method",
            "    issuer: https://a.example\n    private_key: { file: /etc/tk/k.pem }\n",
            &[
                "`private_key` does not apply to auth_method client_secret_basic; it takes client_secret",
            ],
        ),
        (
            "reserved extra param",
            "    issuer: https://a.example\n    extra_params: { scope: x }\n",
            &["extra_params.scope is set by tokenkeeper itself"],
        ),
        (
            "nested extra param",
            "    issuer: https://a.example\n    extra_params: { audience: [a] }\n",
            &["extra_params.audience must be a string, not a list"],
        ),
        (
            "zero default lifetime",
            "    issuer: https://a.example\n    default_lifetime: 0s\n",
            &["default_lifetime must be more than 0s"],
        ),
        (
            "square key under oauth2",
            "    issuer: https://a.example\n    environment: sandbox\n",
            &["`environment` does not apply to kind `oauth2` (it belongs to square)"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, keys, needles) in cases {
        let text = format!(
            "providers:\n  idp:\n    kind: oauth2\n    client_id: c\n    client_secret: {{ env: S }}\n{keys}scope_sets:\n  - name: a\n    provider: idp\n    scopes: [\"a b\"]\n    file: {{ path: /run/a }}\n"
        );
        let found: Vec<String> = match parse(&text, Path::new("t.yaml")) {
            Ok(_) => vec!["<accepted>".into()],
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.iter().map(|p| p.to_string()).collect()
            }
            Err(other) => vec![other.to_string()],
        };
        if !found.iter().any(|p| needles.iter().all(|n| p.contains(n))) {
            failures.push(format!("{what}: wanted {needles:?}, got {found:#?}"));
        }
        if !found.iter().any(|p| p.contains("RFC 6749 does not allow")) {
            failures.push(format!(
                "{what}: a scope with a space was accepted: {found:#?}"
            ));
        }
    }
    let square: &[(&str, &str, &str, &[&str])] = &[
        (
            "both url and environment",
            "    base_url: https://a.example\n    environment: sandbox\n",
            "",
            &["give base_url or environment, not both"],
        ),
        (
            "bad environment",
            "    environment: staging\n",
            "",
            &["environment `staging` must be one of production, sandbox"],
        ),
        ("no refresh token", "", "", &["missing `refresh_token`"]),
        (
            "lower-case scope",
            "    refresh_token: { env: R }\n",
            "",
            &[
                "scope `orders_read` is not a Square permission name",
                "`ORDERS_READ`",
            ],
        ),
        (
            "revoke without secret",
            "    refresh_token: { env: R }\n",
            "    on_shutdown: revoke\n",
            &["on_shutdown: revoke needs the provider's client_secret"],
        ),
        (
            "renew without access token",
            "    mode: renew\n    client_secret: { env: S }\n",
            "",
            &["missing `access_token`"],
        ),
        (
            "renew with refresh token",
            "    mode: renew\n    client_secret: { env: S }\n    access_token: { env: A }\n    refresh_token: { env: R }\n",
            "",
            &["give access_token, not refresh_token"],
        ),
        (
            "renew without secret",
            "    mode: renew\n    access_token: { env: A }\n",
            "",
            &["missing `client_secret`"],
        ),
        (
            "renew shared",
            "    mode: renew\n    client_secret: { env: S }\n    access_token: { env: A }\n",
            "  - name: b\n    provider: sq\n    scopes: [ITEMS_READ]\n    file: { path: /run/b }\n",
            &["mode: renew serves one scope set, but a, b name it"],
        ),
        (
            "bad mode",
            "    mode: code\n",
            "",
            &["mode `code` must be one of refresh_token, renew"],
        ),
    ];
    for (what, keys, set_extra, needles) in square {
        let scopes = if *what == "lower-case scope" {
            "orders_read"
        } else {
            "ORDERS_READ"
        };
        let text = format!(
            "providers:\n  sq:\n    kind: square\n    client_id: sq0idp-x\n{keys}scope_sets:\n  - name: a\n    provider: sq\n    scopes: [{scopes}]\n    file: {{ path: /run/a }}\n{set_extra}"
        );
        let found: Vec<String> = match parse(&text, Path::new("t.yaml")) {
            Ok(_) => vec!["<accepted>".into()],
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.iter().map(|p| p.to_string()).collect()
            }
            Err(other) => vec![other.to_string()],
        };
        if !found.iter().any(|p| needles.iter().all(|n| p.contains(n))) {
            failures.push(format!("{what}: wanted {needles:?}, got {found:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn provider_with(app_id: SecretSource, app_token: SecretSource) -> Config {
    let mut config = accepted(BASE).config;
    config.providers.insert(
        "vf".into(),
        ProviderConfig {
            name: "vf".into(),
            timeout: DEFAULT_PROVIDER_TIMEOUT,
            max_live_tokens: 1000,
            issue_rate: IssueRate {
                per_second: DEFAULT_ISSUE_PER_SECOND,
                burst: 100,
            },
            max_concurrent_requests: 16,
            kind: ProviderKind::Voucherify {
                base_url: Url::parse(VOUCHERIFY_DEFAULT_URL).unwrap(),
                app_id,
                app_token,
            },
        },
    );
    config
}

#[test]
fn check_secrets_reports_missing_env_and_open_file() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("token");
    std::fs::write(&open, "s3cret-value\n").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = provider_with(
        SecretSource::Env("TOKENKEEPER_TEST_SURELY_UNSET_9F2C".into()),
        SecretSource::File(open.clone()),
    );
    let (problems, _) = check_secrets(&config);
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 2, "{text:#?}");
    assert_eq!(
        text[0],
        "providers.vf.app_id: environment variable TOKENKEEPER_TEST_SURELY_UNSET_9F2C is not set"
    );
    assert!(
        text[1].starts_with("providers.vf.app_token: "),
        "{}",
        text[1]
    );
    assert!(
        text[1].contains("readable by group or others"),
        "{}",
        text[1]
    );
    assert!(!text.join("").contains("s3cret"));

    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o600)).unwrap();
    let missing = SecretSource::File(dir.path().join("nope"));
    let (problems, _) = check_secrets(&provider_with(SecretSource::File(open), missing));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].message.contains("No such file"),
        "{}",
        problems[0]
    );
}

#[test]
fn credential_without_credentials_directory_is_a_warning() {
    if std::env::var_os("CREDENTIALS_DIRECTORY").is_some() {
        eprintln!("skipped: CREDENTIALS_DIRECTORY is set");
        return;
    }
    let config = provider_with(
        SecretSource::Plain(Secret::new("x")),
        SecretSource::Credential("vf-app-token".into()),
    );
    let (problems, warnings) = check_secrets(&config);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("providers.vf.app_token: systemd credential vf-app-token"));
}

#[test]
fn load_merges_parse_and_secret_problems() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        with(&[
            (
                "{ env: VF_APP_ID }",
                "{ env: TOKENKEEPER_TEST_SURELY_UNSET_9F2C }",
            ),
            ("[vouchers]", "[]"),
        ]),
    )
    .unwrap();
    let Err(err @ ConfigError::Invalid { .. }) = load(&path) else {
        panic!("accepted")
    };
    assert_eq!(
        err.to_string(),
        format!("{}: 2 problem(s) in the configuration", path.display())
    );
    let ConfigError::Invalid { problems, .. } = err else {
        unreachable!()
    };
    assert!(
        problems
            .iter()
            .any(|p| p.message.contains("scopes is empty"))
    );
    assert!(problems.iter().any(|p| p.message.contains("is not set")));

    let missing = dir.path().join("absent.yaml");
    let err = load(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert_eq!(
        err.to_string(),
        format!("cannot read config file {}", missing.display())
    );
}

#[test]
fn problem_display_omits_unknown_parts() {
    let p = |line, column, at: &str| Problem {
        line,
        column,
        at: at.into(),
        message: "m".into(),
    };
    assert_eq!(p(Some(3), Some(7), "a.b").to_string(), "3:7: a.b: m");
    assert_eq!(p(None, None, "a.b").to_string(), "a.b: m");
    assert_eq!(p(Some(3), Some(7), "").to_string(), "3:7: m");
    assert_eq!(p(None, None, "").to_string(), "m");
}

#[test]
fn helpers() {
    assert_eq!(pct(0.66), "66%");
    assert_eq!(pct(0.125), "12.5%");
    assert_eq!(closest("mdoe", &["mode", "owner"]), Some("mode"));
    assert_eq!(closest("scoeps", fields_of::<RawSet>()), Some("scopes"));
    assert_eq!(closest("zzz", fields_of::<RawSet>()), None);
    assert!(fields_of::<RawProviderCommon>().contains(&"issue_rate"));
    assert_eq!(
        strip_marks("x at line 3 column 1, while parsing at line 2 column 5"),
        "x, while parsing"
    );
    assert_eq!(
        hide_raw_names("invalid type: integer `1`, expected struct RawProvider"),
        "invalid type: integer `1`, expected a mapping"
    );
    assert!(valid_set_name("a-b_9") && !valid_set_name("-a") && !valid_set_name(""));
}

/// Every set's config lives in an `Arc` for the daemon's whole life: past 256 bytes with the
/// `Arc`'s two counters, 10,000 sets move into the allocator's next class (0.6 MiB more).
#[cfg(target_pointer_width = "64")]
#[test]
fn a_sets_config_fits_in_256_bytes_with_its_arc() {
    let size = std::mem::size_of::<SetConfig>() + 2 * std::mem::size_of::<usize>();
    assert!(size <= 256, "{size}");
}

/// A store's `max_concurrent_requests` is taken as given, and is 16 when not given.
#[test]
fn a_store_s_request_cap_is_read_with_its_default() {
    let store = |extra: &str| {
        let text = format!(
            "{BASE}stores:\n  s:\n    kind: vault\n    address: http://127.0.0.1:1\n    auth: {{ token: {{ env: T }} }}\n{extra}"
        );
        parse(&text, Path::new("t")).unwrap().config.stores["s"].max_concurrent_requests
    };
    assert_eq!(store(""), 16);
    assert_eq!(store("    max_concurrent_requests: 8\n"), 8);
}

/// The keys of issue 30 belong to `kind: oauth2` (and to their auth_method): refused under
/// another kind, and checked for their form.
#[test]
fn enterprise_provider_keys_are_refused_where_they_do_not_apply() {
    let oauth2 = |keys: &str| {
        format!(
            "providers:\n  idp:\n    kind: oauth2\n    issuer: https://idp.example\n    client_id: c\n{keys}scope_sets:\n  - name: a\n    provider: idp\n    scopes: [a]\n    file: {{ path: /run/a }}\n"
        )
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "ca_file under voucherify",
            with(&[("cluster: eu", "cluster: eu\n    ca_file: /etc/ca.pem")]),
            "providers.vf.ca_file: `ca_file` does not apply to kind `voucherify` (it belongs to oauth2)",
        ),
        (
            "relative ca_file",
            oauth2("    client_secret: { env: S }\n    ca_file: ca.pem\n"),
            "providers.idp.ca_file: ca_file `ca.pem` must be an absolute path",
        ),
        (
            "assertion_audience under voucherify",
            with(&[(
                "cluster: eu",
                "cluster: eu\n    assertion_audience: https://a",
            )]),
            "providers.vf.assertion_audience: `assertion_audience` does not apply to kind `voucherify` (it belongs to oauth2)",
        ),
        (
            "assertion_audience with a secret",
            oauth2("    client_secret: { env: S }\n    assertion_audience: https://a\n"),
            "providers.idp.assertion_audience: `assertion_audience` does not apply to auth_method client_secret_basic",
        ),
        (
            "empty assertion_audience",
            oauth2(
                "    auth_method: private_key_jwt\n    private_key: { env: K }\n    assertion_audience: \"\"\n",
            ),
            "assertion_audience must be non-empty printable text",
        ),
        (
            "client_assertion under voucherify",
            with(&[(
                "cluster: eu",
                "cluster: eu\n    client_assertion: { file: /run/t }",
            )]),
            "providers.vf.client_assertion: `client_assertion` does not apply to kind `voucherify` (it belongs to oauth2)",
        ),
        (
            "client_assertion with a secret method",
            oauth2("    client_secret: { env: S }\n    client_assertion: { file: /run/t }\n"),
            "providers.idp.client_assertion: `client_assertion` does not apply to auth_method client_secret_basic",
        ),
        (
            "client_assertion method without one",
            oauth2("    auth_method: client_assertion\n"),
            "providers.idp: missing `client_assertion`",
        ),
        (
            "a secret under client_assertion",
            oauth2(
                "    auth_method: client_assertion\n    client_assertion: { file: /run/t }\n    client_secret: { env: S }\n",
            ),
            "providers.idp.client_secret: `client_secret` does not apply to auth_method client_assertion",
        ),
    ];
    for (what, text, want) in cases {
        let found: Vec<String> = problems(&text).iter().map(|p| p.to_string()).collect();
        assert!(
            found.iter().any(|p| p.contains(want)),
            "{what}: wanted {want:?}, got {found:#?}"
        );
    }
    let loaded = accepted(&oauth2(
        "    client_secret: { env: S }\n    ca_file: /etc/tk/idp-ca.pem\n",
    ));
    let ProviderKind::OAuth2 { ca_file, .. } = &loaded.config.providers["idp"].kind else {
        panic!("not oauth2")
    };
    assert_eq!(ca_file.as_deref(), Some(Path::new("/etc/tk/idp-ca.pem")));
}

/// Each provider kind reads its own keys into its own struct: a key of another kind is named
/// as such, an unknown one is suggested from the kind's keys and the shared ones, a value of
/// the wrong shape is named by its key with its line, and none of them stops the rest of the
/// file from being checked (before, a wrong shape was the only problem reported).
#[test]
fn a_provider_kind_refuses_what_is_not_its_own_and_the_rest_is_still_checked() {
    let text = with(&[
        (
            "    cluster: eu\n",
            "    cluster: [eu]\n    isuer: x\n    client_id: y\n    issue_rtae: 1/s\n",
        ),
        ("mode: \"0600\"", "mode: \"0999\""),
    ]);
    let shown: Vec<String> = problems(&text).iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "6:5: providers.vf: unknown key `isuer`",
            "7:5: providers.vf.client_id: `client_id` does not apply to kind `voucherify` (it belongs to oauth2, square)",
            "8:5: providers.vf: unknown key `issue_rtae` (did you mean `issue_rate`?)",
            "5:5: providers.vf.cluster: invalid type: sequence, expected a string",
            "17:7: scope_sets[0] (orders-sync).file.mode: mode `0999` must be 3 or 4 octal digits, such as \"0640\"",
        ],
        "{shown:#?}"
    );
}

/// A value of the wrong type under a key with a rule (a choice, a URL, a path) is named by its
/// key in serde's words, and the rest of the file is still checked: before, the first such
/// value ended the check of the whole file.
#[test]
fn a_value_of_the_wrong_type_is_named_by_its_key_and_hides_nothing() {
    let text = with(&[
        (
            "    provider: vf\n    scopes: [orders, customers]\n",
            "    provider: vf\n    on_shutdown: [keep]\n    scopes: [orders, customers]\n",
        ),
        (
            "      mode: \"0600\"\n",
            "      mode: \"0600\"\n      format: 7\n",
        ),
        ("mode: \"0600\"", "mode: \"0999\""),
    ]);
    let shown: Vec<String> = problems(&text).iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "16:7: scope_sets[0] (orders-sync).file.format: invalid type: integer `7`, expected a string",
            "15:7: scope_sets[0] (orders-sync).file.mode: mode `0999` must be 3 or 4 octal digits, such as \"0640\"",
            "11:5: scope_sets[0] (orders-sync).on_shutdown: invalid type: sequence, expected a string",
        ],
        "{shown:#?}"
    );
}
