//! What the shards, the HTTP API, the push service and main share:
//! configuration, the registry, every shard's mailbox and counters, the push
//! id source, the backend in use, the delivery-event channel.
//!
//! Owns cross-thread routing. Must never touch a connection directly: it only
//! posts commands to the owning shard's mailbox.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::delivery::Location;
use crate::delivery::{DeliveryEvent, Push};
use crate::push::PushIds;
use crate::push::service::{Request, ServiceCounters};
use crate::registry::Registry;
use crate::shard::counters::{ShardCounters, bump};
use crate::shard::mailbox::{Command, MailboxSender, PostError};
use crate::store::GroupCommitter;

/// The backend the shards run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BackendInUse {
    Uring = 1,
    Epoll = 2,
}

impl BackendInUse {
    pub fn label(self) -> &'static str {
        match self {
            BackendInUse::Uring => "uring",
            BackendInUse::Epoll => "epoll",
        }
    }
}

/// One shard as seen from outside it.
pub struct ShardHandle {
    pub mailbox: MailboxSender,
    pub counters: Arc<ShardCounters>,
    /// The shard's io_uring fd once its ring exists (-1 before, and for epoll):
    /// other shards pass sockets to it with IORING_OP_MSG_RING.
    pub ring_fd: std::sync::atomic::AtomicI32,
}

pub struct Shared {
    pub cfg: Arc<Config>,
    pub registry: Registry,
    pub auth: Box<dyn Authenticator>,
    pub push_ids: PushIds,
    pub started: Instant,
    backend: AtomicU8,
    /// Set once, after every shard's mailbox exists.
    shards: OnceLock<Vec<ShardHandle>>,
    /// Shards -> push service: PUBACKs, losses, devices coming online.
    delivery_tx: Sender<DeliveryEvent>,
    delivery_rx: Mutex<Option<Receiver<DeliveryEvent>>>,
    /// Delivery events dropped because the service's channel was full (the
    /// service's timeouts and sweeps recover from these).
    pub delivery_events_lost: AtomicU64,
    /// The push service, once started.
    pub service: OnceLock<ServiceHandle>,
    /// Set by the coordinator over the heartbeat-load threshold: CONNECTs are refused.
    pub admission_closed: std::sync::atomic::AtomicBool,
    /// CONNECTs that may still be admitted before the coordinator's next reading
    /// (seeds/004 admission: as many new devices as the heartbeat headroom holds).
    pub admission_budget: std::sync::atomic::AtomicI64,
    /// The host's heartbeat-load threshold x 1000 (0 = none); starts from the
    /// config, changed at run time through the admin API.
    pub heartbeat_threshold_milli: AtomicU64,
    /// Devices whose last connection relief ended (never relieved that way twice in a row).
    pub relieved: crate::registry::ReliefMemory,
    /// What the coordinator last measured.
    pub coordinator: crate::coordinator::CoordinatorGauges,
}

/// How the API reaches the push service.
pub struct ServiceHandle {
    pub requests: Sender<Request>,
    pub committer: Arc<GroupCommitter>,
    pub counters: Arc<ServiceCounters>,
}

/// Client ids remembered as ended by relief, at most.
pub const RELIEVED_IDS_MAX: usize = 1 << 20;

/// Delivery events waiting for the push service, at most.
pub const DELIVERY_EVENTS_MAX: usize = 262_144;

impl Shared {
    pub fn new(cfg: Arc<Config>, auth: Box<dyn Authenticator>, backend: BackendInUse) -> Shared {
        let (delivery_tx, delivery_rx) = crossbeam_channel::bounded(DELIVERY_EVENTS_MAX);
        let threshold_milli = cfg
            .max_heartbeats_per_s
            .map_or(0, |t| (t * 1000.0).round().max(1.0) as u64);
        Shared {
            registry: Registry::new(cfg.stored_sessions_max),
            cfg,
            auth,
            push_ids: PushIds::new(),
            started: Instant::now(),
            backend: AtomicU8::new(backend as u8),
            shards: OnceLock::new(),
            delivery_tx,
            delivery_rx: Mutex::new(Some(delivery_rx)),
            delivery_events_lost: AtomicU64::new(0),
            service: OnceLock::new(),
            admission_closed: std::sync::atomic::AtomicBool::new(false),
            // An empty host's headroom is the whole threshold.
            admission_budget: std::sync::atomic::AtomicI64::new(threshold_milli as i64),
            heartbeat_threshold_milli: AtomicU64::new(threshold_milli),
            relieved: crate::registry::ReliefMemory::new(RELIEVED_IDS_MAX),
            coordinator: Default::default(),
        }
    }

    /// The heartbeat-load threshold in force (keep-alives per second), if any.
    pub fn heartbeat_threshold_per_s(&self) -> Option<f64> {
        match self.heartbeat_threshold_milli.load(Ordering::Relaxed) {
            0 => None,
            milli => Some(milli as f64 / 1000.0),
        }
    }

    /// Takes a CONNECT with keep-alive `keepalive_s` out of the admission
    /// budget; false = refuse it (no heartbeat headroom left).
    pub fn admit(&self, keepalive_s: u16) -> bool {
        if self.heartbeat_threshold_milli.load(Ordering::Relaxed) == 0 {
            return true;
        }
        let cost = crate::policy::load::admission_cost_milli(keepalive_s);
        self.admission_budget.fetch_sub(cost, Ordering::Relaxed) >= cost
    }

    /// A shard reports to the push service; never blocks.
    pub fn report(&self, event: DeliveryEvent) {
        if self.delivery_tx.try_send(event).is_err() {
            self.delivery_events_lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The receiving end of delivery events (taken once, by the push service).
    pub fn take_delivery_events(&self) -> Option<Receiver<DeliveryEvent>> {
        self.delivery_rx.lock().ok().and_then(|mut g| g.take())
    }

    /// Installs the shard handles (once, before any shard runs).
    pub fn set_shards(&self, shards: Vec<ShardHandle>) {
        assert!(self.shards.set(shards).is_ok(), "shards are installed once at start-up");
    }

    pub fn shards(&self) -> &[ShardHandle] {
        self.shards.get().map(|v| v.as_slice()).unwrap_or(&[])
    }

    pub fn backend(&self) -> BackendInUse {
        if self.backend.load(Ordering::Relaxed) == BackendInUse::Epoll as u8 {
            BackendInUse::Epoll
        } else {
            BackendInUse::Uring
        }
    }

    /// Posts to shard `shard`; a full or closed mailbox is counted by the caller.
    pub fn post(&self, shard: u16, command: Command) -> Result<(), PostError> {
        match self.shards().get(shard as usize) {
            Some(h) => h.mailbox.post(command).map_err(|(e, _)| e),
            None => Err(PostError::Closed),
        }
    }

    /// Forwards a push to its new owner (from a shard: drops are counted there).
    pub fn route_to(&self, owner: Location, push: Push, counters: &ShardCounters) {
        let command = Command::Push {
            key: owner.key,
            generation: owner.generation,
            push,
        };
        if self.post(owner.shard, command).is_err() {
            bump(&counters.pushes_dropped, 1);
        }
    }

    /// Posts Shutdown to every shard.
    pub fn shutdown_shards(&self) {
        for h in self.shards() {
            // A full mailbox still gets drained; the shard also watches the stop flag.
            let _ = h.mailbox.post(Command::Shutdown);
        }
    }
}

/// The push service's view of the device side: the registry says where a
/// device is, its shard's mailbox takes the push.
impl crate::push::Presence for Shared {
    fn locate(&self, client_id: &str) -> Option<Location> {
        self.registry.lookup(client_id)
    }
}

impl crate::push::Devices for Shared {
    fn deliver(&self, at: Location, push: Push) -> Result<(), crate::push::DeliverError> {
        let command = Command::Push {
            key: at.key,
            generation: at.generation,
            push,
        };
        self.post(at.shard, command).map_err(|e| match e {
            PostError::Full => crate::push::DeliverError::Full,
            PostError::Closed => crate::push::DeliverError::Closed,
        })
    }
}
