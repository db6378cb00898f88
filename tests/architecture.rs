//! The code's layout keeps to docs/architecture.md: every top-level module of the library
//! sits in exactly one of the layers that page lists, every `crate::` import goes down a
//! layer or sideways within one, the imports between top-level modules form no circle, no
//! source file holds more than [`MAX_CODE_LINES`] lines of code before its tests, and
//! `src/main.rs` stays a dispatcher of at most [`MAX_MAIN_LINES`] lines.
//!
//! The source is read as text: an import is any `crate::NAME` outside a comment, in the part
//! of a file before its `#[cfg(test)] mod tests`, so a path spelt out inline counts as much
//! as a `use`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Lines of code (not blank, not a comment) a source file may hold before its tests. Past
/// this a file holds more than one idea, and a reader cannot keep it in mind at once.
const MAX_CODE_LINES: usize = 600;

/// Lines (all of them) `src/main.rs` may hold: parse the arguments, dispatch to `src/cli/`,
/// print the error chain, map it to an exit code. More means a subcommand crept back in.
const MAX_MAIN_LINES: usize = 300;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A test file: `tests.rs` or anything under a `tests/` folder of src.
fn is_test_file(rel: &Path) -> bool {
    rel.file_name().is_some_and(|n| n == "tests.rs")
        || rel.components().any(|c| c.as_os_str() == "tests")
}

/// The lines of `text` before its test module: `#[cfg(test)]` followed (after blank lines
/// or other attributes) by `mod` or `pub(crate) mod`. A `#[cfg(test)]` helper elsewhere is counted as code.
fn before_tests(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() == "#[cfg(test)]" {
            let next = lines[i + 1..]
                .iter()
                .map(|l| l.trim())
                .find(|l| !l.is_empty() && !l.starts_with("#["));
            let is_mod = |l: &str| {
                let l = l
                    .strip_prefix("pub")
                    .map_or(l, |rest| rest.trim_start_matches(|c| c != ' ').trim_start());
                l.starts_with("mod ")
            };
            if next.is_some_and(is_mod) {
                return lines[..i].to_vec();
            }
        }
    }
    lines
}

/// Lines of code: neither blank nor a comment.
fn code_lines(lines: &[&str]) -> usize {
    lines
        .iter()
        .filter(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with("//")
        })
        .count()
}

/// The line without a trailing `// comment`, unless the `//` is inside a string (a URL).
fn strip_comment(line: &str) -> &str {
    let mut in_str = false;
    let mut prev = '\0';
    for (i, c) in line.char_indices() {
        match c {
            '"' if prev != '\\' => in_str = !in_str,
            '/' if !in_str && prev == '/' => return &line[..i - 1],
            _ => {}
        }
        prev = c;
    }
    line
}

/// The top-level modules named after `crate::` in `code`, including each name in a
/// `crate::{a, b::c}` group.
fn crate_imports(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        // `tokenkeeper_crate::` or `$crate::` are not this crate's paths.
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Only the first segment of each top-level item of the group matters; nested
            // groups (`a::{b, c}`) are inside an item and skipped by the depth count.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        let name = ident(&group[i..]);
                        if !name.is_empty() {
                            out.insert(name);
                        }
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The layers docs/architecture.md declares: rows `| L<n> | `a`, `b` | ... |`, lowest first.
fn declared_layers() -> BTreeMap<String, u32> {
    let text = fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let mut layers = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(level) = cells
            .get(1)
            .and_then(|c| c.strip_prefix('L'))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        for module in cells[2].split(',') {
            let module = module.trim().trim_matches('`');
            assert!(
                layers.insert(module.to_string(), level).is_none(),
                "docs/architecture.md lists `{module}` in two layers"
            );
        }
    }
    assert!(
        !layers.is_empty(),
        "docs/architecture.md has no layer table"
    );
    layers
}

/// Each library file, as (path relative to src, its top-level module, its code before tests).
fn library_files() -> Vec<(PathBuf, String, String)> {
    let src = root().join("src");
    let mut out = Vec::new();
    for path in rust_files(&src) {
        let rel = path.strip_prefix(&src).unwrap().to_path_buf();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        // The binary (main.rs and its cli/) is above every layer and imports the library by
        // its name, not `crate::`.
        if first == "main.rs" || first == "cli" || first == "lib.rs" || is_test_file(&rel) {
            continue;
        }
        let module = first.trim_end_matches(".rs").to_string();
        let text = fs::read_to_string(&path).unwrap();
        let code: Vec<&str> = before_tests(&text)
            .into_iter()
            .map(strip_comment)
            .filter(|l| !l.trim().is_empty())
            .collect();
        out.push((rel, module, code.join("\n")));
    }
    out
}

/// Top-level module → the other top-level modules it imports (crate-root items such as
/// `error_chain` are not modules and sit below everything).
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let files = library_files();
    let modules: BTreeSet<String> = files.iter().map(|(_, m, _)| m.clone()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, module, code) in &files {
        let deps = graph.entry(module.clone()).or_default();
        for dep in crate_imports(code) {
            if dep != *module && modules.contains(&dep) {
                deps.insert(dep);
            }
        }
    }
    graph
}

/// A circle in `graph`, as the modules along it, if there is one.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let start = path.iter().position(|p| p == next).unwrap();
                    let mut circle = path[start..].to_vec();
                    circle.push(next.clone());
                    return Some(circle);
                }
                Mark::New => {
                    if let Some(c) = visit(next, graph, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New
            && let Some(c) = visit(node, graph, &mut marks, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_import_circle_between_top_level_modules() {
    let graph = import_graph();
    assert!(graph.len() > 10, "found only {} modules", graph.len());
    if let Some(circle) = find_circle(&graph) {
        panic!("the imports form a circle: {}", circle.join(" -> "));
    }
}

#[test]
fn every_import_goes_down_a_layer_or_sideways() {
    let layers = declared_layers();
    let graph = import_graph();
    let mut problems = Vec::new();
    for module in graph.keys() {
        if !layers.contains_key(module) {
            problems.push(format!(
                "src/{module} is in no layer of docs/architecture.md"
            ));
        }
    }
    for module in layers.keys() {
        if !graph.contains_key(module) {
            problems.push(format!(
                "docs/architecture.md lists `{module}`, which src/ does not have"
            ));
        }
    }
    for (module, deps) in &graph {
        let Some(&level) = layers.get(module) else {
            continue;
        };
        for dep in deps {
            if let Some(&dep_level) = layers.get(dep)
                && dep_level > level
            {
                problems.push(format!(
                    "{module} (L{level}) imports {dep} (L{dep_level}), a layer above it"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Imports the layers allow but the design does not: (module, the module it must not import,
/// why). The token sink is for token files; the daemon's own files (the journal, the status
/// file, the metrics textfile, a provider's state file) go through the file primitives of
/// `fsio`, so that a provider never depends on how tokens are written out.
const FORBIDDEN_IMPORTS: &[(&str, &str, &str)] = &[
    (
        "provider",
        "sink",
        "a provider hands its tokens to the set task, never to a token file",
    ),
    (
        "journal",
        "sink",
        "the journal writes through fsio, not the token sink",
    ),
    (
        "status",
        "sink",
        "the status file is written through fsio, not the token sink",
    ),
    (
        "metrics",
        "sink",
        "the textfile is written through fsio, not the token sink",
    ),
];

#[test]
fn providers_and_the_daemons_own_files_do_not_import_the_token_sink() {
    let graph = import_graph();
    let mut problems = Vec::new();
    for (module, banned, why) in FORBIDDEN_IMPORTS {
        let deps = graph.get(*module);
        assert!(
            deps.is_some(),
            "src/{module} is gone: update FORBIDDEN_IMPORTS"
        );
        if deps.is_some_and(|d| d.contains(*banned)) {
            problems.push(format!("{module} imports {banned}: {why}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_source_file_over_the_limit_and_main_only_dispatches() {
    let src = root().join("src");
    let mut problems = Vec::new();
    for path in rust_files(&src) {
        let rel = path.strip_prefix(&src).unwrap();
        if is_test_file(rel) {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        let code = code_lines(&before_tests(&text));
        if code > MAX_CODE_LINES {
            problems.push(format!(
                "src/{} has {code} lines of code before its tests (at most {MAX_CODE_LINES})",
                rel.display()
            ));
        }
    }
    let main = fs::read_to_string(src.join("main.rs")).unwrap();
    let lines = main.lines().count();
    if lines > MAX_MAIN_LINES {
        problems.push(format!(
            "src/main.rs has {lines} lines (at most {MAX_MAIN_LINES})"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The checks themselves see what they must: a circle, a group import, a commented-out path
/// and a test module.
#[test]
fn the_checks_see_circles_groups_comments_and_tests() {
    let imports =
        crate_imports("use crate::{alpha::A, beta::{B, C}, gamma};\nlet x = crate::delta::f();\n");
    let want: BTreeSet<String> = ["alpha", "beta", "delta", "gamma"].map(String::from).into();
    assert_eq!(imports, want);
    assert_eq!(
        strip_comment("let u = \"http://x\"; // crate::y"),
        "let u = \"http://x\"; "
    );
    let text = "fn a() {}\n\n#[cfg(test)]\nfn helper() {}\n#[cfg(test)]\nmod tests {\n    use crate::z;\n}\n";
    assert_eq!(before_tests(text).len(), 4);
    assert_eq!(code_lines(&before_tests(text)), 3);
    let text = "fn a() {}\n#[cfg(test)]\npub(crate) mod testutil {}\n";
    assert_eq!(before_tests(text).len(), 1);
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    graph.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    graph.insert("c".to_string(), BTreeSet::new());
    assert_eq!(find_circle(&graph), None);
    graph.get_mut("c").unwrap().insert("a".to_string());
    assert_eq!(
        find_circle(&graph).map(|c| c.join(" -> ")),
        Some("a -> b -> c -> a".to_string())
    );
}

/// The tree table of docs/architecture.md: `| `src/X/` | files |` rows, as folder → the
/// `.rs` names and `sub/` folders its second cell mentions in backticks.
fn declared_tree() -> BTreeMap<String, BTreeSet<String>> {
    let text = fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let mut tree = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(folder) = cells
            .get(1)
            .and_then(|c| c.strip_prefix("`src/"))
            .and_then(|c| c.strip_suffix("/`"))
        else {
            continue;
        };
        let names = cells[2]
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|n| n.ends_with(".rs") || (n.ends_with('/') && !n.contains(' ')))
            .map(String::from)
            .collect();
        tree.insert(folder.to_string(), names);
    }
    tree
}

#[test]
fn the_tree_table_names_every_folder_and_file() {
    let tree = declared_tree();
    assert!(tree.len() > 5, "docs/architecture.md has no tree table");
    let src = root().join("src");
    let mut problems = Vec::new();
    for (folder, names) in &tree {
        let dir = src.join(folder);
        if !dir.is_dir() {
            problems.push(format!(
                "docs/architecture.md lists src/{folder}/, which is not a folder"
            ));
            continue;
        }
        // Every file in the folder, nested folders included, by name, and its subfolders.
        let mut have = BTreeSet::new();
        for path in rust_files(&dir) {
            let rel = path.strip_prefix(&dir).unwrap();
            if is_test_file(rel) {
                continue;
            }
            have.insert(rel.file_name().unwrap().to_string_lossy().into_owned());
            let mut parent = rel.parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                have.insert(format!("{}/", p.file_name().unwrap().to_string_lossy()));
                parent = p.parent();
            }
        }
        for name in have.difference(names) {
            problems.push(format!(
                "src/{folder}/ has {name}, which docs/architecture.md does not name"
            ));
        }
        for name in names.difference(&have) {
            problems.push(format!(
                "docs/architecture.md names {name} in src/{folder}/, which has none"
            ));
        }
    }
    // Every top-level folder of src/ has a row.
    for entry in fs::read_dir(&src).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && !tree.contains_key(&name) {
            problems.push(format!(
                "src/{name}/ has no row in docs/architecture.md's tree"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
