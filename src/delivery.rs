//! The values that cross module boundaries on the delivery path: a `Push` on
//! its way to a device, where a device lives (`Location`), and what shards
//! report back (`DeliveryEvent`). Below the push service, the registry and the
//! shards, so none of them imports another for these.
//!
//! Also the `Reporter` shards send those events through (a bounded channel
//! that never blocks its sender).
//!
//! Owns these plain types and the report channel. Must never hold behaviour
//! that needs a thread, a lock or I/O: they are data, moved through channels.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

/// Where a connected device lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub shard: u16,
    pub key: u32,
    pub generation: u32,
    /// The connection asked for a persistent session (clean start false).
    pub persistent: bool,
}

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

/// Shards -> push service: PUBACKs, losses, devices coming online.
pub struct Reporter {
    tx: Sender<DeliveryEvent>,
    /// Events dropped because the service's channel was full (the service's
    /// timeouts and sweeps recover from these).
    lost: AtomicU64,
}

impl Reporter {
    /// A reporter holding at most `events_max` unread events, and its receiving end.
    pub fn bounded(events_max: usize) -> (Reporter, Receiver<DeliveryEvent>) {
        let (tx, rx) = crossbeam_channel::bounded(events_max);
        (
            Reporter {
                tx,
                lost: AtomicU64::new(0),
            },
            rx,
        )
    }

    /// Reports an event; never blocks (a full channel counts it as lost).
    pub fn report(&self, event: DeliveryEvent) {
        if self.tx.try_send(event).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events lost to a full channel so far.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}
