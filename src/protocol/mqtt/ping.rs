//! PINGREQ and PINGRESP (3.1.1 §3.12-3.13, 5.0 §3.12-3.13): two bytes each, identical in
//! both versions.
//!
//! Owns: the empty-body rule. Must never: track keep-alive timing (gateway work).

use super::{DecodeError, MalformedKind};

pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
pub const PINGRESP: [u8; 2] = [0xD0, 0x00];

/// Checks that a PINGREQ / PINGRESP body is empty.
pub fn decode(body: &[u8]) -> Result<(), DecodeError> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::Malformed(MalformedKind::TrailingBytes))
    }
}

/// Appends PINGREQ (`resp == false`) or PINGRESP; returns 2.
pub fn encode(resp: bool, out: &mut Vec<u8>) -> usize {
    out.extend_from_slice(if resp { &PINGRESP } else { &PINGREQ });
    2
}

#[cfg(test)]
mod tests {
    use super::super::{Packet, ProtocolVersion, decode_packet};
    use super::*;

    #[test]
    fn bytes_and_round_trip() {
        for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let mut out = Vec::new();
            assert_eq!(Packet::PingReq.encode(v, &mut out), 2);
            assert_eq!(out, [0xC0, 0x00]);
            assert_eq!(decode_packet(&out, v), Ok(Packet::PingReq));
            out.clear();
            assert_eq!(Packet::PingResp.encode(v, &mut out), 2);
            assert_eq!(out, [0xD0, 0x00]);
            assert_eq!(decode_packet(&out, v), Ok(Packet::PingResp));
        }
    }

    #[test]
    fn malformed() {
        let v = ProtocolVersion::V311;
        assert_eq!(
            decode_packet(&[0xC0, 0x01, 0x00], v),
            Err(DecodeError::Malformed(MalformedKind::TrailingBytes))
        );
        assert_eq!(
            decode_packet(&[0xD0, 0x01, 0x00], v),
            Err(DecodeError::Malformed(MalformedKind::TrailingBytes))
        );
        assert_eq!(
            decode_packet(&[0xC1, 0x00], v),
            Err(DecodeError::Malformed(MalformedKind::BadFixedHeaderFlags))
        );
    }
}
