//! End-to-end tests of the real binary: `hold` against a Mosquitto broker on a free
//! loopback port, and the refusal of non-loopback targets.
//! Without Mosquitto the broker test prints a note and skips, or fails under `CI=true`.
//! Must never: leave a broker or loadgen process running (both are killed by pid on
//! drop), use a fixed port, or run unbounded (every child has a deadline).

mod common;

use common::{missing_prerequisite, mosquitto_bin, temp_dir, wait_bounded, KillOnDrop};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pulsegate-loadgen");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn hold_200_connections_against_mosquitto() {
    let mosquitto = mosquitto_bin();
    if !mosquitto.is_file() {
        return missing_prerequisite(
            &format!(
                "{} not found (apt-get install mosquitto, or set MOSQUITTO_BIN)",
                mosquitto.display()
            ),
            "the Mosquitto end-to-end test",
        );
    }
    let dir = temp_dir("e2e");
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    let mut f = std::fs::File::create(&conf).unwrap();
    writeln!(f, "listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1").unwrap();
    drop(f);
    let broker = KillOnDrop(
        Command::new(&mosquitto)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ready_by = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < ready_by, "mosquitto did not start listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let json = dir.join("report.json");
    let child = Command::new(BIN)
        .args([
            "hold",
            "--target",
            &format!("127.0.0.1:{port}"),
            "--connections",
            "200",
            "--duration-s",
            "3",
        ])
        .args([
            "--keepalive-s",
            "1",
            "--per-process-max",
            "120",
            "--max-duration-s",
            "20",
        ])
        .args(["--server-pid", &broker.0.id().to_string()])
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_bounded(child, Duration::from_secs(40));
    assert!(status.success(), "loadgen exited with {status}");

    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["scenario"], "hold");
    assert_eq!(v["connections_requested"], 200);
    assert_eq!(v["workers"], 2, "per-process-max 120 must split 200 into two workers");
    assert_eq!(v["established"], 200, "report: {v:#}");
    assert!(v["keepalives"].as_u64().unwrap() > 0, "report: {v:#}");
    assert_eq!(v["failed_total"], 0);
    assert!(v["ping_rtt_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(v["ping_rtt_ms"]["max"].as_f64().unwrap() >= v["ping_rtt_ms"]["p99"].as_f64().unwrap());
    assert!(v["connect_rate_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["server_rss_bytes"].as_u64().unwrap() > 0);
    assert!(v["server_rss_bytes_before"].as_u64().unwrap() > 0);
    assert!(v["server_cpu_s"].as_f64().is_some());
    let d = v["duration_s"].as_f64().unwrap();
    assert!((3.0..15.0).contains(&d), "duration {d}");
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn remote_target_is_refused_with_exit_2() {
    let out = Command::new(BIN)
        .args([
            "hold",
            "--target",
            "10.1.2.3:1883",
            "--connections",
            "1",
            "--duration-s",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-remote"));
}

#[test]
fn unreachable_target_reports_failures() {
    // Nothing listens on this port: every attempt fails as "connect_refused" and
    // is retried with backoff; the run still ends on time with a report.
    let port = free_port();
    let dir = temp_dir("refused");
    let json = dir.join("r.json");
    let child = Command::new(BIN)
        .args([
            "hold",
            "--target",
            &format!("127.0.0.1:{port}"),
            "--connections",
            "5",
            "--duration-s",
            "1",
        ])
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_bounded(child, Duration::from_secs(20)).success());
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["established"], 0);
    assert!(v["failed"]["connect_refused"].as_u64().unwrap() >= 5, "{v:#}");
    let _ = std::fs::remove_dir_all(&dir);
}
