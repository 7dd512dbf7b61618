//! Tests for the outbound pool against a tiny local HTTP/1.1 server (plain, or
//! HTTPS with rustls and a certificate from a test CA).
//!
//! Owns the test server (loopback only, 127.0.0.1:0) and the tests. It must
//! never reach any address but 127.0.0.1, and every wait in it is bounded.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::url_policy::UrlPolicy;
use super::{OutboundPool, PostOutcome, PostRequest, PostResult};
use crate::tls::test_pki::TestPki;

/// The policy these tests run under: loopback allowed (the test servers live there).
fn loopback_policy() -> Arc<UrlPolicy> {
    Arc::new(UrlPolicy::new(vec![
        "127.0.0.0/8".parse().expect("a CIDR"),
        "::1/128".parse().expect("a CIDR"),
    ]))
}

/// Longest any test waits for one result.
const RESULT_WAIT: Duration = Duration::from_secs(10);
/// Allowed lateness of a timeout or a shutdown beyond its nominal bound.
const SLACK: Duration = Duration::from_millis(1500);
/// A hanging handler gives up after this long even if nobody stops it.
const HANG_CAP: Duration = Duration::from_secs(20);

#[derive(Clone, Copy)]
enum Behavior {
    Status(u16),
    /// 200 with a body of this many bytes.
    BigBody(usize),
    /// 302 to /ok.
    Redirect,
    /// Read the request, never answer.
    Hang,
}

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct ServerState {
    routes: Mutex<HashMap<String, Behavior>>,
    seen: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
    stop: AtomicBool,
}

struct TestServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    tls: bool,
}

impl TestServer {
    fn start() -> TestServer {
        TestServer::start_with(None)
    }

    /// HTTPS with `config` (a connection whose handshake fails is counted, then dropped).
    fn start_tls(config: Arc<ServerConfig>) -> TestServer {
        TestServer::start_with(Some(config))
    }

    fn start_with(tls: Option<Arc<ServerConfig>>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(ServerState {
            routes: Mutex::new(HashMap::new()),
            seen: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let st = Arc::clone(&state);
        let tls_on = tls.is_some();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::Acquire) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                st.connections.fetch_add(1, Ordering::AcqRel);
                let st = Arc::clone(&st);
                let tls = tls.clone();
                thread::spawn(move || {
                    let Ok(sock) = conn.try_clone() else { return };
                    match tls {
                        None => serve_connection(conn, &sock, &st),
                        Some(config) => {
                            let Ok(server) = ServerConnection::new(config) else {
                                return;
                            };
                            serve_connection(StreamOwned::new(server, conn), &sock, &st);
                        }
                    }
                });
            }
        });
        TestServer {
            addr,
            state,
            tls: tls_on,
        }
    }

    fn route(&self, path: &str, behavior: Behavior) {
        self.state.routes.lock().unwrap().insert(path.to_string(), behavior);
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}", self.addr, path)
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Acquire)
    }

    /// Polls (bounded) until the server has received a request for `path`.
    fn wait_seen(&self, path: &str) {
        let deadline = Instant::now() + RESULT_WAIT;
        while Instant::now() < deadline {
            if self.seen().iter().any(|s| s.path == path) {
                return;
            }
            thread::sleep(Duration::from_millis(5));
        }
        panic!("server never saw a request for {path}");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Reads one line, tolerating the idle read timeout; None on EOF/stop/error.
fn read_line(reader: &mut impl BufRead, state: &ServerState) -> Option<String> {
    let mut line = String::new();
    loop {
        match reader.read_line(&mut line) {
            Ok(0) => return None,
            Ok(_) => return Some(line),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if state.stop.load(Ordering::Acquire) {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
}

/// Serves `conn` (plain or TLS over `sock`, whose timeouts it sets) until it closes.
fn serve_connection(conn: impl Read + Write, sock: &TcpStream, state: &ServerState) {
    sock.set_read_timeout(Some(Duration::from_millis(100))).ok();
    let mut reader = BufReader::new(conn);
    // Keep-alive: serve requests on this connection until it closes.
    loop {
        let Some(request_line) = read_line(&mut reader, state) else {
            return;
        };
        let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let Some(line) = read_line(&mut reader, state) else {
                return;
            };
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        sock.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        sock.set_read_timeout(Some(Duration::from_millis(100))).ok();
        let behavior = state
            .routes
            .lock()
            .unwrap()
            .get(&path)
            .copied()
            .unwrap_or(Behavior::Status(404));
        state.seen.lock().unwrap().push(Seen { path, headers, body });

        let response: Vec<u8> = match behavior {
            Behavior::Hang => {
                let started = Instant::now();
                while !state.stop.load(Ordering::Acquire) && started.elapsed() < HANG_CAP {
                    thread::sleep(Duration::from_millis(10));
                }
                let _ = sock.shutdown(Shutdown::Both);
                return;
            }
            Behavior::Status(code) => format!("HTTP/1.1 {code} X\r\nContent-Length: 2\r\n\r\nok").into_bytes(),
            Behavior::BigBody(n) => {
                let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").into_bytes();
                r.resize(r.len() + n, b'x');
                r
            }
            Behavior::Redirect => b"HTTP/1.1 302 Found\r\nLocation: /ok\r\nContent-Length: 0\r\n\r\n".to_vec(),
        };
        let writer = reader.get_mut();
        if writer.write_all(&response).and_then(|()| writer.flush()).is_err() {
            return;
        }
    }
}

fn request(tag: u64, url: String, body: &[u8], timeout_ms: u64) -> PostRequest {
    PostRequest {
        tag,
        url,
        body: body.to_vec(),
        content_type: "application/json",
        headers: Vec::new(),
        timeout_ms,
    }
}

fn next(results: &Receiver<PostResult>) -> PostResult {
    results.recv_timeout(RESULT_WAIT).expect("no result within RESULT_WAIT")
}

#[test]
fn is_success_is_2xx_only() {
    assert!(PostOutcome::Status(200).is_success());
    assert!(PostOutcome::Status(204).is_success());
    assert!(PostOutcome::Status(299).is_success());
    assert!(!PostOutcome::Status(199).is_success());
    assert!(!PostOutcome::Status(302).is_success());
    assert!(!PostOutcome::Status(500).is_success());
    assert!(!PostOutcome::Timeout.is_success());
    assert!(!PostOutcome::ConnectFailed(String::new()).is_success());
}

#[test]
fn success_delivers_body_and_headers() {
    let server = TestServer::start();
    server.route("/ok", Behavior::Status(200));
    let (pool, results) = OutboundPool::start(2, 8, &[], loopback_policy());

    let mut req = request(7, server.url("/ok"), br#"{"msg":"hi"}"#, 2000);
    req.headers = vec![
        ("X-Pulse-Token".to_string(), "abc123".to_string()),
        ("Authorization".to_string(), "key=xyz".to_string()),
    ];
    pool.post(req).expect("post accepted");

    let r = next(&results);
    assert_eq!(r.tag, 7);
    assert_eq!(r.outcome, PostOutcome::Status(200));
    assert!(r.outcome.is_success());
    assert!(r.latency_us > 0);

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/ok");
    assert_eq!(seen[0].body, br#"{"msg":"hi"}"#);
    assert_eq!(seen[0].header("x-pulse-token"), Some("abc123"));
    assert_eq!(seen[0].header("authorization"), Some("key=xyz"));
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
    pool.shutdown();
}

#[test]
fn custom_content_type_header_wins() {
    let server = TestServer::start();
    server.route("/ok", Behavior::Status(200));
    let (pool, results) = OutboundPool::start(1, 4, &[], loopback_policy());
    let mut req = request(1, server.url("/ok"), b"a=b", 2000);
    req.headers = vec![("Content-Type".to_string(), "text/plain".to_string())];
    pool.post(req).unwrap();
    assert_eq!(next(&results).outcome, PostOutcome::Status(200));
    let seen = server.seen();
    let cts: Vec<_> = seen[0]
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .collect();
    assert_eq!(cts.len(), 1);
    assert_eq!(cts[0].1, "text/plain");
    pool.shutdown();
}

#[test]
fn server_error_is_status_not_success() {
    let server = TestServer::start();
    server.route("/fail", Behavior::Status(500));
    let (pool, results) = OutboundPool::start(1, 4, &[], loopback_policy());
    pool.post(request(2, server.url("/fail"), b"x", 2000)).unwrap();
    let r = next(&results);
    assert_eq!(r.tag, 2);
    assert_eq!(r.outcome, PostOutcome::Status(500));
    assert!(!r.outcome.is_success());
    pool.shutdown();
}

#[test]
fn redirect_is_not_followed() {
    let server = TestServer::start();
    server.route("/moved", Behavior::Redirect);
    server.route("/ok", Behavior::Status(200));
    let (pool, results) = OutboundPool::start(1, 4, &[], loopback_policy());
    pool.post(request(3, server.url("/moved"), b"x", 2000)).unwrap();
    assert_eq!(next(&results).outcome, PostOutcome::Status(302));
    let paths: Vec<_> = server.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, vec!["/moved".to_string()]);
    pool.shutdown();
}

#[test]
fn hang_times_out_within_bound() {
    let server = TestServer::start();
    server.route("/hang", Behavior::Hang);
    let (pool, results) = OutboundPool::start(1, 4, &[], loopback_policy());
    let timeout = Duration::from_millis(300);
    let t0 = Instant::now();
    pool.post(request(4, server.url("/hang"), b"x", 300)).unwrap();
    let r = next(&results);
    let waited = t0.elapsed();
    assert_eq!(r.outcome, PostOutcome::Timeout);
    assert!(waited >= timeout, "timed out too early: {waited:?}");
    assert!(waited < timeout + SLACK, "timed out too late: {waited:?}");
    assert!(r.latency_us >= 300_000);
    pool.shutdown();
}

#[test]
fn connection_refused_is_connect_failed() {
    // Bind then drop to get a loopback port with nobody listening.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (pool, results) = OutboundPool::start(1, 4, &[], loopback_policy());
    let url = format!("http://127.0.0.1:{port}/x");
    pool.post(request(5, url, b"x", 2000)).unwrap();
    let r = next(&results);
    assert!(
        matches!(r.outcome, PostOutcome::ConnectFailed(_)),
        "got {:?}",
        r.outcome
    );
    pool.shutdown();
}

#[test]
fn send_time_policy_refuses_inward_addresses_without_connecting() {
    let server = TestServer::start();
    server.route("/ok", Behavior::Status(200));
    // No allow rule: the test server's loopback address is refused when resolved.
    let (pool, results) = OutboundPool::start(1, 4, &[], Arc::new(UrlPolicy::new(vec![])));
    let port = server.addr.port();
    let urls = [
        server.url("/ok"),
        format!("http://localhost:{port}/ok"),
        format!("http://2130706433:{port}/ok"),
        format!("http://[::ffff:127.0.0.1]:{port}/ok"),
    ];
    for (i, u) in urls.iter().enumerate() {
        pool.post(request(i as u64, u.clone(), b"x", 2000)).unwrap();
    }
    for _ in &urls {
        let r = next(&results);
        match &r.outcome {
            PostOutcome::Refused(why) => assert!(why.contains("loopback"), "{why}"),
            other => panic!("{:?} gave {other:?}", urls[r.tag as usize]),
        }
    }
    assert_eq!(server.connections(), 0, "a refused POST never connects");
    pool.shutdown();
}

#[test]
fn credentials_and_control_characters_are_refused_by_the_pool() {
    let server = TestServer::start();
    server.route("/ok", Behavior::Status(200));
    let (pool, results) = OutboundPool::start(1, 4, &[], loopback_policy());
    let with_creds = server.url("/ok").replace("http://", "http://user:secret@");
    pool.post(request(1, with_creds, b"x", 2000)).unwrap();
    pool.post(request(2, format!("{}\r\nX: y", server.url("/ok")), b"x", 2000))
        .unwrap();
    for _ in 0..2 {
        let r = next(&results);
        assert!(matches!(r.outcome, PostOutcome::Refused(_)), "{r:?}");
    }
    assert_eq!(server.connections(), 0);
    pool.shutdown();
}

#[test]
fn bad_urls_are_rejected() {
    let (pool, results) = OutboundPool::start(1, 8, &[], loopback_policy());
    let urls = [
        "ftp://127.0.0.1/x",
        "mqtt://127.0.0.1:1883/x",
        "127.0.0.1:80/x",
        "not a url",
        "http://",
        "",
    ];
    for (i, u) in urls.iter().enumerate() {
        pool.post(request(i as u64, (*u).to_string(), b"x", 500)).unwrap();
    }
    for _ in urls {
        let r = next(&results);
        assert!(
            matches!(r.outcome, PostOutcome::BadUrl(_)),
            "{:?} gave {:?}",
            urls[r.tag as usize],
            r.outcome
        );
    }
    pool.shutdown();
}

#[test]
fn large_response_body_is_bounded_and_pool_keeps_working() {
    let server = TestServer::start();
    server.route("/big", Behavior::BigBody(4 * 1024 * 1024));
    server.route("/ok", Behavior::Status(200));
    let (pool, results) = OutboundPool::start(1, 4, &[], loopback_policy());
    pool.post(request(1, server.url("/big"), b"x", 3000)).unwrap();
    pool.post(request(2, server.url("/ok"), b"y", 3000)).unwrap();
    let a = next(&results);
    let b = next(&results);
    assert_eq!((a.tag, a.outcome), (1, PostOutcome::Status(200)));
    assert_eq!((b.tag, b.outcome), (2, PostOutcome::Status(200)));
    pool.shutdown();
}

#[test]
fn keep_alive_connection_is_reused() {
    let server = TestServer::start();
    server.route("/ok", Behavior::Status(200));
    let (pool, results) = OutboundPool::start(1, 4, &[], loopback_policy());
    for tag in 0..3 {
        pool.post(request(tag, server.url("/ok"), b"z", 2000)).unwrap();
        assert_eq!(next(&results).outcome, PostOutcome::Status(200));
    }
    assert_eq!(server.seen().len(), 3);
    assert_eq!(server.connections(), 1, "expected one reused connection");
    pool.shutdown();
}

#[test]
fn every_accepted_request_gets_one_result() {
    let server = TestServer::start();
    server.route("/ok", Behavior::Status(200));
    server.route("/fail", Behavior::Status(503));
    let (pool, results) = OutboundPool::start(4, 64, &[], loopback_policy());
    for tag in 0..40u64 {
        let path = if tag % 2 == 0 { "/ok" } else { "/fail" };
        pool.post(request(tag, server.url(path), &tag.to_be_bytes(), 3000))
            .unwrap();
    }
    let mut got: Vec<PostResult> = (0..40).map(|_| next(&results)).collect();
    got.sort_by_key(|r| r.tag);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.tag, i as u64);
        let want = if i % 2 == 0 { 200 } else { 503 };
        assert_eq!(r.outcome, PostOutcome::Status(want));
    }
    let mut bodies: Vec<Vec<u8>> = server.seen().into_iter().map(|s| s.body).collect();
    bodies.sort();
    let mut want: Vec<Vec<u8>> = (0..40u64).map(|t| t.to_be_bytes().to_vec()).collect();
    want.sort();
    assert_eq!(bodies, want);
    pool.shutdown();
    assert!(results.try_recv().is_err(), "no extra results");
}

#[test]
fn queue_is_bounded_and_post_never_blocks() {
    let server = TestServer::start();
    server.route("/hang", Behavior::Hang);
    server.route("/ok", Behavior::Status(200));
    let (pool, results) = OutboundPool::start(1, 2, &[], loopback_policy());

    pool.post(request(1, server.url("/hang"), b"h", 1500)).unwrap();
    // The single worker is now stuck on /hang.
    server.wait_seen("/hang");
    assert_eq!(pool.queued(), 0);
    pool.post(request(2, server.url("/ok"), b"a", 1500)).unwrap();
    pool.post(request(3, server.url("/ok"), b"b", 1500)).unwrap();
    assert_eq!(pool.queued(), 2);

    let t0 = Instant::now();
    let rejected = pool
        .post(request(4, server.url("/ok"), b"c", 1500))
        .expect_err("4th post must be refused");
    assert!(t0.elapsed() < Duration::from_millis(100), "post blocked");
    assert_eq!(rejected.tag, 4);
    assert_eq!(rejected.body, b"c");
    assert_eq!(pool.queued(), 2);

    // Once the hang times out, the queued ones go through.
    let mut got: Vec<PostResult> = (0..3).map(|_| next(&results)).collect();
    got.sort_by_key(|r| r.tag);
    assert_eq!(got[0].outcome, PostOutcome::Timeout);
    assert_eq!(got[1].outcome, PostOutcome::Status(200));
    assert_eq!(got[2].outcome, PostOutcome::Status(200));
    pool.shutdown();
}

#[test]
fn shutdown_is_bounded_while_a_request_hangs() {
    let server = TestServer::start();
    server.route("/hang", Behavior::Hang);
    let (pool, results) = OutboundPool::start(1, 8, &[], loopback_policy());
    pool.post(request(1, server.url("/hang"), b"h", 800)).unwrap();
    server.wait_seen("/hang");
    // Queued behind the hang: must not be sent after shutdown starts.
    pool.post(request(2, server.url("/hang"), b"q", 800)).unwrap();
    pool.post(request(3, server.url("/hang"), b"q", 800)).unwrap();

    let t0 = Instant::now();
    pool.shutdown();
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(800) + SLACK, "shutdown took {took:?}");

    let mut got: Vec<PostResult> = results.try_iter().collect();
    got.sort_by_key(|r| r.tag);
    assert_eq!(got.len(), 3, "one result per accepted request: {got:?}");
    assert_eq!(got[0].outcome, PostOutcome::Timeout);
    for r in &got[1..] {
        assert!(matches!(r.outcome, PostOutcome::Other(_)), "{r:?}");
        assert_eq!(r.latency_us, 0);
    }
    assert_eq!(server.seen().len(), 1, "queued requests were not sent");
    // All workers gone: the result channel is closed.
    assert!(results.recv_timeout(Duration::from_millis(100)).is_err());
}

#[test]
fn post_after_workers_gone_is_refused() {
    let (mut pool, _results) = OutboundPool::start(1, 1, &[], loopback_policy());
    pool.signal_stop();
    let r = pool.post(request(9, "http://127.0.0.1:1/".to_string(), b"", 100));
    assert_eq!(r.expect_err("refused").tag, 9);
    pool.shutdown();
}

fn pki_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("pulsegate-outbound-{name}-{}", std::process::id()))
}

#[test]
fn https_to_a_server_of_a_trusted_ca_delivers_and_keeps_alive() {
    let dir = pki_dir("trusted");
    let pki = TestPki::new(&dir, "outbound-test-ca", &["127.0.0.1"]);
    let server = TestServer::start_tls(pki.server_config(&[b"http/1.1"]));
    server.route("/cb", Behavior::Status(200));
    let (pool, results) = OutboundPool::start(1, 4, std::slice::from_ref(&pki.ca), loopback_policy());
    for tag in 0..3 {
        pool.post(request(tag, server.url("/cb"), br#"{"state":"delivered"}"#, 3000))
            .unwrap();
        let r = next(&results);
        assert_eq!((r.tag, &r.outcome), (tag, &PostOutcome::Status(200)), "{r:?}");
    }
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].body, br#"{"state":"delivered"}"#);
    assert_eq!(server.connections(), 1, "one TLS connection, reused");
    pool.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn https_tls_failures_are_tls_outcomes_naming_the_error() {
    let dir = pki_dir("untrusted");
    let trusted = TestPki::new(&dir.join("a"), "trusted-ca", &["127.0.0.1"]);
    let stranger = TestPki::new(&dir.join("b"), "stranger-ca", &["127.0.0.1"]);
    let wrong_name = TestPki::new(&dir.join("c"), "trusted-ca-2", &["gateway.example"]);
    let untrusted = TestServer::start_tls(stranger.server_config(&[]));
    let misnamed = TestServer::start_tls(wrong_name.server_config(&[]));
    for s in [&untrusted, &misnamed] {
        s.route("/cb", Behavior::Status(200));
    }
    // A plain HTTP server behind an https:// URL, answering in plaintext at once.
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_addr = plain.local_addr().unwrap();
    thread::spawn(move || {
        if let Ok((mut conn, _)) = plain.accept() {
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            let _ = conn.shutdown(Shutdown::Write);
            thread::sleep(Duration::from_millis(500));
        }
    });
    let (pool, results) = OutboundPool::start(1, 8, &[trusted.ca.clone(), wrong_name.ca.clone()], loopback_policy());
    pool.post(request(1, untrusted.url("/cb"), b"x", 3000)).unwrap();
    pool.post(request(2, misnamed.url("/cb"), b"x", 3000)).unwrap();
    pool.post(request(3, format!("https://{plain_addr}/cb"), b"x", 3000))
        .unwrap();
    let mut got: Vec<PostResult> = (0..3).map(|_| next(&results)).collect();
    got.sort_by_key(|r| r.tag);
    let why = |r: &PostResult| match &r.outcome {
        PostOutcome::Tls(why) => why.clone(),
        other => panic!("tag {}: expected a TLS failure, got {other:?}", r.tag),
    };
    let (a, b, c) = (why(&got[0]), why(&got[1]), why(&got[2]));
    assert!(
        a.contains("UnknownIssuer") && a.contains(&untrusted.addr.to_string()),
        "{a}"
    );
    assert!(b.contains("not valid for name"), "{b}");
    assert!(!c.is_empty(), "{c}");
    assert!(untrusted.seen().is_empty() && misnamed.seen().is_empty());
    // The pool is not disturbed: a trusted server is reached next.
    let good = TestServer::start_tls(trusted.server_config(&[]));
    good.route("/cb", Behavior::Status(200));
    pool.post(request(4, good.url("/cb"), b"x", 3000)).unwrap();
    assert_eq!(next(&results).outcome, PostOutcome::Status(200));
    pool.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
