//! End-to-end test of `--tls`: a `storm` of 300 devices over TLS against a Mosquitto
//! TLS listener on a free loopback port (certificates made with rcgen into a temp
//! dir). Every device must be back after the storm, first connects must be full
//! handshakes and the storm's reconnects resumed ones; with `--no-tls-resume` every
//! handshake is full. Without Mosquitto the test prints a note and skips, or fails
//! under `CI=true`.
//! Must never: leave a broker or loadgen process running (killed by pid on drop),
//! use a fixed port, or run unbounded (every child has a deadline).

mod common;

use common::{missing_prerequisite, mosquitto_bin, temp_dir, wait_bounded, KillOnDrop};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pulsegate-loadgen");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A CA (ca.pem) and a server certificate for localhost signed by it.
fn write_pki(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

fn storm(port: u16, dir: &Path, n: &str, duration_s: &str, extra: &[&str], json: &Path) -> serde_json::Value {
    let ca = dir.join("ca.pem");
    let child = Command::new(BIN)
        .args(["storm", "--target", &format!("127.0.0.1:{port}"), "--connections", n])
        .args(["--duration-s", duration_s, "--storm-at-s", "1.5", "--keepalive-s", "2"])
        .args([
            "--per-process-max",
            "150",
            "--max-duration-s",
            "30",
            "--tls",
            "--tls-ca-file",
        ])
        .arg(&ca)
        .args(extra)
        .arg("--json")
        .arg(json)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_bounded(child, Duration::from_secs(60));
    assert!(status.success(), "loadgen exited with {status}");
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn tls_storm_against_mosquitto_resumes_the_reconnects() {
    let mosquitto = mosquitto_bin();
    if !mosquitto.is_file() {
        return missing_prerequisite(
            &format!(
                "{} not found (apt-get install mosquitto, or set MOSQUITTO_BIN)",
                mosquitto.display()
            ),
            "the TLS end-to-end test",
        );
    }
    let dir = temp_dir("e2e-tls");
    write_pki(&dir);
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    // `user root`: run as root, Mosquitto would otherwise switch to an account that
    // cannot read the key in this temp dir.
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\npersistence false\nuser root\n\
             certfile {}\nkeyfile {}\n",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ),
    )
    .unwrap();
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

    let v = storm(port, &dir, "300", "7", &[], &dir.join("resume.json"));
    assert_eq!(v["established"], 300, "report: {v:#}");
    assert_eq!(v["storm_dropped"], 300, "report: {v:#}");
    assert_eq!(v["storm_reconnected"], 300, "report: {v:#}");
    assert!(v["storm_recovery_s"].as_f64().is_some(), "not all back: {v:#}");
    let t = &v["tls"];
    assert_eq!(t["errors_total"], 0, "tls: {t:#}");
    assert_eq!(
        t["handshakes_tls13"], t["handshakes"],
        "Mosquitto 2 speaks TLS 1.3: {t:#}"
    );
    // First connects are full; the storm's reconnects resume.
    assert!(t["handshakes_full"].as_u64().unwrap() >= 300, "tls: {t:#}");
    let (full, resumed) = (
        t["storm_handshakes_full"].as_u64().unwrap(),
        t["storm_handshakes_resumed"].as_u64().unwrap(),
    );
    assert!(
        resumed >= 270 && resumed > 10 * full,
        "storm full {full} resumed {resumed}: {t:#}"
    );
    assert!(t["resumed_per_s_peak"].as_u64().unwrap() > 0);
    assert!(t["handshake_ms"]["count"].as_u64().unwrap() >= 600);
    assert!(t["handshake_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(v["loadgen_rss_bytes"].as_u64().unwrap() > 0);

    // Without resumption every reconnect is a full handshake.
    let v = storm(port, &dir, "100", "5", &["--no-tls-resume"], &dir.join("full.json"));
    assert_eq!(v["storm_reconnected"], 100, "report: {v:#}");
    let t = &v["tls"];
    assert_eq!(t["handshakes_resumed"], 0, "tls: {t:#}");
    assert_eq!(t["storm_handshakes_full"], 100, "tls: {t:#}");
    assert_eq!(t["resume"], false);

    // A wrong server name fails every handshake, counted by kind.
    let v = storm(
        port,
        &dir,
        "5",
        "2",
        &["--tls-server-name", "not-localhost.test"],
        &dir.join("badname.json"),
    );
    assert_eq!(v["established"], 0);
    assert!(
        v["tls"]["errors"]["cert_not_valid_for_name"].as_u64().unwrap() >= 5,
        "{:#}",
        v["tls"]
    );
    assert!(v["failed"]["tls_cert_not_valid_for_name"].as_u64().unwrap() >= 5);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
