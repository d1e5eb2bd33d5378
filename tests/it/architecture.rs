//! The module graph: every `crate::` path in `src/` follows an edge that
//! docs/architecture.md allows (its `imports` block), so data flows source →
//! pipeline → sink and no module reaches back against it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules whose sub-modules are nodes of their own (one source or sink kind each).
const KINDS: [&str; 5] = [
    "source::binlog",
    "source::kafka",
    "sink::elasticsearch",
    "sink::kafka",
    "sink::sqlite",
];

/// Allowed edges: node → the nodes it may name.
type Rules = BTreeMap<String, BTreeSet<String>>;

/// Parses the fenced `imports` block: `node -> other other ...` per line.
fn rules(doc: &str) -> Rules {
    let block = doc
        .split("```imports\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/architecture.md has an ```imports block");
    block
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (node, targets) = l
                .split_once("->")
                .unwrap_or_else(|| panic!("{l:?} is not `node -> targets`"));
            (
                node.trim().to_owned(),
                targets.split_whitespace().map(str::to_owned).collect(),
            )
        })
        .collect()
}

/// The node a module path (`sink::kafka::KafkaSink`, `clock::now_millis`) belongs to.
fn node(path: &str) -> String {
    let mut parts = path.split("::");
    let first = parts.next().unwrap_or_default();
    if let Some(second) = parts.next() {
        let two = format!("{first}::{second}");
        if KINDS.contains(&two.as_str()) {
            return two;
        }
    }
    first.to_owned()
}

/// The node of a source file: `src/sink/sqlite/query.rs` is `sink::sqlite`.
fn file_node(file: &Path) -> String {
    let rel = file.strip_prefix("src").unwrap_or(file);
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    node(&parts.join("::"))
}

/// Every `crate::` path in `text` (comments skipped; `crate::{a, b::c}` expanded).
fn crate_paths(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                found.extend(inner.split(',').map(|p| p.trim().to_owned()));
                continue;
            }
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            found.push(rest[..end].to_owned());
        }
    }
    found.retain(|p| !p.is_empty());
    found
}

/// The edges of `files` that `rules` does not allow, as readable lines.
fn violations(rules: &Rules, files: &[(PathBuf, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (file, text) in files {
        let from = file_node(file);
        let Some(allowed) = rules.get(&from) else {
            out.push(format!(
                "{}: module `{from}` is not in the imports block",
                file.display()
            ));
            continue;
        };
        for path in crate_paths(text) {
            let to = node(&path);
            let related = to == from || to.starts_with(&format!("{from}::"));
            if !related && !allowed.contains(&to) {
                out.push(format!(
                    "{}: `{from}` may not use `crate::{path}` (`{to}`)",
                    file.display()
                ));
            }
        }
    }
    out
}

fn sources(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            let rel = path
                .strip_prefix(env!("CARGO_MANIFEST_DIR"))
                .unwrap()
                .to_owned();
            out.push((rel, text));
        }
    }
}

fn documented_rules() -> Rules {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    rules(&std::fs::read_to_string(root.join("docs/architecture.md")).unwrap())
}

#[test]
fn every_import_follows_an_edge_the_architecture_allows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    // The binaries' roots are not modules of the library.
    files.retain(|(f, _)| f != Path::new("src/main.rs") && f != Path::new("src/lib.rs"));
    files.retain(|(f, _)| !f.starts_with("src/bin"));
    assert!(files.len() > 30, "found only {} files", files.len());
    let found = violations(&documented_rules(), &files);
    assert!(
        found.is_empty(),
        "imports against the flow (fix the import, or change the graph in docs/architecture.md):\n{}",
        found.join("\n")
    );
}

#[test]
fn a_backward_import_is_caught() {
    let rules = documented_rules();
    let seeded = |file: &str, text: &str| violations(&rules, &[(PathBuf::from(file), text.into())]);
    // A sink reaching into a source, a source into the pipeline, one sink
    // kind into another, and a grouped import hiding one.
    assert_eq!(
        seeded(
            "src/sink/kafka.rs",
            "use crate::source::kafka::KafkaSource;"
        )
        .len(),
        1
    );
    assert_eq!(
        seeded(
            "src/source/binlog/mod.rs",
            "use crate::pipeline::batch::Halt;"
        )
        .len(),
        1
    );
    assert_eq!(
        seeded(
            "src/sink/sqlite/mod.rs",
            "let x = crate::sink::elasticsearch::bulk::encode;"
        )
        .len(),
        1
    );
    assert_eq!(
        seeded("src/source/kafka.rs", "use crate::{event::Op, sink::Sink};").len(),
        1
    );
    // What the flow allows passes, comments are not code.
    assert!(seeded(
        "src/pipeline/batch.rs",
        "use crate::source::envelope::Envelope;\nuse crate::sink::Sink; // crate::app"
    )
    .is_empty());
}
