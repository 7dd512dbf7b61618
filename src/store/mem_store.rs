//! `MemStore`: an in-memory `Store` with the same semantics as `RedbStore`
//! (atomic, ordered, id-sorted `load_all`), for tests.
//!
//! Owns: nothing persistent. Must never: be used where durability matters
//! (it forgets everything on drop), or apply half of a commit.

use super::{Store, StoreError, StoreOp};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// Message records and payload rows.
#[derive(Default)]
struct Tables {
    messages: BTreeMap<u64, Vec<u8>>,
    payloads: BTreeMap<u64, Vec<u8>>,
}

#[derive(Default)]
pub struct MemStore {
    map: Mutex<Tables>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Tables>, StoreError> {
        self.map
            .lock()
            .map_err(|_| StoreError::Corrupt("MemStore mutex poisoned".into()))
    }
}

impl Store for MemStore {
    fn commit(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
        // Applying ops cannot fail once the lock is held, so all-or-nothing
        // holds trivially; the lock makes the commit atomic to readers.
        let mut t = self.lock()?;
        for op in ops {
            match op {
                StoreOp::Put { id, value } => {
                    t.messages.insert(*id, value.clone());
                }
                StoreOp::Delete { id } => {
                    t.messages.remove(id);
                }
                StoreOp::PutPayload { id, value } => {
                    t.payloads.insert(*id, value.clone());
                }
                StoreOp::DeletePayload { id } => {
                    t.payloads.remove(id);
                }
            }
        }
        Ok(())
    }

    fn load_all(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        Ok(self.lock()?.messages.iter().map(|(k, v)| (*k, v.clone())).collect())
    }

    fn len(&self) -> Result<u64, StoreError> {
        Ok(self.lock()?.messages.len() as u64)
    }

    fn load_payloads(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        Ok(self.lock()?.payloads.iter().map(|(k, v)| (*k, v.clone())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_delete_load_all_in_id_order() {
        let s = MemStore::new();
        s.commit(&[
            StoreOp::Put {
                id: 3,
                value: b"c".to_vec(),
            },
            StoreOp::Put {
                id: 1,
                value: b"a".to_vec(),
            },
            StoreOp::Put {
                id: 2,
                value: b"b".to_vec(),
            },
            StoreOp::Delete { id: 2 },
        ])
        .expect("mem commit");
        assert_eq!(
            s.load_all().expect("load"),
            vec![(1, b"a".to_vec()), (3, b"c".to_vec())]
        );
        assert_eq!(s.len().expect("len"), 2);
    }
}
