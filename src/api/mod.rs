//! HTTP/1.1 API of pulsegate: the contract between the HTTP front door and the rest of the
//! gateway (`Gateway`, `PushRequest`, `PushError`, `HttpConfig`, `HttpCounters`) plus the
//! `HttpServer` handle; HTTPS when started with a `tls::ServerTls`.
//!
//! Owns: the public types of the API module and the module layout.
//! Must never: hold socket I/O, HTTP parsing or routing logic, or name anything outside this
//! module but the layer below it (`crate::tls` for the server certificate).

mod conn;
mod event_loop;
#[doc(hidden)]
pub mod fuzzing;
mod handlers;
mod request;
mod response;
mod routes;
mod server;
#[cfg(test)]
mod tests;
mod transport;

use std::sync::atomic::AtomicU64;

pub use server::{HttpServer, LISTEN_BACKLOG, bind};

/// The HTTP server's own counters (relaxed atomics), read by `/metrics`.
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// Connections that ended before their TLS handshake completed (bad or plaintext
    /// ClientHello, an alert, no handshake within the idle timeout, the client left).
    pub tls_handshake_failures: AtomicU64,
    /// Connections open now (a gauge; refusals being answered are not counted).
    pub connections_open: AtomicU64,
    /// Connections answered 503 at accept: `max_connections` were open.
    pub connections_refused_max: AtomicU64,
    /// Connections answered 429 at accept: `connections_per_ip_max` were open from that address.
    pub connections_refused_per_ip: AtomicU64,
    /// Requests answered 503 because every handler thread was busy and the queue full.
    pub requests_refused_busy: AtomicU64,
    /// Requests cut with 408: the head did not arrive within `header_timeout_ms` of its
    /// first byte.
    pub header_timeouts: AtomicU64,
    /// Requests cut with 408: the body did not arrive within `body_timeout_ms` of the head.
    pub body_timeouts: AtomicU64,
}

/// Who is calling: the SP an API key belongs to, or the operator (the admin key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub sp: String,
    /// Authenticated by the admin key: may call `/v1/admin/...` and nothing an SP owns.
    pub operator: bool,
}

impl Caller {
    /// An SP caller.
    pub fn sp(name: impl Into<String>) -> Caller {
        Caller {
            sp: name.into(),
            operator: false,
        }
    }
}

/// Why a call failed; each maps to one HTTP status (see `routes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 401 `unauthorized` (missing or unknown bearer token).
    Unauthorized(String),
    /// 400 `bad_request`.
    BadRequest(String),
    /// 403 `forbidden` (an SP calling an operator-only endpoint).
    Forbidden(String),
    /// 404 `not_found`.
    NotFound(String),
    /// 404 `device_offline` (a non-queueing profile and the device is not connected).
    DeviceOffline(String),
    /// 409 `conflict` (e.g. cancelling a delivered message).
    Conflict(String),
    /// 413 `payload_too_large`.
    PayloadTooLarge { max_bytes: u64 },
    /// 429 `rate_limited` with `Retry-After`.
    RateLimited { retry_after_s: u32 },
    /// 429 `sp_over_budget`, no `Retry-After`: the caller's own byte budget
    /// (named in the message) is full until its messages finish.
    SpOverBudget(String),
    /// 507 `insufficient_storage`: the gateway's byte budget (named in the message) is full.
    InsufficientStorage(String),
    /// 503 `overloaded` with `Retry-After`.
    Overloaded { retry_after_s: u32 },
    /// 503 `unavailable` (e.g. the store failed).
    Unavailable(String),
    /// 503 `shutting_down`.
    ShuttingDown,
    /// 500 `internal_error`, and the connection closes (a handler panicked).
    Internal(String),
}

/// Where a `POST /v1/messages` answer goes when the gateway gives it later
/// (once its group commit is durable), from any thread. Called exactly once:
/// dropped unanswered it answers 500 if a panic dropped it, else 503.
pub struct SubmitReply {
    send: Option<SubmitAnswer>,
}

type SubmitAnswer = Box<dyn FnOnce(Result<serde_json::Value, ApiError>) + Send>;

impl SubmitReply {
    pub fn new(send: impl FnOnce(Result<serde_json::Value, ApiError>) + Send + 'static) -> SubmitReply {
        SubmitReply {
            send: Some(Box::new(send)),
        }
    }

    pub fn send(mut self, result: Result<serde_json::Value, ApiError>) {
        if let Some(send) = self.send.take() {
            send(result);
        }
    }
}

impl Drop for SubmitReply {
    fn drop(&mut self) {
        if let Some(send) = self.send.take() {
            send(Err(match std::thread::panicking() {
                true => ApiError::Internal("request handler panicked".into()),
                false => ApiError::Unavailable("the request's answer was lost".into()),
            }));
        }
    }
}

/// What the HTTP server needs from the rest of the gateway.
pub trait Gateway: Send + Sync + 'static {
    /// Maps the `Authorization` header to a caller.
    fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, ApiError>;
    /// `POST /v1/messages`: `reply` gets 201's body once the messages are
    /// durable, or the refusal, now or later (the handler thread does not wait).
    fn submit_then(&self, caller: &Caller, body: &[u8], reply: SubmitReply);
    /// `GET /v1/messages/{id}`.
    fn status(&self, caller: &Caller, id: &str) -> Result<serde_json::Value, ApiError>;
    /// `PATCH /v1/messages/{id}`.
    fn update(&self, caller: &Caller, id: &str, body: &[u8]) -> Result<serde_json::Value, ApiError>;
    /// `DELETE /v1/messages/{id}`.
    fn cancel(&self, caller: &Caller, id: &str) -> Result<serde_json::Value, ApiError>;
    /// `GET /v1/mechanisms`.
    fn mechanisms(&self, caller: &Caller) -> Result<serde_json::Value, ApiError>;
    /// `GET` (None) or `PUT` (Some(body)) `/v1/admin/heartbeat-limit`: the
    /// host's heartbeat-load threshold, operators only.
    fn heartbeat_limit(&self, caller: &Caller, update: Option<&[u8]>) -> Result<serde_json::Value, ApiError>;
    /// Prometheus text exposition (version 0.0.4) of all metrics.
    fn metrics_text(&self) -> String;
    /// Whether `GET /metrics` with this `Authorization` header may read the metrics
    /// (open unless the operator configured a metrics key).
    fn authorize_metrics(&self, _authorization: Option<&str>) -> Result<(), ApiError> {
        Ok(())
    }
    /// `GET /healthz`: the store's error while it cannot commit (None: healthy).
    fn store_error(&self) -> Option<String> {
        None
    }
}

/// Limits of the HTTP server. All values must be non-zero (`HttpServer::start` refuses zeros).
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Concurrent HTTP connections; beyond it a new connection is answered 503 and closed.
    pub max_connections: usize,
    /// Concurrent connections from one source address; beyond it: 429 and close.
    pub connections_per_ip_max: usize,
    /// Request line + headers (e.g. 16 KiB); beyond it: 431 and close.
    pub max_header_bytes: usize,
    /// Request body (from Content-Length, before reading it); beyond it: 413 and close.
    pub max_body_bytes: usize,
    /// The whole head must arrive within this of its first byte (slowloris bound): 408, close.
    pub header_timeout_ms: u64,
    /// The whole body must arrive within this of the head: 408 and close.
    pub body_timeout_ms: u64,
    /// Keep-alive idle close (also bounds a TLS handshake from the accept).
    pub idle_timeout_ms: u64,
    /// After this many requests the response carries `Connection: close`.
    pub max_requests_per_connection: u32,
    /// Threads running requests (the gateway's calls block); the event loop never does.
    pub handler_threads: usize,
    /// Complete requests waiting for a handler thread; beyond it: 503 at once.
    pub handler_queue_max: usize,
}
