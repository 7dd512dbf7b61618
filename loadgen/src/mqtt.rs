//! Client-side MQTT framing (3.1.1 = protocol level 4, 5.0 = level 5).
//!
//! Owns: encoding of the few packets a device sends (CONNECT with an optional user
//! name and password, SUBSCRIBE, PINGREQ, PUBACK, DISCONNECT) and bounded decoding
//! of what a server sends (fixed header, CONNACK, PUBLISH, PINGRESP, SUBACK,
//! DISCONNECT).
//! Must never: panic, index out of bounds or allocate on bytes that came from the
//! server; do any I/O; keep state between calls.

/// Packet type nibbles (upper 4 bits of the first byte).
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const SUBACK: u8 = 9;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

/// MQTT 5 property identifiers we read from CONNACK.
const PROP_SERVER_KEEP_ALIVE: u8 = 0x13;

/// A decoded server packet; slices borrow from the input buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Connack {
        session_present: bool,
        code: u8,
        server_keepalive_s: Option<u16>,
    },
    Publish {
        qos: u8,
        packet_id: Option<u16>,
        topic: &'a [u8],
        payload: &'a [u8],
    },
    Pingresp,
    Suback {
        packet_id: u16,
    },
    Disconnect {
        code: u8,
    },
    /// Any other well-framed packet (type nibble); ignored by devices.
    Other(u8),
}

/// Why a frame could not be decoded; the connection should be closed.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum DecodeError {
    BadRemainingLength,
    TooLarge,
    Malformed,
}

/// Writes the MQTT variable byte integer `value` (must be < 268,435,456).
fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            break;
        }
    }
}

/// Reads a variable byte integer: Ok(Some((value, bytes_used))), Ok(None) when truncated.
pub fn get_varint(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(i) else { return Ok(None) };
        value |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::BadRemainingLength)
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    let len = s.len().min(u16::MAX as usize);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&s[..len]);
}

/// What a device presents in CONNECT besides its client id: a user name and a
/// password (a device token), both optional; 3.1.1 allows a password only with a
/// user name, so a password alone is sent with an empty user name.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    pub username: Option<&'a [u8]>,
    pub password: Option<&'a [u8]>,
}

/// Appends a CONNECT with clean start/session, no will, and the given credentials.
/// `protocol_level` is 4 (3.1.1) or 5.
pub fn encode_connect(out: &mut Vec<u8>, protocol_level: u8, client_id: &[u8], keepalive_s: u16, creds: Credentials) {
    let field = |s: &[u8]| 2 + s.len().min(u16::MAX as usize);
    let username = match (creds.username, creds.password) {
        (None, Some(_)) => Some(&b""[..]),
        (u, _) => u,
    };
    let mut body_len = 2 + 4 + 1 + 1 + 2 + field(client_id);
    body_len += username.map_or(0, field) + creds.password.map_or(0, field);
    if protocol_level == 5 {
        body_len += 1; // empty properties
    }
    let mut flags = 0x02; // clean session / clean start
    if username.is_some() {
        flags |= 0x80;
    }
    if creds.password.is_some() {
        flags |= 0x40;
    }
    out.push(0x10);
    put_varint(out, body_len);
    put_str(out, b"MQTT");
    out.push(protocol_level);
    out.push(flags);
    out.extend_from_slice(&keepalive_s.to_be_bytes());
    if protocol_level == 5 {
        out.push(0); // property length
    }
    put_str(out, client_id);
    if let Some(u) = username {
        put_str(out, u);
    }
    if let Some(p) = creds.password {
        put_str(out, p);
    }
}

/// Appends a SUBSCRIBE for one topic filter at `qos`.
pub fn encode_subscribe(out: &mut Vec<u8>, protocol_level: u8, packet_id: u16, filter: &[u8], qos: u8) {
    let props = usize::from(protocol_level == 5);
    let body_len = 2 + props + 2 + filter.len().min(u16::MAX as usize) + 1;
    out.push(0x82);
    put_varint(out, body_len);
    out.extend_from_slice(&packet_id.to_be_bytes());
    if protocol_level == 5 {
        out.push(0);
    }
    put_str(out, filter);
    out.push(qos & 3);
}

pub fn encode_pingreq(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xC0, 0x00]);
}

/// PUBACK with success; for MQTT 5 the short form (reason 0 implied) is valid.
pub fn encode_puback(out: &mut Vec<u8>, packet_id: u16) {
    out.extend_from_slice(&[0x40, 0x02]);
    out.extend_from_slice(&packet_id.to_be_bytes());
}

/// Normal DISCONNECT (reason 0 implied in MQTT 5 when the remaining length is 0).
pub fn encode_disconnect(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xE0, 0x00]);
}

fn be16(buf: &[u8], at: usize) -> Result<u16, DecodeError> {
    match buf.get(at..at + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(DecodeError::Malformed),
    }
}

/// A variable byte integer inside a packet body: (value, bytes_used). A bad or cut one is a
/// malformed packet (only the fixed header's is `BadRemainingLength`).
fn body_varint(buf: &[u8]) -> Result<(usize, usize), DecodeError> {
    match get_varint(buf) {
        Ok(Some(v)) => Ok(v),
        Ok(None) | Err(_) => Err(DecodeError::Malformed),
    }
}

/// Skips MQTT 5 properties at `body[at..]`; returns (properties slice, index after them).
fn props(body: &[u8], at: usize) -> Result<(&[u8], usize), DecodeError> {
    let rest = body.get(at..).ok_or(DecodeError::Malformed)?;
    let (len, used) = body_varint(rest)?;
    let start = at + used;
    let end = start.checked_add(len).ok_or(DecodeError::Malformed)?;
    let slice = body.get(start..end).ok_or(DecodeError::Malformed)?;
    Ok((slice, end))
}

/// Finds the Server Keep Alive property in a CONNACK property block, bounds-checked.
fn find_server_keepalive(mut p: &[u8]) -> Result<Option<u16>, DecodeError> {
    let mut found = None;
    while let Some(&id) = p.first() {
        let skip = match id {
            // one-byte properties
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            // two-byte integers
            0x13 | 0x21 | 0x22 | 0x23 => 2,
            // four-byte integers
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            // variable byte integer
            0x0B => body_varint(&p[1..])?.1,
            // strings / binary data
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => 2 + be16(p, 1)? as usize,
            // user property: two strings
            0x26 => {
                let a = be16(p, 1)? as usize;
                let b = be16(p, 3 + a)? as usize;
                4 + a + b
            }
            _ => return Err(DecodeError::Malformed),
        };
        if id == PROP_SERVER_KEEP_ALIVE {
            found = Some(be16(p, 1)?);
        }
        p = p.get(1 + skip..).ok_or(DecodeError::Malformed)?;
    }
    Ok(found)
}

/// Decodes one packet from the front of `buf`.
/// Ok(None) = need more bytes; Ok(Some((packet, consumed))) on success.
/// `v5` selects MQTT 5 layouts; frames whose remaining length exceeds
/// `max_frame_bytes` are rejected before buffering them.
pub fn decode(buf: &[u8], v5: bool, max_frame_bytes: usize) -> Result<Option<(Packet<'_>, usize)>, DecodeError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let Some((remaining, used)) = get_varint(&buf[1..])? else {
        return Ok(None);
    };
    if remaining > max_frame_bytes {
        return Err(DecodeError::TooLarge);
    }
    let header = 1 + used;
    let total = header + remaining;
    let Some(body) = buf.get(header..total) else {
        return Ok(None);
    };
    let kind = first >> 4;
    let flags = first & 0x0f;
    let packet = match kind {
        CONNACK => {
            if body.len() < 2 {
                return Err(DecodeError::Malformed);
            }
            let server_keepalive_s = if v5 && body.len() > 2 {
                let (p, _) = props(body, 2)?;
                find_server_keepalive(p)?
            } else {
                None
            };
            Packet::Connack {
                session_present: body[0] & 1 == 1,
                code: body[1],
                server_keepalive_s,
            }
        }
        PUBLISH => {
            let qos = (flags >> 1) & 3;
            if qos == 3 {
                return Err(DecodeError::Malformed);
            }
            let topic_len = be16(body, 0)? as usize;
            let topic = body.get(2..2 + topic_len).ok_or(DecodeError::Malformed)?;
            let mut at = 2 + topic_len;
            let packet_id = if qos > 0 {
                let id = be16(body, at)?;
                at += 2;
                Some(id)
            } else {
                None
            };
            if v5 {
                at = props(body, at)?.1;
            }
            let payload = body.get(at..).ok_or(DecodeError::Malformed)?;
            Packet::Publish {
                qos,
                packet_id,
                topic,
                payload,
            }
        }
        PINGRESP => Packet::Pingresp,
        SUBACK => Packet::Suback {
            packet_id: be16(body, 0)?,
        },
        DISCONNECT => Packet::Disconnect {
            code: body.first().copied().unwrap_or(0),
        },
        other => Packet::Other(other),
    };
    Ok(Some((packet, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_v4_layout() {
        let mut out = Vec::new();
        encode_connect(&mut out, 4, b"dev1", 60, Credentials::default());
        assert_eq!(
            out,
            [0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 4, b'd', b'e', b'v', b'1']
        );
    }

    #[test]
    fn connect_v5_has_empty_properties() {
        let mut out = Vec::new();
        encode_connect(&mut out, 5, b"a", 300, Credentials::default());
        assert_eq!(
            out,
            [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 1, 44, 0, 0, 1, b'a']
        );
    }

    #[test]
    fn connect_carries_username_and_password() {
        let mut out = Vec::new();
        let creds = Credentials {
            username: Some(b"u1"),
            password: Some(b"tok"),
        };
        encode_connect(&mut out, 4, b"d", 30, creds);
        assert_eq!(
            out,
            [
                0x10, 22, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 30, 0, 1, b'd', 0, 2, b'u', b'1', 0, 3, b't', b'o',
                b'k'
            ]
        );
        // v5: properties before the payload; a password alone gets an empty user name.
        let mut out = Vec::new();
        let creds = Credentials {
            username: None,
            password: Some(b"p"),
        };
        encode_connect(&mut out, 5, b"d", 30, creds);
        assert_eq!(
            out,
            [0x10, 19, 0, 4, b'M', b'Q', b'T', b'T', 5, 0xC2, 0, 30, 0, 0, 1, b'd', 0, 0, 0, 1, b'p']
        );
        assert_eq!(out.len() - 2, 19);
    }

    #[test]
    fn varint_roundtrip_and_limits() {
        for v in [0usize, 127, 128, 16_383, 16_384, 2_097_151, 268_435_455] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(get_varint(&out).unwrap(), Some((v, out.len())));
            assert_eq!(get_varint(&out[..out.len() - 1]).unwrap(), None);
        }
        assert_eq!(
            get_varint(&[0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(DecodeError::BadRemainingLength)
        );
    }

    #[test]
    fn small_encoders() {
        let mut out = Vec::new();
        encode_pingreq(&mut out);
        encode_puback(&mut out, 0x1234);
        encode_disconnect(&mut out);
        assert_eq!(out, [0xC0, 0, 0x40, 2, 0x12, 0x34, 0xE0, 0]);
        out.clear();
        encode_subscribe(&mut out, 4, 7, b"push/x", 1);
        assert_eq!(out, [0x82, 11, 0, 7, 0, 6, b'p', b'u', b's', b'h', b'/', b'x', 1]);
    }

    #[test]
    fn decode_connack_v4_and_v5() {
        let (p, n) = decode(&[0x20, 2, 0, 0], false, 1024).unwrap().unwrap();
        assert_eq!(
            (p, n),
            (
                Packet::Connack {
                    session_present: false,
                    code: 0,
                    server_keepalive_s: None
                },
                4
            )
        );
        // v5 with Server Keep Alive = 120 and a user property before it
        let bytes = [0x20, 13, 0, 0x89, 10, 0x26, 0, 1, b'k', 0, 1, b'v', 0x13, 0, 120];
        let (p, n) = decode(&bytes, true, 1024).unwrap().unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(
            p,
            Packet::Connack {
                session_present: false,
                code: 0x89,
                server_keepalive_s: Some(120)
            }
        );
        // v5 connack without properties at all is tolerated
        assert!(decode(&[0x20, 2, 1, 0], true, 1024).unwrap().is_some());
    }

    #[test]
    fn decode_publish_qos1_v4_v5() {
        let bytes = [0x32, 9, 0, 3, b'a', b'/', b'b', 0, 5, b'h', b'i'];
        let (p, n) = decode(&bytes, false, 1024).unwrap().unwrap();
        assert_eq!(n, 11);
        assert_eq!(
            p,
            Packet::Publish {
                qos: 1,
                packet_id: Some(5),
                topic: b"a/b",
                payload: b"hi"
            }
        );
        let bytes = [0x30, 6, 0, 1, b't', 0, b'x', b'y'];
        let (p, _) = decode(&bytes, true, 1024).unwrap().unwrap();
        assert_eq!(
            p,
            Packet::Publish {
                qos: 0,
                packet_id: None,
                topic: b"t",
                payload: b"xy"
            }
        );
    }

    #[test]
    fn decode_pingresp_disconnect_suback() {
        assert_eq!(decode(&[0xD0, 0], false, 8).unwrap().unwrap(), (Packet::Pingresp, 2));
        assert_eq!(
            decode(&[0xE0, 1, 0x89], true, 8).unwrap().unwrap(),
            (Packet::Disconnect { code: 0x89 }, 3)
        );
        assert_eq!(
            decode(&[0xE0, 0], true, 8).unwrap().unwrap(),
            (Packet::Disconnect { code: 0 }, 2)
        );
        assert_eq!(
            decode(&[0x90, 3, 0, 9, 1], false, 8).unwrap().unwrap(),
            (Packet::Suback { packet_id: 9 }, 5)
        );
    }

    #[test]
    fn truncated_input_needs_more() {
        let full = [0x32, 9, 0, 3, b'a', b'/', b'b', 0, 5, b'h', b'i'];
        for cut in 0..full.len() {
            assert_eq!(decode(&full[..cut], false, 1024), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn bad_varint_inside_a_body_is_malformed() {
        // Found by tests/fuzz (loadgen_mqtt): a CONNACK whose property length has five
        // continuation bytes was reported as a bad remaining length.
        let connack = [0x20, 7, 0, 0, 0xB1, 0xB1, 0xB1, 0xB1, 0x01];
        assert_eq!(decode(&connack, true, 64), Err(DecodeError::Malformed));
        let publish = [0x30, 8, 0, 1, b't', 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
        assert_eq!(decode(&publish, true, 64), Err(DecodeError::Malformed));
        // A Subscription Identifier property (0x0B) whose varint never ends.
        let connack = [0x20, 5, 0, 0, 2, 0x0B, 0x80];
        assert_eq!(decode(&connack, true, 64), Err(DecodeError::Malformed));
    }

    #[test]
    fn oversized_frame_rejected() {
        assert_eq!(
            decode(&[0x30, 0x80, 0x80, 0x01], false, 1000),
            Err(DecodeError::TooLarge)
        );
    }

    #[test]
    fn garbage_never_panics() {
        // Deterministic pseudo-random garbage through both decoders.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let mut buf = [0u8; 24];
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let len = (x % 25) as usize;
            let _ = decode(&buf[..len], false, 64);
            let _ = decode(&buf[..len], true, 64);
        }
        // Specific malformed cases
        assert_eq!(decode(&[0x36, 0], false, 64), Err(DecodeError::Malformed)); // qos 3
        assert_eq!(decode(&[0x32, 2, 0, 9], false, 64), Err(DecodeError::Malformed)); // topic overruns
        assert_eq!(decode(&[0x20, 1, 0], false, 64), Err(DecodeError::Malformed)); // short connack
        assert_eq!(decode(&[0x20, 4, 0, 0, 5, 0x13], true, 64), Err(DecodeError::Malformed)); // props overrun
        assert_eq!(decode(&[0x20, 4, 0, 0, 1, 0x7F], true, 64), Err(DecodeError::Malformed));
        // unknown prop
    }
}
