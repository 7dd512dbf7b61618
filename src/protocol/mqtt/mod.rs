//! MQTT 3.1.1 + 5.0 codec: framing (`check_frame`), zero-copy decoding (`decode_packet`) and
//! encoding (`Packet::encode`) of the packet subset pulsegate speaks: CONNECT, CONNACK,
//! PUBLISH, PUBACK, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT.
//!
//! Owns: bytes <-> packet structs and the structural rules of the spec (malformed packet
//! detection). Must never: do I/O, keep connection state, apply gateway policy (auth, limits,
//! topic aliases), depend on anything outside this module but `core`/`std`, or panic on
//! peer input. Items inside the module refer to each other only through `super::` paths.

mod connack;
mod connect;
mod disconnect;
mod fixed_header;
mod ping;
mod properties;
mod puback;
mod publish;
pub mod reason;
mod subscribe;
mod unsubscribe;
mod wire;

pub use connack::{ConnAck, ConnAckProperties};
pub use connect::{AREA_PROPERTY, Connect, ConnectProperties, NETWORK_PROPERTY, NetworkReport, Will};
pub use disconnect::Disconnect;
pub use fixed_header::{FrameHeader, MAX_VARINT, VarintError, check_frame, read_varint, varint_len, write_varint};
pub use ping::{PINGREQ, PINGRESP};
pub use puback::PubAck;
pub use publish::{Publish, PublishProperties};
pub use subscribe::{MAX_FILTERS_PER_PACKET, SubAck, Subscribe, SubscriptionOptions, is_valid_topic_filter};
pub use unsubscribe::{UnsubAck, Unsubscribe};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl ProtocolVersion {
    /// Protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Connect(Connect<'a>),
    ConnAck(ConnAck<'a>),
    Publish(Publish<'a>),
    PubAck(PubAck),
    Subscribe(Subscribe<'a>),
    SubAck(SubAck<'a>),
    Unsubscribe(Unsubscribe<'a>),
    UnsubAck(UnsubAck<'a>),
    PingReq,
    PingResp,
    Disconnect(Disconnect<'a>),
}

impl Packet<'_> {
    /// Appends the whole packet (fixed header included); returns the bytes appended.
    pub fn encode(&self, version: ProtocolVersion, out: &mut Vec<u8>) -> usize {
        match self {
            Packet::Connect(p) => p.encode(version, out),
            Packet::ConnAck(p) => p.encode(version, out),
            Packet::Publish(p) => p.encode(version, out),
            Packet::PubAck(p) => p.encode(version, out),
            Packet::Subscribe(p) => p.encode(version, out),
            Packet::SubAck(p) => p.encode(version, out),
            Packet::Unsubscribe(p) => p.encode(version, out),
            Packet::UnsubAck(p) => p.encode(version, out),
            Packet::PingReq => ping::encode(false, out),
            Packet::PingResp => ping::encode(true, out),
            Packet::Disconnect(p) => p.encode(version, out),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// More bytes are needed (at least `needed`).
    Incomplete {
        needed: usize,
    },
    TooLarge {
        size_bytes: u64,
        max_bytes: u32,
    },
    Malformed(MalformedKind),
    UnsupportedProtocolVersion {
        level: u8,
    },
    /// PUBREC/PUBREL/PUBCOMP/AUTH and the reserved type 0.
    UnsupportedPacket {
        packet_type: u8,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MalformedKind {
    BadRemainingLength,
    BadFixedHeaderFlags,
    Truncated,
    TrailingBytes,
    BadUtf8,
    BadProtocolName,
    BadConnectFlags,
    BadProperty,
    DuplicateProperty,
    BadQos,
    EmptyTopic,
    WildcardInTopicName,
    EmptyFilter,
    NoFilters,
    TooManyFilters,
    ZeroPacketId,
    BadSubscriptionOptions,
}

impl MalformedKind {
    /// Metrics label, e.g. "malformed_bad_utf8".
    pub fn label(self) -> &'static str {
        match self {
            MalformedKind::BadRemainingLength => "malformed_bad_remaining_length",
            MalformedKind::BadFixedHeaderFlags => "malformed_bad_fixed_header_flags",
            MalformedKind::Truncated => "malformed_truncated",
            MalformedKind::TrailingBytes => "malformed_trailing_bytes",
            MalformedKind::BadUtf8 => "malformed_bad_utf8",
            MalformedKind::BadProtocolName => "malformed_bad_protocol_name",
            MalformedKind::BadConnectFlags => "malformed_bad_connect_flags",
            MalformedKind::BadProperty => "malformed_bad_property",
            MalformedKind::DuplicateProperty => "malformed_duplicate_property",
            MalformedKind::BadQos => "malformed_bad_qos",
            MalformedKind::EmptyTopic => "malformed_empty_topic",
            MalformedKind::WildcardInTopicName => "malformed_wildcard_in_topic_name",
            MalformedKind::EmptyFilter => "malformed_empty_filter",
            MalformedKind::NoFilters => "malformed_no_filters",
            MalformedKind::TooManyFilters => "malformed_too_many_filters",
            MalformedKind::ZeroPacketId => "malformed_zero_packet_id",
            MalformedKind::BadSubscriptionOptions => "malformed_bad_subscription_options",
        }
    }
}

impl DecodeError {
    /// MQTT 5 reason code a server sends when closing for this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) | DecodeError::Incomplete { .. } => reason::MALFORMED_PACKET,
            DecodeError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocolVersion { .. } => reason::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::UnsupportedPacket { .. } => reason::PROTOCOL_ERROR,
        }
    }

    /// Short stable snake_case label for metrics.
    pub fn kind_label(&self) -> &'static str {
        match self {
            DecodeError::Incomplete { .. } => "incomplete",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Malformed(k) => k.label(),
            DecodeError::UnsupportedProtocolVersion { .. } => "unsupported_protocol_version",
            DecodeError::UnsupportedPacket { .. } => "unsupported_packet",
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Incomplete { needed } => {
                write!(f, "incomplete mqtt packet ({needed} more bytes needed)")
            }
            DecodeError::TooLarge { size_bytes, max_bytes } => {
                write!(f, "mqtt packet of {size_bytes} bytes exceeds maximum {max_bytes}")
            }
            DecodeError::Malformed(k) => write!(f, "malformed mqtt packet: {k:?}"),
            DecodeError::UnsupportedProtocolVersion { level } => {
                write!(f, "unsupported mqtt protocol level {level}")
            }
            DecodeError::UnsupportedPacket { packet_type } => {
                write!(f, "unsupported mqtt packet type {packet_type}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes exactly one whole packet (`frame` = fixed header + body, as sized by
/// `check_frame`). `version` is the connection's negotiated version (CONNECT reads its own).
/// Borrowed from `frame`. Never panics. A `frame` shorter than the header announces gives
/// `Incomplete`, a longer one `Malformed(TrailingBytes)`.
pub fn decode_packet(frame: &[u8], version: ProtocolVersion) -> Result<Packet<'_>, DecodeError> {
    let h = check_frame(frame, u32::MAX)?;
    let total = h.total_len();
    if frame.len() < total {
        return Err(DecodeError::Incomplete {
            needed: total - frame.len(),
        });
    }
    if frame.len() > total {
        return Err(DecodeError::Malformed(MalformedKind::TrailingBytes));
    }
    let body = &frame[h.header_len as usize..];
    let want_flags = |want: u8| {
        if h.flags == want {
            Ok(())
        } else {
            Err(DecodeError::Malformed(MalformedKind::BadFixedHeaderFlags))
        }
    };
    match h.packet_type {
        3 => publish::decode(h.flags, body, version).map(Packet::Publish),
        1 => want_flags(0).and_then(|()| connect::decode(body)).map(Packet::Connect),
        2 => want_flags(0)
            .and_then(|()| connack::decode(body, version))
            .map(Packet::ConnAck),
        4 => want_flags(0)
            .and_then(|()| puback::decode(body, version))
            .map(Packet::PubAck),
        8 => want_flags(2)
            .and_then(|()| subscribe::decode_subscribe(body, version))
            .map(Packet::Subscribe),
        9 => want_flags(0)
            .and_then(|()| subscribe::decode_suback(body, version))
            .map(Packet::SubAck),
        10 => want_flags(2)
            .and_then(|()| unsubscribe::decode_unsubscribe(body, version))
            .map(Packet::Unsubscribe),
        11 => want_flags(0)
            .and_then(|()| unsubscribe::decode_unsuback(body, version))
            .map(Packet::UnsubAck),
        12 => want_flags(0)
            .and_then(|()| ping::decode(body))
            .map(|()| Packet::PingReq),
        13 => want_flags(0)
            .and_then(|()| ping::decode(body))
            .map(|()| Packet::PingResp),
        14 => want_flags(0)
            .and_then(|()| disconnect::decode(body, version))
            .map(Packet::Disconnect),
        packet_type => Err(DecodeError::UnsupportedPacket { packet_type }),
    }
}

#[cfg(test)]
mod tests;
