//! The session pool through real handshakes: a rustls server in memory (rcgen
//! certificates, no sockets) and the loadgen's client configs. A first connection
//! is full and fills the pool; a reconnect resumes from it (TLS 1.3 tickets, TLS
//! 1.2 sessions); the pool keeps at most its bound; without resumption nothing is
//! offered.

use super::*;
use rustls::pki_types::PrivateKeyDer;
use rustls::{ClientConnection, HandshakeKind, ServerConfig, ServerConnection};

struct Pki {
    dir: PathBuf,
    leaf: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

fn pki(tag: &str) -> Pki {
    let dir = std::env::temp_dir().join(format!("pulsegate-loadgen-tlspool-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    Pki {
        dir,
        leaf: vec![leaf.der().clone()],
        key_der: key.serialize_der(),
    }
}

fn server_config(p: &Pki, versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ServerConfig> {
    let key = PrivateKeyDer::try_from(p.key_der.clone()).unwrap();
    let mut c = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(p.leaf.clone(), key)
        .unwrap();
    c.alpn_protocols = vec![b"mqtt".to_vec()];
    Arc::new(c)
}

/// Runs one handshake in memory (and lets the server's tickets reach the client).
fn handshake(client_config: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> (HandshakeKind, String) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = ClientConnection::new(client_config.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets().unwrap();
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets().unwrap();
        }
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            break;
        }
    }
    assert!(!c.is_handshaking(), "handshake did not complete");
    let alpn = String::from_utf8_lossy(c.alpn_protocol().unwrap_or_default()).into_owned();
    (c.handshake_kind().unwrap(), alpn)
}

fn client(p: &Pki, resume: bool) -> ClientTls {
    let opts = TlsOptions {
        ca_file: Some(p.dir.join("ca.pem")),
        server_name: "localhost".into(),
        resume,
        alpn: parse_alpn("mqtt"),
    };
    ClientTls::new(&opts, 1).unwrap()
}

#[test]
fn tls13_first_connect_is_full_and_reconnects_resume_from_the_pool() {
    let p = pki("13");
    let server = server_config(&p, &[&rustls::version::TLS13]);
    let tls = client(&p, true);
    let pool = tls.pool.clone().unwrap();
    let (kind, alpn) = handshake(&tls.fresh_config, &server);
    assert_eq!((kind, alpn.as_str()), (HandshakeKind::Full, "mqtt"));
    let after_first = pool.tickets();
    assert!(after_first >= 1, "the server's tickets must land in the pool");
    // A second first connection offers nothing, even with tickets in the pool.
    assert_eq!(handshake(&tls.fresh_config, &server).0, HandshakeKind::Full);
    let before = pool.tickets();
    // A reconnect takes one ticket and resumes.
    assert_eq!(handshake(&tls.config, &server).0, HandshakeKind::Resumed);
    assert!(
        pool.tickets() < before + server.send_tls13_tickets,
        "one ticket was taken"
    );
    // The pool is bounded (16 for one device): many full handshakes do not grow it.
    for _ in 0..20 {
        handshake(&tls.fresh_config, &server);
    }
    assert_eq!(pool.tickets(), TICKETS_PER_WORKER_MIN);
    // Each ticket is handed out once: 16 reconnects in a row all resume, since the
    // server gives new tickets on every resumption too.
    for _ in 0..TICKETS_PER_WORKER_MIN {
        assert_eq!(handshake(&tls.config, &server).0, HandshakeKind::Resumed);
    }
    let _ = std::fs::remove_dir_all(&p.dir);
}

#[test]
fn tls12_reconnects_resume_and_no_resume_means_full() {
    let p = pki("12");
    let server = server_config(&p, &[&rustls::version::TLS12]);
    let tls = client(&p, true);
    assert_eq!(handshake(&tls.fresh_config, &server).0, HandshakeKind::Full);
    assert_eq!(
        tls.pool.as_ref().unwrap().tickets(),
        0,
        "TLS 1.2 has no TLS 1.3 tickets"
    );
    assert_eq!(handshake(&tls.config, &server).0, HandshakeKind::Resumed);
    assert_eq!(handshake(&tls.config, &server).0, HandshakeKind::Resumed);
    let off = client(&p, false);
    assert!(off.pool.is_none());
    assert_eq!(handshake(&off.fresh_config, &server).0, HandshakeKind::Full);
    assert_eq!(handshake(&off.config, &server).0, HandshakeKind::Full);
    let server13 = server_config(&p, &[&rustls::version::TLS13]);
    assert_eq!(handshake(&off.config, &server13).0, HandshakeKind::Full);
    assert_eq!(handshake(&off.config, &server13).0, HandshakeKind::Full);
    let _ = std::fs::remove_dir_all(&p.dir);
}
