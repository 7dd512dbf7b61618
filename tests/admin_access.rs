//! Operator endpoints over real sockets: `/v1/admin/...` is closed unless an admin key
//! (`admin_key_file`) or an admin SP is configured, so an unauthenticated caller cannot
//! close admission for every device; `/metrics` requires its key once one is set.
//!
//! Owns these access checks against the real binary. Must never reach beyond 127.0.0.1.

mod common;

use std::path::PathBuf;

use common::{ConnectOpts, Gateway, V5};

const ADMIN_KEY: &str = "admin-access-test-admin-key";
const METRICS_KEY: &str = "admin-access-test-metrics-key";
const CLOSE_ADMISSION: &str = r#"{"max_heartbeats_per_s": 0.001}"#;

/// Writes `key` to a file of its own and returns the path.
fn key_file(name: &str, key: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("pulsegate-admin-access-{}-{name}", std::process::id()));
    std::fs::write(&path, key).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// A device can still connect: admission was not closed behind the test's back.
fn assert_admission_open(gw: &Gateway, id: &str) {
    let (_client, ack) = gw.connect(&ConnectOpts::new(V5, id));
    assert_eq!(ack.reason, 0, "CONNACK for {id}: {ack:?}");
    assert_eq!(gw.metric("pulsegate_admission_closed"), 0);
}

#[test]
fn admin_is_closed_by_default_and_cannot_close_admission() {
    let gw = Gateway::start("uring", &[]);
    for key in [None, Some("anything-at-all-here")] {
        let (status, body) = gw
            .http_conn()
            .request_as("PUT", "/v1/admin/heartbeat-limit", Some(CLOSE_ADMISSION), key);
        assert_eq!(status, 403, "{body}");
        assert!(
            body.contains("admin_key_file"),
            "the refusal says how to open it: {body}"
        );
        let (status, body) = gw.http_conn().request_as("GET", "/v1/admin/heartbeat-limit", None, key);
        assert_eq!(status, 403, "{body}");
    }
    assert_admission_open(&gw, "after-refused-admin");
    assert!(
        gw.stderr().contains("admin endpoints (/v1/admin/...) are closed"),
        "{}",
        gw.stderr()
    );
    // The open SP API and /metrics keep working without keys.
    let (status, body) = gw.http_conn().request("GET", "/metrics", None);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn the_admin_key_opens_admin_and_only_admin() {
    let admin = key_file("admin.key", &format!("{ADMIN_KEY}\n"));
    let gw = Gateway::start("uring", &["--admin-key-file", &admin.display().to_string()]);
    let limit = r#"{"max_heartbeats_per_s": 5000}"#;
    let (status, body) = gw
        .http_conn()
        .request_as("PUT", "/v1/admin/heartbeat-limit", Some(limit), None);
    assert_eq!(status, 403, "no key: {body}");
    let (status, body) = gw.http_conn().request_as(
        "PUT",
        "/v1/admin/heartbeat-limit",
        Some(limit),
        Some("wrong-key-of-some-length"),
    );
    assert_eq!(status, 403, "wrong key: {body}");
    let (status, body) = gw
        .http_conn()
        .request_as("PUT", "/v1/admin/heartbeat-limit", Some(limit), Some(ADMIN_KEY));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["max_heartbeats_per_s"], 5000.0, "{v}");
    // The admin key names no SP: it cannot push.
    let push = r#"{"device": "d1", "payload": "x"}"#;
    let (status, body) = gw
        .http_conn()
        .request_as("POST", "/v1/messages", Some(push), Some(ADMIN_KEY));
    assert_eq!(status, 403, "{body}");
    let _ = std::fs::remove_file(admin);
}

#[test]
fn a_weak_admin_key_file_stops_start_up() {
    let weak = key_file("weak.key", "short");
    let data = std::env::temp_dir().join(format!("pulsegate-admin-access-{}-data", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pulsegate"))
        .args(["--admin-key-file", &weak.display().to_string()])
        .args(["--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("pulsegate runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("admin_key_file") && stderr.contains("at least 16 bytes"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(weak);
    let _ = std::fs::remove_dir_all(data);
}

#[test]
fn metrics_require_their_key_once_set() {
    let admin = key_file("m-admin.key", ADMIN_KEY);
    let metrics = key_file("metrics.key", METRICS_KEY);
    let gw = Gateway::start(
        "uring",
        &[
            "--admin-key-file",
            &admin.display().to_string(),
            "--metrics-key-file",
            &metrics.display().to_string(),
        ],
    );
    let (status, body) = gw.http_conn().request_as("GET", "/metrics", None, None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = gw
        .http_conn()
        .request_as("GET", "/metrics", None, Some("not-the-metrics-key"));
    assert_eq!(status, 401, "{body}");
    for key in [METRICS_KEY, ADMIN_KEY] {
        let (status, body) = gw.http_conn().request_as("GET", "/metrics", None, Some(key));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("pulsegate_"), "{body}");
    }
    let (status, body) = gw.http_conn().request("GET", "/healthz", None);
    assert_eq!(status, 200, "health stays open for load balancers: {body}");
    let _ = std::fs::remove_file(admin);
    let _ = std::fs::remove_file(metrics);
}
