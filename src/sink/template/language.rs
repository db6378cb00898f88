//! The template language a token file may be rendered with: Jinja without the parts that can
//! build values without bound, and a render bounded in memory as well as in work.
//!
//! Fuel bounds the instructions a render runs, not what each one allocates: `"x" * 100000000`
//! is one instruction and 100 MB, and `{% set b = a ~ a %}` doubles a string each line, so
//! thirty lines reach a gigabyte. A token file needs values put in place, quoted, compared and
//! chosen between; none of that needs text built at run time. So the language has no
//! operator that joins or repeats (`~`, `+`, `*`, `**`), no slices, no blocks that capture
//! output into a value (`{% set %}…{% endset %}`, `{% filter %}`), no macros, calls, includes
//! or imports, and only the filters below, each of which charges what it allocates to the
//! render's budget. What is left allocates no more than the template, the variables, the
//! budget and the output, each of which is bounded.

use std::cell::Cell;

use minijinja::machinery::{Instruction, Instructions};
use minijinja::value::ValueKind;
use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};

/// Instructions one render may execute. A template of `MAX_TEMPLATE_BYTES` that is all
/// expressions runs to a few hundred thousand; ten million stops a runaway loop (nested
/// `for`s) within a fraction of a second instead of holding a runtime thread for hours.
const RENDER_FUEL: u64 = 10_000_000;

/// Bytes the filters of one render may produce in all. Every filter's output is a new value
/// (the variables and the template's own text are shared, not copied), and a legitimate
/// template quotes a few short values: twice the largest file a render may write leaves room
/// for every value of such a file to be quoted twice over, while a loop or a chain of filters
/// that multiplies text stops at a few MiB.
pub(super) const FILTER_BUDGET: usize = 2 * super::MAX_RENDERED_BYTES as usize;

thread_local! {
    /// What the filters of the render running on this thread may still allocate. A render
    /// runs start to end on the thread that called it, so a thread's budget is the render's.
    static BUDGET: Cell<usize> = const { Cell::new(0) };
}

/// Runs `render` with a fresh filter budget, and leaves none behind for code outside a render.
pub(super) fn with_budget<T>(render: impl FnOnce() -> T) -> T {
    BUDGET.with(|b| b.set(FILTER_BUDGET));
    let out = render();
    BUDGET.with(|b| b.set(0));
    out
}

/// Charge `len` bytes of a filter's output to the render's budget.
fn charge(filter: &str, len: usize) -> Result<(), minijinja::Error> {
    BUDGET.with(|b| match b.get().checked_sub(len) {
        Some(left) => {
            b.set(left);
            Ok(())
        }
        None => Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "the {filter} filter went past the {FILTER_BUDGET} bytes the filters of one render may produce"
            ),
        )),
    })
}

/// The environment every template renders in: strict about undefined names, escaping
/// nothing unless a filter says so (minijinja would otherwise pick HTML escaping for a
/// `.xml` name, and escape a `json` filter's output twice), bounded in work, ending as the
/// template does, and knowing only the filters and tests listed in the docs.
pub(super) fn environment() -> Environment<'static> {
    let mut env = Environment::empty();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_fuel(Some(RENDER_FUEL));
    // The file as written: Jinja's default drops a template's last newline, which a config
    // file (and a tool comparing it) would miss.
    // Building fails only for clashing custom delimiters, and these are the defaults.
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env.add_filter("json", json);
    env.add_filter("xml", xml);
    env.add_filter("shell", shell);
    env.add_filter("lower", lower);
    env.add_filter("upper", upper);
    env.add_filter("trim", trim);
    // These two make no new text: `default` hands back one of its arguments, `length` a number.
    env.add_filter("default", minijinja::filters::default);
    env.add_filter("length", minijinja::filters::length);
    env.add_test("defined", minijinja::tests::is_defined);
    env.add_test("undefined", minijinja::tests::is_undefined);
    env.add_test("none", minijinja::tests::is_none);
    env.add_test("number", minijinja::tests::is_number);
    env.add_test("string", minijinja::tests::is_string);
    env.add_test("startingwith", minijinja::tests::is_startingwith);
    env.add_test("endingwith", minijinja::tests::is_endingwith);
    env
}

/// The first construct in `code` outside the language, with its line: what it is, for a
/// message. An allow-list, so that a construct a later minijinja adds is refused until
/// someone has judged it.
pub(super) fn refused_construct(code: &Instructions<'_>) -> Option<(Option<usize>, &'static str)> {
    (0u32..)
        .map_while(|i| code.get(i).map(|instr| (i, instr)))
        .find_map(|(i, instr)| refusal(instr).map(|what| (code.get_line(i), what)))
}

/// Why `instr` is outside the language, if it is.
fn refusal(instr: &Instruction<'_>) -> Option<&'static str> {
    use Instruction as I;
    Some(match instr {
        I::EmitRaw(_)
        | I::StoreLocal(_)
        | I::Lookup(_)
        | I::GetAttr(_)
        | I::GetItem
        | I::LoadConst(_)
        | I::BuildMap(_)
        | I::BuildKwargs(_)
        | I::MergeKwargs(_)
        | I::BuildList(_)
        | I::BuildTuple(_)
        | I::UnpackList(_)
        | I::UnpackLists(_)
        | I::Sub
        | I::Div
        | I::IntDiv
        | I::Rem
        | I::Neg
        | I::Eq
        | I::Ne
        | I::Gt
        | I::Gte
        | I::Lt
        | I::Lte
        | I::Not
        | I::In
        | I::CompareAndPreserve(_)
        | I::ApplyFilter(..)
        | I::PerformTest(..)
        | I::Emit
        | I::PushLoop(_)
        | I::PushWith
        | I::Iterate(_)
        | I::PushDidNotIterate
        | I::PopFrame
        | I::PopLoopFrame
        | I::Jump(_)
        | I::JumpIfFalse(_)
        | I::JumpIfFalseOrPop(_)
        | I::JumpIfTrueOrPop(_)
        | I::PushAutoEscape
        | I::PopAutoEscape
        | I::DupTop
        | I::DiscardTop
        | I::Swap => return None,
        I::Add => "`+`, which joins text without bound; write the parts side by side",
        I::StringConcat => "`~`, which joins text without bound; write the parts side by side",
        I::Mul => "`*`, which repeats text without bound",
        I::Pow => "`**`",
        I::Slice => "slices (`value[a:b]`), which copy text",
        I::BeginCapture(_) | I::EndCapture => {
            "a block that captures output (`{% set %}…{% endset %}`, `{% filter %}`)"
        }
        // Macros themselves are not even parsed: minijinja is built without them.
        I::CallFunction(..) | I::CallObject(_) => "function calls",
        I::CallMethod(..) => "method calls",
        I::SetAttr(_) => "assignment to an attribute",
        I::FastRecurse => "recursive loops",
        // Nothing else exists in the minijinja built here (`include`, `extends` and
        // `import` are not even parsed); a construct a later one adds is refused unjudged.
        #[allow(unreachable_patterns)]
        _ => "a construct this language does not have",
    })
}

/// The filters defined here: each says what went wrong in fixed words, `the NAME filter …`,
/// never quoting a value, so that even a render with a real token may say it.
const OWN_FILTERS: &[&str] = &["json", "xml", "shell", "lower", "upper", "trim"];

/// Whether `detail` is the message of one of [`OWN_FILTERS`].
pub(super) fn own_words(detail: &str) -> bool {
    OWN_FILTERS.iter().any(|f| {
        detail
            .strip_prefix("the ")
            .and_then(|d| d.strip_prefix(f))
            .is_some_and(|d| d.starts_with(" filter "))
    })
}

/// The text of a scalar value; anything else is refused, not quoted in some form of its own.
fn scalar(filter: &str, v: &Value) -> Result<String, minijinja::Error> {
    match v.kind() {
        ValueKind::String | ValueKind::Number | ValueKind::Bool => Ok(v.to_string()),
        other => Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("the {filter} filter quotes strings, numbers and booleans, not {other}"),
        )),
    }
}

/// A filter's string result, once charged to the budget.
fn charged(filter: &str, out: String) -> Result<String, minijinja::Error> {
    charge(filter, out.len())?;
    Ok(out)
}

/// Whether `c` must be written as a `\uXXXX` escape for a JSON string to be read back the
/// same by a YAML parser too: YAML's printable set leaves out the C1 controls and DEL (which
/// JSON allows raw), U+FFFE and U+FFFF, and YAML 1.1 reads U+0085, U+2028 and U+2029 as line
/// breaks. A byte-order mark inside a scalar is refused by some parsers. JSON's own controls
/// (below U+0020) serde_json escapes already.
fn json_escapes(c: char) -> bool {
    matches!(
        c,
        '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
    )
}

/// `| json`: a JSON value (a string in quotes, a number, a boolean), also right for YAML.
fn json(v: &Value) -> Result<String, minijinja::Error> {
    if let Some(s) = v.as_str() {
        let quoted = serde_json::to_string(s).map_err(|_| {
            minijinja::Error::new(ErrorKind::InvalidOperation, "cannot write a JSON string")
        })?;
        if !quoted.contains(json_escapes) {
            return charged("json", quoted);
        }
        let mut out = String::with_capacity(quoted.len() + 16);
        for c in quoted.chars() {
            if json_escapes(c) {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            } else {
                out.push(c);
            }
        }
        return charged("json", out);
    }
    if v.kind() == ValueKind::None {
        return Ok("null".into());
    }
    charged("json", scalar("json", v)?)
}

/// Whether XML 1.0 can hold `c` in text or an attribute (its `Char` production, less the
/// C0 and C1 controls other than tab and line ends, which no application's config wants).
fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || !(c.is_control() || matches!(c, '\u{fffe}' | '\u{ffff}'))
}

/// `| xml`: text for an XML element or an attribute in either kind of quotes.
fn xml(v: &Value) -> Result<String, minijinja::Error> {
    let text = scalar("xml", v)?;
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if !xml_char(c) => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "the xml filter met a character XML 1.0 cannot hold (a control character, U+FFFE or U+FFFF)",
                ));
            }
            c => out.push(c),
        }
    }
    charged("xml", out)
}

/// `| shell`: one word for a POSIX shell, in single quotes (inside which nothing is special).
fn shell(v: &Value) -> Result<String, minijinja::Error> {
    let text = scalar("shell", v)?;
    if text.contains('\0') {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "the shell filter met a NUL byte, which no shell word can hold",
        ));
    }
    charged("shell", format!("'{}'", text.replace('\'', r"'\''")))
}

/// The text of a string value, for the filters that change text.
fn text<'v>(filter: &str, v: &'v Value) -> Result<&'v str, minijinja::Error> {
    v.as_str().ok_or_else(|| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("the {filter} filter takes a string, not {}", v.kind()),
        )
    })
}

fn lower(v: &Value) -> Result<String, minijinja::Error> {
    charged("lower", text("lower", v)?.to_lowercase())
}

fn upper(v: &Value) -> Result<String, minijinja::Error> {
    charged("upper", text("upper", v)?.to_uppercase())
}

fn trim(v: &Value) -> Result<String, minijinja::Error> {
    charged("trim", text("trim", v)?.trim().to_string())
}

/// Where a render writes: the file's bytes, refused past `max` so that no loop can grow the
/// output beyond what a token file may hold. The buffer is zeroed when dropped.
pub(super) struct Capped {
    pub out: zeroize::Zeroizing<Vec<u8>>,
    pub max: usize,
    /// Whether a write was refused for the size, to tell that error from minijinja's own.
    pub overflowed: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len().saturating_add(buf.len()) > self.max {
            self.overflowed = true;
            return Err(std::io::Error::other("the rendering is too large"));
        }
        // Grown by hand so that a reallocation never leaves an unzeroed copy behind.
        if self.out.capacity() - self.out.len() < buf.len() {
            let wanted = (self.out.len() + buf.len())
                .max(self.out.capacity() * 2)
                .min(self.max);
            let mut bigger = zeroize::Zeroizing::new(Vec::with_capacity(wanted));
            bigger.extend_from_slice(&self.out);
            self.out = bigger;
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
