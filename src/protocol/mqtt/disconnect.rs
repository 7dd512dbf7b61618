//! DISCONNECT (3.1.1 §3.14, 5.0 §3.14): empty in 3.1.1; v5 reason code and properties.
//!
//! Owns: DISCONNECT wire format (all v5 length forms on decode, shortest form on encode).
//! Must never: act on the reason (will publication, session expiry changes are gateway work).

use super::fixed_header::write_frame;
use super::properties::{self as p, PropValue, read_properties, write_properties};
use super::wire::Reader;
use super::{DecodeError, ProtocolVersion};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disconnect<'a> {
    /// v5 reason code; 0 (normal disconnection) for v3.1.1.
    pub reason: u8,
    pub session_expiry_interval_s: Option<u32>,
    pub reason_string: Option<&'a str>,
    pub server_reference: Option<&'a str>,
}

impl Disconnect<'_> {
    /// Normal disconnection without properties.
    pub const NORMAL: Disconnect<'static> = Disconnect {
        reason: 0,
        session_expiry_interval_s: None,
        reason_string: None,
        server_reference: None,
    };

    fn has_properties(&self) -> bool {
        self.session_expiry_interval_s.is_some() || self.reason_string.is_some() || self.server_reference.is_some()
    }
}

const ALLOWED: &[u8] = &[
    p::SESSION_EXPIRY_INTERVAL,
    p::REASON_STRING,
    p::USER_PROPERTY,
    p::SERVER_REFERENCE,
];

pub fn decode(body: &[u8], version: ProtocolVersion) -> Result<Disconnect<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let mut d = Disconnect::NORMAL;
    if version == ProtocolVersion::V5 && !r.is_empty() {
        d.reason = r.u8()?;
        if !r.is_empty() {
            read_properties(&mut r, ALLOWED, &[], |id, v| {
                match (id, v) {
                    (p::SESSION_EXPIRY_INTERVAL, v) => d.session_expiry_interval_s = Some(v.num()),
                    (p::REASON_STRING, PropValue::Str(s)) => d.reason_string = Some(s),
                    (p::SERVER_REFERENCE, PropValue::Str(s)) => d.server_reference = Some(s),
                    _ => {}
                }
                Ok(())
            })?;
        }
    }
    r.finish()?;
    Ok(d)
}

impl Disconnect<'_> {
    /// Appends the whole DISCONNECT; returns bytes appended. v3.1.1 is always E0 00; v5 uses
    /// E0 00 for reason 0 without properties, E0 01 rr without properties, else the full form.
    pub fn encode(&self, version: ProtocolVersion, out: &mut Vec<u8>) -> usize {
        write_frame(out, 0xE0, |o| {
            if version == ProtocolVersion::V311 || (self.reason == 0 && !self.has_properties()) {
                return;
            }
            o.push(self.reason);
            if self.has_properties() {
                write_properties(o, |o| {
                    p::put_u32(o, p::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval_s);
                    p::put_str(o, p::REASON_STRING, self.reason_string);
                    p::put_str(o, p::SERVER_REFERENCE, self.server_reference);
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MalformedKind, Packet, decode_packet};
    use super::*;

    const V311: ProtocolVersion = ProtocolVersion::V311;
    const V5: ProtocolVersion = ProtocolVersion::V5;

    fn enc(d: Disconnect<'_>, v: ProtocolVersion) -> Vec<u8> {
        let mut out = Vec::new();
        assert_eq!(d.encode(v, &mut out), out.len());
        out
    }

    #[test]
    fn encodings() {
        let full = Disconnect {
            reason: 0x9C,
            session_expiry_interval_s: Some(0),
            reason_string: Some("move"),
            server_reference: Some("b:1883"),
        };
        assert_eq!(enc(Disconnect::NORMAL, V311), [0xE0, 0x00]);
        assert_eq!(enc(full, V311), [0xE0, 0x00]);
        assert_eq!(enc(Disconnect::NORMAL, V5), [0xE0, 0x00]);
        assert_eq!(
            enc(
                Disconnect {
                    reason: 0x8B,
                    ..Disconnect::NORMAL
                },
                V5
            ),
            [0xE0, 0x01, 0x8B]
        );
        for (d, v) in [
            (Disconnect::NORMAL, V311),
            (Disconnect::NORMAL, V5),
            (full, V5),
            (
                Disconnect {
                    reason: 4,
                    ..Disconnect::NORMAL
                },
                V5,
            ),
        ] {
            assert_eq!(decode_packet(&enc(d, v), v), Ok(Packet::Disconnect(d)));
        }
        let props_only = Disconnect {
            reason_string: Some("bye"),
            ..Disconnect::NORMAL
        };
        assert_eq!(
            decode_packet(&enc(props_only, V5), V5),
            Ok(Packet::Disconnect(props_only))
        );
    }

    #[test]
    fn malformed() {
        let m = |k| Err(DecodeError::Malformed(k));
        assert_eq!(
            decode_packet(&[0xE0, 0x01, 0x00], V311),
            m(MalformedKind::TrailingBytes)
        );
        assert_eq!(
            decode_packet(&[0xE2, 0x00], V311),
            m(MalformedKind::BadFixedHeaderFlags)
        );
        assert_eq!(
            decode_packet(&[0xE0, 0x04, 0x00, 0x02, 0x24, 0x01], V5),
            m(MalformedKind::BadProperty)
        );
        assert_eq!(
            decode_packet(&[0xE0, 0x03, 0x00, 0x00, 0x00], V5),
            m(MalformedKind::TrailingBytes)
        );
        assert_eq!(
            decode_packet(&[0xE0, 0x0C, 0x00, 0x0A, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2], V5),
            m(MalformedKind::DuplicateProperty)
        );
    }
}
