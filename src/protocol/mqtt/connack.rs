//! CONNACK (3.1.1 §3.2, 5.0 §3.2): acknowledge flags, reason / return code, CONNACK properties.
//!
//! Owns: CONNACK wire format and the v5 <-> v3.1.1 code translation at the wire boundary.
//! Must never: choose the reason code or the advertised limits (gateway policy).

use super::fixed_header::write_frame;
use super::properties::{self as p, PropValue, read_properties, write_properties};
use super::reason::{SUCCESS, connack_reason_from_v311, connack_return_code_v311};
use super::wire::Reader;
use super::{DecodeError, MalformedKind, ProtocolVersion};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnAck<'a> {
    pub session_present: bool,
    /// v5 reason code. v3.1.1 encode maps it through `connack_return_code_v311`; v3.1.1 decode
    /// maps the return code back with `connack_reason_from_v311`.
    pub reason: u8,
    pub properties: ConnAckProperties<'a>,
}

/// CONNACK properties. User properties, Response Information and authentication
/// method/data are validated and skipped on decode.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnAckProperties<'a> {
    pub session_expiry_interval_s: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<bool>,
    pub maximum_packet_size_bytes: Option<u32>,
    pub assigned_client_identifier: Option<&'a str>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<&'a str>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifiers_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
    pub server_keep_alive_s: Option<u16>,
    pub server_reference: Option<&'a str>,
}

const ALLOWED: &[u8] = &[
    p::SESSION_EXPIRY_INTERVAL,
    p::RECEIVE_MAXIMUM,
    p::MAXIMUM_QOS,
    p::RETAIN_AVAILABLE,
    p::MAXIMUM_PACKET_SIZE,
    p::ASSIGNED_CLIENT_IDENTIFIER,
    p::TOPIC_ALIAS_MAXIMUM,
    p::REASON_STRING,
    p::USER_PROPERTY,
    p::WILDCARD_SUBSCRIPTION_AVAILABLE,
    p::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
    p::SHARED_SUBSCRIPTION_AVAILABLE,
    p::SERVER_KEEP_ALIVE,
    p::RESPONSE_INFORMATION,
    p::SERVER_REFERENCE,
    p::AUTHENTICATION_METHOD,
    p::AUTHENTICATION_DATA,
];

pub fn decode(body: &[u8], version: ProtocolVersion) -> Result<ConnAck<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let ack_flags = r.u8()?;
    let code = r.u8()?;
    let session_present = ack_flags & 0x01 != 0;
    // bits 7-1 reserved; session present must be 0 when the connection is refused
    if ack_flags & 0xFE != 0 || (session_present && code != SUCCESS) {
        return Err(DecodeError::Malformed(MalformedKind::BadConnectFlags));
    }
    let mut properties = ConnAckProperties::default();
    let reason = match version {
        ProtocolVersion::V311 => connack_reason_from_v311(code),
        ProtocolVersion::V5 => {
            let pr = &mut properties;
            read_properties(&mut r, ALLOWED, &[], |id, v| {
                let n = v.num();
                let s = if let PropValue::Str(s) = v { Some(s) } else { None };
                match id {
                    p::SESSION_EXPIRY_INTERVAL => pr.session_expiry_interval_s = Some(n),
                    p::RECEIVE_MAXIMUM => pr.receive_maximum = Some(n as u16),
                    p::MAXIMUM_QOS => pr.maximum_qos = Some(n as u8),
                    p::RETAIN_AVAILABLE => pr.retain_available = Some(n != 0),
                    p::MAXIMUM_PACKET_SIZE => pr.maximum_packet_size_bytes = Some(n),
                    p::ASSIGNED_CLIENT_IDENTIFIER => pr.assigned_client_identifier = s,
                    p::TOPIC_ALIAS_MAXIMUM => pr.topic_alias_maximum = Some(n as u16),
                    p::REASON_STRING => pr.reason_string = s,
                    p::WILDCARD_SUBSCRIPTION_AVAILABLE => pr.wildcard_subscription_available = Some(n != 0),
                    p::SUBSCRIPTION_IDENTIFIER_AVAILABLE => pr.subscription_identifiers_available = Some(n != 0),
                    p::SHARED_SUBSCRIPTION_AVAILABLE => pr.shared_subscription_available = Some(n != 0),
                    p::SERVER_KEEP_ALIVE => pr.server_keep_alive_s = Some(n as u16),
                    p::SERVER_REFERENCE => pr.server_reference = s,
                    _ => {}
                }
                Ok(())
            })?;
            code
        }
    };
    r.finish()?;
    Ok(ConnAck {
        session_present,
        reason,
        properties,
    })
}

impl ConnAck<'_> {
    /// Appends the whole CONNACK; returns bytes appended. v3.1.1 drops properties.
    pub fn encode(&self, version: ProtocolVersion, out: &mut Vec<u8>) -> usize {
        write_frame(out, 0x20, |o| {
            o.push(u8::from(self.session_present));
            match version {
                ProtocolVersion::V311 => o.push(connack_return_code_v311(self.reason)),
                ProtocolVersion::V5 => {
                    o.push(self.reason);
                    let pr = &self.properties;
                    write_properties(o, |o| {
                        p::put_u32(o, p::SESSION_EXPIRY_INTERVAL, pr.session_expiry_interval_s);
                        p::put_u16(o, p::RECEIVE_MAXIMUM, pr.receive_maximum);
                        p::put_byte(o, p::MAXIMUM_QOS, pr.maximum_qos);
                        p::put_bool(o, p::RETAIN_AVAILABLE, pr.retain_available);
                        p::put_u32(o, p::MAXIMUM_PACKET_SIZE, pr.maximum_packet_size_bytes);
                        p::put_str(o, p::ASSIGNED_CLIENT_IDENTIFIER, pr.assigned_client_identifier);
                        p::put_u16(o, p::TOPIC_ALIAS_MAXIMUM, pr.topic_alias_maximum);
                        p::put_str(o, p::REASON_STRING, pr.reason_string);
                        p::put_bool(
                            o,
                            p::WILDCARD_SUBSCRIPTION_AVAILABLE,
                            pr.wildcard_subscription_available,
                        );
                        p::put_bool(
                            o,
                            p::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
                            pr.subscription_identifiers_available,
                        );
                        p::put_bool(o, p::SHARED_SUBSCRIPTION_AVAILABLE, pr.shared_subscription_available);
                        p::put_u16(o, p::SERVER_KEEP_ALIVE, pr.server_keep_alive_s);
                        p::put_str(o, p::SERVER_REFERENCE, pr.server_reference);
                    });
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::reason;
    use super::super::{Packet, decode_packet};
    use super::*;

    fn round_trip(c: ConnAck<'_>, version: ProtocolVersion) {
        let mut out = Vec::new();
        assert_eq!(c.encode(version, &mut out), out.len());
        assert_eq!(decode_packet(&out, version), Ok(Packet::ConnAck(c)));
    }

    fn full_props() -> ConnAckProperties<'static> {
        ConnAckProperties {
            session_expiry_interval_s: Some(120),
            receive_maximum: Some(100),
            maximum_qos: Some(1),
            retain_available: Some(false),
            maximum_packet_size_bytes: Some(65_536),
            assigned_client_identifier: Some("auto-1"),
            topic_alias_maximum: Some(0),
            reason_string: Some("ok"),
            wildcard_subscription_available: Some(true),
            subscription_identifiers_available: Some(false),
            shared_subscription_available: Some(false),
            server_keep_alive_s: Some(30),
            server_reference: Some("other:1883"),
        }
    }

    #[test]
    fn round_trips() {
        let none = ConnAckProperties::default();
        round_trip(
            ConnAck {
                session_present: true,
                reason: 0,
                properties: none,
            },
            ProtocolVersion::V311,
        );
        round_trip(
            ConnAck {
                session_present: false,
                reason: reason::NOT_AUTHORIZED,
                properties: none,
            },
            ProtocolVersion::V311,
        );
        round_trip(
            ConnAck {
                session_present: true,
                reason: 0,
                properties: none,
            },
            ProtocolVersion::V5,
        );
        round_trip(
            ConnAck {
                session_present: false,
                reason: 0,
                properties: full_props(),
            },
            ProtocolVersion::V5,
        );
        round_trip(
            ConnAck {
                session_present: false,
                reason: reason::SERVER_MOVED,
                properties: full_props(),
            },
            ProtocolVersion::V5,
        );
    }

    #[test]
    fn v311_encoding_maps_reason() {
        let mut out = Vec::new();
        let c = ConnAck {
            session_present: false,
            reason: reason::SERVER_BUSY,
            properties: full_props(),
        };
        c.encode(ProtocolVersion::V311, &mut out);
        assert_eq!(out, [0x20, 0x02, 0x00, 0x03]);
        assert_eq!(
            decode_packet(&out, ProtocolVersion::V311),
            Ok(Packet::ConnAck(ConnAck {
                reason: reason::SERVER_UNAVAILABLE,
                properties: ConnAckProperties::default(),
                ..c
            }))
        );
    }

    #[test]
    fn known_v5_bytes() {
        // session present 0, success, properties: Server Keep Alive 30, Assigned Client Identifier "ab"
        let frame = [
            0x20, 0x0B, 0x00, 0x00, 0x08, 0x13, 0x00, 0x1E, 0x12, 0x00, 0x02, b'a', b'b',
        ];
        let c = ConnAck {
            session_present: false,
            reason: 0,
            properties: ConnAckProperties {
                server_keep_alive_s: Some(30),
                assigned_client_identifier: Some("ab"),
                ..Default::default()
            },
        };
        assert_eq!(decode_packet(&frame, ProtocolVersion::V5), Ok(Packet::ConnAck(c)));
        let mut out = Vec::new();
        c.encode(ProtocolVersion::V5, &mut out);
        // encoder writes Assigned Client Identifier before Server Keep Alive; compare decoded
        assert_eq!(out.len(), frame.len());
        assert_eq!(decode_packet(&out, ProtocolVersion::V5), Ok(Packet::ConnAck(c)));
        // plain 3.1.1 accept
        assert_eq!(
            decode_packet(&[0x20, 0x02, 0x00, 0x00], ProtocolVersion::V311),
            Ok(Packet::ConnAck(ConnAck {
                session_present: false,
                reason: 0,
                properties: Default::default()
            }))
        );
    }

    #[test]
    fn malformed() {
        let m = |k| Err(DecodeError::Malformed(k));
        assert_eq!(
            decode_packet(&[0x20, 0x02, 0x02, 0x00], ProtocolVersion::V311),
            m(MalformedKind::BadConnectFlags)
        );
        assert_eq!(
            decode_packet(&[0x20, 0x02, 0x01, 0x05], ProtocolVersion::V311),
            m(MalformedKind::BadConnectFlags)
        );
        assert_eq!(
            decode_packet(&[0x20, 0x03, 0x00, 0x00, 0x00], ProtocolVersion::V311),
            m(MalformedKind::TrailingBytes)
        );
        assert_eq!(
            decode_packet(&[0x20, 0x02, 0x00, 0x00], ProtocolVersion::V5),
            m(MalformedKind::Truncated)
        );
        assert_eq!(
            decode_packet(&[0x21, 0x02, 0x00, 0x00], ProtocolVersion::V311),
            m(MalformedKind::BadFixedHeaderFlags)
        );
        // Maximum QoS 2 is not allowed
        assert_eq!(
            decode_packet(&[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02], ProtocolVersion::V5),
            m(MalformedKind::BadProperty)
        );
        // Topic Alias is not a CONNACK property
        assert_eq!(
            decode_packet(&[0x20, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01], ProtocolVersion::V5),
            m(MalformedKind::BadProperty)
        );
    }
}
