//! TLS for the tests: `TestCa` (a CA made with rcgen and a server certificate it issued,
//! as PEM files the gateway loads, with the gateway flags that use them), rustls client
//! configs trusting it, the MQTT `Client` over a rustls client stream (the client's
//! config is kept, so a second connect can resume the session), and `HttpsReceiver`, a
//! tiny HTTPS server on 127.0.0.1 that records the POSTs it gets (the SP side of webhooks
//! and callbacks) and counts the handshakes that failed. Every socket here has a timeout;
//! the receiver's threads end when it is dropped.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pulsegate::protocol::mqtt::ProtocolVersion;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
};

use super::WAIT;
use super::mqtt::{Client, Wire};

/// Longest a receiver waits on one socket read.
const RECEIVER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Request bodies larger than this are refused by the receiver.
const RECEIVER_BODY_BYTES_MAX: usize = 1024 * 1024;

/// A CA and a server certificate (for 127.0.0.1 and localhost) it signed, as files in `dir`.
pub struct TestCa {
    pub dir: PathBuf,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new(dir: &Path, ca_name: &str) -> TestCa {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, ca_name);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("server params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca, &ca_key).expect("server certificate");
        let t = TestCa {
            dir: dir.to_path_buf(),
            ca_file: dir.join(format!("{ca_name}.pem")),
            cert_file: dir.join(format!("{ca_name}-server.pem")),
            key_file: dir.join(format!("{ca_name}-server.key")),
            ca_der: ca.der().clone(),
        };
        std::fs::write(&t.ca_file, ca.pem()).expect("write CA");
        std::fs::write(&t.cert_file, cert.pem()).expect("write cert");
        std::fs::write(&t.key_file, key.serialize_pem()).expect("write key");
        t
    }

    /// The gateway flags serving its HTTP API with this server certificate.
    pub fn http_tls_args(&self) -> Vec<String> {
        vec![
            "--http-tls".into(),
            "true".into(),
            "--tls-cert-file".into(),
            self.cert_file.display().to_string(),
            "--tls-key-file".into(),
            self.key_file.display().to_string(),
        ]
    }

    /// The gateway flags that listen for MQTT over TLS with this server certificate.
    pub fn mqtt_tls_args(&self) -> Vec<String> {
        vec![
            "--mqtt-tls-listen".into(),
            "127.0.0.1:0".into(),
            "--tls-cert-file".into(),
            self.cert_file.display().to_string(),
            "--tls-key-file".into(),
            self.key_file.display().to_string(),
        ]
    }

    /// An MQTT client config trusting only this CA, offering ALPN `mqtt` (none when
    /// `alpn` is false).
    pub fn mqtt_client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: bool,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("test CA is a trust anchor");
        mqtt_client_config(roots, versions, alpn)
    }

    /// A client that trusts only this CA and offers ALPN http/1.1.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("test CA is a trust anchor");
        let mut config = ClientConfig::builder_with_provider(pulsegate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A server config presenting this CA's server certificate.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let certs = vec![CertificateDer::from_pem_file(&self.cert_file).expect("server cert PEM")];
        let key = PrivateKeyDer::from_pem_file(&self.key_file).expect("server key PEM");
        let config = ServerConfig::builder_with_provider(pulsegate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server identity");
        Arc::new(config)
    }
}

/// One POST an `HttpsReceiver` got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub body: Vec<u8>,
}

struct ReceiverState {
    received: Mutex<Vec<Received>>,
    handshake_failures: AtomicU64,
    stop: AtomicBool,
}

/// An HTTPS server on 127.0.0.1 answering every POST with `200` (keep-alive).
pub struct HttpsReceiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl HttpsReceiver {
    pub fn start(config: Arc<ServerConfig>) -> HttpsReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let addr = listener.local_addr().expect("receiver addr");
        let state = Arc::new(ReceiverState {
            received: Mutex::new(Vec::new()),
            handshake_failures: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (st, config) = (st.clone(), config.clone());
                std::thread::spawn(move || serve(conn, config, &st));
            }
        });
        HttpsReceiver { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Connections whose TLS handshake failed (e.g. the client did not trust us).
    pub fn handshake_failures(&self) -> u64 {
        self.state.handshake_failures.load(Ordering::Relaxed)
    }

    /// Polls until `n` POSTs arrived; panics after `timeout`.
    pub fn wait_received(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} POSTs within {timeout:?}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve(conn: TcpStream, config: Arc<ServerConfig>, state: &ReceiverState) {
    conn.set_read_timeout(Some(RECEIVER_READ_TIMEOUT)).ok();
    conn.set_write_timeout(Some(RECEIVER_READ_TIMEOUT)).ok();
    let Ok(mut server) = ServerConnection::new(config) else {
        return;
    };
    let mut conn = conn;
    while server.is_handshaking() {
        if server.complete_io(&mut conn).is_err() {
            state.handshake_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    let mut reader = BufReader::new(StreamOwned::new(server, conn));
    loop {
        let mut line = String::new();
        if !matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if !matches!(reader.read_line(&mut h), Ok(n) if n > 0) {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.trim().eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        if len > RECEIVER_BODY_BYTES_MAX {
            return;
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        state
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Received { path, body });
        let w = reader.get_mut();
        if w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .and_then(|()| w.flush())
            .is_err()
        {
            return;
        }
    }
}

/// True if `e` is a read timeout rather than a close.
pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

// -- MQTT over TLS ------------------------------------------------------------------------

/// MQTT over a rustls client stream.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

impl Wire for TlsStream {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// A client config over `roots`, offering ALPN `mqtt` (none when `alpn` is false).
pub fn mqtt_client_config(
    roots: RootCertStore,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: bool,
) -> Arc<ClientConfig> {
    let mut c = ClientConfig::builder_with_provider(pulsegate::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if alpn {
        c.alpn_protocols = vec![b"mqtt".to_vec()];
    }
    Arc::new(c)
}

/// Connects to `addr` and completes the TLS handshake (no MQTT yet).
pub fn tls_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> Result<TlsStream, std::io::Error> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    tcp.set_nodelay(true).ok();
    tcp.set_read_timeout(Some(WAIT)).ok();
    tcp.set_write_timeout(Some(WAIT)).ok();
    let conn = ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap())
        .map_err(std::io::Error::other)?;
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// An MQTT client over a completed TLS handshake.
pub fn tls_client(addr: SocketAddr, config: &Arc<ClientConfig>, version: ProtocolVersion) -> Client<TlsStream> {
    let s = tls_connect(addr, config).unwrap_or_else(|e| panic!("TLS handshake with {addr}: {e}"));
    Client::new(s, version)
}

/// How the client's handshake went (full or resumed).
pub fn handshake_kind(c: &Client<TlsStream>) -> Option<HandshakeKind> {
    c.stream.conn.handshake_kind()
}
