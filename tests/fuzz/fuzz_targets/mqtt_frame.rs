//! Fuzz target: the gateway's MQTT codec, framed as a shard frames its receive buffer.
//!
//! Input: byte 0 picks the connection's version (bit 0) and the packet size limit
//! (bits 1-3); the rest is a byte stream, cut into frames with `check_frame` and each
//! decoded with `decode_packet`. Beyond "no panic" it asserts that `check_frame` and
//! `decode_packet` agree on every frame's length, that a truncated or over-long frame is
//! never decoded, and that every decoded packet re-encodes to bytes that decode to the
//! same packet (v5 and CONNECT; v3.1.1 maps CONNACK codes lossily) and re-encode to the
//! same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulsegate::protocol::mqtt::{
    DecodeError, MAX_VARINT, MalformedKind, Packet, ProtocolVersion, check_frame, decode_packet, read_varint,
};

/// Limits a shard may be configured with, smallest first; u32::MAX is `decode_packet`'s own.
const LIMITS_BYTES: [u32; 8] = [2, 5, 16, 127, 128, 4_096, 268_435_460, u32::MAX];
/// Frames decoded per input (the stream rarely holds more; a bound keeps runs even).
const FRAMES_PER_INPUT_MAX: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let version = if sel & 1 == 0 {
        ProtocolVersion::V311
    } else {
        ProtocolVersion::V5
    };
    let max_bytes = LIMITS_BYTES[usize::from(sel >> 1) & 7];
    for _ in 0..FRAMES_PER_INPUT_MAX {
        match frame_len(rest, max_bytes) {
            Some(total) => {
                check_frame_bytes(&rest[..total], version);
                rest = &rest[total..];
            }
            None => break,
        }
    }
});

/// `check_frame` on the stream: the length of its next whole frame, or None when the
/// shard would wait for more bytes or close the connection. Asserts what the header says.
fn frame_len(buf: &[u8], max_bytes: u32) -> Option<usize> {
    let result = check_frame(buf, max_bytes);
    let unlimited = check_frame(buf, u32::MAX);
    match result {
        Ok(h) => {
            assert_eq!(unlimited, Ok(h), "a limit only ever refuses");
            assert_eq!(h.packet_type, buf[0] >> 4);
            assert_eq!(h.flags, buf[0] & 0x0F);
            assert!((2..=5).contains(&h.header_len), "{h:?}");
            assert!(usize::from(h.header_len) <= buf.len());
            assert!(h.remaining_len <= MAX_VARINT);
            assert_eq!(
                read_varint(&buf[1..]),
                Ok((h.remaining_len, usize::from(h.header_len) - 1))
            );
            assert!(h.total_len() as u64 <= u64::from(max_bytes));
            (h.total_len() <= buf.len()).then_some(h.total_len())
        }
        Err(DecodeError::TooLarge {
            size_bytes,
            max_bytes: m,
        }) => {
            assert_eq!(m, max_bytes);
            assert!(size_bytes > u64::from(max_bytes));
            let h = unlimited.expect("only the limit refused this header");
            assert_eq!(h.total_len() as u64, size_bytes);
            None
        }
        Err(DecodeError::Incomplete { .. }) => {
            // Only an empty buffer or an unfinished remaining-length varint.
            assert!(buf.len() < 5, "incomplete header of {} bytes", buf.len());
            assert!(buf.is_empty() || buf[1..].iter().all(|b| b & 0x80 != 0));
            assert_eq!(
                decode_packet(buf, ProtocolVersion::V5).map(|_| ()),
                Err(result.unwrap_err())
            );
            None
        }
        Err(e) => {
            // The header alone is bad: decode_packet refuses the same way.
            assert!(
                matches!(
                    e,
                    DecodeError::UnsupportedPacket { packet_type: 0 }
                        | DecodeError::Malformed(MalformedKind::BadRemainingLength)
                ),
                "{e:?}"
            );
            assert_eq!(unlimited, Err(e));
            assert_eq!(decode_packet(buf, ProtocolVersion::V311).map(|_| ()), Err(e));
            None
        }
    }
}

/// One whole frame (as sized by `check_frame`): decodes it, its truncation and an over-long
/// copy, and round-trips what decoded. (`Malformed(TrailingBytes)` from a whole frame is a
/// body longer than its packet type allows, e.g. a 15-byte PUBACK: correct.)
fn check_frame_bytes(frame: &[u8], version: ProtocolVersion) {
    let decoded = decode_packet(frame, version);
    if let Err(e) = decoded {
        assert!(
            !matches!(
                e,
                DecodeError::Incomplete { .. }
                    | DecodeError::TooLarge { .. }
                    | DecodeError::Malformed(MalformedKind::BadRemainingLength)
            ),
            "a whole frame failed on framing: {e:?} {frame:?}"
        );
    }
    // One byte short: always incomplete, never a packet.
    assert!(
        matches!(
            decode_packet(&frame[..frame.len() - 1], version),
            Err(DecodeError::Incomplete { .. })
        ),
        "a truncated frame decoded: {frame:?}"
    );
    // One byte more: always trailing bytes.
    let mut longer = frame.to_vec();
    longer.push(0);
    assert_eq!(
        decode_packet(&longer, version).map(|_| ()),
        Err(DecodeError::Malformed(MalformedKind::TrailingBytes))
    );
    let Ok(mut packet) = decoded else {
        return;
    };
    // The one field the codec reads but never writes: an Authentication Method makes the
    // shard refuse the CONNECT, so the gateway never has to send it on.
    if let Packet::Connect(c) = &mut packet {
        c.properties.has_authentication_method = false;
    }
    // CONNECT carries its own version; every other packet uses the connection's.
    let encode_version = match &packet {
        Packet::Connect(c) => c.protocol_version,
        _ => version,
    };
    let mut encoded = Vec::new();
    let n = packet.encode(encode_version, &mut encoded);
    assert_eq!(n, encoded.len());
    let h = check_frame(&encoded, u32::MAX).expect("an encoded packet has a valid header");
    assert_eq!(h.total_len(), encoded.len());
    let again = decode_packet(&encoded, version)
        .unwrap_or_else(|e| panic!("re-encoded {packet:?} does not decode: {e:?} {encoded:?}"));
    // v3.1.1 CONNACK return codes map onto v5 reasons and back, which is lossy (3 stands for
    // every "server unavailable" reason): there, only the bytes must be stable.
    if version == ProtocolVersion::V5 || matches!(packet, Packet::Connect(_)) {
        assert_eq!(again, packet, "round trip changed the packet; frame {frame:?}");
    }
    let mut twice = Vec::new();
    again.encode(encode_version, &mut twice);
    assert_eq!(twice, encoded, "encoding is not stable");
}
