//! What the loadgen's end-to-end tests share: killing children on drop, a
//! bounded wait for a child, where Mosquitto is, a per-test temporary
//! directory, and the rule for a missing prerequisite (a binary or a broker):
//! skip with a printed reason, but fail under `CI=true`.
//! Must never: start processes itself or pick ports (each test does, bounded).

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

/// Kills and reaps the child when dropped (also when a test panics).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Mosquitto broker: `$MOSQUITTO_BIN`, or Debian's path.
#[allow(dead_code, reason = "only the tests against Mosquitto start it")]
pub fn mosquitto_bin() -> PathBuf {
    std::env::var_os("MOSQUITTO_BIN")
        .map(Into::into)
        .unwrap_or_else(|| "/usr/sbin/mosquitto".into())
}

/// Waits for the child with a deadline; kills it (and fails the test) when the deadline passes.
#[allow(dead_code, reason = "only the tests against Mosquitto wait on a loadgen this way")]
pub fn wait_bounded(mut child: Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh directory for one test, named after the tag and this process.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pulsegate-loadgen-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Whether this run is CI (`CI=true`, as CI services set it; `1` also counts).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// A test's prerequisite is missing: under CI this fails the test; elsewhere it
/// prints why the test is skipped, and the caller returns.
pub fn missing_prerequisite(what: &str, test: &str) {
    if in_ci() {
        panic!("{what}; CI=true, so a missing prerequisite fails {test} instead of skipping it");
    }
    eprintln!("NOTE: {what}; skipping {test} (under CI=true this fails)");
}
