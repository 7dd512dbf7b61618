//! End-to-end tests of the API module over real sockets on 127.0.0.1 (port 0), against a fake
//! `Gateway` that records every push.
//!
//! Owns: the fake gateway, a tiny blocking test client, and the behaviour tests.
//! Must never: leave a server running (each test shuts its own down), wait without a socket
//! timeout, or reach any address but loopback.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{Gateway, HttpConfig, HttpServer, PushError, PushRequest};

/// Behaviour by device id: "offline", "busy", "huge", "bye", "panic"; anything else succeeds.
#[derive(Default)]
struct FakeGateway {
    calls: Mutex<Vec<PushRequest>>,
}

impl FakeGateway {
    fn calls(&self) -> Vec<PushRequest> {
        self.calls.lock().expect("test mutex not poisoned").clone()
    }
}

impl Gateway for FakeGateway {
    fn push(&self, req: PushRequest) -> Result<String, PushError> {
        let device = req.device.clone();
        let n = {
            let mut calls = self.calls.lock().expect("test mutex not poisoned");
            calls.push(req);
            calls.len()
        };
        match device.as_str() {
            "offline" => Err(PushError::DeviceOffline),
            "busy" => Err(PushError::Overloaded { retry_after_s: 7 }),
            "huge" => Err(PushError::PayloadTooLarge { max_bytes: 4096 }),
            "bye" => Err(PushError::ShuttingDown),
            "panic" => panic!("fake gateway panics on purpose"),
            _ => Ok(format!("push-{n}")),
        }
    }

    fn metrics_text(&self) -> String {
        "# TYPE pulsegate_pushes_total counter\npulsegate_pushes_total 3\n".into()
    }
}

fn config() -> HttpConfig {
    HttpConfig {
        max_connections: 16,
        max_header_bytes: 16 * 1024,
        max_body_bytes: 64 * 1024,
        idle_timeout_ms: 5_000,
        max_requests_per_connection: 100,
    }
}

fn start(config: HttpConfig) -> (HttpServer, Arc<FakeGateway>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let gateway = Arc::new(FakeGateway::default());
    let server = HttpServer::start(listener, config, gateway.clone()).expect("server starts");
    (server, gateway)
}

struct Client {
    reader: BufReader<TcpStream>,
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    fn error_code(&self) -> String {
        let v = self.json();
        assert!(v["message"].is_string(), "error has a message: {v}");
        v["error"].as_str().expect("error code is a string").to_owned()
    }
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .expect("write timeout");
        Client {
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, raw: &[u8]) {
        self.reader.get_mut().write_all(raw).expect("send request");
    }

    /// Reads one final response, skipping interim 1xx ones (`read_one` returns those).
    fn read_response(&mut self) -> Resp {
        loop {
            let resp = self.read_one();
            if resp.status >= 200 {
                return resp;
            }
        }
    }

    fn read_one(&mut self) -> Resp {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        let mut parts = line.split_whitespace();
        assert_eq!(parts.next(), Some("HTTP/1.1"), "status line {line:?}");
        let status = parts.next().and_then(|s| s.parse().ok()).expect("status code");
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).expect("header line");
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').expect("header has a colon");
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if status >= 200 {
            let len: usize = resp
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .expect("every response has Content-Length");
            assert!(resp.header("content-type").is_some(), "every response has Content-Type");
            resp.body = vec![0; len];
            self.reader.read_exact(&mut resp.body).expect("body");
        }
        resp
    }

    /// True if the server closes the connection (EOF or reset) within `within`.
    fn closed_within(&mut self, within: Duration) -> bool {
        let start = Instant::now();
        let stream = self.reader.get_ref();
        stream.set_read_timeout(Some(within)).expect("read timeout");
        let mut byte = [0u8; 1];
        let result = self.reader.read(&mut byte);
        match result {
            Ok(0) => true,
            Ok(_) => panic!("unexpected data instead of close"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(_) => start.elapsed() <= within, // reset counts as closed
        }
    }
}

fn post(body: &str) -> String {
    format!(
        "POST /v1/messages HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn roundtrip(addr: SocketAddr, raw: &str) -> Resp {
    let mut c = Client::connect(addr);
    c.send(raw.as_bytes());
    c.read_response()
}

#[test]
fn post_success_reaches_gateway() {
    let (server, gw) = start(config());
    let resp = roundtrip(
        server.local_addr(),
        &post(r#"{"device":"dev-1","payload":"héllo","qos":0}"#),
    );
    assert_eq!(resp.status, 202);
    assert_eq!(resp.json(), serde_json::json!({"id": "push-1"}));
    let resp = roundtrip(server.local_addr(), &post(r#"{"device":"dev-2","payload":""}"#));
    assert_eq!(resp.status, 202);
    assert_eq!(
        gw.calls(),
        vec![
            PushRequest {
                device: "dev-1".into(),
                payload: "héllo".as_bytes().to_vec(),
                qos: 0
            },
            PushRequest {
                device: "dev-2".into(),
                payload: Vec::new(),
                qos: 1
            },
        ]
    );
    server.shutdown();
}

#[test]
fn keep_alive_three_requests_on_one_connection() {
    let (server, gw) = start(config());
    let mut c = Client::connect(server.local_addr());
    for i in 1..=3 {
        c.send(post(&format!(r#"{{"device":"d{i}","payload":"p"}}"#)).as_bytes());
        let resp = c.read_response();
        assert_eq!(resp.status, 202);
        assert_eq!(resp.header("connection"), Some("keep-alive"));
        assert_eq!(resp.json()["id"], format!("push-{i}"));
    }
    assert_eq!(gw.calls().len(), 3);
    server.shutdown();
}

#[test]
fn pipelined_requests_answered_in_order() {
    let (server, _gw) = start(config());
    let mut c = Client::connect(server.local_addr());
    let both = format!(
        "{}{}GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
        post(r#"{"device":"a","payload":"1"}"#),
        post(r#"{"device":"b","payload":"2"}"#)
    );
    c.send(both.as_bytes());
    assert_eq!(c.read_response().json()["id"], "push-1");
    assert_eq!(c.read_response().json()["id"], "push-2");
    assert_eq!(c.read_response().json(), serde_json::json!({"status": "ok"}));
    server.shutdown();
}

#[test]
fn connection_close_is_honoured() {
    let (server, _gw) = start(config());
    let mut c = Client::connect(server.local_addr());
    c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let resp = c.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(c.closed_within(Duration::from_secs(2)));
    server.shutdown();
}

#[test]
fn http10_closes_unless_keep_alive() {
    let (server, _gw) = start(config());
    let mut c = Client::connect(server.local_addr());
    c.send(b"GET /healthz HTTP/1.0\r\n\r\n");
    let resp = c.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(c.closed_within(Duration::from_secs(2)));

    let mut c = Client::connect(server.local_addr());
    for _ in 0..2 {
        c.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let resp = c.read_response();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("connection"), Some("keep-alive"));
    }
    server.shutdown();
}

#[test]
fn bad_bodies_are_400_and_connection_survives() {
    let (server, gw) = start(config());
    let mut c = Client::connect(server.local_addr());
    let cases = [
        ("not json", "{not json"),
        ("empty body", ""),
        ("wrong type device", r#"{"device":5,"payload":"x"}"#),
        ("wrong type payload", r#"{"device":"d","payload":[1,2]}"#),
        ("wrong type qos", r#"{"device":"d","payload":"x","qos":"1"}"#),
        ("missing device", r#"{"payload":"x"}"#),
        ("missing payload", r#"{"device":"d"}"#),
        ("empty device", r#"{"device":"","payload":"x"}"#),
        ("qos 2", r#"{"device":"d","payload":"x","qos":2}"#),
        ("qos 300", r#"{"device":"d","payload":"x","qos":300}"#),
        ("unknown field", r#"{"device":"d","payload":"x","retain":true}"#),
        ("not an object", r#"["d","x"]"#),
    ];
    for (what, body) in cases {
        c.send(post(body).as_bytes());
        let resp = c.read_response();
        assert_eq!(resp.status, 400, "{what}: {resp:?}");
        assert_eq!(resp.error_code(), "bad_request", "{what}");
        assert_eq!(resp.header("connection"), Some("keep-alive"), "{what}");
    }
    assert!(gw.calls().is_empty());
    server.shutdown();
}

#[test]
fn oversize_body_rejected_from_content_length() {
    let (server, gw) = start(config());
    let mut c = Client::connect(server.local_addr());
    // The body is never sent: the answer must come from Content-Length alone.
    c.send(b"POST /v1/messages HTTP/1.1\r\nHost: t\r\nContent-Length: 65537\r\n\r\n");
    let resp = c.read_response();
    assert_eq!(resp.status, 413);
    assert_eq!(resp.error_code(), "body_too_large");
    assert!(c.closed_within(Duration::from_secs(2)));
    assert!(gw.calls().is_empty());
    server.shutdown();
}

#[test]
fn oversize_headers_are_431() {
    let (server, _gw) = start(config());
    let mut c = Client::connect(server.local_addr());
    let raw = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    c.send(raw.as_bytes());
    let resp = c.read_response();
    assert_eq!(resp.status, 431);
    assert_eq!(resp.error_code(), "headers_too_large");
    assert!(c.closed_within(Duration::from_secs(2)));
    server.shutdown();
}

#[test]
fn unknown_path_404_wrong_method_405() {
    let (server, _gw) = start(config());
    let addr = server.local_addr();
    let resp = roundtrip(addr, "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 404);
    assert_eq!(resp.error_code(), "not_found");
    for (raw, allow) in [
        ("GET /v1/messages HTTP/1.1\r\n\r\n", "POST"),
        ("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "GET"),
        ("DELETE /healthz HTTP/1.1\r\n\r\n", "GET"),
    ] {
        let resp = roundtrip(addr, raw);
        assert_eq!(resp.status, 405, "{raw}");
        assert_eq!(resp.header("allow"), Some(allow), "{raw}");
        assert_eq!(resp.error_code(), "method_not_allowed");
    }
    server.shutdown();
}

#[test]
fn push_errors_map_to_statuses() {
    let (server, _gw) = start(config());
    let mut c = Client::connect(server.local_addr());

    c.send(post(r#"{"device":"offline","payload":"x"}"#).as_bytes());
    let resp = c.read_response();
    assert_eq!(resp.status, 404);
    assert_eq!(
        resp.json(),
        serde_json::json!({"error": "device_offline", "message": "device offline is not connected"})
    );

    c.send(post(r#"{"device":"busy","payload":"x"}"#).as_bytes());
    let resp = c.read_response();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("retry-after"), Some("7"));
    assert_eq!(resp.error_code(), "overloaded");

    c.send(post(r#"{"device":"huge","payload":"x"}"#).as_bytes());
    let resp = c.read_response();
    assert_eq!(resp.status, 413);
    assert_eq!(resp.error_code(), "payload_too_large");

    c.send(post(r#"{"device":"bye","payload":"x"}"#).as_bytes());
    let resp = c.read_response();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.error_code(), "shutting_down");
    assert_eq!(resp.header("connection"), Some("close"));
    server.shutdown();
}

#[test]
fn metrics_and_healthz() {
    let (server, _gw) = start(config());
    let resp = roundtrip(server.local_addr(), "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 200);
    let ct = resp.header("content-type").expect("content type");
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    assert!(String::from_utf8_lossy(&resp.body).contains("pulsegate_pushes_total 3"));
    let resp = roundtrip(server.local_addr(), "GET /healthz?probe=1 HTTP/1.1\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json(), serde_json::json!({"status": "ok"}));
    server.shutdown();
}

#[test]
fn max_connections_exceeded_gets_503() {
    let (server, _gw) = start(HttpConfig {
        max_connections: 1,
        ..config()
    });
    let mut first = Client::connect(server.local_addr());
    first.send(b"GET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(first.read_response().status, 200); // now certainly counted as active

    let mut second = Client::connect(server.local_addr());
    second.send(b"GET /healthz HTTP/1.1\r\n\r\n");
    let resp = second.read_response();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.error_code(), "too_many_connections");
    assert!(second.closed_within(Duration::from_secs(2)));

    // Once the first leaves, a new connection is served again.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let resp = roundtrip(server.local_addr(), "GET /healthz HTTP/1.1\r\n\r\n");
        if resp.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        thread::sleep(Duration::from_millis(20));
    }
    server.shutdown();
}

#[test]
fn idle_timeout_closes_socket() {
    let (server, _gw) = start(HttpConfig {
        idle_timeout_ms: 200,
        ..config()
    });
    let mut c = Client::connect(server.local_addr());
    c.send(b"GET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    let start = Instant::now();
    assert!(c.closed_within(Duration::from_secs(3)));
    assert!(start.elapsed() >= Duration::from_millis(150), "closed too early");
    server.shutdown();
}

#[test]
fn slowloris_head_times_out_with_408() {
    let (server, _gw) = start(HttpConfig {
        idle_timeout_ms: 300,
        ..config()
    });
    let mut c = Client::connect(server.local_addr());
    let start = Instant::now();
    // Trickle a byte every 100 ms: a per-read timeout would never fire, the request deadline must.
    for b in b"GET /healthz HTTP/1.1\r\nX-Slow: " {
        if c.reader.get_mut().write_all(&[*b]).is_err() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
        if start.elapsed() > Duration::from_millis(600) {
            break;
        }
    }
    let resp = c.read_response();
    assert_eq!(resp.status, 408);
    assert!(start.elapsed() < Duration::from_secs(2));
    server.shutdown();
}

#[test]
fn malformed_request_is_400_and_closed() {
    let (server, _gw) = start(config());
    let mut c = Client::connect(server.local_addr());
    c.send(b"GET /healthz HTTP/1.1\r\nBad Header Without Colon\r\n\r\n");
    let resp = c.read_response();
    assert_eq!(resp.status, 400);
    assert_eq!(resp.error_code(), "bad_request");
    assert!(c.closed_within(Duration::from_secs(2)));
    server.shutdown();
}

#[test]
fn chunked_and_missing_length_are_411() {
    let (server, gw) = start(config());
    let resp = roundtrip(
        server.local_addr(),
        "POST /v1/messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(resp.status, 411);
    assert_eq!(resp.error_code(), "length_required");
    let resp = roundtrip(server.local_addr(), "POST /v1/messages HTTP/1.1\r\n\r\n");
    assert_eq!(resp.status, 411);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(gw.calls().is_empty());
    server.shutdown();
}

#[test]
fn expect_continue_gets_interim_response() {
    let (server, gw) = start(config());
    let mut c = Client::connect(server.local_addr());
    let body = r#"{"device":"d","payload":"x"}"#;
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.send(head.as_bytes());
    assert_eq!(c.read_one().status, 100);
    c.send(body.as_bytes());
    assert_eq!(c.read_response().status, 202);
    assert_eq!(gw.calls().len(), 1);
    server.shutdown();
}

#[test]
fn max_requests_per_connection_closes() {
    let (server, _gw) = start(HttpConfig {
        max_requests_per_connection: 2,
        ..config()
    });
    let mut c = Client::connect(server.local_addr());
    c.send(b"GET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(c.read_response().header("connection"), Some("keep-alive"));
    c.send(b"GET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(c.read_response().header("connection"), Some("close"));
    assert!(c.closed_within(Duration::from_secs(2)));
    server.shutdown();
}

#[test]
fn gateway_panic_is_500_and_server_survives() {
    let (server, _gw) = start(config());
    let resp = roundtrip(server.local_addr(), &post(r#"{"device":"panic","payload":"x"}"#));
    assert_eq!(resp.status, 500);
    assert_eq!(resp.error_code(), "internal_error");
    let resp = roundtrip(server.local_addr(), &post(r#"{"device":"ok","payload":"x"}"#));
    assert_eq!(resp.status, 202);
    server.shutdown();
}

#[test]
fn shutdown_is_prompt_with_connections_open() {
    let (server, _gw) = start(HttpConfig {
        idle_timeout_ms: 30_000,
        ..config()
    });
    let addr = server.local_addr();
    let mut idle = Client::connect(addr);
    idle.send(b"GET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(idle.read_response().status, 200);
    let mut partial = Client::connect(addr);
    partial.send(b"GET /healthz HTTP/1.1\r\nHost:");
    thread::sleep(Duration::from_millis(50));

    let start = Instant::now();
    server.shutdown();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        start.elapsed()
    );
    assert!(idle.closed_within(Duration::from_secs(1)));
    assert!(partial.closed_within(Duration::from_secs(1)));
    // The listener is gone with the server: new connections are refused.
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn zero_limits_refuse_to_start() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let gateway = Arc::new(FakeGateway::default());
    let err = HttpServer::start(
        listener,
        HttpConfig {
            max_connections: 0,
            ..config()
        },
        gateway,
    )
    .err()
    .expect("zero max_connections is refused");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}
