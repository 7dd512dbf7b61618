//! What a shard does with each MQTT packet a device sends: CONNECT (auth,
//! registry claim, takeover, CONNACK), PINGREQ, PUBLISH, PUBACK, SUBSCRIBE,
//! UNSUBSCRIBE, DISCONNECT.
//!
//! Owns the server side of the protocol state machine, as functions over the
//! owners it needs (`Packets` borrows `Connections`, `Sessions` and `Ctx` for
//! one receive). Must never do I/O or block: output goes to the connection's
//! queue, cross-shard work to mailboxes.

use std::sync::Arc;
use std::time::Instant;

use super::close;
use super::conn::{FLAG_PERSISTENT, FLAG_REGISTERED, FLAG_V5, Phase};
use super::connections::Connections;
use super::counters::{CloseReason, ProtocolErrorKind, bump};
use super::ctx::Ctx;
use super::deliver::Sessions;
use super::mailbox::Command;
use crate::auth::AuthRequest;
use crate::delivery::Location;
use crate::protocol::mqtt::{
    self, ConnAck, ConnAckProperties, Connect, DecodeError, Packet, ProtocolVersion, PubAck, Publish, SubAck,
    Subscribe, UnsubAck, Unsubscribe, reason,
};

/// The protocol's largest packet (remaining length 268,435,455 + 5 header bytes).
const MQTT_PACKET_BYTES_MAX: u32 = 268_435_460;

/// Result of handling one frame: keep reading, or stop (the connection closes).
enum Flow {
    Continue,
    Stop,
}

/// The owners one receive works on.
pub(super) struct Packets<'a> {
    pub conns: &'a mut Connections,
    pub sessions: &'a mut Sessions,
    pub ctx: &'a Ctx,
}

impl Packets<'_> {
    /// Bytes arrived for `key`: whole frames are handled, a partial one kept.
    pub fn receive(&mut self, key: u32, data: &[u8]) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.phase == Phase::Closing {
            return;
        }
        conn.last_activity_ms = self.ctx.now_ms;
        let has_partial = conn.active.as_ref().is_some_and(|a| !a.partial.is_empty());
        // Whether a whole frame completed: what is left then starts a new packet.
        let mut completed = false;
        if has_partial {
            let mut partial = conn
                .active
                .as_mut()
                .map(|a| std::mem::take(&mut a.partial))
                .unwrap_or_default();
            partial.extend_from_slice(data);
            let consumed = self.process(key, &partial);
            if let Some(consumed) = consumed {
                completed = consumed > 0;
                partial.drain(..consumed);
                let open = self.conns.get(key).is_some_and(|c| c.phase != Phase::Closing);
                if open && !partial.is_empty() {
                    if let Some(a) = self.conns.active(key) {
                        a.partial = partial;
                    }
                } else if let Some(a) = self.conns.get_mut(key).and_then(|c| c.active.as_deref_mut()) {
                    // Emptied, the buffer goes back with its capacity, so the
                    // next split packet on this box does not allocate.
                    partial.clear();
                    a.partial = partial;
                }
            }
        } else if let Some(consumed) = self.process(key, data)
            && consumed < data.len()
            && let Some(a) = self.conns.active(key)
        {
            completed = consumed > 0;
            a.partial.extend_from_slice(&data[consumed..]);
        }
        let timeout_ms = self.ctx.env.cfg.packet_complete_timeout_s as u64 * 1000;
        self.conns
            .account_partial(key, self.ctx.now_ms, timeout_ms, completed, &self.ctx.counters);
        if self.conns.partial.total_bytes() > self.ctx.env.cfg.shard_partial_packet_bytes_max {
            close::partial_budget_exceeded(self.conns, self.ctx);
        }
        self.conns.shrink_if_idle(key);
    }

    /// Handles every whole frame in `buf`; returns the bytes consumed, or None
    /// if the connection is closing.
    fn process(&mut self, key: u32, buf: &[u8]) -> Option<usize> {
        let max_packet_bytes = self.ctx.env.cfg.max_packet_bytes;
        let mut pos = 0;
        while pos < buf.len() {
            let header = match mqtt::check_frame(&buf[pos..], max_packet_bytes) {
                Ok(h) => h,
                Err(DecodeError::Incomplete { .. }) => break,
                Err(e) => {
                    close::decode_failed(self.conns, self.ctx, key, e);
                    return None;
                }
            };
            let total = header.total_len();
            if buf.len() - pos < total {
                break;
            }
            if let Flow::Stop = self.handle_frame(key, &buf[pos..pos + total]) {
                return None;
            }
            pos += total;
        }
        Some(pos)
    }

    fn begin_close(&mut self, key: u32, reason: CloseReason) {
        close::begin_close(self.conns, self.ctx, key, reason);
    }

    fn protocol_error(&mut self, key: u32, kind: ProtocolErrorKind, reason: u8) {
        close::protocol_error(self.conns, self.ctx, key, kind, reason);
    }

    fn queue_packet(&mut self, key: u32, encode: impl FnOnce(&mut Vec<u8>)) {
        self.conns.queue_packet(key, encode);
    }

    /// The whole of a keep-alive: the per-second counter and the owed PINGRESP
    /// (`receive` already stored the last activity).
    fn on_pingreq(&mut self, key: u32, version: ProtocolVersion) {
        let second = (self.ctx.now_ms / 1000) as u32;
        self.ctx.counters.keepalive(second);
        self.conns.owe_pingresp(key, version);
    }

    fn handle_frame(&mut self, key: u32, frame: &[u8]) -> Flow {
        let Some(conn) = self.conns.get(key) else {
            return Flow::Stop;
        };
        let phase = conn.phase;
        let version = conn.version();
        if frame == mqtt::PINGREQ && phase == Phase::Connected {
            // The keep-alive, without the general decoder.
            self.on_pingreq(key, version);
            return Flow::Continue;
        }
        let packet = match mqtt::decode_packet(frame, version) {
            Ok(p) => p,
            Err(e) => {
                close::decode_failed(self.conns, self.ctx, key, e);
                return Flow::Stop;
            }
        };
        if phase == Phase::AwaitConnect {
            return match packet {
                Packet::Connect(c) => self.on_connect(key, c),
                _ => {
                    self.ctx
                        .counters
                        .protocol_error(ProtocolErrorKind::FirstPacketNotConnect);
                    self.begin_close(key, CloseReason::ProtocolError);
                    Flow::Stop
                }
            };
        }
        match packet {
            Packet::PingReq => {
                self.on_pingreq(key, version);
                Flow::Continue
            }
            Packet::PubAck(ack) => {
                self.sessions.on_puback(self.conns, self.ctx, key, ack);
                Flow::Continue
            }
            Packet::Publish(p) => self.on_publish(key, version, p),
            Packet::Subscribe(s) => {
                self.on_subscribe(key, version, s);
                Flow::Continue
            }
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(key, version, u);
                Flow::Continue
            }
            Packet::Disconnect(d) => {
                if let Some(expiry_s) = d.session_expiry_interval_s {
                    let Some(conn) = self.conns.get_mut(key) else {
                        return Flow::Stop;
                    };
                    if conn.session_expiry_s == 0 && expiry_s > 0 {
                        // MQTT 5 3.14.2.2.2: cannot set an expiry at DISCONNECT if CONNECT had none.
                        self.protocol_error(key, ProtocolErrorKind::Malformed, reason::PROTOCOL_ERROR);
                        return Flow::Stop;
                    }
                    conn.session_expiry_s = expiry_s;
                    if expiry_s == 0 {
                        conn.flags &= !FLAG_PERSISTENT;
                    }
                }
                self.begin_close(key, CloseReason::ClientDisconnect);
                Flow::Stop
            }
            Packet::Connect(_) => {
                self.protocol_error(key, ProtocolErrorKind::SecondConnect, reason::PROTOCOL_ERROR);
                Flow::Stop
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                self.protocol_error(key, ProtocolErrorKind::ServerOnlyPacket, reason::PROTOCOL_ERROR);
                Flow::Stop
            }
        }
    }

    fn refuse_connect(
        &mut self,
        key: u32,
        version: ProtocolVersion,
        code: u8,
        kind: Option<ProtocolErrorKind>,
        why: CloseReason,
    ) -> Flow {
        if let Some(kind) = kind {
            self.ctx.counters.protocol_error(kind);
        }
        let ack = ConnAck {
            session_present: false,
            reason: code,
            properties: ConnAckProperties::default(),
        };
        self.queue_packet(key, |out| {
            ack.encode(version, out);
        });
        self.begin_close(key, why);
        Flow::Stop
    }

    fn on_connect(&mut self, key: u32, c: Connect<'_>) -> Flow {
        let version = c.protocol_version;
        let ctx = self.ctx;
        let cfg = &ctx.env.cfg;
        if ctx.shutting_down {
            return self.refuse_connect(
                key,
                version,
                reason::SERVER_SHUTTING_DOWN,
                None,
                CloseReason::ServerShutdown,
            );
        }
        let keepalive_s = match (version, cfg.server_keepalive_s) {
            (ProtocolVersion::V5, Some(server_s)) => server_s,
            _ => c.keepalive_s,
        };
        if !ctx.env.admission.admit(keepalive_s) {
            // seeds/004 admission: no heartbeat headroom left, send the device elsewhere.
            bump(&ctx.counters.admissions_refused, 1);
            let server_reference = cfg.server_reference.as_deref();
            let code = if server_reference.is_some() {
                reason::USE_ANOTHER_SERVER
            } else {
                reason::SERVER_BUSY
            };
            let mut properties = ConnAckProperties::default();
            if version == ProtocolVersion::V5 {
                properties.server_reference = server_reference;
            }
            let ack = ConnAck {
                session_present: false,
                reason: code,
                properties,
            };
            self.queue_packet(key, |out| {
                ack.encode(version, out);
            });
            self.begin_close(key, CloseReason::ServerBusy);
            return Flow::Stop;
        }
        // An empty id is assigned one below (refused for a 3.1.1 persistent session).
        if (!c.client_id.is_empty() && crate::protocol::device_id::validate(c.client_id).is_err())
            || (c.client_id.is_empty() && version == ProtocolVersion::V311 && !c.clean_start)
        {
            return self.refuse_connect(
                key,
                version,
                reason::CLIENT_IDENTIFIER_NOT_VALID,
                Some(ProtocolErrorKind::ClientIdRejected),
                CloseReason::ProtocolError,
            );
        }
        let Some(generation) = self.conns.get(key).map(|c| c.generation) else {
            return Flow::Stop;
        };
        let assigned = c.client_id.is_empty();
        let client_id: Arc<str> = if assigned {
            Arc::from(format!("pg-{:x}-{:x}-{:x}", ctx.shard_id, key, generation))
        } else {
            Arc::from(c.client_id)
        };
        // Before the registry is asked: a refused CONNECT never takes a session over.
        let auth = AuthRequest {
            client_id: c.client_id,
            username: c.username,
            password: c.password,
        };
        if let Err(refusal) = ctx.env.auth.authenticate(&auth) {
            return self.refuse_connect(key, version, refusal.reason_code(), None, CloseReason::NotAuthorized);
        }

        let props = c.properties;
        let (persistent, resume, expiry_s) = match version {
            ProtocolVersion::V5 => {
                let e = props.session_expiry_interval_s.unwrap_or(0);
                (e > 0, !c.clean_start, e)
            }
            ProtocolVersion::V311 => (!c.clean_start, !c.clean_start, if c.clean_start { 0 } else { u32::MAX }),
        };
        let window = props.receive_maximum.unwrap_or(u16::MAX).min(cfg.max_inflight).max(1);
        let now_ms = ctx.now_ms;
        {
            let Some(conn) = self.conns.get_mut(key) else {
                return Flow::Stop;
            };
            conn.phase = Phase::Connected;
            conn.keepalive_s = keepalive_s;
            conn.window = window;
            conn.client_max_packet_bytes = props.maximum_packet_size_bytes.unwrap_or(MQTT_PACKET_BYTES_MAX);
            conn.session_expiry_s = expiry_s;
            conn.client_id = Some(client_id.clone());
            conn.flags |= FLAG_REGISTERED;
            if version == ProtocolVersion::V5 {
                conn.flags |= FLAG_V5;
            }
            if persistent {
                conn.flags |= FLAG_PERSISTENT;
            }
        }
        ctx.counters.keepalive_census(keepalive_s, 1);
        let network = props.network.map(|n| (n.mcc, n.mnc, n.area));
        if let Some(conn) = self.conns.get_mut(key) {
            conn.zone = network.map_or(0, |(mcc, mnc, _)| mcc as u32 * 1000 + mnc as u32);
            conn.match_degree = crate::policy::relief::match_degree(network, cfg.home_network, &cfg.home_areas);
        }
        if keepalive_s > 0 {
            self.conns.wheel.insert(key, now_ms + keepalive_s as u64 * 1500);
        } else {
            self.conns.wheel.cancel(key);
        }
        match version {
            ProtocolVersion::V5 => bump(&ctx.counters.connects_v5, 1),
            ProtocolVersion::V311 => bump(&ctx.counters.connects_v311, 1),
        }

        let location = Location {
            shard: ctx.shard_id,
            key,
            generation,
            persistent,
        };
        let claim = ctx.env.registry.claim(&client_id, location, resume, Instant::now());
        if let Some(previous) = claim.previous {
            if previous.shard == ctx.shard_id {
                close::take_over(self.conns, ctx, previous.key, previous.generation);
            } else {
                // A full mailbox leaves the old connection to expire by keep-alive.
                let _ = ctx.env.peers.post(
                    previous.shard,
                    Command::TakeOver {
                        key: previous.key,
                        generation: previous.generation,
                        new_owner: location,
                    },
                );
            }
        }
        let session_present = resume && (claim.resumed.is_some() || claim.previous.is_some());
        let mut properties = ConnAckProperties::default();
        if version == ProtocolVersion::V5 {
            properties.receive_maximum = Some(cfg.max_inflight);
            properties.maximum_qos = Some(1);
            properties.retain_available = Some(false);
            properties.maximum_packet_size_bytes = Some(cfg.max_packet_bytes);
            properties.wildcard_subscription_available = Some(true);
            properties.subscription_identifiers_available = Some(false);
            properties.shared_subscription_available = Some(false);
            properties.server_keep_alive_s = cfg.server_keepalive_s;
            if expiry_s > cfg.session_expiry_max_s {
                properties.session_expiry_interval_s = Some(cfg.session_expiry_max_s);
            }
        }
        let assigned_id = client_id.clone();
        if assigned {
            properties.assigned_client_identifier = Some(&assigned_id);
        }
        let ack = ConnAck {
            session_present,
            reason: reason::SUCCESS,
            properties,
        };
        self.queue_packet(key, |out| {
            ack.encode(version, out);
        });
        for push in &claim.discarded {
            ctx.not_delivered(push, "session_discarded");
        }
        ctx.env.reports.report(crate::delivery::DeliveryEvent::DeviceOnline {
            client_id: client_id.clone(),
        });
        if let Some(pushes) = claim.resumed {
            bump(&ctx.counters.sessions_resumed, 1);
            for push in pushes {
                bump(&ctx.counters.pushes_redelivered, 1);
                self.sessions.deliver(self.conns, ctx, key, push);
            }
        }
        Flow::Continue
    }

    fn on_publish(&mut self, key: u32, version: ProtocolVersion, p: Publish<'_>) -> Flow {
        if p.qos > 1 {
            self.protocol_error(key, ProtocolErrorKind::QosNotSupported, reason::QOS_NOT_SUPPORTED);
            return Flow::Stop;
        }
        if version == ProtocolVersion::V5 && p.retain {
            self.protocol_error(key, ProtocolErrorKind::RetainNotSupported, reason::RETAIN_NOT_SUPPORTED);
            return Flow::Stop;
        }
        if p.properties.topic_alias.is_some() {
            self.protocol_error(key, ProtocolErrorKind::TopicAliasInvalid, reason::TOPIC_ALIAS_INVALID);
            return Flow::Stop;
        }
        bump(&self.ctx.counters.publishes_received, 1);
        if let Some(packet_id) = p.packet_id {
            let ack = PubAck {
                packet_id,
                reason: reason::SUCCESS,
            };
            self.queue_packet(key, |out| {
                ack.encode(version, out);
            });
        }
        Flow::Continue
    }

    fn filter_allowed(client_id: &str, filter: &str) -> bool {
        let own = filter.strip_prefix("push/").is_some_and(|rest| rest == client_id);
        own || filter == "$pulse/#" || filter == "$pulse/keepalive" || filter == "$pulse/heartbeat"
    }

    fn on_subscribe(&mut self, key: u32, version: ProtocolVersion, s: Subscribe<'_>) {
        let client_id = self
            .conns
            .get(key)
            .and_then(|c| c.client_id.clone())
            .unwrap_or_else(|| Arc::from(""));
        let refused = match version {
            ProtocolVersion::V5 => reason::NOT_AUTHORIZED,
            ProtocolVersion::V311 => 0x80,
        };
        let codes: Vec<u8> = s
            .filters
            .iter()
            .map(|(filter, opts)| {
                if Self::filter_allowed(&client_id, filter) {
                    opts.qos.min(1)
                } else {
                    refused
                }
            })
            .collect();
        let ack = SubAck {
            packet_id: s.packet_id,
            reason_codes: &codes,
        };
        self.queue_packet(key, |out| {
            ack.encode(version, out);
        });
    }

    fn on_unsubscribe(&mut self, key: u32, version: ProtocolVersion, u: Unsubscribe<'_>) {
        let client_id = self
            .conns
            .get(key)
            .and_then(|c| c.client_id.clone())
            .unwrap_or_else(|| Arc::from(""));
        let codes: Vec<u8> = u
            .filters
            .iter()
            .map(|f| {
                if Self::filter_allowed(&client_id, f) {
                    reason::SUCCESS
                } else {
                    reason::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        let ack = UnsubAck {
            packet_id: u.packet_id,
            reason_codes: &codes,
        };
        self.queue_packet(key, |out| {
            ack.encode(version, out);
        });
    }
}
