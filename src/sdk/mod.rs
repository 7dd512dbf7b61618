//! The device side of pulsegate: what a phone (or the load generator) runs to hold its
//! push connection well (seeds/000 and seeds/004, MISSION sections 1, 2 and 6).
//!
//! - `keepalive`: the keep-alive timer. It restarts on every packet the device sends (as
//!   libmosquitto does), sends PINGREQ on expiry, and is re-initialized by the gateway's
//!   keep-alive configuration message (claims 16-17), which disperses synchronized devices.
//! - `heartbeat`: the step method. Start at a minimum interval, add a step per survived
//!   interval up to the optimal value (the largest interval below the path's NAT/firewall
//!   idle timeout, found by probing); a heartbeat adjustment from the gateway moves toward
//!   the requested interval, never beyond the optimal value.
//! - `control`: the `$pulse/keepalive` and `$pulse/heartbeat` payloads.
//! - `reconnect`: server busy (0x89) / use another server (0x9C, Server Reference) at
//!   CONNACK or DISCONNECT: follow the reference, else exponential backoff with jitter.
//! - `state`: the stored heartbeat state (interval, server, optimal flag, location,
//!   MCC-MNC) as JSON, reused on the next connection.
//! - `session`: all of the above around one MQTT connection, sans-IO, encoding and decoding
//!   with the gateway's own codec (`crate::protocol::mqtt`).
//!
//! Owns: device behaviour only. Must never: do I/O, read clocks or random sources (the
//! `pulsegate-device` program and the load generator drive these state machines with their
//! own sockets and clocks), or depend on the gateway's server-side modules (shard,
//! coordinator, api): the SDK is what the other end of the wire runs.

pub mod control;
pub mod heartbeat;
pub mod keepalive;
pub mod reconnect;
pub mod session;
pub mod state;

pub use control::{Control, ControlError};
pub use heartbeat::{Heartbeat, HeartbeatPolicy};
pub use keepalive::{KeepAlive, KeepAliveAction, NEVER_MS};
pub use reconnect::{BackoffPolicy, Reconnect, Reconnector};
pub use session::{CloseCause, Event, Phase, Session, SessionConfig};
pub use state::StoredState;
