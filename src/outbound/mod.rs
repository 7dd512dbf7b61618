//! Outbound HTTP client pool: the types a caller hands in (`PostRequest`) and
//! gets back (`PostResult`, `PostOutcome`), plus the worker pool that sends them.
//!
//! This module owns every HTTP POST the gateway makes to external relays (SMS
//! gateway, APNs / FCM relays: the `webhook` delivery mechanism) and to
//! application servers' callback URLs. It must never block the caller (the
//! MQTT side), never follow redirects, never retry on its own (retry policy
//! belongs to the delivery layer), and never let one request run past its
//! `timeout_ms`. `https://` URLs go over rustls, trusting exactly the roots the
//! pool was started with (system roots plus `outbound_ca_file`, read once at
//! start-up by the caller); a TLS failure is `PostOutcome::Tls`, never a hang.
//! Every connection goes only to an address `url_policy` checked at send
//! time (its resolver is the policy), whatever the URL passed at submission.

mod pool;
#[cfg(test)]
mod tests;
pub mod url_policy;

pub use self::pool::{MAX_TIMEOUT_MS, OutboundPool, RESPONSE_DRAIN_MAX};

/// One POST to send. `tag` is opaque to the pool and comes back in the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostRequest {
    /// Caller's correlation id, returned untouched in [`PostResult::tag`].
    pub tag: u64,
    /// Absolute `http://` or `https://` URL; anything else yields [`PostOutcome::BadUrl`].
    pub url: String,
    /// Request body, sent with an exact `Content-Length`.
    pub body: Vec<u8>,
    /// `Content-Type` header value, unless `headers` carries its own `content-type`.
    pub content_type: &'static str,
    /// Extra request headers, sent in order.
    pub headers: Vec<(String, String)>,
    /// Budget for the whole request: DNS + connect + send + response headers +
    /// body read. 0 is treated as 1 ms; values above [`MAX_TIMEOUT_MS`] are clamped.
    pub timeout_ms: u64,
}

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostOutcome {
    /// Any HTTP status received (1xx..5xx; a 3xx is not followed).
    Status(u16),
    /// The whole-request budget (`timeout_ms`) ran out.
    Timeout,
    /// No connection could be made (refused, unreachable, host not found, ...).
    ConnectFailed(String),
    /// The URL is not an absolute http:// or https:// URL with a host.
    BadUrl(String),
    /// The TLS handshake failed: the text is rustls' error (e.g. "invalid peer
    /// certificate: UnknownIssuer", a name mismatch, an alert from the server).
    Tls(String),
    /// The URL policy refused the host or one of its addresses (checked again
    /// at send time: DNS may have changed since submission).
    Refused(String),
    /// Anything else: protocol errors, invalid headers, connection reset
    /// mid-request, or the request was still queued at shutdown.
    Other(String),
}

impl PostOutcome {
    /// True for a 2xx status only.
    pub fn is_success(&self) -> bool {
        matches!(self, PostOutcome::Status(s) if (200..300).contains(s))
    }
}

/// The result for one posted request; exactly one per accepted `post`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostResult {
    pub tag: u64,
    pub outcome: PostOutcome,
    /// Time from the worker picking the request up to its outcome (queue wait
    /// excluded); 0 for requests never sent.
    pub latency_us: u64,
}
