//! The SP-facing push service (seeds/003): tracked, durable messages with
//! delivery profiles, policies, mechanisms, retries, failover and callbacks.
//! Also the unit of delivery (`Push`) that travels through shard mailboxes to
//! a device, and the events shards report back (`DeliveryEvent`).
//!
//! Owns message tracking. Must never touch sockets or shard state: shards
//! deliver, the service decides what to deliver and tracks the outcome.

pub mod mechanism;
pub mod message;
pub mod policy;
pub mod profile;
pub mod service;
pub mod submit;

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

/// One push to one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// Gateway-unique id, returned to the SP.
    pub id: u64,
    /// MQTT QoS of the delivery: 0 or 1.
    pub qos: u8,
    /// Application payload, shared (not copied) between retries and shards.
    pub payload: Bytes,
    /// Tracked by the push service: the shard reports PUBACK or loss back to it
    /// instead of keeping the push in an MQTT session.
    pub tracked: bool,
    /// A pulsegate control topic (`$pulse/keepalive`, `$pulse/heartbeat`)
    /// instead of the device's `push/{client_id}`.
    pub control_topic: Option<&'static str>,
    /// Set when this push was sent before on a session that is now resumed:
    /// the packet id it had, so redelivery reuses it with DUP=1 (MQTT-4.4.0-1).
    pub sent_as: Option<u16>,
}

/// What shards tell the push service about tracked pushes and devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryEvent {
    /// The device sent PUBACK for this push.
    Acked { push_id: u64 },
    /// The push did not reach the device (connection closed, too large, queue full).
    NotDelivered { push_id: u64, reason: &'static str },
    /// A device completed CONNECT (store-and-forward may now deliver).
    DeviceOnline { client_id: std::sync::Arc<str> },
}

/// `NotDelivered` reason for a tracked push kept in a stored MQTT session: the
/// shard redelivers it when the device resumes the session.
pub const HELD_IN_SESSION: &str = "held_in_session";

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
