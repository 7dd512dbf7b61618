//! The outbound URL policy over real sockets against the gateway binary:
//! callback URLs aimed inward (every loopback spelling, private, link-local,
//! the gateway's own API, credentials, CR/LF) are refused at submission with
//! 400 and the reason; an allow-listed local relay still gets its callbacks;
//! a webhook aimed inward stops the start; and one multicast whose callbacks
//! fail cannot make more than the SP's callback budget of POSTs at a target.
//!
//! Owns these tests and their tiny HTTP receiver (127.0.0.1 only). Every wait
//! is bounded.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::gateway::Spawn;
use common::*;

const BACKEND: &str = "epoll";

/// Counts POSTs and answers each with `status` (keep-alive, one thread per connection).
struct Receiver {
    addr: SocketAddr,
    posts: Arc<AtomicUsize>,
}

impl Receiver {
    fn start(status: u16) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let addr = listener.local_addr().expect("receiver addr");
        let posts = Arc::new(AtomicUsize::new(0));
        let counted = posts.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let counted = counted.clone();
                std::thread::spawn(move || serve(conn, status, &counted));
            }
        });
        Receiver { addr, posts }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn posts(&self) -> usize {
        self.posts.load(Ordering::SeqCst)
    }
}

fn serve(conn: TcpStream, status: u16, posts: &AtomicUsize) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = conn.try_clone().expect("clone receiver socket");
    let mut reader = BufReader::new(conn);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        posts.fetch_add(1, Ordering::SeqCst);
        let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn submit(gw: &Gateway, body: serde_json::Value) -> (u16, String) {
    gw.http_conn().post_message(&body)
}

#[test]
fn inward_callback_urls_are_refused_at_submission_with_the_reason() {
    let gw = Spawn::new(BACKEND).outbound_allow(&[]).start();
    let own_api = format!("http://{}/v1/messages", gw.http);
    let cases: Vec<(String, &str)> = vec![
        ("http://127.0.0.1:9/cb".into(), "loopback"),
        ("http://0x7f000001:9/cb".into(), "loopback"),
        ("http://2130706433:9/cb".into(), "loopback"),
        ("http://127.1:9/cb".into(), "loopback"),
        ("http://0177.0.0.1:9/cb".into(), "loopback"),
        ("http://[::1]:9/cb".into(), "loopback"),
        ("http://[::ffff:127.0.0.1]:9/cb".into(), "loopback"),
        ("http://localhost:9/cb".into(), "loopback"),
        ("http://10.0.0.1/cb".into(), "private"),
        ("http://192.168.0.1/cb".into(), "private"),
        ("http://169.254.169.254/latest/meta-data/".into(), "link-local"),
        ("http://100.64.0.1/cb".into(), "carrier-grade NAT"),
        ("http://[fd00::1]/cb".into(), "private"),
        (own_api, "own listeners"),
        ("http://user:pass@93.184.215.14/cb".into(), "credentials"),
        ("http://93.184.215.14/cb\r\nX-Injected: 1".into(), "control character"),
        ("gopher://93.184.215.14/".into(), "scheme"),
    ];
    for (url, reason) in &cases {
        let (status, body) = submit(
            &gw,
            serde_json::json!({"device": "d1", "payload": "x", "callback_url": url}),
        );
        assert_eq!(status, 400, "{url:?} should be refused: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("error body is JSON");
        let text = v.to_string();
        assert!(
            text.contains("callback_url refused") && text.contains(reason),
            "{url:?}: {text}"
        );
    }
    // Nothing was accepted, so nothing will ever fire.
    assert_eq!(
        gw.metric("pulsegate_messages_total{outcome=\"accepted\"}"),
        0,
        "{}",
        gw.metrics()
    );
}

#[test]
fn the_gateways_own_api_is_refused_even_when_loopback_is_allowed() {
    let gw = Spawn::new(BACKEND).start();
    let (status, body) = submit(
        &gw,
        serde_json::json!({"device": "d1", "payload": "x", "callback_url": format!("http://{}/v1/messages", gw.http)}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("own listeners"), "{body}");
}

#[test]
fn an_allow_listed_local_relay_still_receives_callbacks() {
    let receiver = Receiver::start(200);
    let gw = Spawn::new(BACKEND)
        .outbound_allow(&[&format!("{}", receiver.addr)])
        .start();
    let mut conn = gw.http_conn();
    let (status, body) = conn.post_message(&serde_json::json!({
        "device": "offline-1", "payload": "x", "callback_url": receiver.url("/cb"),
    }));
    assert!(accepted(status), "{status} {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let id = v["id"].as_str().expect("id").to_string();
    let (status, body) = conn.request("DELETE", &format!("/v1/messages/{id}"), None);
    assert_eq!(status, 200, "cancel: {body}");
    gw.wait_metric("pulsegate_callbacks_ok_total", Duration::from_secs(10), |v| v == 1);
    assert_eq!(receiver.posts(), 1);
    // The rule names that address and port only: the next port on loopback is still refused.
    let other = format!("http://127.0.0.1:{}/cb", receiver.addr.port() ^ 1);
    let (status, body) = submit(
        &gw,
        serde_json::json!({"device": "d", "payload": "x", "callback_url": other}),
    );
    assert_eq!(status, 400, "{body}");
}

#[test]
fn a_webhook_aimed_inward_stops_the_start_with_a_config_error() {
    let dir = std::env::temp_dir().join(format!("pulsegate-ssrf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[[mechanisms]]\nname = \"sms\"\nkind = \"webhook\"\nurl = \"http://169.254.169.254/sms\"\n",
    )
    .expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pulsegate"))
        .args(["--config", config.to_str().expect("utf-8 path")])
        .args(["--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--backend", BACKEND, "--shards", "1", "--pin-cpus", "false"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run pulsegate");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with an inward webhook: {stderr}");
    assert!(
        stderr.contains("mechanisms.sms.url") && stderr.contains("link-local"),
        "{stderr}"
    );
}

/// One multicast of `DEVICES` offline devices with ttl 1 s and a callback target answering
/// 500: every message expires, each callback is retried; the target must see at most
/// `budget * seconds + burst` POSTs in the window.
#[test]
fn one_multicast_cannot_fan_out_past_the_sp_callback_budget() {
    const DEVICES: usize = 500;
    const PER_S: usize = 10;
    const BURST: usize = 20;
    const WINDOW: Duration = Duration::from_secs(6);
    let receiver = Receiver::start(500);
    let gw = Spawn::new(BACKEND)
        .args(&[
            "--sp-callbacks-per-s",
            &PER_S.to_string(),
            "--sp-callbacks-burst",
            &BURST.to_string(),
        ])
        .start();
    let devices: Vec<String> = (0..DEVICES).map(|i| format!("off-{i}")).collect();
    let started = Instant::now();
    let (status, body) = submit(
        &gw,
        serde_json::json!({"devices": devices, "payload": "x", "ttl_s": 1, "callback_url": receiver.url("/cb")}),
    );
    assert!(accepted(status), "{status} {body}");
    std::thread::sleep(WINDOW.saturating_sub(started.elapsed()));
    let seen = receiver.posts();
    let bound = PER_S * WINDOW.as_secs() as usize + BURST;
    eprintln!("ssrf: {DEVICES} devices, callbacks answered 500: {seen} POSTs in {WINDOW:?} (bound {bound})");
    assert!(seen > 0, "the callbacks never fired");
    assert!(seen <= bound, "{seen} POSTs in {WINDOW:?}, budget allows {bound}");
}
