//! TLS for the tests: a test CA and a server certificate it signs (rcgen,
//! written as PEM files the gateway loads), the gateway flags that turn its
//! TLS listener on, and the MQTT `Client` over a rustls client stream (the
//! client's config is kept, so a second connect can resume the session).
//!
//! It owns no process; every handshake has a timeout.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore, StreamOwned};

use super::WAIT;
use super::mqtt::{Client, Wire};
use pulsegate::protocol::mqtt::ProtocolVersion;

/// MQTT over a rustls client stream.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

impl Wire for TlsStream {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// A CA, and a server identity for `localhost` / 127.0.0.1 it signed, as PEM files in `dir`.
pub struct TestPki {
    pub dir: PathBuf,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_der: CertificateDer<'static>,
}

impl TestPki {
    pub fn new(dir: &Path) -> TestPki {
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pulsegate test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let pki = TestPki {
            dir: dir.to_path_buf(),
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server-key.pem"),
            ca_der: ca.der().clone(),
        };
        std::fs::write(&pki.ca_file, ca.pem()).unwrap();
        std::fs::write(&pki.cert_file, cert.pem()).unwrap();
        std::fs::write(&pki.key_file, key.serialize_pem()).unwrap();
        pki
    }

    /// The gateway flags that listen for MQTT over TLS with this identity.
    pub fn gateway_args(&self) -> Vec<String> {
        vec![
            "--mqtt-tls-listen".into(),
            "127.0.0.1:0".into(),
            "--tls-cert-file".into(),
            self.cert_file.display().to_string(),
            "--tls-key-file".into(),
            self.key_file.display().to_string(),
        ]
    }

    /// A client trusting this CA, offering ALPN `mqtt` (none when `alpn` is false).
    pub fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: bool,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        client_config(roots, versions, alpn)
    }
}

pub fn client_config(
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
