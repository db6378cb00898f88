//! A real OpenBao dev server (`bao server -dev`, in memory) on 127.0.0.1 for the store tests.
//!
//! `bao` comes from [`super::tools::bao`]: installed on first use into the tests' cache, and a
//! test that cannot have it fails saying how to get it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::PATIENCE;

/// The dev server's root token: fixed, so tests and configs can name it.
pub const ROOT: &str = "tk-test-root";

pub struct Bao {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
    http: reqwest::Client,
}

/// A port free at the time of asking: bind port 0, read it, release it.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Bao {
    /// Start a dev server; panics (saying how to get `bao`) when it cannot be had.
    pub async fn start(dir: &Path) -> Bao {
        tokenkeeper::init_tls();
        let bin = super::tools::bao();
        let port = free_port();
        let log = dir.join(format!("bao-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args([
                "server",
                "-dev",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
                &format!("-dev-root-token-id={ROOT}"),
            ])
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let bao = Bao {
            child,
            port,
            log,
            http: reqwest::Client::new(),
        };
        let start = Instant::now();
        loop {
            if let Ok(r) = bao.get_raw("sys/health").await
                && r.0 == 200
            {
                break;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "bao did not start:\n{}",
                std::fs::read_to_string(&bao.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bao
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn get_raw(&self, path: &str) -> Result<(u16, Value), reqwest::Error> {
        self.req(reqwest::Method::GET, path, None).await
    }

    /// A request as root; answers (status, JSON or Null).
    pub async fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut r = self
            .http
            .request(method, format!("{}/v1/{path}", self.addr()))
            .header("X-Vault-Token", ROOT);
        if let Some(b) = body {
            r = r.body(b.to_string());
        }
        let resp = r.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.req(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            path,
            body,
        )
        .await
        .unwrap()
    }

    /// The latest version of `secret/<path>`: (version, data), or None.
    pub async fn read(&self, path: &str) -> Option<(u64, Value)> {
        let (status, v) = self.call("GET", &format!("secret/data/{path}"), None).await;
        if status != 200 {
            return None;
        }
        let version = v["data"]["metadata"]["version"].as_u64().unwrap();
        Some((version, v["data"]["data"].clone()))
    }

    pub async fn metadata(&self, path: &str) -> Value {
        self.call("GET", &format!("secret/metadata/{path}"), None)
            .await
            .1["data"]
            .clone()
    }

    /// The token the store holds at `path`, if any.
    pub async fn token(&self, path: &str) -> Option<String> {
        self.read(path)
            .await
            .and_then(|(_, d)| d["access_token"].as_str().map(str::to_string))
    }

    /// Seal the server: it answers 503 until [`Bao::unseal`].
    pub async fn seal(&self) {
        let (s, v) = self.call("PUT", "sys/seal", None).await;
        assert!(s == 204 || s == 200, "seal: {s} {v}");
    }

    pub async fn unseal(&self) {
        let log = std::fs::read_to_string(&self.log).unwrap();
        let key = log
            .lines()
            .find_map(|l| l.trim().strip_prefix("Unseal Key: "))
            .expect("the dev server prints its unseal key")
            .trim()
            .to_string();
        let (s, v) = self
            .call("PUT", "sys/unseal", Some(serde_json::json!({ "key": key })))
            .await;
        assert_eq!(s, 200, "unseal: {v}");
    }

    /// A policy `tk`: the one docs/files-and-stores.md gives for tokenkeeper, and nothing more.
    pub async fn tokenkeeper_policy(&self) {
        let policy = r#"
path "secret/data/tokenkeeper/*"     { capabilities = ["create", "read", "update", "delete"] }
path "secret/metadata/tokenkeeper/*" { capabilities = ["create", "read", "update", "delete", "list"] }
path "secret/destroy/tokenkeeper/*"  { capabilities = ["update"] }
path "secret/config"                 { capabilities = ["read"] }
"#;
        let (s, v) = self
            .call(
                "PUT",
                "sys/policies/acl/tk",
                Some(serde_json::json!({ "policy": policy })),
            )
            .await;
        assert_eq!(s, 204, "policy: {v}");
    }

    /// Enable AppRole with a role `tk` whose tokens live `ttl`; returns (role_id, secret_id).
    pub async fn approle(&self, ttl: &str) -> (String, String) {
        self.tokenkeeper_policy().await;
        let (s, v) = self
            .call(
                "POST",
                "sys/auth/approle",
                Some(serde_json::json!({ "type": "approle" })),
            )
            .await;
        assert_eq!(s, 204, "enable approle: {v}");
        let (s, v) = self
            .call(
                "POST",
                "auth/approle/role/tk",
                Some(serde_json::json!({ "token_policies": ["tk"], "token_ttl": ttl, "token_max_ttl": ttl })),
            )
            .await;
        assert_eq!(s, 204, "role: {v}");
        let (_, v) = self.call("GET", "auth/approle/role/tk/role-id", None).await;
        let role_id = v["data"]["role_id"].as_str().unwrap().to_string();
        let (_, v) = self
            .call("POST", "auth/approle/role/tk/secret-id", None)
            .await;
        let secret_id = v["data"]["secret_id"].as_str().unwrap().to_string();
        (role_id, secret_id)
    }

    /// A renewable token with policy `tk` that lives `ttl` unless renewed.
    pub async fn renewable_token(&self, ttl: &str) -> String {
        self.tokenkeeper_policy().await;
        let (s, v) = self
            .call(
                "POST",
                "auth/token/create",
                Some(serde_json::json!({ "policies": ["tk"], "ttl": ttl, "renewable": true })),
            )
            .await;
        assert_eq!(s, 200, "token: {v}");
        v["auth"]["client_token"].as_str().unwrap().to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        // Ended by its PID: the child we started, and only it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `stores:` block naming this server as `bao`, with `auth` (YAML flow mapping).
pub fn stores_yaml(bao: &Bao, auth: &str, extra: &str) -> String {
    format!(
        "stores:\n  bao:\n    kind: vault\n    address: {}\n    mount: secret\n    auth: {auth}\n{extra}",
        bao.addr()
    )
}

/// Write a secret file (0600) holding `value`; returns its path.
pub fn secret_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, value).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}
