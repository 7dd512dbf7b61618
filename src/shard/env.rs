//! What a shard needs from outside itself, and nothing more: the settings,
//! the registry, its peers' mailboxes, the report channel to the push service,
//! the admission gate, the accept gate (rates at accept, before any
//! handshake), the relief memory, the device authenticator, and the
//! process epoch its millisecond clock counts from.
//!
//! Owns the shape of that environment. Must never grow a field a shard does
//! not read: the coordinator, the API and the push service have their own.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;

use super::accept_gate::AcceptGate;
use super::admission::Admission;
use super::peers::Peers;
use crate::auth::{AllowAll, Authenticator};
use crate::config::Config;
use crate::delivery::{DeliveryEvent, Reporter};
use crate::registry::{Registry, ReliefMemory};
use crate::tls::ServerTls;

/// The backend the shards run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendInUse {
    Uring,
    Epoll,
}

impl BackendInUse {
    pub fn label(self) -> &'static str {
        match self {
            BackendInUse::Uring => "uring",
            BackendInUse::Epoll => "epoll",
        }
    }
}

/// One shard's environment (every shard gets a clone: the fields are shared).
#[derive(Clone)]
pub struct ShardEnv {
    pub cfg: Arc<Config>,
    pub registry: Arc<Registry>,
    pub peers: Arc<Peers>,
    pub reports: Arc<Reporter>,
    pub admission: Arc<Admission>,
    /// Accept rates (global and per source), shared by every shard.
    pub accept_gate: Arc<AcceptGate>,
    pub relieved: Arc<ReliefMemory>,
    pub auth: Arc<dyn Authenticator>,
    /// The MQTT-over-TLS listener's identity (ALPN `mqtt`); None when
    /// `mqtt_tls_listen` is off. New connections take `current()` at accept.
    pub tls: Option<Arc<ServerTls>>,
    /// Shard clocks count milliseconds from here.
    pub epoch: Instant,
}

/// Client ids remembered as ended by relief, at most.
pub const RELIEVED_IDS_MAX: usize = 1 << 20;

/// Delivery events waiting for the push service, at most.
pub const DELIVERY_EVENTS_MAX: usize = 262_144;

impl ShardEnv {
    /// Builds every owner a shard reads (none shared with anything yet, no
    /// peers installed); the receiver gets what the shards report.
    pub fn new(cfg: Arc<Config>, auth: Arc<dyn Authenticator>) -> (ShardEnv, Receiver<DeliveryEvent>) {
        let (reports, rx) = Reporter::bounded(DELIVERY_EVENTS_MAX);
        let env = ShardEnv {
            registry: Arc::new(Registry::new(cfg.stored_sessions_max)),
            admission: Arc::new(Admission::new(cfg.max_heartbeats_per_s)),
            accept_gate: Arc::new(AcceptGate::from_config(&cfg)),
            cfg,
            peers: Arc::new(Peers::new()),
            reports: Arc::new(reports),
            relieved: Arc::new(ReliefMemory::new(RELIEVED_IDS_MAX)),
            auth,
            tls: None,
            epoch: Instant::now(),
        };
        (env, rx)
    }

    /// A self-contained environment for shards that stand alone (tests,
    /// benches): every device admitted.
    pub fn standalone(cfg: Arc<Config>) -> (ShardEnv, Receiver<DeliveryEvent>) {
        ShardEnv::new(cfg, Arc::new(AllowAll::default()))
    }
}
