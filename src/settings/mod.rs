//! What every component's settings are checked with: the [`Problem`]s and warnings a check
//! finds, collected in a [`Report`] so that one run names every mistake, and the readers of
//! the values several components share (durations, counts, rates, percentages, URLs, choices,
//! secret sources). Each component reads its own keys with them; `config` assembles the
//! sections, checks what lies between them, and gives each problem its place in the text.

use std::fmt;
use std::time::Duration;

use reqwest::Url;

use crate::secret::SecretSource;

mod field;
mod keys;
mod paths;
mod secrets;
mod values;

pub use field::{Field, Rule};
pub use keys::{closest, fields_of, hide_raw_names};
pub use paths::{KERNEL_TREES, SYSTEM_TREES, normalize, resolve};
pub use secrets::{Public, check_sources};
pub use values::{
    AbsolutePath, AnyDuration, BaseUrl, Choices, Count, Endpoint, MinInterval, OneOf, Percent,
    PositiveDuration, Rate, describe, effective, join, pct,
};

/// The longest duration any key accepts. Times are kept as instants and wall-clock times
/// (now + duration); ten years is far beyond any sensible interval, lifetime or timeout, and
/// keeps every sum far inside what `SystemTime`, `Instant` and the journal's RFC 3339 times
/// (up to year 9999) can hold, so no arithmetic on a configured duration can overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// [`MAX_DURATION`] as the messages say it.
pub const MAX_DURATION_TEXT: &str = "3650d (ten years)";

/// One mistake in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based; known for YAML errors and for keys that appear once in the file.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Where in the configuration, e.g. `scope_sets[1] (orders-sync).file.mode`; empty for
    /// the file as a whole.
    pub at: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, "{line}:{column}: ")?,
            (Some(line), None) => write!(f, "{line}: ")?,
            _ => {}
        }
        if !self.at.is_empty() {
            write!(f, "{}: ", self.at)?;
        }
        f.write_str(&self.message)
    }
}

/// A checked value: `Err(())` when it was present but wrong (the problem is already
/// recorded), so that cross-checks built on it stay quiet instead of piling up.
pub type Checked<T> = Result<Option<T>, ()>;

/// What the checks found so far.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<Problem>,
    /// For each problem to be given a position: its index, the path of the node it names,
    /// and the key to fall back on. `config` resolves them together, in one pass over the
    /// text, as the check ends.
    pub unplaced: Vec<(usize, String, Option<String>)>,
    /// Human-readable, one line each, never containing a secret.
    pub warnings: Vec<String>,
    /// Every secret source that parsed, by its key path.
    pub secrets: Vec<(String, SecretSource)>,
}

impl Report {
    /// Record a problem at `at`; `locate` is the key it is about, whose position it is given.
    pub fn problem(&mut self, at: String, locate: Option<&str>, message: impl Into<String>) {
        if let Some(key) = locate {
            // `at` names the key itself (a bad value), or the mapping it is in (a key that
            // does not belong there): the key's own node either way.
            let path = node_path(&at);
            let last = path.rsplit('.').next().unwrap_or_default();
            let names_it = last.split('[').next() == Some(key);
            let path = if names_it { path } else { join(&path, key) };
            self.unplaced
                .push((self.problems.len(), path, Some(key.to_string())));
        }
        // A key or value may quote a name with a control character in it: `check` prints
        // every problem on the operator's terminal.
        self.problems.push(Problem {
            line: None,
            column: None,
            at: crate::shown(&at).into_owned(),
            message: crate::shown(&message.into()).into_owned(),
        });
    }

    /// A problem with the value of `key` in the mapping at `parent`.
    pub fn bad(&mut self, parent: &str, key: &str, message: impl Into<String>) {
        self.problem(join(parent, key), Some(key), message);
    }

    /// A required `key` missing from the mapping at `parent` (located by the mapping's key).
    pub fn missing(&mut self, parent: &str, key: &str, what: &str) {
        let locate = parent.rsplit('.').next().filter(|k| !k.contains('['));
        self.problem(
            parent.to_string(),
            locate,
            format!("missing `{key}` ({what})"),
        );
    }

    pub fn warn(&mut self, at: &str, message: impl fmt::Display) {
        let text = if at.is_empty() {
            message.to_string()
        } else {
            format!("{at}: {message}")
        };
        self.warnings.push(crate::shown(&text).into_owned());
    }

    /// Whether `name`, a provider's or a store's, is printable text; a problem at
    /// `section.name` if not. The name goes into every log line and status row about what it
    /// names: a newline there forges a log line, an ESC or a bidi override drives or garbles
    /// the terminal that shows it.
    pub fn printable_name(&mut self, section: &str, name: &str) -> bool {
        if name.chars().all(crate::is_shown_as_is) {
            return true;
        }
        self.problem(
            format!("{section}.{name}"),
            None,
            "the name must be printable text, with no control, bidi or invisible character: it goes into every log line and status row about what it names",
        );
        false
    }
}

/// The path of the node a problem names, as `config`'s locator spells it: the labels that
/// name sets (`scope_sets[1] (orders-sync)`) dropped.
fn node_path(at: &str) -> String {
    let mut out = String::with_capacity(at.len());
    let mut rest = at;
    while let Some(i) = rest.find("] (") {
        out.push_str(&rest[..=i]);
        match rest[i..].find(')') {
            Some(close) => rest = &rest[i + close + 1..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether `url` names a loopback host, where plain http:// cannot be overheard.
pub fn is_loopback(url: &Url) -> bool {
    match url.host_str() {
        Some(host) if host.eq_ignore_ascii_case("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}
