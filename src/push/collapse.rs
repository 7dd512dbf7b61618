//! The collapse index: (SP, device, collapse key) -> the pending message that
//! holds that key. A newer message with the same key replaces the older one.
//! Bounded by the pending messages (one entry per pending message at most).
//!
//! Owns the index. Must never finish the replaced message itself: it names it,
//! the machine collapses it.

use std::collections::HashMap;

#[derive(Default)]
pub struct CollapseIndex {
    by_key: HashMap<(String, String, String), u64>,
}

impl CollapseIndex {
    pub fn new() -> CollapseIndex {
        CollapseIndex::default()
    }

    /// Records `id` as the holder of the key; returns the previous holder.
    pub fn claim(&mut self, sp: &str, device: &str, key: &str, id: u64) -> Option<u64> {
        let k = (sp.to_string(), device.to_string(), key.to_string());
        self.by_key.insert(k, id).filter(|&old| old != id)
    }

    /// Forgets the key if `id` still holds it.
    pub fn release(&mut self, sp: &str, device: &str, key: &str, id: u64) {
        let k = (sp.to_string(), device.to_string(), key.to_string());
        if self.by_key.get(&k) == Some(&id) {
            self.by_key.remove(&k);
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_claim_names_the_old_holder_and_release_keeps_the_new_one() {
        let mut c = CollapseIndex::new();
        assert_eq!(c.claim("sp", "d", "k", 1), None);
        assert_eq!(c.claim("sp", "d", "k", 2), Some(1));
        assert_eq!(c.claim("sp", "e", "k", 3), None, "another device, another key");
        c.release("sp", "d", "k", 1);
        assert_eq!(c.len(), 2, "1 no longer holds it");
        c.release("sp", "d", "k", 2);
        c.release("sp", "e", "k", 3);
        assert!(c.is_empty());
    }
}
