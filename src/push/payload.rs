//! A message's payload as the service holds it: the bytes, shared (one
//! allocation, reference counted) by every message of one multicast, and the
//! id of the row that holds them in the store's payloads table. In a stored
//! record the payload is that reference (`{"stored_as": id, "len_bytes": n}`),
//! never the bytes again; records written before payloads had their own table
//! carry the bytes inline (a base64 string) and are still read.
//!
//! Owns the payload value and its record form. Must never copy the bytes
//! (clones share them) or decide when a stored payload goes: `payloads`
//! counts its references, the machine releases it.

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Payload {
    /// The payloads-table row holding the bytes (None: inline in the record).
    pub stored_as: Option<u64>,
    /// Length of the payload, kept after the bytes are let go.
    pub len_bytes: u64,
    /// Empty once the message is finished (nothing needs them any more) and
    /// in a record read back until recovery re-links it to its row.
    pub bytes: Bytes,
}

impl Payload {
    /// A payload carried inline in its record (tests; records of older versions).
    pub fn inline(bytes: impl Into<Bytes>) -> Payload {
        let bytes = bytes.into();
        Payload {
            stored_as: None,
            len_bytes: bytes.len() as u64,
            bytes,
        }
    }

    /// A payload kept once in the payloads table as row `id`.
    pub fn shared(id: u64, bytes: Bytes) -> Payload {
        Payload {
            stored_as: Some(id),
            len_bytes: bytes.len() as u64,
            bytes,
        }
    }

    /// What the reference count and the budget know this payload by: its row,
    /// or for an inline payload the message's own id (row and message ids come
    /// from one `PushIds`, so they never collide).
    pub fn key(&self, message_id: u64) -> u64 {
        self.stored_as.unwrap_or(message_id)
    }

    /// Lets the bytes go (the message finished); the length stays.
    pub fn let_go(&mut self) {
        self.bytes = Bytes::new();
        if self.stored_as.is_none() {
            self.len_bytes = 0;
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StoredRef {
    stored_as: u64,
    len_bytes: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Record {
    Inline(String),
    Stored(StoredRef),
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.stored_as {
            Some(stored_as) => StoredRef {
                stored_as,
                len_bytes: self.len_bytes,
            }
            .serialize(s),
            None => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.bytes)),
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        match Record::deserialize(d)? {
            Record::Inline(text) => base64::engine::general_purpose::STANDARD
                .decode(text)
                .map(Payload::inline)
                .map_err(serde::de::Error::custom),
            Record::Stored(r) => Ok(Payload {
                stored_as: Some(r.stored_as),
                len_bytes: r.len_bytes,
                bytes: Bytes::new(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_payload_is_a_reference_in_its_record_and_clones_share_the_bytes() {
        let bytes = Bytes::from(vec![7u8; 250_000]);
        let p = Payload::shared(42, bytes.clone());
        let q = p.clone();
        assert_eq!(q.bytes.as_ptr(), bytes.as_ptr(), "a clone is the same allocation");
        let text = serde_json::to_string(&p).expect("serializable");
        assert_eq!(text, r#"{"stored_as":42,"len_bytes":250000}"#);
        let back: Payload = serde_json::from_str(&text).expect("deserializable");
        assert_eq!(
            (back.stored_as, back.len_bytes, back.bytes.len()),
            (Some(42), 250_000, 0)
        );
    }

    #[test]
    fn an_inline_payload_round_trips_as_base64_and_lets_go() {
        let mut p = Payload::inline(&b"\x00\x01\xff"[..]);
        let text = serde_json::to_string(&p).expect("serializable");
        assert_eq!(text, r#""AAH/""#);
        assert_eq!(serde_json::from_str::<Payload>(&text).expect("deserializable"), p);
        assert_eq!(p.key(9), 9);
        p.let_go();
        assert_eq!((p.len_bytes, p.bytes.len()), (0, 0));
        assert!(serde_json::from_str::<Payload>(r#""!!""#).is_err());
    }
}
