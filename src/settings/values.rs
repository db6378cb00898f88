//! Value readers every section shares: URLs, choices, durations, counts, rates and
//! percentages, and the helpers their messages use.

use std::time::Duration;

use reqwest::Url;
use serde_yaml::Value;

use super::field::Rule;
use super::{Checked, MAX_DURATION, MAX_DURATION_TEXT, Report, is_loopback};

impl Report {
    /// An endpoint URL: https (http only for loopback), no credentials, query or fragment.
    /// `strip_slash`: the URL is a base that request paths are appended to.
    pub(crate) fn url(
        &mut self,
        parent: &str,
        key: &str,
        text: &str,
        strip_slash: bool,
    ) -> Option<Url> {
        let mut url = match Url::parse(text.trim()) {
            Ok(url) => url,
            // The URL itself is not repeated: it might carry a password.
            Err(err) => {
                self.bad(
                    parent,
                    key,
                    format!("{key} is not a valid URL ({err}); write it as https://HOST"),
                );
                return None;
            }
        };
        let before = self.problems.len();
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&url) => {}
            "http" => self.bad(
                parent,
                key,
                "http:// is allowed only for loopback hosts (127.0.0.0/8, ::1, localhost); use https://",
            ),
            other => self.bad(parent, key, format!("{key} must use https://, not {other}:")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            self.bad(
                parent,
                key,
                format!("{key} must not contain a user name or password; credentials have keys of their own"),
            );
        }
        if url.query().is_some() {
            self.bad(parent, key, format!("{key} must not have a query (`?...`)"));
        }
        if url.fragment().is_some() {
            self.bad(
                parent,
                key,
                format!("{key} must not have a fragment (`#...`)"),
            );
        }
        if self.problems.len() > before {
            return None;
        }
        if strip_slash {
            // Request paths are appended to the base path; a trailing slash would double them.
            let path = url.path().trim_end_matches('/').to_string();
            url.set_path(&path);
        }
        Some(url)
    }

    pub(crate) fn choice<T: Clone>(
        &mut self,
        parent: &str,
        key: &str,
        value: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        if let Some((_, choice)) = options.iter().find(|(name, _)| *name == value) {
            return Some(choice.clone());
        }
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        self.bad(
            parent,
            key,
            format!("{key} `{value}` must be one of {}", names.join(", ")),
        );
        None
    }

    pub(crate) fn duration(&mut self, parent: &str, key: &str, value: &Value) -> Option<Duration> {
        match value {
            Value::String(text) => match humantime::parse_duration(text.trim()) {
                Ok(duration) if duration > MAX_DURATION => {
                    self.bad(
                        parent,
                        key,
                        format!("{key} `{text}` must be at most {MAX_DURATION_TEXT}"),
                    );
                    None
                }
                Ok(duration) => Some(duration),
                Err(err) => {
                    self.bad(
                        parent,
                        key,
                        format!(
                            "{key} `{text}` is not a duration such as \"20s\" or \"15m\": {err}"
                        ),
                    );
                    None
                }
            },
            Value::Number(n) => {
                self.bad(
                    parent,
                    key,
                    format!(
                        "{key} must be a duration with a unit, such as \"{n}s\", not a bare number"
                    ),
                );
                None
            }
            other => {
                self.bad(
                    parent,
                    key,
                    format!(
                        "{key} must be a duration such as \"20s\", not {}",
                        describe(other)
                    ),
                );
                None
            }
        }
    }

    pub(crate) fn positive_duration(
        &mut self,
        parent: &str,
        key: &str,
        value: &Value,
        why: &str,
    ) -> Option<Duration> {
        let duration = self.duration(parent, key, value)?;
        if duration.is_zero() {
            self.bad(parent, key, format!("{key} must be more than 0s{why}"));
            return None;
        }
        Some(duration)
    }

    pub(crate) fn positive_integer(
        &mut self,
        parent: &str,
        key: &str,
        value: &Value,
    ) -> Option<u64> {
        match value {
            Value::Number(n) if n.as_u64().is_some_and(|n| n > 0) => n.as_u64(),
            other => {
                self.bad(
                    parent,
                    key,
                    format!(
                        "{key} must be a whole number above 0, not {}",
                        describe(other)
                    ),
                );
                None
            }
        }
    }

    /// `N/s`, `N/m` or `N/h` as tokens per second.
    pub(crate) fn rate(&mut self, parent: &str, key: &str, value: &Value) -> Option<f64> {
        let parsed = value.as_str().and_then(|text| {
            let (n, unit) = text.trim().split_once('/')?;
            let n: f64 = n
                .trim()
                .parse()
                .ok()
                .filter(|n: &f64| n.is_finite() && *n > 0.0)?;
            let per = match unit.trim() {
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return None,
            };
            Some(n / per)
        });
        match parsed {
            Some(rate) => Some(rate),
            None => {
                self.bad(
                    parent,
                    key,
                    format!("{key} must be a rate such as \"10/s\", \"120/m\" or \"1000/h\""),
                );
                None
            }
        }
    }

    pub(crate) fn percent(&mut self, parent: &str, key: &str, value: &Value) -> Option<f64> {
        let value = match value {
            Value::String(text) => text.trim(),
            Value::Number(n) => {
                let n = n.as_f64().unwrap_or(0.0);
                let example = if (0.0..=1.0).contains(&n) {
                    n * 100.0
                } else {
                    n
                };
                self.bad(
                    parent,
                    key,
                    format!(
                        "{key} is a bare number; write it as a percentage, e.g. \"{}\"",
                        pct(example / 100.0)
                    ),
                );
                return None;
            }
            other => {
                self.bad(
                    parent,
                    key,
                    format!(
                        "{key} must be a percentage such as \"66%\", not {}",
                        describe(other)
                    ),
                );
                return None;
            }
        };
        match value
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
        {
            Some(n) if n.is_finite() && n >= 0.0 => Some(n / 100.0),
            _ => {
                self.bad(
                    parent,
                    key,
                    format!("{key} `{value}` must be a percentage such as \"66%\" or \"12.5%\""),
                );
                None
            }
        }
    }
}

/// A checked value from a set or the mapping it overrides; `None` if either was wrong.
pub fn effective(own: Checked<f64>, fallback: Option<f64>) -> Option<f64> {
    match own {
        Ok(Some(value)) => Some(value),
        Ok(None) => fallback,
        Err(()) => None,
    }
}

pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `0.125` → `12.5%`, without float noise such as `66.00000000000001%`.
pub fn pct(fraction: f64) -> String {
    let text = format!("{:.3}", fraction * 100.0);
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

pub fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A duration such as "20s", at most [`MAX_DURATION`].
pub struct AnyDuration;

impl Rule for AnyDuration {
    type Value = Duration;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<Duration> {
        r.duration(parent, key, value)
    }
}

/// A duration above zero, such as a timeout.
pub struct PositiveDuration;

impl Rule for PositiveDuration {
    type Value = Duration;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<Duration> {
        r.positive_duration(parent, key, value, "")
    }
}

/// `refresh.min_interval`: above zero, which would allow a tight issuing loop.
pub struct MinInterval;

impl Rule for MinInterval {
    type Value = Duration;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<Duration> {
        let why = ": 0 would allow a tight issuing loop";
        r.positive_duration(parent, key, value, why)
    }
}

/// A whole number above zero.
pub struct Count;

impl Rule for Count {
    type Value = u64;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<u64> {
        r.positive_integer(parent, key, value)
    }
}

/// `N/s`, `N/m` or `N/h`, read as tokens per second.
pub struct Rate;

impl Rule for Rate {
    type Value = f64;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<f64> {
        r.rate(parent, key, value)
    }
}

/// A percentage such as "66%", read as a fraction.
pub struct Percent;

impl Rule for Percent {
    type Value = f64;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<f64> {
        r.percent(parent, key, value)
    }
}

/// One of a few names, each standing for a value.
pub trait Choices {
    type Value: Clone + 'static;
    /// The names the key accepts, in the order messages list them.
    const NAMES: &'static [(&'static str, Self::Value)];
}

/// The rule of a key whose value is one of `C`'s names.
pub struct OneOf<C>(std::marker::PhantomData<C>);

impl<C: Choices> Rule for OneOf<C> {
    type Value = C::Value;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<C::Value> {
        let text = r.text(parent, key, value)?;
        r.choice(parent, key, text, C::NAMES)
    }
}

impl Report {
    /// `value` as text, or a problem in serde's words (`invalid type: integer `5`, expected a
    /// string`) where it is not a string.
    pub(crate) fn text<'v>(
        &mut self,
        parent: &str,
        key: &str,
        value: &'v Value,
    ) -> Option<&'v str> {
        if let Value::String(text) = value {
            return Some(text);
        }
        if let Err(e) = serde_yaml::from_value::<String>(value.clone()) {
            self.bad(parent, key, e.to_string());
        }
        None
    }
}

/// An endpoint URL: https (http only for loopback), no credentials, query or fragment.
pub struct Endpoint;

impl Rule for Endpoint {
    type Value = Url;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<Url> {
        let text = r.text(parent, key, value)?;
        r.url(parent, key, text, false)
    }
}

/// An [`Endpoint`] that request paths are appended to: its trailing slash dropped.
pub struct BaseUrl;

impl Rule for BaseUrl {
    type Value = Url;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<Url> {
        let text = r.text(parent, key, value)?;
        r.url(parent, key, text, true)
    }
}

/// A path to a file of the operator's, which must be absolute: the daemon's working
/// directory is no place to look for it.
pub struct AbsolutePath;

impl Rule for AbsolutePath {
    type Value = std::path::PathBuf;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<Self::Value> {
        let text = r.text(parent, key, value)?;
        if !std::path::Path::new(text).is_absolute() {
            r.bad(
                parent,
                key,
                format!("{key} `{text}` must be an absolute path"),
            );
            return None;
        }
        Some(text.into())
    }
}
