//! The API over HTTPS: every behaviour test of `tests` again with a TLS server and a rustls
//! client (keep-alive, pipelining, limits, 503 over capacity, timeouts, graceful close,
//! shutdown), then what only TLS has: the handshake bounded by the idle deadline, failed
//! handshakes counted without disturbing others, plaintext refused, ALPN, reload.
//!
//! Owns the TLS-only tests. Must never reach any address but loopback or wait unbounded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

use super::{Client, HttpConfig, HttpCounters, OVER_TLS, config, start_with, test_pki};
use crate::tls::test_pki::TestPki;

/// `#[test] fn name()` running `super::name` with `OVER_TLS` set.
macro_rules! over_tls {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { OVER_TLS.set(true); super::$name(); } )*
    };
}

over_tls!(
    post_returns_201_with_gateway_json,
    submit_receives_raw_body_bytes,
    body_exactly_at_limit_reaches_gateway,
    auth_refused_is_401_and_gateway_not_called,
    authorization_header_reaches_authenticate,
    message_id_routes_to_status_update_cancel,
    mechanisms_route_calls_mechanisms,
    heartbeat_limit_route_gets_and_puts_and_maps_forbidden,
    unknown_paths_are_404_without_auth,
    wrong_method_is_405_with_allow,
    api_errors_map_to_statuses,
    metrics_and_healthz_skip_authentication,
    keep_alive_three_requests_on_one_connection,
    pipelined_requests_answered_in_order,
    connection_close_is_honoured,
    http10_closes_unless_keep_alive,
    oversize_body_rejected_from_content_length,
    oversize_headers_are_431,
    max_connections_exceeded_gets_503,
    idle_timeout_closes_socket,
    slowloris_head_times_out_with_408,
    malformed_request_is_400_and_closed,
    http11_without_exactly_one_host_is_400,
    body_deadline_cuts_a_slow_body_with_408,
    chunked_and_missing_length_are_411,
    expect_continue_gets_interim_response,
    max_requests_per_connection_closes,
    gateway_panic_is_500_and_server_survives,
    busy_handlers_answer_503_at_once_and_others_still_flow,
    shutdown_is_prompt_with_connections_open,
);

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";

fn start_tls(config: HttpConfig) -> (super::HttpServer, Arc<HttpCounters>) {
    let (server, _gw, counters) = start_with(config, Some(Arc::new(test_pki().server_tls(&[b"http/1.1"]))));
    (server, counters)
}

fn failures(counters: &HttpCounters) -> u64 {
    counters.tls_handshake_failures.load(Ordering::Relaxed)
}

/// Polls (bounded) until the failure counter reaches `n`.
fn wait_failures(counters: &HttpCounters, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while failures(counters) < n {
        assert!(Instant::now() < deadline, "failures stayed at {}", failures(counters));
        thread::sleep(Duration::from_millis(10));
    }
}

/// Reads until EOF or reset within `within`; returns the bytes seen (None: still open).
fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        s.set_read_timeout(Some(deadline - now)).expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return Some(seen),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return None;
            }
            Err(_) => return Some(seen),
        }
    }
}

#[test]
fn alpn_is_http11_and_keep_alive_reuses_the_session() {
    let (server, counters) = start_tls(config());
    let addr = server.local_addr();
    let client_config = test_pki().client_config(&[b"h2", b"http/1.1"]);
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let conn = ClientConnection::new(client_config, ServerName::from(addr.ip())).expect("client");
    let mut tls = StreamOwned::new(conn, tcp);
    for _ in 0..3 {
        tls.write_all(HEALTHZ).expect("write");
        let mut buf = [0u8; 512];
        let n = tls.read(&mut buf).expect("read");
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    // A client that offers only h2 is refused, and counted.
    let h2_only = test_pki().client_config(&[b"h2"]);
    let mut refused = Client::connect_tls(addr, h2_only);
    let w = refused.reader.get_mut();
    let err = w
        .write_all(HEALTHZ)
        .and_then(|()| w.flush())
        .expect_err("no common protocol");
    assert!(err.to_string().contains("NoApplicationProtocol"), "{err}");
    wait_failures(&counters, 1);
    server.shutdown();
}

#[test]
fn plaintext_http_to_the_tls_port_is_closed_and_counted() {
    let (server, counters) = start_tls(config());
    let mut plain = TcpStream::connect(server.local_addr()).expect("connect");
    plain.write_all(HEALTHZ).expect("write");
    let answer = read_until_closed(&mut plain, Duration::from_secs(2)).expect("closed");
    assert!(!answer.starts_with(b"HTTP/"), "{:?}", String::from_utf8_lossy(&answer));
    wait_failures(&counters, 1);
    // Others are served as before.
    let mut c = Client::connect(server.local_addr());
    c.send(HEALTHZ);
    assert_eq!(c.read_response().status, 200);
    assert_eq!(failures(&counters), 1);
    server.shutdown();
}

#[test]
fn silent_and_trickling_clients_are_dropped_on_the_idle_deadline() {
    let (server, counters) = start_tls(HttpConfig {
        idle_timeout_ms: 300,
        ..config()
    });
    let addr = server.local_addr();
    let started = Instant::now();
    // Opens TCP, never sends a ClientHello.
    let mut silent = TcpStream::connect(addr).expect("connect");
    // Sends a TLS record header and then one byte every 50 ms: no single read times out.
    let mut trickle = TcpStream::connect(addr).expect("connect");
    trickle
        .write_all(&[0x16, 0x03, 0x01, 0x01, 0x00])
        .expect("record header");
    let trickler = thread::spawn(move || {
        for _ in 0..60 {
            if trickle.write_all(&[0x01]).is_err() {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    });
    // Meanwhile a real client is served.
    let mut c = Client::connect(addr);
    c.send(HEALTHZ);
    assert_eq!(c.read_response().status, 200);
    assert!(
        read_until_closed(&mut silent, Duration::from_secs(2)).is_some(),
        "silent client kept"
    );
    let dropped_after = started.elapsed();
    assert!(
        dropped_after >= Duration::from_millis(250),
        "dropped too early: {dropped_after:?}"
    );
    assert!(
        trickler.join().expect("trickler"),
        "the trickling client was never dropped"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    wait_failures(&counters, 2);
    server.shutdown();
}

#[test]
fn a_client_that_rejects_the_certificate_is_counted() {
    let (server, counters) = start_tls(config());
    let dir = std::env::temp_dir().join(format!("pulsegate-api-other-ca-{}", std::process::id()));
    let other = TestPki::new(&dir, "other-ca", &["127.0.0.1"]);
    let mut c = Client::connect_tls(server.local_addr(), other.client_config(&[b"http/1.1"]));
    let w = c.reader.get_mut();
    let err = w
        .write_all(HEALTHZ)
        .and_then(|()| w.flush())
        .expect_err("untrusted server");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    wait_failures(&counters, 1);
    let _ = std::fs::remove_dir_all(&dir);
    server.shutdown();
}

#[test]
fn reload_applies_to_new_connections_only() {
    let dir = std::env::temp_dir().join(format!("pulsegate-api-reload-{}", std::process::id()));
    let first = TestPki::new(&dir, "first-ca", &["127.0.0.1"]);
    let tls = Arc::new(first.server_tls(&[b"http/1.1"]));
    let (server, _gw, _counters) = start_with(config(), Some(tls.clone()));
    let addr = server.local_addr();
    let mut before = Client::connect_tls(addr, first.client_config(&[]));
    before.send(HEALTHZ);
    assert_eq!(before.read_response().status, 200);

    // A new identity from another CA in the same files, then reload.
    let second = TestPki::new(&dir, "second-ca", &["127.0.0.1"]);
    assert_eq!(second.cert_file, first.cert_file);
    tls.reload().expect("reload");
    let mut after = Client::connect_tls(addr, second.client_config(&[]));
    after.send(HEALTHZ);
    assert_eq!(after.read_response().status, 200);
    // The connection from before keeps its session.
    before.send(HEALTHZ);
    assert_eq!(before.read_response().status, 200);
    // New connections no longer present the first identity.
    let mut stale = Client::connect_tls(addr, first.client_config(&[]));
    let w = stale.reader.get_mut();
    assert!(w.write_all(HEALTHZ).and_then(|()| w.flush()).is_err());
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
