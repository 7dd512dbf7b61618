//! MQTT over TLS over real sockets, on both backends: a rustls client connects to the
//! gateway's TLS listener (a test CA signs its certificate), gets CONNACK, a push sent
//! through the HTTP API, PINGRESP; TLS 1.2 and 1.3, ALPN `mqtt` or none; session
//! takeover; resumption (the second connect resumes from the ticket); a client that does
//! not trust the CA refuses and the gateway counts a failed handshake; garbage instead of
//! a ClientHello, an oversize record, a silent TCP connection (the CONNECT timeout covers
//! the handshake) are closed while another TLS client on the same shard keeps working;
//! a bad certificate file stops start-up with the file named. The `#[ignore]`d
//! measurements print heap bytes per idle established TLS connection (counting
//! allocator) and RSS per idle TLS connection with a few thousand connections.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::tls::{TestCa, TlsStream, handshake_kind, mqtt_client_config, tls_client, tls_connect};
use common::*;
use rustls::HandshakeKind;
use rustls::version::{TLS12, TLS13};

struct TlsGateway {
    gw: Gateway,
    pki: TestCa,
    addr: std::net::SocketAddr,
}

fn scratch(name: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "pulsegate-tls-it-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ))
}

fn start(backend: &str, shards: usize, extra: &[&str]) -> TlsGateway {
    let pki = TestCa::new(&scratch(backend), "mqtt-ca");
    let mut args: Vec<String> = pki.mqtt_tls_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let gw = Spawn::new(backend).shards(shards).args(&args).start();
    let addr = gw.mqtt_tls.expect("the ready file reports mqtt_tls");
    TlsGateway { gw, pki, addr }
}

impl Drop for TlsGateway {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pki.dir);
    }
}

impl TlsGateway {
    fn connect(&self, config: &std::sync::Arc<rustls::ClientConfig>, opts: &ConnectOpts) -> Client<TlsStream> {
        let mut c = tls_client(self.addr, config, opts.version);
        let ack = c.handshake(opts);
        assert_eq!(ack.reason, 0, "CONNACK over TLS: {ack:?}");
        c
    }

    fn handshakes(&self, kind: &str) -> u64 {
        self.gw
            .metric(&format!("pulsegate_tls_handshakes_total{{kind=\"{kind}\"}}"))
    }
}

fn connack_push_and_ping_over_tls12_and_tls13(backend: &str) {
    let g = start(backend, 2, &[]);
    let mut n = 0;
    for (versions, alpn) in [(&[&TLS13][..], true), (&[&TLS12][..], true), (&[&TLS13][..], false)] {
        let config = g.pki.mqtt_client_config(versions, alpn);
        for version in [V311, V5] {
            n += 1;
            let id = format!("tls-{n}");
            let mut c = g.connect(&config, &ConnectOpts::new(version, &id).keepalive(30));
            assert_eq!(c.stream.conn.protocol_version(), Some(versions[0].version));
            if alpn {
                assert_eq!(c.stream.conn.alpn_protocol(), Some(&b"mqtt"[..]));
            }
            // A push through the HTTP API, QoS 0 and QoS 1, then PINGREQ/PINGRESP.
            g.gw.assert_healthy(&mut c);
            g.gw.push_ok(&id, "q1 over tls", 1);
            let p = c.expect_publish(WAIT);
            assert_eq!((p.qos, p.payload.as_slice()), (1, &b"q1 over tls"[..]));
            c.puback(p.packet_id.unwrap());
            c.ping();
            assert!(matches!(c.recv(WAIT), Ok(Rx::PingResp)));
        }
    }
    assert_eq!(g.handshakes("full") + g.handshakes("resumed"), n);
    assert_eq!(g.gw.metric_sum("pulsegate_tls_handshake_failures_total"), 0);
    // The plain listener still speaks plain MQTT.
    let mut plain = g.gw.connect_id(V5, "plain");
    g.gw.assert_healthy(&mut plain);
}

fn session_takeover_over_tls(backend: &str) {
    let g = start(backend, 2, &[]);
    let config = g.pki.mqtt_client_config(&[&TLS13], true);
    let mut old = g.connect(&config, &ConnectOpts::new(V5, "twin"));
    let mut new = g.connect(&config, &ConnectOpts::new(V5, "twin"));
    let got = old.expect_closed(WAIT);
    assert!(
        got.iter()
            .any(|p| matches!(p, Rx::Disconnect { reason } if *reason == 0x8E)),
        "the old connection is told it was taken over: {got:?}"
    );
    g.gw.assert_healthy(&mut new);
    assert_eq!(g.gw.metric_sum("pulsegate_sessions_taken_over_total"), 1);
}

fn second_connect_resumes_the_session(backend: &str) {
    let g = start(backend, 2, &[]);
    for (versions, name) in [(&[&TLS13][..], "13"), (&[&TLS12][..], "12")] {
        let config = g.pki.mqtt_client_config(versions, true);
        let mut first = g.connect(&config, &ConnectOpts::new(V311, &format!("resume-{name}")));
        assert_eq!(handshake_kind(&first), Some(HandshakeKind::Full));
        first.ping();
        assert!(
            matches!(first.recv(WAIT), Ok(Rx::PingResp)),
            "tickets read with the answer"
        );
        first.disconnect();
        first.expect_closed(WAIT);
        let resumed_before = g.handshakes("resumed");
        let mut second = g.connect(&config, &ConnectOpts::new(V311, &format!("resume-{name}")));
        assert_eq!(handshake_kind(&second), Some(HandshakeKind::Resumed), "TLS 1.{name}");
        g.gw.assert_healthy(&mut second);
        assert_eq!(g.handshakes("resumed"), resumed_before + 1);
    }
}

fn a_client_that_does_not_trust_the_ca_refuses(backend: &str) {
    let g = start(backend, 1, &[]);
    let config = g.pki.mqtt_client_config(&[&TLS13], true);
    let mut good = g.connect(&config, &ConnectOpts::new(V5, "trusting"));
    let other = TestCa::new(&scratch("other-ca"), "mqtt-ca");
    let untrusting = other.mqtt_client_config(&[&TLS13], true);
    let err = tls_connect(g.addr, &untrusting)
        .map(|_| ())
        .expect_err("the handshake fails");
    assert!(err.to_string().contains("certificate"), "{err}");
    g.gw.wait_metric("pulsegate_tls_handshake_failures_total", WAIT, |v| v == 1);
    g.gw.wait_metric("pulsegate_closes_total{reason=\"tls_error\"}", WAIT, |v| v == 1);
    // A client offering only another ALPN protocol is refused too.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(g.pki.ca_der.clone()).unwrap();
    let mut wrong_alpn = (*mqtt_client_config(roots, &[&TLS13], false)).clone();
    wrong_alpn.alpn_protocols = vec![b"h2".to_vec()];
    assert!(tls_connect(g.addr, &std::sync::Arc::new(wrong_alpn)).is_err());
    g.gw.wait_metric("pulsegate_tls_handshake_failures_total", WAIT, |v| v == 2);
    g.gw.assert_healthy(&mut good);
    let _ = std::fs::remove_dir_all(&other.dir);
}

/// Reads until EOF (or a reset); panics if the socket stays open past `timeout`.
fn expect_eof(s: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "still open after {timeout:?} (got {got:02x?})");
        s.set_read_timeout(Some(left)).ok();
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return got,
        }
    }
}

fn garbage_and_oversize_records_close_only_their_connection(backend: &str) {
    // One shard: every connection below is on the same shard as `good`.
    let g = start(backend, 1, &[]);
    let config = g.pki.mqtt_client_config(&[&TLS13], true);
    let mut good = g.connect(&config, &ConnectOpts::new(V5, "bystander").keepalive(60));

    // Plain MQTT CONNECT on the TLS port: not a ClientHello.
    let mut raw = TcpStream::connect(g.addr).unwrap();
    raw.write_all(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00").unwrap();
    let alert = expect_eof(&mut raw, WAIT);
    assert!(
        alert.is_empty() || alert[0] == 0x15,
        "an alert record or nothing: {alert:02x?}"
    );
    g.gw.wait_metric("pulsegate_tls_handshake_failures_total", WAIT, |v| v == 1);

    // Random bytes.
    let mut rng = Rng::new(7);
    let mut raw = TcpStream::connect(g.addr).unwrap();
    let _ = raw.write_all(&rng.bytes(3000));
    expect_eof(&mut raw, WAIT);
    g.gw.wait_metric("pulsegate_tls_handshake_failures_total", WAIT, |v| v == 2);

    // After the handshake: an application-data record header claiming 32 KiB.
    let mut big = g.connect(&config, &ConnectOpts::new(V5, "oversize"));
    big.stream.sock.write_all(&[0x17, 0x03, 0x03, 0x80, 0x00]).unwrap();
    assert!(matches!(big.recv(WAIT), Err(RecvError::Closed)));
    g.gw.wait_metric("pulsegate_tls_errors_total", WAIT, |v| v == 1);

    // A client that ends the session with a close_notify alert mid-session.
    let mut alerting = g.connect(&config, &ConnectOpts::new(V5, "alerting"));
    alerting.stream.conn.send_close_notify();
    let _ = alerting.stream.conn.complete_io(&mut alerting.stream.sock);
    assert!(matches!(alerting.recv(WAIT), Err(RecvError::Closed)));

    g.gw.assert_healthy(&mut good);
    assert_eq!(g.gw.metric_sum("pulsegate_connections"), 1);
}

fn the_connect_timeout_covers_the_handshake(backend: &str) {
    let g = start(backend, 1, &["--connect-timeout-s", "1"]);
    let t0 = Instant::now();
    let mut silent = TcpStream::connect(g.addr).unwrap();
    // Half a ClientHello record header, then nothing.
    silent.write_all(&[0x16, 0x03, 0x01]).unwrap();
    expect_eof(&mut silent, Duration::from_secs(5));
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    assert_eq!(g.gw.closes("connect_timeout"), 1);
    // A handshake that completes but never sends CONNECT also times out.
    let config = g.pki.mqtt_client_config(&[&TLS13], true);
    let mut c = tls_client(g.addr, &config, V5);
    assert!(matches!(c.recv(Duration::from_secs(5)), Err(RecvError::Closed)));
    assert_eq!(g.gw.closes("connect_timeout"), 2);
}

both_backends!(
    connack_push_and_ping_over_tls12_and_tls13,
    session_takeover_over_tls,
    second_connect_resumes_the_session,
    a_client_that_does_not_trust_the_ca_refuses,
    garbage_and_oversize_records_close_only_their_connection,
    the_connect_timeout_covers_the_handshake,
);

#[test]
fn a_bad_certificate_file_stops_start_up_naming_the_file() {
    let dir = scratch("badcert");
    let pki = TestCa::new(&dir, "mqtt-ca");
    std::fs::write(&pki.key_file, "not a key").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pulsegate"))
        .args(["--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--data-dir", dir.join("data").to_str().unwrap()])
        .args(pki.mqtt_tls_args())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let key_name = pki.key_file.file_name().unwrap().to_str().unwrap();
    assert!(stderr.contains(key_name), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Measurements (run by hand: `cargo test --release --test mqtt_tls -- --ignored --nocapture`)
// ---------------------------------------------------------------------------------------------

/// Live heap bytes, counted by the global allocator of this test binary.
// The one exception to "no unsafe outside sys/": a GlobalAlloc is an unsafe trait. It
// only forwards to System and counts; nothing else in the tests is unsafe.
#[allow(
    unsafe_code,
    reason = "a counting GlobalAlloc for the heap measurement; forwards to System"
)]
mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

    pub struct Counting;
    pub static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

    // SAFETY: forwards to the system allocator unchanged; only counts.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            LIVE_BYTES.fetch_add(layout.size() as i64, Relaxed);
            // SAFETY: the caller's contract is System's.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            LIVE_BYTES.fetch_sub(layout.size() as i64, Relaxed);
            // SAFETY: as above.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
            // SAFETY: as above.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    pub fn live() -> i64 {
        LIVE_BYTES.load(Relaxed)
    }
}

#[global_allocator]
static COUNTING: heap::Counting = heap::Counting;

/// Plaintext sink for the in-memory server side.
#[derive(Default)]
struct Sink {
    out: Vec<u8>,
}

impl pulsegate::shard::tls_conn::TlsApp for Sink {
    fn deliver(&mut self, _plaintext: &[u8]) {}
    fn with_plaintext(&mut self, seal: &mut dyn FnMut(&mut Vec<u8>)) {
        seal(&mut self.out);
    }
    fn closing(&self) -> bool {
        false
    }
}

/// Runs the handshake of `server` against a rustls client in memory, then one MQTT
/// exchange each way (CONNECT in, CONNACK out), so the connection is established and
/// has carried traffic. Every buffer used is dropped before returning.
fn handshake_in_memory(
    server: &mut pulsegate::shard::tls_conn::TlsConn,
    client_config: &std::sync::Arc<rustls::ClientConfig>,
) {
    use rustls::pki_types::ServerName;
    let mut client =
        rustls::ClientConnection::new(client_config.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    client
        .writer()
        .write_all(&ConnectOpts::new(V311, "m").encode())
        .unwrap();
    let mut sink = Sink::default();
    let (mut tls_in, mut tls_out) = (Vec::new(), Vec::new());
    for round in 0..8 {
        while client.wants_write() {
            client.write_tls(&mut tls_in).unwrap();
        }
        if round == 3 {
            sink.out.extend_from_slice(&[0x20, 2, 0, 0]);
        }
        server.drive(&mut tls_in, &mut tls_out, &mut sink);
        let mut rd = &tls_out[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
        }
        tls_out.clear();
        client.process_new_packets().unwrap();
    }
    assert!(server.is_established() && !client.is_handshaking());
    let mut connack = [0u8; 4];
    client.reader().read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
}

#[test]
#[ignore = "a measurement: prints heap bytes per idle established TLS connection"]
fn measure_heap_per_idle_tls_connection() {
    use pulsegate::tls::{ServerTls, ServerTlsFiles};
    const N: usize = 1000;
    let pki = TestCa::new(&scratch("heap"), "mqtt-ca");
    let server = ServerTls::load(ServerTlsFiles {
        cert_file: pki.cert_file.clone(),
        key_file: pki.key_file.clone(),
        alpn: vec![b"mqtt".to_vec()],
    })
    .unwrap();
    for (name, versions) in [("TLS 1.3", &[&TLS13][..]), ("TLS 1.2", &[&TLS12][..])] {
        let client = pki.mqtt_client_config(versions, true);
        let config = server.current();
        // Warm-up: one-time allocations (the session cache's table, lazy statics).
        let mut warm = pulsegate::shard::tls_conn::TlsConns::default();
        for key in 0..16 {
            warm.start(key, config.clone()).unwrap();
            handshake_in_memory(warm.get_mut(key).unwrap(), &client);
        }
        let before = heap::live();
        let mut conns = pulsegate::shard::tls_conn::TlsConns::default();
        for key in 0..N as u32 {
            conns.start(key, config.clone()).unwrap();
            handshake_in_memory(conns.get_mut(key).unwrap(), &client);
        }
        let after = heap::live();
        // The buffered API for comparison: ServerConnection after the same exchange (its
        // inline size counted too: the Vec holding them is allocated in the window).
        let before_buffered = heap::live();
        let mut buffered = Vec::with_capacity(N);
        for _ in 0..N {
            buffered.push(buffered_handshake(&config, &client));
        }
        let after_buffered = heap::live();
        println!(
            "{name}: heap per idle established TLS connection: unbuffered TlsConn {} bytes (incl. its \
             Box and TlsConns slot), buffered rustls::ServerConnection {} bytes; size_of TlsConn = {}",
            (after - before) / N as i64,
            (after_buffered - before_buffered) / N as i64,
            std::mem::size_of::<pulsegate::shard::tls_conn::TlsConn>(),
        );
        drop((conns, warm, buffered));
    }
    let _ = std::fs::remove_dir_all(&pki.dir);
}

/// The same exchange on rustls' buffered `ServerConnection`.
fn buffered_handshake(
    config: &std::sync::Arc<rustls::ServerConfig>,
    client_config: &std::sync::Arc<rustls::ClientConfig>,
) -> rustls::ServerConnection {
    use rustls::pki_types::ServerName;
    let mut server = rustls::ServerConnection::new(config.clone()).unwrap();
    let mut client =
        rustls::ClientConnection::new(client_config.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    client
        .writer()
        .write_all(&ConnectOpts::new(V311, "m").encode())
        .unwrap();
    let mut plain = Vec::new();
    for round in 0..8 {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let mut rd = &wire[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
        }
        server.process_new_packets().unwrap();
        let _ = server.reader().read_to_end(&mut plain);
        if round == 3 {
            server.writer().write_all(&[0x20, 2, 0, 0]).unwrap();
        }
        let mut back = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut back).unwrap();
        }
        let mut rd = &back[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
        }
        client.process_new_packets().unwrap();
    }
    assert!(!server.is_handshaking());
    server
}

/// The gateway's resident anonymous memory (heap and stacks, not the mapped binary), KiB.
fn rss_anon_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
#[ignore = "a measurement: prints the gateway's RSS per idle TLS connection (a few thousand)"]
fn measure_rss_per_idle_tls_connection() {
    const N: usize = 3000;
    raise_nofile();
    for backend in ["uring", "epoll"] {
        let g = start(backend, 1, &["--max-connections", "10000"]);
        let config = g.pki.mqtt_client_config(&[&TLS13], true);
        // Warm-up: pools, buffer rings and the first slab pages.
        let mut warm: Vec<_> = (0..64)
            .map(|i| g.connect(&config, &ConnectOpts::new(V311, &format!("warm-{i}"))))
            .collect();
        let mut plain: Vec<Client> = (0..64).map(|i| g.gw.connect_id(V311, &format!("pwarm-{i}"))).collect();
        std::thread::sleep(Duration::from_millis(300));
        let base = rss_anon_kib(g.gw.pid());
        let mut plain_more: Vec<Client> = (0..N).map(|i| g.gw.connect_id(V311, &format!("p-{i}"))).collect();
        std::thread::sleep(Duration::from_millis(300));
        let with_plain = rss_anon_kib(g.gw.pid());
        let tls: Vec<_> = (0..N)
            .map(|i| g.connect(&config, &ConnectOpts::new(V311, &format!("t-{i}"))))
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let with_tls = rss_anon_kib(g.gw.pid());
        assert_eq!(g.gw.metric_sum("pulsegate_connections"), (2 * N + 128) as u64);
        println!(
            "{backend}: RssAnon {base} KiB -> +{N} plain MQTT {with_plain} KiB ({} B each) -> +{N} TLS {with_tls} KiB \
             ({} B each)",
            (with_plain - base) * 1024 / N as u64,
            (with_tls - with_plain) * 1024 / N as u64
        );
        g.gw.assert_healthy(&mut warm[0]);
        g.gw.assert_healthy(&mut plain[0]);
        plain_more.clear();
        drop(tls);
    }
}
