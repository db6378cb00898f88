//! Cutting secrets out of what a provider says. A server or a proxy that echoes a request in
//! its error must not get the API key, the client secret or a token into our log,
//! `status.json` or `tokenkeeper status`: [`Redactor`] cuts out the few secrets one request
//! carried, [`HeldTokens`] every token the daemon holds from the provider, which may be
//! 100,000, at a cost that does not grow with their number.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;
use zeroize::Zeroizing;

use super::oauth2;
use crate::secret::Secret;

/// Each way a secret may appear in a provider's text: as sent (raw, form-encoded) and as our
/// error text would quote it (Rust and JSON escapes).
fn forms(secret: &str) -> Vec<String> {
    // The usual token reads the same in every form: one copy, not four made and three thrown
    // away.
    if is_plain(secret) {
        return if secret.is_empty() {
            Vec::new()
        } else {
            vec![secret.to_owned()]
        };
    }
    all_forms(secret)
}

/// Whether `secret` reads the same in every one of its [`forms`]: letters, digits, `-`, `.`
/// and `_` only, as the usual token is.
fn is_plain(secret: &str) -> bool {
    secret
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

fn all_forms(secret: &str) -> Vec<String> {
    let quoted = |q: String| q[1..q.len() - 1].to_owned();
    let mut forms = vec![
        secret.to_owned(),
        oauth2::form_encode(secret),
        quoted(format!("{secret:?}")),
        serde_json::to_string(secret)
            .map(quoted)
            .unwrap_or_default(),
    ];
    forms.retain(|f| !f.is_empty());
    forms.sort();
    forms.dedup();
    forms
}

/// Shown where a secret was cut out of a provider's text.
pub const REDACTED: &str = "[redacted]";

/// Shortest start of a secret cut out where a provider's text was truncated right after it
/// (see [`super::sanitize`]): shorter runs are too common in ordinary words to mean anything, and
/// four characters of a long random secret tell an attacker nearly nothing.
const MIN_PARTIAL: usize = 4;

/// The secrets one request carried, to be cut out of whatever the provider answers: a server
/// or proxy that echoes the request (headers, form body) in its error must not get the API key,
/// the client secret or a token into our log, `status.json` or `tokenkeeper status`. Each secret
/// is looked for as sent (raw, form-encoded) and as our error text would quote it (JSON and
/// Rust escapes).
#[derive(Default)]
pub struct Redactor {
    needles: Vec<zeroize::Zeroizing<String>>,
}

impl Redactor {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Redactor {
        let mut r = Redactor::default();
        for s in secrets {
            r.add(s);
        }
        r
    }

    pub fn add(&mut self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        for f in forms(secret) {
            if !f.is_empty() && !self.needles.iter().any(|n| **n == f) {
                self.needles.push(zeroize::Zeroizing::new(f));
            }
        }
        // Longest first, so a form that contains another is cut whole.
        self.needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    }

    /// `text` with every secret replaced by [`REDACTED`], including the start of one that
    /// [`super::sanitize`] cut short at its `…`, and one written in any mix of escapes
    /// ([`decoded_layers`]).
    pub fn redact(&self, text: &str) -> String {
        self.redact_as(text, REDACTED)
    }

    /// [`Redactor::redact`], with `label` where a secret was.
    pub fn redact_as(&self, text: &str, label: &str) -> String {
        let out = self.cut_forms(text, label);
        // What the forms missed: a secret written with escapes of its own choosing.
        let mut cuts = Vec::new();
        for (layer, from) in decoded_layers(&out) {
            for n in &self.needles {
                for (i, _) in layer.match_indices(n.as_str()) {
                    cuts.push((from[i], from[i + n.len()]));
                }
            }
            for (at, _) in layer.match_indices('…') {
                let cut = self
                    .needles
                    .iter()
                    .filter_map(|n| partial_tail(&layer[..at], n))
                    .max();
                if let Some(k) = cut {
                    cuts.push((from[at - k], from[at]));
                }
            }
        }
        cut_out(&out, cuts, label)
    }

    /// `text` with each of the secrets' [`forms`] replaced by `label`, and the start of one
    /// cut short at a `…`.
    fn cut_forms(&self, text: &str, label: &str) -> Zeroizing<String> {
        // Zeroed on drop, as every copy of a text that may hold a token.
        let mut out = Zeroizing::new(text.to_owned());
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = Zeroizing::new(out.replace(n.as_str(), label));
            }
        }
        if !out.contains('…') {
            return out;
        }
        // Only a piece followed by `…` can end inside a secret.
        let pieces: Vec<&str> = out.split('…').collect();
        let last = pieces.len() - 1;
        let mut result = Zeroizing::new(String::with_capacity(out.len()));
        for (i, piece) in pieces.into_iter().enumerate() {
            let cut = if i < last {
                self.needles
                    .iter()
                    .filter_map(|n| partial_tail(piece, n))
                    .max()
                    .unwrap_or(0)
            } else {
                0
            };
            result.push_str(&piece[..piece.len() - cut]);
            if cut > 0 {
                result.push_str(label);
            }
            if i < last {
                result.push('…');
            }
        }
        result
    }
}

/// Length of the longest start of `needle` (at least [`MIN_PARTIAL`] bytes, shorter than the
/// whole) that `piece` ends with.
fn partial_tail(piece: &str, needle: &str) -> Option<usize> {
    (MIN_PARTIAL..needle.len())
        .rev()
        .filter(|&k| needle.is_char_boundary(k))
        .find(|&k| piece.ends_with(&needle[..k]))
}

/// A form of a held token, ordered as the text it is, so the set can be searched by `&str`
/// and by prefix.
struct Form(Zeroizing<String>);

impl PartialEq for Form {
    fn eq(&self, other: &Form) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Form {}

impl PartialOrd for Form {
    fn partial_cmp(&self, other: &Form) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Form {
    fn cmp(&self, other: &Form) -> std::cmp::Ordering {
        self.0.as_str().cmp(other.0.as_str())
    }
}

impl Borrow<str> for Form {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Every token of one provider the daemon may still hold, with when it can no longer matter,
/// and each of their [`forms`] indexed for [`HeldTokens::redact`]: one lookup per place in the
/// text and distinct length, not one search per token.
#[derive(Default)]
pub(crate) struct HeldTokens {
    inner: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    /// Every held token, keyed by itself (its raw form), with when it can no longer matter.
    /// The token is its own key, not its fingerprint: one copy of it a set instead of two, no
    /// digest to compute at each hold and release, and nothing to hash.
    tokens: BTreeMap<Form, Instant>,
    /// The forms of held tokens other than the tokens themselves (form-encoded, escaped), with
    /// how many held tokens have each. The usual token (see [`forms`]) has none.
    escaped: BTreeMap<Form, u32>,
    /// The byte lengths of the keys of both maps, with how many keys have each.
    lengths: BTreeMap<usize, u32>,
    /// How many tokens were held after the last sweep of the expired ones.
    swept_at: usize,
}

/// Tokens held before expired ones are first swept out. Sweeping walks every token, so it runs
/// only once their number has doubled since the last sweep: each token pays for it once.
const SWEEP_FLOOR: usize = 64;

impl std::fmt::Debug for HeldTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Counts only: the tokens are secrets.
        write!(f, "HeldTokens({})", self.lock().tokens.len())
    }
}

/// Count a key of `len` bytes in or out of `lengths`.
fn count_length(lengths: &mut BTreeMap<usize, u32>, len: usize, added: bool) {
    if added {
        *lengths.entry(len).or_insert(0) += 1;
    } else if let Some(n) = lengths.get_mut(&len) {
        *n -= 1;
        if *n == 0 {
            lengths.remove(&len);
        }
    }
}

/// The forms of `token` other than itself; none, and no allocation, for the usual token.
fn escaped_forms(token: &str) -> Vec<Zeroizing<String>> {
    if is_plain(token) {
        return Vec::new();
    }
    all_forms(token)
        .into_iter()
        .map(Zeroizing::new)
        .filter(|f| f.as_str() != token)
        .collect()
}

/// Count a token just added to [`Held::tokens`] in `lengths`, and index its other forms,
/// counting those another held token shares.
fn index(escaped: &mut BTreeMap<Form, u32>, lengths: &mut BTreeMap<usize, u32>, token: &str) {
    count_length(lengths, token.len(), true);
    for f in escaped_forms(token) {
        let len = f.len();
        let n = escaped.entry(Form(f)).or_insert(0);
        *n += 1;
        if *n == 1 {
            count_length(lengths, len, true);
        }
    }
}

/// Undo [`index`] for a token just taken out of [`Held::tokens`].
fn unindex(escaped: &mut BTreeMap<Form, u32>, lengths: &mut BTreeMap<usize, u32>, token: &str) {
    count_length(lengths, token.len(), false);
    for f in escaped_forms(token) {
        let Some(n) = escaped.get_mut(f.as_str()) else {
            continue;
        };
        *n -= 1;
        if *n == 0 {
            escaped.remove(f.as_str());
            count_length(lengths, f.len(), false);
        }
    }
}

impl Held {
    fn sweep(&mut self, now: Instant) {
        let Held {
            tokens,
            escaped,
            lengths,
            ..
        } = self;
        tokens.retain(|token, until| {
            let live = *until > now;
            if !live {
                unindex(escaped, lengths, &token.0);
            }
            live
        });
        self.swept_at = self.tokens.len();
    }

    fn contains(&self, text: &str) -> bool {
        self.tokens.contains_key(text) || self.escaped.contains_key(text)
    }

    /// Whether some form starts with `prefix`.
    fn has_prefix(&self, prefix: &str) -> bool {
        let starts = |keys: Option<&Form>| keys.is_some_and(|f| f.0.starts_with(prefix));
        let from = (
            std::ops::Bound::Included(prefix),
            std::ops::Bound::Unbounded,
        );
        starts(self.tokens.range::<str, _>(from).next().map(|(f, _)| f))
            || starts(self.escaped.range::<str, _>(from).next().map(|(f, _)| f))
    }
}

impl HeldTokens {
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Note a token the daemon now holds, until `until`.
    pub(crate) fn hold(&self, token: &Secret, until: Instant) {
        let token = token.expose();
        // Nothing to cut out (and no answer carries an empty token).
        if token.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut held = self.lock();
        if held.tokens.len() >= 2 * held.swept_at.max(SWEEP_FLOOR) {
            held.sweep(now);
        }
        if let Some(at) = held.tokens.get_mut(token) {
            *at = until;
            return;
        }
        let Held {
            tokens,
            escaped,
            lengths,
            ..
        } = &mut *held;
        tokens.insert(Form(Zeroizing::new(token.to_owned())), until);
        index(escaped, lengths, token);
    }

    /// Forget a token: it was revoked, or the provider says it is no longer active.
    pub(crate) fn release(&self, token: &Secret) {
        let token = token.expose();
        let mut held = self.lock();
        let Held {
            tokens,
            escaped,
            lengths,
            ..
        } = &mut *held;
        if tokens.remove(token).is_some() {
            unindex(escaped, lengths, token);
        }
    }

    /// How many tokens are on the list (expired ones not yet swept included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().tokens.len()
    }

    /// `text` with every form of every held token replaced by [`REDACTED`], and the start of
    /// one that [`super::sanitize`] cut short at its `…`. The text is short (a few hundred
    /// characters), so looking up each of its substrings of each held length is cheap where
    /// searching the text for each of 100,000 tokens is not.
    pub(crate) fn redact(&self, text: &str) -> String {
        let held = self.lock();
        if held.lengths.is_empty() {
            return text.to_owned();
        }
        let mut cuts = held.cuts(text);
        // A token written in any mix of escapes is cut out as well.
        for (layer, from) in decoded_layers(text) {
            cuts.extend(
                held.cuts(&layer)
                    .into_iter()
                    .map(|(i, j)| (from[i], from[j])),
            );
        }
        drop(held);
        cut_out(text, cuts, REDACTED)
    }
}

impl Held {
    /// Where `text` holds a form of a held token, or the start of one cut short at a `…`: one
    /// lookup per place in the text and distinct length.
    fn cuts(&self, text: &str) -> Vec<(usize, usize)> {
        let held = self;
        let starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let mut cuts: Vec<(usize, usize)> = Vec::new();
        for &len in held.lengths.keys().rev() {
            if len > text.len() {
                continue;
            }
            for &i in &starts {
                let j = i + len;
                if j > text.len() {
                    break;
                }
                if text.is_char_boundary(j) && held.contains(&text[i..j]) {
                    cuts.push((i, j));
                }
            }
        }
        // Only a piece followed by `…` can end inside a token.
        let longest = held.lengths.keys().next_back().copied().unwrap_or(0);
        for (at, _) in text.match_indices('…') {
            let cut = starts
                .iter()
                .copied()
                .filter(|&i| i < at && at - i >= MIN_PARTIAL && at - i < longest)
                .find(|&i| held.has_prefix(&text[i..at]));
            if let Some(i) = cut {
                cuts.push((i, at));
            }
        }
        cuts
    }
}

/// `text` with each of the byte ranges `cuts` replaced by `label`; ranges that overlap are
/// cut as one.
fn cut_out(text: &str, mut cuts: Vec<(usize, usize)>, label: &str) -> String {
    if cuts.is_empty() {
        return text.to_owned();
    }
    cuts.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut done = 0;
    for (i, j) in cuts {
        if j <= done {
            continue;
        }
        if i >= done {
            out.push_str(&text[done..i]);
            out.push_str(label);
        }
        done = j;
    }
    out.push_str(&text[done..]);
    out
}

/// How many layers of escapes are taken off a text before secrets are looked for in it: a
/// secret percent-encoded in a JSON string that our error text quotes with Rust's escapes
/// is three layers deep; a fourth costs nothing when there is none.
const DECODE_LAYERS: usize = 4;

/// `text` with one layer of escapes taken off, then another, up to [`DECODE_LAYERS`], for
/// as long as one changes something: each layer with, for each of its byte offsets (and its
/// end), the offset in `text` its character came from. A secret found in a layer is cut from
/// `text` whole, however it was written: a server that echoes it may write each character
/// in an escape of its choosing (`\u002e`, `\u002E`, `%2e`, `\/`, `&#46;`), and whoever
/// reads the text reads it decoded.
fn decoded_layers(text: &str) -> Vec<(Zeroizing<String>, Vec<usize>)> {
    let mut layers: Vec<(Zeroizing<String>, Vec<usize>)> = Vec::new();
    for _ in 0..DECODE_LAYERS {
        let source = layers.last().map_or(text, |(t, _)| t.as_str());
        let Some((layer, from)) = decode_once(source) else {
            break;
        };
        let from = match layers.last() {
            Some((_, back)) => from.into_iter().map(|i| back[i]).collect(),
            None => from,
        };
        layers.push((layer, from));
    }
    layers
}

/// `text` with one layer of escapes taken off, and for each byte offset of the result (and
/// its end) the offset in `text` it came from; `None` if there was no escape to take off.
fn decode_once(text: &str) -> Option<(Zeroizing<String>, Vec<usize>)> {
    if !text.contains(['\\', '%', '&']) {
        return None;
    }
    let mut out = Zeroizing::new(String::with_capacity(text.len()));
    let mut from = Vec::with_capacity(text.len() + 1);
    let mut changed = false;
    let mut i = 0;
    while let Some(c) = text[i..].chars().next() {
        let (decoded, len) = unescape(&text[i..]).unwrap_or((c, c.len_utf8()));
        changed |= len != c.len_utf8();
        from.extend(std::iter::repeat_n(i, decoded.len_utf8()));
        out.push(decoded);
        i += len;
    }
    from.push(text.len());
    changed.then_some((out, from))
}

/// The character the escape at the start of `text` stands for, and the escape's length.
fn unescape(text: &str) -> Option<(char, usize)> {
    let b = text.as_bytes();
    match b.first()? {
        b'\\' => match b.get(1)? {
            b'u' if b.get(2) == Some(&b'{') => {
                // Up to six digits: U+10FFFF is `\u{10ffff}`.
                let end = text[3..].find('}').filter(|&e| e <= 6)?;
                Some((char::from_u32(hex(&text[3..3 + end])?)?, end + 4))
            }
            b'u' => {
                let unit = hex(text.get(2..6)?)?;
                if (0xD800..0xDC00).contains(&unit) {
                    // A UTF-16 surrogate pair, as JSON writes a character beyond U+FFFF.
                    let low = text.get(6..8).filter(|p| *p == "\\u").and(text.get(8..12));
                    let low = hex(low?)?;
                    let code = 0x10000 + ((unit - 0xD800) << 10) + low.checked_sub(0xDC00)?;
                    return Some((char::from_u32(code)?, 12));
                }
                Some((char::from_u32(unit)?, 6))
            }
            b'x' => Some((
                char::from_u32(hex(text.get(2..4)?)?).filter(char::is_ascii)?,
                4,
            )),
            b'n' => Some(('\n', 2)),
            b'r' => Some(('\r', 2)),
            b't' => Some(('\t', 2)),
            b'b' => Some(('\u{8}', 2)),
            b'f' => Some(('\u{c}', 2)),
            b'0' => Some(('\0', 2)),
            &c if matches!(c, b'"' | b'\'' | b'\\' | b'/') => Some((char::from(c), 2)),
            _ => None,
        },
        b'%' => {
            // One character's UTF-8 bytes, each written `%XX`.
            let lead = hex(text.get(1..3)?)?;
            let n = match lead {
                0x00..=0x7F => 1,
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            let mut bytes = Vec::with_capacity(n);
            for k in 0..n {
                let at = 3 * k;
                (text.get(at..=at)? == "%").then_some(())?;
                bytes.push(u8::try_from(hex(text.get(at + 1..at + 3)?)?).ok()?);
            }
            let c = std::str::from_utf8(&bytes).ok()?.chars().next()?;
            Some((c, 3 * n))
        }
        b'&' => {
            // An HTML numeric character reference.
            let rest = text.strip_prefix("&#")?;
            // `x` and up to eight digits: U+10FFFF is `&#1114111;`, `&#x10FFFF;`.
            let end = rest.bytes().take(10).position(|c| c == b';')?;
            let digits = &rest[..end];
            let code = match digits.strip_prefix(['x', 'X']) {
                Some(h) if !h.is_empty() => hex(h)?,
                _ if !digits.is_empty() && digits.bytes().all(|d| d.is_ascii_digit()) => {
                    digits.parse().ok()?
                }
                _ => return None,
            };
            Some((char::from_u32(code)?, end + 3))
        }
        _ => None,
    }
}

/// `digits` as a hexadecimal number, in either case; `None` for anything but hex digits.
fn hex(digits: &str) -> Option<u32> {
    if digits.is_empty() || !digits.bytes().all(|d| d.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::new(s.to_string())
    }

    #[test]
    fn a_plain_token_has_one_form_and_it_is_every_form() {
        for t in ["", "abc", "A-b.c_9", "eyJhbGciOi.eyJzdWIi.c2ln"] {
            assert_eq!(forms(t), all_forms(t), "{t}");
            assert!(forms(t).len() <= 1, "{t}");
        }
        // Each character outside the plain set changes some form, so takes the full path.
        for t in ["a~b", "a b", "a+b", "a/b=", "a\"b", "a\\b", "é"] {
            assert!(all_forms(t).len() > 1, "{t}");
            assert_eq!(forms(t), all_forms(t), "{t}");
        }
    }

    #[test]
    fn a_secret_in_any_mix_of_escapes_is_cut_out() {
        let jwt = "eyJhbGciOi.eyJzdWIi.c2ln-Zx9_Qw";
        let r = Redactor::new([jwt]);
        for written in [
            r"eyJhbGciOi\u002eeyJzdWIi\u002Ec2ln-Zx9_Qw",
            r"\u0065yJhbGciOi\u002EeyJzdWIi.c2ln\u002dZx9\u005fQw",
            r"eyJhbGciOi\u{2e}eyJzdWIi\x2ec2ln-Zx9_Qw",
            "eyJhbGciOi%2EeyJzdWIi%2ec2ln-Zx9_Qw",
            "eyJhbGciOi&#46;eyJzdWIi&#x2E;c2ln-Zx9_Qw",
            // Escaped twice: a JSON escape quoted with Rust's.
            r"eyJhbGciOi\\u002eeyJzdWIi\\u002ec2ln-Zx9_Qw",
            r"eyJhbGciOi%5Cu002eeyJzdWIi.c2ln-Zx9_Qw",
        ] {
            let text = format!("error: bad assertion {written} (sent)");
            assert_eq!(
                r.redact(&text),
                "error: bad assertion [redacted] (sent)",
                "{written}"
            );
        }
        // Cut short at a `…` while escaped.
        assert_eq!(r.redact(r"bad eyJhbGciOi\u002eeyJz…"), "bad [redacted]…");
        let slashed = Redactor::new(["a/b+c/d=="]);
        assert_eq!(
            slashed.redact(r#"{"k":"a\/b+c\/d=="}"#),
            r#"{"k":"[redacted]"}"#
        );
        // Escapes that decode to no secret are left as they are.
        let plain = r"a\u002eb %zz &#;\u{110000} \uD800 end\";
        assert_eq!(r.redact(plain), plain);
    }

    #[test]
    fn a_held_token_in_escapes_is_cut_out() {
        let held = HeldTokens::default();
        let later = Instant::now() + Duration::from_secs(60);
        held.hold(&secret("tok.en-Zx9QwErTy"), later);
        assert_eq!(
            held.redact(r#"{"echo":"tok\u002Een\u002dZx9Qw\u0045rTy", "n": 1}"#),
            r#"{"echo":"[redacted]", "n": 1}"#
        );
        assert_eq!(held.redact("x tok%2een-Zx9…"), "x [redacted]…");
    }

    #[test]
    fn held_tokens_are_cut_out_in_every_form_and_when_cut_short() {
        let held = HeldTokens::default();
        let later = Instant::now() + Duration::from_secs(60);
        held.hold(&secret("tok+en/Zx9QwErTy=="), later);
        held.hold(&secret("another\"one"), later);
        assert_eq!(
            held.redact("raw tok+en/Zx9QwErTy== and form tok%2Ben%2FZx9QwErTy%3D%3D."),
            "raw [redacted] and form [redacted]."
        );
        assert_eq!(
            held.redact(r#"{"echo":"another\"one"}"#),
            r#"{"echo":"[redacted]"}"#
        );
        // Cut short by sanitize: the start of a token before the `…` goes too.
        assert_eq!(held.redact("header tok+en/Zx…"), "header [redacted]…");
        // Fewer than MIN_PARTIAL bytes, or text that merely resembles a token, stays.
        assert_eq!(held.redact("header tok…"), "header tok…");
        assert_eq!(held.redact("tok+en/ and Zx9Qw"), "tok+en/ and Zx9Qw");
        held.release(&secret("tok+en/Zx9QwErTy=="));
        assert_eq!(
            held.redact("raw tok+en/Zx9QwErTy=="),
            "raw tok+en/Zx9QwErTy=="
        );
        assert_eq!(held.redact("another\"one"), "[redacted]");
    }

    #[test]
    fn a_token_that_is_another_tokens_encoded_form_stays_cut_out_until_both_are_let_go() {
        let held = HeldTokens::default();
        let later = Instant::now() + Duration::from_secs(60);
        let spaced = "ab cd/ef";
        let encoded = oauth2::form_encode(spaced);
        assert_ne!(encoded, spaced);
        held.hold(&secret(spaced), later);
        held.hold(&secret(&encoded), later);
        let text = format!("echo {encoded} end");
        assert_eq!(held.redact(&text), "echo [redacted] end");
        held.release(&secret(spaced));
        assert_eq!(
            held.redact(&text),
            "echo [redacted] end",
            "still held itself"
        );
        held.hold(&secret(spaced), later);
        held.release(&secret(&encoded));
        assert_eq!(
            held.redact(&text),
            "echo [redacted] end",
            "still a held form"
        );
        held.release(&secret(spaced));
        assert_eq!(held.redact(&text), text);
        assert_eq!(held.len(), 0);
        assert!(
            held.lock().lengths.is_empty(),
            "every length let go with its key"
        );
    }

    #[test]
    fn expired_tokens_are_swept_once_the_list_has_doubled() {
        let held = HeldTokens::default();
        let past = Instant::now() - Duration::from_secs(1);
        let later = Instant::now() + Duration::from_secs(60);
        for i in 0..SWEEP_FLOOR * 2 {
            held.hold(&secret(&format!("expired-token-{i:04}")), past);
        }
        assert_eq!(held.len(), SWEEP_FLOOR * 2, "no sweep before the floor");
        held.hold(&secret("live-token-0001"), later);
        assert_eq!(held.len(), 1, "the sweep keeps only the live token");
        assert_eq!(
            held.redact("x expired-token-0001 y"),
            "x expired-token-0001 y"
        );
        assert_eq!(held.redact("x live-token-0001 y"), "x [redacted] y");
        assert_eq!(
            held.lock().lengths.len(),
            1,
            "the expired tokens' lengths went with them"
        );
    }

    #[test]
    fn a_hundred_thousand_held_tokens_are_each_found() {
        let held = HeldTokens::default();
        let later = Instant::now() + Duration::from_secs(60);
        for i in 0..100_000 {
            held.hold(&secret(&format!("vf_{i:08}_{}", i * 7919 % 100_003)), later);
        }
        let some = format!("vf_{:08}_{}", 4_242, 4_242 * 7919 % 100_003);
        assert_eq!(
            held.redact(&format!("error: bad {some}, try again")),
            "error: bad [redacted], try again"
        );
        assert_eq!(held.redact("error: no token here"), "error: no token here");
    }

    #[test]
    fn any_mix_of_escape_pieces_is_redacted_without_a_panic() {
        // Pieces of every escape the decoder reads, cut at every point, beside multi-byte
        // characters and the secret's own pieces: what a fuzzer would try against the index
        // arithmetic that maps decoded text back onto the original.
        const PIECES: &[&str] = &[
            "\\u",
            "\\u{",
            "}",
            "00",
            "2e",
            "2E",
            "d83d",
            "\\ude00",
            "%",
            "%2",
            "%2e",
            "%e2%80",
            "\\",
            "\\x",
            "1b",
            "&#",
            "&#x",
            ";",
            "46",
            "é",
            "…",
            "€",
            "\u{10348}",
            "a",
            "b.c",
            "s3cr",
            "et",
            ".",
            "\\/",
            "\\\"",
            "\"",
            "{",
            "\n",
        ];
        let secret = "s3cr.et";
        let redactor = Redactor::new([secret]);
        let held = HeldTokens::default();
        let token = Secret::new("tok.en");
        held.hold(&token, Instant::now() + std::time::Duration::from_secs(60));
        let mut rng = fastrand::Rng::with_seed(26);
        for _ in 0..20_000 {
            let n = rng.usize(1..12);
            let text: String = (0..n).map(|_| PIECES[rng.usize(..PIECES.len())]).collect();
            let out = redactor.redact(&text);
            let _ = held.redact(&out);
            let _ = held.redact(&text);
        }
    }
}
