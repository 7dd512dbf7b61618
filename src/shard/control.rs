//! The shard's side of the coordinator's commands: keep-alive dispersal
//! (seeds/000: `$pulse/keepalive` messages spread over one period) and
//! heartbeat load relief (seeds/004: `$pulse/heartbeat` to lengthen the
//! newest devices' interval, then disconnect those already adjusted).
//!
//! Owns the per-connection dispersal and relief steps. Must never decide
//! when to disperse or relieve: the coordinator does, from counters.

use bytes::Bytes;

use super::conn::{FLAG_DISPERSE, FLAG_HB_ADJUSTED, Phase};
use super::core::Core;
use super::counters::{CloseReason, bump};
use crate::coordinator::dispersal::send_offset_ms;
use crate::protocol::mqtt::{self, Disconnect, ProtocolVersion};
use crate::push::Push;

/// Topic of the keep-alive configuration message.
pub const KEEPALIVE_TOPIC: &str = "$pulse/keepalive";
/// Topic of the heartbeat adjustment message.
pub const HEARTBEAT_TOPIC: &str = "$pulse/heartbeat";

impl Core {
    /// Marks every connected device whose last keep-alive fell in a hot second
    /// and arms its timer at its place in the uniform schedule.
    pub(super) fn disperse(&mut self, hot_seconds: &[u32]) {
        let mut hot = hot_seconds.to_vec();
        hot.sort_unstable();
        let chosen: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.phase == Phase::Connected
                    && c.keepalive_s > 0
                    && c.flags & FLAG_DISPERSE == 0
                    && hot.binary_search(&((c.last_activity_ms / 1000) as u32)).is_ok()
            })
            .map(|(k, _)| k as u32)
            .collect();
        let n = chosen.len();
        if n == 0 {
            return;
        }
        bump(&self.counters.dispersal_rounds, 1);
        for (i, &key) in chosen.iter().enumerate() {
            let conn = &mut self.conns[key as usize];
            let period_ms = conn.keepalive_s as u64 * 1000;
            conn.flags |= FLAG_DISPERSE;
            // Never later than the keep-alive deadline: the device must not expire.
            let deadline_ms = conn.last_activity_ms + conn.keepalive_s as u64 * 1500;
            let at_ms = (self.now_ms + send_offset_ms(i, n, period_ms)).min(deadline_ms.saturating_sub(1));
            self.wheel.insert(key, at_ms.max(self.now_ms));
        }
    }

    /// The dispersal timer of `key` fired: send its keep-alive configuration.
    pub(super) fn send_keepalive_configuration(&mut self, key: u32) {
        let conn = &mut self.conns[key as usize];
        conn.flags &= !FLAG_DISPERSE;
        let keepalive_s = conn.keepalive_s;
        let deadline_ms = conn.last_activity_ms + keepalive_s as u64 * 1500;
        self.wheel.insert(key, deadline_ms);
        let payload = format!("{{\"keepalive_s\":{keepalive_s},\"offset_ms\":0}}");
        self.send_control(key, KEEPALIVE_TOPIC, payload);
    }

    /// QoS 1 control message: libmosquitto-based devices restart their
    /// keep-alive timer when they send its PUBACK; the SDK parses the payload.
    fn send_control(&mut self, key: u32, topic: &'static str, payload: String) {
        bump(&self.counters.control_messages_sent, 1);
        let push = Push {
            id: 0,
            qos: 1,
            payload: Bytes::from(payload),
            tracked: false,
            control_topic: Some(topic),
            sent_as: None,
        };
        self.deliver(key, push);
    }

    /// Asks the `count` newest devices to lengthen their heartbeat; a device
    /// asked before (or already at `keepalive_max_s`) is disconnected instead.
    pub(super) fn relieve(&mut self, count: u32, keepalive_max_s: u16) {
        let mut left = count;
        let mut adjusted = Vec::new();
        while left > 0 {
            let Some((key, generation)) = self.newest.pop_back() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(key as usize) else {
                continue;
            };
            if conn.generation != generation || conn.phase != Phase::Connected {
                continue;
            }
            left -= 1;
            let ka = conn.keepalive_s;
            if conn.flags & FLAG_HB_ADJUSTED == 0 && ka > 0 && ka < keepalive_max_s {
                let new_ka = ka.saturating_mul(2).min(keepalive_max_s);
                conn.flags |= FLAG_HB_ADJUSTED;
                conn.keepalive_s = new_ka;
                self.counters.keepalive_census(ka, -1);
                self.counters.keepalive_census(new_ka, 1);
                bump(&self.counters.heartbeat_adjustments, 1);
                self.send_control(key, HEARTBEAT_TOPIC, format!("{{\"keepalive_s\":{new_ka}}}"));
                adjusted.push((key, generation));
            } else {
                bump(&self.counters.overload_disconnects, 1);
                self.disconnect_overloaded(key);
            }
        }
        // Back at the newest end: if relief is still needed next round, the
        // adjusted devices are the first to be disconnected.
        for entry in adjusted.into_iter().rev() {
            self.newest.push_back(entry);
        }
    }

    /// DISCONNECT 0x89 (server busy), or 0x9C (use another server) with a
    /// Server Reference when one is configured; 3.1.1 devices are just closed.
    fn disconnect_overloaded(&mut self, key: u32) {
        let reference = self.shared.cfg.server_reference.clone();
        if self.conns[key as usize].is_v5() {
            let reason = if reference.is_some() {
                mqtt::reason::USE_ANOTHER_SERVER
            } else {
                mqtt::reason::SERVER_BUSY
            };
            let d = Disconnect {
                reason,
                session_expiry_interval_s: None,
                reason_string: None,
                server_reference: reference.as_deref(),
            };
            self.queue_packet(key, |out| {
                d.encode(ProtocolVersion::V5, out);
            });
        }
        self.begin_close(key, CloseReason::Overload);
    }
}
