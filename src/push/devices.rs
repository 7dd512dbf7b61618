//! What the push service needs from the device side, and nothing more: where a
//! device is connected (`Presence`) and a way to hand a push to that
//! connection (`Devices::deliver`). The gateway implements it over the
//! registry and the shard mailboxes; tests implement it over a map.
//!
//! Owns this boundary. Must never grow a method that lets the push service
//! reach into a shard, the registry's internals or the wiring: it names
//! `crate::delivery` values only.

use crate::delivery::{Location, Push};

/// Where devices are connected right now (a read, never a wait).
pub trait Presence {
    /// The live connection of `client_id`, if it has one.
    fn locate(&self, client_id: &str) -> Option<Location>;
}

/// Presence plus delivery: what the executor holds.
pub trait Devices: Presence + Send + Sync {
    /// Posts `push` to the connection at `at`; never blocks. The outcome comes
    /// back later as a `DeliveryEvent` (PUBACK, loss, held in session).
    fn deliver(&self, at: Location, push: Push) -> Result<(), DeliverError>;
}

/// Why a push could not be handed to its device's shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliverError {
    /// The shard's mailbox is full (back-pressure): try again later.
    Full,
    /// The shard is gone (shutting down, or no such shard).
    Closed,
}

impl DeliverError {
    /// The attempt outcome recorded in the message history.
    pub fn reason(self) -> &'static str {
        match self {
            // One label for both, as before the split: the attempt was refused
            // by the shard's mailbox.
            DeliverError::Full | DeliverError::Closed => "shard_mailbox_full",
        }
    }
}
