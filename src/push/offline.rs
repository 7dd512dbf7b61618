//! Store and forward: the pending messages held for devices that are offline,
//! per device in arrival order, bounded per device (`pending_per_device_max`;
//! the machine fails the oldest beyond it) and in total by the pending-message
//! bound (the machine evicts the oldest held message to admit a new one).
//!
//! Owns the held-message index. Must never change a message's state or decide
//! an eviction's outcome: it answers which ids, the machine finishes them.

use std::collections::{BTreeSet, HashMap};

pub struct OfflineQueue {
    by_device: HashMap<String, Vec<u64>>,
    /// Every held id (ordered: the first is the oldest, ids grow with time).
    ids: BTreeSet<u64>,
    per_device_max: usize,
}

impl OfflineQueue {
    pub fn new(per_device_max: u32) -> OfflineQueue {
        OfflineQueue {
            by_device: HashMap::new(),
            ids: BTreeSet::new(),
            per_device_max: per_device_max as usize,
        }
    }

    /// Holds `id` for `device`; returns the ids over the device's bound, oldest
    /// first (still held: the machine finishes them, which releases them).
    pub fn hold(&mut self, device: &str, id: u64) -> Vec<u64> {
        let list = self.by_device.entry(device.to_string()).or_default();
        if !list.contains(&id) {
            list.push(id);
            self.ids.insert(id);
        }
        let over = list.len().saturating_sub(self.per_device_max);
        list.iter().copied().take(over).collect()
    }

    /// Stops holding `id` (delivered, finished, or started elsewhere).
    pub fn release(&mut self, id: u64, device: &str) {
        if self.ids.remove(&id)
            && let Some(list) = self.by_device.get_mut(device)
        {
            list.retain(|&x| x != id);
            if list.is_empty() {
                self.by_device.remove(device);
            }
        }
    }

    /// Everything held for `device` (it came online), released.
    pub fn take_device(&mut self, device: &str) -> Vec<u64> {
        let ids = self.by_device.remove(device).unwrap_or_default();
        for id in &ids {
            self.ids.remove(id);
        }
        ids
    }

    /// The oldest held message anywhere.
    pub fn oldest(&self) -> Option<u64> {
        self.ids.first().copied()
    }

    /// Up to `max` devices with held messages.
    pub fn devices(&self, max: usize) -> Vec<String> {
        self.by_device.keys().take(max).cloned().collect()
    }

    /// Held messages in total.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_per_device_reports_the_excess_and_releases() {
        let mut q = OfflineQueue::new(2);
        assert!(q.hold("d", 1).is_empty());
        assert!(q.hold("d", 2).is_empty());
        assert!(q.hold("d", 2).is_empty(), "holding twice is once");
        assert_eq!(q.hold("d", 3), vec![1]);
        q.release(1, "d");
        assert!(q.hold("e", 9).is_empty());
        assert_eq!((q.len(), q.oldest()), (3, Some(2)));
        assert_eq!(q.take_device("d"), vec![2, 3]);
        assert_eq!(q.devices(10), vec!["e".to_string()]);
        q.release(9, "e");
        assert!(q.is_empty() && q.devices(10).is_empty());
    }
}
