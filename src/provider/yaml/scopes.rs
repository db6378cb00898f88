//! A set's `scopes:`, judged by its provider's kind: each kind has its own rules for what a
//! scope may hold.

use serde_yaml::Value;

use crate::settings::{Report, describe};

/// Why scopes are one per entry: the hint every scope-format message ends with.
const SCOPE_HINT: &str = "tokenkeeper sends scopes space-separated (or as a JSON list, to Square); list each scope as its own entry";

/// Check the `scopes` of the set at `parent`, for a provider of `kind` (`None` when the set's
/// provider is unknown: only the rules of every kind apply).
pub fn scopes(
    report: &mut Report,
    parent: &str,
    value: Option<&Value>,
    kind: Option<&str>,
) -> Option<Vec<String>> {
    let Some(value) = value else {
        report.missing(parent, "scopes", "a list such as [orders, customers]");
        return None;
    };
    let items = match value {
        Value::Sequence(items) => items,
        Value::String(text) => {
            let hint = if text.contains([',', ' ']) {
                format!("; {SCOPE_HINT}")
            } else {
                String::new()
            };
            report.bad(
                parent,
                "scopes",
                format!("scopes must be a list such as [orders, customers], not a string{hint}"),
            );
            return None;
        }
        other => {
            report.bad(
                parent,
                "scopes",
                format!(
                    "scopes must be a list such as [orders, customers], not {}",
                    describe(other)
                ),
            );
            return None;
        }
    };
    if items.is_empty() {
        report.bad(
            parent,
            "scopes",
            "scopes is empty; a token needs at least one scope",
        );
        return None;
    }
    let before = report.problems.len();
    // Room for as many as given: grown by pushes, one scope took room for four (96 bytes),
    // kept for the daemon's life by every set.
    let mut scopes: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("{parent}.scopes[{i}]");
        let scope = match item {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                report.problem(
                    at,
                    Some("scopes"),
                    format!("a scope must be a string, not {}", describe(other)),
                );
                continue;
            }
        };
        if scope.is_empty() {
            report.problem(at, Some("scopes"), "scope is empty");
        } else if kind == Some("oauth2") && !scope.bytes().all(is_scope_char) {
            // RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
            report.problem(
                at,
                Some("scopes"),
                format!(
                    "scope `{}` has a character RFC 6749 does not allow in a scope (whitespace, `\"` or `\\`); {SCOPE_HINT}",
                    scope.escape_debug()
                ),
            );
        } else if kind != Some("oauth2") && scope.contains(',') {
            report.problem(
                at,
                Some("scopes"),
                format!("scope `{scope}` contains a comma; {SCOPE_HINT}"),
            );
        } else if scope.contains(char::is_whitespace) {
            report.problem(
                at,
                Some("scopes"),
                format!("scope `{scope}` contains whitespace; {SCOPE_HINT}"),
            );
        } else if scopes.contains(&scope) {
            report.warn(
                &format!("{parent}.scopes"),
                format_args!("scope `{scope}` is listed twice"),
            );
        } else if kind == Some("square")
            && !scope
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            report.problem(
                at,
                Some("scopes"),
                format!(
                    "scope `{scope}` is not a Square permission name; they are upper case, such as `{}`",
                    scope.to_ascii_uppercase()
                ),
            );
        } else {
            let documented = match kind {
                Some("voucherify") => Some(("Voucherify", crate::provider::voucherify::SCOPES)),
                Some("square") => Some(("Square", crate::provider::square::SCOPES)),
                _ => None,
            };
            if let Some((vendor, list)) = documented
                && !list.contains(&scope.as_str())
            {
                report.warn(
                    &format!("{parent}.scopes"),
                    format_args!("scope `{scope}` is not in {vendor}'s documented list; the API may refuse it"),
                );
            }
            scopes.push(scope);
        }
    }
    (report.problems.len() == before).then_some(scopes)
}

/// RFC 6749 section 3.3 `scope-token` characters: printable ASCII except space, `"`, `\`.
fn is_scope_char(b: u8) -> bool {
    b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)
}
