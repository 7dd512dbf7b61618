//! TLS for the devices (`--tls`): the rustls client configuration a worker's
//! connections share (ring provider, the trusted CA, ALPN), its session store, and
//! naming TLS errors for the report. The handshake counters and the report
//! section are in `stats`.
//!
//! Owns: `ClientTls` (configs + server name; a device's first connection offers no
//! session, its reconnects do), `TicketPool` (the worker's shared
//! client session cache: TLS 1.3 tickets in a bounded pool any device may take
//! one from, the latest TLS 1.2 session, the key-exchange hint), `error_kind`.
//! Must never: do socket I/O (the worker drives each `ClientConnection`), keep
//! more tickets than its bound, or hand out a TLS 1.3 ticket twice.

pub mod stats;
#[cfg(test)]
mod tests;

use rustls::client::{ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, NamedGroup, RootCertStore};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Largest CA file read.
pub const CA_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Fewest TLS 1.3 tickets a worker's pool keeps (its bound is its device count,
/// at least this): one per device lets a whole storm resume.
pub const TICKETS_PER_WORKER_MIN: usize = 16;

/// The TLS options of a run, as given on the command line.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    pub ca_file: Option<PathBuf>,
    pub server_name: String,
    /// Resume with the worker's shared session cache (false: every handshake is full).
    pub resume: bool,
    /// ALPN protocols offered, most preferred first (empty: no ALPN).
    pub alpn: Vec<Vec<u8>>,
}

impl TlsOptions {
    /// The options of `--tls` (None without it).
    pub fn from_cli(s: &crate::cli::SecurityArgs) -> Option<TlsOptions> {
        s.tls.then(|| TlsOptions {
            ca_file: s.tls_ca_file.clone(),
            server_name: s.tls_server_name.clone(),
            resume: !s.no_tls_resume,
            alpn: parse_alpn(&s.tls_alpn),
        })
    }
}

/// Parses `--tls-alpn`: a comma list, or "none" for no ALPN.
pub fn parse_alpn(spec: &str) -> Vec<Vec<u8>> {
    if spec.eq_ignore_ascii_case("none") {
        return Vec::new();
    }
    spec.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.as_bytes().to_vec())
        .collect()
}

/// What one worker's connections share.
pub struct ClientTls {
    /// For a device that was connected before: offers a session from the pool.
    pub config: Arc<ClientConfig>,
    /// For a device's first connection: a real device has no session yet, so it
    /// offers none (but the tickets it receives go to the pool).
    pub fresh_config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
    pub pool: Option<Arc<TicketPool>>,
}

fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("--tls-ca-file {}: {e}", path.display()))?;
    if meta.len() > CA_FILE_BYTES_MAX {
        return Err(format!(
            "--tls-ca-file {}: {} bytes, more than {CA_FILE_BYTES_MAX}",
            path.display(),
            meta.len()
        ));
    }
    let pem = std::fs::read(path).map_err(|e| format!("--tls-ca-file {}: {e}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-ca-file {}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("--tls-ca-file {}: no CERTIFICATE in the file", path.display()));
    }
    Ok(certs)
}

impl ClientTls {
    /// The configuration for `devices` connections. Trusts the CA file if given,
    /// else the system roots.
    pub fn new(opts: &TlsOptions, devices: usize) -> Result<ClientTls, String> {
        let server_name = ServerName::try_from(opts.server_name.clone())
            .map_err(|e| format!("--tls-server-name {:?}: {e}", opts.server_name))?;
        let roots = match &opts.ca_file {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_ca(path)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("--tls-ca-file {}: not a usable CA: {e}", path.display()))?;
                }
                roots
            }
            None => pulsegate::tls::client_roots(None)?,
        };
        let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = opts.alpn.clone();
        let mut fresh = config.clone();
        let pool = if opts.resume {
            let pool = Arc::new(TicketPool::new(devices.max(TICKETS_PER_WORKER_MIN)));
            config.resumption = Resumption::store(pool.clone());
            fresh.resumption = Resumption::store(Arc::new(FillOnly(pool.clone())));
            Some(pool)
        } else {
            config.resumption = Resumption::disabled();
            fresh.resumption = Resumption::disabled();
            None
        };
        Ok(ClientTls {
            config: Arc::new(config),
            fresh_config: Arc::new(fresh),
            server_name,
            pool,
        })
    }
}

/// A worker's shared client session cache. rustls's own memory cache keeps a few
/// TLS 1.3 tickets per server name, and every device here talks to the same
/// name, so after a storm only a handful of N reconnects would resume. The pool
/// keeps up to `tickets_max` tickets (newest taken first, oldest dropped), which
/// is what N devices with one ticket each would hold.
#[derive(Debug)]
pub struct TicketPool {
    tickets_max: usize,
    inner: Mutex<PoolInner>,
}

#[derive(Debug, Default)]
struct PoolInner {
    kx_hint: Option<(ServerName<'static>, NamedGroup)>,
    tls12: Option<(ServerName<'static>, Tls12ClientSessionValue)>,
    tls13: VecDeque<(ServerName<'static>, Tls13ClientSessionValue)>,
}

impl TicketPool {
    pub fn new(tickets_max: usize) -> TicketPool {
        TicketPool {
            tickets_max: tickets_max.max(1),
            inner: Mutex::new(PoolInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolInner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// TLS 1.3 tickets held now.
    pub fn tickets(&self) -> usize {
        self.lock().tls13.len()
    }
}

impl ClientSessionStore for TicketPool {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.lock().kx_hint = Some((server_name, group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        match &self.lock().kx_hint {
            Some((name, group)) if name == server_name => Some(*group),
            _ => None,
        }
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.lock().tls12 = Some((server_name, value));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        match &self.lock().tls12 {
            Some((name, value)) if name == server_name => Some(value.clone()),
            _ => None,
        }
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        let mut inner = self.lock();
        if inner.tls12.as_ref().is_some_and(|(name, _)| name == server_name) {
            inner.tls12 = None;
        }
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        let mut inner = self.lock();
        while inner.tls13.len() >= self.tickets_max {
            inner.tls13.pop_front();
        }
        inner.tls13.push_back((server_name, value));
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        let mut inner = self.lock();
        let at = inner.tls13.iter().rposition(|(name, _)| name == server_name)?;
        inner.tls13.remove(at).map(|(_, value)| value)
    }
}

/// The pool as a first connection sees it: what it is given goes in, nothing comes
/// out (the key-exchange hint aside, which is not a session).
#[derive(Debug)]
struct FillOnly(Arc<TicketPool>);

impl ClientSessionStore for FillOnly {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.0.set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.0.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.0.set_tls12_session(server_name, value)
    }

    fn tls12_session(&self, _server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _server_name: &ServerName<'static>) {}

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.0.insert_tls13_ticket(server_name, value)
    }

    fn take_tls13_ticket(&self, _server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        None
    }
}

/// A short stable name of a TLS error for report keys ("cert_unknown_issuer",
/// "alert_handshake_failure", "peer_misbehaved", ...).
pub fn error_kind(e: &rustls::Error) -> String {
    use rustls::Error as E;
    let snake = |s: String| {
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if c.is_ascii_uppercase() {
                if i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
            } else if c.is_ascii_alphanumeric() || c == '_' {
                out.push(c);
            } else {
                break;
            }
        }
        out
    };
    let head = |d: String| snake(d.split(['(', ' ', '{']).next().unwrap_or("").to_string());
    match e {
        E::InvalidCertificate(c) => format!("cert_{}", head(format!("{c:?}")).trim_end_matches("_context")),
        E::AlertReceived(a) => format!("alert_{}", head(format!("{a:?}"))),
        E::PeerMisbehaved(_) => "peer_misbehaved".into(),
        E::PeerIncompatible(_) => "peer_incompatible".into(),
        E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => "inappropriate_message".into(),
        E::InvalidMessage(_) => "invalid_message".into(),
        E::NoApplicationProtocol => "no_application_protocol".into(),
        E::DecryptError => "decrypt_error".into(),
        other => head(format!("{other:?}")),
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn alpn_spec() {
        assert_eq!(parse_alpn("mqtt"), vec![b"mqtt".to_vec()]);
        assert_eq!(parse_alpn("mqtt, x-a"), vec![b"mqtt".to_vec(), b"x-a".to_vec()]);
        assert!(parse_alpn("none").is_empty());
        assert!(parse_alpn("").is_empty());
    }

    #[test]
    fn error_kinds_are_short_names() {
        use rustls::{AlertDescription, CertificateError, Error};
        assert_eq!(
            error_kind(&Error::InvalidCertificate(CertificateError::UnknownIssuer)),
            "cert_unknown_issuer"
        );
        assert_eq!(
            error_kind(&Error::InvalidCertificate(CertificateError::NotValidForName)),
            "cert_not_valid_for_name"
        );
        assert_eq!(
            error_kind(&Error::AlertReceived(AlertDescription::HandshakeFailure)),
            "alert_handshake_failure"
        );
        assert_eq!(error_kind(&Error::DecryptError), "decrypt_error");
        let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
        let ctx = CertificateError::NotValidForNameContext {
            expected: name,
            presented: vec![],
        };
        assert_eq!(error_kind(&Error::InvalidCertificate(ctx)), "cert_not_valid_for_name");
        assert_eq!(error_kind(&Error::NoApplicationProtocol), "no_application_protocol");
        assert_eq!(error_kind(&Error::General("x y".into())), "general");
    }

    #[test]
    fn config_needs_a_good_ca_and_name() {
        let dir = std::env::temp_dir().join(format!("pulsegate-loadgen-tlscfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.pem");
        std::fs::write(&bad, b"not a pem").unwrap();
        let opts = |ca: Option<PathBuf>, name: &str| TlsOptions {
            ca_file: ca,
            server_name: name.into(),
            resume: true,
            alpn: parse_alpn("mqtt"),
        };
        let err = ClientTls::new(&opts(Some(bad), "localhost"), 10).err().unwrap();
        assert!(err.contains("no CERTIFICATE"), "{err}");
        assert!(ClientTls::new(&opts(Some(dir.join("missing.pem")), "localhost"), 10).is_err());
        let err = ClientTls::new(&opts(None, "not a name!"), 10).err().unwrap();
        assert!(err.contains("--tls-server-name"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pool_hint_and_empty_lookups() {
        // Tickets only come out of real handshakes (tls/tests.rs); here the
        // bookkeeping that needs no session value.
        let pool = TicketPool::new(3);
        let name = ServerName::try_from("localhost").unwrap();
        assert!(pool.take_tls13_ticket(&name).is_none());
        assert!(pool.tls12_session(&name).is_none());
        pool.set_kx_hint(name.clone(), NamedGroup::X25519);
        assert_eq!(pool.kx_hint(&name), Some(NamedGroup::X25519));
        let other = ServerName::try_from("other").unwrap();
        assert_eq!(pool.kx_hint(&other), None);
        assert_eq!(pool.tickets(), 0);
    }
}
