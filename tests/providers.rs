//! The oauth2 and square provider kinds end to end: the built binary against strict,
//! stateful fakes on 127.0.0.1 (tests/fakes), stopped with real signals.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;
mod fakes;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use fakes::oauth2::OAuth2Fake;
use fakes::square::SquareFake;
use nix::sys::signal::Signal;

/// Write a config, giving it a state directory of its own unless it names one: tests must
/// never share (or lock) the system's /var/lib/tokenkeeper.
fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join(format!("config-{}.yaml", fastrand::u32(..)));
    let text = if text.contains("state_dir:") {
        text.to_string()
    } else {
        format!("state_dir: {}/state\n{text}", dir.display())
    };
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn set(name: &str, provider: &str, scopes: &str, path: &Path, extra: &str) -> String {
    format!(
        "  - name: {name}\n    provider: {provider}\n    scopes: [{scopes}]\n    file: {{ path: {} }}\n{extra}",
        path.display()
    )
}

/// The token a square provider's state file holds.
fn stored_refresh(state_dir: &Path, provider: &str) -> Option<String> {
    let text = std::fs::read_to_string(state_dir.join(format!("square-{provider}.json"))).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["token"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread")]
async fn all_three_kinds_in_one_config_and_square_revokes_only_when_its_set_says_so() {
    let vf = provider(Duration::from_secs(900)).await;
    let idp = OAuth2Fake::start("client_secret_basic", "tk client:1", "s3cr%t +/=").await;
    idp.state().extra = vec![("audience".into(), "https://api.example".into())];
    let sq = SquareFake::start(Some("sq0csp-secret"), false, "EQAAcodeflow").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (v, api, orders, kept) = (
        d.join("v.token"),
        d.join("api.json"),
        d.join("orders.token"),
        d.join("kept.token"),
    );
    let cfg = format!(
        r#"state_dir: {state}
shutdown_timeout: 10s
defaults:
  on_shutdown: revoke
providers:
  dev:
    kind: voucherify
    base_url: {vf}
    app_id: {{ env: TK_TEST_APP_ID }}
    app_token: {{ env: TK_TEST_APP_TOKEN }}
  idp:
    kind: oauth2
    issuer: {issuer}
    client_id: "tk client:1"
    client_secret: {{ env: TK_IDP_SECRET }}
    extra_params: {{ audience: "https://api.example" }}
  shop:
    kind: square
    base_url: {sq}
    client_id: sq0idp-tkTestApp
    client_secret: {{ env: TK_SQ_SECRET }}
    refresh_token: {{ env: TK_SQ_REFRESH }}
scope_sets:
{sets}"#,
        state = d.join("state").display(),
        vf = vf.base_url(),
        issuer = idp.issuer(),
        sq = sq.server.url(),
        sets = [
            set("v", "dev", "vouchers", &v, ""),
            set("api", "idp", "read, write", &api, ""),
            set(
                "orders",
                "shop",
                "ORDERS_READ",
                &orders,
                "    on_shutdown: revoke\n"
            ),
            set("kept", "shop", "ITEMS_READ", &kept, ""),
        ]
        .concat(),
    );
    let cfg = write_config(d, &cfg);
    let env = [
        ("TK_IDP_SECRET", "s3cr%t +/="),
        ("TK_SQ_SECRET", "sq0csp-secret"),
        ("TK_SQ_REFRESH", "EQAAcodeflow"),
    ];
    let mut daemon = Daemon::spawn(d, &["run", "-c", &cfg], 0o022, &env);
    let all = [&v, &api, &orders, &kept];
    assert!(
        wait_until(PATIENCE, || all.iter().all(|f| f.exists())).await,
        "{}",
        daemon.output()
    );
    assert!(vf.is_live(&read(&v).unwrap()));
    let api_token = read(&api).unwrap();
    assert!(idp.live().contains(&api_token));
    assert_eq!(idp.state().tokens[0].1, "read write");
    let (orders_token, kept_token) = (read(&orders).unwrap(), read(&kept).unwrap());
    assert_eq!(sq.live().len(), 2);
    assert!(sq.live().contains(&orders_token) && sq.live().contains(&kept_token));
    daemon
        .wait_for_log("discovered the authorization server's endpoints")
        .await;
    let requests = idp.state().requests.clone();
    assert_eq!(
        requests[0], "GET /.well-known/oauth-authorization-server/realms/ops",
        "{requests:?}"
    );

    daemon.signal(Signal::SIGTERM);
    assert_eq!(
        daemon.wait(PATIENCE).await.code(),
        Some(0),
        "{}",
        daemon.output()
    );
    assert!(vf.live_tokens().is_empty());
    assert!(idp.live().is_empty(), "the oauth2 token was not revoked");
    // defaults.on_shutdown: revoke does not reach square sets; `orders` asked itself.
    assert_eq!(sq.state().revokes, vec![(orders_token.clone(), true)]);
    assert_eq!(sq.live(), vec![kept_token.clone()]);
    assert!(!orders.exists() && !v.exists() && !api.exists());
    assert_eq!(read(&kept).as_deref(), Some(kept_token.as_str()));
    assert!(vf.violations().is_empty(), "{:?}", vf.violations());
    assert!(
        idp.state().violations.is_empty(),
        "{:?}",
        idp.state().violations
    );
    assert!(
        sq.state().violations.is_empty(),
        "{:?}",
        sq.state().violations
    );
    let out = daemon.output();
    for secret in [
        "s3cr%t",
        "sq0csp-secret",
        "EQAAcodeflow",
        &api_token,
        &orders_token,
    ] {
        assert!(!out.contains(secret), "a secret reached the log:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth2_post_auth_openid_fallback_no_expiry_and_no_revocation_endpoint() {
    let idp = OAuth2Fake::start("client_secret_post", "tk", "pw").await;
    {
        let mut s = idp.state();
        s.rfc8414 = false;
        s.revocation = false;
        s.expires_in = None;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    let cfg = format!(
        "defaults:\n  refresh: {{ at: 50%, jitter: 0%, min_interval: 100ms }}\n  revoke_superseded_after: 100ms\nproviders:\n  idp:\n    kind: oauth2\n    issuer: {}\n    client_id: tk\n    client_secret: {{ env: TK_IDP_SECRET }}\n    auth_method: client_secret_post\n    default_lifetime: 2s\nscope_sets:\n{}",
        idp.issuer(),
        set("s", "idp", "api://tk/.default", &f, "")
    );
    let cfg = write_config(dir.path(), &cfg);
    let mut daemon = Daemon::spawn(
        dir.path(),
        &["run", "-c", &cfg],
        0o022,
        &[("TK_IDP_SECRET", "pw")],
    );
    assert!(
        wait_until(PATIENCE, || idp.state().tokens.len() >= 3).await,
        "{}",
        daemon.output()
    );
    assert!(wait_until(PATIENCE, || f.exists()).await);
    daemon.signal(Signal::SIGTERM);
    assert_eq!(
        daemon.wait(PATIENCE).await.code(),
        Some(0),
        "{}",
        daemon.output()
    );
    let out = daemon.output();
    assert_eq!(out.matches("has no expires_in").count(), 1, "{out}");
    assert!(out.contains("no revocation endpoint"), "{out}");
    assert!(out.contains("left to expire on its own"), "{out}");
    assert!(!f.exists(), "the token file outlived the daemon");
    let s = idp.state();
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    assert!(s.requests[0].starts_with("GET /.well-known/oauth-authorization-server/"));
    assert_eq!(
        s.requests[1],
        "GET /realms/ops/.well-known/oauth-authorization-server"
    );
    assert_eq!(
        s.requests[2],
        "GET /realms/ops/.well-known/openid-configuration"
    );
    assert!(!s.requests.iter().any(|r| r.contains("revoke")));
}

/// Answers without `expires_in` live `default_lifetime` by assumption only: superseded
/// tokens are revoked at the provider even when their revocation comes after the assumed
/// expiry, and nothing is left live at stop.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_with_an_assumed_lifetime_are_revoked_not_forgotten() {
    let idp = OAuth2Fake::start("client_secret_post", "tk", "pw").await;
    idp.state().expires_in = None;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.token");
    // Refreshed every second, a superseded token is revoked two seconds later: a second past
    // its assumed expiry.
    let cfg = format!(
        "defaults:\n  refresh: {{ at: 50%, jitter: 0%, min_interval: 100ms }}\n  revoke_superseded_after: 2s\nproviders:\n  idp:\n    kind: oauth2\n    issuer: {}\n    client_id: tk\n    client_secret: {{ env: TK_IDP_SECRET }}\n    auth_method: client_secret_post\n    default_lifetime: 2s\nscope_sets:\n{}",
        idp.issuer(),
        set("s", "idp", "api", &f, "")
    );
    let cfg = write_config(dir.path(), &cfg);
    let mut daemon = Daemon::spawn(
        dir.path(),
        &["run", "-c", &cfg],
        0o022,
        &[("TK_IDP_SECRET", "pw")],
    );
    assert!(
        wait_until(PATIENCE, || idp.state().tokens.len() >= 3).await,
        "{}",
        daemon.output()
    );
    let first = idp.state().tokens[0].0.clone();
    assert!(
        wait_until(PATIENCE, || !idp.live().contains(&first)).await,
        "a superseded token of assumed lifetime was left live:\n{}",
        daemon.output()
    );
    daemon.signal(Signal::SIGTERM);
    assert_eq!(
        daemon.wait(PATIENCE).await.code(),
        Some(0),
        "{}",
        daemon.output()
    );
    assert!(
        idp.live().is_empty(),
        "{:?}\n{}",
        idp.live(),
        daemon.output()
    );
    let s = idp.state();
    assert!(s.violations.is_empty(), "{:?}", s.violations);
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth2_refusals_and_a_foreign_issuer_are_logged_not_fatal() {
    let mixup = OAuth2Fake::start("client_secret_basic", "tk", "pw").await;
    mixup.state().announce_issuer = Some("https://evil.example".into());
    let strict = OAuth2Fake::start("client_secret_basic", "tk", "pw").await;
    strict.state().refuse_next = Some((400, "invalid_scope", "scope frob is unknown"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = format!(
        "providers:\n  mixup:\n    kind: oauth2\n    issuer: {}\n    client_id: tk\n    client_secret: {{ env: TK_IDP_SECRET }}\n  strict:\n    kind: oauth2\n    issuer: {}\n    client_id: tk\n    client_secret: {{ env: TK_IDP_SECRET }}\nscope_sets:\n{}{}",
        mixup.issuer(),
        strict.issuer(),
        set("a", "mixup", "read", &d.join("a.token"), ""),
        set("b", "strict", "frob", &d.join("b.token"), ""),
    );
    let cfg = write_config(d, &cfg);
    let mut daemon = Daemon::spawn(d, &["run", "-c", &cfg], 0o022, &[("TK_IDP_SECRET", "pw")]);
    daemon.wait_for_log("not the configured").await;
    daemon
        .wait_for_log(r#"error=invalid_scope error_description="scope frob is unknown""#)
        .await;
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon died"
    );
    daemon.signal(Signal::SIGTERM);
    assert_eq!(
        daemon.wait(PATIENCE).await.code(),
        Some(0),
        "{}",
        daemon.output()
    );
    assert!(mixup.state().tokens.is_empty());
    assert!(mixup.state().violations.is_empty());
    assert!(strict.state().violations.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn square_single_use_refresh_tokens_rotate_through_state_dir() {
    let sq = SquareFake::start(None, true, "EQAAseed").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("state");
    let (a, b) = (d.join("a.token"), d.join("b.token"));
    let cfg = format!(
        "state_dir: {}\nproviders:\n  shop:\n    kind: square\n    base_url: {}\n    client_id: sq0idp-tkTestApp\n    refresh_token: {{ env: TK_SQ_REFRESH }}\nscope_sets:\n{}{}",
        state.display(),
        sq.server.url(),
        set("a", "shop", "ORDERS_READ", &a, ""),
        set("b", "shop", "ITEMS_READ, ORDERS_READ", &b, ""),
    );
    let cfg = write_config(d, &cfg);
    let env = [("TK_SQ_REFRESH", "EQAAseed")];
    let mut daemon = Daemon::spawn(d, &["run", "-c", &cfg], 0o022, &env);
    assert!(
        wait_until(PATIENCE, || a.exists() && b.exists()).await,
        "{}",
        daemon.output()
    );
    // Two sets share one provider: their rotations never overlap.
    daemon.signal(Signal::SIGUSR1);
    assert!(
        wait_until(PATIENCE, || sq.state().access.len() >= 4).await,
        "{}",
        daemon.output()
    );
    let current = || sq.state().valid_refresh.clone();
    assert!(
        wait_until(PATIENCE, || stored_refresh(&state, "shop")
            .is_some_and(|t| current() == [t]))
        .await,
        "the state file does not hold the live refresh token"
    );
    assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(
        std::fs::metadata(state.join("square-shop.json"))
            .unwrap()
            .mode()
            & 0o7777,
        0o600
    );
    daemon.signal(Signal::SIGTERM);
    assert_eq!(
        daemon.wait(PATIENCE).await.code(),
        Some(0),
        "{}",
        daemon.output()
    );
    // Square keeps by default: nothing revoked, the files stay.
    assert!(sq.state().revokes.is_empty());
    assert!(a.exists() && b.exists());
    {
        let s = sq.state();
        assert!(s.violations.is_empty(), "{:?}", s.violations);
        assert_eq!(s.presented.len(), 4);
    }

    // A restart reuses the journaled access tokens; the next rotation continues from the
    // saved refresh token, not the spent configured one.
    let mut daemon = Daemon::spawn(d, &["run", "-c", &cfg], 0o022, &env);
    daemon
        .wait_for_log("ready: every set has a valid token")
        .await;
    assert_eq!(
        sq.state().presented.len(),
        4,
        "a restart issued instead of reusing"
    );
    daemon.signal(Signal::SIGUSR1);
    assert!(
        wait_until(PATIENCE, || sq.state().presented.len() >= 6).await,
        "{}",
        daemon.output()
    );
    daemon.signal(Signal::SIGTERM);
    assert_eq!(
        daemon.wait(PATIENCE).await.code(),
        Some(0),
        "{}",
        daemon.output()
    );
    assert!(
        sq.state().violations.is_empty(),
        "{:?}",
        sq.state().violations
    );
    assert!(!daemon.output().contains("EQAA"), "{}", daemon.output());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_the_new_refresh_token_and_the_token_file_loses_nothing() {
    let sq = SquareFake::start(None, true, "EQAAseed").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("state");
    // The token's directory is a regular file: every write of the token fails.
    std::fs::write(d.join("blocked"), "").unwrap();
    let config = |token: &Path| {
        format!(
            "state_dir: {}\nproviders:\n  shop:\n    kind: square\n    base_url: {}\n    client_id: sq0idp-tkTestApp\n    refresh_token: {{ env: TK_SQ_REFRESH }}\nscope_sets:\n{}",
            state.display(),
            sq.server.url(),
            set("a", "shop", "ORDERS_READ", token, ""),
        )
    };
    let env = [("TK_SQ_REFRESH", "EQAAseed")];
    let cfg = write_config(d, &config(&d.join("blocked/a.token")));
    let mut daemon = Daemon::spawn(d, &["run", "-c", &cfg], 0o022, &env);
    daemon.wait_for_log("could not write the token").await;
    // Stop Square from answering (nothing more is spent), let the state settle, then kill.
    sq.state().outage = Some(503);
    let current = || sq.state().valid_refresh.clone();
    assert!(
        wait_until(PATIENCE, || stored_refresh(&state, "shop")
            .is_some_and(|t| current() == [t]))
        .await,
        "the rotated refresh token was not saved:\n{}",
        daemon.output()
    );
    daemon.signal(Signal::SIGKILL);
    daemon.wait(PATIENCE).await;

    sq.state().outage = None;
    let good = d.join("a.token");
    let cfg = write_config(d, &config(&good));
    let mut daemon = Daemon::spawn(d, &["run", "-c", &cfg], 0o022, &env);
    assert!(
        wait_until(PATIENCE, || good.exists()).await,
        "{}",
        daemon.output()
    );
    assert!(sq.live().contains(&read(&good).unwrap()));
    daemon.signal(Signal::SIGTERM);
    assert_eq!(
        daemon.wait(PATIENCE).await.code(),
        Some(0),
        "{}",
        daemon.output()
    );
    let s = sq.state();
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    assert_eq!(stored_refresh(&state, "shop").unwrap(), s.valid_refresh[0]);
}
