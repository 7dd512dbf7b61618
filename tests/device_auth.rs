//! Device authentication over real sockets: a gateway with `[device_auth] kind = "jwt"`
//! (HS256 secret file) accepts a CONNECT whose password is a valid token for its client
//! id and refuses, with the right CONNACK code for MQTT 5 and 3.1.1 and a counter by
//! reason, an expired token, another device's token, a forged signature and a missing
//! password; a refused impersonator never takes the real device's session; SIGHUP
//! rotates the key without dropping connections; the config file's `[device_auth]`
//! section works; a gateway with no `[device_auth]` says so at start-up.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

const SECRET_A: &[u8] = b"first-device-secret-0123456789-abcdef";
const SECRET_B: &[u8] = b"second-device-secret-9876543210-zyxwvu";

fn now_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn token(secret: &[u8], client_id: &str, exp_in_s: i64) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"clientid": client_id, "exp": now_s() + exp_in_s, "iat": now_s()}),
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pulsegate-device-auth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn jwt_gateway(backend: &str, key_file: &Path) -> Gateway {
    let key = key_file.to_str().unwrap();
    Gateway::start(
        backend,
        &[
            "--device-auth-kind",
            "jwt",
            "--device-auth-key-file",
            key,
            "--device-auth-leeway-s",
            "5",
        ],
    )
}

/// CONNECT with `password`, returning the CONNACK reason code as it is on the wire
/// (MQTT 5 reason code, or the 3.1.1 return code); a refusal must be followed by the close.
fn connack(gw: &Gateway, version: pulsegate::protocol::mqtt::ProtocolVersion, id: &str, password: Option<&str>) -> u8 {
    let opts = ConnectOpts::new(version, id).credentials(Some(id), password.map(str::as_bytes));
    let mut stream = gw.tcp();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(&opts.encode()).unwrap();
    // CONNACK: 0x20, remaining length, flags, code (MQTT 5 adds properties after).
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).expect("a CONNACK");
    assert_eq!(head[0], 0x20, "CONNACK expected, got {head:?}");
    let code = head[3];
    if code != 0 {
        let mut rest = Vec::new();
        // Reads to EOF: the gateway closes after a refusal (bounded by the read timeout).
        stream.read_to_end(&mut rest).expect("the refused connection is closed");
    }
    code
}

fn refused(gw: &Gateway, reason: &str) -> u64 {
    gw.metric(&format!("pulsegate_device_auth_refused_total{{reason=\"{reason}\"}}"))
}

fn tokens_are_checked(backend: &str) {
    let dir = scratch(backend);
    let key_file = dir.join("jwt.key");
    std::fs::write(&key_file, SECRET_A).unwrap();
    let gw = jwt_gateway(backend, &key_file);

    for (version, bad_password, not_authorized) in [(V5, 0x86, 0x87), (V311, 4, 5)] {
        let ok = token(SECRET_A, "phone-1", 600);
        assert_eq!(
            connack(&gw, version, "phone-1", Some(&ok)),
            0,
            "{version:?} valid token"
        );
        let expired = token(SECRET_A, "phone-1", -60);
        assert_eq!(
            connack(&gw, version, "phone-1", Some(&expired)),
            bad_password,
            "{version:?} expired"
        );
        assert_eq!(
            connack(&gw, version, "phone-2", Some(&ok)),
            not_authorized,
            "{version:?} another device's token"
        );
        let forged = token(SECRET_B, "phone-1", 600);
        assert_eq!(
            connack(&gw, version, "phone-1", Some(&forged)),
            bad_password,
            "{version:?} forged"
        );
        assert_eq!(
            connack(&gw, version, "phone-1", None),
            bad_password,
            "{version:?} no password"
        );
        assert_eq!(
            connack(&gw, version, "phone-1", Some("garbage")),
            bad_password,
            "{version:?} not a token"
        );
    }
    assert_eq!(refused(&gw, "expired"), 2);
    assert_eq!(refused(&gw, "client_id_mismatch"), 2);
    assert_eq!(refused(&gw, "bad_signature"), 2);
    assert_eq!(refused(&gw, "missing_password"), 2);
    assert_eq!(refused(&gw, "malformed_token"), 2);
    assert_eq!(gw.metric("pulsegate_device_auth_accepted_total{kind=\"jwt\"}"), 2);
    assert_eq!(gw.closes("not_authorized"), 10);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tokens_are_checked_uring() {
    tokens_are_checked("uring");
}

#[test]
fn tokens_are_checked_epoll() {
    tokens_are_checked("epoll");
}

#[test]
fn a_refused_impersonator_never_takes_the_session_over() {
    let dir = scratch("impersonation");
    let key_file = dir.join("jwt.key");
    std::fs::write(&key_file, SECRET_A).unwrap();
    let gw = jwt_gateway("uring", &key_file);
    let real = token(SECRET_A, "phone-42", 600);
    let opts = ConnectOpts::new(V5, "phone-42").credentials(Some("phone-42"), Some(real.as_bytes()));
    let (mut device, _) = gw.connect(&opts);

    // Same client id: no password, a token for another device, a forged token.
    assert_eq!(connack(&gw, V5, "phone-42", None), 0x86);
    let other = token(SECRET_A, "phone-7", 600);
    assert_eq!(connack(&gw, V311, "phone-42", Some(&other)), 5);
    assert_eq!(
        connack(&gw, V5, "phone-42", Some(&token(SECRET_B, "phone-42", 600))),
        0x86
    );

    // The real device is untouched: no DISCONNECT 0x8E, and its pushes still reach it.
    device.expect_silence(QUIET);
    gw.assert_healthy(&mut device);
    assert_eq!(gw.closes("session_taken_over"), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sighup_rotates_the_key_without_dropping_connections() {
    let dir = scratch("rotation");
    let key_file = dir.join("jwt.key");
    std::fs::write(&key_file, SECRET_A).unwrap();
    let gw = jwt_gateway("uring", &key_file);
    let before = token(SECRET_A, "rot-1", 600);
    let opts = ConnectOpts::new(V5, "rot-1").credentials(Some("rot-1"), Some(before.as_bytes()));
    let (mut held, _) = gw.connect(&opts);

    std::fs::write(&key_file, SECRET_B).unwrap();
    assert_eq!(send_signal(gw.pid(), libc::SIGHUP), 0);
    gw.wait_metric(
        "pulsegate_device_auth_key_reloads_total{result=\"ok\"}",
        Duration::from_secs(5),
        |n| n == 1,
    );
    assert_eq!(connack(&gw, V5, "rot-2", Some(&token(SECRET_A, "rot-2", 600))), 0x86);
    assert_eq!(connack(&gw, V5, "rot-2", Some(&token(SECRET_B, "rot-2", 600))), 0);
    gw.assert_healthy(&mut held);

    // A broken key file is refused; the last good key stays.
    std::fs::write(&key_file, b"short").unwrap();
    assert_eq!(send_signal(gw.pid(), libc::SIGHUP), 0);
    gw.wait_metric(
        "pulsegate_device_auth_key_reloads_total{result=\"failed\"}",
        Duration::from_secs(5),
        |n| n == 1,
    );
    assert_eq!(connack(&gw, V5, "rot-3", Some(&token(SECRET_B, "rot-3", 600))), 0);
    assert!(
        gw.stderr().contains("reload failed, keeping the previous keys"),
        "{}",
        gw.stderr()
    );
    gw.assert_healthy(&mut held);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `signal` with the `kill` program (this test crate has no `unsafe`); 0 on success.
fn send_signal(pid: u32, signal: i32) -> i32 {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("kill runs");
    if status.success() { 0 } else { 1 }
}

#[test]
fn the_config_file_section_configures_jwt_and_no_section_warns() {
    let dir = scratch("file");
    let key_file = dir.join("jwt.key");
    std::fs::write(&key_file, SECRET_A).unwrap();
    let conf = dir.join("pulsegate.toml");
    std::fs::write(
        &conf,
        format!(
            "[device_auth]\nkind = \"jwt\"\nalgorithm = \"HS256\"\nkey_file = {:?}\nleeway_s = 30\n",
            key_file.to_str().unwrap()
        ),
    )
    .unwrap();
    let gw = Gateway::start("uring", &["--config", conf.to_str().unwrap()]);
    assert_eq!(connack(&gw, V5, "f-1", None), 0x86);
    assert_eq!(connack(&gw, V5, "f-1", Some(&token(SECRET_A, "f-1", 600))), 0);
    assert!(!gw.stderr().contains("WARNING: no [device_auth]"), "{}", gw.stderr());
    drop(gw);

    let open = Gateway::start("uring", &[]);
    assert!(open.stderr().contains("WARNING: no [device_auth]"), "{}", open.stderr());
    assert_eq!(connack(&open, V5, "anyone", None), 0);
    let explicit = Gateway::start("uring", &["--device-auth-kind", "none"]);
    assert!(
        !explicit.stderr().contains("WARNING: no [device_auth]"),
        "{}",
        explicit.stderr()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_key_file_stops_start_up_with_its_name() {
    let dir = scratch("badkey");
    let key_file = dir.join("short.key");
    std::fs::write(&key_file, b"too short").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pulsegate"))
        .args([
            "--device-auth-kind",
            "jwt",
            "--device-auth-key-file",
            key_file.to_str().unwrap(),
        ])
        .args(["--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .expect("pulsegate runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("short.key") && stderr.contains("at least 32 bytes"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
