//! What only reading a provider's files tells: its CA bundle, its client key and certificate.

use std::collections::BTreeMap;

use crate::provider::{ProviderConfig, ProviderKind};
use crate::secret::{Availability, SecretSource};
use crate::settings::Problem;

/// Read every provider's `ca_file` now: readable, safe from other users, well-formed PEM with
/// at least one certificate. A bundle that fails here would fail every request's handshake.
pub fn check_ca_files(providers: &BTreeMap<String, ProviderConfig>) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (name, provider) in providers {
        let ProviderKind::OAuth2 {
            ca_file: Some(path),
            ..
        } = &provider.kind
        else {
            continue;
        };
        if let Err(e) = crate::provider::ca_certificates(path, "the provider") {
            problems.push(Problem {
                line: None,
                column: None,
                at: format!("providers.{name}.ca_file"),
                message: format!(
                    "cannot use ca_file {}: {}",
                    path.display(),
                    crate::error_chain(&e)
                ),
            });
        }
    }
    problems
}

/// Parse every oauth2 client key and certificate now, so that a key of the wrong kind or a
/// certificate for another key fails `check` (and a reload) rather than every request.
/// Credentials whose sources cannot be read were reported by
/// [`check_sources`](crate::settings::check_sources) already, and
/// systemd credentials outside the service cannot be read at all; both are skipped.
pub fn check_client_keys(providers: &BTreeMap<String, ProviderConfig>) -> Vec<Problem> {
    use crate::provider::ClientCredential;
    let mut problems = Vec::new();
    for (name, provider) in providers {
        let ProviderKind::OAuth2 {
            client_id,
            credential,
            auth_method,
            ..
        } = &provider.kind
        else {
            continue;
        };
        let sources = match credential {
            // Read before every request, and rotated by another party: its form is judged then.
            ClientCredential::Secret(_) | ClientCredential::Assertion(_) => continue,
            ClientCredential::PrivateKey { key, .. } => vec![key],
            ClientCredential::Certificate { certificate, key } => vec![certificate, key],
        };
        let readable = sources.iter().all(|s| match s {
            SecretSource::Credential(_) => std::env::var_os("CREDENTIALS_DIRECTORY").is_some(),
            _ => true,
        }) && provider
            .kind
            .secret_sources()
            .iter()
            .all(|(_, s)| matches!(s.check(), Ok(Availability::Ok)));
        if !readable {
            continue;
        }
        let at = match credential {
            ClientCredential::PrivateKey { .. } => format!("providers.{name}.private_key"),
            _ => format!("providers.{name}.client_certificate"),
        };
        if let Err(e) =
            crate::provider::oauth2::load_credential(client_id, *auth_method, credential)
        {
            // ProviderError::ClientKey and ::Secret never carry key material.
            problems.push(Problem {
                line: None,
                column: None,
                at,
                message: crate::error_chain(&e),
            });
        }
    }
    problems
}
