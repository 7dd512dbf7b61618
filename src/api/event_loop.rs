//! The API's one event-loop thread (mio): it owns the listener and every connection. It
//! accepts (a bounded number per turn), enforces the caps at accept (total and per source
//! address: answered 503 or 429 with `Connection: close` at once, never sleeping), drives
//! each `Conn` on readiness, hands answers from the handler pool back to their connection,
//! fires deadlines from one ordered timer set, and runs the shutdown: listener closed at
//! once, idle connections closed, half-received requests given a short grace.
//!
//! Owns: the slab of connections, the timer set, the per-address counts, the accept policy.
//! Must never: block or sleep (the only wait is `poll` with the next deadline), call the
//! gateway (that is the pool's), or hold a connection without a deadline, except one whose
//! request a handler has (bounded by shutdown's own deadline).

use std::collections::{BTreeSet, HashMap};
use std::io::ErrorKind;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::conn::{Conn, Env, Kind, LINGER, Step};
use super::handlers::{Done, Pool};
use super::response::Response;
use super::transport::Transport;
use super::{HttpConfig, HttpCounters};
use crate::tls::ServerTls;

const LISTENER: Token = Token(usize::MAX - 1);
pub(super) const WAKER: Token = Token(usize::MAX);
/// Connections accepted per loop turn at most, so a connect flood cannot starve the others.
const ACCEPTS_PER_TURN_MAX: usize = 256;
const EVENTS_CAPACITY: usize = 1024;
/// The loop's one read buffer, shared by every connection.
const READ_SCRATCH_BYTES: usize = 16 * 1024;
/// Refused connections being answered at once; beyond, a refused socket is closed without
/// a word (its fd must not pile up). With TLS each costs a handshake, so fewer.
const REFUSED_HELD_MAX: usize = 1024;
const TLS_REFUSED_HELD_MAX: usize = 64;
/// After the process ran out of fds (EMFILE) the listener is retried this much later.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);
/// After shutdown starts, how long a half-received or in-handler request may still finish.
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// The loop ends at the latest this long after shutdown starts, closing what is left.
const SHUTDOWN_LOOP_MAX: Duration = Duration::from_millis(500 + 250 + 200);
const _: () = assert!(SHUTDOWN_LOOP_MAX.as_millis() >= SHUTDOWN_GRACE.as_millis() + LINGER.as_millis());

/// What the server handle and the loop share.
pub(super) struct Shared {
    pub stopping: AtomicBool,
    pub waker: Arc<Waker>,
    /// The handler threads, left here by the loop when it ends (the handle joins them).
    pub handlers: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        // A loop that already ended has nothing to wake.
        let _ = self.waker.wake();
    }
}

pub(super) struct EventLoop {
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    /// (deadline, token): each connection's `Conn::deadline`, at most one entry each.
    timers: BTreeSet<(Instant, usize)>,
    /// Counted connections per source address (entries at zero are removed).
    per_ip: HashMap<IpAddr, usize>,
    counted: usize,
    refused_held: usize,
    next_id: u64,
    scratch: Vec<u8>,
    pool: Pool,
    config: HttpConfig,
    counters: Arc<HttpCounters>,
    tls: Option<Arc<ServerTls>>,
    shared: Arc<Shared>,
    /// The listener may have connections waiting (edge-triggered: until WouldBlock).
    accept_pending: bool,
    accept_retry_at: Option<Instant>,
    stop_at: Option<Instant>,
}

impl EventLoop {
    pub(super) fn new(
        poll: Poll,
        mut listener: TcpListener,
        pool: Pool,
        config: HttpConfig,
        counters: Arc<HttpCounters>,
        tls: Option<Arc<ServerTls>>,
        shared: Arc<Shared>,
    ) -> std::io::Result<EventLoop> {
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(EventLoop {
            poll,
            listener: Some(listener),
            conns: Slab::new(),
            timers: BTreeSet::new(),
            per_ip: HashMap::new(),
            counted: 0,
            refused_held: 0,
            next_id: 0,
            scratch: vec![0; READ_SCRATCH_BYTES],
            pool,
            config,
            counters,
            tls,
            shared,
            accept_pending: true,
            accept_retry_at: None,
            stop_at: None,
        })
    }

    /// Serves until shutdown ends; leaves the handler threads in `Shared::handlers`.
    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != ErrorKind::Interrupted
            {
                eprintln!("pulsegate: HTTP API event loop failed: {e}");
                break;
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_pending = true,
                    WAKER => {}
                    Token(t) => self.drive(t, now, |c, env| c.step(env)),
                }
            }
            while let Some(done) = self.pool.try_done() {
                self.answer(done, now);
            }
            if self.stop_at.is_none() && self.shared.stopping.load(Ordering::SeqCst) {
                self.begin_stop(now);
            }
            if self.accept_pending && self.accept_retry_at.is_none_or(|at| at <= now) {
                self.accept_retry_at = None;
                self.accept(now);
            }
            self.expire(now);
            if let Some(stop_at) = self.stop_at
                && (self.conns.is_empty() || now >= stop_at + SHUTDOWN_LOOP_MAX)
            {
                break;
            }
        }
        let tokens: Vec<usize> = self.conns.iter().map(|(t, _)| t).collect();
        for t in tokens {
            self.close(t);
        }
        let handlers = self.pool.close();
        let mut slot = self.shared.handlers.lock().unwrap_or_else(|e| e.into_inner());
        slot.extend(handlers);
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        let mut next = self.timers.first().map(|&(at, _)| at);
        if self.accept_pending && self.listener.is_some() {
            next = Some(self.accept_retry_at.unwrap_or(now));
        }
        if let Some(stop_at) = self.stop_at {
            let end = stop_at + SHUTDOWN_LOOP_MAX;
            next = Some(next.map_or(end, |n| n.min(end)));
        }
        next.map(|at| at.saturating_duration_since(now))
    }

    /// Runs `f` on connection `t` with the loop's environment, then applies its verdict.
    fn drive(&mut self, t: usize, now: Instant, f: impl FnOnce(&mut Conn, &mut Env<'_>) -> Step) {
        let Some(conn) = self.conns.get_mut(t) else {
            // A stale event of a connection closed earlier in this turn.
            return;
        };
        let mut env = Env {
            config: &self.config,
            counters: &self.counters,
            scratch: &mut self.scratch,
            pool: &mut self.pool,
            now,
            stopping: self.stop_at.is_some(),
        };
        match f(conn, &mut env) {
            Step::Close => self.close(t),
            Step::Keep => self.retime(t),
        }
    }

    /// Puts connection `t`'s current deadline in the timer set.
    fn retime(&mut self, t: usize) {
        let Some(conn) = self.conns.get_mut(t) else {
            return;
        };
        let due = conn.deadline();
        if due == conn.timer {
            return;
        }
        if let Some(old) = conn.timer {
            self.timers.remove(&(old, t));
        }
        if let Some(at) = due {
            self.timers.insert((at, t));
        }
        conn.timer = due;
    }

    fn close(&mut self, t: usize) {
        if !self.conns.contains(t) {
            return;
        }
        let mut conn = self.conns.remove(t);
        if let Some(at) = conn.timer {
            self.timers.remove(&(at, t));
        }
        // The socket closes when dropped; deregistering first keeps epoll's set exact.
        let _ = self.poll.registry().deregister(&mut conn.sock);
        // Shutdown is not the client's fault.
        if conn.handshaking() && self.stop_at.is_none() {
            self.counters.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
        }
        match conn.kind {
            Kind::Refused => self.refused_held = self.refused_held.saturating_sub(1),
            Kind::Counted => {
                self.counted = self.counted.saturating_sub(1);
                if let Some(n) = self.per_ip.get_mut(&conn.ip) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.per_ip.remove(&conn.ip);
                    }
                }
                self.counters
                    .connections_open
                    .store(self.counted as u64, Ordering::Relaxed);
            }
        }
    }

    fn answer(&mut self, done: Done, now: Instant) {
        let Done {
            token,
            conn_id,
            response,
        } = done;
        if self.conns.get(token).is_some_and(|c| c.id == conn_id) {
            self.drive(token, now, |c, env| c.answered(response, env));
        }
    }

    fn accept(&mut self, now: Instant) {
        for _ in 0..ACCEPTS_PER_TURN_MAX {
            let Some(listener) = &self.listener else {
                self.accept_pending = false;
                return;
            };
            match listener.accept() {
                Ok((sock, peer)) => self.admit(sock, peer.ip(), now),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.accept_pending = false;
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // Out of fds or memory: the connection stays queued; retry shortly, serving
                // the others meanwhile.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    self.accept_retry_at = Some(now + ACCEPT_RETRY);
                    return;
                }
                // ECONNABORTED and the like: that connection is gone, the next may not be.
                Err(_) => {}
            }
        }
        // More may be waiting: `accept_pending` stays set and the next turn continues.
    }

    fn admit(&mut self, mut sock: TcpStream, ip: IpAddr, now: Instant) {
        // Small answers go out at once (best effort: a socket without it still works).
        let _ = sock.set_nodelay(true);
        let refusal = if self.counted >= self.config.max_connections {
            self.counters.connections_refused_max.fetch_add(1, Ordering::Relaxed);
            Some(too_many_connections())
        } else if self.per_ip.get(&ip).copied().unwrap_or(0) >= self.config.connections_per_ip_max {
            self.counters.connections_refused_per_ip.fetch_add(1, Ordering::Relaxed);
            Some(too_many_from_address())
        } else {
            None
        };
        let held_max = if self.tls.is_some() {
            TLS_REFUSED_HELD_MAX
        } else {
            REFUSED_HELD_MAX
        };
        if refusal.is_some() && self.refused_held >= held_max {
            // Too many refusals in flight: this one closes without an answer.
            return;
        }
        let transport = match &self.tls {
            None => Transport::Plain,
            Some(tls) => match Transport::tls(tls.current()) {
                Ok(t) => t,
                // Only a config rustls refuses fails here; the socket closes.
                Err(_) => return,
            },
        };
        let entry = self.conns.vacant_entry();
        let token = entry.key();
        debug_assert!(token < WAKER.0 - 1, "slab keys stay far below the reserved tokens");
        let id = self.next_id;
        self.next_id += 1;
        if self
            .poll
            .registry()
            .register(&mut sock, Token(token), Interest::READABLE | Interest::WRITABLE)
            .is_err()
        {
            return;
        }
        let conn = match refusal {
            Some(answer) => {
                self.refused_held += 1;
                Conn::refused(sock, transport, ip, id, token, answer, now)
            }
            None => {
                self.counted += 1;
                *self.per_ip.entry(ip).or_insert(0) += 1;
                self.counters
                    .connections_open
                    .store(self.counted as u64, Ordering::Relaxed);
                Conn::new(sock, transport, ip, id, token, &self.config, now)
            }
        };
        entry.insert(conn);
        self.drive(token, now, |c, env| c.step(env));
    }

    fn expire(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(&(at, t)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(conn) = self.conns.get_mut(t) {
                conn.timer = None;
            }
            due.push(t);
        }
        for t in due {
            self.drive(t, now, |c, env| c.expire(env));
        }
    }

    fn begin_stop(&mut self, now: Instant) {
        self.stop_at = Some(now);
        // New connections are refused by the kernel from here on.
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.accept_pending = false;
        let grace = now + SHUTDOWN_GRACE;
        let tokens: Vec<usize> = self.conns.iter().map(|(t, _)| t).collect();
        for t in tokens {
            self.drive(t, now, |c, _| c.stop(grace));
        }
    }
}

fn too_many_connections() -> Response {
    Response::error(503, "too_many_connections", "too many concurrent connections").with_header("Retry-After", "1")
}

fn too_many_from_address() -> Response {
    Response::error(
        429,
        "too_many_connections_from_address",
        "too many concurrent connections from this address",
    )
    .with_header("Retry-After", "1")
}
