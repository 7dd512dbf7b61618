//! SUBSCRIBE and SUBACK (3.1.1 §3.8-3.9, 5.0 §3.8-3.9): packet id, v5 properties,
//! topic filters with subscription options, and the SUBACK reason-code list.
//!
//! Owns: SUBSCRIBE/SUBACK wire format, the filter count bound and option-bit rules.
//! Must never: decide whether a filter is authorized or supported (the gateway checks filter
//! syntax with `is_valid_topic_filter` and answers per filter in the SUBACK).

use super::fixed_header::write_frame;
use super::properties::{self as p, read_properties, write_empty, write_properties};
use super::puback::read_packet_id;
use super::wire::{Reader, write_u16, write_utf8};
use super::{DecodeError, MalformedKind, ProtocolVersion};

/// Upper bound on filters in one SUBSCRIBE / UNSUBSCRIBE (more -> Malformed(TooManyFilters)).
pub const MAX_FILTERS_PER_PACKET: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriptionOptions {
    pub qos: u8,
    /// v5 only (always false from v3.1.1).
    pub no_local: bool,
    /// v5 only.
    pub retain_as_published: bool,
    /// v5 only, 0..=2.
    pub retain_handling: u8,
}

impl SubscriptionOptions {
    pub fn qos(qos: u8) -> Self {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }
    }
}

/// SUBSCRIBE. The v5 Subscription Identifier and user properties are validated and skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe<'a> {
    pub packet_id: u16,
    pub filters: Vec<(&'a str, SubscriptionOptions)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubAck<'a> {
    pub packet_id: u16,
    /// One per filter. v3.1.1: 0, 1, 2 or 0x80. The caller passes the right codes per version.
    pub reason_codes: &'a [u8],
}

fn malformed(kind: MalformedKind) -> DecodeError {
    DecodeError::Malformed(kind)
}

/// Topic filter syntax (spec 4.7): non-empty, '#' only as the whole last level, '+' only as a
/// whole level. No U+0000 (already guaranteed by decoding).
pub fn is_valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        let ok = match level {
            "#" => last,
            "+" => true,
            l => !l.contains(['+', '#']),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Reads a non-empty topic filter; shared with UNSUBSCRIBE.
pub(super) fn read_filter<'a>(r: &mut Reader<'a>) -> Result<&'a str, DecodeError> {
    let f = r.utf8()?;
    if f.is_empty() {
        return Err(malformed(MalformedKind::EmptyFilter));
    }
    Ok(f)
}

pub fn decode_subscribe(body: &[u8], version: ProtocolVersion) -> Result<Subscribe<'_>, DecodeError> {
    let v5 = version == ProtocolVersion::V5;
    let mut r = Reader::new(body);
    let packet_id = read_packet_id(&mut r)?;
    if v5 {
        read_properties(&mut r, &[p::SUBSCRIPTION_IDENTIFIER, p::USER_PROPERTY], &[], |_, _| {
            Ok(())
        })?;
    }
    if r.is_empty() {
        return Err(malformed(MalformedKind::NoFilters));
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        if filters.len() == MAX_FILTERS_PER_PACKET {
            return Err(malformed(MalformedKind::TooManyFilters));
        }
        let filter = read_filter(&mut r)?;
        let o = r.u8()?;
        let reserved = if v5 { 0xC0 } else { 0xFC };
        if o & reserved != 0 || (o >> 4) & 0x03 == 3 {
            return Err(malformed(MalformedKind::BadSubscriptionOptions));
        }
        if o & 0x03 == 3 {
            return Err(malformed(MalformedKind::BadQos));
        }
        let opts = SubscriptionOptions {
            qos: o & 0x03,
            no_local: o & 0x04 != 0,
            retain_as_published: o & 0x08 != 0,
            retain_handling: (o >> 4) & 0x03,
        };
        filters.push((filter, opts));
    }
    Ok(Subscribe { packet_id, filters })
}

pub fn decode_suback(body: &[u8], version: ProtocolVersion) -> Result<SubAck<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let packet_id = read_packet_id(&mut r)?;
    match version {
        ProtocolVersion::V5 => read_properties(&mut r, &[p::REASON_STRING, p::USER_PROPERTY], &[], |_, _| Ok(()))?,
        ProtocolVersion::V311 => {}
    }
    let reason_codes = r.rest();
    if reason_codes.is_empty() {
        return Err(malformed(MalformedKind::Truncated));
    }
    if version == ProtocolVersion::V311 && reason_codes.iter().any(|&c| c > 2 && c != 0x80) {
        return Err(malformed(MalformedKind::BadQos));
    }
    Ok(SubAck {
        packet_id,
        reason_codes,
    })
}

impl Subscribe<'_> {
    /// Appends the whole SUBSCRIBE; returns bytes appended. v3.1.1 writes only the QoS bits.
    pub fn encode(&self, version: ProtocolVersion, out: &mut Vec<u8>) -> usize {
        let v5 = version == ProtocolVersion::V5;
        write_frame(out, 0x82, |o| {
            write_u16(o, self.packet_id);
            if v5 {
                write_empty(o);
            }
            for (filter, opts) in &self.filters {
                write_utf8(o, filter);
                let mut b = opts.qos & 0x03;
                if v5 {
                    b |= u8::from(opts.no_local) << 2
                        | u8::from(opts.retain_as_published) << 3
                        | (opts.retain_handling & 0x03) << 4;
                }
                o.push(b);
            }
        })
    }
}

impl SubAck<'_> {
    /// Appends the whole SUBACK; returns bytes appended (v5 with an empty property block).
    pub fn encode(&self, version: ProtocolVersion, out: &mut Vec<u8>) -> usize {
        write_frame(out, 0x90, |o| {
            write_u16(o, self.packet_id);
            if version == ProtocolVersion::V5 {
                write_properties(o, |_| {});
            }
            o.extend_from_slice(self.reason_codes);
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
        let rich = SubscriptionOptions {
            qos: 2,
            no_local: true,
            retain_as_published: true,
            retain_handling: 2,
        };
        let sub = Subscribe {
            packet_id: 10,
            filters: vec![("a/+", SubscriptionOptions::qos(1)), ("#", SubscriptionOptions::qos(0))],
        };
        for v in [V311, V5] {
            let pk = Packet::Subscribe(sub.clone());
            assert_eq!(decode_packet(&enc(&pk, v), v), Ok(pk));
            let ack = Packet::SubAck(SubAck {
                packet_id: 10,
                reason_codes: &[1, 0x80],
            });
            assert_eq!(decode_packet(&enc(&ack, v), v), Ok(ack));
        }
        let pk = Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![("x", rich)],
        });
        assert_eq!(decode_packet(&enc(&pk, V5), V5), Ok(pk));
        let ack = Packet::SubAck(SubAck {
            packet_id: 1,
            reason_codes: &[0x8F, 0x97],
        });
        assert_eq!(decode_packet(&enc(&ack, V5), V5), Ok(ack));
    }

    #[test]
    fn known_bytes() {
        let sub = [0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'b', 0x01];
        let expect = Subscribe {
            packet_id: 1,
            filters: vec![("a/b", SubscriptionOptions::qos(1))],
        };
        assert_eq!(decode_packet(&sub, V311), Ok(Packet::Subscribe(expect.clone())));
        assert_eq!(enc(&Packet::Subscribe(expect), V311), sub);
        let ack = [0x90, 0x03, 0x00, 0x01, 0x01];
        assert_eq!(
            enc(
                &Packet::SubAck(SubAck {
                    packet_id: 1,
                    reason_codes: &[1]
                }),
                V311
            ),
            ack
        );
        // v5 SUBSCRIBE with a subscription identifier (skipped)
        let sub5 = [0x82, 0x09, 0x00, 0x02, 0x02, 0x0B, 0x05, 0x00, 0x01, b't', 0x00];
        assert_eq!(
            decode_packet(&sub5, V5),
            Ok(Packet::Subscribe(Subscribe {
                packet_id: 2,
                filters: vec![("t", SubscriptionOptions::qos(0))]
            }))
        );
    }

    #[test]
    fn malformed() {
        let m = |k| Err(DecodeError::Malformed(k));
        assert_eq!(
            decode_packet(&[0x80, 0x06, 0, 1, 0, 1, b't', 0], V311),
            m(MalformedKind::BadFixedHeaderFlags)
        );
        assert_eq!(decode_packet(&[0x82, 0x02, 0, 1], V311), m(MalformedKind::NoFilters));
        assert_eq!(decode_packet(&[0x82, 0x03, 0, 1, 0], V5), m(MalformedKind::NoFilters));
        assert_eq!(
            decode_packet(&[0x82, 0x05, 0, 1, 0, 0, 0], V311),
            m(MalformedKind::EmptyFilter)
        );
        assert_eq!(
            decode_packet(&[0x82, 0x06, 0, 0, 0, 1, b't', 0], V311),
            m(MalformedKind::ZeroPacketId)
        );
        assert_eq!(
            decode_packet(&[0x82, 0x06, 0, 1, 0, 1, b't', 3], V311),
            m(MalformedKind::BadQos)
        );
        assert_eq!(
            decode_packet(&[0x82, 0x06, 0, 1, 0, 1, b't', 0x04], V311),
            m(MalformedKind::BadSubscriptionOptions)
        );
        assert_eq!(
            decode_packet(&[0x82, 0x07, 0, 1, 0, 0, 1, b't', 0x30], V5),
            m(MalformedKind::BadSubscriptionOptions)
        );
        assert_eq!(
            decode_packet(&[0x82, 0x07, 0, 1, 0, 0, 1, b't', 0x40], V5),
            m(MalformedKind::BadSubscriptionOptions)
        );
        assert_eq!(
            decode_packet(&[0x82, 0x05, 0, 1, 0, 1, b't'], V311),
            m(MalformedKind::Truncated)
        );
        assert_eq!(
            decode_packet(&[0x82, 0x07, 0, 1, 2, 0x0B, 0, b't', 0], V5),
            m(MalformedKind::BadProperty)
        );
        assert_eq!(decode_packet(&[0x90, 0x02, 0, 1], V311), m(MalformedKind::Truncated));
        assert_eq!(decode_packet(&[0x90, 0x03, 0, 1, 0x8F], V311), m(MalformedKind::BadQos));
    }

    #[test]
    fn filter_bound() {
        let mk = |n: usize| {
            let filters = (0..n).map(|_| ("f", SubscriptionOptions::qos(0))).collect();
            enc(&Packet::Subscribe(Subscribe { packet_id: 1, filters }), V5)
        };
        assert!(decode_packet(&mk(MAX_FILTERS_PER_PACKET), V5).is_ok());
        assert_eq!(
            decode_packet(&mk(MAX_FILTERS_PER_PACKET + 1), V5),
            Err(DecodeError::Malformed(MalformedKind::TooManyFilters))
        );
    }

    #[test]
    fn filter_syntax() {
        for ok in ["#", "+", "a/b", "a/+/c", "a/#", "+/+", "/", "sport/tennis/#", "$SYS/#"] {
            assert!(is_valid_topic_filter(ok), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+", "a/b+/c", "#/a", "##"] {
            assert!(!is_valid_topic_filter(bad), "{bad}");
        }
    }
}
