//! Fixed header: the variable byte integer (read/write), `check_frame` (framing and
//! early size rejection) and `write_frame` (prefixing an encoded body with its header).
//!
//! Owns: nothing but the first 2..=5 bytes of every packet.
//! Must never: look at the packet body, allocate on the read path, or panic on any input.

use super::{DecodeError, MalformedKind};

/// Largest value a variable byte integer can carry (4 bytes).
pub const MAX_VARINT: u32 = 268_435_455;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FrameHeader {
    /// High nibble of the first byte, 1..=15.
    pub packet_type: u8,
    /// Low nibble of the first byte.
    pub flags: u8,
    pub remaining_len: u32,
    /// 2..=5
    pub header_len: u8,
}

impl FrameHeader {
    /// Whole packet size: fixed header + remaining length.
    pub fn total_len(&self) -> usize {
        self.header_len as usize + self.remaining_len as usize
    }
}

/// Why a variable byte integer could not be read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VarintError {
    /// The buffer ended inside the integer.
    Incomplete,
    /// More than 4 bytes.
    TooLong,
}

/// Reads a variable byte integer from the start of `buf`: `(value, bytes_used)`.
pub fn read_varint(buf: &[u8]) -> Result<(u32, usize), VarintError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Err(VarintError::Incomplete);
        };
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(VarintError::TooLong)
}

/// Bytes `write_varint` uses for `value`.
pub fn varint_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends `value` as a variable byte integer. Values above `MAX_VARINT` are a caller bug.
pub fn write_varint(out: &mut Vec<u8>, value: u32) -> usize {
    let (buf, n) = varint_bytes(value);
    out.extend_from_slice(&buf[..n]);
    n
}

fn varint_bytes(value: u32) -> ([u8; 4], usize) {
    debug_assert!(value <= MAX_VARINT, "varint {value} too large");
    let mut v = value.min(MAX_VARINT);
    let mut buf = [0u8; 4];
    let mut n = 0;
    loop {
        let mut b = (v & 0x7F) as u8;
        v >>= 7;
        if v != 0 {
            b |= 0x80;
        }
        buf[n] = b;
        n += 1;
        if v == 0 || n == 4 {
            return (buf, n);
        }
    }
}

/// Reads only the fixed header at the start of `buf`. Rejects an oversize packet from the
/// header alone: total_len > max_packet_bytes -> TooLarge. Err(Incomplete{needed}) if the
/// fixed header itself is not complete. Does NOT require the body to be present.
/// Packet type 0 (reserved) -> UnsupportedPacket. A remaining-length varint longer than
/// 4 bytes -> Malformed(BadRemainingLength).
pub fn check_frame(buf: &[u8], max_packet_bytes: u32) -> Result<FrameHeader, DecodeError> {
    let Some(&first) = buf.first() else {
        return Err(DecodeError::Incomplete { needed: 2 });
    };
    let packet_type = first >> 4;
    if packet_type == 0 {
        return Err(DecodeError::UnsupportedPacket { packet_type });
    }
    let (remaining_len, used) = match read_varint(&buf[1..]) {
        Ok(v) => v,
        Err(VarintError::Incomplete) => return Err(DecodeError::Incomplete { needed: 1 }),
        Err(VarintError::TooLong) => {
            return Err(DecodeError::Malformed(MalformedKind::BadRemainingLength));
        }
    };
    let header = FrameHeader {
        packet_type,
        flags: first & 0x0F,
        remaining_len,
        header_len: 1 + used as u8,
    };
    let size_bytes = header.total_len() as u64;
    if size_bytes > u64::from(max_packet_bytes) {
        return Err(DecodeError::TooLarge {
            size_bytes,
            max_bytes: max_packet_bytes,
        });
    }
    Ok(header)
}

/// Appends a whole packet: fixed header `first_byte` + remaining length, then the body written
/// by `body`. Returns the bytes appended. The body is written in place and the header is
/// spliced in front of it (one memmove of the body).
pub fn write_frame(out: &mut Vec<u8>, first_byte: u8, body: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = out.len();
    body(out);
    let body_len = out.len() - start;
    debug_assert!(body_len <= MAX_VARINT as usize, "packet body too large");
    let (len_bytes, n) = varint_bytes(u32::try_from(body_len).unwrap_or(MAX_VARINT));
    let mut header = [first_byte, 0, 0, 0, 0];
    header[1..=n].copy_from_slice(&len_bytes[..n]);
    out.splice(start..start, header[..=n].iter().copied());
    out.len() - start
}

/// Writes a varint length prefix in front of whatever `body` appends (used for property blocks).
pub fn write_len_prefixed(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    body(out);
    let len = out.len() - start;
    let (len_bytes, n) = varint_bytes(u32::try_from(len).unwrap_or(MAX_VARINT));
    out.splice(start..start, len_bytes[..n].iter().copied());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let n = write_varint(&mut out, v);
        assert_eq!(n, out.len());
        assert_eq!(n, varint_len(v));
        out
    }

    #[test]
    fn varint_boundaries() {
        for (v, bytes) in [
            (0u32, vec![0x00]),
            (127, vec![0x7F]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xFF, 0x7F]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (2_097_151, vec![0xFF, 0xFF, 0x7F]),
            (2_097_152, vec![0x80, 0x80, 0x80, 0x01]),
            (268_435_455, vec![0xFF, 0xFF, 0xFF, 0x7F]),
        ] {
            assert_eq!(enc(v), bytes, "encode {v}");
            assert_eq!(read_varint(&bytes), Ok((v, bytes.len())), "decode {v}");
        }
    }

    #[test]
    fn varint_errors() {
        assert_eq!(read_varint(&[]), Err(VarintError::Incomplete));
        assert_eq!(read_varint(&[0x80, 0x80]), Err(VarintError::Incomplete));
        assert_eq!(read_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]), Err(VarintError::TooLong));
    }

    #[test]
    fn check_frame_incomplete() {
        assert_eq!(check_frame(&[], 100), Err(DecodeError::Incomplete { needed: 2 }));
        assert_eq!(check_frame(&[0x30], 100), Err(DecodeError::Incomplete { needed: 1 }));
        assert_eq!(
            check_frame(&[0x30, 0x80], 1000),
            Err(DecodeError::Incomplete { needed: 1 })
        );
        assert_eq!(
            check_frame(&[0x30, 0x80, 0x80, 0x80], u32::MAX),
            Err(DecodeError::Incomplete { needed: 1 })
        );
    }

    #[test]
    fn check_frame_body_not_required() {
        let h = check_frame(&[0x32, 0x80, 0x01], 1000).expect("valid header");
        assert_eq!(
            h,
            FrameHeader {
                packet_type: 3,
                flags: 2,
                remaining_len: 128,
                header_len: 3
            }
        );
        assert_eq!(h.total_len(), 131);
    }

    #[test]
    fn check_frame_boundaries() {
        for (len_bytes, rl, hl) in [
            (vec![0x7F], 127u32, 2u8),
            (vec![0x80, 0x01], 128, 3),
            (vec![0xFF, 0x7F], 16_383, 3),
            (vec![0x80, 0x80, 0x01], 16_384, 4),
            (vec![0xFF, 0xFF, 0xFF, 0x7F], 268_435_455, 5),
        ] {
            let mut buf = vec![0x30];
            buf.extend_from_slice(&len_bytes);
            let h = check_frame(&buf, u32::MAX).expect("valid header");
            assert_eq!((h.remaining_len, h.header_len), (rl, hl));
            // exactly at the limit is accepted, one below is rejected
            let total = rl + u32::from(hl);
            assert!(check_frame(&buf, total).is_ok());
            assert_eq!(
                check_frame(&buf, total - 1),
                Err(DecodeError::TooLarge {
                    size_bytes: u64::from(total),
                    max_bytes: total - 1
                })
            );
        }
    }

    #[test]
    fn check_frame_too_large_from_header_alone() {
        // 1 MiB publish announced, only 4 bytes present
        let buf = [0x30, 0x80, 0x80, 0x40];
        assert_eq!(
            check_frame(&buf, 65_536),
            Err(DecodeError::TooLarge {
                size_bytes: 1_048_576 + 4,
                max_bytes: 65_536
            })
        );
    }

    #[test]
    fn check_frame_rejects_five_byte_varint() {
        let buf = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F];
        assert_eq!(
            check_frame(&buf, u32::MAX),
            Err(DecodeError::Malformed(MalformedKind::BadRemainingLength))
        );
        // also rejected before the 5th byte arrives
        assert_eq!(
            check_frame(&buf[..5], u32::MAX),
            Err(DecodeError::Malformed(MalformedKind::BadRemainingLength))
        );
    }

    #[test]
    fn check_frame_reserved_type_zero() {
        assert_eq!(
            check_frame(&[0x00, 0x00], 100),
            Err(DecodeError::UnsupportedPacket { packet_type: 0 })
        );
    }

    #[test]
    fn write_frame_header_sizes() {
        for body_len in [0usize, 1, 127, 128, 16_383, 16_384] {
            let mut out = vec![0xAA];
            let n = write_frame(&mut out, 0x30, |o| o.resize(o.len() + body_len, 7));
            assert_eq!(n, out.len() - 1);
            let h = check_frame(&out[1..], u32::MAX).expect("valid header");
            assert_eq!(h.remaining_len as usize, body_len);
            assert_eq!(h.total_len(), n);
            assert_eq!(out[0], 0xAA);
        }
    }
}
