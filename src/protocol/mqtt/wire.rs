//! Wire primitives shared by every packet: a bounds-checked zero-copy `Reader` over a packet
//! body and the matching writers (u16, UTF-8 string, binary data).
//!
//! Owns: the MQTT data representations of spec section 1.5 (except the varint, which lives in
//! `fixed_header`). Must never: panic or index out of bounds on peer data, allocate on read,
//! or accept a UTF-8 string that is invalid or contains U+0000.

use super::fixed_header::{VarintError, read_varint};
use super::{DecodeError, MalformedKind};

/// Cursor over a packet body. Every read that runs past the end yields `Malformed(Truncated)`.
#[derive(Clone, Copy, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

const TRUNCATED: DecodeError = DecodeError::Malformed(MalformedKind::Truncated);

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(TRUNCATED);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Variable byte integer; a 5+ byte encoding is reported as `too_long`.
    pub fn varint(&mut self, too_long: MalformedKind) -> Result<u32, DecodeError> {
        match read_varint(self.buf) {
            Ok((v, n)) => {
                self.buf = &self.buf[n..];
                Ok(v)
            }
            Err(VarintError::Incomplete) => Err(TRUNCATED),
            Err(VarintError::TooLong) => Err(DecodeError::Malformed(too_long)),
        }
    }

    /// Two-byte length prefixed binary data.
    pub fn binary(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()?;
        self.take(n as usize)
    }

    /// Two-byte length prefixed UTF-8 string: valid UTF-8, no U+0000.
    pub fn utf8(&mut self) -> Result<&'a str, DecodeError> {
        let bytes = self.binary()?;
        let s = core::str::from_utf8(bytes).map_err(|_| DecodeError::Malformed(MalformedKind::BadUtf8))?;
        if s.contains('\0') {
            return Err(DecodeError::Malformed(MalformedKind::BadUtf8));
        }
        Ok(s)
    }

    /// Fails with TrailingBytes unless everything was consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(MalformedKind::TrailingBytes))
        }
    }
}

pub fn write_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub fn write_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Two-byte length prefixed binary data. Over 65535 bytes is a caller bug (truncated in release).
pub fn write_binary(out: &mut Vec<u8>, data: &[u8]) {
    debug_assert!(
        data.len() <= u16::MAX as usize,
        "binary/string field longer than 65535 bytes"
    );
    let n = data.len().min(u16::MAX as usize);
    write_u16(out, n as u16);
    out.extend_from_slice(&data[..n]);
}

pub fn write_utf8(out: &mut Vec<u8>, s: &str) {
    write_binary(out, s.as_bytes());
}

/// True if `topic` contains a wildcard character ('+' or '#').
pub fn has_wildcard(topic: &str) -> bool {
    topic.bytes().any(|b| b == b'+' || b == b'#')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_primitives() {
        let buf = [
            0x01, 0x02, 0x00, 0x00, 0x01, 0x00, 0x80, 0x01, 0x00, 0x02, b'h', b'i', 9,
        ];
        let mut r = Reader::new(&buf);
        assert_eq!(r.u16(), Ok(0x0102));
        assert_eq!(r.u32(), Ok(0x100));
        assert_eq!(r.varint(MalformedKind::BadProperty), Ok(128));
        assert_eq!(r.utf8(), Ok("hi"));
        assert_eq!(r.finish(), Err(DecodeError::Malformed(MalformedKind::TrailingBytes)));
        assert_eq!(r.u8(), Ok(9));
        assert_eq!(r.finish(), Ok(()));
        assert_eq!(r.u8(), Err(TRUNCATED));
    }

    #[test]
    fn utf8_rules() {
        let bad = DecodeError::Malformed(MalformedKind::BadUtf8);
        assert_eq!(Reader::new(&[0, 2, 0xC3, 0x28]).utf8(), Err(bad));
        assert_eq!(Reader::new(&[0, 3, b'a', 0, b'b']).utf8(), Err(bad));
        // encoded surrogate U+D800 is invalid UTF-8
        assert_eq!(Reader::new(&[0, 3, 0xED, 0xA0, 0x80]).utf8(), Err(bad));
        assert_eq!(Reader::new(&[0, 3, b'a']).utf8(), Err(TRUNCATED));
        assert_eq!(Reader::new(&[0, 2, 0xC3, 0xA9]).utf8(), Ok("é"));
    }

    #[test]
    fn writes_primitives() {
        let mut out = Vec::new();
        write_utf8(&mut out, "ab");
        write_u16(&mut out, 0x0304);
        write_u32(&mut out, 5);
        assert_eq!(out, [0, 2, b'a', b'b', 3, 4, 0, 0, 0, 5]);
    }
}
