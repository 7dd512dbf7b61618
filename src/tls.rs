//! TLS material: PEM certificate chains and keys read from files into rustls
//! server configurations (kept current across SIGHUP reloads, with one
//! ticketer and one session cache so resumption survives a reload), and the
//! client configuration outbound HTTPS trusts (system roots plus an optional
//! CA file).
//!
//! Owns reading key material and building rustls configs. Must never hold a
//! connection or do socket I/O: shards and the HTTP server drive rustls
//! themselves, and a reload that fails keeps the previous config.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ProducesTickets, ServerSessionMemoryCache};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::limits;

/// The crypto provider every config here uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a file of at most `KEY_FILE_BYTES_MAX` bytes.
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > limits::KEY_FILE_BYTES_MAX {
        return Err(format!(
            "{} is {} bytes, more than the {} a key file may have",
            path.display(),
            meta.len(),
            limits::KEY_FILE_BYTES_MAX
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The certificates of a PEM file, in order.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_bounded(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE in the file", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_bounded(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| format!("{}: no PEM private key: {e}", path.display()))
}

/// Where a server's certificate comes from and what it negotiates.
#[derive(Clone, Debug)]
pub struct ServerTlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// ALPN protocols offered, most preferred first (a client that offers
    /// none is accepted too).
    pub alpn: Vec<Vec<u8>>,
}

/// A server configuration that SIGHUP can replace.
pub struct ServerTls {
    files: ServerTlsFiles,
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<ServerSessionMemoryCache>,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Reads the files; an error names the file and what is wrong.
    pub fn load(files: ServerTlsFiles) -> Result<ServerTls, String> {
        let ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS ticketer: {e}"))?;
        let sessions = ServerSessionMemoryCache::new(limits::TLS_SESSION_CACHE_ENTRIES);
        let config = build_server(&files, &ticketer, &sessions)?;
        Ok(ServerTls {
            files,
            ticketer,
            sessions,
            current: RwLock::new(config),
        })
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the files; on error the previous configuration stays.
    /// Connections already up keep the configuration they started with.
    pub fn reload(&self) -> Result<(), String> {
        let config = build_server(&self.files, &self.ticketer, &self.sessions)?;
        match self.current.write() {
            Ok(mut c) => *c = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        Ok(())
    }

    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }
}

fn build_server(
    files: &ServerTlsFiles,
    ticketer: &Arc<dyn ProducesTickets>,
    sessions: &Arc<ServerSessionMemoryCache>,
) -> Result<Arc<ServerConfig>, String> {
    let certs = read_certs(&files.cert_file)?;
    let key = read_key(&files.key_file)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "{} / {}: certificate and key do not make a server identity: {e}",
                files.cert_file.display(),
                files.key_file.display()
            )
        })?;
    config.alpn_protocols = files.alpn.clone();
    config.ticketer = ticketer.clone();
    config.session_storage = sessions.clone();
    Ok(Arc::new(config))
}

/// The certificates outbound HTTPS trusts, as DER (for clients that build their
/// own rustls config, like ureq): the system's usable roots (from the usual
/// places, `SSL_CERT_FILE`/`SSL_CERT_DIR` honoured) then every certificate in
/// `ca_file`. Errors when `ca_file` cannot be read or holds a certificate that is
/// not a usable trust anchor; an empty list (no system roots, no file) is not an
/// error here.
pub fn client_root_certs(ca_file: Option<&Path>) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut probe = RootCertStore::empty();
    let mut certs = Vec::new();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A malformed system certificate is skipped, as every TLS client does.
        if probe.add(cert.clone()).is_ok() {
            certs.push(cert);
        }
    }
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            probe
                .add(cert.clone())
                .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
            certs.push(cert);
        }
    }
    Ok(certs)
}

/// What outbound HTTPS trusts (`client_root_certs` as a store). Errors only when
/// nothing at all can be trusted or `ca_file` is bad.
pub fn client_roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in client_root_certs(ca_file)? {
        // Each one was added to a store once already.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("no trusted CA certificates: no system roots found and no outbound_ca_file".into());
    }
    Ok(roots)
}

/// A client configuration over `client_roots`.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let roots = client_roots(ca_file)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Test certificates for the crate's own tests: a CA and a server identity it
/// signed, written as PEM files, plus the rustls configs both sides need.
#[cfg(test)]
pub(crate) mod test_pki {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    use rustls::pki_types::CertificateDer;
    use rustls::{ClientConfig, RootCertStore, ServerConfig};

    use super::{ServerTls, ServerTlsFiles, provider};

    /// A CA and one server certificate it issued, as files in `dir`.
    pub(crate) struct TestPki {
        pub ca_file: PathBuf,
        pub ca: CertificateDer<'static>,
        pub cert_file: PathBuf,
        pub key_file: PathBuf,
    }

    impl TestPki {
        /// A fresh CA named `ca_name` and a server certificate for `names` (IPs or DNS).
        pub(crate) fn new(dir: &Path, ca_name: &str, names: &[&str]) -> TestPki {
            std::fs::create_dir_all(dir).expect("test PKI dir");
            let ca_key = KeyPair::generate().expect("CA key");
            let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca_params.distinguished_name.push(DnType::CommonName, ca_name);
            ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
            let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
            let key = KeyPair::generate().expect("server key");
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names).expect("server params");
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let cert = params.signed_by(&key, &ca, &ca_key).expect("server certificate");
            let pki = TestPki {
                ca_file: dir.join(format!("{ca_name}.pem")),
                ca: ca.der().clone(),
                cert_file: dir.join("server.pem"),
                key_file: dir.join("server.key"),
            };
            std::fs::write(&pki.ca_file, ca.pem()).expect("write CA");
            std::fs::write(&pki.cert_file, cert.pem()).expect("write cert");
            std::fs::write(&pki.key_file, key.serialize_pem()).expect("write key");
            pki
        }

        pub(crate) fn files(&self, alpn: &[&[u8]]) -> ServerTlsFiles {
            ServerTlsFiles {
                cert_file: self.cert_file.clone(),
                key_file: self.key_file.clone(),
                alpn: alpn.iter().map(|p| p.to_vec()).collect(),
            }
        }

        pub(crate) fn server_tls(&self, alpn: &[&[u8]]) -> ServerTls {
            ServerTls::load(self.files(alpn)).expect("test server TLS")
        }

        pub(crate) fn server_config(&self, alpn: &[&[u8]]) -> Arc<ServerConfig> {
            self.server_tls(alpn).current()
        }

        /// A client trusting only this CA, offering `alpn`.
        pub(crate) fn client_config(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca.clone()).expect("test CA is a trust anchor");
            let mut config = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(config)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh identity (new CA, new server key) in the same files each call.
    fn write_identity(dir: &Path) -> ServerTlsFiles {
        test_pki::TestPki::new(dir, "reload-ca", &["localhost"]).files(&[b"mqtt"])
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pulsegate-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn loads_and_reloads_keeping_the_old_config_on_a_bad_file() {
        let dir = temp_dir("reload");
        let files = write_identity(&dir);
        let tls = ServerTls::load(files.clone()).unwrap();
        let first = tls.current();
        assert_eq!(first.alpn_protocols, vec![b"mqtt".to_vec()]);
        // A new identity in the same files is picked up.
        write_identity(&dir);
        tls.reload().unwrap();
        assert!(!Arc::ptr_eq(&first, &tls.current()));
        // A broken key file is refused and the last good config stays.
        std::fs::write(&files.key_file, "not a key").unwrap();
        let kept = tls.current();
        let err = tls.reload().unwrap_err();
        assert!(err.contains("server.key"), "{err}");
        assert!(Arc::ptr_eq(&kept, &tls.current()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_or_empty_certificate_file_is_named() {
        let dir = temp_dir("missing");
        let mut files = write_identity(&dir);
        files.cert_file = dir.join("nope.pem");
        let err = ServerTls::load(files.clone()).err().unwrap();
        assert!(err.contains("nope.pem"), "{err}");
        std::fs::write(&files.cert_file, "").unwrap();
        let err = ServerTls::load(files).err().unwrap();
        assert!(err.contains("no CERTIFICATE"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_ca_file_is_named() {
        let dir = temp_dir("bad-ca");
        let path = dir.join("ca.pem");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = client_root_certs(Some(&path)).unwrap_err();
        assert!(err.contains("ca.pem"), "{err}");
        let err = client_root_certs(Some(&dir.join("absent.pem"))).unwrap_err();
        assert!(err.contains("absent.pem"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn client_roots_add_the_ca_file() {
        let dir = temp_dir("ca");
        let files = write_identity(&dir);
        let without = client_roots(None).map(|r| r.len()).unwrap_or(0);
        let with = client_roots(Some(&files.cert_file)).unwrap();
        assert_eq!(with.len(), without + 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
