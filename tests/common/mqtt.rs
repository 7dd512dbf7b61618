//! The tests' MQTT client: a small blocking client built on the gateway's own codec
//! (`ConnectOpts` for CONNECT, `Client` to send packets and receive owned `Rx` values),
//! plus the raw-frame helpers the non-blocking tests use. It owns no process and no
//! HTTP; every read has a timeout.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use pulsegate::protocol::mqtt::{
    Connect, ConnectProperties, Disconnect, Packet, ProtocolVersion, PubAck, Publish, PublishProperties, Subscribe,
    SubscriptionOptions, Unsubscribe, check_frame, decode_packet,
};

use super::WAIT;

#[derive(Clone, Debug)]
pub struct ConnectOpts {
    pub version: ProtocolVersion,
    pub client_id: String,
    pub clean_start: bool,
    pub keepalive_s: u16,
    pub props: ConnectProperties,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

impl ConnectOpts {
    pub fn new(version: ProtocolVersion, client_id: &str) -> ConnectOpts {
        ConnectOpts {
            version,
            client_id: client_id.to_string(),
            clean_start: true,
            keepalive_s: 60,
            props: ConnectProperties::default(),
            username: None,
            password: None,
        }
    }

    /// CONNECT with a user name and password (e.g. a device JWT).
    pub fn credentials(mut self, username: Option<&str>, password: Option<&[u8]>) -> Self {
        self.username = username.map(str::to_string);
        self.password = password.map(<[u8]>::to_vec);
        self
    }

    pub fn keepalive(mut self, s: u16) -> Self {
        self.keepalive_s = s;
        self
    }

    pub fn clean(mut self, clean: bool) -> Self {
        self.clean_start = clean;
        self
    }

    pub fn session_expiry(mut self, s: u32) -> Self {
        self.props.session_expiry_interval_s = Some(s);
        self
    }

    pub fn receive_maximum(mut self, n: u16) -> Self {
        self.props.receive_maximum = Some(n);
        self
    }

    pub fn max_packet(mut self, n: u32) -> Self {
        self.props.maximum_packet_size_bytes = Some(n);
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let c = Connect {
            protocol_version: self.version,
            clean_start: self.clean_start,
            keepalive_s: self.keepalive_s,
            client_id: &self.client_id,
            username: self.username.as_deref(),
            password: self.password.as_deref(),
            will: None,
            properties: self.props,
        };
        let mut out = Vec::new();
        Packet::Connect(c).encode(self.version, &mut out);
        out
    }
}

/// CONNACK, owned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnAckInfo {
    pub session_present: bool,
    pub reason: u8,
    pub receive_maximum: Option<u16>,
    pub maximum_packet_size: Option<u32>,
    pub maximum_qos: Option<u8>,
    pub server_keep_alive: Option<u16>,
    pub assigned_client_identifier: Option<String>,
    pub session_expiry: Option<u32>,
}

/// PUBLISH, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pub {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    pub packet_id: Option<u16>,
    pub payload: Vec<u8>,
}

impl Pub {
    /// The packet id of a QoS 1 PUBLISH; fails the test if the gateway sent none.
    pub fn qos1_packet_id(&self) -> u16 {
        self.packet_id
            .unwrap_or_else(|| panic!("QoS {} PUBLISH on {} carries no packet id", self.qos, self.topic))
    }
}

/// A packet received from the gateway, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rx {
    ConnAck(ConnAckInfo),
    Publish(Pub),
    PubAck { packet_id: u16, reason: u8 },
    SubAck { packet_id: u16, codes: Vec<u8> },
    UnsubAck { packet_id: u16, codes: Vec<u8> },
    PingResp,
    Disconnect { reason: u8 },
    Other(String),
}

/// Why `recv` returned no packet.
#[derive(Debug, PartialEq, Eq)]
pub enum RecvError {
    Timeout,
    /// EOF or reset.
    Closed,
    Decode(String),
}

/// What a `Client` talks over: a plain TCP stream, or TLS over one
/// (`super::tls`); timeouts and shutdown go to the TCP socket underneath.
pub trait Wire: Read + Write {
    fn tcp(&self) -> &TcpStream;
}

impl Wire for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

pub struct Client<S: Wire = TcpStream> {
    pub stream: S,
    pub version: ProtocolVersion,
    pub id: String,
    buf: Vec<u8>,
}

impl<S: Wire> Client<S> {
    pub fn new(stream: S, version: ProtocolVersion) -> Client<S> {
        Client {
            stream,
            version,
            id: String::new(),
            buf: Vec::new(),
        }
    }

    /// Sends CONNECT, returns the CONNACK. Records the (assigned) client id.
    pub fn handshake(&mut self, opts: &ConnectOpts) -> ConnAckInfo {
        self.write_raw(&opts.encode());
        match self.recv(WAIT) {
            Ok(Rx::ConnAck(a)) => {
                self.id = a
                    .assigned_client_identifier
                    .clone()
                    .unwrap_or_else(|| opts.client_id.clone());
                a
            }
            other => panic!("expected CONNACK for {:?}, got {other:?}", opts.client_id),
        }
    }

    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.tcp().set_write_timeout(Some(WAIT)).ok();
        self.stream.write_all(bytes).expect("write to gateway");
    }

    /// Writes, ignoring errors (the peer may already have closed).
    pub fn try_write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.tcp().set_write_timeout(Some(WAIT)).ok();
        self.stream.write_all(bytes)
    }

    pub fn send(&mut self, p: &Packet<'_>) {
        let mut out = Vec::new();
        p.encode(self.version, &mut out);
        self.write_raw(&out);
    }

    pub fn ping(&mut self) {
        self.send(&Packet::PingReq);
    }

    pub fn puback(&mut self, packet_id: u16) {
        self.send(&Packet::PubAck(PubAck { packet_id, reason: 0 }));
    }

    pub fn publish(&mut self, topic: &str, qos: u8, packet_id: Option<u16>, payload: &[u8]) {
        let p = Publish {
            dup: false,
            qos,
            retain: false,
            topic,
            packet_id,
            payload,
            properties: PublishProperties::default(),
        };
        self.send(&Packet::Publish(p));
    }

    pub fn subscribe(&mut self, packet_id: u16, filters: &[(&str, u8)]) {
        let filters = filters
            .iter()
            .map(|(f, q)| (*f, SubscriptionOptions::qos(*q)))
            .collect();
        self.send(&Packet::Subscribe(Subscribe { packet_id, filters }));
    }

    pub fn unsubscribe(&mut self, packet_id: u16, filters: &[&str]) {
        self.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id,
            filters: filters.to_vec(),
        }));
    }

    pub fn disconnect(&mut self) {
        self.send(&Packet::Disconnect(Disconnect::NORMAL));
    }

    /// Next whole packet, waiting at most `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Result<Rx, RecvError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(rx) = self.take_buffered()? {
                return Ok(rx);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RecvError::Timeout);
            }
            self.stream
                .tcp()
                .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
                .ok();
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(RecvError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(RecvError::Timeout);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(RecvError::Closed),
            }
        }
    }

    fn take_buffered(&mut self) -> Result<Option<Rx>, RecvError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let h = match check_frame(&self.buf, u32::MAX) {
            Ok(h) => h,
            Err(pulsegate::protocol::mqtt::DecodeError::Incomplete { .. }) => return Ok(None),
            Err(e) => return Err(RecvError::Decode(e.to_string())),
        };
        let total = h.total_len();
        if self.buf.len() < total {
            return Ok(None);
        }
        let rx = {
            let p = decode_packet(&self.buf[..total], self.version).map_err(|e| RecvError::Decode(e.to_string()))?;
            to_owned(p)
        };
        self.buf.drain(..total);
        Ok(Some(rx))
    }

    /// Next packet must be a PUBLISH.
    pub fn expect_publish(&mut self, timeout: Duration) -> Pub {
        match self.recv(timeout) {
            Ok(Rx::Publish(p)) => p,
            other => panic!("client {}: expected PUBLISH, got {other:?}", self.id),
        }
    }

    /// Asserts nothing arrives (and the connection stays open) for `d`.
    pub fn expect_silence(&mut self, d: Duration) {
        match self.recv(d) {
            Err(RecvError::Timeout) => {}
            other => panic!("client {}: expected silence, got {other:?}", self.id),
        }
    }

    /// Reads until the gateway closes the connection, at most `timeout`. Returns the packets
    /// received before the close, or panics if the connection stays open.
    pub fn expect_closed(&mut self, timeout: Duration) -> Vec<Rx> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Ok(p) => got.push(p),
                Err(RecvError::Closed) => return got,
                Err(RecvError::Decode(e)) => panic!(
                    "client {}: undecodable bytes from gateway: {e} (after {got:?})",
                    self.id
                ),
                Err(RecvError::Timeout) => {
                    panic!("client {}: still open after {timeout:?} (received {got:?})", self.id)
                }
            }
        }
    }

    /// Like `expect_closed`, returning also when the close happened.
    pub fn closed_at(&mut self, timeout: Duration) -> (Vec<Rx>, Instant) {
        let got = self.expect_closed(timeout);
        (got, Instant::now())
    }

    /// Raw bytes until the gateway closes (anything already buffered first); panics if the
    /// connection is still open after `timeout`.
    pub fn raw_until_closed(&mut self, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let mut got = std::mem::take(&mut self.buf);
        loop {
            let now = Instant::now();
            assert!(now < deadline, "still open after {timeout:?} (received {got:02x?})");
            self.stream.tcp().set_read_timeout(Some(deadline - now)).ok();
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return got,
            }
        }
    }

    pub fn shutdown_write(&self) {
        let _ = self.stream.tcp().shutdown(Shutdown::Write);
    }
}

fn to_owned(p: Packet<'_>) -> Rx {
    match p {
        Packet::ConnAck(a) => Rx::ConnAck(ConnAckInfo {
            session_present: a.session_present,
            reason: a.reason,
            receive_maximum: a.properties.receive_maximum,
            maximum_packet_size: a.properties.maximum_packet_size_bytes,
            maximum_qos: a.properties.maximum_qos,
            server_keep_alive: a.properties.server_keep_alive_s,
            assigned_client_identifier: a.properties.assigned_client_identifier.map(str::to_string),
            session_expiry: a.properties.session_expiry_interval_s,
        }),
        Packet::Publish(p) => Rx::Publish(Pub {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: p.topic.to_string(),
            packet_id: p.packet_id,
            payload: p.payload.to_vec(),
        }),
        Packet::PubAck(a) => Rx::PubAck {
            packet_id: a.packet_id,
            reason: a.reason,
        },
        Packet::SubAck(s) => Rx::SubAck {
            packet_id: s.packet_id,
            codes: s.reason_codes.to_vec(),
        },
        Packet::UnsubAck(u) => Rx::UnsubAck {
            packet_id: u.packet_id,
            codes: u.reason_codes.to_vec(),
        },
        Packet::PingResp => Rx::PingResp,
        Packet::Disconnect(d) => Rx::Disconnect { reason: d.reason },
        other => Rx::Other(format!("{other:?}")),
    }
}

/// Appends what a non-blocking socket has to `buf`; true once the peer closed
/// (or the socket failed). Frames already buffered stay there for `take_frame`.
pub fn read_available(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// The next whole MQTT frame at the front of `buf`, removed from it.
pub fn take_frame(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let total = check_frame(buf, 1 << 20).ok()?.total_len();
    (buf.len() >= total).then(|| buf.drain(..total).collect())
}
