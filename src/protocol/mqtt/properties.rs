//! MQTT 5 properties (spec 2.2.2): identifiers, value types, reading a property block with
//! duplicate / allowed-id / value-range checks, and writing single properties.
//!
//! Owns: the property block format and the per-identifier rules that do not depend on the
//! packet (type, range, single-valued-ness). Must never: know which struct field a property
//! lands in (packet files do that), or accept an id the caller did not allow.

use super::fixed_header::{MAX_VARINT, write_len_prefixed, write_varint};
use super::wire::{Reader, write_binary, write_u16, write_u32, write_utf8};
use super::{DecodeError, MalformedKind};

pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub const CONTENT_TYPE: u8 = 0x03;
pub const RESPONSE_TOPIC: u8 = 0x08;
pub const CORRELATION_DATA: u8 = 0x09;
pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub const SERVER_KEEP_ALIVE: u8 = 0x13;
pub const AUTHENTICATION_METHOD: u8 = 0x15;
pub const AUTHENTICATION_DATA: u8 = 0x16;
pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub const WILL_DELAY_INTERVAL: u8 = 0x18;
pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub const RESPONSE_INFORMATION: u8 = 0x1A;
pub const SERVER_REFERENCE: u8 = 0x1C;
pub const REASON_STRING: u8 = 0x1F;
pub const RECEIVE_MAXIMUM: u8 = 0x21;
pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub const TOPIC_ALIAS: u8 = 0x23;
pub const MAXIMUM_QOS: u8 = 0x24;
pub const RETAIN_AVAILABLE: u8 = 0x25;
pub const USER_PROPERTY: u8 = 0x26;
pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// A decoded property value, borrowed from the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropValue<'a> {
    Byte(u8),
    U16(u16),
    U32(u32),
    Varint(u32),
    Str(&'a str),
    Bin(&'a [u8]),
    Pair(&'a str, &'a str),
}

impl PropValue<'_> {
    /// Integer value of a numeric property (0 for strings/binary).
    pub fn num(&self) -> u32 {
        match *self {
            PropValue::Byte(v) => u32::from(v),
            PropValue::U16(v) => u32::from(v),
            PropValue::U32(v) | PropValue::Varint(v) => v,
            _ => 0,
        }
    }
}

const BAD: DecodeError = DecodeError::Malformed(MalformedKind::BadProperty);

fn read_value<'a>(id: u8, r: &mut Reader<'a>) -> Result<PropValue<'a>, DecodeError> {
    Ok(match id {
        PAYLOAD_FORMAT_INDICATOR
        | REQUEST_PROBLEM_INFORMATION
        | REQUEST_RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => {
            let v = r.u8()?;
            // all single-byte properties are booleans / 0-1 values
            if v > 1 {
                return Err(BAD);
            }
            PropValue::Byte(v)
        }
        SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => {
            let v = r.u16()?;
            if v == 0 && (id == RECEIVE_MAXIMUM || id == TOPIC_ALIAS) {
                return Err(BAD);
            }
            PropValue::U16(v)
        }
        MESSAGE_EXPIRY_INTERVAL | SESSION_EXPIRY_INTERVAL | WILL_DELAY_INTERVAL | MAXIMUM_PACKET_SIZE => {
            let v = r.u32()?;
            if v == 0 && id == MAXIMUM_PACKET_SIZE {
                return Err(BAD);
            }
            PropValue::U32(v)
        }
        SUBSCRIPTION_IDENTIFIER => {
            let v = r.varint(MalformedKind::BadProperty)?;
            if v == 0 {
                return Err(BAD);
            }
            PropValue::Varint(v)
        }
        CONTENT_TYPE
        | RESPONSE_TOPIC
        | ASSIGNED_CLIENT_IDENTIFIER
        | AUTHENTICATION_METHOD
        | RESPONSE_INFORMATION
        | SERVER_REFERENCE
        | REASON_STRING => PropValue::Str(r.utf8()?),
        CORRELATION_DATA | AUTHENTICATION_DATA => PropValue::Bin(r.binary()?),
        USER_PROPERTY => PropValue::Pair(r.utf8()?, r.utf8()?),
        _ => return Err(BAD),
    })
}

/// Reads a property block (varint length + properties) from `r` and calls `f` for each
/// property. Ids not in `allowed` -> BadProperty; a second occurrence of an id not in `multi`
/// (User Property is always multi) -> DuplicateProperty; a length that overruns the packet or
/// a value that overruns the block -> BadProperty.
pub fn read_properties<'a>(
    r: &mut Reader<'a>,
    allowed: &[u8],
    multi: &[u8],
    mut f: impl FnMut(u8, PropValue<'a>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = r.varint(MalformedKind::BadProperty)? as usize;
    if len > r.remaining() {
        return Err(BAD);
    }
    let mut block = Reader::new(r.take(len)?);
    let mut seen: u64 = 0;
    while !block.is_empty() {
        let id = block.varint(MalformedKind::BadProperty)?;
        let id = u8::try_from(id).map_err(|_| BAD)?;
        if !allowed.contains(&id) || id > 63 {
            return Err(BAD);
        }
        let value = read_value(id, &mut block).map_err(|e| match e {
            DecodeError::Malformed(MalformedKind::Truncated) => BAD,
            other => other,
        })?;
        let bit = 1u64 << id;
        if seen & bit != 0 && id != USER_PROPERTY && !multi.contains(&id) {
            return Err(DecodeError::Malformed(MalformedKind::DuplicateProperty));
        }
        seen |= bit;
        f(id, value)?;
    }
    Ok(())
}

/// Writes a property block: varint length followed by what `body` appends.
pub fn write_properties(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    write_len_prefixed(out, body);
}

/// An empty property block (one 0x00 byte).
pub fn write_empty(out: &mut Vec<u8>) {
    out.push(0);
}

pub fn put_byte(out: &mut Vec<u8>, id: u8, v: Option<u8>) {
    if let Some(v) = v {
        out.extend_from_slice(&[id, v]);
    }
}

pub fn put_bool(out: &mut Vec<u8>, id: u8, v: Option<bool>) {
    put_byte(out, id, v.map(u8::from));
}

pub fn put_u16(out: &mut Vec<u8>, id: u8, v: Option<u16>) {
    if let Some(v) = v {
        out.push(id);
        write_u16(out, v);
    }
}

pub fn put_u32(out: &mut Vec<u8>, id: u8, v: Option<u32>) {
    if let Some(v) = v {
        out.push(id);
        write_u32(out, v);
    }
}

// No encoded packet carries a varint property yet (subscription ids are not encoded).
#[allow(dead_code)]
pub fn put_varint(out: &mut Vec<u8>, id: u8, v: Option<u32>) {
    if let Some(v) = v {
        out.push(id);
        write_varint(out, v.min(MAX_VARINT));
    }
}

pub fn put_str(out: &mut Vec<u8>, id: u8, v: Option<&str>) {
    if let Some(v) = v {
        out.push(id);
        write_utf8(out, v);
    }
}

pub fn put_bin(out: &mut Vec<u8>, id: u8, v: Option<&[u8]>) {
    if let Some(v) = v {
        out.push(id);
        write_binary(out, v);
    }
}

// No encoded packet carries user properties yet; kept so the writer set is complete.
#[allow(dead_code)]
pub fn put_pair(out: &mut Vec<u8>, id: u8, k: &str, v: &str) {
    out.push(id);
    write_utf8(out, k);
    write_utf8(out, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect<'a>(buf: &'a [u8], allowed: &[u8], multi: &[u8]) -> Result<Vec<(u8, PropValue<'a>)>, DecodeError> {
        let mut v = Vec::new();
        let mut r = Reader::new(buf);
        read_properties(&mut r, allowed, multi, |id, p| {
            v.push((id, p));
            Ok(())
        })?;
        r.finish()?;
        Ok(v)
    }

    const ALL: &[u8] = &[0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x11, 0x13, 0x21, 0x26, 0x27];

    #[test]
    fn round_trip_all_types() {
        let mut out = Vec::new();
        write_properties(&mut out, |o| {
            put_byte(o, PAYLOAD_FORMAT_INDICATOR, Some(1));
            put_u16(o, SERVER_KEEP_ALIVE, Some(300));
            put_u32(o, SESSION_EXPIRY_INTERVAL, Some(70_000));
            put_varint(o, SUBSCRIPTION_IDENTIFIER, Some(200));
            put_str(o, CONTENT_TYPE, Some("text/plain"));
            put_bin(o, CORRELATION_DATA, Some(&[1, 2, 3]));
            put_pair(o, USER_PROPERTY, "k", "v");
            put_pair(o, USER_PROPERTY, "k", "w");
            put_u32(o, MESSAGE_EXPIRY_INTERVAL, None);
        });
        let props = collect(&out, ALL, &[]).expect("valid");
        assert_eq!(
            props,
            vec![
                (0x01, PropValue::Byte(1)),
                (0x13, PropValue::U16(300)),
                (0x11, PropValue::U32(70_000)),
                (0x0B, PropValue::Varint(200)),
                (0x03, PropValue::Str("text/plain")),
                (0x09, PropValue::Bin(&[1, 2, 3])),
                (0x26, PropValue::Pair("k", "v")),
                (0x26, PropValue::Pair("k", "w")),
            ]
        );
        assert_eq!(props[2].1.num(), 70_000);
    }

    #[test]
    fn empty_block() {
        assert_eq!(collect(&[0], ALL, &[]), Ok(vec![]));
    }

    #[test]
    fn duplicates() {
        let dup = [4, 0x01, 0, 0x01, 1];
        assert_eq!(
            collect(&dup, ALL, &[]),
            Err(DecodeError::Malformed(MalformedKind::DuplicateProperty))
        );
        let subs = [4, 0x0B, 1, 0x0B, 2];
        assert_eq!(
            collect(&subs, ALL, &[]),
            Err(DecodeError::Malformed(MalformedKind::DuplicateProperty))
        );
        assert!(collect(&subs, ALL, &[SUBSCRIPTION_IDENTIFIER]).is_ok());
    }

    #[test]
    fn bad_properties() {
        let bad = Err(DecodeError::Malformed(MalformedKind::BadProperty));
        assert_eq!(collect(&[2, 0x12, 0], ALL, &[]), bad, "id not allowed");
        assert_eq!(collect(&[2, 0x7F, 0], &[0x7F], &[]), bad, "unknown id");
        assert_eq!(collect(&[5, 0x01, 0], ALL, &[]), bad, "length overruns packet");
        assert_eq!(collect(&[2, 0x11, 0], ALL, &[]), bad, "value overruns block");
        assert_eq!(collect(&[2, 0x01, 2], ALL, &[]), bad, "bool out of range");
        assert_eq!(collect(&[3, 0x21, 0, 0], ALL, &[]), bad, "receive maximum 0");
        assert_eq!(collect(&[5, 0x27, 0, 0, 0, 0], ALL, &[]), bad, "maximum packet size 0");
        assert_eq!(collect(&[2, 0x0B, 0], ALL, &[]), bad, "subscription id 0");
        assert_eq!(collect(&[0x80, 0x80, 0x80, 0x80, 0x01], ALL, &[]), bad, "5-byte length");
        assert_eq!(collect(&[2, 0x80, 0x01], ALL, &[]), bad, "id > 127");
        assert_eq!(
            collect(&[4, 0x03, 0, 1, 0xFF], ALL, &[]),
            Err(DecodeError::Malformed(MalformedKind::BadUtf8)),
            "string property must be UTF-8"
        );
    }
}
