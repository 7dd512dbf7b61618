//! The push service's public face: its configuration, the requests the API
//! sends it, the typed errors it answers with, the parts it is built from, and
//! the thread (`PushService`, the executor around the pure `machine`).
//!
//! Owns these types. Must never hold message state or perform I/O itself:
//! `machine` decides, `executor` acts.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use rustls::pki_types::CertificateDer;

use super::DeliveryEvent;
use super::budget::PayloadBudget;
pub use super::callbacks::CallbackBudget;
use super::devices::Devices;
use super::mechanism::MechanismConfig;
use super::message::{Message, State};
use crate::outbound::url_policy::UrlPolicy;
use crate::store::GroupCommitter;

pub use super::counters::ServiceCounters;
pub use super::executor::PushService;

/// Limits of the service.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Messages not yet in a terminal state, in total.
    pub pending_messages_max: u32,
    /// Messages held for one offline device; beyond it the oldest fails.
    pub pending_per_device_max: u32,
    /// Terminal messages kept for `GET` before they are deleted.
    pub completed_retention_max: usize,
    /// Record bytes of the terminal messages kept for `GET`.
    pub completed_retention_bytes_max: u64,
    /// Callback POSTs tried per terminal state.
    pub callback_attempts_max: u32,
    pub callback_timeout_ms: u64,
    /// Callbacks waiting (queued or backing off) in total.
    pub callbacks_pending_max: usize,
    /// Callback POSTs per second one SP may start (and its burst).
    pub callback_budget: CallbackBudget,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            pending_messages_max: 1_000_000,
            pending_per_device_max: 64,
            completed_retention_max: 100_000,
            completed_retention_bytes_max: 256 << 20,
            callback_attempts_max: 5,
            callback_timeout_ms: 5_000,
            callbacks_pending_max: 100_000,
            callback_budget: CallbackBudget {
                per_s: 50.0,
                burst: 100,
            },
        }
    }
}

/// What an SP asked to do to a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Confirm,
    Cancel,
}

/// Why an API call on a message failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceError {
    /// No such message for this SP (never existed, another SP's, or deleted
    /// after its retention).
    NotFound,
    /// The message's state does not allow `op` (confirming one that was not
    /// delivered, cancelling one already finished).
    Conflict { state: State, op: Op },
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceError::NotFound => write!(f, "no such message"),
            ServiceError::Conflict { state, op: Op::Confirm } => write!(f, "message is {state:?}, not delivered"),
            ServiceError::Conflict { state, op: Op::Cancel } => write!(f, "message is already {state:?}"),
        }
    }
}

impl std::error::Error for ServiceError {}

pub type Reply<T> = Sender<Result<T, ServiceError>>;

/// Calls from the API threads.
pub enum Request {
    /// Already durable: start tracking.
    Submit(Vec<Message>),
    Status {
        sp: String,
        id: u64,
        reply: Reply<serde_json::Value>,
    },
    Confirm {
        sp: String,
        id: u64,
        reply: Reply<serde_json::Value>,
    },
    Cancel {
        sp: String,
        id: u64,
        reply: Reply<serde_json::Value>,
    },
    Mechanisms {
        reply: Sender<serde_json::Value>,
    },
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the service is built from.
pub struct ServiceParts {
    /// The device side: where devices are, and their shards' mailboxes.
    pub devices: Arc<dyn Devices>,
    pub committer: Arc<GroupCommitter>,
    pub requests: Receiver<Request>,
    pub deliveries: Receiver<DeliveryEvent>,
    pub mechanisms: Vec<MechanismConfig>,
    pub config: ServiceConfig,
    pub counters: Arc<ServiceCounters>,
    /// The payload byte budgets the API reserves from; released here.
    pub budget: Arc<PayloadBudget>,
    pub outbound_workers: usize,
    /// What https:// webhooks and callbacks trust (`tls::client_root_certs`).
    pub outbound_roots: Vec<CertificateDer<'static>>,
    /// Where webhooks and callbacks may go, checked again at send time.
    pub url_policy: Arc<UrlPolicy>,
}
