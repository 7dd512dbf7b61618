//! Cross-packet codec tests: round trips of every packet in both versions, truncations,
//! reachability of every MalformedKind, and a 200,000-frame no-panic robustness run.
//!
//! Owns: tests only. Must never: be compiled outside `cfg(test)`.

use super::*;

const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;
const BOTH: [ProtocolVersion; 2] = [V311, V5];

/// A representative valid packet of every type, with properties where v5 has them.
fn samples() -> Vec<Packet<'static>> {
    vec![
        Packet::Connect(Connect {
            protocol_version: V5,
            clean_start: false,
            keepalive_s: 30,
            client_id: "c1",
            username: Some("u"),
            password: Some(b"p"),
            will: Some(Will {
                topic: "w/t",
                payload: b"bye",
                qos: 2,
                retain: false,
            }),
            properties: ConnectProperties {
                session_expiry_interval_s: Some(10),
                receive_maximum: Some(5),
                ..Default::default()
            },
        }),
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason: 0,
            properties: ConnAckProperties {
                server_keep_alive_s: Some(20),
                reason_string: Some("hi"),
                ..Default::default()
            },
        }),
        Packet::Publish(Publish {
            dup: false,
            qos: 1,
            retain: true,
            topic: "t/1",
            packet_id: Some(42),
            payload: b"payload",
            properties: PublishProperties {
                content_type: Some("ct"),
                message_expiry_interval_s: Some(9),
                ..Default::default()
            },
        }),
        Packet::PubAck(PubAck {
            packet_id: 42,
            reason: 0x10,
        }),
        Packet::Subscribe(Subscribe {
            packet_id: 5,
            filters: vec![("a/#", SubscriptionOptions::qos(1)), ("b", SubscriptionOptions::qos(2))],
        }),
        Packet::SubAck(SubAck {
            packet_id: 5,
            reason_codes: &[1, 2],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 6,
            filters: vec!["a/#"],
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 6,
            reason_codes: &[0],
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect {
            reason: 0x8E,
            reason_string: Some("taken"),
            ..Disconnect::NORMAL
        }),
    ]
}

fn encoded_samples() -> Vec<(Vec<u8>, ProtocolVersion)> {
    let mut v = Vec::new();
    for version in BOTH {
        for p in samples() {
            let mut out = Vec::new();
            p.encode(version, &mut out);
            v.push((out, version));
        }
    }
    v
}

#[test]
fn every_sample_round_trips_in_both_versions() {
    for version in BOTH {
        for p in samples() {
            let mut out = vec![0xEE]; // encode appends, never overwrites
            let n = p.encode(version, &mut out);
            assert_eq!(n + 1, out.len());
            let frame = &out[1..];
            let h = check_frame(frame, 1024).expect("valid frame");
            assert_eq!(h.total_len(), frame.len());
            let back = decode_packet(frame, version).expect("decodes");
            // re-encoding what was decoded is byte-identical
            let mut again = Vec::new();
            back.encode(version, &mut again);
            assert_eq!(again, frame, "{p:?} {version:?}");
            if version == V5 {
                assert_eq!(back, p);
            }
        }
    }
}

#[test]
fn every_truncation_is_an_error() {
    for (frame, version) in encoded_samples() {
        for cut in 0..frame.len() {
            let part = &frame[..cut];
            assert!(decode_packet(part, version).is_err(), "{frame:?} cut at {cut}");
            if let Ok(h) = check_frame(part, u32::MAX) {
                assert!(h.total_len() > part.len());
            }
        }
    }
}

#[test]
fn unsupported_packets() {
    for t in [0u8, 5, 6, 7, 15] {
        let frame = [t << 4 | if t == 6 { 2 } else { 0 }, 0x02, 0x00, 0x01];
        for v in BOTH {
            let e = decode_packet(&frame, v).expect_err("unsupported");
            assert_eq!(e, DecodeError::UnsupportedPacket { packet_type: t });
            assert_eq!((e.reason_code(), e.kind_label()), (0x82, "unsupported_packet"));
        }
    }
}

#[test]
fn frame_size_mismatch() {
    assert_eq!(
        decode_packet(&[0xC0, 0x00, 0x00], V311),
        Err(DecodeError::Malformed(MalformedKind::TrailingBytes))
    );
    assert_eq!(
        decode_packet(&[0x30, 0x05, 0x00], V311),
        Err(DecodeError::Incomplete { needed: 4 })
    );
}

#[test]
fn every_malformed_kind_is_reachable() {
    use MalformedKind::*;
    let cases: &[(&[u8], ProtocolVersion, MalformedKind)] = &[
        (&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], V311, BadRemainingLength),
        (&[0xC2, 0x00], V311, BadFixedHeaderFlags),
        (&[0x40, 0x01, 0x00], V311, Truncated),
        (&[0xD0, 0x01, 0x00], V311, TrailingBytes),
        (&[0x30, 0x03, 0x00, 0x01, 0xFF], V311, BadUtf8),
        (
            &[0x10, 0x07, 0x00, 0x04, b'M', b'Q', b'X', b'X', 0x04],
            V311,
            BadProtocolName,
        ),
        (
            &[0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x01, 0, 0, 0, 1, b'c'],
            V311,
            BadConnectFlags,
        ),
        (&[0x30, 0x05, 0x00, 0x01, b't', 0x01, 0x12], V5, BadProperty),
        (
            &[0x30, 0x08, 0x00, 0x01, b't', 0x04, 0x01, 0x00, 0x01, 0x00],
            V5,
            DuplicateProperty,
        ),
        (&[0x36, 0x00], V311, BadQos),
        (&[0x30, 0x02, 0x00, 0x00], V311, EmptyTopic),
        (&[0x30, 0x03, 0x00, 0x01, b'#'], V311, WildcardInTopicName),
        (&[0x82, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00], V311, EmptyFilter),
        (&[0x82, 0x02, 0x00, 0x01], V311, NoFilters),
        (&[0x40, 0x02, 0x00, 0x00], V311, ZeroPacketId),
        (
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'x', 0x80],
            V311,
            BadSubscriptionOptions,
        ),
    ];
    let mut labels = std::collections::HashSet::new();
    for &(frame, version, kind) in cases {
        let e = decode_packet(frame, version).expect_err("malformed");
        assert_eq!(e, DecodeError::Malformed(kind), "{frame:?}");
        assert_eq!(e.reason_code(), reason::MALFORMED_PACKET);
        assert!(labels.insert(e.kind_label()));
    }
    // TooManyFilters (needs a big packet)
    let many = Subscribe {
        packet_id: 1,
        filters: vec![("f", SubscriptionOptions::qos(0)); 33],
    };
    let mut out = Vec::new();
    many.encode(V311, &mut out);
    let e = decode_packet(&out, V311).expect_err("too many");
    assert_eq!(e, DecodeError::Malformed(TooManyFilters));
    assert!(labels.insert(e.kind_label()));
    assert_eq!(labels.len(), 17);
}

#[test]
fn error_codes_and_labels() {
    let cases = [
        (DecodeError::Incomplete { needed: 1 }, 0x81, "incomplete"),
        (
            DecodeError::TooLarge {
                size_bytes: 10,
                max_bytes: 5,
            },
            0x95,
            "too_large",
        ),
        (
            DecodeError::UnsupportedProtocolVersion { level: 3 },
            0x84,
            "unsupported_protocol_version",
        ),
        (
            DecodeError::Malformed(MalformedKind::BadUtf8),
            0x81,
            "malformed_bad_utf8",
        ),
    ];
    for (e, code, label) in cases {
        assert_eq!((e.reason_code(), e.kind_label()), (code, label));
        assert!(!e.to_string().is_empty());
    }
    assert_eq!((V311.level(), V5.level()), (4, 5));
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn feed(buf: &[u8]) {
    for v in BOTH {
        match check_frame(buf, 4096) {
            Ok(h) if buf.len() >= h.total_len() => {
                let _ = decode_packet(&buf[..h.total_len()], v);
            }
            _ => {}
        }
        let _ = decode_packet(buf, v);
    }
}

#[test]
fn random_and_mutated_frames_never_panic() {
    let valid = encoded_samples();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut buf = Vec::with_capacity(256);
    for i in 0..200_000 {
        buf.clear();
        if i % 2 == 0 {
            // random: plausible first byte, small remaining length, random body
            let len = rng.below(48);
            buf.push(rng.next() as u8);
            buf.push(len as u8);
            buf.extend((0..len).map(|_| rng.next() as u8));
        } else {
            let (frame, _) = &valid[rng.below(valid.len())];
            buf.extend_from_slice(frame);
            for _ in 0..=rng.below(4) {
                let pos = rng.below(buf.len());
                match rng.below(4) {
                    0 => buf[pos] ^= 1 << rng.below(8),
                    1 => buf[pos] = rng.next() as u8,
                    2 => buf.truncate(pos.max(1)),
                    _ => buf.insert(pos, rng.next() as u8),
                }
            }
        }
        feed(&buf);
    }
}
