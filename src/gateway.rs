//! The wiring: builds every shared owner once at start-up (registry, shard
//! peers, admission gate, report channel, relief memory, coordinator gauges,
//! push ids) and hands each thread the narrow environment it needs: a shard
//! gets a `ShardEnv`, the coordinator a `CoordinatorEnv`, the API front a
//! `FrontEnv`, the exposition its `MetricsSources`.
//!
//! Owns who sees what. Must never be read by the modules it wires (it sits on
//! top of the layers) and never hold state of its own beyond the start-up.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::Receiver;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::coordinator::{CoordinatorEnv, CoordinatorGauges};
use crate::delivery::{DeliveryEvent, Location, Push, Reporter};
use crate::front::{FrontEnv, ServiceHandle};
use crate::metrics::MetricsSources;
use crate::push::PushIds;
use crate::registry::{Registry, ReliefMemory};
use crate::shard::admission::Admission;
use crate::shard::env::{BackendInUse, DELIVERY_EVENTS_MAX, RELIEVED_IDS_MAX, ShardEnv};
use crate::shard::mailbox::{Command, PostError};
use crate::shard::peers::Peers;

/// Every owner that more than one thread reads, built once.
pub struct Owners {
    pub cfg: Arc<Config>,
    pub backend: BackendInUse,
    pub registry: Arc<Registry>,
    pub peers: Arc<Peers>,
    pub reports: Arc<Reporter>,
    pub admission: Arc<Admission>,
    pub relieved: Arc<ReliefMemory>,
    pub gauges: Arc<CoordinatorGauges>,
    pub auth: Arc<dyn Authenticator>,
    pub push_ids: Arc<PushIds>,
    pub epoch: Instant,
    /// The receiving end of delivery events, taken once by the push service.
    deliveries: Mutex<Option<Receiver<DeliveryEvent>>>,
}

impl Owners {
    pub fn new(cfg: Arc<Config>, auth: Arc<dyn Authenticator>, backend: BackendInUse) -> Owners {
        let (reports, deliveries) = Reporter::bounded(DELIVERY_EVENTS_MAX);
        Owners {
            registry: Arc::new(Registry::new(cfg.stored_sessions_max)),
            admission: Arc::new(Admission::new(cfg.max_heartbeats_per_s)),
            cfg,
            backend,
            peers: Arc::new(Peers::new()),
            reports: Arc::new(reports),
            relieved: Arc::new(ReliefMemory::new(RELIEVED_IDS_MAX)),
            gauges: Arc::default(),
            auth,
            push_ids: Arc::new(PushIds::new()),
            epoch: Instant::now(),
            deliveries: Mutex::new(Some(deliveries)),
        }
    }

    pub fn shard_env(&self) -> ShardEnv {
        ShardEnv {
            cfg: self.cfg.clone(),
            registry: self.registry.clone(),
            peers: self.peers.clone(),
            reports: self.reports.clone(),
            admission: self.admission.clone(),
            relieved: self.relieved.clone(),
            auth: self.auth.clone(),
            epoch: self.epoch,
        }
    }

    pub fn coordinator_env(&self) -> CoordinatorEnv {
        CoordinatorEnv {
            cfg: self.cfg.clone(),
            peers: self.peers.clone(),
            admission: self.admission.clone(),
            gauges: self.gauges.clone(),
            epoch: self.epoch,
        }
    }

    pub fn metrics_sources(&self, service: Option<&ServiceHandle>) -> MetricsSources {
        MetricsSources {
            backend: self.backend,
            epoch: self.epoch,
            peers: self.peers.clone(),
            registry: self.registry.clone(),
            reports: self.reports.clone(),
            relieved: self.relieved.clone(),
            admission: self.admission.clone(),
            gauges: self.gauges.clone(),
            service: service.map(|s| (s.counters.clone(), s.committer.clone())),
        }
    }

    pub fn front_env(&self, service: ServiceHandle) -> FrontEnv {
        FrontEnv {
            metrics: self.metrics_sources(Some(&service)),
            cfg: self.cfg.clone(),
            registry: self.registry.clone(),
            push_ids: self.push_ids.clone(),
            admission: self.admission.clone(),
            gauges: self.gauges.clone(),
            service,
        }
    }

    /// The receiving end of delivery events (taken once, by the push service).
    pub fn take_delivery_events(&self) -> Option<Receiver<DeliveryEvent>> {
        self.deliveries.lock().ok().and_then(|mut g| g.take())
    }
}

/// The push service's view of the device side: the registry says where a
/// device is, its shard's mailbox takes the push.
pub struct DeviceRoutes {
    registry: Arc<Registry>,
    peers: Arc<Peers>,
}

impl Owners {
    pub fn device_routes(&self) -> DeviceRoutes {
        DeviceRoutes {
            registry: self.registry.clone(),
            peers: self.peers.clone(),
        }
    }
}

impl crate::push::Presence for DeviceRoutes {
    fn locate(&self, client_id: &str) -> Option<Location> {
        self.registry.lookup(client_id)
    }
}

impl crate::push::Devices for DeviceRoutes {
    fn deliver(&self, at: Location, push: Push) -> Result<(), crate::push::DeliverError> {
        let command = Command::Push {
            key: at.key,
            generation: at.generation,
            push,
        };
        self.peers.post(at.shard, command).map_err(|e| match e {
            PostError::Full => crate::push::DeliverError::Full,
            PostError::Closed => crate::push::DeliverError::Closed,
        })
    }
}
