//! `tokenkeeper demo`: a local development provider plus the daemon, without credentials.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::error;

use tokenkeeper::config;
use tokenkeeper::devprovider::{self, DevProvider, DevProviderOptions};

use super::config_error::print_config_error;
use super::logging::init_logging;
use super::run::run_daemon;
use super::{EXIT_CONFIG, EXIT_OSERR};
use tokenkeeper::status::plural;

/// The demo's config, in the same YAML an operator writes: it goes through the real loader.
fn demo_config(dir: &Path, base_url: &str) -> String {
    let d = dir.display();
    format!(
        r#"# Written by `tokenkeeper demo`. The same file runs against `tokenkeeper dev-provider`.
state_dir: {d}/state
shutdown_timeout: 10s
defaults:
  refresh: {{ at: 66%, jitter: 10%, min_interval: 1s }}
  file: {{ mode: "0640", format: raw }}
  revoke_superseded_after: 5s
providers:
  dev:
    kind: voucherify
    base_url: {base_url}
    # The development provider's well-known credentials; real keys belong in
    # {{ credential: NAME }}, {{ file: PATH }} or {{ env: NAME }}.
    app_id: {app_id}
    app_token: {app_token}
scope_sets:
  - name: orders-sync
    provider: dev
    scopes: [orders, customers]
    file: {{ path: {d}/orders-sync.token }}
  - name: reports
    provider: dev
    scopes: [vouchers, campaigns]
    file: {{ path: {d}/reports.json, format: json }}
  - name: legacy-app
    provider: dev
    scopes: [api]
    file: {{ path: {d}/legacy-app.env, format: env, mode: "0600" }}
"#,
        app_id = devprovider::DEV_APP_ID,
        app_token = devprovider::DEV_APP_TOKEN,
    )
}

pub(crate) async fn demo(dir: PathBuf, lifetime: Duration) -> u8 {
    init_logging(None);
    let dir = match std::path::absolute(&dir) {
        Ok(d) => d,
        Err(e) => {
            error!(dir = %dir.display(), error = %e, "cannot resolve the demo folder");
            return EXIT_OSERR;
        }
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        error!(dir = %dir.display(), error = %e, "cannot create the demo folder");
        return EXIT_OSERR;
    }
    let opts = DevProviderOptions {
        lifetime,
        ..DevProviderOptions::default()
    };
    let provider = match DevProvider::start(SocketAddr::from(([127, 0, 0, 1], 0)), opts).await {
        Ok(p) => p,
        Err(e) => {
            error!(error = %e, "cannot start the development provider");
            return EXIT_OSERR;
        }
    };
    let cfg_path = dir.join("demo-config.yaml");
    // Owner-only whatever the umask (a config others may write is refused), and written as
    // token files are, by a rename over the path: a symlink planted there is replaced, never
    // followed to write over what it names.
    let text = demo_config(&dir, &provider.base_url());
    let written =
        tokenkeeper::fsio::write_advisory_file(&cfg_path, 0o600, |w| w.write_all(text.as_bytes()));
    if let Err(e) = written {
        error!(path = %cfg_path.display(), error = %tokenkeeper::error_chain(&e), "cannot write the demo config");
        return EXIT_OSERR;
    }
    let config = match config::load(&cfg_path) {
        Ok(l) => l.config,
        Err(e) => {
            print_config_error(&e);
            return EXIT_CONFIG;
        }
    };
    say_err!(
        "\ntokenkeeper demo\n  development provider: {url} (Voucherify OAuth v1, {life}s tokens)\n  token files:          {d}/\n  config it runs:       {cfg}\n\n  Watch the files change:  watch -n1 'ls -l {d}; cat {d}/orders-sync.token; echo'\n  Ctrl-C revokes every token and removes the files.\n",
        url = provider.base_url(),
        life = lifetime.as_secs(),
        d = dir.display(),
        cfg = cfg_path.display(),
    );
    let code = run_daemon(config, Some(cfg_path.clone()), false, None).await;
    let live = provider.live_tokens().len();
    let issued = provider.issued_tokens().len();
    say_err!(
        "\ndemo over: the provider issued {issued} token{} and now holds {live} live one{}.",
        plural(issued),
        plural(live)
    );
    provider.shutdown().await;
    code
}
