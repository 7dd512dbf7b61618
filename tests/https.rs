//! TLS at the gateway's HTTP edges, over real sockets with certificates from test CAs
//! (rcgen): the SP API served as HTTPS (`--http-tls`) to curl and to a rustls client
//! (keep-alive, plaintext refused, a client that never says ClientHello dropped on the idle
//! deadline while others are served, the failures counted on /metrics), and callbacks to
//! HTTPS receivers (delivered when `--outbound-ca-file` trusts the receiver's CA; counted,
//! logged and retried when it does not); a bad CA file stops the start naming it.
//!
//! The gateway runs on one backend: TLS here is the HTTP server's and the push service's,
//! not the shards'.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::tls::{HttpsReceiver, TestCa, is_timeout};
use common::*;

const BACKEND: &str = "epoll";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pulsegate-https-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn https_gateway(ca: &TestCa, extra: &[&str]) -> Gateway {
    let mut args: Vec<String> = ca.http_tls_args();
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Gateway::start(BACKEND, &args)
}

fn tls_metrics(gw: &Gateway, ca: &TestCa) -> String {
    let (status, body) = HttpConn::open_tls(gw.http, ca.client_config()).request("GET", "/metrics", None);
    assert_eq!(status, 200, "{body}");
    body
}

/// Runs curl with `args`; returns (HTTP status, body) from `-w` and stdout.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code} %{http_version}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut tail = tail.split_whitespace();
    let status = tail.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    if status != 0 {
        assert_eq!(tail.next(), Some("1.1"), "ALPN picks HTTP/1.1");
    }
    (status, body.to_string())
}

#[test]
fn curl_posts_a_push_and_reads_its_status_over_https() {
    if !prerequisite("curl", find_program("curl").is_some(), "run tests/deps.sh") {
        return;
    }
    let dir = scratch("curl");
    let ca = TestCa::new(&dir, "curl-ca");
    let gw = https_gateway(&ca, &[]);
    let base = format!("https://127.0.0.1:{}", gw.http.port());
    let cacert = ca.ca_file.display().to_string();
    let (status, body) = curl(&[
        "--cacert",
        &cacert,
        "-H",
        "Content-Type: application/json",
        "--data",
        r#"{"device":"curl-dev","payload":"over tls"}"#,
        &format!("{base}/v1/messages"),
    ]);
    assert!(accepted(status), "{status} {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let id = v["id"].as_str().expect("id").to_string();
    let (status, body) = curl(&["--cacert", &cacert, &format!("{base}/v1/messages/{id}")]);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        (v["id"].as_str(), v["device"].as_str()),
        (Some(id.as_str()), Some("curl-dev"))
    );
    // Without the CA curl refuses the server; plain http:// to the port gets no answer.
    let (status, _) = curl(&[&format!("{base}/healthz")]);
    assert_eq!(status, 0, "curl must not trust a test CA it was not given");
    let (status, _) = curl(&[&format!("http://127.0.0.1:{}/healthz", gw.http.port())]);
    assert_eq!(status, 0, "plain HTTP must not be answered on the HTTPS port");
    let m = tls_metrics(&gw, &ca);
    assert!(
        metric_value(&m, "pulsegate_http_tls_handshake_failures_total") >= 2,
        "{m}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rustls_client_keeps_alive_and_bad_or_silent_clients_do_not_disturb_it() {
    let dir = scratch("rustls");
    let ca = TestCa::new(&dir, "rustls-ca");
    let idle_ms = 600u64;
    let gw = https_gateway(&ca, &["--http-idle-timeout-ms", &idle_ms.to_string()]);
    // A client that opens TCP and never sends a ClientHello.
    let started = Instant::now();
    let mut silent = TcpStream::connect(gw.http).expect("connect");
    // Plaintext HTTP to the TLS port: closed without an HTTP answer.
    let mut plain = TcpStream::connect(gw.http).expect("connect");
    plain.set_read_timeout(Some(Duration::from_secs(3))).ok();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "{:?}", String::from_utf8_lossy(&answer));

    // Meanwhile one TLS connection carries a push, its status and /healthz (keep-alive).
    let mut conn = HttpConn::open_tls(gw.http, ca.client_config());
    let (status, body) = conn.post_message(&serde_json::json!({"device": "tls-dev", "payload": "x"}));
    assert!(accepted(status), "{status} {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let id = v["id"].as_str().expect("id");
    let (status, body) = conn.request("GET", &format!("/v1/messages/{id}"), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(conn.request("GET", "/healthz", None).0, 200);

    // The silent client is dropped on the idle deadline, not before; the keep-alive
    // connection is served all along.
    silent.set_read_timeout(Some(Duration::from_millis(100))).ok();
    let mut byte = [0u8; 1];
    let mut served_meanwhile = 0;
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "silent client never dropped"
        );
        match silent.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => panic!("the server sent bytes to a client that said nothing"),
            Err(e) if is_timeout(&e) => {}
            Err(_) => break,
        }
        assert_eq!(conn.request("GET", "/healthz", None).0, 200);
        served_meanwhile += 1;
    }
    assert!(served_meanwhile >= 2, "{served_meanwhile}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(idle_ms - 100),
        "dropped after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(idle_ms + 2000),
        "dropped after {waited:?}"
    );
    // The keep-alive connection still works, and both failures are counted.
    assert_eq!(conn.request("GET", "/healthz", None).0, 200);
    let (status, m) = conn.request("GET", "/metrics", None);
    assert_eq!(status, 200);
    assert_eq!(
        metric_value(&m, "pulsegate_http_tls_handshake_failures_total"),
        2,
        "{m}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pushes to an offline device with `callback_url`, then cancels it: the callback reports
/// "cancelled" at once.
fn cancelled_push_with_callback(gw: &Gateway, device: &str, callback_url: &str) -> String {
    let mut conn = gw.http_conn();
    let (status, body) = conn.post_message(&serde_json::json!({
        "device": device, "payload": "x", "callback_url": callback_url,
    }));
    assert!(accepted(status), "{status} {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let id = v["id"].as_str().expect("id").to_string();
    let (status, body) = conn.request("DELETE", &format!("/v1/messages/{id}"), None);
    assert_eq!(status, 200, "cancel: {body}");
    id
}

#[test]
fn callback_reaches_an_https_receiver_of_the_outbound_ca() {
    let dir = scratch("cb-ok");
    let ca = TestCa::new(&dir, "sp-ca");
    let receiver = HttpsReceiver::start(ca.server_config());
    let ca_file = ca.ca_file.display().to_string();
    let gw = Gateway::start(BACKEND, &["--outbound-ca-file", &ca_file]);
    let id = cancelled_push_with_callback(&gw, "cb-tls-ok", &receiver.url("/cb"));
    let got = receiver.wait_received(1, Duration::from_secs(10));
    assert_eq!(got[0].path, "/cb");
    let v: serde_json::Value = serde_json::from_slice(&got[0].body).expect("callback JSON");
    assert_eq!(
        (v["id"].as_str(), v["state"].as_str()),
        (Some(id.as_str()), Some("cancelled"))
    );
    gw.wait_metric("pulsegate_callbacks_ok_total", Duration::from_secs(5), |v| v == 1);
    assert_eq!(gw.metric("pulsegate_outbound_tls_failures_total"), 0);
    assert_eq!(receiver.handshake_failures(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn callback_to_an_untrusted_https_receiver_is_a_counted_retried_tls_failure() {
    let dir = scratch("cb-untrusted");
    let trusted = TestCa::new(&dir, "trusted-ca");
    let stranger = TestCa::new(&dir, "stranger-ca");
    let receiver = HttpsReceiver::start(stranger.server_config());
    let ca_file = trusted.ca_file.display().to_string();
    let gw = Gateway::start(BACKEND, &["--outbound-ca-file", &ca_file]);
    cancelled_push_with_callback(&gw, "cb-tls-bad", &receiver.url("/cb"));
    // The first try and a retry after the 0.5 s backoff both fail the handshake.
    gw.wait_metric("pulsegate_outbound_tls_failures_total", Duration::from_secs(10), |v| {
        v >= 2
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while receiver.handshake_failures() < 2 {
        assert!(
            Instant::now() < deadline,
            "receiver saw {} failed handshakes",
            receiver.handshake_failures()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(receiver.received().is_empty());
    assert_eq!(gw.metric("pulsegate_callbacks_ok_total"), 0);
    let log = gw.stderr();
    assert!(
        log.contains("TLS handshake") && log.contains("UnknownIssuer") && log.contains(&receiver.addr.to_string()),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_outbound_ca_file_stops_the_start_naming_it() {
    let dir = scratch("bad-ca");
    let bad = dir.join("not-a-ca.pem");
    std::fs::write(&bad, "this is not PEM\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_pulsegate"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--shards", "1", "--backend", BACKEND, "--pin-cpus", "false"])
        .arg("--outbound-ca-file")
        .arg(&bad)
        .output()
        .expect("run pulsegate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with a bad CA file: {stderr}");
    assert!(stderr.contains("not-a-ca.pem"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
