//! The SP-facing push service. For now: the unit of delivery that travels from
//! the HTTP API through shard mailboxes to a device, and the push id source.
//!
//! Owns `Push` and `PushIds`. Must never touch sockets or shard state: shards
//! deliver, this module only describes what to deliver.

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
    }
}
