//! tokenkeeper: keeps OAuth access tokens fresh in files that applications read, and revokes
//! them when it stops.
//!
//! Data flows one way: [`config`] → one task per scope set in [`daemon`] → [`provider`] →
//! [`sink`] → file. Each set's task owns its tokens, so there is no shared cache or lock.

pub mod batch;
pub mod budget;
pub mod clock;
pub mod config;
pub mod control;
pub mod cron;
pub mod daemon;
pub mod devprovider;
pub mod fsio;
pub mod hooks;
pub mod journal;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod provider;
pub mod reporter;
pub mod schedule;
pub mod secret;
pub mod settings;
pub mod signals;
pub mod sink;
pub mod status;
pub mod store;
pub mod systemd;
pub mod trust;

/// Install rustls' ring crypto provider as the process default. reqwest is built without a
/// provider of its own (ring builds faster and smaller than aws-lc); every client needs one.
/// Calling it again is harmless.
pub fn init_tls() {
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An error and its sources on one line, `outer: inner: cause`, for logs and messages, with
/// anything not printable escaped ([`shown`]): an error may quote what a provider, a store or
/// a file said, and the line goes to a terminal or the journal as it is.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    match shown(&s) {
        std::borrow::Cow::Borrowed(_) => s,
        std::borrow::Cow::Owned(escaped) => escaped,
    }
}

/// `text` as it may go to a terminal, a log line or the status: every character that is not
/// printable and visible by itself written as a visible escape (`\x1b`, `\u{202e}`), every
/// other one as it is. Text the operator did not write (a provider's or a store's answer, a
/// lease holder's name) goes through it before it is shown: an ESC makes a terminal escape
/// sequence that retitles or clears the operator's terminal, a newline or U+2028 forges a log
/// line, and a bidi override (U+202E) or an invisible character makes the text read other
/// than it is. A backslash stays as it is: the escapes are there to be seen, not decoded.
pub fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    use std::fmt::Write as _;
    if text.chars().all(is_shown_as_is) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_shown_as_is(c) {
            out.push(c);
        } else if c.is_ascii() {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Whether `c` is printable and visible by itself, so [`shown`] leaves it as it is.
pub fn is_shown_as_is(c: char) -> bool {
    if c.is_ascii() {
        return c == ' ' || c.is_ascii_graphic();
    }
    // C1 controls (U+009B is an 8-bit CSI), and every space but the ASCII one: U+2028 and
    // U+2029 end lines, the others hide in plain sight.
    !(c.is_control() || c.is_whitespace() || is_invisible(c))
}

/// Characters that draw nothing or change how the text around them is drawn: bidi marks,
/// overrides and isolates, zero-width characters, fillers, variation selectors, tags, the
/// byte-order mark, interlinear annotations, private use and noncharacters.
fn is_invisible(c: char) -> bool {
    let u = u32::from(c);
    matches!(
        u,
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xE000..=0xF8FF
            | 0xFDD0..=0xFDEF
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFFB
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
            | 0xF0000..=0x10FFFF
    ) || u & 0xFFFE == 0xFFFE
}

#[cfg(test)]
mod shown_tests {
    use super::shown;

    #[test]
    fn every_invisible_or_control_character_is_shown_as_an_escape() {
        assert_eq!(
            shown("plain text: é ü → 東京 ✓"),
            "plain text: é ü → 東京 ✓"
        );
        assert_eq!(
            shown("a\u{1b}]0;x\u{7}\nb\tc\u{7f}"),
            r"a\x1b]0;x\x07\x0ab\x09c\x7f"
        );
        for (c, esc) in [
            ('\u{202e}', r"\u{202e}"),
            ('\u{2066}', r"\u{2066}"),
            ('\u{2069}', r"\u{2069}"),
            ('\u{200b}', r"\u{200b}"),
            ('\u{2028}', r"\u{2028}"),
            ('\u{2029}', r"\u{2029}"),
            ('\u{feff}', r"\u{feff}"),
            ('\u{9b}', r"\u{9b}"),
            ('\u{85}', r"\u{85}"),
            ('\u{a0}', r"\u{a0}"),
            ('\u{ffff}', r"\u{ffff}"),
            ('\u{e0041}', r"\u{e0041}"),
        ] {
            assert_eq!(shown(&format!("x{c}y")), format!("x{esc}y"));
        }
    }
}
