//! Fuzz target: the load generator's own MQTT client decoder (`pulsegate_loadgen::mqtt::
//! decode`), as its workers run it on their receive buffers, checked against the gateway's
//! codec.
//!
//! Input: byte 0 picks MQTT 5 (bit 0) and the frame limit (bits 1-2); the rest is the
//! server's byte stream. Beyond "no panic" it asserts that a decoded frame's length is its
//! fixed header plus remaining length, within the buffer and the limit; that every
//! shorter prefix of it asks for more bytes; and, differentially, that every server packet
//! the gateway's codec accepts (CONNACK, PUBLISH, SUBACK, PINGRESP, DISCONNECT) is
//! decoded by the loadgen with the same fields, from the bytes the gateway would send for it
//! and from the fuzzed bytes themselves when the loadgen accepts them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulsegate::protocol::mqtt::{self as gw, ProtocolVersion};
use pulsegate_loadgen::mqtt::{self as lg, DecodeError};

/// Frame limits the workers may use, smallest first.
const LIMITS_BYTES: [usize; 4] = [0, 64, 4_096, 1 << 20];
/// Frames decoded per input.
const FRAMES_PER_INPUT_MAX: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let v5 = sel & 1 == 1;
    let max_frame_bytes = LIMITS_BYTES[usize::from(sel >> 1) & 3];
    for _ in 0..FRAMES_PER_INPUT_MAX {
        let Some(n) = check_one(rest, v5, max_frame_bytes) else {
            break;
        };
        rest = &rest[n..];
    }
});

/// Decodes the front of `buf`; Some(consumed) when a frame decoded.
fn check_one(buf: &[u8], v5: bool, max_frame_bytes: usize) -> Option<usize> {
    let result = lg::decode(buf, v5, max_frame_bytes);
    let header = lg::get_varint(buf.get(1..).unwrap_or_default());
    match result {
        Ok(Some((_, n))) => {
            let Ok(Some((remaining, used))) = header else {
                panic!("decoded without a header: {header:?}");
            };
            assert_eq!(n, 1 + used + remaining, "consumed bytes are the frame");
            assert!(n <= buf.len() && remaining <= max_frame_bytes);
            // The same frame alone decodes the same; any shorter prefix needs more.
            assert_eq!(lg::decode(&buf[..n], v5, max_frame_bytes), result);
            for cut in [0, 1, 1 + used, n - 1] {
                if cut < n {
                    assert_eq!(lg::decode(&buf[..cut], v5, max_frame_bytes), Ok(None), "cut at {cut}");
                }
            }
            Some(n)
        }
        Ok(None) => {
            if let Ok(Some((remaining, used))) = header {
                assert!(buf.len() < 1 + used + remaining, "a whole frame was left undecoded");
            }
            None
        }
        Err(DecodeError::TooLarge) => {
            assert!(matches!(header, Ok(Some((remaining, _))) if remaining > max_frame_bytes));
            None
        }
        Err(DecodeError::BadRemainingLength) => {
            assert_eq!(header, Err(DecodeError::BadRemainingLength));
            None
        }
        Err(DecodeError::Malformed) => {
            let Ok(Some((remaining, used))) = header else {
                panic!("malformed without a header: {header:?}");
            };
            // A whole frame the loadgen refused: the gateway may still accept it (it is
            // laxer, e.g. a non-minimal property identifier); what it would send is checked.
            if let Some(frame) = buf.get(..1 + used + remaining) {
                agree_with_gateway(frame, v5, false);
            }
            None
        }
    }
    .inspect(|&n| agree_with_gateway(&buf[..n], v5, true))
}

fn is_server_packet(p: &gw::Packet<'_>) -> bool {
    use gw::Packet::*;
    matches!(p, ConnAck(_) | Publish(_) | SubAck(_) | PingResp | Disconnect(_))
}

/// A server packet the gateway's codec decodes from `frame` is decoded by the loadgen with
/// the same fields: from the gateway's own (canonical) encoding of it always, and from
/// `frame` itself when `raw_decoded` (the loadgen accepted those bytes).
fn agree_with_gateway(frame: &[u8], v5: bool, raw_decoded: bool) {
    let version = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V311 };
    let Ok(packet) = gw::decode_packet(frame, version) else {
        return;
    };
    if !is_server_packet(&packet) {
        return;
    }
    let mut canonical = Vec::new();
    packet.encode(version, &mut canonical);
    same_fields(&canonical, packet.clone(), v5);
    if raw_decoded {
        same_fields(frame, packet, v5);
    }
}

fn same_fields(frame: &[u8], packet: gw::Packet<'_>, v5: bool) {
    let Ok(Some((mine, _))) = lg::decode(frame, v5, usize::MAX) else {
        panic!("loadgen cannot decode {packet:?} from {frame:?}");
    };
    let header_len = gw::check_frame(frame, u32::MAX)
        .map(|h| usize::from(h.header_len))
        .unwrap_or(2);
    match (packet, mine) {
        (
            gw::Packet::ConnAck(a),
            lg::Packet::Connack {
                session_present,
                code,
                server_keepalive_s,
            },
        ) => {
            assert_eq!(session_present, a.session_present);
            assert_eq!(code, frame[header_len + 1], "the return code as sent");
            // v3.1.1 return codes map onto v5 reasons (lossy): compare the v5 code only.
            assert!(!v5 || code == a.reason);
            assert_eq!(server_keepalive_s, a.properties.server_keep_alive_s);
        }
        (
            gw::Packet::Publish(p),
            lg::Packet::Publish {
                qos,
                packet_id,
                topic,
                payload,
            },
        ) => {
            assert_eq!((qos, packet_id), (p.qos, p.packet_id));
            assert_eq!(topic, p.topic.as_bytes());
            assert_eq!(payload, p.payload);
        }
        (gw::Packet::SubAck(s), lg::Packet::Suback { packet_id }) => assert_eq!(packet_id, s.packet_id),
        (gw::Packet::PingResp, lg::Packet::Pingresp) => {}
        (gw::Packet::Disconnect(d), lg::Packet::Disconnect { code }) => assert_eq!(code, d.reason),
        (p, mine) => panic!("gateway {p:?} but loadgen {mine:?}"),
    }
}
