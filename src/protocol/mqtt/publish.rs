//! PUBLISH (3.1.1 §3.3, 5.0 §3.3): fixed-header flags (DUP, QoS, RETAIN), topic name,
//! packet identifier, PUBLISH properties, payload.
//!
//! Owns: PUBLISH wire format and its structural rules (QoS 3, wildcard / empty topic, zero
//! packet id). Must never: resolve topic aliases, check payload format, authorize or route —
//! that is gateway work. The payload is borrowed, never copied on decode.

use super::fixed_header::write_frame;
use super::properties::{self as p, PropValue, read_properties, write_properties};
use super::wire::{Reader, has_wildcard, write_u16, write_utf8};
use super::{DecodeError, MalformedKind, ProtocolVersion};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publish<'a> {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    /// May be empty only in v5 when a Topic Alias is present.
    pub topic: &'a str,
    /// Some iff qos > 0.
    pub packet_id: Option<u16>,
    pub payload: &'a [u8],
    pub properties: PublishProperties<'a>,
}

/// PUBLISH properties. User properties and Subscription Identifiers are validated and
/// skipped on decode.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishProperties<'a> {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval_s: Option<u32>,
    pub topic_alias: Option<u16>,
    pub content_type: Option<&'a str>,
    pub response_topic: Option<&'a str>,
    pub correlation_data: Option<&'a [u8]>,
}

const ALLOWED: &[u8] = &[
    p::PAYLOAD_FORMAT_INDICATOR,
    p::MESSAGE_EXPIRY_INTERVAL,
    p::TOPIC_ALIAS,
    p::RESPONSE_TOPIC,
    p::CORRELATION_DATA,
    p::USER_PROPERTY,
    p::SUBSCRIPTION_IDENTIFIER,
    p::CONTENT_TYPE,
];

fn malformed(kind: MalformedKind) -> DecodeError {
    DecodeError::Malformed(kind)
}

pub fn decode(flags: u8, body: &[u8], version: ProtocolVersion) -> Result<Publish<'_>, DecodeError> {
    let dup = flags & 0x08 != 0;
    let qos = (flags >> 1) & 0x03;
    let retain = flags & 0x01 != 0;
    if qos == 3 {
        return Err(malformed(MalformedKind::BadQos));
    }
    // [MQTT-3.3.1-2] DUP must be 0 for QoS 0
    if dup && qos == 0 {
        return Err(malformed(MalformedKind::BadFixedHeaderFlags));
    }
    let mut r = Reader::new(body);
    let topic = r.utf8()?;
    if has_wildcard(topic) {
        return Err(malformed(MalformedKind::WildcardInTopicName));
    }
    let packet_id = if qos > 0 {
        match r.u16()? {
            0 => return Err(malformed(MalformedKind::ZeroPacketId)),
            id => Some(id),
        }
    } else {
        None
    };
    let mut properties = PublishProperties::default();
    if version == ProtocolVersion::V5 {
        let pr = &mut properties;
        read_properties(&mut r, ALLOWED, &[p::SUBSCRIPTION_IDENTIFIER], |id, v| {
            match (id, v) {
                (p::PAYLOAD_FORMAT_INDICATOR, v) => pr.payload_format_indicator = Some(v.num() as u8),
                (p::MESSAGE_EXPIRY_INTERVAL, v) => pr.message_expiry_interval_s = Some(v.num()),
                (p::TOPIC_ALIAS, v) => pr.topic_alias = Some(v.num() as u16),
                (p::CONTENT_TYPE, PropValue::Str(s)) => pr.content_type = Some(s),
                (p::RESPONSE_TOPIC, PropValue::Str(s)) => {
                    if s.is_empty() || has_wildcard(s) {
                        return Err(malformed(MalformedKind::BadProperty));
                    }
                    pr.response_topic = Some(s);
                }
                (p::CORRELATION_DATA, PropValue::Bin(b)) => pr.correlation_data = Some(b),
                _ => {}
            }
            Ok(())
        })?;
    }
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(malformed(MalformedKind::EmptyTopic));
    }
    let payload = r.rest();
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        payload,
        properties,
    })
}

impl Publish<'_> {
    /// Appends the whole PUBLISH; returns bytes appended. v3.1.1 drops properties.
    /// `packet_id` is written iff qos > 0 (qos > 0 without an id is a caller bug).
    pub fn encode(&self, version: ProtocolVersion, out: &mut Vec<u8>) -> usize {
        debug_assert!(self.qos <= 2, "qos {} out of range", self.qos);
        debug_assert!(
            (self.qos > 0) == self.packet_id.is_some(),
            "packet_id must be Some iff qos > 0"
        );
        let qos = self.qos.min(2);
        let first = 0x30 | (u8::from(self.dup && qos > 0) << 3) | (qos << 1) | u8::from(self.retain);
        write_frame(out, first, |o| {
            write_utf8(o, self.topic);
            if qos > 0 {
                write_u16(o, self.packet_id.unwrap_or(0));
            }
            if version == ProtocolVersion::V5 {
                let pr = &self.properties;
                write_properties(o, |o| {
                    p::put_byte(o, p::PAYLOAD_FORMAT_INDICATOR, pr.payload_format_indicator);
                    p::put_u32(o, p::MESSAGE_EXPIRY_INTERVAL, pr.message_expiry_interval_s);
                    p::put_u16(o, p::TOPIC_ALIAS, pr.topic_alias);
                    p::put_str(o, p::CONTENT_TYPE, pr.content_type);
                    p::put_str(o, p::RESPONSE_TOPIC, pr.response_topic);
                    p::put_bin(o, p::CORRELATION_DATA, pr.correlation_data);
                });
            }
            o.extend_from_slice(self.payload);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Packet, decode_packet};
    use super::*;

    const V311: ProtocolVersion = ProtocolVersion::V311;
    const V5: ProtocolVersion = ProtocolVersion::V5;

    fn round_trip(pb: Publish<'_>, version: ProtocolVersion) {
        let mut out = Vec::new();
        assert_eq!(pb.encode(version, &mut out), out.len());
        assert_eq!(decode_packet(&out, version), Ok(Packet::Publish(pb)));
    }

    fn base() -> Publish<'static> {
        Publish {
            dup: false,
            qos: 0,
            retain: false,
            topic: "a/b",
            packet_id: None,
            payload: b"hello",
            properties: PublishProperties::default(),
        }
    }

    #[test]
    fn round_trips() {
        let props = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval_s: Some(60),
            topic_alias: Some(3),
            content_type: Some("text/plain"),
            response_topic: Some("reply/to"),
            correlation_data: Some(&[0, 1, 2]),
        };
        for v in [V311, V5] {
            round_trip(base(), v);
            round_trip(
                Publish {
                    qos: 1,
                    packet_id: Some(7),
                    retain: true,
                    dup: true,
                    ..base()
                },
                v,
            );
            round_trip(
                Publish {
                    qos: 2,
                    packet_id: Some(65_535),
                    payload: &[],
                    ..base()
                },
                v,
            );
            round_trip(
                Publish {
                    payload: &[0xAB; 300],
                    ..base()
                },
                v,
            );
        }
        round_trip(
            Publish {
                properties: props,
                ..base()
            },
            V5,
        );
        // v5 empty topic with topic alias
        round_trip(
            Publish {
                topic: "",
                properties: PublishProperties {
                    topic_alias: Some(1),
                    ..props
                },
                ..base()
            },
            V5,
        );
    }

    #[test]
    fn known_bytes() {
        let qos0 = [0x30, 0x0A, 0x00, 0x03, b'a', b'/', b'b', b'h', b'e', b'l', b'l', b'o'];
        assert_eq!(decode_packet(&qos0, V311), Ok(Packet::Publish(base())));
        let qos1_v5 = [
            0x32, 0x0B, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x07, 0x00, b'x', b'y', b'z',
        ];
        assert_eq!(
            decode_packet(&qos1_v5, V5),
            Ok(Packet::Publish(Publish {
                qos: 1,
                packet_id: Some(7),
                payload: b"xyz",
                ..base()
            }))
        );
    }

    #[test]
    fn skips_user_properties_and_subscription_ids() {
        // topic "t", props: sub id 1, sub id 2, user property k=v
        let f = [
            0x30, 0x10, 0, 1, b't', 11, 0x0B, 1, 0x0B, 2, 0x26, 0, 1, b'k', 0, 1, b'v', b'!',
        ];
        let Ok(Packet::Publish(pb)) = decode_packet(&f, V5) else {
            panic!("decode failed")
        };
        assert_eq!(
            (pb.topic, pb.payload, pb.properties),
            ("t", &b"!"[..], PublishProperties::default())
        );
    }

    #[test]
    fn malformed() {
        let m = |k| Err(DecodeError::Malformed(k));
        assert_eq!(
            decode_packet(&[0x36, 0x05, 0, 1, b't', 0, 1], V311),
            m(MalformedKind::BadQos)
        );
        assert_eq!(
            decode_packet(&[0x38, 0x03, 0, 1, b't'], V311),
            m(MalformedKind::BadFixedHeaderFlags)
        );
        assert_eq!(
            decode_packet(&[0x30, 0x03, 0, 1, b'+'], V311),
            m(MalformedKind::WildcardInTopicName)
        );
        assert_eq!(
            decode_packet(&[0x30, 0x05, 0, 3, b'a', b'/', b'#'], V311),
            m(MalformedKind::WildcardInTopicName)
        );
        assert_eq!(decode_packet(&[0x30, 0x02, 0, 0], V311), m(MalformedKind::EmptyTopic));
        assert_eq!(decode_packet(&[0x30, 0x03, 0, 0, 0], V5), m(MalformedKind::EmptyTopic));
        assert_eq!(
            decode_packet(&[0x32, 0x05, 0, 1, b't', 0, 0], V311),
            m(MalformedKind::ZeroPacketId)
        );
        assert_eq!(
            decode_packet(&[0x32, 0x04, 0, 1, b't', 0], V311),
            m(MalformedKind::Truncated)
        );
        assert_eq!(
            decode_packet(&[0x30, 0x03, 0, 1, 0x00], V311),
            m(MalformedKind::BadUtf8)
        );
        // topic alias 0
        assert_eq!(
            decode_packet(&[0x30, 0x07, 0, 1, b't', 3, 0x23, 0, 0], V5),
            m(MalformedKind::BadProperty)
        );
        // duplicate topic alias
        assert_eq!(
            decode_packet(&[0x30, 0x0A, 0, 1, b't', 6, 0x23, 0, 1, 0x23, 0, 2], V5),
            m(MalformedKind::DuplicateProperty)
        );
        // response topic with wildcard
        assert_eq!(
            decode_packet(&[0x30, 0x08, 0, 1, b't', 4, 0x08, 0, 1, b'#'], V5),
            m(MalformedKind::BadProperty)
        );
        // property length past the end
        assert_eq!(
            decode_packet(&[0x30, 0x04, 0, 1, b't', 9], V5),
            m(MalformedKind::BadProperty)
        );
    }
}
