//! The wiring: builds every shared owner once at start-up (registry, shard
//! peers, admission gate, report channel, relief memory, coordinator gauges,
//! push ids) and hands each thread the narrow environment it needs: a shard
//! gets a `ShardEnv`, the coordinator a `CoordinatorEnv`, the API front a
//! `FrontEnv`, the exposition its `MetricsSources`.
//!
//! Owns who sees what. Must never be read by the modules it wires (it sits on
//! top of the layers) and never hold state of its own beyond the start-up.

use std::sync::{Arc, Mutex};

use crossbeam_channel::Receiver;

use crate::api::HttpCounters;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::coordinator::{CoordinatorEnv, CoordinatorGauges};
use crate::delivery::{DeliveryEvent, Location, Push};
use crate::front::{FrontEnv, ServiceHandle};
use crate::metrics::MetricsSources;
use crate::push::PushIds;
use crate::registry::Registry;
use crate::shard::env::{BackendInUse, ShardEnv};
use crate::shard::mailbox::{Command, PostError};
use crate::shard::peers::Peers;

/// Every owner that more than one thread reads, built once. The shard-side
/// owners (registry, peers, reporter, admission, relief memory, authenticator,
/// epoch) are the ones in `shard`; the others read the same `Arc`s from it.
pub struct Owners {
    pub backend: BackendInUse,
    pub shard: ShardEnv,
    pub gauges: Arc<CoordinatorGauges>,
    pub push_ids: Arc<PushIds>,
    /// The HTTP server's counters (it is started with them; /metrics reads them).
    pub http: Arc<HttpCounters>,
    /// The receiving end of delivery events, taken once by the push service.
    deliveries: Mutex<Option<Receiver<DeliveryEvent>>>,
}

impl Owners {
    pub fn new(cfg: Arc<Config>, auth: Arc<dyn Authenticator>, backend: BackendInUse) -> Owners {
        let (shard, deliveries) = ShardEnv::new(cfg, auth);
        Owners {
            backend,
            shard,
            gauges: Arc::default(),
            push_ids: Arc::new(PushIds::new()),
            http: Arc::default(),
            deliveries: Mutex::new(Some(deliveries)),
        }
    }

    pub fn cfg(&self) -> &Arc<Config> {
        &self.shard.cfg
    }

    pub fn shard_env(&self) -> ShardEnv {
        self.shard.clone()
    }

    pub fn coordinator_env(&self) -> CoordinatorEnv {
        CoordinatorEnv {
            cfg: self.shard.cfg.clone(),
            peers: self.shard.peers.clone(),
            admission: self.shard.admission.clone(),
            gauges: self.gauges.clone(),
            epoch: self.shard.epoch,
        }
    }

    pub fn metrics_sources(&self, service: Option<&ServiceHandle>) -> MetricsSources {
        let s = &self.shard;
        MetricsSources {
            backend: self.backend,
            epoch: s.epoch,
            peers: s.peers.clone(),
            registry: s.registry.clone(),
            reports: s.reports.clone(),
            relieved: s.relieved.clone(),
            admission: s.admission.clone(),
            gauges: self.gauges.clone(),
            http: self.http.clone(),
            service: service.map(|s| (s.counters.clone(), s.committer.clone())),
        }
    }

    pub fn front_env(&self, service: ServiceHandle) -> FrontEnv {
        FrontEnv {
            metrics: self.metrics_sources(Some(&service)),
            cfg: self.shard.cfg.clone(),
            registry: self.shard.registry.clone(),
            push_ids: self.push_ids.clone(),
            admission: self.shard.admission.clone(),
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
            registry: self.shard.registry.clone(),
            peers: self.shard.peers.clone(),
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
