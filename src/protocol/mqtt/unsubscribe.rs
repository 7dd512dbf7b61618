//! UNSUBSCRIBE and UNSUBACK (3.1.1 §3.10-3.11, 5.0 §3.10-3.11).
//!
//! Owns: UNSUBSCRIBE/UNSUBACK wire format and the filter count bound.
//! Must never: look up or remove subscriptions (gateway work).

use super::fixed_header::write_frame;
use super::properties::{self as p, read_properties, write_empty};
use super::puback::read_packet_id;
use super::subscribe::{MAX_FILTERS_PER_PACKET, read_filter};
use super::wire::{Reader, write_u16, write_utf8};
use super::{DecodeError, MalformedKind, ProtocolVersion};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe<'a> {
    pub packet_id: u16,
    pub filters: Vec<&'a str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnsubAck<'a> {
    pub packet_id: u16,
    /// v5: one per filter. v3.1.1: nothing on the wire (decode gives an empty slice, encode
    /// ignores the codes).
    pub reason_codes: &'a [u8],
}

pub fn decode_unsubscribe(body: &[u8], version: ProtocolVersion) -> Result<Unsubscribe<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let packet_id = read_packet_id(&mut r)?;
    if version == ProtocolVersion::V5 {
        read_properties(&mut r, &[p::USER_PROPERTY], &[], |_, _| Ok(()))?;
    }
    if r.is_empty() {
        return Err(DecodeError::Malformed(MalformedKind::NoFilters));
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        if filters.len() == MAX_FILTERS_PER_PACKET {
            return Err(DecodeError::Malformed(MalformedKind::TooManyFilters));
        }
        filters.push(read_filter(&mut r)?);
    }
    Ok(Unsubscribe { packet_id, filters })
}

pub fn decode_unsuback(body: &[u8], version: ProtocolVersion) -> Result<UnsubAck<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let packet_id = read_packet_id(&mut r)?;
    let reason_codes = match version {
        ProtocolVersion::V311 => {
            r.finish()?;
            &[][..]
        }
        ProtocolVersion::V5 => {
            read_properties(&mut r, &[p::REASON_STRING, p::USER_PROPERTY], &[], |_, _| Ok(()))?;
            let codes = r.rest();
            if codes.is_empty() {
                return Err(DecodeError::Malformed(MalformedKind::Truncated));
            }
            codes
        }
    };
    Ok(UnsubAck {
        packet_id,
        reason_codes,
    })
}

impl Unsubscribe<'_> {
    /// Appends the whole UNSUBSCRIBE; returns bytes appended.
    pub fn encode(&self, version: ProtocolVersion, out: &mut Vec<u8>) -> usize {
        write_frame(out, 0xA2, |o| {
            write_u16(o, self.packet_id);
            if version == ProtocolVersion::V5 {
                write_empty(o);
            }
            for f in &self.filters {
                write_utf8(o, f);
            }
        })
    }
}

impl UnsubAck<'_> {
    /// Appends the whole UNSUBACK; returns bytes appended.
    pub fn encode(&self, version: ProtocolVersion, out: &mut Vec<u8>) -> usize {
        write_frame(out, 0xB0, |o| {
            write_u16(o, self.packet_id);
            if version == ProtocolVersion::V5 {
                write_empty(o);
                o.extend_from_slice(self.reason_codes);
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

    fn enc(pk: &Packet<'_>, v: ProtocolVersion) -> Vec<u8> {
        let mut out = Vec::new();
        assert_eq!(pk.encode(v, &mut out), out.len());
        out
    }

    #[test]
    fn round_trips() {
        for v in [V311, V5] {
            let pk = Packet::Unsubscribe(Unsubscribe {
                packet_id: 3,
                filters: vec!["a/+", "b/#"],
            });
            assert_eq!(decode_packet(&enc(&pk, v), v), Ok(pk));
        }
        let ack = Packet::UnsubAck(UnsubAck {
            packet_id: 3,
            reason_codes: &[0x00, 0x11],
        });
        assert_eq!(decode_packet(&enc(&ack, V5), V5), Ok(ack));
        let ack = Packet::UnsubAck(UnsubAck {
            packet_id: 3,
            reason_codes: &[],
        });
        assert_eq!(enc(&ack, V311), [0xB0, 0x02, 0x00, 0x03]);
        assert_eq!(decode_packet(&[0xB0, 0x02, 0x00, 0x03], V311), Ok(ack));
    }

    #[test]
    fn known_bytes() {
        let f = [0xA2, 0x05, 0x00, 0x07, 0x00, 0x01, b'x'];
        assert_eq!(
            decode_packet(&f, V311),
            Ok(Packet::Unsubscribe(Unsubscribe {
                packet_id: 7,
                filters: vec!["x"]
            }))
        );
        // v5 UNSUBACK with a reason string
        let f = [0xB0, 0x08, 0x00, 0x07, 0x04, 0x1F, 0x00, 0x01, b'r', 0x11];
        assert_eq!(
            decode_packet(&f, V5),
            Ok(Packet::UnsubAck(UnsubAck {
                packet_id: 7,
                reason_codes: &[0x11]
            }))
        );
    }

    #[test]
    fn malformed() {
        let m = |k| Err(DecodeError::Malformed(k));
        assert_eq!(
            decode_packet(&[0xA0, 0x05, 0, 1, 0, 1, b'x'], V311),
            m(MalformedKind::BadFixedHeaderFlags)
        );
        assert_eq!(decode_packet(&[0xA2, 0x02, 0, 1], V311), m(MalformedKind::NoFilters));
        assert_eq!(
            decode_packet(&[0xA2, 0x04, 0, 1, 0, 0], V311),
            m(MalformedKind::EmptyFilter)
        );
        assert_eq!(
            decode_packet(&[0xA2, 0x05, 0, 0, 0, 1, b'x'], V311),
            m(MalformedKind::ZeroPacketId)
        );
        assert_eq!(
            decode_packet(&[0xA2, 0x07, 0, 1, 2, 0x0B, 1, 0, 0], V5),
            m(MalformedKind::BadProperty)
        );
        assert_eq!(
            decode_packet(&[0xB0, 0x03, 0, 1, 0], V311),
            m(MalformedKind::TrailingBytes)
        );
        assert_eq!(decode_packet(&[0xB0, 0x03, 0, 1, 0], V5), m(MalformedKind::Truncated));
        let many = Unsubscribe {
            packet_id: 1,
            filters: vec!["f"; MAX_FILTERS_PER_PACKET + 1],
        };
        assert_eq!(
            decode_packet(&enc(&Packet::Unsubscribe(many), V311), V311),
            m(MalformedKind::TooManyFilters)
        );
    }
}
