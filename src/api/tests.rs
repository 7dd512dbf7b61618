//! End-to-end tests of the API module over real sockets on 127.0.0.1 (port 0), against a fake
//! `Gateway` that records every call and answers as each test configures it. Every behaviour
//! test also runs over HTTPS (`tls_tests` sets `OVER_TLS` and calls it): `start` then serves
//! TLS and `Client::connect` speaks TLS to it.
//!
//! Owns: the fake gateway, a tiny blocking test client (plain or rustls), and the behaviour tests.
//! Must never: leave a server running (each test shuts its own down), wait without a socket
//! timeout, or reach any address but loopback.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use serde_json::{Value, json};

use super::{ApiError, Caller, Gateway, HttpConfig, HttpCounters, HttpServer, SubmitReply};
use crate::tls::ServerTls;
use crate::tls::test_pki::TestPki;

#[path = "tls_tests.rs"]
mod tls_tests;

/// The `Authorization` value every helper-built request carries.
const KEY: &str = "Bearer test-key";

/// What the fake answers to submit/status/update/cancel/mechanisms.
#[derive(Debug, Clone)]
enum Reply {
    /// `{"method": <name>, "call": <n>, "id": <id or null>}`, n counting calls from 1.
    Echo,
    Json(Value),
    Fail(ApiError),
    Panic,
    /// Blocks the handler thread this long, then echoes.
    Sleep(Duration),
}

/// One recorded call of a caller-facing gateway method.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    method: &'static str,
    caller: Caller,
    id: Option<String>,
    body: Vec<u8>,
}

fn call(method: &'static str, sp: &str, id: Option<&str>, body: &[u8]) -> Call {
    Call {
        method,
        caller: Caller::sp(sp),
        id: id.map(str::to_owned),
        body: body.to_vec(),
    }
}

struct FakeGateway {
    /// What `authenticate` returns (default: caller "acme").
    auth: Mutex<Result<Caller, ApiError>>,
    reply: Mutex<Reply>,
    /// Every `Authorization` value `authenticate` was given, in order.
    auth_headers: Mutex<Vec<Option<String>>>,
    calls: Mutex<Vec<Call>>,
    metrics_calls: AtomicUsize,
}

impl Default for FakeGateway {
    fn default() -> FakeGateway {
        FakeGateway {
            auth: Mutex::new(Ok(Caller::sp("acme"))),
            reply: Mutex::new(Reply::Echo),
            auth_headers: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
            metrics_calls: AtomicUsize::new(0),
        }
    }
}

/// The fake panics on purpose in one test; later calls must still see the data.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeGateway {
    fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    fn auth_headers(&self) -> Vec<Option<String>> {
        lock(&self.auth_headers).clone()
    }

    fn set_auth(&self, result: Result<Caller, ApiError>) {
        *lock(&self.auth) = result;
    }

    fn set_reply(&self, reply: Reply) {
        *lock(&self.reply) = reply;
    }

    fn answer(&self, method: &'static str, caller: &Caller, id: Option<&str>, body: &[u8]) -> Result<Value, ApiError> {
        let n = {
            let mut calls = lock(&self.calls);
            calls.push(Call {
                method,
                caller: caller.clone(),
                id: id.map(str::to_owned),
                body: body.to_vec(),
            });
            calls.len()
        };
        let reply = lock(&self.reply).clone();
        match reply {
            Reply::Echo => Ok(json!({"method": method, "call": n, "id": id})),
            Reply::Json(v) => Ok(v),
            Reply::Fail(e) => Err(e),
            Reply::Panic => panic!("fake gateway panics on purpose"),
            Reply::Sleep(d) => {
                thread::sleep(d);
                Ok(json!({"method": method, "call": n, "id": id}))
            }
        }
    }
}

impl Gateway for FakeGateway {
    fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, ApiError> {
        lock(&self.auth_headers).push(authorization.map(str::to_owned));
        lock(&self.auth).clone()
    }

    fn submit_then(&self, caller: &Caller, body: &[u8], reply: SubmitReply) {
        reply.send(self.answer("submit", caller, None, body));
    }

    fn status(&self, caller: &Caller, id: &str) -> Result<Value, ApiError> {
        self.answer("status", caller, Some(id), b"")
    }

    fn update(&self, caller: &Caller, id: &str, body: &[u8]) -> Result<Value, ApiError> {
        self.answer("update", caller, Some(id), body)
    }

    fn cancel(&self, caller: &Caller, id: &str) -> Result<Value, ApiError> {
        self.answer("cancel", caller, Some(id), b"")
    }

    fn mechanisms(&self, caller: &Caller) -> Result<Value, ApiError> {
        self.answer("mechanisms", caller, None, b"")
    }

    fn heartbeat_limit(&self, caller: &Caller, update: Option<&[u8]>) -> Result<Value, ApiError> {
        match update {
            None => self.answer("heartbeat_limit_get", caller, None, b""),
            Some(body) => self.answer("heartbeat_limit_put", caller, None, body),
        }
    }

    fn metrics_text(&self) -> String {
        self.metrics_calls.fetch_add(1, Ordering::SeqCst);
        "# TYPE pulsegate_pushes_total counter\npulsegate_pushes_total 3\n".into()
    }
}

fn config() -> HttpConfig {
    HttpConfig {
        max_connections: 16,
        connections_per_ip_max: 16,
        max_header_bytes: 16 * 1024,
        max_body_bytes: 64 * 1024,
        header_timeout_ms: 5_000,
        body_timeout_ms: 5_000,
        idle_timeout_ms: 5_000,
        max_requests_per_connection: 100,
        handler_threads: 4,
        handler_queue_max: 64,
    }
}

thread_local! {
    /// Set by a `tls_tests` wrapper: this test's `start` serves HTTPS.
    static OVER_TLS: Cell<bool> = const { Cell::new(false) };
}

/// Client configs of the HTTPS servers tests started, by address (`Client::connect` looks here).
fn tls_servers() -> MutexGuard<'static, HashMap<SocketAddr, Arc<ClientConfig>>> {
    static SERVERS: OnceLock<Mutex<HashMap<SocketAddr, Arc<ClientConfig>>>> = OnceLock::new();
    lock(SERVERS.get_or_init(Mutex::default))
}

/// One test CA and server identity (127.0.0.1) for the whole test binary.
fn test_pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pulsegate-api-tls-{}", std::process::id()));
        TestPki::new(&dir, "api-test-ca", &["127.0.0.1"])
    })
}

fn start(config: HttpConfig) -> (HttpServer, Arc<FakeGateway>) {
    let tls = OVER_TLS.get().then(|| Arc::new(test_pki().server_tls(&[b"http/1.1"])));
    let (server, gateway, _) = start_with(config, tls);
    (server, gateway)
}

/// A server over `tls` (registered for `Client::connect`, trusting the test CA) or plain.
fn start_with(config: HttpConfig, tls: Option<Arc<ServerTls>>) -> (HttpServer, Arc<FakeGateway>, Arc<HttpCounters>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let gateway = Arc::new(FakeGateway::default());
    let counters = Arc::new(HttpCounters::default());
    let over_tls = tls.is_some();
    let server = HttpServer::start(listener, config, gateway.clone(), tls, counters.clone()).expect("server starts");
    // The map outlives servers and ports are reused: a plain server must
    // clear what an earlier HTTPS server on its port left behind.
    if over_tls {
        tls_servers().insert(server.local_addr(), test_pki().client_config(&[b"http/1.1"]));
    } else {
        tls_servers().remove(&server.local_addr());
    }
    (server, gateway, counters)
}

/// What a test client reads and writes: a socket, or rustls over one.
trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

struct Client {
    reader: BufReader<Box<dyn Duplex>>,
    /// The socket under `reader`, for timeouts.
    tcp: TcpStream,
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

    fn json(&self) -> Value {
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    fn error_code(&self) -> String {
        self.error().0
    }

    /// `(code, message)` of a JSON error body.
    fn error(&self) -> (String, String) {
        let v = self.json();
        let message = v["message"].as_str().expect("error has a string message").to_owned();
        let code = v["error"].as_str().expect("error code is a string").to_owned();
        (code, message)
    }
}

impl Client {
    /// Plain TCP, or TLS when `addr` is an HTTPS server a test started.
    fn connect(addr: SocketAddr) -> Client {
        let tls = tls_servers().get(&addr).cloned();
        match tls {
            Some(config) => Client::connect_tls(addr, config),
            None => {
                let stream = Client::tcp(addr);
                let tcp = stream.try_clone().expect("clone socket");
                Client {
                    reader: BufReader::new(Box::new(stream)),
                    tcp,
                }
            }
        }
    }

    /// TLS with `config` (the handshake happens at the first write or read).
    fn connect_tls(addr: SocketAddr, config: Arc<ClientConfig>) -> Client {
        let stream = Client::tcp(addr);
        let tcp = stream.try_clone().expect("clone socket");
        let name = ServerName::from(addr.ip());
        let conn = ClientConnection::new(config, name).expect("client connection");
        Client {
            reader: BufReader::new(Box::new(StreamOwned::new(conn, stream))),
            tcp,
        }
    }

    fn tcp(addr: SocketAddr) -> TcpStream {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .expect("write timeout");
        stream
    }

    fn send(&mut self, raw: impl AsRef<[u8]>) {
        let w = self.reader.get_mut();
        w.write_all(raw.as_ref())
            .and_then(|()| w.flush())
            .expect("send request");
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
        self.tcp.set_read_timeout(Some(within)).expect("read timeout");
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

/// A request carrying `Authorization: KEY`; a body also adds Content-Length.
fn request(method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let length = body
        .map(|b| format!("Content-Length: {}\r\n", b.len()))
        .unwrap_or_default();
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: {KEY}\r\n{length}\r\n").into_bytes();
    raw.extend_from_slice(body.unwrap_or_default());
    raw
}

fn post(body: &str) -> Vec<u8> {
    request("POST", "/v1/messages", Some(body.as_bytes()))
}

fn roundtrip(addr: SocketAddr, raw: impl AsRef<[u8]>) -> Resp {
    let mut c = Client::connect(addr);
    c.send(raw);
    c.read_response()
}

// ---- Routing and the Gateway contract ----

#[test]
fn post_returns_201_with_gateway_json() {
    let (server, gw) = start(config());
    let reply = json!({"id": "msg-7", "state": "queued", "tags": ["a", "é"], "n": 1.5});
    gw.set_reply(Reply::Json(reply.clone()));
    let body = r#"{"device":"dev-1","payload":"héllo"}"#;
    let resp = roundtrip(server.local_addr(), post(body));
    assert_eq!(resp.status, 201);
    assert_eq!(resp.header("connection"), Some("keep-alive"));
    assert_eq!(resp.json(), reply);
    assert_eq!(gw.calls(), vec![call("submit", "acme", None, body.as_bytes())]);
    assert_eq!(gw.auth_headers(), vec![Some(KEY.to_owned())]);

    // Whatever JSON the gateway returns is sent as is, not only objects.
    gw.set_reply(Reply::Json(json!(["x", 1])));
    let resp = roundtrip(server.local_addr(), post("{}"));
    assert_eq!(resp.status, 201);
    assert_eq!(resp.json(), json!(["x", 1]));
    server.shutdown();
}

#[test]
fn submit_receives_raw_body_bytes() {
    let (server, gw) = start(config());
    let mut c = Client::connect(server.local_addr());
    // Validation belongs to the gateway: the API passes every body through byte for byte.
    let bodies: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        Vec::new(),
        br#"{"device":5,"payload":[1,2],"qos":"1","retain":true}"#.to_vec(),
        r#"{"device":"d","payload":"héllo ✓"}"#.as_bytes().to_vec(),
        b"\xff\xfe\x00 binary \r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        b"  [\"d\", \"x\"]\n".to_vec(),
    ];
    for (i, body) in bodies.iter().enumerate() {
        c.send(request("POST", "/v1/messages", Some(body)));
        let resp = c.read_response();
        assert_eq!(resp.status, 201, "body {i}: {resp:?}");
        assert_eq!(resp.header("connection"), Some("keep-alive"), "body {i}");
        assert_eq!(resp.json()["call"], i + 1, "body {i}");
    }
    let expected: Vec<Call> = bodies.iter().map(|b| call("submit", "acme", None, b)).collect();
    assert_eq!(gw.calls(), expected);
    server.shutdown();
}

#[test]
fn body_exactly_at_limit_reaches_gateway() {
    let (server, gw) = start(HttpConfig {
        max_body_bytes: 1024,
        ..config()
    });
    let body: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
    let resp = roundtrip(server.local_addr(), request("POST", "/v1/messages", Some(&body)));
    assert_eq!(resp.status, 201);
    let resp = roundtrip(
        server.local_addr(),
        request("PATCH", "/v1/messages/m", Some(&[b'x'; 1025])),
    );
    assert_eq!(resp.status, 413);
    assert_eq!(resp.error_code(), "body_too_large");
    assert_eq!(gw.calls(), vec![call("submit", "acme", None, &body)]);
    server.shutdown();
}

#[test]
fn auth_refused_is_401_and_gateway_not_called() {
    let (server, gw) = start(config());
    gw.set_auth(Err(ApiError::Unauthorized("unknown API key".into())));
    let mut c = Client::connect(server.local_addr());
    let requests = [
        post(r#"{"device":"d","payload":"x"}"#),
        request("GET", "/v1/messages/abc", None),
        request("PATCH", "/v1/messages/abc", Some(b"{}")),
        request("DELETE", "/v1/messages/abc", None),
        request("GET", "/v1/mechanisms", None),
        b"POST /v1/messages HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
    ];
    for raw in &requests {
        c.send(raw);
        let resp = c.read_response();
        let what = String::from_utf8_lossy(raw);
        assert_eq!(resp.status, 401, "{what}");
        assert_eq!(
            resp.header("www-authenticate"),
            Some("Bearer realm=\"pulsegate\""),
            "{what}"
        );
        assert_eq!(
            resp.error(),
            ("unauthorized".into(), "unknown API key".into()),
            "{what}"
        );
        // The body was consumed, so the connection stays usable.
        assert_eq!(resp.header("connection"), Some("keep-alive"), "{what}");
    }
    let mut expected = vec![Some(KEY.to_owned()); requests.len() - 1];
    expected.push(None);
    assert_eq!(gw.auth_headers(), expected);
    assert!(gw.calls().is_empty(), "{:?}", gw.calls());

    // Other refusals from authenticate map like any ApiError.
    gw.set_auth(Err(ApiError::RateLimited { retry_after_s: 9 }));
    c.send(post("{}"));
    let resp = c.read_response();
    assert_eq!(resp.status, 429);
    assert_eq!(resp.header("retry-after"), Some("9"));
    assert_eq!(resp.header("www-authenticate"), None);
    assert!(gw.calls().is_empty());
    server.shutdown();
}

#[test]
fn authorization_header_reaches_authenticate() {
    let (server, gw) = start(config());
    gw.set_auth(Ok(Caller::sp("sp-42")));
    let addr = server.local_addr();
    let cases: [(&str, Option<&str>); 4] = [
        ("Authorization: Bearer k-123\r\n", Some("Bearer k-123")),
        ("authorization:    Bearer spaced   \r\n", Some("Bearer spaced")),
        ("AUTHORIZATION: Basic dXNlcjpwdw==\r\n", Some("Basic dXNlcjpwdw==")),
        ("", None),
    ];
    for (header, _) in cases {
        let raw = format!("POST /v1/messages HTTP/1.1\r\nHost: t\r\n{header}Content-Length: 2\r\n\r\n{{}}");
        assert_eq!(roundtrip(addr, raw).status, 201, "{header:?}");
    }
    let seen: Vec<Option<String>> = cases.iter().map(|(_, v)| v.map(str::to_owned)).collect();
    assert_eq!(gw.auth_headers(), seen);
    // The caller authenticate returned is the one the gateway method gets.
    assert!(gw.calls().iter().all(|c| c.caller == Caller::sp("sp-42")));
    assert_eq!(gw.calls().len(), cases.len());
    server.shutdown();
}

#[test]
fn message_id_routes_to_status_update_cancel() {
    let (server, gw) = start(config());
    let mut c = Client::connect(server.local_addr());
    let patch = br#"{"ttl_s": 60, "note": "h\u00e9"}"#;
    let sent = [
        ("status", request("GET", "/v1/messages/abc", None)),
        ("update", request("PATCH", "/v1/messages/abc", Some(patch))),
        ("cancel", request("DELETE", "/v1/messages/abc", None)),
        ("status", request("GET", "/v1/messages/abc?verbose=1", None)),
    ];
    for (i, (method, raw)) in sent.iter().enumerate() {
        c.send(raw);
        let resp = c.read_response();
        assert_eq!(resp.status, 200, "{method}");
        assert_eq!(resp.json(), json!({"method": method, "call": i + 1, "id": "abc"}));
    }
    assert_eq!(
        gw.calls(),
        vec![
            call("status", "acme", Some("abc"), b""),
            call("update", "acme", Some("abc"), patch),
            call("cancel", "acme", Some("abc"), b""),
            call("status", "acme", Some("abc"), b""),
        ]
    );
    assert_eq!(gw.auth_headers().len(), sent.len());

    gw.set_reply(Reply::Json(json!({"id": "abc", "state": "cancelled"})));
    let resp = roundtrip(server.local_addr(), request("DELETE", "/v1/messages/abc", None));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json(), json!({"id": "abc", "state": "cancelled"}));
    server.shutdown();
}

#[test]
fn mechanisms_route_calls_mechanisms() {
    let (server, gw) = start(config());
    let reply = json!({"mechanisms": [{"name": "mqtt", "qos": [0, 1]}]});
    gw.set_reply(Reply::Json(reply.clone()));
    let resp = roundtrip(server.local_addr(), request("GET", "/v1/mechanisms?x=1", None));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json(), reply);
    assert_eq!(gw.calls(), vec![call("mechanisms", "acme", None, b"")]);
    assert_eq!(gw.auth_headers(), vec![Some(KEY.to_owned())]);
    server.shutdown();
}

#[test]
fn heartbeat_limit_route_gets_and_puts_and_maps_forbidden() {
    let (server, gw) = start(config());
    let addr = server.local_addr();
    let resp = roundtrip(addr, request("GET", "/v1/admin/heartbeat-limit", None));
    assert_eq!(resp.status, 200);
    let body = br#"{"max_heartbeats_per_s": 500}"#;
    let resp = roundtrip(addr, request("PUT", "/v1/admin/heartbeat-limit", Some(body)));
    assert_eq!(resp.status, 200);
    assert_eq!(
        gw.calls(),
        vec![
            call("heartbeat_limit_get", "acme", None, b""),
            call("heartbeat_limit_put", "acme", None, body)
        ]
    );
    let resp = roundtrip(addr, request("DELETE", "/v1/admin/heartbeat-limit", None));
    assert_eq!(resp.status, 405);
    gw.set_reply(Reply::Fail(ApiError::Forbidden("operators only".into())));
    let resp = roundtrip(addr, request("PUT", "/v1/admin/heartbeat-limit", Some(body)));
    assert_eq!(resp.status, 403);
    server.shutdown();
}

#[test]
fn unknown_paths_are_404_without_auth() {
    let (server, gw) = start(config());
    let addr = server.local_addr();
    for path in [
        "/v1/messages/",
        "/v1/messages/a/b",
        "/v1/messages//",
        "/v1/messagesabc",
        "/v1/mechanisms/",
        "/v1",
        "/nope",
        "/",
    ] {
        for method in ["GET", "DELETE"] {
            let resp = roundtrip(addr, request(method, path, None));
            assert_eq!(resp.status, 404, "{method} {path}");
            assert_eq!(resp.error_code(), "not_found", "{method} {path}");
            assert_eq!(resp.header("connection"), Some("keep-alive"));
        }
        let resp = roundtrip(addr, request("PATCH", path, Some(b"{}")));
        assert_eq!(resp.status, 404, "PATCH {path}");
    }
    assert!(gw.auth_headers().is_empty(), "{:?}", gw.auth_headers());
    assert!(gw.calls().is_empty());
    server.shutdown();
}

#[test]
fn wrong_method_is_405_with_allow() {
    let (server, gw) = start(config());
    let addr = server.local_addr();
    let cases: [(&str, &str, &str); 12] = [
        ("GET", "/v1/messages", "POST"),
        ("PUT", "/v1/messages", "POST"),
        ("DELETE", "/v1/messages", "POST"),
        ("POST", "/v1/mechanisms", "GET"),
        ("DELETE", "/v1/mechanisms", "GET"),
        ("POST", "/v1/messages/abc", "GET, PATCH, DELETE"),
        ("PUT", "/v1/messages/abc", "GET, PATCH, DELETE"),
        ("HEAD", "/v1/messages/abc", "GET, PATCH, DELETE"),
        ("POST", "/metrics", "GET"),
        ("PUT", "/metrics", "GET"),
        ("DELETE", "/healthz", "GET"),
        ("POST", "/healthz", "GET"),
    ];
    for (method, path, allow) in cases {
        let body = matches!(method, "POST" | "PUT").then_some(&b"{}"[..]);
        let resp = roundtrip(addr, request(method, path, body));
        assert_eq!(resp.status, 405, "{method} {path}");
        assert_eq!(resp.header("allow"), Some(allow), "{method} {path}");
        assert_eq!(resp.error_code(), "method_not_allowed", "{method} {path}");
    }
    assert!(gw.auth_headers().is_empty(), "405 is decided before authentication");
    assert!(gw.calls().is_empty());
    server.shutdown();
}

#[test]
fn api_errors_map_to_statuses() {
    let (server, gw) = start(config());
    let addr = server.local_addr();
    // (error, status, code, Retry-After, text the message must contain)
    let table: [(ApiError, u16, &str, Option<&str>, &str); 10] = [
        (
            ApiError::Unauthorized("key revoked".into()),
            401,
            "unauthorized",
            None,
            "key revoked",
        ),
        (
            ApiError::BadRequest("qos must be 0 or 1".into()),
            400,
            "bad_request",
            None,
            "qos must be 0 or 1",
        ),
        (
            ApiError::NotFound("no message m1".into()),
            404,
            "not_found",
            None,
            "no message m1",
        ),
        (
            ApiError::DeviceOffline("dev-9".into()),
            404,
            "device_offline",
            None,
            "dev-9",
        ),
        (
            ApiError::Conflict("already delivered".into()),
            409,
            "conflict",
            None,
            "already delivered",
        ),
        (
            ApiError::PayloadTooLarge { max_bytes: 4096 },
            413,
            "payload_too_large",
            None,
            "4096",
        ),
        (
            ApiError::RateLimited { retry_after_s: 3 },
            429,
            "rate_limited",
            Some("3"),
            "",
        ),
        (
            ApiError::Overloaded { retry_after_s: 7 },
            503,
            "overloaded",
            Some("7"),
            "",
        ),
        (
            ApiError::Unavailable("store failed".into()),
            503,
            "unavailable",
            None,
            "store failed",
        ),
        (ApiError::ShuttingDown, 503, "shutting_down", None, ""),
    ];
    let routes: [(&str, &str, Option<&[u8]>); 5] = [
        ("POST", "/v1/messages", Some(br#"{"device":"d","payload":"x"}"#)),
        ("GET", "/v1/messages/m1", None),
        ("PATCH", "/v1/messages/m1", Some(b"{}")),
        ("DELETE", "/v1/messages/m1", None),
        ("GET", "/v1/mechanisms", None),
    ];
    let variants = table.len();
    for (err, status, code, retry_after, text) in table {
        gw.set_reply(Reply::Fail(err.clone()));
        for (method, path, body) in routes {
            let what = format!("{err:?} on {method} {path}");
            let mut c = Client::connect(addr);
            c.send(request(method, path, body));
            let resp = c.read_response();
            assert_eq!(resp.status, status, "{what}");
            let (got_code, message) = resp.error();
            assert_eq!(got_code, code, "{what}");
            assert!(message.contains(text), "{what}: {message:?}");
            assert_eq!(resp.header("retry-after"), retry_after, "{what}");
            let www = resp.header("www-authenticate");
            assert_eq!(www.is_some(), status == 401, "{what}: {www:?}");
            if err == ApiError::ShuttingDown {
                assert_eq!(resp.header("connection"), Some("close"), "{what}");
                assert!(c.closed_within(Duration::from_secs(2)), "{what}");
            } else {
                assert_eq!(resp.header("connection"), Some("keep-alive"), "{what}");
            }
        }
    }
    let methods: Vec<&str> = gw.calls().iter().map(|c| c.method).collect();
    let per_error = ["submit", "status", "update", "cancel", "mechanisms"];
    assert_eq!(methods, per_error.repeat(variants));
    server.shutdown();
}

#[test]
fn metrics_and_healthz_skip_authentication() {
    let (server, gw) = start(config());
    // Even a gateway that refuses every key serves these.
    gw.set_auth(Err(ApiError::Unauthorized("nobody".into())));
    let addr = server.local_addr();
    let resp = roundtrip(addr, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 200);
    let ct = resp.header("content-type").expect("content type");
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    assert!(String::from_utf8_lossy(&resp.body).contains("pulsegate_pushes_total 3"));
    let resp = roundtrip(addr, "GET /healthz?probe=1 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json(), json!({"status": "ok"}));
    // With a key present it is still not looked at.
    assert_eq!(roundtrip(addr, request("GET", "/metrics", None)).status, 200);
    assert_eq!(roundtrip(addr, request("GET", "/healthz", None)).status, 200);
    assert!(gw.auth_headers().is_empty(), "{:?}", gw.auth_headers());
    assert!(gw.calls().is_empty());
    assert_eq!(gw.metrics_calls.load(Ordering::SeqCst), 2);
    server.shutdown();
}

// ---- HTTP mechanics ----

#[test]
fn keep_alive_three_requests_on_one_connection() {
    let (server, gw) = start(config());
    let mut c = Client::connect(server.local_addr());
    for i in 1..=3 {
        c.send(post(&format!(r#"{{"device":"d{i}","payload":"p"}}"#)));
        let resp = c.read_response();
        assert_eq!(resp.status, 201);
        assert_eq!(resp.header("connection"), Some("keep-alive"));
        assert_eq!(resp.json()["call"], i);
    }
    assert_eq!(gw.calls().len(), 3);
    server.shutdown();
}

#[test]
fn pipelined_requests_answered_in_order() {
    let (server, gw) = start(config());
    let mut c = Client::connect(server.local_addr());
    let mut all = post(r#"{"device":"a","payload":"1"}"#);
    all.extend(request("PATCH", "/v1/messages/m1", Some(b"second")));
    all.extend(post(r#"{"device":"b","payload":"2"}"#));
    all.extend(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    c.send(&all);
    assert_eq!(
        c.read_response().json(),
        json!({"method": "submit", "call": 1, "id": null})
    );
    assert_eq!(
        c.read_response().json(),
        json!({"method": "update", "call": 2, "id": "m1"})
    );
    assert_eq!(
        c.read_response().json(),
        json!({"method": "submit", "call": 3, "id": null})
    );
    assert_eq!(c.read_response().json(), json!({"status": "ok"}));
    // Body boundaries come from Content-Length alone.
    assert_eq!(
        gw.calls(),
        vec![
            call("submit", "acme", None, br#"{"device":"a","payload":"1"}"#),
            call("update", "acme", Some("m1"), b"second"),
            call("submit", "acme", None, br#"{"device":"b","payload":"2"}"#),
        ]
    );
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
fn oversize_body_rejected_from_content_length() {
    let (server, gw) = start(config());
    let mut c = Client::connect(server.local_addr());
    // The body is never sent: the answer must come from Content-Length alone.
    c.send(format!(
        "POST /v1/messages HTTP/1.1\r\nHost: t\r\nAuthorization: {KEY}\r\nContent-Length: 65537\r\n\r\n"
    ));
    let resp = c.read_response();
    assert_eq!(resp.status, 413);
    assert_eq!(resp.error_code(), "body_too_large");
    assert!(c.closed_within(Duration::from_secs(2)));
    assert!(gw.calls().is_empty());
    assert!(gw.auth_headers().is_empty());
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
    c.send(raw);
    let resp = c.read_response();
    assert_eq!(resp.status, 431);
    assert_eq!(resp.error_code(), "headers_too_large");
    assert!(c.closed_within(Duration::from_secs(2)));
    server.shutdown();
}

#[test]
fn max_connections_exceeded_gets_503() {
    let (server, _gw) = start(HttpConfig {
        max_connections: 1,
        ..config()
    });
    let mut first = Client::connect(server.local_addr());
    first.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(first.read_response().status, 200); // now certainly counted as active

    let mut second = Client::connect(server.local_addr());
    second.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let resp = second.read_response();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.error_code(), "too_many_connections");
    assert!(second.closed_within(Duration::from_secs(2)));

    // Once the first leaves, a new connection is served again.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let resp = roundtrip(server.local_addr(), "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
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
    c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    let start = Instant::now();
    assert!(c.closed_within(Duration::from_secs(3)));
    assert!(start.elapsed() >= Duration::from_millis(150), "closed too early");
    server.shutdown();
}

#[test]
fn slowloris_head_times_out_with_408() {
    let (server, _gw) = start(HttpConfig {
        header_timeout_ms: 300,
        ..config()
    });
    let mut c = Client::connect(server.local_addr());
    let start = Instant::now();
    // Trickle a byte every 100 ms: a per-read timeout would never fire, the request deadline must.
    for b in b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: " {
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
    c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nBad Header Without Colon\r\n\r\n");
    let resp = c.read_response();
    assert_eq!(resp.status, 400);
    assert_eq!(resp.error_code(), "bad_request");
    assert!(c.closed_within(Duration::from_secs(2)));
    server.shutdown();
}

#[test]
fn http11_without_exactly_one_host_is_400() {
    let (server, gw) = start(config());
    let addr = server.local_addr();
    for raw in [
        format!("POST /v1/messages HTTP/1.1\r\nAuthorization: {KEY}\r\nContent-Length: 2\r\n\r\n{{}}"),
        "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_owned(),
    ] {
        let mut c = Client::connect(addr);
        c.send(&raw);
        let resp = c.read_response();
        assert_eq!(resp.status, 400, "{raw:?}");
        let (code, message) = resp.error();
        assert_eq!(code, "bad_request");
        assert!(message.contains("Host"), "{message}");
        assert!(c.closed_within(Duration::from_secs(2)), "{raw:?}");
    }
    // HTTP/1.0 needs no Host.
    assert_eq!(roundtrip(addr, "GET /healthz HTTP/1.0\r\n\r\n").status, 200);
    assert!(gw.calls().is_empty(), "{:?}", gw.calls());
    server.shutdown();
}

#[test]
fn body_deadline_cuts_a_slow_body_with_408() {
    let (server, gw) = start(HttpConfig {
        body_timeout_ms: 300,
        ..config()
    });
    let mut c = Client::connect(server.local_addr());
    let start = Instant::now();
    c.send(format!(
        "POST /v1/messages HTTP/1.1\r\nHost: t\r\nAuthorization: {KEY}\r\nContent-Length: 100\r\n\r\n"
    ));
    for _ in 0..6 {
        let w = c.reader.get_mut();
        if w.write_all(b"x").and_then(|()| w.flush()).is_err() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let resp = c.read_response();
    assert_eq!(resp.status, 408);
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(gw.calls().is_empty());
    server.shutdown();
}

#[test]
fn chunked_and_missing_length_are_411() {
    let (server, gw) = start(config());
    let addr = server.local_addr();
    for target in ["POST /v1/messages", "PATCH /v1/messages/abc"] {
        let mut c = Client::connect(addr);
        c.send(format!(
            "{target} HTTP/1.1\r\nHost: t\r\nAuthorization: {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ));
        let resp = c.read_response();
        assert_eq!(resp.status, 411, "{target}");
        assert_eq!(resp.error_code(), "length_required");
        assert!(c.closed_within(Duration::from_secs(2)), "{target}");
    }
    let mut c = Client::connect(addr);
    c.send(format!(
        "POST /v1/messages HTTP/1.1\r\nHost: t\r\nAuthorization: {KEY}\r\n\r\n"
    ));
    let resp = c.read_response();
    assert_eq!(resp.status, 411);
    assert_eq!(resp.error_code(), "length_required");
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(c.closed_within(Duration::from_secs(2)));
    assert!(gw.calls().is_empty(), "{:?}", gw.calls());
    server.shutdown();
}

#[test]
fn expect_continue_gets_interim_response() {
    let (server, gw) = start(config());
    let mut c = Client::connect(server.local_addr());
    let body = r#"{"device":"d","payload":"x"}"#;
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: t\r\nAuthorization: {KEY}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.send(head);
    assert_eq!(c.read_one().status, 100);
    c.send(body);
    assert_eq!(c.read_response().status, 201);
    assert_eq!(gw.calls(), vec![call("submit", "acme", None, body.as_bytes())]);
    server.shutdown();
}

#[test]
fn max_requests_per_connection_closes() {
    let (server, _gw) = start(HttpConfig {
        max_requests_per_connection: 2,
        ..config()
    });
    let mut c = Client::connect(server.local_addr());
    c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response().header("connection"), Some("keep-alive"));
    c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response().header("connection"), Some("close"));
    assert!(c.closed_within(Duration::from_secs(2)));
    server.shutdown();
}

#[test]
fn gateway_panic_is_500_and_server_survives() {
    let (server, gw) = start(config());
    gw.set_reply(Reply::Panic);
    let mut c = Client::connect(server.local_addr());
    c.send(post(r#"{"device":"d","payload":"x"}"#));
    let resp = c.read_response();
    assert_eq!(resp.status, 500);
    assert_eq!(resp.error_code(), "internal_error");
    assert!(c.closed_within(Duration::from_secs(2)));
    gw.set_reply(Reply::Echo);
    let resp = roundtrip(server.local_addr(), post(r#"{"device":"ok","payload":"x"}"#));
    assert_eq!(resp.status, 201);
    assert_eq!(resp.json()["call"], 2);
    server.shutdown();
}

#[test]
fn busy_handlers_answer_503_at_once_and_others_still_flow() {
    let (server, gw, counters) = start_with(
        HttpConfig {
            handler_threads: 1,
            handler_queue_max: 1,
            ..config()
        },
        OVER_TLS.get().then(|| Arc::new(test_pki().server_tls(&[b"http/1.1"]))),
    );
    gw.set_reply(Reply::Sleep(Duration::from_millis(600)));
    let addr = server.local_addr();
    // One request in the handler, one in the queue: the pool is full.
    let mut held: Vec<Client> = (0..2).map(|_| Client::connect(addr)).collect();
    for c in &mut held {
        c.send(post("{}"));
        thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let mut third = Client::connect(addr);
    third.send(post("{}"));
    let resp = third.read_response();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.error_code(), "handlers_busy");
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(counters.requests_refused_busy.load(Ordering::Relaxed), 1);
    // The two held requests are answered in turn, and the refused connection stays usable.
    for c in &mut held {
        assert_eq!(c.read_response().status, 201);
    }
    gw.set_reply(Reply::Echo);
    third.send(post("{}"));
    assert_eq!(third.read_response().status, 201);
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
    idle.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(idle.read_response().status, 200);
    let mut partial = Client::connect(addr);
    partial.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Partial:");
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
    type Zero = fn(&mut HttpConfig);
    let zeroed: [(&str, Zero); 10] = [
        ("max_connections", |c| c.max_connections = 0),
        ("connections_per_ip_max", |c| c.connections_per_ip_max = 0),
        ("max_header_bytes", |c| c.max_header_bytes = 0),
        ("max_body_bytes", |c| c.max_body_bytes = 0),
        ("header_timeout_ms", |c| c.header_timeout_ms = 0),
        ("body_timeout_ms", |c| c.body_timeout_ms = 0),
        ("idle_timeout_ms", |c| c.idle_timeout_ms = 0),
        ("max_requests_per_connection", |c| c.max_requests_per_connection = 0),
        ("handler_threads", |c| c.handler_threads = 0),
        ("handler_queue_max", |c| c.handler_queue_max = 0),
    ];
    for (name, zero) in zeroed {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let mut cfg = config();
        zero(&mut cfg);
        let err = HttpServer::start(listener, cfg, Arc::new(FakeGateway::default()), None, Arc::default())
            .err()
            .unwrap_or_else(|| panic!("zero {name} is refused"));
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name}");
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
}
