//! `tokenkeeper check`: validate the configuration and the secrets it names, then ask each
//! provider that discovers its endpoints where its metadata is, which endpoints it names and
//! whether it lists the chosen auth_method.

use std::path::Path;
use std::time::Duration;

use tokenkeeper::config::{self, Config, Loaded, OnShutdown};
use tokenkeeper::error_chain as chain;
use tokenkeeper::provider::oauth2::{Endpoints, discovery_form};
use tokenkeeper::provider::{self, OAuth2Endpoints, ProviderConfig, ProviderKind};

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
            print_warnings(path, &configured_revocation_warnings(&config));
            print_warnings(path, &assertion_warnings(&config));
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
            Some(Ok((document, d))) => {
                if let ProviderKind::OAuth2 {
                    endpoints: OAuth2Endpoints::Discover { issuer },
                    ..
                } = &p.kind
                {
                    say!(
                        "{at}: endpoints discovered from {document} ({}): {}",
                        discovery_form(issuer, &document),
                        describe_endpoints(&d.endpoints)
                    );
                }
                if d.endpoints.revocation.is_none() {
                    warnings.extend(revocation_warning(config, p, "its discovery document"));
                }
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

/// The endpoints on one line, an absent one said as such.
fn describe_endpoints(e: &Endpoints) -> String {
    let or_none = |u: &Option<reqwest::Url>| {
        u.as_ref()
            .map_or_else(|| "none".to_string(), |u| u.to_string())
    };
    format!(
        "token_endpoint {}, revocation_endpoint {}, introspection_endpoint {}",
        e.token,
        or_none(&e.revocation),
        or_none(&e.introspection)
    )
}

/// The warning for provider `p`, whose server has no revocation endpoint (`source` says who
/// says so), when a set of it expects its tokens revoked at stop.
fn revocation_warning(config: &Config, p: &ProviderConfig, source: &str) -> Option<String> {
    let revoking: Vec<&str> = config
        .sets
        .iter()
        .filter(|s| s.provider == p.name && s.on_shutdown == OnShutdown::Revoke)
        .map(|s| s.name.as_str())
        .collect();
    (!revoking.is_empty()).then(|| {
        format!(
            "providers.{}: {source} names no revocation endpoint, so the tokens of {} (on_shutdown: revoke) cannot be revoked at stop, nor when replaced: they stay live until they expire",
            p.name,
            revoking.join(", ")
        )
    })
}

/// The same warning for providers whose endpoints the config gives without revocation_url:
/// known without asking the server, so said offline too.
fn configured_revocation_warnings(config: &Config) -> Vec<String> {
    config
        .providers
        .values()
        .filter(|p| {
            matches!(
                &p.kind,
                ProviderKind::OAuth2 {
                    endpoints: OAuth2Endpoints::Explicit {
                        revocation_url: None,
                        ..
                    },
                    ..
                }
            )
        })
        .filter_map(|p| revocation_warning(config, p, "the config (no revocation_url)"))
        .collect()
}

/// A federated client assertion that is no JWT, or has expired, now: a warning, not a
/// problem, since the platform replaces it on its own schedule and the daemon reads it again
/// before every request. An unreadable one is the config's problem, reported already.
fn assertion_warnings(config: &Config) -> Vec<String> {
    let now = tokenkeeper::clock::now_wall()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut warnings = Vec::new();
    for p in config.providers.values() {
        let ProviderKind::OAuth2 {
            credential: provider::ClientCredential::Assertion(source),
            ..
        } = &p.kind
        else {
            continue;
        };
        let Ok(jwt) = source.load() else { continue };
        if let Err(e) = provider::oauth2::check_assertion(jwt.expose(), now) {
            warnings.push(format!(
                "providers.{}.client_assertion: {source}: {e}; no request is sent with it until it is replaced",
                p.name
            ));
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
