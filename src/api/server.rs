//! The running HTTP server's handle: validates the limits, starts the event loop
//! (`event_loop`, one thread owning the listener and every connection) and the handler pool
//! (`handlers`), and stops them within a bounded time. An idle connection costs its socket
//! and a small `Conn`, never a thread.
//!
//! Owns: start-up and shutdown of the server's threads.
//! Must never: do socket I/O itself, or wait on a thread without a deadline.

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::{Poll, Waker};

use super::event_loop::{EventLoop, Shared, WAKER};
use super::handlers::Pool;
use super::{Gateway, HttpConfig, HttpCounters};
use crate::tls::ServerTls;

/// Connections the kernel queues for the loop to accept (a connect flood beyond it is
/// dropped by the kernel and retried by the clients' TCP, instead of piling up here).
pub const LISTEN_BACKLOG: i32 = 1024;

/// Binds the API listener with `LISTEN_BACKLOG` (std's `bind` queues only 128).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Total time `shutdown()` waits for threads before detaching the stragglers.
const SHUTDOWN_BUDGET: Duration = Duration::from_millis(1800);

/// Running HTTP server. Dropping it without `shutdown()` signals the threads to stop but does
/// not wait for them.
pub struct HttpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    event_loop: Option<JoinHandle<()>>,
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
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            waker: Arc::clone(&waker),
            handlers: Mutex::new(Vec::new()),
        });
        let wake = Arc::new(move || {
            // Fails only if the loop's poll is gone (shutdown): nobody to wake.
            let _ = waker.wake();
        });
        let pool = Pool::start(config.handler_threads, config.handler_queue_max, gateway, wake)?;
        let event_loop = EventLoop::new(
            poll,
            mio::net::TcpListener::from_std(listener),
            pool,
            config,
            counters,
            tls,
            Arc::clone(&shared),
        )?;
        let handle = thread::Builder::new()
            .name("api-loop".into())
            .spawn(move || event_loop.run())?;
        Ok(HttpServer {
            addr,
            shared,
            event_loop: Some(handle),
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
        self.shared.stop();
        if let Some(handle) = self.event_loop.take() {
            join_until(handle, deadline);
        }
        let handlers = std::mem::take(&mut *self.shared.handlers.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in handlers {
            join_until(handle, deadline);
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

fn validate(c: &HttpConfig) -> io::Result<()> {
    let zero = [
        ("max_connections", c.max_connections == 0),
        ("connections_per_ip_max", c.connections_per_ip_max == 0),
        ("max_header_bytes", c.max_header_bytes == 0),
        ("max_body_bytes", c.max_body_bytes == 0),
        ("header_timeout_ms", c.header_timeout_ms == 0),
        ("body_timeout_ms", c.body_timeout_ms == 0),
        ("idle_timeout_ms", c.idle_timeout_ms == 0),
        ("max_requests_per_connection", c.max_requests_per_connection == 0),
        ("handler_threads", c.handler_threads == 0),
        ("handler_queue_max", c.handler_queue_max == 0),
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
