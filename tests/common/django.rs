//! A real django-oauth-toolkit server on 127.0.0.1, for the tests that check tokenkeeper
//! against an OAuth 2.0 server nobody on this team wrote.
//!
//! The test support writes a tiny Django project into the test's folder (settings with a
//! SQLite database there, `o/` mounting django-oauth-toolkit's URLs as its documentation
//! does), migrates it, registers the client applications, and serves it with Django's own
//! server. The Python comes from [`super::tools::django_oauth_toolkit`]: installed on first
//! use into the tests' cache, and a test that cannot have it fails saying how to get it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::PATIENCE;
use super::bao::free_port;

/// A confidential client_credentials application: its client id and secret.
pub struct App {
    pub client_id: &'static str,
    pub client_secret: &'static str,
}

pub struct Dot {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
    python: PathBuf,
    project: PathBuf,
}

const SETTINGS: &str = r#"
from pathlib import Path
HERE = Path(__file__).resolve().parent.parent
SECRET_KEY = "tokenkeeper-tests-only"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "oauth2_provider",
]
MIDDLEWARE = []
ROOT_URLCONF = "tkdot.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": HERE / "db.sqlite3"}}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# The scopes the tests' sets ask for; client_credentials needs nothing else. OpenID Connect
# on, as most deployments have it: its discovery document names no revocation endpoint, which
# is what a client that prefers it over the RFC 8414 document meets.
OAUTH2_PROVIDER = {
    "SCOPES": {"openid": "OpenID Connect", "read": "Read", "write": "Write"},
    "ACCESS_TOKEN_EXPIRE_SECONDS": 3600,
    "OIDC_ENABLED": True,
    "OIDC_RSA_PRIVATE_KEY": (HERE / "oidc.pem").read_text(),
}
"#;

/// django-oauth-toolkit's documented mount: `path("o/", include(...))`, which serves its
/// RFC 8414 document appended to the issuer, `/o/.well-known/oauth-authorization-server`.
const URLS: &str = r#"
from django.urls import include, path
urlpatterns = [path("o/", include("oauth2_provider.urls", namespace="oauth2_provider"))]
"#;

impl Dot {
    /// Write, migrate and serve the project under `dir` with `apps` registered; panics
    /// (saying how to get django-oauth-toolkit) when it cannot be had.
    pub async fn start(dir: &Path, apps: &[App]) -> Dot {
        let python = super::tools::django_oauth_toolkit();
        let project = dir.join("dot");
        std::fs::create_dir_all(project.join("tkdot")).unwrap();
        std::fs::write(project.join("tkdot/__init__.py"), "").unwrap();
        std::fs::write(project.join("tkdot/settings.py"), SETTINGS).unwrap();
        std::fs::write(project.join("tkdot/urls.py"), URLS).unwrap();
        // The key OpenID Connect signs ID tokens with; never used by client_credentials.
        std::fs::write(
            project.join("oidc.pem"),
            include_str!("../keys/rsa-test.pem"),
        )
        .unwrap();
        let mut script = String::from("from oauth2_provider.models import Application\n");
        for app in apps {
            // The secret as the server stores it (hashed on save): given in clear only here.
            script.push_str(&format!(
                "Application.objects.create(name={id:?}, client_id={id:?}, client_secret={secret:?}, client_type=Application.CLIENT_CONFIDENTIAL, authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS)\n",
                id = app.client_id,
                secret = app.client_secret,
            ));
        }
        let django = |args: &[&str]| {
            let out = Command::new(&python)
                .args(["-m", "django"])
                .args(args)
                .env("DJANGO_SETTINGS_MODULE", "tkdot.settings")
                .env("PYTHONPATH", &project)
                .current_dir(&project)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "django {args:?} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        django(&["migrate", "--noinput", "-v", "0"]);
        django(&["shell", "-c", &script]);
        let port = free_port();
        let log = dir.join(format!("dot-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(&python)
            .args(["-m", "django", "runserver", "--noreload", "--nothreading"])
            .arg(format!("127.0.0.1:{port}"))
            .env("DJANGO_SETTINGS_MODULE", "tkdot.settings")
            .env("PYTHONPATH", &project)
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(&project)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let dot = Dot {
            child,
            port,
            log,
            python,
            project,
        };
        tokenkeeper::init_tls();
        let client = reqwest::Client::new();
        let start = Instant::now();
        loop {
            let up = client
                .get(format!(
                    "{}/.well-known/oauth-authorization-server",
                    dot.issuer()
                ))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                break;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "django-oauth-toolkit did not start:\n{}",
                dot.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        dot
    }

    /// The issuer: the server's origin and django-oauth-toolkit's mount.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}/o", self.port)
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The access tokens the server holds as valid now, by the server's own database.
    pub fn live_tokens(&self) -> usize {
        let out = Command::new(&self.python)
            .args(["-m", "django", "shell", "-v", "0", "-c"])
            .arg(
                "from django.utils import timezone\n\
                 from oauth2_provider.models import AccessToken\n\
                 print(AccessToken.objects.filter(expires__gt=timezone.now()).count())",
            )
            .env("DJANGO_SETTINGS_MODULE", "tkdot.settings")
            .env("PYTHONPATH", &self.project)
            .current_dir(&self.project)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The last line: Django 5.2's shell may first say what it imported.
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let last = text.lines().last().unwrap_or_default().trim().to_string();
        last.parse()
            .unwrap_or_else(|_| panic!("not a count from the server's shell: {text:?}"))
    }

    /// Ask the server's RFC 7662 endpoint about `token`, as `app`: whether it is active.
    pub async fn active(&self, app: &App, token: &str) -> bool {
        tokenkeeper::init_tls();
        let r = reqwest::Client::new()
            .post(format!("{}/introspect/", self.issuer()))
            .basic_auth(app.client_id, Some(app.client_secret))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "introspection: HTTP {}",
            r.status()
        );
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        v["active"] == true
    }
}

impl Drop for Dot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
