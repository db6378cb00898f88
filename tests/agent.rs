//! The fleet recipe, consumer side: the OpenBao Agent config in docs/fleet/bao-agent.hcl, run
//! for real against a real OpenBao server, renders the token tokenkeeper keeps in the store
//! into a legacy app's file, and renders the new one after a rotation.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::bao::{self, Bao};
use common::tools;
use common::*;
use nix::sys::signal::Signal;

/// The agent process, ended by its PID when the test ends.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_documented_agent_template_renders_the_token_and_its_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let b = Bao::start(dir.path()).await;
    // The VM's identity: an AppRole that may only read the fleet's paths, as the recipe says.
    let policy = r#"path "secret/data/tokenkeeper/*" { capabilities = ["read"] }"#;
    let (s, _) = b
        .call(
            "PUT",
            "sys/policies/acl/fleet-reader",
            Some(serde_json::json!({ "policy": policy })),
        )
        .await;
    assert_eq!(s, 204);
    b.call(
        "POST",
        "sys/auth/approle",
        Some(serde_json::json!({ "type": "approle" })),
    )
    .await;
    let (s, _) = b
        .call(
            "POST",
            "auth/approle/role/vm",
            Some(serde_json::json!({ "token_policies": ["fleet-reader"] })),
        )
        .await;
    assert_eq!(s, 204);
    let (_, v) = b.call("GET", "auth/approle/role/vm/role-id", None).await;
    let role_id = v["data"]["role_id"].as_str().unwrap().to_string();
    let (_, v) = b.call("POST", "auth/approle/role/vm/secret-id", None).await;
    let secret_id = v["data"]["secret_id"].as_str().unwrap().to_string();
    let agent_dir = dir.path().join("agent");
    let app_dir = dir.path().join("app");
    std::fs::create_dir_all(&agent_dir).unwrap();
    std::fs::create_dir_all(&app_dir).unwrap();
    bao::secret_file(&agent_dir, "role-id", &role_id);
    bao::secret_file(&agent_dir, "secret-id", &secret_id);

    // tokenkeeper, centrally: the set the recipe reads.
    let p = provider(Duration::from_secs(900)).await;
    let token = bao::secret_file(dir.path(), "bao-token", bao::ROOT);
    let top = bao::stores_yaml(
        &b,
        &format!("{{ token: {{ file: {} }} }}", token.display()),
        "",
    );
    let sets = format!(
        "  - name: orders-sync\n    provider: dev\n    scopes: [orders]\n    file: {{ path: {}/central.token }}\n    store: {{ name: bao, path: tokenkeeper/orders-sync }}\n",
        dir.path().display()
    );
    let mut d = Daemon::run(dir.path(), &config(&p, dir.path(), &top, &sets), 0o022);
    let central = dir.path().join("central.token");
    assert!(
        wait_until(PATIENCE, || read(&central).is_some()).await,
        "{}",
        d.output()
    );

    // The recipe as documented, with this test's addresses and folders, and a 1 s interval
    // instead of 5 s to keep the test short.
    let recipe = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/fleet/bao-agent.hcl"),
    )
    .unwrap();
    let hcl = recipe
        .replace("https://bao.internal:8200", &b.addr())
        .replace("/etc/bao-agent/", &format!("{}/", agent_dir.display()))
        .replace("/run/bao-agent/", &format!("{}/", agent_dir.display()))
        .replace("/run/legacy-app/", &format!("{}/", app_dir.display()))
        .replace(
            "static_secret_render_interval = \"5s\"",
            "static_secret_render_interval = \"1s\"",
        );
    let hcl_path = agent_dir.join("agent.hcl");
    std::fs::write(&hcl_path, hcl).unwrap();
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let _agent = Agent(
        Command::new(tools::bao())
            .args(["agent", &format!("-config={}", hcl_path.display())])
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_TOKEN")
            .env_remove("VAULT_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let rendered = app_dir.join("orders-sync.token");
    let agent_log = || read(&dir.path().join("agent.log")).unwrap_or_default();
    let first = read(&central).unwrap();
    assert!(
        wait_until(PATIENCE, || read(&rendered).as_deref()
            == Some(first.as_str()))
        .await,
        "agent did not render the token:\n{}",
        agent_log()
    );
    assert_eq!(mode(&rendered), 0o640);

    // A rotation reaches the legacy app's file through the store.
    d.signal(Signal::SIGUSR1);
    assert!(wait_until(PATIENCE, || read(&central).is_some_and(|t| t != first)).await);
    let second = read(&central).unwrap();
    assert!(
        wait_until(PATIENCE, || read(&rendered).as_deref()
            == Some(second.as_str()))
        .await,
        "agent did not render the rotated token:\n{}",
        agent_log()
    );
    d.signal(Signal::SIGTERM);
    assert!(d.wait(PATIENCE).await.success(), "{}", d.output());
}
