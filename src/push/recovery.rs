//! Start-up: turns the store's message records and payload rows back into
//! messages. Each payload row is read once and shared (`Bytes`) by every
//! pending record that references it; a finished record does not get its
//! payload back (nothing needs it); a row no pending record references is an
//! orphan (its last message finished and the delete was lost) and is named for
//! deletion; a pending record whose row is missing fails.
//!
//! Owns the re-linking. Must never open the store or start tracking: the
//! caller reads the rows and hands the messages to the service.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use super::message::{Message, State};

/// Detail of a pending message whose payload row is gone.
pub const PAYLOAD_MISSING: &str = "payload missing from the store at recovery";

pub struct Recovered {
    pub messages: Vec<Message>,
    /// Records that did not parse.
    pub unreadable: u64,
    /// Payload rows no pending message references (delete them).
    pub orphan_payloads: Vec<u64>,
    /// Pending messages failed because their payload row was missing.
    pub missing_payloads: u64,
    /// Payload bytes of the pending messages (each shared row once).
    pub payload_bytes: u64,
}

/// Parses `records` (id -> message JSON) and re-links `payloads` (row -> bytes).
pub fn relink(records: Vec<(u64, Vec<u8>)>, payloads: Vec<(u64, Vec<u8>)>, now_unix_ms: u64) -> Recovered {
    let mut rows: HashMap<u64, Bytes> = payloads.into_iter().map(|(id, v)| (id, Bytes::from(v))).collect();
    let mut used: HashSet<u64> = HashSet::new();
    let mut payload_bytes = 0;
    let mut messages = Vec::with_capacity(records.len());
    let mut unreadable = 0;
    let mut missing_payloads = 0;
    for (_, value) in records {
        let Ok(mut m) = serde_json::from_slice::<Message>(&value) else {
            unreadable += 1;
            continue;
        };
        if m.state.is_terminal() {
            messages.push(m);
            continue;
        }
        match m.payload.stored_as {
            // Inline in the record (a small unicast): its own bytes.
            None => payload_bytes += m.payload.len_bytes,
            Some(row) => match rows.get(&row) {
                Some(bytes) if bytes.len() as u64 == m.payload.len_bytes => {
                    m.payload.bytes = bytes.clone();
                    if used.insert(row) {
                        payload_bytes += bytes.len() as u64;
                    }
                }
                _ => {
                    m.set_state(State::Failed, now_unix_ms, PAYLOAD_MISSING);
                    missing_payloads += 1;
                }
            },
        }
        messages.push(m);
    }
    rows.retain(|id, _| !used.contains(id));
    let mut orphan_payloads: Vec<u64> = rows.into_keys().collect();
    orphan_payloads.sort_unstable();
    Recovered {
        messages,
        unreadable,
        orphan_payloads,
        missing_payloads,
        payload_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::payload::Payload;
    use crate::push::profile::Profile;

    fn record(id: u64, payload: Payload, state: State) -> (u64, Vec<u8>) {
        let m = Message {
            id,
            sp: "acme".into(),
            device: format!("d{id}"),
            payload,
            qos: 1,
            created_ms: 0,
            expires_ms: u64::MAX,
            collapse_key: None,
            callback_url: None,
            profile: Profile::default(),
            state,
            collapsed_into: None,
            history: vec![],
            attempts: vec![],
        };
        (id, serde_json::to_vec(&m).expect("serializable"))
    }

    #[test]
    fn pending_records_share_their_row_and_orphans_and_missing_rows_are_named() {
        let shared = Payload::shared(100, Bytes::from(vec![5u8; 4096]));
        let records = vec![
            record(1, shared.clone(), State::Queued),
            record(2, shared.clone(), State::Accepted),
            record(3, shared.clone(), State::Delivered),
            record(4, Payload::shared(101, Bytes::from_static(b"gone")), State::Queued),
            record(5, Payload::inline(&b"old"[..]), State::Queued),
            (6, b"not json".to_vec()),
        ];
        let rows = vec![(100, vec![5u8; 4096]), (102, vec![1, 2, 3])];
        let r = relink(records, rows, 7);
        assert_eq!((r.unreadable, r.missing_payloads, r.payload_bytes), (1, 1, 4096 + 3));
        assert_eq!(r.orphan_payloads, vec![102]);
        let by_id: HashMap<u64, &Message> = r.messages.iter().map(|m| (m.id, m)).collect();
        assert_eq!(&by_id[&1].payload.bytes[..], &[5u8; 4096][..]);
        assert_eq!(
            by_id[&1].payload.bytes.as_ptr(),
            by_id[&2].payload.bytes.as_ptr(),
            "one allocation for the row"
        );
        assert!(
            by_id[&3].payload.bytes.is_empty(),
            "a finished message needs no payload"
        );
        assert_eq!(by_id[&4].state, State::Failed);
        assert_eq!(
            &by_id[&5].payload.bytes[..],
            b"old",
            "an inline record of an older version"
        );
    }
}
