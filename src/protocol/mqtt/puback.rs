//! PUBACK (3.1.1 §3.4, 5.0 §3.4): packet identifier, v5 reason code and properties.
//!
//! Owns: PUBACK wire format (all three v5 length forms on decode, shortest form on encode).
//! Must never: track in-flight ids or decide what a reason code means for delivery.

use super::fixed_header::write_frame;
use super::properties::{self as p, read_properties};
use super::wire::{Reader, write_u16};
use super::{DecodeError, MalformedKind, ProtocolVersion};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PubAck {
    pub packet_id: u16,
    /// v5 reason code (0 = success). Always 0 when decoded from v3.1.1.
    pub reason: u8,
}

const ALLOWED: &[u8] = &[p::REASON_STRING, p::USER_PROPERTY];

/// Reads a non-zero packet identifier.
pub(super) fn read_packet_id(r: &mut Reader<'_>) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::Malformed(MalformedKind::ZeroPacketId)),
        id => Ok(id),
    }
}

pub fn decode(body: &[u8], version: ProtocolVersion) -> Result<PubAck, DecodeError> {
    let mut r = Reader::new(body);
    let packet_id = read_packet_id(&mut r)?;
    let mut reason = 0;
    if version == ProtocolVersion::V5 && !r.is_empty() {
        reason = r.u8()?;
        if !r.is_empty() {
            // reason string / user properties: validated and skipped
            read_properties(&mut r, ALLOWED, &[], |_, _| Ok(()))?;
        }
    }
    r.finish()?;
    Ok(PubAck { packet_id, reason })
}

impl PubAck {
    /// Appends the whole PUBACK; returns bytes appended. v5 with reason 0 uses the 2-byte form;
    /// any other v5 reason is written without properties. v3.1.1 ignores `reason`.
    pub fn encode(&self, version: ProtocolVersion, out: &mut Vec<u8>) -> usize {
        debug_assert!(self.packet_id != 0, "PUBACK packet id 0");
        write_frame(out, 0x40, |o| {
            write_u16(o, self.packet_id);
            if version == ProtocolVersion::V5 && self.reason != 0 {
                o.push(self.reason);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Packet, decode_packet};
    use super::*;

    const V311: ProtocolVersion = ProtocolVersion::V311;
    const V5: ProtocolVersion = ProtocolVersion::V5;

    fn enc(a: PubAck, v: ProtocolVersion) -> Vec<u8> {
        let mut out = Vec::new();
        assert_eq!(a.encode(v, &mut out), out.len());
        out
    }

    #[test]
    fn round_trips_and_bytes() {
        let ok = PubAck {
            packet_id: 0x1234,
            reason: 0,
        };
        let quota = PubAck {
            packet_id: 9,
            reason: 0x97,
        };
        assert_eq!(enc(ok, V311), [0x40, 0x02, 0x12, 0x34]);
        assert_eq!(enc(ok, V5), [0x40, 0x02, 0x12, 0x34]);
        assert_eq!(enc(quota, V5), [0x40, 0x03, 0x00, 0x09, 0x97]);
        assert_eq!(enc(quota, V311), [0x40, 0x02, 0x00, 0x09]);
        for (a, v) in [(ok, V311), (ok, V5), (quota, V5)] {
            assert_eq!(decode_packet(&enc(a, v), v), Ok(Packet::PubAck(a)));
        }
    }

    #[test]
    fn v5_long_forms() {
        let with_props = [0x40, 0x0A, 0x00, 0x05, 0x10, 0x06, 0x1F, 0x00, 0x03, b'n', b'o', b'1'];
        assert_eq!(
            decode_packet(&with_props, V5),
            Ok(Packet::PubAck(PubAck {
                packet_id: 5,
                reason: 0x10
            }))
        );
        let empty_props = [0x40, 0x04, 0x00, 0x05, 0x00, 0x00];
        assert_eq!(
            decode_packet(&empty_props, V5),
            Ok(Packet::PubAck(PubAck {
                packet_id: 5,
                reason: 0
            }))
        );
    }

    #[test]
    fn malformed() {
        let m = |k| Err(DecodeError::Malformed(k));
        assert_eq!(decode_packet(&[0x40, 0x02, 0, 0], V311), m(MalformedKind::ZeroPacketId));
        assert_eq!(decode_packet(&[0x40, 0x01, 0], V311), m(MalformedKind::Truncated));
        assert_eq!(
            decode_packet(&[0x40, 0x03, 0, 1, 0], V311),
            m(MalformedKind::TrailingBytes)
        );
        assert_eq!(
            decode_packet(&[0x42, 0x02, 0, 1], V311),
            m(MalformedKind::BadFixedHeaderFlags)
        );
        assert_eq!(
            decode_packet(&[0x40, 0x06, 0, 1, 0, 2, 0x11, 0], V5),
            m(MalformedKind::BadProperty)
        );
        assert_eq!(
            decode_packet(&[0x40, 0x0A, 0, 1, 0, 6, 0x1F, 0, 0, 0x1F, 0, 0], V5),
            m(MalformedKind::DuplicateProperty)
        );
    }
}
