//! Token files rendered from a template (`file.template`), for applications that read their
//! token from inside their own config file (an `.ini`, a `.properties`, XML, YAML).
//!
//! The template's text is read once, when the config is loaded (at start and at each SIGHUP),
//! never per refresh, and checked then with a stand-in token: a syntax error or an unknown
//! name is found by `check`, not at the first refresh. Rendering is strict (an undefined name
//! is an error, never an empty string) and escapes nothing on its own: the `json`, `xml` and
//! `shell` filters quote a value for the place it goes, so a token cannot break out of it.
//!
//! No error names the token: errors from a real render say what went wrong and where, never
//! minijinja's detail (which may quote a value) and never what was rendered so far.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use minijinja::{ErrorKind, Value};
use zeroize::Zeroizing;

use super::TokenContent;
use crate::clock::rfc3339_range;
use crate::fsio;
use crate::secret::Secret;

mod language;
mod source;

use language::{environment, refused_construct, with_budget};

/// The largest template read. A legacy application's config file runs to a few KiB; 1 MiB
/// leaves room for the largest while bounding what a mistaken path (a log, an image) costs.
pub const MAX_TEMPLATE_BYTES: u64 = 1 << 20;

/// The largest file a template may render to: the template's own bound and room for the
/// values put into it. [`super::remove_if_holds`] reads up to this much, so that every file
/// written can be recognised, and removed, at stop.
pub const MAX_RENDERED_BYTES: u64 = 2 * MAX_TEMPLATE_BYTES;

/// The names a template may use, as the docs list them.
pub const VARIABLES: &[&str] = &[
    "access_token",
    "token_type",
    "expires_at",
    "expires_at_unix",
    "scope",
    "set",
    "provider",
];

/// The token `check` renders with: only its shape matters (b64token characters, a typical
/// length), and it is plainly no real token.
const STAND_IN_TOKEN: &str = "tokenkeeper-check-stand-in-token";

/// The stand-in token's lifetime at `check`: an hour, a typical token's.
const STAND_IN_LIFETIME: Duration = Duration::from_secs(3600);

/// A set's template: its text and the one value it needs that a token does not carry.
#[derive(Clone, PartialEq, Eq)]
pub struct FileTemplate {
    /// Where the text was read from; it names the template in every error.
    pub path: PathBuf,
    source: Arc<str>,
    /// The set's provider, the `provider` variable.
    provider: String,
}

impl fmt::Debug for FileTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileTemplate")
            .field("path", &self.path)
            .field("bytes", &self.source.len())
            .field("provider", &self.provider)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read template {path}", path = path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The template did not render. `what` never holds a value: see [`describe`].
    #[error("template {path}{line}: {what}", path = path.display(), line = at_line(*line))]
    Render {
        path: PathBuf,
        line: Option<usize>,
        what: String,
    },
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(", line {l}")).unwrap_or_default()
}

/// One mistake `check` found in a template, for a config problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateProblem {
    pub line: Option<usize>,
    pub message: String,
}

impl FileTemplate {
    /// Read the template at `path`: a regular file (a FIFO would block, a device be read
    /// forever) only root or the daemon's user could have written (see [`source::open`]),
    /// at most [`MAX_TEMPLATE_BYTES`], UTF-8.
    pub fn read(path: &Path, provider: &str) -> Result<Self, TemplateError> {
        use fsio::SmallTextError as E;
        use std::io::{Error, ErrorKind};
        let fail = |source| TemplateError::Read {
            path: path.to_path_buf(),
            source,
        };
        let refuse = |kind, why: &str| fail(Error::new(kind, why.to_string()));
        let (file, meta) = source::open(path).map_err(fail)?;
        let source =
            fsio::read_opened_text(file, &meta, MAX_TEMPLATE_BYTES).map_err(|e| match e {
                E::Io(e) => fail(e),
                E::NotAFile => refuse(
                    ErrorKind::InvalidInput,
                    "not a regular file (a device, FIFO, socket or directory)",
                ),
                E::TooLarge => refuse(
                    ErrorKind::InvalidInput,
                    "larger than 1 MiB, the most a template may be",
                ),
                E::NotUtf8 => refuse(ErrorKind::InvalidData, "not valid UTF-8 text"),
            })?;
        Ok(Self::new(path, source, provider))
    }

    pub fn new(path: &Path, source: impl Into<Arc<str>>, provider: &str) -> Self {
        FileTemplate {
            path: path.to_path_buf(),
            source: source.into(),
            provider: provider.to_string(),
        }
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }

    /// Everything wrong that can be found without a token: a syntax error, a construct
    /// outside the language, a name that is no variable (even in a branch a render would not
    /// take), and what a render of `set`'s file with a stand-in token hits. Messages hold no
    /// secret: there is none here.
    pub fn check(&self, set: &str, scope: &str) -> Vec<TemplateProblem> {
        let env = environment();
        let name = self.name();
        let template = match env.template_from_named_str(&name, &self.source) {
            Ok(t) => t,
            Err(e) => {
                return vec![TemplateProblem {
                    line: e.line(),
                    message: describe(&e, true),
                }];
            }
        };
        if let Some(f) = outside_the_language(&template) {
            return vec![TemplateProblem {
                line: f.line,
                message: f.what,
            }];
        }
        let mut unknown: Vec<String> = template
            .undeclared_variables(false)
            .into_iter()
            .filter(|n| !VARIABLES.contains(&n.as_str()))
            .collect();
        unknown.sort();
        let mut problems: Vec<TemplateProblem> = unknown
            .iter()
            .map(|n| TemplateProblem {
                line: first_line_naming(&self.source, n),
                message: format!(
                    "unknown variable `{n}`; a template knows {}",
                    VARIABLES.join(", ")
                ),
            })
            .collect();
        if problems.is_empty() {
            let token = Secret::new(STAND_IN_TOKEN);
            let content = TokenContent {
                set,
                token: &token,
                token_type: "Bearer",
                expires_at: crate::clock::now_wall() + STAND_IN_LIFETIME,
                scope,
            };
            if let Err(f) = self.run(&template, &content, true) {
                problems.push(TemplateProblem {
                    line: f.line,
                    message: f.what,
                });
            }
        }
        problems
    }

    /// The file's bytes for this token, zeroed when dropped. An error says what and where,
    /// never a value or the output rendered so far.
    pub fn render(&self, c: &TokenContent<'_>) -> Result<Zeroizing<Vec<u8>>, TemplateError> {
        let env = environment();
        let name = self.name();
        let fail = |f: Failure| TemplateError::Render {
            path: self.path.clone(),
            line: f.line,
            what: f.what,
        };
        let template = env
            .template_from_named_str(&name, &self.source)
            .map_err(|e| fail(Failure::of(&e, false)))?;
        // Checked at every render, not only at `check`: a template made with `new` has had none.
        if let Some(f) = outside_the_language(&template) {
            return Err(fail(f));
        }
        self.run(&template, c, false).map_err(fail)
    }

    /// Render `template` into a buffer that refuses to grow past a token file's bound, with
    /// the filters' budget, so that what one render allocates is bounded.
    fn run(
        &self,
        template: &minijinja::Template<'_, '_>,
        c: &TokenContent<'_>,
        with_detail: bool,
    ) -> Result<Zeroizing<Vec<u8>>, Failure> {
        let mut sink = language::Capped {
            out: Zeroizing::new(Vec::new()),
            // A usize on every target tokenkeeper builds for.
            max: usize::try_from(MAX_RENDERED_BYTES).unwrap_or(usize::MAX),
            overflowed: false,
        };
        let rendered = with_budget(|| {
            template
                .render_captured_to(self.context(c), &mut sink)
                .map(drop)
        });
        match rendered {
            Ok(()) => Ok(sink.out),
            Err(_) if sink.overflowed => Err(Failure {
                line: None,
                what: format!(
                    "renders to more than the {MAX_RENDERED_BYTES} bytes a token file may hold"
                ),
            }),
            Err(e) => Err(Failure::of(&e, with_detail)),
        }
    }

    fn context(&self, c: &TokenContent<'_>) -> Value {
        let expires = rfc3339_range(c.expires_at);
        let unix = expires
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        minijinja::context! {
            access_token => c.token.expose(),
            token_type => c.token_type,
            expires_at => humantime::format_rfc3339_seconds(expires).to_string(),
            expires_at_unix => unix,
            scope => c.scope,
            set => c.set,
            provider => self.provider.as_str(),
        }
    }
}

/// Why a render did not finish: where, and what, in words that hold no value.
struct Failure {
    line: Option<usize>,
    what: String,
}

impl Failure {
    fn of(e: &minijinja::Error, with_detail: bool) -> Self {
        Failure {
            line: e.line(),
            what: describe(e, with_detail),
        }
    }
}

/// The first construct of `template` outside the language a token file's template may use.
fn outside_the_language(template: &minijinja::Template<'_, '_>) -> Option<Failure> {
    let compiled = minijinja::machinery::get_compiled_template(template);
    std::iter::once(&compiled.instructions)
        .chain(compiled.blocks.values())
        .find_map(refused_construct)
        .map(|(line, what)| Failure {
            line,
            what: format!("{what}: not part of the template language a token file may use"),
        })
}

/// What went wrong, for a message. `with_detail` only where no secret was rendered
/// (`check`'s stand-in): minijinja's detail may quote a value, such as the token.
fn describe(e: &minijinja::Error, with_detail: bool) -> String {
    let kind = e.kind().to_string();
    match (with_detail, e.detail()) {
        (true, Some(detail)) => format!("{kind}: {detail}"),
        // Our own filters' words, which are fixed text and never quote a value.
        (false, Some(detail)) if language::own_words(detail) => format!("{kind}: {detail}"),
        _ if e.kind() == ErrorKind::UndefinedError => {
            format!("{kind} (a name that is not a variable, or a missing attribute or item)")
        }
        _ => kind,
    }
}

/// The first line (1-based) where `name` stands as a whole word, to point at an unknown name.
fn first_line_naming(source: &str, name: &str) -> Option<usize> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    source
        .lines()
        .position(|line| {
            line.match_indices(name).any(|(i, _)| {
                let before = line[..i].chars().next_back();
                let after = line[i + name.len()..].chars().next();
                !before.is_some_and(word) && !after.is_some_and(word)
            })
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(token: &Secret) -> TokenContent<'_> {
        TokenContent {
            set: "legacy",
            token,
            token_type: "Bearer",
            expires_at: UNIX_EPOCH + Duration::from_secs(1_738_945_086),
            scope: "orders",
        }
    }

    fn render(source: &str, token: &str) -> Result<String, TemplateError> {
        let t = FileTemplate::new(Path::new("/t/app.ini.tmpl"), source, "voucherify-eu");
        let token = Secret::new(token);
        t.render(&content(&token))
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn every_variable_renders() {
        let out = render(
            "[auth]\ntoken={{ access_token }}\ntype={{ token_type }}\nexp={{ expires_at }}\n\
             unix={{ expires_at_unix }}\nscope={{ scope }}\nset={{ set }}\nprovider={{ provider }}\n",
            "tok123",
        )
        .unwrap();
        assert_eq!(
            out,
            "[auth]\ntoken=tok123\ntype=Bearer\nexp=2025-02-07T16:18:06Z\nunix=1738945086\n\
             scope=orders\nset=legacy\nprovider=voucherify-eu\n"
        );
    }

    #[test]
    fn filters_keep_a_value_in_its_place() {
        let hostile = r#"a"b'c<d>&e\f"#;
        let out = render(
            "{{ access_token | json }}|{{ access_token | xml }}|{{ access_token | shell }}|{{ expires_at_unix | json }}",
            hostile,
        )
        .unwrap();
        let parts: Vec<&str> = out.split('|').collect();
        assert_eq!(serde_json::from_str::<String>(parts[0]).unwrap(), hostile);
        assert_eq!(parts[1], "a&quot;b&apos;c&lt;d&gt;&amp;e\\f");
        assert_eq!(parts[2], r#"'a"b'\''c<d>&e\f'"#);
        assert_eq!(parts[3], "1738945086");
        // A `.xml` name does not switch on escaping of its own: `| json` is not escaped twice.
        let t = FileTemplate::new(Path::new("/t/app.xml"), "{{ access_token | json }}", "p");
        let token = Secret::new("a<b");
        assert_eq!(&*t.render(&content(&token)).unwrap(), br#""a<b""#);
    }

    #[test]
    fn run_time_errors_name_the_line_and_never_the_token() {
        let token = "tok-SECRET-9f8e7d";
        for source in [
            "ok\n{{ access_token | json | length / 0 }}",
            "ok\n{{ access_token.nope }}",
            "ok\n{{ access_token - 1 }}",
            "ok\n{{ access_token | length(1) }}",
        ] {
            let err = render(source, token).unwrap_err();
            let text = crate::error_chain(&err);
            assert!(!text.contains("SECRET"), "{text}");
            assert!(text.contains("/t/app.ini.tmpl, line 2"), "{text}");
        }
        // Not even minijinja's detail, which says things about values ("value of type string
        // is not callable") and could one day quote one.
        let err = render("ok\n{{ access_token - 1 }}", token).unwrap_err();
        assert_eq!(
            crate::error_chain(&err),
            "template /t/app.ini.tmpl, line 2: invalid operation"
        );
    }

    #[test]
    fn check_finds_unknown_names_syntax_errors_and_render_errors() {
        let check = |source: &str| {
            FileTemplate::new(Path::new("/t/a.tmpl"), source, "p").check("legacy", "orders")
        };
        assert_eq!(
            check("{{ access_token | json }} {{ scope | upper | length - 1 }}"),
            vec![]
        );
        let p = check("a\n{% if false %}{{ acess_token }}{% endif %}");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].line, Some(2));
        assert!(
            p[0].message.contains("unknown variable `acess_token`"),
            "{p:?}"
        );
        let p = check("a\nb\n{{ access_token ");
        assert_eq!(p[0].line, Some(3), "{p:?}");
        assert!(p[0].message.starts_with("syntax error"), "{p:?}");
        let p = check("{{ access_token | nosuchfilter }}");
        assert!(p[0].message.contains("nosuchfilter"), "{p:?}");
        let p = check("\n{{ set.nope }}");
        assert_eq!(p[0].line, Some(2), "{p:?}");
        // Bounded in work and in output, whatever the template asks for.
        let long = "x".repeat(10_000);
        let p = check(&format!(
            "{{% for i in \"{long}\" %}}{{% for j in \"{long}\" %}}{{% endfor %}}{{% endfor %}}"
        ));
        assert!(p[0].message.contains("fuel"), "{p:?}");
        let p = check(&format!("{{% for i in \"{long}\" %}}{long}{{% endfor %}}"));
        assert!(
            p[0].message
                .contains("renders to more than the 2097152 bytes a token file may hold"),
            "{p:?}"
        );
    }

    #[test]
    fn nothing_that_builds_text_without_bound_is_in_the_language() {
        let check = |source: &str| {
            FileTemplate::new(Path::new("/t/a.tmpl"), source, "p").check("legacy", "orders")
        };
        for (source, what) in [
            ("{% set s = \"x\" * 100000000 %}{{ s }}{{ s }}", "`*`"),
            ("a\n{{ access_token ~ access_token }}", "`~`"),
            ("{{ access_token + access_token }}", "`+`"),
            ("{{ expires_at_unix ** 2 }}", "`**`"),
            ("{{ access_token[1:] }}", "slices"),
            (
                "{% set s %}{{ access_token }}{% endset %}",
                "captures output",
            ),
            (
                "{% filter upper %}{{ access_token }}{% endfilter %}",
                "captures output",
            ),
            ("{{ range(3) }}", "function calls"),
            ("{{ scope.upper() }}", "method calls"),
        ] {
            let p = check(source);
            assert_eq!(p.len(), 1, "{source}: {p:?}");
            assert!(p[0].message.contains(what), "{source}: {p:?}");
            assert!(
                p[0].message.contains("not part of the template language"),
                "{p:?}"
            );
            assert!(p[0].line.is_some(), "{source}: {p:?}");
            // Refused at a render too, for a template that never went through `check`.
            assert!(render(source, "tok").is_err(), "{source}");
        }
        assert_eq!(check("a\n{{ access_token ~ 1 }}")[0].line, Some(2));
        // Filters that make text are charged to one budget per render: a loop re-making a
        // value stops there, even though it emits nothing.
        let long = "x".repeat(100_000);
        let p = check(&format!(
            "{{% for c in \"{long}\" %}}{{% set u = \"{long}\" | upper %}}{{% endfor %}}"
        ));
        assert!(p[0].message.contains("invalid operation"), "{p:?}");
        assert!(p[0].message.contains("the upper filter went past"), "{p:?}");
        // The budget is the render's: the next render starts afresh.
        assert_eq!(check("{{ access_token | upper }}"), vec![]);
    }

    #[test]
    fn filter_output_parses_in_its_format_or_is_refused() {
        // U+FFFE, U+FFFF, C1 controls, DEL, line and paragraph separators, NEL and a BOM:
        // valid in a JSON string, yet not in YAML's printable set, or read as a line break.
        let hostile =
            "a\u{fffe}b\u{ffff}c\u{85}d\u{9f}e\u{7f}f\u{2028}g\u{2029}h\u{feff}i\"j\\k\u{1}l";
        let t = FileTemplate::new(Path::new("/t/a.yaml"), "scope: {{ scope | json }}\n", "p");
        let token = Secret::new("tok");
        let c = TokenContent {
            scope: hostile,
            ..content(&token)
        };
        let out = String::from_utf8(t.render(&c).unwrap().to_vec()).unwrap();
        let yaml: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(yaml["scope"].as_str(), Some(hostile), "{out:?}");
        let json: String =
            serde_json::from_str(out.trim_start_matches("scope: ").trim_end()).unwrap();
        assert_eq!(json, hostile);
        assert!(out.is_ascii(), "{out:?}");
        // XML 1.0 cannot hold U+FFFE or U+FFFF at all, not even as a character reference.
        for bad in ["a\u{fffe}", "a\u{ffff}", "a\u{1}", "a\u{85}"] {
            let t = FileTemplate::new(Path::new("/t/a.xml"), "<t v=\"{{ scope | xml }}\"/>", "p");
            let c = TokenContent {
                scope: bad,
                ..content(&token)
            };
            let err = crate::error_chain(&t.render(&c).unwrap_err());
            assert!(err.contains("invalid operation"), "{err}");
        }
    }

    #[test]
    fn reading_refuses_what_is_no_template() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_TEMPLATE_BYTES as usize + 1]).unwrap();
        let binary = dir.path().join("binary");
        std::fs::write(&binary, [0xff, 0xfe]).unwrap();
        for (path, why) in [
            (dir.path().to_path_buf(), "not a regular file"),
            (fifo, "not a regular file"),
            (big, "larger than 1 MiB"),
            (binary, "not valid UTF-8"),
            (dir.path().join("missing"), "No such file"),
        ] {
            let err = FileTemplate::read(&path, "p").unwrap_err();
            let text = crate::error_chain(&err);
            assert!(text.contains(why), "{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
        }
    }
}
