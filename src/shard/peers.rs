//! Every shard as seen from outside it: its mailbox, its counters, its ring's
//! fd (for passing a socket with MSG_RING). The API, the coordinator, the push
//! service and other shards reach a shard only through this.
//!
//! Owns cross-thread routing to shards. Must never touch a connection: it only
//! posts commands, and a full mailbox is the caller's answer, never a wait.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::AtomicI32;

use super::counters::{ShardCounters, bump};
use super::mailbox::{Command, MailboxSender, PostError};
use crate::delivery::{Location, Push};

/// One shard as seen from outside it.
pub struct ShardHandle {
    pub mailbox: MailboxSender,
    pub counters: Arc<ShardCounters>,
    /// The shard's io_uring fd once its ring exists (-1 before, and for epoll):
    /// other shards pass sockets to it with IORING_OP_MSG_RING.
    pub ring_fd: AtomicI32,
}

/// Every shard's handle, installed once at start-up before any shard runs.
#[derive(Default)]
pub struct Peers {
    shards: OnceLock<Vec<ShardHandle>>,
}

impl Peers {
    pub fn new() -> Peers {
        Peers::default()
    }

    /// Installs the shard handles (once, before any shard runs).
    pub fn install(&self, shards: Vec<ShardHandle>) {
        assert!(
            self.shards.set(shards).is_ok(),
            "shard handles are installed once at start-up"
        );
    }

    /// Every shard, in shard-id order (empty before `install`).
    pub fn all(&self) -> &[ShardHandle] {
        self.shards.get().map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// Posts to shard `shard`; a full or closed mailbox is counted by the caller.
    pub fn post(&self, shard: u16, command: Command) -> Result<(), PostError> {
        match self.all().get(shard as usize) {
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
    pub fn shutdown_all(&self) {
        for h in self.all() {
            // A full mailbox still gets drained; the shard also watches the stop flag.
            let _ = h.mailbox.post(Command::Shutdown);
        }
    }
}
