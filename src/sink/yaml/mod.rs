//! A set's `file:` read from the YAML: where the token is written, in which format, with
//! which mode and owner. The token file owns these keys.

use std::path::{Component, Path};

use serde_yaml::Value;

use std::path::PathBuf;

use serde::Deserialize;

use crate::secret::SecretSource;
use crate::settings::{
    Choices, Field, KERNEL_TREES, OneOf, Report, Rule, SYSTEM_TREES, describe, join, normalize,
};
use crate::sink::{FileConfig, FileFormat, FileTemplate};

mod dirs;

pub use dirs::check_token_dirs;

/// A set's `file:` as written.
#[derive(Deserialize)]
pub struct RawFile {
    pub path: Option<String>,
    pub format: Option<Field<OneOf<Formats>>>,
    pub template: Option<String>,
    pub mode: Option<Field<FileMode>>,
    pub owner: Option<Field<Id>>,
    pub group: Option<Field<Id>>,
}

/// Owner read-write, group read: share a token with one application's group, never others.
pub const DEFAULT_FILE_MODE: u32 = 0o640;

/// `chown` reads this id as "leave unchanged", so it can never mean a real user or group.
pub const RESERVED_ID: u32 = u32::MAX;

/// The names `format:` accepts.
pub const FORMATS: &[(&str, FileFormat)] = &[
    ("raw", FileFormat::Raw),
    ("json", FileFormat::Json),
    ("env", FileFormat::Env),
    ("header", FileFormat::Header),
];

/// `format:`: what a token file holds.
pub struct Formats;
impl Choices for Formats {
    type Value = FileFormat;
    const NAMES: &'static [(&'static str, FileFormat)] = FORMATS;
}

/// Where no token file may go, besides the trees of the kernel and the system.
pub struct Places<'a> {
    /// Holds the journal, the lock and the status file.
    pub state_dir: &'a Path,
    /// Files a token must never be written over, with what each one is.
    pub reserved: &'a [(PathBuf, &'static str)],
}

/// Check a set's `file:` mapping `raw` at `at`, every problem going to `report`. A mode or
/// format not given is the `defaults:` one; `owner` is the set as configured (name,
/// provider, scopes), which a template's check renders.
pub fn file(
    report: &mut Report,
    places: &Places<'_>,
    at: &str,
    raw: &RawFile,
    defaults: (u32, &FileFormat),
    owner: (Option<&str>, Option<&str>, &str),
) -> Option<FileConfig> {
    Check { report, places }.file(at, raw, defaults, owner)
}

/// The report, with the places no token file may go, and the file's readers as methods.
struct Check<'r, 'p> {
    report: &'r mut Report,
    places: &'p Places<'p>,
}

impl std::ops::Deref for Check<'_, '_> {
    type Target = Report;
    fn deref(&self) -> &Report {
        self.report
    }
}

impl std::ops::DerefMut for Check<'_, '_> {
    fn deref_mut(&mut self) -> &mut Report {
        self.report
    }
}

impl Check<'_, '_> {
    fn file(
        &mut self,
        at: &str,
        raw: &RawFile,
        (default_mode, default_format): (u32, &FileFormat),
        (set, provider, scope): (Option<&str>, Option<&str>, &str),
    ) -> Option<FileConfig> {
        let path = match raw.path.as_deref() {
            None => {
                self.missing(
                    at,
                    "path",
                    "an absolute path such as /run/tokenkeeper/NAME.token",
                );
                None
            }
            Some(path) if !Path::new(path).is_absolute() => {
                self.bad(
                    at,
                    "path",
                    format!("path `{path}` must be an absolute path"),
                );
                None
            }
            Some(path) if path.ends_with('/') || Path::new(path).file_name().is_none() => {
                self.bad(
                    at,
                    "path",
                    format!("path `{path}` must name a file, not a directory"),
                );
                None
            }
            Some(path) => {
                let normal = normalize(Path::new(path));
                self.token_path_is_safe(at, path, &normal).then_some(normal)
            }
        };
        let format = match raw.template.as_deref() {
            None => self.read(at, "format", raw.format.as_ref()),
            Some(template) => {
                // Checked even beside a `format`, so that one run reports both mistakes.
                let checked = self.template(
                    at,
                    template,
                    set.unwrap_or(""),
                    provider.unwrap_or(""),
                    scope,
                );
                if raw.format.is_some() {
                    self.bad(
                        at,
                        "format",
                        "`format` and `template` exclude each other: the template says what the file holds",
                    );
                    Err(())
                } else {
                    checked
                        .map(|t| Some(FileFormat::Template(std::sync::Arc::new(t))))
                        .ok_or(())
                }
            }
        };
        let mode = match &raw.mode {
            Some(mode) => FileMode::read(self, at, "mode", mode.value()),
            None => Some(default_mode),
        };
        let owner = self.read(at, "owner", raw.owner.as_ref());
        let group = self.read(at, "group", raw.group.as_ref());
        Some(FileConfig {
            path: path?,
            format: format.ok()?.unwrap_or_else(|| default_format.clone()),
            mode: mode?,
            owner: owner.ok()?,
            group: group.ok()?,
        })
    }

    /// Read `file.template` and check it as `check` can, with a stand-in token: its problems
    /// name the template and the line in it.
    fn template(
        &mut self,
        at: &str,
        path: &str,
        set: &str,
        provider: &str,
        scope: &str,
    ) -> Option<FileTemplate> {
        if !Path::new(path).is_absolute() || path.chars().any(char::is_control) {
            self.bad(
                at,
                "template",
                format!(
                    "template \"{}\" must be an absolute path with no control character",
                    path.escape_debug()
                ),
            );
            return None;
        }
        if !self.template_source_is_safe(at, path) {
            return None;
        }
        let template = match FileTemplate::read(Path::new(path), provider) {
            Ok(t) => t,
            Err(e) => {
                self.bad(at, "template", crate::error_chain(&e));
                return None;
            }
        };
        let problems = template.check(set, scope);
        for p in &problems {
            let line = p.line.map(|l| format!(", line {l}")).unwrap_or_default();
            self.bad(
                at,
                "template",
                format!("template {path}{line}: {}", p.message),
            );
        }
        problems.is_empty().then_some(template)
    }

    /// Refuse, before it is read, a template that is one of the daemon's own secrets: the
    /// file rendered from it is readable by the application's group, so a template naming
    /// the journal, a key file, a credential or the process's environment would publish it.
    /// Checked on the path as written and as its symlinks resolve; who may write the file and
    /// its directories is [`FileTemplate::read`]'s to check, at every read.
    fn template_source_is_safe(&mut self, at: &str, path: &str) -> bool {
        use std::os::unix::fs::MetadataExt;
        let normal = normalize(Path::new(path));
        let real = std::fs::canonicalize(&normal).ok();
        let same_file = |other: &Path| {
            let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
            normal == normalize(other) || id(&normal).is_some_and(|a| Some(a) == id(other))
        };
        let places = [Some(&normal), real.as_ref()];
        let mut why: Vec<String> = Vec::new();
        if normal.components().any(|c| c == Component::ParentDir) {
            why.push("contains `..`; write it without".into());
        }
        if let Some(kernel) = KERNEL_TREES
            .iter()
            .find(|k| places.iter().flatten().any(|p| p.starts_with(k)))
        {
            why.push(format!(
                "is under {kernel}, the kernel's files (`/proc/self/environ` holds the daemon's environment)"
            ));
        }
        let state_dir = std::fs::canonicalize(self.places.state_dir)
            .unwrap_or_else(|_| self.places.state_dir.to_path_buf());
        if places
            .iter()
            .flatten()
            .any(|p| p.starts_with(self.places.state_dir) || p.starts_with(&state_dir))
        {
            why.push(format!(
                "is inside state_dir {}, whose journal holds every live token",
                self.places.state_dir.display()
            ));
        }
        if let Some(creds) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let creds = std::fs::canonicalize(&creds).unwrap_or_else(|_| creds.into());
            if places.iter().flatten().any(|p| p.starts_with(&creds)) {
                why.push(format!(
                    "is inside $CREDENTIALS_DIRECTORY {}, which holds the daemon's credentials",
                    creds.display()
                ));
            }
        }
        for (file, what) in self.places.reserved {
            if same_file(file) {
                why.push(format!("is {what}"));
            }
        }
        for (key, source) in &self.secrets {
            if let SecretSource::File(file) = source
                && same_file(file)
            {
                why.push(format!("is the secret file {key} reads"));
            }
        }
        for reason in &why {
            self.bad(
                at,
                "template",
                format!(
                    "template `{path}` {reason}: the file rendered from it is readable by the application's group, so a template must be a file of its own"
                ),
            );
        }
        why.is_empty()
    }

    /// Refuse a token path that names something else than a file of its own: a token is
    /// written over it, and at stop the file is deleted. `path` is as written, `normal` as
    /// [`normalize`] made it.
    fn token_path_is_safe(&mut self, at: &str, path: &str, normal: &Path) -> bool {
        let before = self.problems.len();
        if path.chars().any(char::is_control) {
            self.bad(
                at,
                "path",
                format!(
                    "path \"{}\" contains a control character (a newline or NUL, say): no log line or tool could name that file unambiguously",
                    path.escape_debug()
                ),
            );
            return false;
        }
        if normal.components().any(|c| c == Component::ParentDir) {
            self.bad(
                at,
                "path",
                format!(
                    "path `{path}` contains `..`: one file spelled two ways escapes the check that no two sets share a file; write it without `..`"
                ),
            );
        }
        for kernel in KERNEL_TREES {
            if normal.starts_with(kernel) {
                self.bad(
                    at,
                    "path",
                    format!(
                        "path `{path}` is under {kernel}, the kernel's own files, not a place for a token file"
                    ),
                );
            }
        }
        for system in SYSTEM_TREES {
            if normal.starts_with(system) {
                self.bad(
                    at,
                    "path",
                    format!(
                        "path `{path}` is under {system}, the system's own files, not a place for a token file"
                    ),
                );
            }
        }
        if normal.starts_with(self.places.state_dir) {
            let msg = format!(
                "path `{path}` is inside state_dir {}, which holds the journal, the lock and the status file: token files go elsewhere",
                self.places.state_dir.display()
            );
            self.bad(at, "path", msg);
        }
        let clashes: Vec<&'static str> = self
            .places
            .reserved
            .iter()
            .filter(|(p, _)| p == normal)
            .map(|(_, what)| *what)
            .collect();
        for what in clashes {
            self.bad(
                at,
                "path",
                format!("path `{path}` is {what}: a token would be written over it, and the file deleted at stop"),
            );
        }
        self.problems.len() == before
    }
}

/// A file's `mode`: a quoted octal string, at most 0777; a warning where others get access.
pub struct FileMode;

impl Rule for FileMode {
    type Value = u32;
    fn read(r: &mut Report, parent: &str, _key: &str, value: &Value) -> Option<u32> {
        let text = match value {
            Value::String(text) => text.trim(),
            Value::Number(n) => {
                r.bad(
                    parent,
                    "mode",
                    format!("mode must be a quoted octal string such as \"0640\" (YAML reads an unquoted mode as a number; this one as {n})"),
                );
                return None;
            }
            other => {
                r.bad(
                    parent,
                    "mode",
                    format!(
                        "mode must be a quoted octal string such as \"0640\", not {}",
                        describe(other)
                    ),
                );
                return None;
            }
        };
        let octal =
            (3..=4).contains(&text.len()) && text.bytes().all(|b| (b'0'..=b'7').contains(&b));
        let Some(mode) = u32::from_str_radix(text, 8).ok().filter(|_| octal) else {
            r.bad(
                parent,
                "mode",
                format!("mode `{text}` must be 3 or 4 octal digits, such as \"0640\""),
            );
            return None;
        };
        if mode > 0o777 {
            r.bad(
                parent,
                "mode",
                format!("mode {mode:04o} is larger than 0777; setuid, setgid and sticky bits have no place on a token file"),
            );
            return None;
        }
        if mode & 0o007 != 0 {
            r.warn(
                &join(parent, "mode"),
                format_args!("mode {mode:04o} gives every local user access to the token"),
            );
        }
        Some(mode)
    }
}

/// `owner`/`group`: a name (looked up now, so a typo is found by `check`) or a numeric id.
pub struct Id;

impl Rule for Id {
    type Value = u32;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<u32> {
        let what = if key == "owner" { "user" } else { "group" };
        let id = match value {
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().ok()
            }
            Value::String(name) if !name.is_empty() => {
                let found = if key == "owner" {
                    nix::unistd::User::from_name(name).map(|u| u.map(|u| u.uid.as_raw()))
                } else {
                    nix::unistd::Group::from_name(name).map(|g| g.map(|g| g.gid.as_raw()))
                };
                return match found {
                    Ok(Some(id)) => Some(id),
                    Ok(None) => {
                        r.bad(parent, key, format!("unknown {what} `{name}`"));
                        None
                    }
                    Err(err) => {
                        r.bad(
                            parent,
                            key,
                            format!("cannot look up {what} `{name}`: {err}"),
                        );
                        None
                    }
                };
            }
            _ => None,
        };
        match id {
            Some(id) if id != RESERVED_ID => Some(id),
            _ => {
                r.bad(
                    parent,
                    key,
                    format!("{key} must be a {what} name or a numeric id below {RESERVED_ID}"),
                );
                None
            }
        }
    }
}
