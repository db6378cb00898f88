//! The YAML text itself, beside the parser: the nesting bound checked before it runs, and
//! serde's messages without the marks [`Problem`](super::Problem) carries as line and column.

/// The first line (1-based) at which `text` nests YAML collections deeper than `max`, by a
/// single linear pass that errs on the deep side: each open indentation level, each compact
/// `- `, `? ` or `: ` opening a line, and each open `[` or `{` (outside quotes and
/// comments) counts as a level. Block scalars (`|`, `>`) are skipped, since their lines are
/// text.
pub(super) fn nesting_exceeds(text: &str, max: usize) -> Option<usize> {
    let mut flow = 0usize;
    let mut indents: Vec<usize> = Vec::new();
    let mut block_scalar: Option<usize> = None;
    // A quoted scalar may span lines.
    let mut quote: Option<u8> = None;
    for (n, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let rest = &line[indent..];
        if quote.is_none() && (rest.is_empty() || rest.starts_with('#')) {
            continue;
        }
        if let Some(parent) = block_scalar {
            if indent > parent {
                continue;
            }
            block_scalar = None;
        }
        let mut compact = 0;
        let mut body = rest;
        if flow == 0 && quote.is_none() {
            while indents.last().is_some_and(|&top| top >= indent) {
                indents.pop();
            }
            indents.push(indent);
            while let Some(after) = ["- ", "? ", ": "]
                .iter()
                .find_map(|p| body.strip_prefix(p))
                .or_else(|| ["-", "?", ":"].contains(&body).then_some(""))
            {
                compact += 1;
                body = after.trim_start_matches(' ');
            }
        }
        if indents.len() + compact + flow > max {
            return Some(n + 1);
        }
        let bytes = body.as_bytes();
        let mut prev = b' ';
        let mut i = 0;
        let mut last_significant = 0usize;
        while i < bytes.len() {
            let b = bytes[i];
            match quote {
                Some(b'"') if b == b'\\' => i += 1,
                Some(q) if b == q => quote = None,
                Some(_) => {}
                None => match b {
                    b'#' if prev == b' ' || prev == b'\t' => break,
                    b'"' | b'\'' if matches!(prev, b' ' | b'\t' | b'[' | b'{' | b',' | b':') => {
                        quote = Some(b)
                    }
                    b'[' | b'{' => {
                        flow += 1;
                        if indents.len() + compact + flow > max {
                            return Some(n + 1);
                        }
                    }
                    b']' | b'}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
            if !matches!(b, b' ' | b'\t') {
                last_significant = i + 1;
            }
            prev = b;
            i += 1;
        }
        if flow == 0 && quote.is_none() {
            // `|`, `>`, `|-`, `>+2`…, standing alone as the value.
            let mut end = &bytes[..last_significant];
            while let [head @ .., b'0'..=b'9' | b'-' | b'+'] = end {
                end = head;
            }
            if let [head @ .., b'|' | b'>'] = end
                && matches!(head.last(), None | Some(b' ' | b'\t'))
            {
                block_scalar = Some(indent);
            }
        }
    }
    None
}

/// " at line 3 column 1" and " at position 7" are carried by `Problem::line`/`column`.
pub(super) fn strip_marks(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(" at ") {
        let after = &rest[start + 4..];
        let skip = mark_len(after);
        out.push_str(&rest[..start]);
        if skip == 0 {
            out.push_str(" at ");
        }
        rest = &after[skip..];
    }
    out.push_str(rest);
    out
}

/// Length of a leading "line N column M" or "position N" in `text`, else 0.
fn mark_len(text: &str) -> usize {
    fn number(text: &str) -> usize {
        text.bytes().take_while(u8::is_ascii_digit).count()
    }
    if let Some(rest) = text.strip_prefix("line ") {
        let n = number(rest);
        if n > 0
            && let Some(col) = rest[n..].strip_prefix(" column ")
        {
            let m = number(col);
            if m > 0 {
                return "line ".len() + n + " column ".len() + m;
            }
        }
    } else if let Some(rest) = text.strip_prefix("position ") {
        let n = number(rest);
        if n > 0 {
            return "position ".len() + n;
        }
    }
    0
}
