//! Text an outsider writes, on its way to the operator's terminal and log: a provider's error
//! with bidi and invisible characters and terminal escapes, an HA lease holder that tries to
//! retitle and clear the terminal, names in the config with control characters, a client
//! assertion echoed back in escaped JSON, and a store quoting a token written earlier. The
//! built binary, real signals, fakes on 127.0.0.1 and a real OpenBao for the lease.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;
mod fakes;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::bao::{self, Bao};
use common::*;
use fakes::{Req, Resp};
use nix::sys::signal::Signal;

const RSA_TEST_KEY: &str = include_str!("keys/rsa-test.pem");

/// Characters that must never reach a terminal or a log line as themselves: Unicode bidi
/// overrides and isolates, invisible ones, line separators, and C0/C1 controls (ESC and BEL
/// make terminal escape sequences, U+009B is the 8-bit CSI).
const HOSTILE: [char; 13] = [
    '\u{202e}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{200b}', '\u{2028}', '\u{2029}',
    '\u{feff}', '\u{1b}', '\u{7}', '\u{9b}', '\u{85}',
];

fn assert_no_hostile(what: &str, text: &str) {
    for c in HOSTILE {
        assert!(
            !text.contains(c),
            "{what} holds U+{:04X} raw:\n{}",
            c as u32,
            text.escape_debug()
        );
    }
}

/// A provider config in `dir` for an oauth2 server at `base`, with `auth` lines (indented by
/// four spaces) and one set `s` writing `dir/t.token`.
fn oauth2_config(dir: &Path, base: &str, auth: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "defaults:\n  refresh: {{ min_interval: 100ms }}\nproviders:\n  idp:\n    kind: oauth2\n    token_url: {base}/token\n    client_id: tk\n{auth}scope_sets:\n  - name: s\n    provider: idp\n    scopes: [read]\n    file: {{ path: {} }}\n",
            dir.join("t.token").display()
        ),
    )
}

/// Wait until the set has failed to issue at least `n` times.
async fn wait_failures(d: &Daemon, cfg: &Path, n: u64) {
    assert!(
        wait_until(PATIENCE, || status_json(cfg)["sets"][0]["issue_failures"]
            .as_u64()
            .is_some_and(|f| f >= n))
        .await,
        "{}",
        d.output()
    );
}

/// Everything `status` shows of `cfg`: its table, its JSON, and the status file itself.
fn status_texts(cfg: &Path, dir: &Path) -> [(&'static str, String); 3] {
    let c = cfg.to_str().unwrap();
    [
        ("status", tokenkeeper(&["status", "-c", c]).stdout),
        (
            "status --json",
            tokenkeeper(&["status", "-c", c, "--json"]).stdout,
        ),
        (
            "status.json",
            read(&dir.join("state/status.json")).unwrap_or_default(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn outsider_text_is_escaped_in_status_and_the_log() {
    // Every answer is an error whose every field carries the hostile characters.
    let hostile: String = HOSTILE.iter().collect();
    let evil = format!("invalid_client{hostile}]0;pwned\u{7}\u{1b}[2J");
    let idp = fakes::serve(move |_req: Req| {
        Resp::json(
            400,
            serde_json::json!({
                "error": evil,
                "error_description": format!("no{evil}"),
                "error_uri": format!("https://idp.example/{evil}"),
            }),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let secret = bao::secret_file(dir.path(), "client-secret", "client-secret-for-these-tests");
    let cfg = oauth2_config(
        dir.path(),
        &idp.url(),
        &format!(
            "    auth_method: client_secret_post\n    client_secret: {{ file: {} }}\n",
            secret.display()
        ),
    );
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[],
    );
    wait_failures(&d, &cfg, 1).await;
    for (what, text) in status_texts(&cfg, dir.path()) {
        assert_no_hostile(what, &text);
    }
    let [(_, table), (_, json), _] = status_texts(&cfg, dir.path());
    // The characters are shown as escapes a person can read, not dropped.
    assert!(table.contains(r"\u{202e}"), "{table}");
    assert!(table.contains(r"]0;pwned\x07\x1b[2J"), "{table}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let last = v["sets"][0]["last_error"].as_str().unwrap_or_default();
    assert!(
        last.contains(r"\u{2066}") && last.contains(r"\x1b[2J"),
        "{last}"
    );
    stop_clean(&mut d).await;
    let log = d.output();
    assert_no_hostile("the log", &log);
    assert!(log.contains(r"invalid_client\u{202e}"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ha_lease_holder_with_escape_sequences_cannot_drive_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let b = Bao::start(dir.path()).await;
    let p = provider(Duration::from_secs(900)).await;
    // Someone who can write the lease names a holder that retitles and clears the terminal
    // of whoever runs `tokenkeeper status`, and turns the rest of the line around.
    let holder = "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}[H\u{9b}31m\u{202e}evil\u{2028}x";
    // It holds the lease as a live leader does, renewing it well within each lease: a lease
    // claimed further ahead is believed for one lease only.
    let lease_url = format!("{}/v1/secret/data/tokenkeeper/lease", b.addr());
    let renew = move |http: reqwest::Client, url: String| async move {
        let now = tokenkeeper::clock::now_wall()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let doc = serde_json::json!({ "data": { "holder": holder, "expires_ms": now + 2000, "lease_ms": 2000 } });
        http.post(url)
            .header("X-Vault-Token", bao::ROOT)
            .body(doc.to_string())
            .send()
            .await
            .map(|r| r.status().as_u16())
    };
    let http = reqwest::Client::new();
    assert_eq!(renew(http.clone(), lease_url.clone()).await.unwrap(), 200);
    let squatter = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = renew(http.clone(), lease_url.clone()).await;
        }
    });
    let token = bao::secret_file(dir.path(), "bao-token", bao::ROOT);
    let top = format!(
        "{}ha: {{ store: bao, lease: 2s, path: tokenkeeper/lease }}\n",
        bao::stores_yaml(
            &b,
            &format!("{{ token: {{ file: {} }} }}", token.display()),
            ""
        )
    );
    let sets = format!(
        "  - name: s\n    provider: dev\n    scopes: [api]\n    file: {{ path: {} }}\n    store: {{ name: bao, path: tokenkeeper/s }}\n",
        dir.path().join("t.token").display()
    );
    let cfg = write_config(dir.path(), &config(&p, dir.path(), &top, &sets));
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[],
    );
    assert!(
        wait_until(PATIENCE, || status_json(&cfg)["ha"]["leader"]
            .as_str()
            .is_some_and(|l| l.contains("pwned")))
        .await,
        "{}",
        d.output()
    );
    for (what, text) in status_texts(&cfg, dir.path()) {
        assert_no_hostile(what, &text);
    }
    let [(_, table), ..] = status_texts(&cfg, dir.path());
    assert!(
        table.contains(r"leader: \x1b]0;pwned\x07\x1b[2J"),
        "{}",
        table.escape_debug()
    );
    d.signal(Signal::SIGTERM);
    d.wait(PATIENCE).await;
    squatter.abort();
    assert_no_hostile("the log", &d.output());
}

#[test]
fn check_refuses_set_and_provider_names_with_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.token");
    // YAML's double-quoted escapes put the characters into the names.
    for (provider, set, key) in [
        (r#""dev\nINFO forged""#, "s", "providers.dev"),
        (r#""dev\u202Eved""#, "s", "providers.dev"),
        (r#""dev\e]0;x\a""#, "s", "providers.dev"),
        ("dev", r#""s\e[2J""#, "scope_sets[0]"),
        ("dev", r#""s\u2066x""#, "scope_sets[0]"),
    ] {
        let cfg = write_config(
            dir.path(),
            &format!(
                "providers:\n  {provider}:\n    kind: voucherify\n    base_url: http://127.0.0.1:9\n    app_id: {{ env: TK_TEST_APP_ID }}\n    app_token: {{ env: TK_TEST_APP_TOKEN }}\nscope_sets:\n  - name: {set}\n    provider: {provider}\n    scopes: [api]\n    file: {{ path: {} }}\n",
                file.display()
            ),
        );
        let out = std::process::Command::new(BIN)
            .args(["check", "-c", cfg.to_str().unwrap()])
            .env("TK_TEST_APP_ID", "id")
            .env("TK_TEST_APP_TOKEN", "token")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{provider} {set}: {stderr}");
        assert!(stderr.contains(key), "{provider} {set}: {stderr}");
        assert_no_hostile("check's message", &stderr);
        assert!(
            !stderr.lines().any(|l| l.starts_with("INFO forged")),
            "{stderr}"
        );
    }
}

/// `text` as a JSON string's inside, with every `.` written `\u002e` and every third letter
/// `\u`-escaped, in upper and lower case hex by turns.
fn escaped_json(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        match c {
            '.' if i % 2 == 0 => out.push_str(r"\u002e"),
            '.' => out.push_str(r"\u002E"),
            c if c.is_ascii_alphabetic() && i % 3 == 0 => {
                let hex = format!("{:04x}", c as u32);
                if i % 2 == 0 {
                    out.push_str(&format!(r"\u{hex}"));
                } else {
                    out.push_str(&format!(r"\u{}", hex.to_uppercase()));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether `text` holds 24 characters in a row of `secret`: a secret cut short is still
/// leaked in part.
fn holds_part(text: &str, secret: &str) -> bool {
    const PART: usize = 24;
    let chars: Vec<char> = secret.chars().collect();
    chars
        .windows(PART)
        .any(|w| text.contains(&w.iter().collect::<String>()))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_assertion_echoed_back_in_escaped_json_never_reaches_the_log_or_status() {
    // The token endpoint quotes the client assertion it was sent, escaped, in its error.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen_by_idp = Arc::clone(&seen);
    let idp = fakes::serve(move |req: Req| {
        let form: Vec<(String, String)> =
            serde_urlencoded::from_bytes(&req.body).unwrap_or_default();
        let assertion = form
            .into_iter()
            .find(|(k, _)| k == "client_assertion")
            .map(|(_, v)| v)
            .unwrap_or_default();
        let body = format!(
            r#"{{"error":"invalid_client","error_description":"bad assertion {}"}}"#,
            escaped_json(&assertion)
        );
        seen_by_idp.lock().unwrap().push(assertion);
        Resp {
            status: 400,
            content_type: "application/json",
            body,
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key = bao::secret_file(dir.path(), "rsa.pem", RSA_TEST_KEY);
    let cfg = oauth2_config(
        dir.path(),
        &idp.url(),
        &format!(
            "    auth_method: private_key_jwt\n    private_key: {{ file: {} }}\n",
            key.display()
        ),
    );
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[],
    );
    wait_failures(&d, &cfg, 1).await;
    let texts = status_texts(&cfg, dir.path());
    stop_clean(&mut d).await;
    let log = d.output();
    let assertions = seen.lock().unwrap().clone();
    assert!(
        !assertions.is_empty() && assertions.iter().all(|a| a.len() > 100),
        "{assertions:?}"
    );
    for (what, text) in texts
        .iter()
        .map(|(w, t)| (*w, t))
        .chain([("the log", &log)])
    {
        assert!(
            text.contains("bad assertion"),
            "{what} never showed the echo: {text}"
        );
        for a in &assertions {
            assert!(
                !holds_part(text, a) && !holds_part(text, &escaped_json(a)),
                "{what} holds the assertion:\n{text}"
            );
        }
    }
}

/// A KV v2 store on 127.0.0.1 that takes the first write of a token and refuses every later
/// one with an error quoting, raw and JSON-escaped, the token written before (which the
/// refused request does not carry).
async fn store_quoting_earlier_tokens() -> (fakes::Server, Arc<Mutex<Vec<String>>>) {
    let written: Arc<Mutex<Vec<String>>> = Arc::default();
    let kept = Arc::clone(&written);
    let server = fakes::serve(move |req: Req| {
        let path = req.path.as_str();
        if req.method == "GET" && path.starts_with("/v1/auth/token/lookup-self") {
            return Resp::json(
                200,
                serde_json::json!({"data": {"ttl": 0, "renewable": false}}),
            );
        }
        if req.method == "POST" && path.starts_with("/v1/secret/data/") {
            let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let token = body["data"]["access_token"].as_str().unwrap_or_default();
            let mut written = kept.lock().unwrap();
            let earlier = written.first().cloned();
            written.push(token.to_string());
            return match earlier {
                None => Resp::json(200, serde_json::json!({"data": {"version": 1}})),
                Some(e) => Resp {
                    status: 400,
                    content_type: "application/json",
                    body: format!(
                        r#"{{"errors":["conflict: version 1 holds {e}, also known as {}"]}}"#,
                        escaped_json(&e)
                    ),
                },
            };
        }
        if req.method == "GET" {
            return Resp::json(404, serde_json::json!({"errors": []}));
        }
        Resp {
            status: 204,
            content_type: "application/json",
            body: String::new(),
        }
    })
    .await;
    (server, written)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_quoting_an_earlier_token_never_reaches_the_log() {
    let p = provider(Duration::from_secs(900)).await;
    let (store, written) = store_quoting_earlier_tokens().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = bao::secret_file(dir.path(), "store-token", "hvs.store-token-for-tests");
    let top = format!(
        "stores:\n  kv:\n    kind: vault\n    address: {}\n    mount: secret\n    auth: {{ token: {{ file: {} }} }}\n",
        store.url(),
        token_file.display()
    );
    let f = dir.path().join("t.token");
    let sets = format!(
        "  - name: s\n    provider: dev\n    scopes: [api]\n    file: {{ path: {} }}\n    store: {{ name: kv, path: tokenkeeper/s }}\n",
        f.display()
    );
    let cfg = write_config(dir.path(), &config(&p, dir.path(), &top, &sets));
    let mut d = Daemon::spawn(
        dir.path(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[],
    );
    assert!(
        wait_until(PATIENCE, || !written.lock().unwrap().is_empty()).await,
        "{}",
        d.output()
    );
    // A rotation writes a new token; the store refuses it, quoting the first.
    d.signal(Signal::SIGUSR1);
    let refused = || {
        status_json(&cfg)["stores"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("conflict: version 1 holds"))
    };
    assert!(wait_until(PATIENCE, refused).await, "{}", d.output());
    let texts = status_texts(&cfg, dir.path());
    d.signal(Signal::SIGTERM);
    d.wait(PATIENCE).await;
    let log = d.output();
    assert!(log.contains("conflict: version 1 holds"), "{log}");
    let first = written.lock().unwrap()[0].clone();
    for (what, text) in texts
        .iter()
        .map(|(w, t)| (*w, t))
        .chain([("the log", &log)])
    {
        assert!(
            !text.contains(&first) && !holds_part(text, &escaped_json(&first)),
            "{what} holds the earlier token:\n{text}"
        );
    }
}
