//! The worker pool behind `OutboundPool`: a bounded request queue, N worker
//! threads sharing one keep-alive `ureq::Agent` (rustls for https://, over the
//! roots it is started with), and the mapping of ureq results/errors onto
//! `PostOutcome`. The agent's resolver is `PolicyResolver`: it resolves
//! with ureq's own resolver and hands the connector only addresses the
//! `UrlPolicy` passed, so a name re-pointed inward after submission (DNS
//! rebinding) is refused at send time, never connected to.
//!
//! It must never block in `post`, never follow redirects, never retry, never
//! read more than `RESPONSE_DRAIN_MAX` bytes of a response body, and never run
//! a request past its own timeout (so `shutdown` is bounded).

use std::io::{self, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use rustls::pki_types::CertificateDer;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use super::url_policy::{self, Refused, UrlPolicy};
use super::{PostOutcome, PostRequest, PostResult};

/// Upper clamp on `PostRequest::timeout_ms`, so that `shutdown` stays bounded
/// even if a caller passes something absurd.
pub const MAX_TIMEOUT_MS: u64 = 300_000;

/// At most this many response-body bytes are read (and discarded). A body that
/// ends within it lets the connection go back to the keep-alive pool; a longer
/// one is abandoned and its connection closed.
pub const RESPONSE_DRAIN_MAX: u64 = 64 * 1024;

/// `Other` message for requests still queued when `shutdown` was called.
const NOT_SENT_AT_SHUTDOWN: &str = "pool shut down before the request was sent";

/// A fixed set of worker threads POSTing requests from a bounded queue.
///
/// Results arrive on the receiver returned by [`OutboundPool::start`], one per
/// accepted request. The result channel is unbounded so workers never stall on
/// a slow consumer: the consumer must keep draining it.
pub struct OutboundPool {
    /// `None` once shut down (dropping it is what lets workers exit).
    tx: Option<Sender<PostRequest>>,
    stopping: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl OutboundPool {
    /// `workers` threads (at least 1); at most `queue_max` requests waiting
    /// (requests being sent do not count). `https://` servers are trusted when
    /// their chain ends in one of `roots` (`tls::client_root_certs`; an empty
    /// list trusts nothing). Every URL and every address it resolves to must
    /// pass `policy`. Results go to the returned receiver.
    pub fn start(
        workers: usize,
        queue_max: usize,
        roots: &[CertificateDer<'static>],
        policy: Arc<UrlPolicy>,
    ) -> (OutboundPool, Receiver<PostResult>) {
        let workers = workers.max(1);
        let (tx, rx) = crossbeam_channel::bounded::<PostRequest>(queue_max);
        let (res_tx, res_rx) = crossbeam_channel::unbounded::<PostResult>();
        let stopping = Arc::new(AtomicBool::new(false));
        let agent = build_agent(workers, roots, policy);

        let handles = (0..workers)
            .map(|i| {
                let rx = rx.clone();
                let res_tx = res_tx.clone();
                let stopping = Arc::clone(&stopping);
                let agent = agent.clone();
                thread::Builder::new()
                    .name(format!("outbound-{i}"))
                    .spawn(move || worker_loop(&agent, &rx, &res_tx, &stopping))
                    .expect("spawn outbound worker thread")
            })
            .collect();

        let pool = OutboundPool {
            tx: Some(tx),
            stopping,
            workers: handles,
        };
        (pool, res_rx)
    }

    /// Never blocks: `Err(request)` back when the queue is full or the pool is
    /// shut down (or every worker has died).
    pub fn post(&self, request: PostRequest) -> Result<(), PostRequest> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(request);
        }
        match &self.tx {
            None => Err(request),
            Some(tx) => tx.try_send(request).map_err(|e| match e {
                TrySendError::Full(r) | TrySendError::Disconnected(r) => r,
            }),
        }
    }

    /// Requests waiting in the queue (not counting the ones being sent).
    pub fn queued(&self) -> usize {
        self.tx.as_ref().map_or(0, Sender::len)
    }

    /// Stops taking requests, lets in-flight ones finish or time out, joins
    /// (bounded by the longest in-flight timeout). Requests still queued are not
    /// sent; each gets `PostOutcome::Other` on the result channel so every
    /// accepted request still yields exactly one result.
    pub fn shutdown(mut self) {
        self.signal_stop();
        for handle in self.workers.drain(..) {
            // A worker panic has already been reported as far as it can be;
            // nothing useful to do with it here.
            let _ = handle.join();
        }
    }

    /// Refuses further posts and disconnects the queue (workers drain and exit).
    pub(super) fn signal_stop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        self.tx = None;
    }
}

impl Drop for OutboundPool {
    /// Dropping without `shutdown` stops the pool the same way but does not
    /// wait: workers finish their in-flight request and exit on their own.
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// ureq's resolver behind the URL policy: the connector sees only checked addresses.
#[derive(Debug)]
struct PolicyResolver {
    inner: DefaultResolver,
    policy: Arc<UrlPolicy>,
}

impl Resolver for PolicyResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let addrs = self.inner.resolve(uri, config, timeout)?;
        match self.policy.check_addrs(&addrs) {
            Ok(()) => Ok(addrs),
            // Carried through ureq as an io error; `map_error` takes it back out.
            Err(refused) => Err(ureq::Error::Io(io::Error::new(
                io::ErrorKind::PermissionDenied,
                refused,
            ))),
        }
    }
}

fn build_agent(workers: usize, roots: &[CertificateDer<'static>], policy: Arc<UrlPolicy>) -> ureq::Agent {
    let roots: Vec<Certificate<'static>> = roots.iter().map(|c| Certificate::from_der(c).to_owned()).collect();
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(crate::tls::provider())
        .root_certs(RootCerts::new_with_certs(&roots))
        .build();
    let config = ureq::Agent::config_builder()
        .tls_config(tls)
        // Any status is a result, not an error.
        .http_status_as_error(false)
        // A 3xx is just a status: never follow (0 also means never an error).
        .max_redirects(0)
        // Deterministic routing: ignore HTTP(S)_PROXY from the environment.
        .proxy(None)
        .user_agent("pulsegate-outbound")
        .max_idle_connections(workers.max(10))
        .max_idle_connections_per_host(workers)
        .build();
    let resolver = PolicyResolver {
        inner: DefaultResolver::default(),
        policy,
    };
    ureq::Agent::with_parts(config, DefaultConnector::default(), resolver)
}

fn worker_loop(agent: &ureq::Agent, rx: &Receiver<PostRequest>, results: &Sender<PostResult>, stopping: &AtomicBool) {
    // Ends when the pool's sender is gone and the queue is empty.
    while let Ok(request) = rx.recv() {
        let (outcome, latency_us) = if stopping.load(Ordering::Acquire) {
            (PostOutcome::Other(NOT_SENT_AT_SHUTDOWN.to_string()), 0)
        } else {
            let started = Instant::now();
            let outcome = catch_unwind(AssertUnwindSafe(|| execute(agent, &request)))
                .unwrap_or_else(|_| PostOutcome::Other("panic in http client".to_string()));
            let latency = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            (outcome, latency)
        };
        // The consumer may have dropped the receiver; nothing to do then.
        let _ = results.send(PostResult {
            tag: request.tag,
            outcome,
            latency_us,
        });
    }
}

/// Performs one POST, synchronously, within `request.timeout_ms`.
fn execute(agent: &ureq::Agent, request: &PostRequest) -> PostOutcome {
    match url_policy::parse(&request.url) {
        Ok(_) => {}
        Err(why @ (Refused::Credentials | Refused::ControlCharacter | Refused::TooLong { .. })) => {
            return PostOutcome::Refused(why.to_string());
        }
        Err(why) => return PostOutcome::BadUrl(why.to_string()),
    }
    let timeout = Duration::from_millis(request.timeout_ms.clamp(1, MAX_TIMEOUT_MS));

    let mut builder = agent.post(request.url.as_str());
    let has_content_type = request
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    if !has_content_type {
        builder = builder.header("content-type", request.content_type);
    }
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let builder = builder.config().timeout_global(Some(timeout)).build();

    match builder.send(request.body.as_slice()) {
        Ok(mut response) => {
            let status = response.status().as_u16();
            // Read and discard a bounded amount so the connection can be reused.
            let mut reader = response.body_mut().as_reader().take(RESPONSE_DRAIN_MAX);
            match io::copy(&mut reader, &mut io::sink()) {
                Ok(_) => PostOutcome::Status(status),
                Err(e) => match map_error(ureq::Error::from(e)) {
                    // The budget covers the body read too.
                    PostOutcome::Timeout => PostOutcome::Timeout,
                    // The status was received; a broken body does not undo it.
                    _ => PostOutcome::Status(status),
                },
            }
        }
        Err(e) => match map_error(e) {
            // Name the server (not the path: it may carry a token) with the TLS error.
            PostOutcome::Tls(why) => PostOutcome::Tls(format!("{}: {why}", authority(&request.url))),
            other => other,
        },
    }
}

/// `host:port` of a URL `url_policy::parse` accepted.
fn authority(url: &str) -> String {
    url.parse::<ureq::http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

fn map_error(e: ureq::Error) -> PostOutcome {
    use ureq::Error as E;
    match e {
        E::Timeout(_) => PostOutcome::Timeout,
        E::Rustls(tls) => PostOutcome::Tls(tls.to_string()),
        E::Tls(what) => PostOutcome::Tls(what.to_string()),
        // rustls reports handshake failures through the transport as InvalidData.
        E::Io(io) if io.get_ref().is_some_and(|inner| inner.is::<Refused>()) => {
            PostOutcome::Refused(io.get_ref().map_or_else(String::new, ToString::to_string))
        }
        E::Io(io) if io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) => {
            PostOutcome::Tls(io.get_ref().map_or_else(String::new, ToString::to_string))
        }
        E::Io(io) => match io.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => PostOutcome::Timeout,
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::AddrNotAvailable
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::NetworkDown => PostOutcome::ConnectFailed(io.to_string()),
            _ => PostOutcome::Other(format!("io: {io}")),
        },
        E::HostNotFound => PostOutcome::ConnectFailed("host not found".to_string()),
        E::ConnectionFailed => PostOutcome::ConnectFailed("connection failed".to_string()),
        E::BadUri(s) | E::RequireHttpsOnly(s) => PostOutcome::BadUrl(s),
        other => PostOutcome::Other(other.to_string()),
    }
}
