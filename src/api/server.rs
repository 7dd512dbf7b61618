//! Sockets and threads: one acceptor thread (nonblocking listener polled every 10 ms) and one
//! blocking thread per connection, capped at `max_connections`. Runs the keep-alive loop:
//! bounded head buffer, bodies from Content-Length, pipelined requests in order, idle and
//! slowloris deadlines, graceful close, and a shutdown bounded in time. With TLS each
//! connection is a `stream::Stream::Tls` made from the config current at accept; the TLS
//! handshake is read through the same loop, so the idle deadline bounds it too.
//!
//! Owns: connection lifecycle, reading and buffering, timeouts, writing responses.
//! Must never: interpret paths or bodies (that is `routes`), parse headers itself (that is
//! `request`), block without a deadline, or panic on network data.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::request::{self, HeadError, RequestHead};
use super::response::{CONTINUE, Response};
use super::stream::Stream;
use super::{Gateway, HttpConfig, HttpCounters, routes};
use crate::tls::ServerTls;

/// How often the acceptor checks for new connections and for shutdown.
const ACCEPT_POLL: Duration = Duration::from_millis(10);
/// Longest single blocking read, so connection threads notice shutdown quickly.
const READ_SLICE: Duration = Duration::from_millis(50);
/// After shutdown starts, how long a half-received request may still complete.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// Total time `shutdown()` waits for threads before detaching the stragglers.
const SHUTDOWN_BUDGET: Duration = Duration::from_millis(1800);
/// Graceful close: after our FIN, drain what the client still sends for at most this long,
/// so unread request bytes do not turn the close into an RST that destroys our response.
const LINGER: Duration = Duration::from_millis(250);
const LINGER_MAX_BYTES: usize = 256 * 1024;
/// Bounds on the acceptor's own 503 answer when over capacity (it must not stall accepting).
const REJECT_WRITE_TIMEOUT: Duration = Duration::from_millis(100);
const REJECT_LINGER: Duration = Duration::from_millis(50);
/// Over capacity with TLS the 503 needs a handshake first: that runs on its own thread
/// (never on the acceptor), at most this many at once (beyond: closed without a word),
/// each within this budget.
const TLS_REJECTS_MAX: usize = 8;
const TLS_REJECT_BUDGET: Duration = Duration::from_millis(500);
/// Responses must drain within this; a client that does not read is dropped.
const MAX_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const READ_CHUNK: usize = 8 * 1024;

struct Shared {
    stopping: AtomicBool,
    active: AtomicUsize,
    /// TLS 503 answers in flight (threads of `reject_tls`).
    rejecting: AtomicUsize,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Where new connections get their TLS config (None: plain HTTP).
    tls: Option<Arc<ServerTls>>,
    counters: Arc<HttpCounters>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn workers(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        // The vector stays valid even if a holder panicked: ignore poisoning.
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Running HTTP server. Dropping it without `shutdown()` signals the threads to stop but does
/// not wait for them.
pub struct HttpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Takes an already-bound listener (the gateway binds it so the port is known before start).
    /// With `tls` it serves HTTPS only: each new connection uses `tls.current()`, so a
    /// `reload()` applies to connections accepted after it. Serves until `shutdown()`; returns
    /// an error only if it cannot start (including a config with a zero limit: `InvalidInput`).
    pub fn start(
        listener: TcpListener,
        config: HttpConfig,
        gateway: Arc<dyn Gateway>,
        tls: Option<Arc<ServerTls>>,
        counters: Arc<HttpCounters>,
    ) -> io::Result<HttpServer> {
        validate(&config)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            rejecting: AtomicUsize::new(0),
            workers: Mutex::new(Vec::new()),
            tls,
            counters,
        });
        let acceptor = thread::Builder::new().name("api-accept".into()).spawn({
            let shared = Arc::clone(&shared);
            move || accept_loop(&listener, &config, &gateway, &shared)
        })?;
        Ok(HttpServer {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes idle keep-alive connections (requests in flight get up to
    /// 0.5 s to finish and are answered with `Connection: close`), joins the threads.
    /// Bounded in time (≤ 2 s): threads still busy at the deadline (e.g. stuck in
    /// `Gateway::push`) are detached.
    pub fn shutdown(mut self) {
        let deadline = Instant::now() + SHUTDOWN_BUDGET;
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            join_until(acceptor, deadline);
        }
        let workers = std::mem::take(&mut *self.shared.workers());
        for worker in workers {
            join_until(worker, deadline);
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
    }
}

fn validate(c: &HttpConfig) -> io::Result<()> {
    let zero = [
        ("max_connections", c.max_connections == 0),
        ("max_header_bytes", c.max_header_bytes == 0),
        ("max_body_bytes", c.max_body_bytes == 0),
        ("idle_timeout_ms", c.idle_timeout_ms == 0),
        ("max_requests_per_connection", c.max_requests_per_connection == 0),
    ];
    match zero.iter().find(|(_, is_zero)| *is_zero) {
        Some((name, _)) => Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("HttpConfig.{name} must be non-zero"),
        )),
        None => Ok(()),
    }
}

fn join_until(handle: JoinHandle<()>, deadline: Instant) {
    while !handle.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    if handle.is_finished() {
        // A panicked thread has nothing left to clean up; its error is not ours to report.
        let _ = handle.join();
    }
}

fn accept_loop(listener: &TcpListener, config: &HttpConfig, gateway: &Arc<dyn Gateway>, shared: &Arc<Shared>) {
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, _)) => admit(stream, config, gateway, shared),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // WouldBlock: nothing pending. Anything else (EMFILE, ECONNABORTED...): back off and
            // keep serving rather than die.
            Err(_) => thread::sleep(ACCEPT_POLL),
        }
        shared.workers().retain(|h| !h.is_finished());
    }
}

/// Decrements the active-connection count when the connection thread ends (or never starts).
struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn admit(tcp: TcpStream, config: &HttpConfig, gateway: &Arc<dyn Gateway>, shared: &Arc<Shared>) {
    // Accepted sockets may inherit the listener's nonblocking mode on some platforms.
    if tcp.set_nonblocking(false).is_err() {
        return;
    }
    let _ = tcp.set_nodelay(true);
    let stream = match &shared.tls {
        None => Stream::Plain(tcp),
        Some(tls) => match Stream::tls(tcp, tls.current()) {
            Ok(s) => s,
            // Only a config rustls refuses fails here; the socket closes.
            Err(_) => return,
        },
    };
    // Only this thread increments, so the check cannot be raced past the cap.
    if shared.active.load(Ordering::SeqCst) >= config.max_connections {
        match stream {
            Stream::Plain(tcp) => reject(tcp),
            tls @ Stream::Tls(_) => reject_tls(tls, shared),
        }
        return;
    }
    shared.active.fetch_add(1, Ordering::SeqCst);
    let guard = ActiveGuard(Arc::clone(shared));
    let conn = Connection {
        stream,
        buf: Vec::new(),
        config: config.clone(),
        gateway: Arc::clone(gateway),
        shared: Arc::clone(shared),
        stop_seen: None,
    };
    let spawned = thread::Builder::new().name("api-conn".into()).spawn(move || {
        let _guard = guard;
        conn.serve();
    });
    // If spawning fails the closure is dropped: the guard decrements and the socket closes.
    if let Ok(handle) = spawned {
        shared.workers().push(handle);
    }
}

fn too_many_connections() -> Response {
    Response::error(503, "too_many_connections", "too many concurrent connections").with_header("Retry-After", "1")
}

/// Over capacity: answer 503 and close, with tight bounds since this runs on the acceptor.
fn reject(mut stream: TcpStream) {
    if stream.set_write_timeout(Some(REJECT_WRITE_TIMEOUT)).is_ok()
        && stream.write_all(&too_many_connections().to_bytes(false)).is_ok()
        && stream.shutdown(Shutdown::Write).is_ok()
    {
        linger(&stream, REJECT_LINGER);
    }
}

/// Over capacity with TLS: handshake, 503, close, on a short-lived thread of its own (at most
/// `TLS_REJECTS_MAX`, each within `TLS_REJECT_BUDGET`); beyond that the socket just closes.
fn reject_tls(mut stream: Stream, shared: &Arc<Shared>) {
    if shared.rejecting.load(Ordering::SeqCst) >= TLS_REJECTS_MAX {
        return;
    }
    shared.rejecting.fetch_add(1, Ordering::SeqCst);
    let owner = Arc::clone(shared);
    let spawned = thread::Builder::new().name("api-reject".into()).spawn(move || {
        let deadline = Instant::now() + TLS_REJECT_BUDGET;
        if handshake(&mut stream, deadline, &owner.stopping)
            && stream.tcp().set_write_timeout(Some(REJECT_WRITE_TIMEOUT)).is_ok()
            && stream.send(&too_many_connections().to_bytes(false)).is_ok()
            && stream.close_write().is_ok()
        {
            linger(stream.tcp(), REJECT_LINGER);
        }
        if stream.handshaking() && !owner.stopping() {
            owner.counters.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
        }
        owner.rejecting.fetch_sub(1, Ordering::SeqCst);
    });
    match spawned {
        Ok(handle) => shared.workers().push(handle),
        // The closure (and the stream) is gone: undo the count.
        Err(_) => {
            shared.rejecting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Drives a TLS handshake to its end (true) or until `deadline`, an error, EOF or shutdown.
/// Application bytes that arrive with it are discarded (the caller only answers).
fn handshake(stream: &mut Stream, deadline: Instant, stopping: &AtomicBool) -> bool {
    let mut sink = [0u8; 1024];
    while stream.handshaking() {
        let now = Instant::now();
        if now >= deadline || stopping.load(Ordering::SeqCst) {
            return false;
        }
        if stream
            .tcp()
            .set_read_timeout(Some((deadline - now).min(READ_SLICE)))
            .is_err()
        {
            return false;
        }
        match stream.read(&mut sink) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return false,
        }
    }
    true
}

/// After our FIN: drain briefly so the peer reads our last response before the socket closes
/// (raw bytes: with TLS, the records the peer still sends are not decrypted).
fn linger(mut stream: &TcpStream, max: Duration) {
    let deadline = Instant::now() + max;
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while drained < LINGER_MAX_BYTES {
        let now = Instant::now();
        if now >= deadline || stream.set_read_timeout(Some(deadline - now)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(n) => drained += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Outcome of waiting for more bytes.
enum Fill {
    Data,
    /// Peer closed, reset, or a socket error.
    Closed,
    TimedOut,
    Stopping,
}

/// Why reading a request ended without one.
enum ReadEnd {
    /// Close without a word (peer gone, idle timeout, shutdown while idle).
    Silent,
    /// Answer this, then close.
    Answer(Response),
}

struct Connection {
    stream: Stream,
    /// Bytes read but not consumed yet: the current head, a body, pipelined requests.
    buf: Vec<u8>,
    config: HttpConfig,
    gateway: Arc<dyn Gateway>,
    shared: Arc<Shared>,
    /// When this connection first saw shutdown while mid-request (starts its grace period).
    stop_seen: Option<Instant>,
}

impl Connection {
    fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.config.idle_timeout_ms)
    }

    fn serve(mut self) {
        self.keep_alive_loop();
        // Ended before the handshake completed: a bad or plaintext ClientHello, an alert, a
        // client that never finished in time or went away. Shutdown is not the client's fault.
        if self.stream.handshaking() && !self.shared.stopping() {
            self.shared
                .counters
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn keep_alive_loop(&mut self) {
        let write_timeout = self.idle_timeout().min(MAX_WRITE_TIMEOUT);
        if self.stream.tcp().set_write_timeout(Some(write_timeout)).is_err() {
            return;
        }
        let mut served: u32 = 0;
        loop {
            let head = match self.read_head() {
                Ok(head) => head,
                Err(ReadEnd::Silent) => {
                    self.stream.close_notify();
                    return;
                }
                Err(ReadEnd::Answer(resp)) => {
                    self.finish(&resp);
                    return;
                }
            };
            served = served.saturating_add(1);
            if !self.exchange(&head, served) {
                return;
            }
        }
    }

    /// Waits for and parses the next request head. Idle wait is bounded by the idle timeout;
    /// once the first byte is in, the whole head (and then the body) must arrive within one
    /// more idle timeout, which bounds slowloris clients.
    fn read_head(&mut self) -> Result<RequestHead, ReadEnd> {
        let mut started = !self.buf.is_empty();
        let mut deadline = Instant::now() + self.idle_timeout();
        loop {
            if started {
                match request::parse_head(&self.buf, self.config.max_header_bytes) {
                    Ok(Some((head, used))) => {
                        self.buf.drain(..used);
                        return Ok(head);
                    }
                    Ok(None) => {}
                    Err(HeadError::TooLarge) => {
                        return Err(ReadEnd::Answer(Response::error(
                            431,
                            "headers_too_large",
                            format!("request head exceeds {} bytes", self.config.max_header_bytes),
                        )));
                    }
                    Err(HeadError::Malformed(msg)) => {
                        return Err(ReadEnd::Answer(Response::error(400, "bad_request", msg)));
                    }
                }
            }
            match self.fill(deadline, !started) {
                Fill::Data if !started => {
                    started = true;
                    deadline = Instant::now() + self.idle_timeout();
                }
                Fill::Data => {}
                Fill::TimedOut if started => return Err(ReadEnd::Answer(request_timeout())),
                Fill::TimedOut | Fill::Closed | Fill::Stopping => return Err(ReadEnd::Silent),
            }
        }
    }

    /// Body, route, response. Returns whether the connection stays open.
    fn exchange(&mut self, head: &RequestHead, served: u32) -> bool {
        if head.has_transfer_encoding {
            return self.finish(&Response::error(
                411,
                "length_required",
                "Transfer-Encoding request bodies are not supported; send Content-Length",
            ));
        }
        let declared = head.content_length.unwrap_or(0);
        let max_body = self.config.max_body_bytes;
        let len = match usize::try_from(declared) {
            Ok(len) if len <= max_body => len,
            _ => {
                return self.finish(&Response::error(
                    413,
                    "body_too_large",
                    format!("request body of {declared} bytes exceeds {max_body} bytes"),
                ));
            }
        };
        if head.expect_continue
            && head.minor_version >= 1
            && self.buf.len() < len
            && self.stream.send(CONTINUE).is_err()
        {
            return false;
        }
        let body = match self.read_body(len) {
            Ok(body) => body,
            Err(ReadEnd::Silent) => return false,
            Err(ReadEnd::Answer(resp)) => return self.finish(&resp),
        };
        let gateway = &*self.gateway;
        let resp = panic::catch_unwind(AssertUnwindSafe(|| routes::handle(head, &body, gateway)))
            .unwrap_or_else(|_| Response::error(500, "internal_error", "request handler panicked").closing());
        let keep_alive = head.keep_alive
            && !resp.close
            && served < self.config.max_requests_per_connection
            && !self.shared.stopping();
        if !keep_alive {
            return self.finish(&resp);
        }
        self.stream.send(&resp.to_bytes(true)).is_ok()
    }

    fn read_body(&mut self, len: usize) -> Result<Vec<u8>, ReadEnd> {
        let deadline = Instant::now() + self.idle_timeout();
        while self.buf.len() < len {
            match self.fill(deadline, false) {
                Fill::Data => {}
                Fill::TimedOut => return Err(ReadEnd::Answer(request_timeout())),
                Fill::Closed | Fill::Stopping => return Err(ReadEnd::Silent),
            }
        }
        Ok(self.buf.drain(..len).collect())
    }

    /// Reads at least one byte into `buf` before `deadline`, in short slices so shutdown is
    /// noticed: while `idle` it ends the wait at once, mid-request after a short grace.
    fn fill(&mut self, deadline: Instant, idle: bool) -> Fill {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let now = Instant::now();
            let mut limit = deadline;
            if self.shared.stopping() {
                if idle {
                    return Fill::Stopping;
                }
                limit = limit.min(*self.stop_seen.get_or_insert(now) + SHUTDOWN_GRACE);
            }
            if now >= limit {
                return if limit < deadline {
                    Fill::Stopping
                } else {
                    Fill::TimedOut
                };
            }
            if self
                .stream
                .tcp()
                .set_read_timeout(Some((limit - now).min(READ_SLICE)))
                .is_err()
            {
                return Fill::Closed;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Fill::Closed,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Fill::Data;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(_) => return Fill::Closed,
            }
        }
    }

    /// Sends a last response with `Connection: close` and closes gracefully. Returns false
    /// (the connection does not continue) so callers can `return self.finish(..)`.
    fn finish(&mut self, resp: &Response) -> bool {
        if self.stream.send(&resp.to_bytes(false)).is_ok() && self.stream.close_write().is_ok() {
            linger(self.stream.tcp(), LINGER);
        }
        false
    }
}

fn request_timeout() -> Response {
    Response::error(408, "request_timeout", "request not received in time")
}
