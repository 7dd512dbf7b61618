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
use crate::tls::{ServerTls, ServerTlsFiles};

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

/// ALPN protocol the MQTT-over-TLS listener offers (clients offering none are accepted too).
pub const MQTT_ALPN: &[u8] = b"mqtt";

impl Owners {
    /// Errs (naming the file) when `mqtt_tls_listen` is set and its
    /// certificate or key cannot be loaded.
    pub fn new(cfg: Arc<Config>, auth: Arc<dyn Authenticator>, backend: BackendInUse) -> Result<Owners, String> {
        let tls = Owners::load_mqtt_tls(&cfg)?;
        let (mut shard, deliveries) = ShardEnv::new(cfg, auth);
        shard.tls = tls;
        Ok(Owners {
            backend,
            shard,
            gauges: Arc::default(),
            push_ids: Arc::new(PushIds::new()),
            http: Arc::default(),
            deliveries: Mutex::new(Some(deliveries)),
        })
    }

    fn load_mqtt_tls(cfg: &Config) -> Result<Option<Arc<ServerTls>>, String> {
        if cfg.mqtt_tls_listen.is_none() {
            return Ok(None);
        }
        let (Some(cert_file), Some(key_file)) = (cfg.tls_cert_file.clone(), cfg.tls_key_file.clone()) else {
            return Err("mqtt_tls_listen needs tls_cert_file and tls_key_file".into());
        };
        let files = ServerTlsFiles {
            cert_file,
            key_file,
            alpn: vec![MQTT_ALPN.to_vec()],
        };
        ServerTls::load(files)
            .map(|t| Some(Arc::new(t)))
            .map_err(|e| format!("MQTT TLS: {e}"))
    }

    /// The MQTT-over-TLS identity (for SIGHUP's `reload()`), if TLS is on.
    pub fn mqtt_tls(&self) -> Option<Arc<ServerTls>> {
        self.shard.tls.clone()
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
            auth: s.auth.clone(),
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
