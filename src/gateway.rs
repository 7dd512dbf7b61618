//! What the shards, the HTTP API and main share: configuration, the registry,
//! every shard's mailbox and counters, the push id source, the backend in use.
//! Implements the API's `Gateway` trait (push routing and /metrics).
//!
//! Owns cross-thread routing. Must never touch a connection directly: it only
//! posts commands to the owning shard's mailbox.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;

use crate::api::{Gateway, PushError, PushRequest};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::metrics;
use crate::push::{Push, PushIds, format_id};
use crate::registry::{Location, Registry};
use crate::shard::counters::{ShardCounters, bump};
use crate::shard::mailbox::{Command, MailboxSender, PostError};

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
    /// Pushes refused at the API (offline device, full mailbox).
    pub api_pushes_refused: std::sync::atomic::AtomicU64,
    pub api_pushes_accepted: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub fn new(cfg: Arc<Config>, auth: Box<dyn Authenticator>, backend: BackendInUse) -> Shared {
        Shared {
            registry: Registry::new(cfg.stored_sessions_max),
            cfg,
            auth,
            push_ids: PushIds::new(),
            started: Instant::now(),
            backend: AtomicU8::new(backend as u8),
            shards: OnceLock::new(),
            api_pushes_refused: Default::default(),
            api_pushes_accepted: Default::default(),
        }
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

impl Gateway for Shared {
    fn push(&self, req: PushRequest) -> Result<String, PushError> {
        if req.payload.len() > self.cfg.max_packet_bytes as usize {
            return Err(PushError::PayloadTooLarge {
                max_bytes: self.cfg.max_packet_bytes,
            });
        }
        let Some(owner) = self.registry.lookup(&req.device) else {
            self.api_pushes_refused.fetch_add(1, Ordering::Relaxed);
            return Err(PushError::DeviceOffline);
        };
        let id = self.push_ids.next_id();
        let push = Push {
            id,
            qos: req.qos.min(1),
            payload: Bytes::from(req.payload),
        };
        let command = Command::Push {
            key: owner.key,
            generation: owner.generation,
            push,
        };
        match self.post(owner.shard, command) {
            Ok(()) => {
                self.api_pushes_accepted.fetch_add(1, Ordering::Relaxed);
                Ok(format_id(id))
            }
            Err(PostError::Full) => {
                self.api_pushes_refused.fetch_add(1, Ordering::Relaxed);
                Err(PushError::Overloaded { retry_after_s: 1 })
            }
            Err(PostError::Closed) => Err(PushError::ShuttingDown),
        }
    }

    fn metrics_text(&self) -> String {
        metrics::render(self)
    }
}
