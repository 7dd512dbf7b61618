//! Which pending messages hold which payload: payload key -> (SP, length,
//! pending messages referencing it). A payload counts against the byte budgets
//! once, however many messages of its multicast reference it, from the first
//! reference until the last pending one is gone (finished, collapsed, expired,
//! cancelled or evicted): then its bytes and its store row go.
//!
//! Owns the reference counts. Must never touch the budget or the store itself:
//! it answers "this was the first / the last reference", the machine turns the
//! answer into effects.

use std::collections::HashMap;

struct Held {
    sp: String,
    len_bytes: u64,
    refs: u32,
}

/// What the last reference let go.
#[derive(Debug, PartialEq, Eq)]
pub struct Released {
    pub sp: String,
    pub len_bytes: u64,
}

#[derive(Default)]
pub struct PayloadRefs {
    by_key: HashMap<u64, Held>,
    /// Sum of `len_bytes` over `by_key`.
    bytes: u64,
}

impl PayloadRefs {
    pub fn new() -> PayloadRefs {
        PayloadRefs::default()
    }

    /// One more pending message references payload `key`; true if it is the first.
    pub fn attach(&mut self, key: u64, sp: &str, len_bytes: u64) -> bool {
        let held = self.by_key.entry(key).or_insert_with(|| Held {
            sp: sp.to_string(),
            len_bytes,
            refs: 0,
        });
        held.refs += 1;
        let first = held.refs == 1;
        if first {
            self.bytes += len_bytes;
        }
        first
    }

    /// One pending message of payload `key` is gone; the payload if it was the last.
    pub fn detach(&mut self, key: u64) -> Option<Released> {
        let held = self.by_key.get_mut(&key)?;
        held.refs -= 1;
        if held.refs > 0 {
            return None;
        }
        let held = self.by_key.remove(&key)?;
        self.bytes -= held.len_bytes;
        Some(Released {
            sp: held.sp,
            len_bytes: held.len_bytes,
        })
    }

    /// Payloads referenced by a pending message.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Their bytes, each payload once.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_counts_once_and_goes_with_its_last_reference() {
        let mut r = PayloadRefs::new();
        assert!(r.attach(1, "acme", 100));
        assert!(!r.attach(1, "acme", 100));
        assert!(r.attach(2, "other", 5));
        assert_eq!((r.len(), r.bytes()), (2, 105));
        assert_eq!(r.detach(1), None);
        assert_eq!(
            r.detach(1),
            Some(Released {
                sp: "acme".into(),
                len_bytes: 100
            })
        );
        assert_eq!(r.detach(1), None, "an unknown key is nothing");
        assert_eq!((r.len(), r.bytes()), (1, 5));
    }
}
