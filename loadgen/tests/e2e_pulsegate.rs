//! End-to-end tests of the real loadgen binary against the real pulsegate gateway:
//! a `storm` of 500 devices (every one must reconnect) and a small `rushhour` (the
//! burst must synchronize the keep-alives). The gateway binary comes from
//! PULSEGATE_BIN, else target/release/pulsegate of the workspace; without it the
//! tests print a note and skip, or fail under `CI=true`.
//! Must never: leave a gateway or loadgen process running (both are killed by pid
//! on drop or deadline), use a fixed port, or run unbounded.

mod common;

use common::{missing_prerequisite, temp_dir, KillOnDrop};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pulsegate-loadgen");

/// How long the gateway may take to write its ready file.
const READY_TIMEOUT_S: u64 = 20;

const GATEWAY_MISSING: &str =
    "pulsegate binary not found (set PULSEGATE_BIN or run `cargo build --release -p pulsegate`)";

fn gateway_bin() -> Option<PathBuf> {
    let p = match std::env::var_os("PULSEGATE_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/pulsegate")),
    };
    p.is_file().then_some(p)
}

struct Gateway {
    _proc: KillOnDrop,
    mqtt: String,
    http: String,
    pid: u32,
}

/// Starts the gateway on free loopback ports and waits (bounded) for its ready file
/// (`--ready-file`, JSON with the bound addresses). It runs in `cwd` (a per-test
/// directory), so whatever it keeps on disk there is not shared with the other
/// test's gateway.
fn start_gateway(bin: &PathBuf, cwd: &Path) -> Gateway {
    let ready = cwd.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let child = Command::new(bin)
        .current_dir(cwd)
        .args([
            "--mqtt-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--shards",
            "6",
        ])
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(cwd.join("gateway.err")).unwrap())
        .spawn()
        .expect("start pulsegate");
    let pid = child.id();
    let mut guard = KillOnDrop(child);
    let stderr = || std::fs::read_to_string(cwd.join("gateway.err")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(READY_TIMEOUT_S);
    // The gateway writes the file atomically (write, rename): once it exists it is whole.
    let text = loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            break text;
        }
        if let Some(st) = guard.0.try_wait().unwrap() {
            panic!(
                "pulsegate exited with {st} before writing {}; stderr:\n{}",
                ready.display(),
                stderr()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "pulsegate wrote no ready file within {READY_TIMEOUT_S} s; stderr:\n{}",
                stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("ready file {text:?} is not JSON: {e}"));
    let field = |name: &str| {
        v[name]
            .as_str()
            .unwrap_or_else(|| panic!("no string {name:?} in the ready file {v}"))
            .to_string()
    };
    assert_eq!(
        v["pid"].as_u64(),
        Some(pid as u64),
        "ready file of another process: {v}"
    );
    Gateway {
        mqtt: field("mqtt"),
        http: field("http"),
        pid,
        _proc: guard,
    }
}

/// Runs the loadgen with a deadline; kills it when the deadline passes.
fn run_bounded(args: &[&str], limit: Duration) {
    let mut child = Command::new(BIN).args(args).stdout(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "loadgen exited with {st}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loadgen did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn storm_500_devices_all_reconnect() {
    let Some(bin) = gateway_bin() else {
        return missing_prerequisite(GATEWAY_MISSING, "the storm e2e test");
    };
    let dir = temp_dir("storm");
    let gw = start_gateway(&bin, &dir);
    let pid = gw.pid.to_string();
    let dir_s = dir.to_str().unwrap();
    run_bounded(
        &[
            "storm",
            "--target",
            &gw.mqtt,
            "--connections",
            "500",
            "--duration-s",
            "6",
            "--keepalive-s",
            "2",
            "--max-duration-s",
            "20",
            "--server-pid",
            &pid,
            "--report",
            dir_s,
        ],
        Duration::from_secs(60),
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(v["scenario"], "storm");
    assert_eq!(v["established"], 500, "{v:#}");
    let started = v["storm_started_s"].as_f64().expect("storm happened");
    assert!((2.0..4.0).contains(&started), "storm at {started}");
    assert_eq!(v["storm_dropped"], 500, "{v:#}");
    assert_eq!(v["storm_reconnected"], 500, "{v:#}");
    let rec = v["storm_recovery_s"].as_f64().expect("recovered");
    assert!(rec > 0.0 && rec < 4.0, "recovery {rec}");
    assert_eq!(v["storm_reconnect_ms"]["count"], 500);
    let per_s = v["connected_per_s"].as_array().unwrap();
    assert_eq!(per_s.len(), 6, "{per_s:?}");
    assert_eq!(per_s.last().unwrap(), 500);
    assert_eq!(
        v["timeline"]["closes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .sum::<u64>(),
        500
    );
    assert!(v["keepalives_per_s"].as_array().unwrap().len() == 6);
    assert!(v.get("keepalive_peak_to_mean").is_some());
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<svg"));
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rushhour_burst_synchronizes_keepalives() {
    let Some(bin) = gateway_bin() else {
        return missing_prerequisite(GATEWAY_MISSING, "the rushhour e2e test");
    };
    let dir = temp_dir("rushhour");
    let gw = start_gateway(&bin, &dir);
    let json = dir.join("r.json");
    // 300 devices spread over one 2 s period, one push each at 5 s, then 3 periods after.
    run_bounded(
        &[
            "rushhour",
            "--target",
            &gw.mqtt,
            "--http",
            &gw.http,
            "--connections",
            "300",
            "--duration-s",
            "12",
            "--keepalive-s",
            "2",
            "--burst-at-s",
            "5",
            "--max-duration-s",
            "30",
            "--json",
            json.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["scenario"], "rushhour");
    assert_eq!(v["pushes_accepted"], 300, "{v:#}");
    assert_eq!(v["pushes_delivered"], 300, "{v:#}");
    let before = v["keepalive_peak_to_mean_before"].as_f64().expect("before measured");
    let after = v["keepalive_peak_to_mean_after"].as_f64().expect("after measured");
    // Spread: ~1.0. Synchronized with a 2 s period: every keep-alive in one slot of two = 2.0.
    assert!(before < 1.4, "before {before} {v:#}");
    assert!(after > 1.7, "after {after} {v:#}");
    assert!(!v["keepalives_per_s_after"].as_array().unwrap().is_empty());
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}
