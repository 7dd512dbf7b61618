//! The crate's layering, enforced: every top-level module of `src/` may name
//! (`crate::x`, `super::..` inside itself) only modules in layers strictly
//! below its own, as `src/lib.rs` declares them between its `layers:begin` and
//! `layers:end` markers. A backward edge (a shard naming the coordinator, a
//! leaf naming the push service) fails this test with the file and line.
//!
//! Owns the dependency picture. Must never grow an allowance without the
//! reason written beside it; it reads sources only, it builds nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Edges that break the order and are still being removed, with the reason.
/// An entry that no longer occurs fails the test too, so this list only shrinks.
const KNOWN_BACKWARD: &[(&str, &str, &str)] = &[
    (
        "config",
        "push",
        "profiles and mechanisms parsed into push types: moving to a leaf",
    ),
    ("coordinator", "gateway", "reads Shared: getting a narrow environment"),
    ("front", "gateway", "reads Shared: getting a narrow environment"),
    ("metrics", "gateway", "reads Shared: getting a narrow environment"),
    ("shard", "gateway", "reads Shared: getting a narrow environment"),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The declared layers, top first, read from lib.rs.
fn declared_layers() -> Vec<Vec<String>> {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("src/lib.rs is readable");
    let mut layers = Vec::new();
    let mut inside = false;
    for line in lib.lines() {
        let text = line.trim_start_matches("//!").trim();
        if text.contains("layers:begin") {
            inside = true;
            continue;
        }
        if text.contains("layers:end") {
            break;
        }
        if inside && !text.is_empty() && !text.starts_with("```") {
            let names: Vec<String> = text
                .split(':')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect();
            layers.push(names);
        }
    }
    assert!(
        !layers.is_empty(),
        "src/lib.rs declares no layers between layers:begin and layers:end"
    );
    layers
}

/// Top-level modules lib.rs declares (`pub mod x;`).
fn declared_modules() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("src/lib.rs is readable");
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').trim().to_string())
        .collect()
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, into);
        } else if p.extension().is_some_and(|x| x == "rs") {
            into.push(p);
        }
    }
}

/// The top-level module a file belongs to (`src/shard/core.rs` -> `shard`).
fn owner_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src_dir()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// Every `crate::name` a line of code mentions (comments skipped).
fn crate_refs(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        // `pulsegate_crate::` or `$crate::` are not ours.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

type Edges = BTreeMap<(String, String), Vec<String>>;

fn edges() -> Edges {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let modules = declared_modules();
    let mut edges: Edges = BTreeMap::new();
    for f in files {
        let Some(from) = owner_of(&f) else { continue };
        if !modules.contains(&from) {
            continue; // lib.rs, main.rs, bin/
        }
        let text = std::fs::read_to_string(&f).expect("source file is readable");
        for (n, line) in text.lines().enumerate() {
            for to in crate_refs(line) {
                if to != from && modules.contains(&to) {
                    let at = format!("{}:{}", f.strip_prefix(src_dir()).unwrap_or(&f).display(), n + 1);
                    edges.entry((from.clone(), to)).or_default().push(at);
                }
            }
        }
    }
    edges
}

#[test]
fn every_module_is_in_exactly_one_layer() {
    let layers = declared_layers();
    let mut seen = BTreeSet::new();
    for name in layers.iter().flatten() {
        assert!(
            seen.insert(name.clone()),
            "module {name} appears in two layers of src/lib.rs"
        );
    }
    let modules = declared_modules();
    let missing: Vec<_> = modules.difference(&seen).collect();
    assert!(missing.is_empty(), "modules with no layer in src/lib.rs: {missing:?}");
    let unknown: Vec<_> = seen.difference(&modules).collect();
    assert!(
        unknown.is_empty(),
        "layers name modules lib.rs does not declare: {unknown:?}"
    );
}

#[test]
fn dependencies_point_down_the_layers() {
    let layers = declared_layers();
    let rank: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.iter().map(move |m| (m.as_str(), i)))
        .collect();
    let edges = edges();
    let mut broken = Vec::new();
    let mut known_seen = BTreeSet::new();
    for ((from, to), at) in &edges {
        let (Some(&rf), Some(&rt)) = (rank.get(from.as_str()), rank.get(to.as_str())) else {
            continue;
        };
        if rt > rf {
            continue;
        }
        if KNOWN_BACKWARD.iter().any(|(f, t, _)| f == from && t == to) {
            known_seen.insert((from.clone(), to.clone()));
            continue;
        }
        broken.push(format!("{from} -> {to} (layer {rf} -> {rt}) at {}", at.join(", ")));
    }
    assert!(
        broken.is_empty(),
        "backward or sideways dependencies:\n{}",
        broken.join("\n")
    );
    let stale: Vec<_> = KNOWN_BACKWARD
        .iter()
        .filter(|(f, t, _)| !known_seen.contains(&(f.to_string(), t.to_string())))
        .collect();
    assert!(
        stale.is_empty(),
        "KNOWN_BACKWARD lists edges that are gone; delete them: {stale:?}"
    );
}

#[test]
fn the_reader_sees_a_backward_edge() {
    // The scanner itself: a reference in code counts, one in a comment does not.
    assert_eq!(crate_refs("use crate::shard::mailbox::Command;"), vec!["shard"]);
    assert_eq!(
        crate_refs("x(crate::gateway::Shared::new()); // crate::push"),
        vec!["gateway"]
    );
    assert!(crate_refs("/// see crate::push").is_empty());
    assert!(crate_refs("$crate::x").is_empty());
}

/// Prints the picture (module -> modules it names), for the README and review:
/// `cargo test --test architecture -- --ignored --nocapture`.
#[test]
#[ignore]
fn print_dependency_picture() {
    let mut by_module: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in declared_modules() {
        by_module.entry(m).or_default();
    }
    for (from, to) in edges().keys() {
        by_module.entry(from.clone()).or_default().insert(to.clone());
    }
    for (m, deps) in by_module {
        println!("{m} -> {}", deps.into_iter().collect::<Vec<_>>().join(", "));
    }
}
