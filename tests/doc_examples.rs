//! What the docs show, the binary accepts: every YAML config in README.md and docs/ is parsed
//! by the config's own checks, a `providers:` fragment with a scope set added for each of its
//! providers, so an example that drifts from the binary (a renamed key, a value the checks
//! now refuse) fails here rather than in an operator's hands. And the claims the reference
//! makes in its comments, where a test can make them.

use std::fs;
use std::path::{Path, PathBuf};

use tokenkeeper::config::{self, Loaded};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fenced block: its language, the 1-based line its body starts on, its body.
struct Block {
    lang: String,
    line: usize,
    body: String,
}

fn blocks(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start();
        match &mut current {
            None if fence.starts_with("```") => {
                current = Some(Block {
                    lang: fence.trim_start_matches('`').trim().to_string(),
                    line: i + 2,
                    body: String::new(),
                });
            }
            Some(_) if fence.starts_with("```") => blocks.extend(current.take()),
            Some(b) => {
                b.body.push_str(line);
                b.body.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// Each ```yaml block of `text`, with the 1-based line it starts on.
fn yaml_blocks(text: &str) -> Vec<(usize, String)> {
    blocks(text)
        .into_iter()
        .filter(|b| b.lang == "yaml" || b.lang == "yml")
        .map(|b| (b.line, b.body))
        .collect()
}

/// A `providers:` block defining each provider `block`'s sets name and it does not define:
/// the docs show scope sets on their own, beside a provider shown elsewhere.
fn providers_for(block: &str) -> String {
    let mut names: Vec<&str> = block
        .lines()
        .filter_map(|l| l.trim().strip_prefix("provider: "))
        .map(|n| n.split_whitespace().next().unwrap_or(n))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut text = String::from("providers:\n");
    for name in names {
        text.push_str(&format!(
            "  {name}:\n    kind: oauth2\n    token_url: https://auth.example.com/token\n    client_id: doc-example\n    client_secret: {{ env: TK_DOC_EXAMPLE_SECRET }}\n"
        ));
    }
    text
}

/// A whole config for `block`: itself when it has scope sets; a `providers:` fragment with
/// one set per provider; `None` for what is not a config (alert rules, a lone key).
fn as_config(block: &str) -> Option<String> {
    if block.contains("\nscope_sets:") || block.starts_with("scope_sets:") {
        if block.starts_with("providers:") || block.contains("\nproviders:") {
            return Some(block.to_string());
        }
        return Some(format!("{}{block}", providers_for(block)));
    }
    if !block.starts_with("providers:") {
        return None;
    }
    let names: Vec<&str> = block
        .lines()
        .skip(1)
        .filter(|l| l.starts_with("  ") && !l.starts_with("   ") && l.trim_end().ends_with(':'))
        .filter_map(|l| l.trim().strip_suffix(':'))
        .collect();
    let mut text = block.to_string();
    text.push_str("scope_sets:\n");
    for (i, name) in names.iter().enumerate() {
        text.push_str(&format!(
            "  - name: doc-example-{i}\n    provider: {name}\n    scopes: [api]\n    file: {{ path: /run/tokenkeeper/doc-example-{i}.token }}\n"
        ));
    }
    Some(text)
}

#[test]
fn every_config_the_docs_show_parses() {
    let root = root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    // A template the docs show in the block after the config, written where the config
    // names it; the examples' groups become one this machine has.
    let templates = tempfile::tempdir().unwrap();
    let group = nix::unistd::Group::from_gid(nix::unistd::getegid())
        .unwrap()
        .unwrap()
        .name;
    let mut parsed = 0;
    let mut failures = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        let all = blocks(&text);
        for (i, b) in all.iter().enumerate() {
            if b.lang != "yaml" && b.lang != "yml" {
                continue;
            }
            let Some(mut config) = as_config(&b.body) else {
                continue;
            };
            let line = b.line;
            for name in config
                .lines()
                .filter_map(|l| l.split("/etc/tokenkeeper/templates/").nth(1))
                .filter_map(|rest| rest.split_whitespace().next())
                .map(str::to_string)
                .collect::<Vec<_>>()
            {
                let shipped = root.join("config/templates").join(&name);
                let body = match (shipped.is_file(), all.get(i + 1)) {
                    (true, _) => fs::read_to_string(&shipped).unwrap(),
                    (false, Some(next)) if next.lang != "yaml" => next.body.clone(),
                    _ => panic!("{}: no template {name} to check", file.display()),
                };
                fs::write(templates.path().join(&name), body).unwrap();
            }
            config = config
                .replace(
                    "/etc/tokenkeeper/templates/",
                    &format!("{}/", templates.path().display()),
                )
                .replace("group: shop", &format!("group: {group}"));
            let at = format!("{}:{line}", file.strip_prefix(&root).unwrap().display());
            match config::parse(&config, Path::new(&at)) {
                Ok(_) => parsed += 1,
                Err(e) => failures.push(format!("{at}: {e:?}")),
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // The reference, the batch and store examples and the provider fragments: a parser that
    // found none would pass anything.
    assert!(parsed >= 9, "only {parsed} configs found in the docs");
}

/// docs/configuration.md: `mode: "0640"` is the reference's spelling; an unquoted 0640 reads
/// the same (the YAML parser keeps the leading zero as text), and a bare 640 is refused.
#[test]
fn the_references_mode_comment_holds() {
    let text = fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    let reference = yaml_blocks(&text)
        .into_iter()
        .map(|(_, b)| b)
        .find(|b| b.contains("mode: \"0640\"                   # octal"))
        .expect("the reference block");
    let comment = reference
        .lines()
        .find(|l| l.contains("mode: \"0640\"") && l.contains('#'))
        .unwrap()
        .split('#')
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    assert!(
        comment.contains("an unquoted 0640 reads the same"),
        "{comment}"
    );
    assert!(comment.contains("640 or 0o640 is refused"), "{comment}");
    // The example's group is one this machine may not have; the mode is what is tried.
    let reference: String = reference
        .lines()
        .filter(|l| !l.trim_start().starts_with("group: shop"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mode_of = |spelled: &str| {
        let text = reference.replace("mode: \"0640\"", &format!("mode: {spelled}"));
        config::parse(&text, Path::new("configuration.md")).map(|Loaded { config, .. }| {
            let set = config
                .sets
                .iter()
                .find(|s| s.name == "orders-sync")
                .unwrap();
            set.file.as_ref().unwrap().mode
        })
    };
    let quoted = mode_of("\"0640\"").unwrap();
    assert_eq!(mode_of("0640").unwrap(), quoted);
    assert!(mode_of("640").is_err());
    assert!(mode_of("0o640").is_err());
}

/// docs/operator.md's command table: every subcommand it lists exists, and every flag it
/// shows for one is a flag the binary's `--help` for it names, so a renamed or dropped flag
/// fails here.
#[test]
fn every_command_and_flag_in_the_operator_table_exists() {
    let text = fs::read_to_string(root().join("docs/operator.md")).unwrap();
    let mut checked = 0;
    for row in text.lines().filter(|l| l.starts_with("| `tokenkeeper ")) {
        let usage = row
            .trim_start_matches("| `")
            .split('`')
            .next()
            .unwrap()
            .to_string();
        let words: Vec<&str> = usage.split_whitespace().collect();
        let sub = words[1];
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tokenkeeper"));
        if !sub.starts_with('-') {
            cmd.arg(sub);
        }
        let help = cmd.arg("--help").output().unwrap();
        assert!(help.status.success(), "{usage}: {help:?}");
        let help = String::from_utf8_lossy(&help.stdout).into_owned();
        for flag in usage
            .split(|c: char| c.is_whitespace() || c == '[' || c == ']')
            .filter(|w| w.starts_with('-') && *w != "--")
        {
            assert!(
                help.contains(flag),
                "docs/operator.md shows `{flag}` for `{usage}`, which --help does not name:\n{help}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} flags found");
}
