//! What a shard does with each MQTT packet a device sends: CONNECT (auth,
//! registry claim, takeover, CONNACK), PINGREQ, PUBLISH, PUBACK, SUBSCRIBE,
//! UNSUBSCRIBE, DISCONNECT.
//!
//! Owns the server side of the protocol state machine. Must never do I/O or
//! block: output goes to the connection's queue, cross-shard work to mailboxes.

use std::sync::Arc;
use std::time::Instant;

use super::conn::{FLAG_PERSISTENT, FLAG_REGISTERED, FLAG_V5, Phase};
use super::core::{Core, Flow};
use super::counters::{CloseReason, ProtocolErrorKind, bump};
use super::mailbox::Command;
use crate::auth::AuthRequest;
use crate::delivery::Location;
use crate::protocol::mqtt::{
    self, ConnAck, ConnAckProperties, Connect, Packet, ProtocolVersion, PubAck, Publish, SubAck, Subscribe, UnsubAck,
    Unsubscribe, reason,
};

/// Longest client id accepted, in bytes (MQTT allows 65,535; devices use < 64).
pub const CLIENT_ID_BYTES_MAX: usize = 256;

/// The protocol's largest packet (remaining length 268,435,455 + 5 header bytes).
const MQTT_PACKET_BYTES_MAX: u32 = 268_435_460;

impl Core {
    pub(super) fn handle_frame(&mut self, key: u32, frame: &[u8]) -> Flow {
        let Some(conn) = self.conns.get(key as usize) else {
            return Flow::Stop;
        };
        let phase = conn.phase;
        let version = conn.version();
        let packet = match mqtt::decode_packet(frame, version) {
            Ok(p) => p,
            Err(e) => {
                self.decode_failed(key, e);
                return Flow::Stop;
            }
        };
        if phase == Phase::AwaitConnect {
            return match packet {
                Packet::Connect(c) => self.on_connect(key, c),
                _ => {
                    self.counters.protocol_error(ProtocolErrorKind::FirstPacketNotConnect);
                    self.begin_close(key, CloseReason::ProtocolError);
                    Flow::Stop
                }
            };
        }
        match packet {
            Packet::PingReq => {
                let second = (self.now_ms / 1000) as u32;
                self.counters.keepalive(second);
                self.queue_packet(key, |out| {
                    Packet::PingResp.encode(version, out);
                });
                Flow::Continue
            }
            Packet::PubAck(ack) => {
                self.on_puback(key, ack);
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
                    let conn = &mut self.conns[key as usize];
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
            self.counters.protocol_error(kind);
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
        let cfg = self.env.cfg.clone();
        if self.is_shutting_down() {
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
        if !self.env.admission.admit(keepalive_s) {
            // seeds/004 admission: no heartbeat headroom left, send the device elsewhere.
            bump(&self.counters.admissions_refused, 1);
            let server_reference = self.env.cfg.server_reference.clone();
            let code = if server_reference.is_some() {
                reason::USE_ANOTHER_SERVER
            } else {
                reason::SERVER_BUSY
            };
            let mut properties = ConnAckProperties::default();
            if version == ProtocolVersion::V5 {
                properties.server_reference = server_reference.as_deref();
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
        if c.client_id.len() > CLIENT_ID_BYTES_MAX
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
        let generation = self.conns[key as usize].generation;
        let assigned = c.client_id.is_empty();
        let client_id: Arc<str> = if assigned {
            Arc::from(format!("pg-{:x}-{:x}-{:x}", self.shard_id, key, generation))
        } else {
            Arc::from(c.client_id)
        };
        let auth = AuthRequest {
            client_id: &client_id,
            username: c.username,
            password: c.password,
        };
        if let Err(code) = self.env.auth.authenticate(&auth) {
            return self.refuse_connect(key, version, code, None, CloseReason::NotAuthorized);
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
        let now_ms = self.now_ms;
        {
            let conn = &mut self.conns[key as usize];
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
        self.counters.keepalive_census(keepalive_s, 1);
        let network = props.network.map(|n| (n.mcc, n.mnc, n.area));
        {
            let conn = &mut self.conns[key as usize];
            conn.zone = network.map_or(0, |(mcc, mnc, _)| mcc as u32 * 1000 + mnc as u32);
            conn.match_degree = crate::policy::relief::match_degree(network, cfg.home_network, &cfg.home_areas);
        }
        if keepalive_s > 0 {
            self.wheel.insert(key, now_ms + keepalive_s as u64 * 1500);
        } else {
            self.wheel.cancel(key);
        }
        match version {
            ProtocolVersion::V5 => bump(&self.counters.connects_v5, 1),
            ProtocolVersion::V311 => bump(&self.counters.connects_v311, 1),
        }

        let location = Location {
            shard: self.shard_id,
            key,
            generation,
            persistent,
        };
        let claim = self.env.registry.claim(&client_id, location, resume, Instant::now());
        if let Some(previous) = claim.previous {
            if previous.shard == self.shard_id {
                self.command(Command::TakeOver {
                    key: previous.key,
                    generation: previous.generation,
                    new_owner: location,
                });
            } else {
                // A full mailbox leaves the old connection to expire by keep-alive.
                let _ = self.env.peers.post(
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
            self.not_delivered(push, "session_discarded");
        }
        self.env.reports.report(crate::delivery::DeliveryEvent::DeviceOnline {
            client_id: client_id.clone(),
        });
        if let Some(pushes) = claim.resumed {
            bump(&self.counters.sessions_resumed, 1);
            for push in pushes {
                bump(&self.counters.pushes_redelivered, 1);
                self.deliver(key, push);
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
        bump(&self.counters.publishes_received, 1);
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
        let client_id = self.conns[key as usize]
            .client_id
            .clone()
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
        let client_id = self.conns[key as usize]
            .client_id
            .clone()
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
