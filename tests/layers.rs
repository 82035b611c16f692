//! The crate's layering, as `src/lib.rs` draws it: a top-level module imports only from the
//! modules below it, so there is no import cycle between them.

use std::collections::BTreeSet;
use std::path::Path;

/// Top to bottom, as the crate map in `src/lib.rs` lists them.
const LAYERS: &[&str] = &[
    "node",
    "fuzzing",
    "http",
    "cli",
    "actors",
    "feed",
    "cache",
    "source",
    "peer",
    "telemetry",
    "raft",
    "ring",
    "error",
    "group",
    "clock",
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file's code (its unit tests left out) names as `crate::X`.
fn imports(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
    code.match_indices("crate::")
        .map(|(i, _)| {
            code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|m| !m.is_empty() && m.chars().next().unwrap().is_ascii_lowercase())
        .collect()
}

#[test]
fn top_level_modules_import_only_from_the_layers_below() {
    let src = Path::new("src");
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut upward = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap()
            .trim_end_matches(".rs");
        if top == "lib" || top == "main" {
            continue;
        }
        let here = LAYERS
            .iter()
            .position(|l| *l == top)
            .unwrap_or_else(|| panic!("{top} (src/{}) is not in LAYERS", rel.display()));
        for m in imports(&std::fs::read_to_string(file).unwrap()) {
            if m == top {
                continue;
            }
            let there = LAYERS
                .iter()
                .position(|l| *l == m)
                .unwrap_or_else(|| panic!("src/{} names crate::{m}, not in LAYERS", rel.display()));
            if there < here {
                upward.push(format!("src/{} ({top}) imports {m}", rel.display()));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that point up:\n{}",
        upward.join("\n")
    );
}
