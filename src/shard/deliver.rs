//! Server -> device delivery: PUBLISH on `push/{client_id}`, the QoS 1 window
//! (packet ids, inflight, PUBACK), the bounded per-device queue behind it.
//!
//! Owns the inflight window (`Sessions`: its encoding scratch; the window
//! itself rides in each connection's `Active` part). Must never exceed the
//! device's Receive Maximum or Maximum Packet Size, and never queue more than
//! `pending_pushes_per_device_max`.

use std::fmt::Write;

use super::close;
use super::conn::{Inflight, Phase};
use super::connections::Connections;
use super::counters::{CloseReason, ProtocolErrorKind, bump};
use super::ctx::Ctx;
use crate::delivery::{DeliveryEvent, Push};
use crate::limits;
use crate::protocol::mqtt::{PubAck, Publish, PublishProperties};

/// Topic bytes reserved at start-up for `push/{client_id}` (longer ids grow it once).
const TOPIC_SCRATCH_BYTES: usize = 256;

/// The QoS 1 sessions of one shard's connections.
pub(super) struct Sessions {
    /// The topic being encoded (reused: no allocation per PUBLISH).
    topic_scratch: String,
}

impl Sessions {
    pub fn new() -> Sessions {
        Sessions {
            topic_scratch: String::with_capacity(TOPIC_SCRATCH_BYTES),
        }
    }

    /// Hands `push` to the connected device at `key`.
    pub fn deliver(&mut self, conns: &mut Connections, ctx: &Ctx, key: u32, push: Push) {
        let Some(conn) = conns.get(key) else {
            return;
        };
        if conn.phase != Phase::Connected {
            ctx.not_delivered(&push, "device_gone");
            return;
        }
        let window = conn.window as usize;
        if push.qos == 0 {
            self.send_publish(conns, ctx, key, &push, None, false);
            close_if_slow(conns, ctx, key);
            return;
        }
        let pending_max = ctx.env.cfg.pending_pushes_per_device_max as usize;
        let Some(a) = conns.active(key) else { return };
        let (inflight, queued) = (a.inflight.len(), a.queued.len());
        if inflight < window && queued == 0 {
            let dup = push.sent_as.is_some();
            self.send_qos1(conns, ctx, key, push, dup);
        } else if queued < pending_max {
            a.queued.push_back(push);
        } else {
            ctx.not_delivered(&push, "device_queue_full");
        }
        close_if_slow(conns, ctx, key);
    }

    /// Assigns a free packet id, records the push in flight and sends it.
    fn send_qos1(&mut self, conns: &mut Connections, ctx: &Ctx, key: u32, push: Push, dup: bool) {
        let Connections { slab, pool, .. } = conns;
        let Some(conn) = slab.get_mut(key as usize) else { return };
        let next_packet_id = conn.next_packet_id;
        let a = conn.active_in(pool);
        // A redelivery keeps its packet id when it is free (MQTT-4.4.0-1).
        let previous = push
            .sent_as
            .filter(|&p| p != 0 && !a.inflight.iter().any(|i| i.packet_id == p));
        let mut id = previous.unwrap_or(next_packet_id.max(1));
        // Bounded: the window (≤ INFLIGHT_MAX) is far below 65,535 ids.
        while a.inflight.iter().any(|i| i.packet_id == id) {
            id = id.wrapping_add(1).max(1);
        }
        if previous.is_none() {
            conn.next_packet_id = id.wrapping_add(1).max(1);
        }
        if self.send_publish(conns, ctx, key, &push, Some(id), dup)
            && let Some(a) = conns.active(key)
        {
            a.inflight.push(Inflight { packet_id: id, push });
        }
    }

    /// Encodes PUBLISH; false if the device's Maximum Packet Size forbids it
    /// (the push is dropped and counted).
    fn send_publish(
        &mut self,
        conns: &mut Connections,
        ctx: &Ctx,
        key: u32,
        push: &Push,
        packet_id: Option<u16>,
        dup: bool,
    ) -> bool {
        let Connections { slab, pool, .. } = conns;
        let Some(conn) = slab.get_mut(key as usize) else {
            return false;
        };
        let version = conn.version();
        let max_bytes = conn.client_max_packet_bytes as usize;
        let topic = &mut self.topic_scratch;
        topic.clear();
        match push.control_topic {
            Some(t) => topic.push_str(t),
            None => {
                let _ = write!(topic, "push/{}", conn.client_id.as_deref().unwrap_or(""));
            }
        }
        let publish = Publish {
            dup,
            qos: push.qos,
            retain: false,
            topic: topic.as_str(),
            packet_id,
            payload: &push.payload,
            properties: PublishProperties::default(),
        };
        let a = conn.active_in(pool);
        let before = a.out.len();
        let written = publish.encode(version, &mut a.out);
        if written > max_bytes {
            a.out.truncate(before);
            ctx.not_delivered(push, "exceeds_device_maximum_packet_size");
            return false;
        }
        bump(&ctx.counters.pushes_sent, 1);
        conns.mark_dirty(key);
        true
    }

    /// PUBACK from the device: frees the window slot and sends what waits.
    pub fn on_puback(&mut self, conns: &mut Connections, ctx: &Ctx, key: u32, ack: PubAck) {
        let Some(conn) = conns.get_mut(key) else { return };
        let window = conn.window as usize;
        let Some(a) = conn.active.as_mut() else {
            ctx.counters.protocol_error(ProtocolErrorKind::UnknownPacketId);
            return;
        };
        let Some(pos) = a.inflight.iter().position(|i| i.packet_id == ack.packet_id) else {
            ctx.counters.protocol_error(ProtocolErrorKind::UnknownPacketId);
            return;
        };
        // `remove`, not `swap_remove`: a resumed session redelivers in send order.
        let acked = a.inflight.remove(pos);
        bump(&ctx.counters.pushes_acked, 1);
        if acked.push.tracked {
            ctx.env.reports.report(DeliveryEvent::Acked { push_id: acked.push.id });
        }
        while let Some(a) = conns.get_mut(key).and_then(|c| c.active.as_mut()) {
            if a.inflight.len() >= window {
                break;
            }
            let Some(next) = a.queued.pop_front() else { break };
            let dup = next.sent_as.is_some();
            self.send_qos1(conns, ctx, key, next, dup);
            if conns.get(key).is_none_or(|c| c.phase != Phase::Connected) {
                break;
            }
        }
        close_if_slow(conns, ctx, key);
    }
}

/// Closes a device that does not read what we send (its pushes in flight
/// go back to their owners through `begin_close`).
fn close_if_slow(conns: &mut Connections, ctx: &Ctx, key: u32) {
    let backlog = conns
        .get(key)
        .and_then(|c| c.active.as_ref())
        .map_or(0, |a| a.backlog_bytes());
    if backlog > limits::SEND_BACKLOG_BYTES_MAX {
        close::begin_close(conns, ctx, key, CloseReason::SlowConsumer);
    }
}
