//! Server -> device delivery: PUBLISH on `push/{client_id}`, the QoS 1 window
//! (packet ids, inflight, PUBACK), the bounded per-device queue behind it.
//!
//! Owns the inflight window. Must never exceed the device's Receive Maximum or
//! Maximum Packet Size, and never queue more than `pending_pushes_per_device_max`.

use super::conn::Phase;
use super::core::Core;
use super::counters::{CloseReason, ProtocolErrorKind, bump};
use crate::delivery::Push;
use crate::limits;
use crate::protocol::mqtt::{PubAck, Publish, PublishProperties};
use std::fmt::Write;

impl Core {
    /// Hands `push` to the connected device at `key`.
    pub(super) fn deliver(&mut self, key: u32, push: Push) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.phase != Phase::Connected {
            self.not_delivered(&push, "device_gone");
            return;
        }
        if push.qos == 0 {
            self.send_publish(key, &push, None, false);
            self.close_if_slow(key);
            return;
        }
        let window = conn.window as usize;
        let pending_max = self.env.cfg.pending_pushes_per_device_max as usize;
        let a = conn.active();
        if a.inflight.len() < window && a.queued.is_empty() {
            let dup = push.sent_as.is_some();
            self.send_qos1(key, push, dup);
        } else if a.queued.len() < pending_max {
            a.queued.push_back(push);
        } else {
            self.not_delivered(&push, "device_queue_full");
        }
        self.close_if_slow(key);
    }

    /// Assigns a free packet id, records the push in flight and sends it.
    fn send_qos1(&mut self, key: u32, push: Push, dup: bool) {
        let conn = &mut self.conns[key as usize];
        let a = conn.active.get_or_insert_with(Box::default);
        // A redelivery keeps its packet id when it is free (MQTT-4.4.0-1).
        let previous = push
            .sent_as
            .filter(|&p| p != 0 && !a.inflight.iter().any(|i| i.packet_id == p));
        let mut id = previous.unwrap_or(conn.next_packet_id.max(1));
        // Bounded: the window (≤ INFLIGHT_MAX) is far below 65,535 ids.
        while a.inflight.iter().any(|i| i.packet_id == id) {
            id = id.wrapping_add(1).max(1);
        }
        if previous.is_none() {
            conn.next_packet_id = id.wrapping_add(1).max(1);
        }
        if self.send_publish(key, &push, Some(id), dup) {
            let a = self.conns[key as usize].active();
            a.inflight.push(super::conn::Inflight { packet_id: id, push });
        }
    }

    /// Encodes PUBLISH; false if the device's Maximum Packet Size forbids it
    /// (the push is dropped and counted).
    fn send_publish(&mut self, key: u32, push: &Push, packet_id: Option<u16>, dup: bool) -> bool {
        let conn = &mut self.conns[key as usize];
        let version = conn.version();
        let max_bytes = conn.client_max_packet_bytes as usize;
        let mut topic = std::mem::take(&mut self.topic_scratch);
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
            topic: &topic,
            packet_id,
            payload: &push.payload,
            properties: PublishProperties::default(),
        };
        let a = conn.active();
        let before = a.out.len();
        let written = publish.encode(version, &mut a.out);
        self.topic_scratch = topic;
        if written > max_bytes {
            a.out.truncate(before);
            self.not_delivered(push, "exceeds_device_maximum_packet_size");
            return false;
        }
        bump(&self.counters.pushes_sent, 1);
        self.queue_packet(key, |_| {});
        true
    }

    /// Closes a device that does not read what we send (its pushes in flight
    /// go back to their owners through `begin_close`).
    fn close_if_slow(&mut self, key: u32) {
        let backlog = self
            .conns
            .get(key as usize)
            .and_then(|c| c.active.as_ref())
            .map_or(0, |a| a.backlog_bytes());
        if backlog > limits::SEND_BACKLOG_BYTES_MAX {
            self.begin_close(key, CloseReason::SlowConsumer);
        }
    }

    /// PUBACK from the device: frees the window slot and sends what waits.
    pub(super) fn on_puback(&mut self, key: u32, ack: PubAck) {
        let conn = &mut self.conns[key as usize];
        let Some(a) = conn.active.as_mut() else {
            self.counters.protocol_error(ProtocolErrorKind::UnknownPacketId);
            return;
        };
        let Some(pos) = a.inflight.iter().position(|i| i.packet_id == ack.packet_id) else {
            self.counters.protocol_error(ProtocolErrorKind::UnknownPacketId);
            return;
        };
        // `remove`, not `swap_remove`: a resumed session redelivers in send order.
        let acked = a.inflight.remove(pos);
        let window = conn.window as usize;
        bump(&self.counters.pushes_acked, 1);
        if acked.push.tracked {
            self.env
                .reports
                .report(crate::delivery::DeliveryEvent::Acked { push_id: acked.push.id });
        }
        while let Some(a) = self.conns[key as usize].active.as_mut() {
            if a.inflight.len() >= window {
                break;
            }
            let Some(next) = a.queued.pop_front() else { break };
            let dup = next.sent_as.is_some();
            self.send_qos1(key, next, dup);
            if self.conns[key as usize].phase != Phase::Connected {
                break;
            }
        }
        self.close_if_slow(key);
    }
}
