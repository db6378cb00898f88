//! Where things are in the config's text: one pass over the YAML parser's events, giving the
//! line and column of the nodes that problems name, and every key written twice in one
//! mapping. serde_yaml deserializes the config but gives no positions for what is checked
//! after; searching the text once per problem made `check` quadratic (28 s for 8,000 sets
//! with one mistake each), and could not tell apart the same key in many sets.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser};

/// A position: line and column, both 1-based.
pub(super) type Pos = (usize, usize);

/// What one pass found for the paths and keys asked about.
#[derive(Debug, Default)]
pub(super) struct Found {
    /// Each asked-for path (`scope_sets[3].file.mode`) with the position of its key (a
    /// mapping entry) or of its start (a sequence item).
    pub(super) at: HashMap<String, Pos>,
    /// Each asked-for key name, how often it is written as a key anywhere, and where first:
    /// for problems that name a key rather than a path.
    pub(super) keys: HashMap<String, (usize, Pos)>,
    /// Keys written twice in one mapping: the path, then where first and where again.
    pub(super) duplicates: Vec<(String, Pos, Pos)>,
}

/// One open mapping or sequence, and the path of the node it is.
enum Frame {
    Map {
        path: String,
        /// The key whose value comes next, or `None` while a key is expected.
        key: Option<String>,
        /// Every key of this mapping so far, with where it was written.
        seen: HashMap<String, Pos>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// One pass over `text`, collecting the positions of `paths` and `keys`, and every duplicate
/// key. A document the parser cannot read yields what was found before the error: serde_yaml
/// reports that error itself, with its own position.
pub(super) fn locate<'a>(
    text: &str,
    paths: impl IntoIterator<Item = &'a str>,
    keys: impl IntoIterator<Item = &'a str>,
) -> Found {
    let wanted: std::collections::HashSet<&str> = paths.into_iter().collect();
    let mut found = Found {
        keys: keys
            .into_iter()
            .map(|k| (k.to_string(), (0, (0, 0))))
            .collect(),
        ..Found::default()
    };
    let mut stack: Vec<Frame> = Vec::new();
    for event in Parser::new_from_str(text) {
        let Ok((event, span)) = event else { break };
        let pos = (span.start.line(), span.start.col() + 1);
        let ends = matches!(event, Event::MappingEnd | Event::SequenceEnd);
        // The path of the node this event starts, if it starts one.
        let node = match stack.last_mut() {
            _ if ends => None,
            None => Some(String::new()),
            // A sequence item is located by its start.
            Some(Frame::Seq { path, next }) => {
                let item = format!("{path}[{next}]");
                *next += 1;
                if wanted.contains(item.as_str()) {
                    found.at.entry(item.clone()).or_insert(pos);
                }
                Some(item)
            }
            // A mapping's value is located by its key, recorded when the key came.
            Some(Frame::Map { path, key, .. }) if key.is_some() => {
                key.take().map(|k| child(path, &k))
            }
            Some(Frame::Map { path, key, seen }) => {
                let name = match &event {
                    Event::Scalar(value, ..) => value.to_string(),
                    // A mapping or a sequence as a key: no config key is one (serde_yaml
                    // refuses it), and nothing inside it is a path of ours.
                    _ => String::from("?"),
                };
                let at = child(path, &name);
                match seen.get(&name) {
                    Some(first) => found.duplicates.push((at.clone(), *first, pos)),
                    None => {
                        seen.insert(name.clone(), pos);
                    }
                }
                if let Some((count, first)) = found.keys.get_mut(&name) {
                    if *count == 0 {
                        *first = pos;
                    }
                    *count += 1;
                }
                if wanted.contains(at.as_str()) {
                    found.at.entry(at).or_insert(pos);
                }
                *key = Some(name);
                Some(String::from("?"))
            }
        };
        match event {
            Event::MappingStart(..) => stack.push(Frame::Map {
                path: node.unwrap_or_default(),
                key: None,
                seen: HashMap::new(),
            }),
            Event::SequenceStart(..) => stack.push(Frame::Seq {
                path: node.unwrap_or_default(),
                next: 0,
            }),
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            _ => {}
        }
    }
    found.keys.retain(|_, (count, _)| *count > 0);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_keys_are_located_in_block_and_flow_style_but_not_in_comments_or_values() {
        let text =
            "a:\n  - mode: x # mode: y\n    b: { mode: 1, c: mode }\n  - 'mode': 3\nmodes: 2\n";
        let found = locate(
            text,
            [
                "a[0].mode",
                "a[0].b.mode",
                "a[0].b.c",
                "a[1]",
                "a[1].mode",
                "nope",
            ],
            ["mode", "c", "modes"],
        );
        assert_eq!(found.at["a[0].mode"], (2, 5));
        assert_eq!(found.at["a[0].b.mode"], (3, 10));
        assert_eq!(found.at["a[0].b.c"], (3, 19));
        assert_eq!(found.at["a[1]"], (4, 5));
        assert_eq!(found.at["a[1].mode"], (4, 5));
        assert!(!found.at.contains_key("nope"));
        assert_eq!(found.keys["mode"], (3, (2, 5)));
        assert_eq!(found.keys["c"], (1, (3, 19)));
        assert_eq!(found.keys["modes"], (1, (5, 1)));
        assert!(found.duplicates.is_empty());
    }

    #[test]
    fn every_key_written_twice_in_one_mapping_is_found_with_both_places() {
        let text = "providers:\n  vf: 1\n  sq: 2\n  vf: 3\nsets:\n  - { mode: a, mode: b }\n  - { mode: c }\n";
        let found = locate(text, [], []);
        assert_eq!(
            found.duplicates,
            vec![
                ("providers.vf".to_string(), (2, 3), (4, 3)),
                ("sets[0].mode".to_string(), (6, 7), (6, 16)),
            ]
        );
    }

    #[test]
    fn a_long_line_is_read_once() {
        // A 4 MiB value: a scan per problem over it made `check` quadratic.
        let long = format!("a: {}\nb: {{ d: 1 }}\n", "9".repeat(1 << 22));
        let found = locate(&long, ["b.d"], ["a"]);
        assert_eq!(found.at["b.d"], (2, 6));
        assert_eq!(found.keys["a"], (1, (1, 1)));
    }
}
