//! Shared by the `harness = false` benches: writing a run's results as one JSON file so
//! runs can be compared across commits. std only (no serde), so a bench's output format
//! does not depend on the crate's dependencies.
//!
//! Where: `$BENCH_RESULTS_DIR`, else `$CARGO_TARGET_DIR/bench-results`, else
//! `<repo>/target/bench-results`; file `<bench>-<unix seconds>.json`.
//! The commit is read from `.git/HEAD` as a plain file (no git process); `$BENCH_COMMIT`
//! overrides it.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A JSON value, just enough for bench reports.
pub enum J {
    Null,
    Bool(bool),
    Num(f64),
    Int(i64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    pub fn obj<K: Into<String>>(fields: Vec<(K, J)>) -> J {
        J::Obj(fields.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn str(s: impl Into<String>) -> J {
        J::Str(s.into())
    }

    fn write(&self, out: &mut String, indent: usize) {
        let pad = |out: &mut String, n: usize| out.extend(std::iter::repeat_n(' ', n));
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Int(i) => {
                let _ = write!(out, "{i}");
            }
            J::Num(x) if x.is_finite() => {
                // Round to 4 decimals: enough for ns/op and MB/s, stable diffs.
                let r = (x * 10_000.0).round() / 10_000.0;
                let _ = write!(out, "{r}");
            }
            J::Num(_) => out.push_str("null"),
            J::Str(s) => {
                out.push('"');
                for c in s.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        '\t' => out.push_str("\\t"),
                        c if (c as u32) < 0x20 => {
                            let _ = write!(out, "\\u{:04x}", c as u32);
                        }
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            J::Arr(items) => {
                if items.is_empty() {
                    out.push_str("[]");
                    return;
                }
                out.push_str("[\n");
                for (i, v) in items.iter().enumerate() {
                    pad(out, indent + 2);
                    v.write(out, indent + 2);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                pad(out, indent);
                out.push(']');
            }
            J::Obj(fields) => {
                if fields.is_empty() {
                    out.push_str("{}");
                    return;
                }
                out.push_str("{\n");
                for (i, (k, v)) in fields.iter().enumerate() {
                    pad(out, indent + 2);
                    J::Str(k.clone()).write(out, indent + 2);
                    out.push_str(": ");
                    v.write(out, indent + 2);
                    out.push_str(if i + 1 < fields.len() { ",\n" } else { "\n" });
                }
                pad(out, indent);
                out.push('}');
            }
        }
    }

    pub fn to_pretty(&self) -> String {
        let mut s = String::new();
        self.write(&mut s, 0);
        s.push('\n');
        s
    }
}

pub fn unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn results_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BENCH_RESULTS_DIR") {
        return PathBuf::from(d);
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => {
            let t = PathBuf::from(t);
            if t.is_absolute() { t } else { repo_dir().join(t) }
        }
        None => repo_dir().join("target"),
    };
    target.join("bench-results")
}

/// The checked-out commit, read from `.git` files (HEAD, then the ref file or packed-refs).
pub fn commit() -> Option<String> {
    if let Ok(c) = std::env::var("BENCH_COMMIT") {
        return Some(c);
    }
    let git = repo_dir().join(".git");
    let head = std::fs::read_to_string(git.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(r) = head.strip_prefix("ref: ") else {
        return Some(head.to_string());
    };
    if let Ok(c) = std::fs::read_to_string(git.join(r)) {
        return Some(c.trim().to_string());
    }
    let packed = std::fs::read_to_string(git.join("packed-refs")).ok()?;
    packed
        .lines()
        .find_map(|l| l.strip_suffix(r).map(|c| c.trim().to_string()))
        .filter(|c| c.len() == 40)
}

fn first_line_with(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// Run metadata common to every bench report.
pub fn meta(bench: &str, unix: u64) -> Vec<(String, J)> {
    let opt = |o: Option<String>| o.map(J::Str).unwrap_or(J::Null);
    vec![
        ("bench".into(), J::str(bench)),
        ("unix_time_s".into(), J::Int(unix as i64)),
        ("commit".into(), opt(commit())),
        (
            "host".into(),
            J::obj(vec![
                ("cpu_model", opt(first_line_with("/proc/cpuinfo", "model name"))),
                (
                    "cpus",
                    J::Int(
                        std::thread::available_parallelism()
                            .map(|n| n.get() as i64)
                            .unwrap_or(0),
                    ),
                ),
                (
                    "kernel",
                    opt(std::fs::read_to_string("/proc/sys/kernel/osrelease")
                        .ok()
                        .map(|s| s.trim().to_string())),
                ),
            ]),
        ),
        ("debug_assertions".into(), J::Bool(cfg!(debug_assertions))),
    ]
}

/// Writes `report` to `<results_dir>/<bench>-<unix>.json`; returns the path.
pub fn write_report(bench: &str, unix: u64, report: &J) -> std::io::Result<PathBuf> {
    let dir = results_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{bench}-{unix}.json"));
    std::fs::write(&path, report.to_pretty())?;
    Ok(path)
}

/// Writes the report and prints where (or why not) on stdout.
pub fn write_and_print(bench: &str, unix: u64, report: &J) {
    match write_report(bench, unix, report) {
        Ok(p) => println!("results: {}", display(&p)),
        Err(e) => eprintln!("{bench}: cannot write results JSON to {}: {e}", results_dir().display()),
    }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
