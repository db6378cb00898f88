//! Secrets: where each one comes from. No message ever contains a secret value.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

use crate::secret::{Availability, Secret, SecretSource};

use super::values::{describe, join};
use super::{Field, Problem, Report, Rule};

/// How a secret may be given, for the messages that refuse one.
const SECRET_FORMS: &str = "{ credential: NAME }, { file: PATH }, { env: NAME } or a quoted string";

/// Where a secret comes from: `{ credential: NAME }`, `{ file: PATH }`, `{ env: NAME }` or a
/// quoted string (warned about). Read by [`Report::secret`], which keeps it for the checks
/// of every secret.
impl Rule for SecretSource {
    type Value = SecretSource;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<SecretSource> {
        r.secret_source(parent, key, value)
    }
}

/// A value given like a secret that is not one (a client certificate): the same forms, but
/// neither kept for the secret checks (a certificate may be world-readable) nor warned about
/// when written in the config.
pub struct Public;

impl Rule for Public {
    type Value = SecretSource;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<SecretSource> {
        if let Value::String(text) = value
            && !text.is_empty()
        {
            return Some(SecretSource::Plain(Secret::new(text.as_str())));
        }
        r.secret_source(parent, key, value)
    }
}

impl Report {
    /// The secret `key` in the mapping at `parent` names, which must be given (`what` says
    /// what it is), kept for the checks of every secret.
    pub(crate) fn secret(
        &mut self,
        parent: &str,
        key: &str,
        field: Option<&Field<SecretSource>>,
        what: &str,
    ) -> Option<SecretSource> {
        let source = self.required(parent, key, field, &format!("{what}: {SECRET_FORMS}"))?;
        self.secrets.push((join(parent, key), source.clone()));
        Some(source)
    }

    /// A [`Public`] value `key` in the mapping at `parent` names, which must be given.
    pub(crate) fn public_source(
        &mut self,
        parent: &str,
        key: &str,
        field: Option<&Field<Public>>,
        what: &str,
    ) -> Option<SecretSource> {
        self.required(parent, key, field, &format!("{what}: {SECRET_FORMS}"))
    }

    fn secret_source(&mut self, parent: &str, key: &str, value: &Value) -> Option<SecretSource> {
        let at = join(parent, key);
        match value {
            Value::String(text) if text.is_empty() => {
                self.bad(parent, key, format!("{key} is empty"));
                None
            }
            Value::String(text) => {
                self.warn(
                    "",
                    format!("{at} is written in the config; prefer {{ credential: NAME }}, {{ file: PATH }} or {{ env: NAME }}"),
                );
                Some(SecretSource::Plain(Secret::new(text.as_str())))
            }
            Value::Mapping(map) => {
                let mut found = Vec::new();
                for (k, v) in map {
                    let Some(k) = k.as_str() else {
                        self.bad(
                            parent,
                            key,
                            format!(
                                "{key} has a key that is not a string; use one of {SECRET_FORMS}"
                            ),
                        );
                        continue;
                    };
                    if !["env", "file", "credential"].contains(&k) {
                        self.bad(
                            parent,
                            key,
                            format!("unknown key `{k}` in {key}; use one of {SECRET_FORMS}"),
                        );
                        continue;
                    }
                    found.push((k, v));
                }
                let [(source, v)] = found.as_slice() else {
                    let names: Vec<String> = found.iter().map(|(k, _)| format!("`{k}`")).collect();
                    let msg = if names.is_empty() {
                        format!("{key} must be one of {SECRET_FORMS}")
                    } else {
                        format!(
                            "{key} gives {}; give exactly one of env, file, credential",
                            names.join(" and ")
                        )
                    };
                    self.bad(parent, key, msg);
                    return None;
                };
                let Some(name) = v.as_str().filter(|s| !s.is_empty()) else {
                    self.bad(
                        parent,
                        key,
                        format!(
                            "{key}.{source} must be a non-empty string, not {}",
                            describe(v)
                        ),
                    );
                    return None;
                };
                match *source {
                    "env" if name.contains(['=', '\0']) => {
                        self.bad(
                            parent,
                            key,
                            format!("{key}.env `{name}` is not an environment variable name"),
                        );
                        None
                    }
                    "env" => Some(SecretSource::Env(name.to_string())),
                    "file" if !Path::new(name).is_absolute() => {
                        self.bad(
                            parent,
                            key,
                            format!("{key}.file `{name}` must be an absolute path"),
                        );
                        None
                    }
                    "file" => Some(SecretSource::File(PathBuf::from(name))),
                    _ if name.contains('/') || name == "." || name == ".." => {
                        self.bad(
                            parent,
                            key,
                            format!("{key}.credential `{name}` must be a bare credential name (as in LoadCredential=NAME:...), not a path"),
                        );
                        None
                    }
                    _ => Some(SecretSource::Credential(name.to_string())),
                }
            }
            other => {
                self.bad(
                    parent,
                    key,
                    format!("{key} must be {SECRET_FORMS}, not {}", describe(other)),
                );
                None
            }
        }
    }
}

/// Check that every secret in `sources` (by its key path) exists and is readable, and that
/// a file is not open to others; systemd credentials are looked for in `credentials_folder`
/// outside the service. Returns (problems, warnings).
pub fn check_sources(
    sources: &[(String, SecretSource)],
    credentials_folder: Option<&Path>,
) -> (Vec<Problem>, Vec<String>) {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    for (at, source) in sources {
        match source.check_in(credentials_folder) {
            Ok(Availability::Ok) => {}
            Ok(Availability::Unknowable(why)) => warnings.push(format!("{at}: {why}")),
            // SecretError never carries the value; its sources are io errors about paths.
            Err(err) => {
                problems.push(Problem {
                    line: None,
                    column: None,
                    at: at.clone(),
                    message: crate::error_chain(&err),
                });
            }
        }
    }
    (problems, warnings)
}
