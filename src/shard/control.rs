//! The shard's side of the coordinator's commands: keep-alive dispersal
//! (seeds/000: `$pulse/keepalive` messages spread over one period) and
//! heartbeat load relief (seeds/004: `$pulse/heartbeat` to lengthen the
//! newest devices' interval, then disconnect those already adjusted).
//!
//! Owns the per-connection dispersal and relief steps (`Control`: its
//! scratch lists, reused every round). Must never decide when to disperse or
//! relieve: the coordinator does, from counters.

use bytes::Bytes;

use super::close;
use super::conn::{ControlDue, FLAG_DISPERSE, FLAG_HB_ADJUSTED, IO_MOVING, Phase};
use super::connections::Connections;
use super::counters::{CloseReason, bump};
use super::ctx::Ctx;
use super::deliver::Sessions;
use crate::delivery::Push;
use crate::policy::dispersal::send_offset_ms;
use crate::policy::relief;
use crate::protocol::mqtt::{self, Disconnect, ProtocolVersion};

/// Topic of the keep-alive configuration message.
pub const KEEPALIVE_TOPIC: &str = "$pulse/keepalive";
/// Topic of the heartbeat adjustment message.
pub const HEARTBEAT_TOPIC: &str = "$pulse/heartbeat";

/// The dispersal and relief steps of one shard, with their scratch lists
/// (each at most one entry per connection, so bounded by the slab).
#[derive(Default)]
pub(super) struct Control {
    hot: Vec<u32>,
    /// (zone, last activity ms, key) of the devices chosen for dispersal.
    chosen: Vec<(u32, u64, u32)>,
    keys: Vec<u32>,
    candidates: Vec<relief::Candidate>,
}

impl Control {
    /// Marks every connected device whose last keep-alive fell in a hot second
    /// and arms its timer at its place in the uniform schedule, zone by zone:
    /// devices that report their network (MCC/MNC) are spread within it, the
    /// others within the shard. Within a zone, places go in the order of the
    /// devices' last keep-alive: each is told about when its own next one was
    /// due, so few ping in between. A slot is never pulled in to the device's
    /// keep-alive deadline (devices sharing a phase would pile up there and
    /// stay synchronized): a live device pings before it anyway, and when the
    /// timer fires an expired device is closed first, so a dead one is found at
    /// most one period late.
    pub fn disperse(&mut self, conns: &mut Connections, ctx: &Ctx, hot_seconds: &[u32]) {
        let hot = &mut self.hot;
        hot.clear();
        hot.extend_from_slice(hot_seconds);
        hot.sort_unstable();
        let chosen = &mut self.chosen;
        chosen.clear();
        chosen.extend(
            conns
                .slab
                .iter()
                .filter(|(_, c)| {
                    c.phase == Phase::Connected
                        && c.keepalive_s > 0
                        && c.flags & FLAG_DISPERSE == 0
                        && hot.binary_search(&((c.last_activity_ms / 1000) as u32)).is_ok()
                })
                .map(|(k, c)| (c.zone, c.last_activity_ms, k as u32)),
        );
        if chosen.is_empty() {
            return;
        }
        bump(&ctx.counters.dispersal_rounds, 1);
        // Stable: ties in slab order.
        chosen.sort_by_key(|&(zone, last_activity_ms, _)| (zone, last_activity_ms));
        for zone_devices in chosen.chunk_by(|a, b| a.0 == b.0) {
            let n = zone_devices.len();
            for (i, &(_, _, key)) in zone_devices.iter().enumerate() {
                let Some(conn) = conns.slab.get_mut(key as usize) else {
                    continue;
                };
                let period_ms = conn.keepalive_s as u64 * 1000;
                conn.flags |= FLAG_DISPERSE;
                conn.control_due = ControlDue::Keepalive;
                conns.wheel.insert(key, ctx.now_ms + send_offset_ms(i, n, period_ms));
            }
        }
    }

    /// The control timer of `key` fired: send its keep-alive configuration
    /// (dispersal) or its heartbeat adjustment (relief).
    pub fn send_due(conns: &mut Connections, sessions: &mut Sessions, ctx: &Ctx, key: u32) {
        let Some(conn) = conns.get_mut(key) else { return };
        conn.flags &= !FLAG_DISPERSE;
        let keepalive_s = conn.keepalive_s;
        let deadline_ms = conn.last_activity_ms + keepalive_s as u64 * 1500;
        let due = conn.control_due;
        conn.control_due = ControlDue::Keepalive;
        conns.wheel.insert(key, deadline_ms);
        match due {
            ControlDue::Keepalive => {
                let payload = format!("{{\"keepalive_s\":{keepalive_s},\"offset_ms\":0}}");
                send_control(conns, sessions, ctx, key, KEEPALIVE_TOPIC, payload);
            }
            ControlDue::Heartbeat { place_255 } => {
                let offset_ms = relief::adjust_offset_ms(keepalive_s, place_255);
                let payload = format!("{{\"keepalive_s\":{keepalive_s},\"offset_ms\":{offset_ms}}}");
                send_control(conns, sessions, ctx, key, HEARTBEAT_TOPIC, payload);
            }
        }
    }

    /// Relieves `shed_per_s` keep-alives per second (seeds/004): candidates in
    /// the configured rule's order are first asked to lengthen their
    /// heartbeat; only devices adjusted in an earlier round (or at
    /// `keepalive_max_s`) are disconnected, and never one whose previous
    /// connection relief ended.
    pub fn relieve(&mut self, conns: &mut Connections, ctx: &Ctx, shed_per_s: f64, keepalive_max_s: u16) {
        let keys = &mut self.keys;
        let candidates = &mut self.candidates;
        keys.clear();
        candidates.clear();
        for (key, c) in conns.slab.iter() {
            // A device whose heartbeat adjustment is still to be sent is left alone
            // until it is; a pending keep-alive configuration is replaced by the
            // adjustment (which restarts the device's timer just the same).
            let adjust_pending = c.flags & FLAG_DISPERSE != 0 && matches!(c.control_due, ControlDue::Heartbeat { .. });
            let busy = c.io_flags & IO_MOVING != 0 || adjust_pending;
            if c.phase != Phase::Connected || c.keepalive_s == 0 || busy {
                continue;
            }
            let adjusted = c.flags & FLAG_HB_ADJUSTED != 0;
            let spent = adjusted || c.keepalive_s >= keepalive_max_s;
            let relieved_before = spent && c.client_id.as_deref().is_some_and(|id| ctx.env.relieved.contains(id));
            keys.push(key as u32);
            candidates.push(relief::Candidate {
                keepalive_s: c.keepalive_s,
                adjusted,
                relieved_before,
                match_degree: c.match_degree,
                order: c.generation,
            });
        }
        let order = relief::order(candidates, ctx.env.cfg.relief_rule);
        let plan = relief::plan(candidates, &order, shed_per_s, keepalive_max_s);
        let adjustments = plan
            .iter()
            .filter(|(_, a)| matches!(a, relief::Action::Adjust { .. }))
            .count();
        let mut adjusted = 0;
        for (i, action) in plan {
            let key = keys[i];
            match action {
                relief::Action::Adjust { keepalive_s } => {
                    // Sent spread over half the new interval (plus a margin), each with
                    // an offset that lands the devices' first new keep-alives uniformly
                    // over a whole one: sending them all at once would synchronize
                    // everyone's next keep-alive, spreading them over the whole new
                    // interval would keep the old load that much longer. Until its
                    // message comes the device keeps its old interval (no expiry risk:
                    // the deadline already follows the new one).
                    let Some(conn) = conns.get_mut(key) else { continue };
                    let old_s = conn.keepalive_s;
                    let deadline_ms = conn.last_activity_ms + keepalive_s as u64 * 1500;
                    let spread_ms = relief::adjust_send_spread_ms(keepalive_s);
                    let offset_ms = send_offset_ms(adjusted, adjustments, spread_ms);
                    let at_ms = (ctx.now_ms + offset_ms).min(deadline_ms.saturating_sub(1));
                    conn.flags |= FLAG_HB_ADJUSTED | FLAG_DISPERSE;
                    conn.control_due = ControlDue::Heartbeat {
                        place_255: relief::place_255(adjusted, adjustments),
                    };
                    conn.keepalive_s = keepalive_s;
                    ctx.counters.keepalive_census(old_s, -1);
                    ctx.counters.keepalive_census(keepalive_s, 1);
                    bump(&ctx.counters.heartbeat_adjustments, 1);
                    conns.wheel.insert(key, at_ms.max(ctx.now_ms));
                    adjusted += 1;
                }
                relief::Action::Disconnect => {
                    bump(&ctx.counters.overload_disconnects, 1);
                    if let Some(id) = conns.get(key).and_then(|c| c.client_id.clone()) {
                        ctx.env.relieved.remember(&id);
                    }
                    disconnect_overloaded(conns, ctx, key);
                }
            }
        }
    }
}

/// QoS 1 control message: libmosquitto-based devices restart their
/// keep-alive timer when they send its PUBACK; the SDK parses the payload.
fn send_control(
    conns: &mut Connections,
    sessions: &mut Sessions,
    ctx: &Ctx,
    key: u32,
    topic: &'static str,
    payload: String,
) {
    bump(&ctx.counters.control_messages_sent, 1);
    let push = Push {
        id: 0,
        qos: 1,
        payload: Bytes::from(payload),
        tracked: false,
        control_topic: Some(topic),
        sent_as: None,
    };
    sessions.deliver(conns, ctx, key, push);
}

/// DISCONNECT 0x89 (server busy), or 0x9C (use another server) with a
/// Server Reference when one is configured; 3.1.1 devices are just closed.
fn disconnect_overloaded(conns: &mut Connections, ctx: &Ctx, key: u32) {
    let reference = ctx.env.cfg.server_reference.as_deref();
    if conns.get(key).is_some_and(|c| c.is_v5()) {
        let reason = if reference.is_some() {
            mqtt::reason::USE_ANOTHER_SERVER
        } else {
            mqtt::reason::SERVER_BUSY
        };
        let d = Disconnect {
            reason,
            session_expiry_interval_s: None,
            reason_string: None,
            server_reference: reference,
        };
        conns.queue_packet(key, |out| {
            d.encode(ProtocolVersion::V5, out);
        });
    }
    close::begin_close(conns, ctx, key, CloseReason::Overload);
}
