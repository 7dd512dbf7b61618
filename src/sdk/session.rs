//! One device's MQTT session, sans-IO: the state machine the device program (and any
//! application) drives with bytes, a transport open/closed signal and a clock.
//!
//! Owns: CONNECT / CONNACK, answering pushes (PUBACK for QoS 1), PINGREQ on the keep-alive
//! timer and ping timeouts, the control messages (`$pulse/keepalive` re-initializes the
//! timer, `$pulse/heartbeat` lengthens the heartbeat), the heartbeat step method (a
//! PINGRESP after a whole idle interval is a survived interval; a ping timeout or a reset
//! right after a probing PINGREQ is a silent death), and where/when to reconnect after
//! CONNACK or DISCONNECT 0x89 / 0x9C / 0x9D. Encoding and decoding go through the gateway's
//! own codec, `crate::protocol::mqtt`.
//!
//! Must never: open sockets, read clocks or random sources (time and a seed are passed
//! in), block, panic on server bytes (bad bytes close the session with a cause), or hold
//! more than one partial packet of at most `SessionConfig::max_packet_bytes`.
//! The caller drains `next_event` and `take_output` after every call.

use std::collections::VecDeque;

use super::control::{self, Control, ControlError};
use super::heartbeat::{Heartbeat, HeartbeatPolicy, PolicyError};
use super::keepalive::{self, KeepAlive, KeepAliveAction, NEVER_MS};
use super::reconnect::{BackoffPolicy, Ending, Reconnect, Reconnector};
use super::state::StoredState;
use crate::protocol::mqtt::{
    ConnAck, Connect, ConnectProperties, DecodeError, Disconnect, Packet, ProtocolVersion, PubAck, Publish,
    check_frame, decode_packet, reason,
};

/// A PINGREQ counts as a probe of the heartbeat interval when nothing was received for the
/// whole interval but this much (the previous PINGRESP's round trip).
pub const PROBE_IDLE_SLACK_MS: u64 = 1_000;
/// After this many failed attempts on a server it was referred to, a device goes home.
pub const HOME_AFTER_FAILURES: u8 = 3;

/// What a device is and how it behaves.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub client_id: String,
    pub version: ProtocolVersion,
    pub heartbeat: HeartbeatPolicy,
    pub backoff: BackoffPolicy,
    /// Time allowed for the CONNACK after CONNECT.
    pub connack_timeout_ms: u64,
    /// Largest packet accepted from the server.
    pub max_packet_bytes: u32,
    /// Network and location, stored with the heartbeat state (seeds/004).
    pub mcc_mnc: String,
    pub location: String,
    /// Seed of the jitter generator.
    pub seed: u64,
    /// CONNECT user name and password, e.g. the client id and a device JWT
    /// (a refused token ends the attempt with `CloseCause::Refused` 0x86/0x87).
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

impl SessionConfig {
    /// MQTT 5, fixed heartbeat `keepalive_s`, device backoff, 10 s CONNACK timeout.
    pub fn new(client_id: &str, keepalive_s: u16) -> SessionConfig {
        SessionConfig {
            client_id: client_id.to_string(),
            version: ProtocolVersion::V5,
            heartbeat: HeartbeatPolicy::fixed(keepalive_s),
            backoff: BackoffPolicy::DEVICE,
            connack_timeout_ms: 10_000,
            max_packet_bytes: 1 << 20,
            mcc_mnc: String::new(),
            location: String::new(),
            seed: 0x9E37_79B9_7F4A_7C15,
            username: None,
            password: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No transport: waiting to (re)connect.
    Offline,
    /// CONNECT sent, waiting for CONNACK.
    AwaitConnack,
    Connected,
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCause {
    /// CONNACK with a non-zero reason (MQTT 5 code; 3.1.1 codes mapped to it).
    Refused { reason: u8 },
    /// DISCONNECT from the server (0 for 3.1.1).
    Disconnected { reason: u8 },
    /// No PINGRESP within one keep-alive period.
    PingTimeout,
    /// No CONNACK in time.
    ConnackTimeout,
    /// The server's bytes could not be decoded.
    Malformed(DecodeError),
    /// A packet a server must not send (or QoS 2, which pulsegate never sends).
    Unexpected { packet_type: u8 },
    /// The transport closed (EOF, reset) without a DISCONNECT.
    TransportClosed,
    /// The transport to `server()` could not be opened (refused, unreachable, timeout).
    ConnectFailed,
}

/// What happened, for the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Connected {
        /// Keep-alive period in use on this connection.
        keepalive_s: u16,
        session_present: bool,
    },
    Push {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
    },
    /// `$pulse/keepalive` applied: the timer restarts `offset_ms` from now with `period_s`.
    KeepAliveConfigured {
        period_s: u16,
        offset_ms: u64,
    },
    /// `$pulse/heartbeat` applied: asked for `requested_s`, now at `interval_s`.
    HeartbeatAdjusted {
        requested_s: u16,
        interval_s: u16,
    },
    /// The step method moved (`optimal`: the optimal value is now known).
    HeartbeatStepped {
        interval_s: u16,
        optimal: bool,
    },
    ControlIgnored {
        topic: String,
        error: ControlError,
    },
    PingSent,
    PingAnswered,
    /// The session ended; reconnect to `next.server` after `next.delay_ms`.
    Closed {
        cause: CloseCause,
        next: Reconnect,
    },
}

pub struct Session {
    cfg: SessionConfig,
    phase: Phase,
    home_server: String,
    server: String,
    hb: Heartbeat,
    ka: KeepAlive,
    reconnector: Reconnector,
    /// Server Keep Alive of the current connection.
    server_keepalive_s: Option<u16>,
    connack_deadline_ms: u64,
    last_rx_ms: u64,
    /// The outstanding PINGREQ followed a whole idle heartbeat interval.
    probe_pending: bool,
    rx: Vec<u8>,
    out: Vec<u8>,
    events: VecDeque<Event>,
    rng: u64,
}

impl Session {
    /// A device whose home server is `server`. With a stored state, the stored server is
    /// tried first and the stored heartbeat reused when the network is the same.
    pub fn new(cfg: SessionConfig, server: &str, stored: Option<&StoredState>) -> Result<Session, PolicyError> {
        cfg.heartbeat.validate()?;
        let hb = match stored {
            Some(s) => s.heartbeat(&cfg.heartbeat, &cfg.mcc_mnc, &cfg.location),
            None => Heartbeat::new(&cfg.heartbeat),
        };
        let first = stored.map_or(server, |s| s.server.as_str()).to_string();
        let rng = cfg.seed | 1;
        Ok(Session {
            phase: Phase::Offline,
            home_server: server.to_string(),
            server: first,
            ka: KeepAlive::new(hb.interval_s()),
            hb,
            reconnector: Reconnector::default(),
            server_keepalive_s: None,
            connack_deadline_ms: NEVER_MS,
            last_rx_ms: 0,
            probe_pending: false,
            rx: Vec::new(),
            out: Vec::new(),
            events: VecDeque::new(),
            rng,
            cfg,
        })
    }

    /// The server to connect to now.
    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn heartbeat(&self) -> &Heartbeat {
        &self.hb
    }

    pub fn keepalive(&self) -> &KeepAlive {
        &self.ka
    }

    /// What to store for the next start (seeds/004).
    pub fn stored_state(&self) -> StoredState {
        StoredState {
            heartbeat_s: self.hb.interval_s(),
            optimal: self.hb.is_optimal(),
            server: self.server.clone(),
            location: self.cfg.location.clone(),
            mcc_mnc: self.cfg.mcc_mnc.clone(),
        }
    }

    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Bytes to write to the transport (taken: the caller writes them all or closes).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// When `poll` must run next (`NEVER_MS` if nothing is scheduled).
    pub fn next_deadline_ms(&self) -> u64 {
        match self.phase {
            Phase::Offline => NEVER_MS,
            Phase::AwaitConnack => self.connack_deadline_ms,
            Phase::Connected => self.ka.deadline_ms(),
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The transport to `server()` is up: send CONNECT.
    pub fn on_transport_open(&mut self, now_ms: u64) {
        self.rx.clear();
        self.out.clear();
        let connect = Connect {
            protocol_version: self.cfg.version,
            clean_start: true,
            keepalive_s: self.hb.connect_keepalive_s(&self.cfg.heartbeat),
            client_id: &self.cfg.client_id,
            username: self.cfg.username.as_deref(),
            password: self.cfg.password.as_deref(),
            will: None,
            properties: ConnectProperties {
                maximum_packet_size_bytes: Some(self.cfg.max_packet_bytes),
                ..ConnectProperties::default()
            },
        };
        connect.encode(self.cfg.version, &mut self.out);
        self.phase = Phase::AwaitConnack;
        self.connack_deadline_ms = now_ms.saturating_add(self.cfg.connack_timeout_ms);
        self.last_rx_ms = now_ms;
    }

    /// The transport closed (EOF, reset, write error). Ends the session if it was open.
    pub fn on_transport_closed(&mut self) {
        if self.phase != Phase::Offline {
            self.close(CloseCause::TransportClosed, None);
        }
    }

    /// The transport to `server()` could not be opened: plan the next attempt.
    pub fn on_connect_failed(&mut self) {
        self.out.clear();
        self.close(CloseCause::ConnectFailed, None);
    }

    /// Leaves: DISCONNECT (normal) if connected, then offline; no reconnect is planned.
    pub fn disconnect(&mut self) {
        if self.phase == Phase::Connected {
            Disconnect::NORMAL.encode(self.cfg.version, &mut self.out);
        }
        self.phase = Phase::Offline;
        self.ka.stop();
        self.rx.clear();
    }

    /// Bytes from the transport.
    pub fn on_bytes(&mut self, now_ms: u64, data: &[u8]) {
        if self.phase == Phase::Offline {
            return;
        }
        self.rx.extend_from_slice(data);
        while self.phase != Phase::Offline && !self.rx.is_empty() {
            let total = match check_frame(&self.rx, self.cfg.max_packet_bytes) {
                Ok(h) if h.total_len() <= self.rx.len() => h.total_len(),
                Ok(_) | Err(DecodeError::Incomplete { .. }) => break,
                Err(e) => return self.close(CloseCause::Malformed(e), None),
            };
            let frame: Vec<u8> = self.rx.drain(..total).collect();
            match decode_packet(&frame, self.cfg.version) {
                Ok(packet) => self.on_packet(now_ms, packet),
                Err(e) => return self.close(CloseCause::Malformed(e), None),
            }
        }
    }

    /// Runs the timers: CONNACK timeout, PINGREQ, ping timeout.
    pub fn poll(&mut self, now_ms: u64) {
        match self.phase {
            Phase::Offline => {}
            Phase::AwaitConnack => {
                if now_ms >= self.connack_deadline_ms {
                    self.close(CloseCause::ConnackTimeout, None);
                }
            }
            Phase::Connected => match self.ka.poll(now_ms) {
                KeepAliveAction::Idle => {}
                KeepAliveAction::SendPing => {
                    let period_ms = u64::from(self.ka.period_s()) * 1000;
                    let idle_ms = now_ms.saturating_sub(self.last_rx_ms);
                    self.probe_pending = self.hb.is_probing()
                        && self.ka.period_s() == self.hb.interval_s()
                        && idle_ms + PROBE_IDLE_SLACK_MS >= period_ms;
                    Packet::PingReq.encode(self.cfg.version, &mut self.out);
                    self.events.push_back(Event::PingSent);
                }
                KeepAliveAction::Timeout => self.close(CloseCause::PingTimeout, None),
            },
        }
    }

    fn on_packet(&mut self, now_ms: u64, packet: Packet<'_>) {
        self.last_rx_ms = now_ms;
        match (self.phase, packet) {
            (Phase::AwaitConnack, Packet::ConnAck(ack)) => self.on_connack(now_ms, ack),
            (Phase::Connected, Packet::Publish(p)) => self.on_publish(now_ms, p),
            (Phase::Connected, Packet::PingResp) => self.on_pingresp(),
            (_, Packet::Disconnect(d)) => {
                let reference = d.server_reference.map(str::to_string);
                self.close(CloseCause::Disconnected { reason: d.reason }, reference);
            }
            // Acks of packets this device never sends are harmless.
            (Phase::Connected, Packet::PubAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_)) => {}
            (_, other) => {
                let packet_type = packet_type(&other);
                self.close(CloseCause::Unexpected { packet_type }, None);
            }
        }
    }

    fn on_connack(&mut self, now_ms: u64, ack: ConnAck<'_>) {
        if ack.reason != reason::SUCCESS {
            let reference = ack.properties.server_reference.map(str::to_string);
            return self.close(CloseCause::Refused { reason: ack.reason }, reference);
        }
        self.reconnector.on_connected();
        self.phase = Phase::Connected;
        self.server_keepalive_s = ack.properties.server_keep_alive_s;
        self.ka
            .set_period(self.hb.connection_interval_s(self.server_keepalive_s));
        self.ka.start(now_ms);
        self.probe_pending = false;
        self.events.push_back(Event::Connected {
            keepalive_s: self.ka.period_s(),
            session_present: ack.session_present,
        });
    }

    fn on_publish(&mut self, now_ms: u64, p: Publish<'_>) {
        if p.qos > 1 {
            return self.close(CloseCause::Unexpected { packet_type: 3 }, None);
        }
        let topic = p.topic.as_bytes();
        let parsed = control::parse(topic, p.payload);
        // A heartbeat adjustment changes the period before the PUBACK restarts the timer,
        // so the new interval counts from now.
        if let Ok(Some(Control::Heartbeat { keepalive_s, .. })) = parsed {
            let interval_s = self.hb.on_adjust(&self.cfg.heartbeat, keepalive_s);
            self.ka
                .set_period(self.hb.connection_interval_s(self.server_keepalive_s));
            self.events.push_back(Event::HeartbeatAdjusted {
                requested_s: keepalive_s,
                interval_s,
            });
        }
        if let Some(packet_id) = p.packet_id {
            PubAck {
                packet_id,
                reason: reason::SUCCESS,
            }
            .encode(self.cfg.version, &mut self.out);
            self.ka.on_packet_sent(now_ms);
        }
        match parsed {
            // After the PUBACK's restart, so the re-initialization is what stays.
            Ok(Some(Control::KeepAlive { keepalive_s, offset_ms })) => {
                let period_s = keepalive::configured_period_s(keepalive_s, self.hb.interval_s());
                self.ka.reinitialize(now_ms, period_s, offset_ms);
                self.events
                    .push_back(Event::KeepAliveConfigured { period_s, offset_ms });
            }
            // The new interval's first period starts `offset_ms` from now.
            Ok(Some(Control::Heartbeat { offset_ms, .. })) => self.ka.restart_in(now_ms, offset_ms),
            Ok(None) => self.events.push_back(Event::Push {
                topic: p.topic.to_string(),
                payload: p.payload.to_vec(),
                qos: p.qos,
            }),
            Err(error) => self.events.push_back(Event::ControlIgnored {
                topic: p.topic.to_string(),
                error,
            }),
        }
    }

    fn on_pingresp(&mut self) {
        if !self.ka.on_pingresp() {
            return;
        }
        self.events.push_back(Event::PingAnswered);
        if std::mem::replace(&mut self.probe_pending, false) {
            let before = self.hb.is_optimal();
            if let Some(interval_s) = self.hb.on_survived(&self.cfg.heartbeat) {
                self.ka
                    .set_period(self.hb.connection_interval_s(self.server_keepalive_s));
                self.events.push_back(Event::HeartbeatStepped {
                    interval_s,
                    optimal: self.hb.is_optimal(),
                });
            } else if !before && self.hb.is_optimal() {
                self.events.push_back(Event::HeartbeatStepped {
                    interval_s: self.hb.interval_s(),
                    optimal: true,
                });
            }
        }
    }

    fn close(&mut self, cause: CloseCause, server_reference: Option<String>) {
        // A silent death right after a probing PINGREQ: the path's idle timeout is below
        // this interval (a NAT that dropped the mapping answers the PINGREQ with a reset or
        // not at all).
        let silent = matches!(cause, CloseCause::PingTimeout | CloseCause::TransportClosed);
        if silent && self.probe_pending {
            let interval_s = self.hb.on_silent_death(&self.cfg.heartbeat);
            self.events.push_back(Event::HeartbeatStepped {
                interval_s,
                optimal: true,
            });
        }
        self.phase = Phase::Offline;
        self.ka.stop();
        self.ka.set_period(self.hb.interval_s());
        self.probe_pending = false;
        self.rx.clear();
        let reason = match cause {
            CloseCause::Refused { reason } | CloseCause::Disconnected { reason } => Some(reason),
            _ => None,
        };
        let ending = Ending {
            reason,
            server_reference: server_reference.as_deref(),
        };
        let random = self.random();
        let mut next = self
            .reconnector
            .on_ended(&self.cfg.backoff, &self.server, ending, random);
        if !next.redirected && self.server != self.home_server && self.reconnector.failures() >= HOME_AFTER_FAILURES {
            next.server = self.home_server.clone();
        }
        self.server = next.server.clone();
        self.events.push_back(Event::Closed { cause, next });
    }
}

fn packet_type(p: &Packet<'_>) -> u8 {
    match p {
        Packet::Connect(_) => 1,
        Packet::ConnAck(_) => 2,
        Packet::Publish(_) => 3,
        Packet::PubAck(_) => 4,
        Packet::Subscribe(_) => 8,
        Packet::SubAck(_) => 9,
        Packet::Unsubscribe(_) => 10,
        Packet::UnsubAck(_) => 11,
        Packet::PingReq => 12,
        Packet::PingResp => 13,
        Packet::Disconnect(_) => 14,
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
