//! HTTP/1.1 API of pulsegate: the contract between the HTTP front door and the rest of the
//! gateway (`Gateway`, `PushRequest`, `PushError`, `HttpConfig`) plus the `HttpServer` handle.
//!
//! Owns: the public types of the API module and the module layout.
//! Must never: hold socket I/O, HTTP parsing or routing logic, or name anything outside this
//! module (it is copied verbatim to `src/api/` of the gateway crate, so only `super::` paths).

mod request;
mod response;
mod routes;
mod server;
#[cfg(test)]
mod tests;

pub use server::HttpServer;

/// One push accepted over HTTP, handed to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    /// MQTT client id of the target device.
    pub device: String,
    /// Message payload (the UTF-8 bytes of the JSON `payload` string).
    pub payload: Vec<u8>,
    /// MQTT QoS, 0 or 1.
    pub qos: u8,
}

/// Why the gateway refused a push; each maps to one HTTP status (see `routes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushError {
    /// 404 `device_offline`.
    DeviceOffline,
    /// 503 `overloaded` with a `Retry-After` header.
    Overloaded { retry_after_s: u32 },
    /// 413 `payload_too_large`.
    PayloadTooLarge { max_bytes: u32 },
    /// 503 `shutting_down`.
    ShuttingDown,
}

/// What the HTTP server needs from the rest of the gateway.
pub trait Gateway: Send + Sync + 'static {
    /// Hands one push to the device's owning shard. Returns the push id.
    fn push(&self, req: PushRequest) -> Result<String, PushError>;
    /// Prometheus text exposition (version 0.0.4) of all metrics.
    fn metrics_text(&self) -> String;
}

/// Limits of the HTTP server. All values must be non-zero (`HttpServer::start` refuses zeros).
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Concurrent HTTP connections; beyond it a new connection is answered 503 and closed.
    pub max_connections: usize,
    /// Request line + headers (e.g. 16 KiB); beyond it: 431 and close.
    pub max_header_bytes: usize,
    /// Request body (from Content-Length, before reading it); beyond it: 413 and close.
    pub max_body_bytes: usize,
    /// Keep-alive idle close, and also the time allowed to receive one whole request once its
    /// first byte arrived (slowloris bound; a late request gets 408 and close).
    pub idle_timeout_ms: u64,
    /// After this many requests the response carries `Connection: close`.
    pub max_requests_per_connection: u32,
}
