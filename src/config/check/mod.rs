//! Checking: every value and cross-reference of the raw structs, each mistake becoming a
//! [`Problem`]. The methods of [`Checker`] are spread over the files below, by section.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::Value;

use crate::config::defaults::DEFAULT_STATE_DIR;
use crate::config::located;
use crate::config::raw::RawConfig;
use crate::config::text::{nesting_exceeds, strip_marks};
use crate::config::unknown::{Seg, known_keys, segments};
use crate::config::{
    Config, ConfigError, Loaded, MAX_CONFIG_BYTES, MAX_NESTING, OnShutdown, Problem,
    too_large_message,
};
use crate::secret::SecretSource;
use crate::sink::FileFormat;

use crate::settings::{Report, closest, describe, hide_raw_names, join, normalize};

mod sets;
mod stores;
mod top;

pub(super) use stores::{KvMount, KvPath, LeasePath};
pub(super) use top::LogFilter;

/// What one pass over the text found. `secrets` holds every well-formed secret source, even
/// when other parts are wrong, so that `load` reports unreadable secrets in the same run.
pub(super) struct Parsed {
    pub(super) config: Option<Config>,
    pub(super) secrets: Vec<(String, SecretSource)>,
    pub(super) problems: Vec<Problem>,
    pub(super) warnings: Vec<String>,
}

impl Parsed {
    pub(super) fn finish(self, origin: &Path) -> Result<Loaded, ConfigError> {
        match self.config {
            Some(config) if self.problems.is_empty() => Ok(Loaded {
                config,
                warnings: self.warnings,
            }),
            _ => Err(ConfigError::Invalid {
                path: origin.to_path_buf(),
                problems: self.problems,
                warnings: self.warnings,
            }),
        }
    }
}

pub(super) use crate::settings::Checked;

/// The refresh keys of one mapping (`defaults.refresh` or a set's `refresh`), each checked.
struct RefreshParts {
    at: Checked<f64>,
    jitter: Checked<f64>,
    min_interval: Checked<Duration>,
}

/// Effective defaults; `None` where `defaults:` gave a wrong value (already reported).
struct Defaults {
    at: Option<f64>,
    jitter: Option<f64>,
    min_interval: Duration,
    mode: u32,
    format: FileFormat,
    on_shutdown: OnShutdown,
    revoke_superseded_after: Duration,
}

struct Checker<'t> {
    text: &'t str,
    /// Files a token must never be written over (it would be deleted at stop, too), with
    /// what each one is: the config itself and the metrics textfile. `state_dir` is a
    /// whole directory of them.
    reserved: Vec<(PathBuf, &'static str)>,
    state_dir: PathBuf,
    /// Each set's `name` as written, to label paths: `scope_sets[1] (orders-sync)`.
    set_names: Vec<Option<String>>,
    report: Report,
}

/// The report's methods (`bad`, `missing`, `warn`, the value readers) on the checker itself.
impl std::ops::Deref for Checker<'_> {
    type Target = Report;
    fn deref(&self) -> &Report {
        &self.report
    }
}

impl std::ops::DerefMut for Checker<'_> {
    fn deref_mut(&mut self) -> &mut Report {
        &mut self.report
    }
}

pub(super) fn parse_text(text: &str, origin: &Path) -> Parsed {
    let mut ck = Checker {
        text,
        // Lexically absolute: `origin` may be relative to where tokenkeeper was started.
        reserved: std::path::absolute(origin)
            .map(|p| vec![(normalize(&p), "the configuration file")])
            .unwrap_or_default(),
        state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        set_names: Vec::new(),
        report: Report::default(),
    };
    // `load` refuses a larger file before reading it; this holds for any other text.
    if text.len() as u64 > MAX_CONFIG_BYTES {
        ck.problem(String::new(), None, too_large_message());
        return ck.into_parsed(None);
    }
    if let Some(line) = nesting_exceeds(text, MAX_NESTING) {
        ck.problems.push(Problem {
            line: Some(line),
            column: None,
            at: String::new(),
            message: format!(
                "collections are nested deeper than {MAX_NESTING} levels; a tokenkeeper configuration needs a handful"
            ),
        });
        return ck.into_parsed(None);
    }
    // One pass over the document for a config that deserializes: its events, held by
    // serde_yaml while it deserializes, are most of a large config's memory, and a tree of the
    // whole document beside them (the second pass below) took 48 MiB at 10,000 sets.
    let mut unknown = Vec::new();
    let raw: Result<RawConfig, _> =
        serde_ignored::deserialize(serde_yaml::Deserializer::from_str(text), |path| {
            unknown.push(segments(&path));
        });
    match raw {
        // A document with none of our keys is read again below, for the messages that say
        // what it is instead.
        Ok(raw) if !raw.is_blank() => {
            ck.set_names = raw
                .scope_sets
                .iter()
                .flatten()
                .map(|set| set.as_ref().and_then(|s| s.name.clone()))
                .collect();
            ck.unknown_keys(unknown);
            ck.check(raw)
        }
        raw => {
            // Only a document that does not deserialize (or is blank) is read a second time,
            // as a tree, for what its messages name: the sets, the providers' kinds, or what
            // the document is instead of a mapping.
            let value: Value = match serde_yaml::from_str(text) {
                Ok(value) => value,
                Err(err) => {
                    ck.yaml_error(&err);
                    return ck.into_parsed(None);
                }
            };
            match &value {
                Value::Mapping(_) => {}
                Value::Null => {
                    ck.problem(
                        String::new(),
                        None,
                        "the configuration is empty; it needs at least `providers:` and `scope_sets:`",
                    );
                    return ck.into_parsed(None);
                }
                other => {
                    ck.problem(
                        String::new(),
                        None,
                        format!(
                            "the configuration must be a YAML mapping with keys such as `providers:` and `scope_sets:`, not {}",
                            describe(other)
                        ),
                    );
                    return ck.into_parsed(None);
                }
            }
            ck.set_names = match value.get("scope_sets") {
                Some(Value::Sequence(sets)) => sets
                    .iter()
                    .map(|set| match set.get("name") {
                        Some(Value::String(name)) => Some(name.clone()),
                        Some(Value::Number(n)) => Some(n.to_string()),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            ck.unknown_keys(unknown);
            match raw {
                Ok(raw) => ck.check(raw),
                Err(err) => {
                    ck.yaml_error(&err);
                    ck.into_parsed(None)
                }
            }
        }
    }
}

impl Checker<'_> {
    /// Report the keys serde passed over. A provider's own keys are its kind's to judge (see
    /// `providers.rs`): serde passes none of them over here.
    fn unknown_keys(&mut self, unknown: Vec<Vec<Seg>>) {
        for segs in &unknown {
            self.unknown_key(segs);
        }
    }

    pub(super) fn into_parsed(mut self, config: Option<Config>) -> Parsed {
        self.place_problems();
        Parsed {
            config,
            secrets: self.report.secrets,
            problems: self.report.problems,
            warnings: self.report.warnings,
        }
    }

    /// Give each problem recorded with a key its line and column, all in one pass over the
    /// text: the position of the node its path names, else of its key where that key is
    /// written only once in the whole text.
    fn place_problems(&mut self) {
        if self.unplaced.is_empty() {
            return;
        }
        let unplaced = std::mem::take(&mut self.unplaced);
        let found = located::locate(
            self.text,
            unplaced.iter().map(|(_, path, _)| path.as_str()),
            unplaced.iter().filter_map(|(_, _, key)| key.as_deref()),
        );
        for (i, path, key) in unplaced {
            let by_path = found.at.get(&path).copied();
            let by_key = key
                .and_then(|k| found.keys.get(&k).copied())
                .filter(|(count, _)| *count == 1)
                .map(|(_, pos)| pos);
            if let (Some((line, column)), Some(p)) = (by_path.or(by_key), self.problems.get_mut(i))
            {
                p.line = Some(line);
                p.column = Some(column);
            }
        }
    }

    pub(super) fn set_at(&self, index: usize) -> String {
        match self.set_names.get(index) {
            Some(Some(name)) => format!("scope_sets[{index}] ({name})"),
            _ => format!("scope_sets[{index}]"),
        }
    }

    fn yaml_error(&mut self, err: &serde_yaml::Error) {
        let text = strip_marks(&err.to_string());
        // serde_yaml names the first key written twice, and where its mapping starts; every
        // such key is listed instead, with both of its places.
        if text.contains("duplicate entry with key") || text.contains("duplicate field") {
            let found = located::locate(self.text, [], []);
            if !found.duplicates.is_empty() {
                for (path, first, again) in found.duplicates {
                    let (parent, key) = match path.rsplit_once('.') {
                        Some((parent, key)) => (self.label_sets(parent), key.to_string()),
                        None => (String::new(), path),
                    };
                    self.problems.push(Problem {
                        line: Some(again.0),
                        column: Some(again.1),
                        at: crate::shown(&parent).into_owned(),
                        message: crate::shown(&format!(
                            "`{key}` is given twice in this mapping, at line {} and again at line {}: keep one",
                            first.0, again.0
                        ))
                        .into_owned(),
                    });
                }
                return;
            }
        }
        // serde_yaml prefixes a path such as `scope_sets[0].file: `; split it off into `at`.
        let (at, message) = match text.split_once(": ") {
            Some((path, rest))
                if !path.is_empty()
                    && !path.contains(char::is_whitespace)
                    && !path.contains('`') =>
            {
                (self.label_sets(path), rest.to_string())
            }
            _ => (String::new(), text),
        };
        let message = hide_raw_names(&message);
        self.problems.push(Problem {
            line: err.location().map(|l| l.line()),
            column: err.location().map(|l| l.column()),
            at,
            message,
        });
    }

    /// `scope_sets[1].file` → `scope_sets[1] (orders-sync).file`.
    fn label_sets(&self, path: &str) -> String {
        if let Some(rest) = path.strip_prefix("scope_sets[")
            && let Some((index, tail)) = rest.split_once(']')
            && let Ok(index) = index.parse::<usize>()
        {
            return format!("{}{tail}", self.set_at(index));
        }
        path.to_string()
    }

    fn unknown_key(&mut self, segs: &[Seg]) {
        let Some((Seg::Key(key), parent)) = segs.split_last() else {
            return;
        };
        let mut at = String::new();
        let mut i = 0;
        while i < parent.len() {
            match (&parent[i], parent.get(i + 1)) {
                (Seg::Key(k), Some(Seg::Index(n))) if i == 0 && k == "scope_sets" => {
                    at = self.set_at(*n);
                    i += 1;
                }
                (Seg::Key(k), _) => at = join(&at, k),
                (Seg::Index(n), _) => at.push_str(&format!("[{n}]")),
            }
            i += 1;
        }
        let mut message = format!("unknown key `{key}`");
        if let Some(near) = closest(key, known_keys(parent)) {
            message.push_str(&format!(" (did you mean `{near}`?)"));
        }
        self.problem(at, Some(key), message);
    }
}

/// For the tests of the config module.
#[cfg(test)]
pub(super) use sets::valid_set_name;
