//! One HTTP connection on the event loop, as a state machine driven by readiness, deadlines
//! and handler answers: TLS handshake, idle keep-alive wait, request head (bounded, with a
//! deadline from its first byte), body by Content-Length (bounded, with its own deadline),
//! one request at a time in a handler thread (nothing more is read meanwhile, so answers
//! keep request order), then a graceful close: last response, close_notify, FIN, a short
//! drain of what the peer still sends. A refused connection (over a cap) is the same
//! machine starting at its last response.
//!
//! Owns: the phase of a connection, its buffers and deadlines, the inline answers (431, 400,
//! 411, 413, 408, 503 when the handlers are busy) and the keep-alive decision.
//! Must never: block, sleep, read while a request is being handled or while its answer
//! cannot be written, buffer beyond the head and body limits, or panic on network data.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::handlers::{Job, Pool};
use super::request::{self, HeadError, RequestHead};
use super::response::{CONTINUE, Response};
use super::transport::{self, Filled, Flushed, Transport};
use super::{HttpConfig, HttpCounters};

/// Graceful close: after our FIN, drain what the client still sends for at most this long,
/// so unread request bytes do not turn the close into an RST that destroys our response.
pub(super) const LINGER: Duration = Duration::from_millis(250);
/// Most bytes drained while lingering; beyond, the socket closes at once.
const LINGER_MAX_BYTES: usize = 256 * 1024;
/// A refused connection's whole life (TLS handshake, answer, drain) ends within this.
pub(super) const REFUSAL_BUDGET: Duration = Duration::from_millis(500);
/// Responses must drain within this (or the idle timeout, if shorter); a client that does
/// not read is dropped.
const WRITE_TIMEOUT_MAX: Duration = Duration::from_secs(10);

/// Where a connection is in its life.
enum Phase {
    /// TLS: until the handshake completes (within the idle timeout of the accept).
    Handshake,
    /// Between requests: nothing buffered yet.
    Idle,
    /// The head has started arriving.
    Head,
    /// The head is parsed; `len` body bytes are due.
    Body { head: RequestHead, len: usize },
    /// A handler thread has the request; its keep-alive wish is kept for the answer.
    Handling { keep_alive: bool },
    /// The last response is being written; then close_notify and FIN.
    Closing { notified: bool },
    /// After our FIN: discarding what the peer still sends, until EOF or the deadline.
    Linger { drained: usize },
}

/// Whether the connection holds a slot of the caps or is a refusal being answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Counted,
    Refused,
}

/// What the loop does with a connection after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Keep,
    Close,
}

/// What a step needs from the loop.
pub(super) struct Env<'a> {
    pub config: &'a HttpConfig,
    pub counters: &'a HttpCounters,
    /// The loop's one read buffer.
    pub scratch: &'a mut [u8],
    pub pool: &'a mut Pool,
    pub now: Instant,
    pub stopping: bool,
}

pub(super) struct Conn {
    pub sock: TcpStream,
    transport: Transport,
    pub ip: IpAddr,
    pub kind: Kind,
    /// Identity of this connection (a reused slab slot gets a new one).
    pub id: u64,
    pub token: usize,
    phase: Phase,
    /// When the current phase ends (for the phases that have a deadline).
    phase_deadline: Instant,
    /// While output waits: it must be written by then.
    write_deadline: Option<Instant>,
    /// Bytes read and not consumed: the current head or body, at most one limit's worth.
    buf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    served: u32,
    peer_closed: bool,
    /// Refused over TLS: the answer, sent once the handshake completes.
    refusal: Option<Response>,
    /// The key this connection has in the loop's timer set.
    pub timer: Option<Instant>,
}

impl Conn {
    /// An admitted connection (plain: waiting for a request; TLS: for the handshake).
    pub(super) fn new(
        sock: TcpStream,
        transport: Transport,
        ip: IpAddr,
        id: u64,
        token: usize,
        config: &HttpConfig,
        now: Instant,
    ) -> Conn {
        let phase = if transport.handshaking() {
            Phase::Handshake
        } else {
            Phase::Idle
        };
        Conn::with(
            sock,
            transport,
            ip,
            Kind::Counted,
            id,
            token,
            phase,
            now + ms(config.idle_timeout_ms),
        )
    }

    /// A connection in `phase` until `phase_deadline`, with empty buffers.
    #[allow(
        clippy::too_many_arguments,
        reason = "every field a caller decides; the rest start empty"
    )]
    fn with(
        sock: TcpStream,
        transport: Transport,
        ip: IpAddr,
        kind: Kind,
        id: u64,
        token: usize,
        phase: Phase,
        phase_deadline: Instant,
    ) -> Conn {
        Conn {
            sock,
            transport,
            ip,
            kind,
            id,
            token,
            phase,
            phase_deadline,
            write_deadline: None,
            buf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            served: 0,
            peer_closed: false,
            refusal: None,
            timer: None,
        }
    }

    /// A connection over a cap: `answer` (with `Connection: close`), then a graceful close,
    /// all within `REFUSAL_BUDGET` (TLS: after a handshake within it).
    pub(super) fn refused(
        sock: TcpStream,
        transport: Transport,
        ip: IpAddr,
        id: u64,
        token: usize,
        answer: Response,
        now: Instant,
    ) -> Conn {
        let deadline = now + REFUSAL_BUDGET;
        let mut conn = Conn::with(
            sock,
            transport,
            ip,
            Kind::Refused,
            id,
            token,
            Phase::Handshake,
            deadline,
        );
        if conn.transport.handshaking() {
            conn.refusal = Some(answer);
        } else {
            conn.queue(&answer.to_bytes(false), deadline);
            conn.phase = Phase::Closing { notified: false };
        }
        conn
    }

    /// True while the TLS handshake has not completed.
    pub(super) fn handshaking(&self) -> bool {
        self.transport.handshaking()
    }

    /// The earliest instant something must happen to this connection, if any.
    pub(super) fn deadline(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Handling { .. } | Phase::Closing { .. } => None,
            _ => Some(self.phase_deadline),
        };
        match (phase, self.write_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the connection as far as it can go now: writes what is queued, reads what the
    /// socket has (within the limits), parses, hands a complete request to the pool.
    pub(super) fn step(&mut self, env: &mut Env<'_>) -> Step {
        loop {
            if self.flush() == Flushed::Failed {
                return Step::Close;
            }
            let pending = self.out_pending();
            match &mut self.phase {
                Phase::Closing { notified } => {
                    if pending {
                        return Step::Keep;
                    }
                    if !*notified {
                        // close_notify goes after the response's records: queue it now.
                        *notified = true;
                        self.transport.close_notify();
                        continue;
                    }
                    transport::shutdown_write(&self.sock);
                    self.phase = Phase::Linger { drained: 0 };
                    self.phase_deadline = env.now + LINGER;
                    continue;
                }
                Phase::Linger { drained } => {
                    let budget = LINGER_MAX_BYTES.saturating_sub(*drained);
                    let (n, closed) = transport::drain(&mut self.sock, env.scratch, budget);
                    *drained += n;
                    return if closed || *drained >= LINGER_MAX_BYTES {
                        Step::Close
                    } else {
                        Step::Keep
                    };
                }
                Phase::Handling { .. } => return Step::Keep,
                Phase::Handshake | Phase::Idle | Phase::Head | Phase::Body { .. } => {}
            }
            // Nothing more is read while an answer waits for the peer to read it.
            if self.out_pending() {
                return Step::Keep;
            }
            if self.advance(env) {
                continue;
            }
            let between_requests = matches!(self.phase, Phase::Idle | Phase::Handshake) && self.buf.is_empty();
            if self.peer_closed || (env.stopping && between_requests) {
                return Step::Close;
            }
            let room = self.room(env.config);
            let before = self.buf.len();
            let handshaking = self.transport.handshaking();
            let filled = self.transport.fill(&mut self.sock, &mut self.buf, room, env.scratch);
            match filled {
                Filled::TlsRefused => {
                    // Send rustls' alert if the peer still listens.
                    let _ = self.flush();
                    return Step::Close;
                }
                Filled::Closed => self.peer_closed = true,
                Filled::Drained | Filled::Full => {}
            }
            if handshaking && !self.transport.handshaking() {
                self.handshake_done(env);
                continue;
            }
            if filled == Filled::Drained && self.buf.len() == before {
                // Handshake records owed (if any) go out; then wait for the socket.
                return if self.flush() == Flushed::Failed {
                    Step::Close
                } else {
                    Step::Keep
                };
            }
        }
    }

    /// A deadline of this connection passed (`env.now`).
    pub(super) fn expire(&mut self, env: &mut Env<'_>) -> Step {
        if self.write_deadline.is_some_and(|w| env.now >= w) {
            return Step::Close;
        }
        if env.now < self.phase_deadline {
            return Step::Keep;
        }
        match self.phase {
            Phase::Handshake | Phase::Linger { .. } => Step::Close,
            Phase::Idle => {
                // The idle close is silent (TLS: a close_notify, best effort).
                self.transport.close_notify();
                let _ = self.flush();
                Step::Close
            }
            // Shutdown's grace for a half-received request is over: close without a word.
            Phase::Head | Phase::Body { .. } if env.stopping => Step::Close,
            Phase::Head | Phase::Body { .. } => {
                let counter = if matches!(self.phase, Phase::Head) {
                    &env.counters.header_timeouts
                } else {
                    &env.counters.body_timeouts
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.finish(&request_timeout(), env);
                self.step(env)
            }
            Phase::Handling { .. } | Phase::Closing { .. } => Step::Keep,
        }
    }

    /// Shutdown began: idle connections close now, others get until `grace` to finish.
    pub(super) fn stop(&mut self, grace: Instant) -> Step {
        self.write_deadline = self.write_deadline.map(|w| w.min(grace));
        self.phase_deadline = self.phase_deadline.min(grace);
        match self.phase {
            Phase::Handshake | Phase::Idle if self.buf.is_empty() && !self.out_pending() => {
                self.transport.close_notify();
                let _ = self.flush();
                Step::Close
            }
            Phase::Closing { .. } => {
                // Its write deadline now ends with the grace too.
                self.write_deadline = Some(self.write_deadline.map_or(grace, |w| w.min(grace)));
                Step::Keep
            }
            _ => Step::Keep,
        }
    }

    /// The handler's answer to this connection's request.
    pub(super) fn answered(&mut self, response: Response, env: &mut Env<'_>) -> Step {
        let Phase::Handling { keep_alive } = self.phase else {
            // Not waiting for an answer (cannot happen: one job per connection at a time).
            return Step::Close;
        };
        self.respond(&response, keep_alive, env);
        self.step(env)
    }

    fn handshake_done(&mut self, env: &Env<'_>) {
        if let Some(answer) = self.refusal.take() {
            self.finish(&answer, env);
            return;
        }
        self.phase = Phase::Idle;
        self.phase_deadline = env.now + ms(env.config.idle_timeout_ms);
    }

    /// Consumes buffered bytes if they complete a step of the request; true on progress.
    fn advance(&mut self, env: &mut Env<'_>) -> bool {
        match &self.phase {
            Phase::Idle if !self.buf.is_empty() => {
                // The head deadline runs from its first byte (slowloris bound).
                self.phase = Phase::Head;
                self.phase_deadline = env.now + ms(env.config.header_timeout_ms);
                true
            }
            Phase::Head => match request::parse_head(&self.buf, env.config.max_header_bytes) {
                Ok(None) => false,
                Ok(Some((head, used))) => {
                    self.buf.drain(..used);
                    self.begin_body(head, env);
                    true
                }
                Err(HeadError::TooLarge) => {
                    let msg = format!("request head exceeds {} bytes", env.config.max_header_bytes);
                    self.finish(&Response::error(431, "headers_too_large", msg), env);
                    true
                }
                Err(HeadError::Malformed(msg)) => {
                    self.finish(&Response::error(400, "bad_request", msg), env);
                    true
                }
            },
            Phase::Body { len, .. } if self.buf.len() >= *len => {
                let len = *len;
                let body: Vec<u8> = self.buf.drain(..len).collect();
                let Phase::Body { head, .. } = std::mem::replace(&mut self.phase, Phase::Idle) else {
                    unreachable!("matched Body above");
                };
                self.dispatch(head, body, env);
                true
            }
            _ => false,
        }
    }

    fn begin_body(&mut self, head: RequestHead, env: &Env<'_>) {
        if head.has_transfer_encoding {
            let resp = Response::error(
                411,
                "length_required",
                "Transfer-Encoding request bodies are not supported; send Content-Length",
            );
            return self.finish(&resp, env);
        }
        let declared = head.content_length.unwrap_or(0);
        let max_body = env.config.max_body_bytes;
        let len = match usize::try_from(declared) {
            Ok(len) if len <= max_body => len,
            _ => {
                let msg = format!("request body of {declared} bytes exceeds {max_body} bytes");
                return self.finish(&Response::error(413, "body_too_large", msg), env);
            }
        };
        if head.expect_continue && head.minor_version >= 1 && self.buf.len() < len {
            self.queue(CONTINUE, env.now + write_timeout(env.config));
        }
        self.phase = Phase::Body { head, len };
        self.phase_deadline = env.now + ms(env.config.body_timeout_ms);
    }

    fn dispatch(&mut self, head: RequestHead, body: Vec<u8>, env: &mut Env<'_>) {
        self.served = self.served.saturating_add(1);
        let keep_alive = head.keep_alive;
        let job = Job {
            token: self.token,
            conn_id: self.id,
            head,
            body,
        };
        match env.pool.try_submit(job) {
            Ok(()) => self.phase = Phase::Handling { keep_alive },
            Err(_) => {
                env.counters.requests_refused_busy.fetch_add(1, Ordering::Relaxed);
                let busy = Response::error(503, "handlers_busy", "every request handler is busy")
                    .with_header("Retry-After", "1");
                self.respond(&busy, keep_alive, env);
            }
        }
    }

    /// Queues the answer to a request: keep-alive, or the last one.
    fn respond(&mut self, resp: &Response, keep_alive: bool, env: &Env<'_>) {
        let keep = keep_alive && !resp.close && self.served < env.config.max_requests_per_connection && !env.stopping;
        if !keep {
            return self.finish(resp, env);
        }
        self.queue(&resp.to_bytes(true), env.now + write_timeout(env.config));
        self.phase = Phase::Idle;
        self.phase_deadline = env.now + ms(env.config.idle_timeout_ms);
    }

    /// Queues a last response (`Connection: close`); the close follows once it is written.
    fn finish(&mut self, resp: &Response, env: &Env<'_>) {
        let deadline = match self.kind {
            Kind::Counted => env.now + write_timeout(env.config),
            Kind::Refused => env.now + REFUSAL_BUDGET,
        };
        self.queue(&resp.to_bytes(false), deadline);
        self.phase = Phase::Closing { notified: false };
    }

    fn queue(&mut self, bytes: &[u8], deadline: Instant) {
        if !self.out_pending() {
            self.write_deadline = Some(deadline);
        }
        self.out.extend_from_slice(bytes);
    }

    fn out_pending(&self) -> bool {
        self.out_pos < self.out.len() || self.transport.wants_write()
    }

    fn flush(&mut self) -> Flushed {
        let flushed = self.transport.flush(&mut self.sock, &self.out, &mut self.out_pos);
        if self.out_pos >= self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        if !self.out_pending() {
            self.write_deadline = None;
        }
        flushed
    }

    /// Most bytes `buf` may hold in the current phase.
    fn room(&self, config: &HttpConfig) -> usize {
        match &self.phase {
            Phase::Body { len, .. } => *len,
            _ => config.max_header_bytes,
        }
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn write_timeout(config: &HttpConfig) -> Duration {
    ms(config.idle_timeout_ms).min(WRITE_TIMEOUT_MAX)
}

fn request_timeout() -> Response {
    Response::error(408, "request_timeout", "request not received in time")
}
