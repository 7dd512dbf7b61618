//! The SP-facing push service (seeds/003): tracked, durable messages with
//! delivery profiles, policies, mechanisms, retries, failover and callbacks.
//! The unit of delivery (`Push`) and the events shards report back
//! (`DeliveryEvent`) live in `crate::delivery`, below both.
//!
//! Built as a pure state machine plus an executor:
//! - `machine`: the transitions (requests, delivery events, hand-off and POST
//!   results, timers); time is an argument, effects (`effects`) are returned.
//!   It composes `tracked` (one message's record), `offline` (store and
//!   forward, bounded), `collapse`, `callbacks` (with their backoff),
//!   `finished` (retention, by count and bytes), `payloads` (which pending
//!   messages share which payload) and `posts` (outbound tags, request shapes).
//! - `budget`: the payload byte budgets the API reserves from and the
//!   executor releases to; `payload`: the shared payload and its record form.
//! - `executor`: the thread; performs the effects on the device side
//!   (`devices::Devices`, implemented by the gateway), the outbound pool, its
//!   timer heap (`timers`) and the store (`persist`: group commit without
//!   waiting, dirty ids kept until a commit of them succeeds).
//! - `service`: the public types (requests, typed errors, configuration);
//!   `counters` for /metrics.
//!
//! Owns message tracking. Must never touch sockets or shard state: shards
//! deliver, the service decides what to deliver and tracks the outcome.

pub mod budget;
pub mod callbacks;
pub mod collapse;
pub mod counters;
pub mod devices;
pub mod effects;
pub mod executor;
pub mod finished;
pub mod machine;
pub mod mechanism;
pub mod message;
pub mod offline;
pub mod payload;
pub mod payloads;
pub mod persist;
pub mod policy;
pub mod posts;
pub mod profile;
pub mod recovery;
pub mod service;
pub mod submit;
pub mod timers;
pub mod tracked;

use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::delivery::{DeliveryEvent, HELD_IN_SESSION, Location, Push};
pub use devices::{DeliverError, Devices, Presence};

/// Parses the text form of a push id.
pub fn parse_id(text: &str) -> Option<u64> {
    if text.len() != 16 {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

/// Hands out push ids: a start-time prefix so ids stay unique across restarts,
/// and a counter.
pub struct PushIds {
    next: AtomicU64,
}

impl PushIds {
    pub fn new() -> PushIds {
        let start_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // 32 bits of start second, 32 bits of counter.
        PushIds {
            next: AtomicU64::new(start_s << 32),
        }
    }

    /// Makes every later id greater than `id` (ids recovered from the store).
    pub fn advance_past(&self, id: u64) {
        self.next.fetch_max(id.saturating_add(1), Ordering::Relaxed);
    }

    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

impl Default for PushIds {
    fn default() -> Self {
        PushIds::new()
    }
}

/// Text form of a push id as the API shows it.
pub fn format_id(id: u64) -> String {
    format!("{id:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_formatted_fixed_width() {
        let ids = PushIds::new();
        let a = ids.next_id();
        let b = ids.next_id();
        assert_ne!(a, b);
        assert_eq!(format_id(a).len(), 16);
        assert_eq!(parse_id(&format_id(a)), Some(a));
        assert_eq!(parse_id("xyz"), None);
    }
}
