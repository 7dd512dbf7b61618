//! TlsConn against an in-memory rustls client: handshake, records both
//! ways, session resumption, and what ends a connection (garbage instead of
//! a ClientHello, an oversize record, an alert, a client that refuses us).

use std::io::{Read, Write};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::*;

/// Plaintext the server side received, and what it will send.
#[derive(Default)]
struct App {
    received: Vec<u8>,
    to_send: Vec<u8>,
    closing: bool,
}

impl TlsApp for App {
    fn deliver(&mut self, plaintext: &[u8]) {
        self.received.extend_from_slice(plaintext);
    }
    fn with_plaintext(&mut self, seal: &mut dyn FnMut(&mut Vec<u8>)) {
        seal(&mut self.to_send);
    }
    fn closing(&self) -> bool {
        self.closing
    }
}

struct Pair {
    server: TlsConn,
    app: App,
    client: ClientConnection,
    /// Ciphertext the server has not consumed yet (as `Active::tls_in`).
    tls_in: Vec<u8>,
    /// Every handshake completion and every non-open end the server reported.
    completed: Vec<HandshakeKind>,
    peer_closed: bool,
}

fn identity() -> (Arc<ServerConfig>, RootCertStore) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = CertificateDer::from(cert.der().to_vec());
    let mut roots = RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    let mut config = ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der], PrivateKeyDer::try_from(key.serialize_der()).unwrap())
        .unwrap();
    config.alpn_protocols = vec![b"mqtt".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
    (Arc::new(config), roots)
}

fn client_config(roots: RootCertStore, versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let mut c = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"mqtt".to_vec()];
    Arc::new(c)
}

impl Pair {
    fn new(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Pair {
        Pair {
            server: TlsConn::new(server).unwrap(),
            app: App::default(),
            client: ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap(),
            tls_in: Vec::new(),
            completed: Vec::new(),
            peer_closed: false,
        }
    }

    /// Client bytes -> server; server bytes -> client, until quiet.
    /// Returns the last server drive and whether the client failed.
    fn exchange(&mut self) -> (Driven, Option<rustls::Error>) {
        let mut last = None;
        for _ in 0..16 {
            let mut wire = Vec::new();
            while self.client.wants_write() {
                self.client.write_tls(&mut wire).unwrap();
            }
            self.tls_in.extend_from_slice(&wire);
            let mut out = Vec::new();
            let driven = self.server.drive(&mut self.tls_in, &mut out, &mut self.app);
            let quiet = wire.is_empty() && out.is_empty();
            let failed = matches!(driven.end, TlsEnd::Failed(_));
            self.completed.extend(driven.handshake_completed);
            self.peer_closed |= matches!(driven.end, TlsEnd::PeerClosed);
            last = Some(driven);
            if !out.is_empty() {
                let mut rd = &out[..];
                while !rd.is_empty() {
                    self.client.read_tls(&mut rd).unwrap();
                }
                if let Err(e) = self.client.process_new_packets() {
                    return (last.unwrap(), Some(e));
                }
            }
            if quiet || failed {
                break;
            }
        }
        (last.unwrap(), None)
    }
}

#[test]
fn handshake_then_records_both_ways_over_tls13_and_tls12() {
    let (server, roots) = identity();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut p = Pair::new(server.clone(), client_config(roots.clone(), &[version]));
        let (_, err) = p.exchange();
        assert!(err.is_none(), "{err:?}");
        assert!(!p.client.is_handshaking());
        assert!(p.server.is_established());
        assert_eq!(p.server.alpn_protocol(), Some(&b"mqtt"[..]));
        p.client.writer().write_all(&[0x10, 2, 0, 0]).unwrap();
        p.app.to_send.extend_from_slice(&[0x20, 2, 0, 0]);
        let (d, err) = p.exchange();
        assert!(err.is_none() && matches!(d.end, TlsEnd::Open));
        assert_eq!(p.app.received, [0x10, 2, 0, 0]);
        assert!(p.app.to_send.is_empty(), "sealed");
        let mut got = [0u8; 4];
        p.client.reader().read_exact(&mut got).unwrap();
        assert_eq!(got, [0x20, 2, 0, 0]);
        assert!(p.tls_in.is_empty(), "every record consumed");
    }
}

#[test]
fn a_second_connection_resumes_from_the_ticket() {
    let (server, roots) = identity();
    let client = client_config(roots, &[&rustls::version::TLS13]);
    let mut first = Pair::new(server.clone(), client.clone());
    let (d, _) = first.exchange();
    assert_eq!(first.client.handshake_kind(), Some(HandshakeKind::Full));
    let _ = d;
    assert_eq!(first.completed, [HandshakeKind::Full]);
    let mut second = Pair::new(server, client);
    let (_, err) = second.exchange();
    assert!(err.is_none());
    assert_eq!(second.client.handshake_kind(), Some(HandshakeKind::Resumed));
    assert_eq!(second.completed, [HandshakeKind::Resumed]);
}

#[test]
fn garbage_instead_of_a_client_hello_fails_the_handshake() {
    let (server, _) = identity();
    let mut t = TlsConn::new(server).unwrap();
    let mut app = App::default();
    let mut input = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00".to_vec();
    let mut out = Vec::new();
    let d = t.drive(&mut input, &mut out, &mut app);
    assert!(matches!(d.end, TlsEnd::Failed(_)), "{:?}", d.end);
    assert!(!d.was_established && d.handshake_completed.is_none());
    assert!(input.is_empty());
    assert!(app.received.is_empty());
}

#[test]
fn an_oversize_record_is_refused_from_its_header() {
    let (server, roots) = identity();
    let mut p = Pair::new(server, client_config(roots, &[&rustls::version::TLS13]));
    p.exchange();
    // Application data, TLS 1.2 wire version, length 0x8000 (> 16 KiB + 256).
    p.tls_in.extend_from_slice(&[0x17, 0x03, 0x03, 0x80, 0x00]);
    let mut out = Vec::new();
    let d = p.server.drive(&mut p.tls_in, &mut out, &mut p.app);
    assert!(matches!(d.end, TlsEnd::Failed(_)), "{:?}", d.end);
    assert!(d.was_established);
    assert!(!out.is_empty(), "the alert goes out");
    // Failed once: later drives read nothing and seal nothing (no close_notify after the alert).
    p.app.closing = true;
    p.app.to_send.extend_from_slice(&[0xE0, 0]);
    let mut more = vec![0x17, 0x03, 0x03, 0x00, 0x01, 0x00];
    let mut after = Vec::new();
    let d = p.server.drive(&mut more, &mut after, &mut p.app);
    assert!(matches!(d.end, TlsEnd::Open) && after.is_empty() && more.is_empty());
}

#[test]
fn unprocessed_input_past_its_limit_is_refused() {
    let (server, _) = identity();
    let mut t = TlsConn::new(server).unwrap();
    let mut input = vec![0x16; TLS_IN_BYTES_MAX + 1];
    let d = t.drive(&mut input, &mut Vec::new(), &mut App::default());
    assert!(matches!(d.end, TlsEnd::Failed(_)));
    assert!(input.is_empty());
}

#[test]
fn a_client_that_refuses_the_certificate_sends_an_alert_and_the_server_fails() {
    let (server, _) = identity();
    let (_, other_roots) = identity();
    let mut p = Pair::new(server, client_config(other_roots, &[&rustls::version::TLS13]));
    let (_, err) = p.exchange();
    assert!(err.is_some(), "the client refuses");
    // The client's alert reaches the server.
    let (d, _) = p.exchange();
    assert!(
        matches!(d.end, TlsEnd::Failed(rustls::Error::AlertReceived(_))),
        "{:?}",
        d.end
    );
    assert!(!d.was_established);
}

#[test]
fn close_notify_from_the_peer_ends_cleanly_and_closing_sends_ours() {
    let (server, roots) = identity();
    let mut p = Pair::new(server, client_config(roots, &[&rustls::version::TLS13]));
    p.exchange();
    p.client.send_close_notify();
    p.exchange();
    assert!(p.peer_closed);
    p.app.closing = true;
    p.app.to_send.extend_from_slice(&[0xE0, 0]);
    let (_, err) = p.exchange();
    assert!(err.is_none());
    let mut rest = Vec::new();
    let _ = p.client.reader().read_to_end(&mut rest);
    assert_eq!(rest, [0xE0, 0], "the last packet, then close_notify (clean EOF)");
}

#[test]
fn tls_conns_track_entries_by_key() {
    let (server, _) = identity();
    let mut conns = TlsConns::default();
    conns.start(7, server.clone()).unwrap();
    conns.start(7, server.clone()).unwrap();
    conns.start(2, server).unwrap();
    assert_eq!(conns.len(), 2);
    assert!(conns.get_mut(7).is_some() && conns.get_mut(3).is_none());
    conns.remove(7);
    conns.remove(7);
    conns.remove(99);
    assert_eq!(conns.len(), 1);
}
