//! `tokenkeeper check`: validate the configuration and the secrets it names, then ask each
//! provider that discovers its endpoints whether it lists the chosen auth_method.

use std::path::Path;
use std::time::Duration;

use tokenkeeper::config::{self, Config, Loaded};
use tokenkeeper::error_chain as chain;
use tokenkeeper::provider::{self, ProviderConfig, ProviderKind};

use super::config_error::{print_config_error, print_warnings};
use super::{EXIT_CONFIG, EXIT_OK};
use tokenkeeper::status::plural;

/// How long `check` waits for every discovery document together: two documents from a slow
/// server fit, and a `check` in a CI step or an `ExecStartPre=` on a machine that cannot
/// reach the server still ends soon. Each request has the provider's own timeout too.
const DISCOVERY_DEADLINE: Duration = Duration::from_secs(10);

pub(crate) async fn check(path: &Path, offline: bool, credentials_dir: &Path) -> u8 {
    match config::load_in(path, Some(credentials_dir)) {
        Ok(Loaded { config, warnings }) => {
            print_warnings(path, &warnings);
            if !offline {
                print_warnings(path, &discovery_warnings(&config).await);
            }
            say!(
                "{}: ok ({} scope set{}, {} provider{})",
                path.display(),
                config.sets.len(),
                plural(config.sets.len()),
                config.providers.len(),
                plural(config.providers.len()),
            );
            EXIT_OK
        }
        Err(e) => {
            print_config_error(&e);
            EXIT_CONFIG
        }
    }
}

/// What the metadata of the providers with an `issuer:` says against their settings. A
/// server that cannot be reached is a warning, not an error: the daemon retries discovery,
/// and the network at `check` time is not the network at run time.
async fn discovery_warnings(config: &Config) -> Vec<String> {
    let http = match provider::http_client() {
        Ok(http) => http,
        Err(e) => {
            return vec![format!(
                "the discovery metadata was not checked: {}",
                chain(&e)
            )];
        }
    };
    let probes = config.providers.values().map(|p| {
        let http = &http;
        async move {
            let found = tokio::time::timeout(DISCOVERY_DEADLINE, provider::probe_metadata(p, http))
                .await
                .unwrap_or_else(|_| {
                    Some(Err(provider::ProviderError::Discovery {
                        operation: "discovery",
                        what: format!("no answer within {}s", DISCOVERY_DEADLINE.as_secs()),
                    }))
                });
            (p, found)
        }
    });
    let mut warnings = Vec::new();
    for (p, found) in futures_util::future::join_all(probes).await {
        let at = format!("providers.{}", p.name);
        match found {
            None => {}
            Some(Ok(d)) => {
                if d.auth_method_unlisted {
                    warnings.push(format!(
                        "{at}: the server's metadata does not list auth_method {} in token_endpoint_auth_methods_supported; if token requests are refused, choose a method it lists",
                        auth_method(p)
                    ));
                }
                if d.client_credentials_unlisted {
                    warnings.push(format!(
                        "{at}: the server's metadata does not list the client_credentials grant in grant_types_supported"
                    ));
                }
            }
            Some(Err(e)) => warnings.push(format!(
                "{at}: the discovery metadata could not be read, so auth_method was not checked against it (--offline skips this): {}",
                chain(&e)
            )),
        }
    }
    warnings
}

fn auth_method(p: &ProviderConfig) -> &'static str {
    match &p.kind {
        ProviderKind::OAuth2 { auth_method, .. } => auth_method.name(),
        // Only oauth2 providers discover, so no other kind is ever asked.
        _ => "(none)",
    }
}
