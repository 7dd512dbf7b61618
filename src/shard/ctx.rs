//! What every owner of a shard reads but none owns alone: the shard's id, its
//! narrow environment (`ShardEnv`), its counters, its clock and whether it is
//! shutting down. The owners (`Connections`, `Sessions`, `Moves`, `Control`)
//! take it by shared reference.
//!
//! Owns the shard clock. Must never hold connection state, and never be
//! mutated by anyone but the `Core` facade (tick, shutdown).

use std::sync::Arc;
use std::time::Instant;

use super::counters::{ShardCounters, bump};
use super::env::ShardEnv;
use crate::delivery::{DeliveryEvent, Push};

pub(super) struct Ctx {
    pub shard_id: u16,
    pub env: ShardEnv,
    pub counters: Arc<ShardCounters>,
    epoch: Instant,
    /// Shard clock, ms since the environment's epoch (moved by `tick`).
    pub now_ms: u64,
    pub shutting_down: bool,
}

impl Ctx {
    pub fn new(shard_id: u16, env: ShardEnv, counters: Arc<ShardCounters>) -> Ctx {
        let epoch = env.epoch;
        Ctx {
            shard_id,
            env,
            counters,
            epoch,
            now_ms: epoch.elapsed().as_millis() as u64,
            shutting_down: false,
        }
    }

    /// Moves the shard clock to now.
    pub fn tick(&mut self) {
        self.now_ms = self.epoch.elapsed().as_millis() as u64;
    }

    /// Tells the push service a tracked push did not reach the device.
    pub fn not_delivered(&self, push: &Push, reason: &'static str) {
        bump(&self.counters.pushes_dropped, 1);
        if push.tracked {
            self.env.reports.report(DeliveryEvent::NotDelivered {
                push_id: push.id,
                reason,
            });
        }
    }
}
