//! tokenkeeper against a real OAuth 2.0 server nobody on this team wrote:
//! django-oauth-toolkit (PyPI), in its documented layout, on 127.0.0.1 (tests/common/django.rs
//! installs it on first use). Discovery, client_secret_basic and client_secret_post,
//! introspection, revocation at stop, and a secret that form-encoding changes.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;

use std::path::Path;

use common::django::{App, Dot};
use common::*;

const BASIC: App = App {
    client_id: "tk-basic",
    client_secret: "basic-secret-0123456789",
};
const POST: App = App {
    client_id: "tk-post",
    client_secret: "post-secret-0123456789",
};
/// A secret that form-encoding changes (RFC 6749 section 2.3.1): `%`, space, `+`, `/`, `=`.
const ENCODED: App = App {
    client_id: "tk-encoded",
    client_secret: "s3cr%t +/=x",
};

fn write_cfg(dir: &Path, text: &str) -> String {
    let path = dir.join(format!("config-{}.yaml", fastrand::u32(..)));
    std::fs::write(&path, format!("state_dir: {}/state\n{text}", dir.display())).unwrap();
    path.to_str().unwrap().to_string()
}

/// A provider `name` for `app` at `dot`'s issuer, its secret from `env`.
fn provider(dot: &Dot, name: &str, app: &App, method: &str, env: &str) -> String {
    format!(
        "  {name}:\n    kind: oauth2\n    issuer: {}\n    client_id: {}\n    client_secret: {{ env: {env} }}\n    auth_method: {method}\n",
        dot.issuer(),
        app.client_id
    )
}

fn set(name: &str, provider: &str, path: &Path, extra: &str) -> String {
    format!(
        "  - name: {name}\n    provider: {provider}\n    scopes: [read]\n    file: {{ path: {} }}\n{extra}",
        path.display()
    )
}

/// Discovery in django-oauth-toolkit's default layout, one provider per client
/// authentication method (a form-encoded secret among them), introspection at a restart,
/// and nothing left live after SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn django_oauth_toolkit_issues_introspects_and_revokes_everything_at_stop() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dot = Dot::start(d, &[BASIC, POST, ENCODED]).await;
    let (b, p, e) = (
        d.join("basic.token"),
        d.join("post.token"),
        d.join("encoded.token"),
    );
    let cfg = write_cfg(
        d,
        &format!(
            "shutdown_timeout: 10s\nproviders:\n{}{}{}scope_sets:\n{}{}{}",
            provider(&dot, "basic", &BASIC, "client_secret_basic", "TK_BASIC"),
            provider(&dot, "post", &POST, "client_secret_post", "TK_POST"),
            provider(
                &dot,
                "encoded",
                &ENCODED,
                "client_secret_basic",
                "TK_ENCODED"
            ),
            set("b", "basic", &b, "    on_shutdown: keep\n"),
            set("p", "post", &p, ""),
            set("e", "encoded", &e, ""),
        ),
    );
    let env = [
        ("TK_BASIC", BASIC.client_secret),
        ("TK_POST", POST.client_secret),
        ("TK_ENCODED", ENCODED.client_secret),
    ];

    // check finds the metadata where django-oauth-toolkit serves it, with every endpoint.
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["check", "-c", &cfg]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let issuer = dot.issuer();
    assert!(
        text.contains(&format!(
            "providers.basic: endpoints discovered from {issuer}/.well-known/oauth-authorization-server (RFC 8414 suffix appended to the issuer): token_endpoint {issuer}/token/, revocation_endpoint {issuer}/revoke_token/, introspection_endpoint {issuer}/introspect/"
        )),
        "{text}"
    );
    assert!(!text.contains("no revocation endpoint"), "{text}");

    let mut daemon = Daemon::spawn(d, &["run", "-c", &cfg], 0o022, &env);
    let all = [&b, &p, &e];
    assert!(
        wait_until(PATIENCE, || all.iter().all(|f| f.exists())).await,
        "{}\n{}",
        daemon.output(),
        dot.output()
    );
    for f in all {
        assert!(
            dot.active(&BASIC, &read(f).unwrap()).await,
            "{}",
            f.display()
        );
    }
    stop_clean(&mut daemon).await;
    // Set b keeps its token; the others were revoked at the server.
    let kept = read(&b).unwrap();
    assert!(dot.active(&BASIC, &kept).await);
    assert_eq!(dot.live_tokens(), 1, "{}", daemon.output());

    // A restart introspects the kept token and uses it on; the stop then revokes it.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("    on_shutdown: keep\n", "");
    std::fs::write(&cfg, text).unwrap();
    let mut daemon = Daemon::spawn(d, &["run", "-c", &cfg], 0o022, &env);
    daemon
        .wait_for_log("reusing the token it already holds")
        .await;
    assert_eq!(read(&b).unwrap(), kept);
    assert!(wait_until(PATIENCE, || all.iter().all(|f| f.exists())).await);
    stop_clean(&mut daemon).await;
    assert_eq!(
        dot.live_tokens(),
        0,
        "a token outlived the daemon:\n{}",
        daemon.output()
    );
    assert!(!dot.active(&BASIC, &kept).await);
    let out = daemon.output();
    for app in [BASIC, POST, ENCODED] {
        assert!(!out.contains(app.client_secret), "{out}");
    }
}
