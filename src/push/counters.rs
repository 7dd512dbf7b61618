//! The push service's counters, read by `/metrics` and by the API's admission
//! check (`pending`, `queued`).
//!
//! Owns these relaxed atomics. Must never hold state a decision depends on:
//! the machine decides from its own tables and only reports here.

use std::sync::atomic::{AtomicU64, Ordering};

use super::message::State;

/// Counters read by /metrics.
#[derive(Default)]
pub struct ServiceCounters {
    pub pending: AtomicU64,
    /// Pending messages held for offline devices (evictable).
    pub queued: AtomicU64,
    /// Payload bytes held for pending messages, each stored payload once.
    pub pending_payload_bytes: AtomicU64,
    /// Stored payloads referenced by pending messages.
    pub pending_payloads: AtomicU64,
    /// Record bytes of the finished messages kept for `GET`.
    pub completed_retention_bytes: AtomicU64,
    /// Requests refused by `pending_payload_bytes_max` (507).
    pub payload_budget_refusals: AtomicU64,
    /// Requests refused by `sp_pending_payload_bytes_max` (429).
    pub sp_payload_budget_refusals: AtomicU64,
    pub accepted: AtomicU64,
    pub delivered: AtomicU64,
    pub confirmed: AtomicU64,
    pub failed: AtomicU64,
    pub expired: AtomicU64,
    pub cancelled: AtomicU64,
    pub collapsed: AtomicU64,
    pub attempts: AtomicU64,
    pub retries: AtomicU64,
    pub callbacks_ok: AtomicU64,
    pub callbacks_failed: AtomicU64,
    /// Outbound POSTs (webhooks and callbacks) whose TLS handshake failed; each
    /// is a failed attempt, retried as any other failure.
    pub outbound_tls_failures: AtomicU64,
    /// Outbound POSTs the URL policy refused at send time (an inward address,
    /// often DNS changed since submission); each is a failed attempt.
    pub outbound_refused: AtomicU64,
    /// Failed store commits (or refused submissions) of state changes; the
    /// changes themselves are kept and committed again.
    pub store_errors: AtomicU64,
    /// Push API submissions answered 503 because the store failed or is
    /// degraded (nothing of them was kept).
    pub store_errors_api: AtomicU64,
    /// Store deletes dropped while the store kept failing (their records come
    /// back at recovery as finished messages and are deleted then; payload
    /// rows come back unreferenced and are deleted then).
    pub store_deletes_dropped: AtomicU64,
}

impl ServiceCounters {
    /// The outcome counter of a message that reached `state`.
    pub fn terminal(&self, state: State) -> &AtomicU64 {
        match state {
            State::Delivered => &self.delivered,
            State::Confirmed => &self.confirmed,
            State::Failed => &self.failed,
            State::Expired => &self.expired,
            State::Cancelled => &self.cancelled,
            State::Collapsed => &self.collapsed,
            State::Accepted | State::Queued | State::Sent => &self.failed,
        }
    }
}

/// Adds one.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Sets a gauge.
pub fn set(gauge: &AtomicU64, value: u64) {
    gauge.store(value, Ordering::Relaxed);
}
