//! An indexed max-heap of (bytes, key): the connections holding partial
//! packets, largest first, each found by its key in O(1) and moved in
//! O(log n).
//!
//! Owns the heap array and each key's place in it. Must never allocate once
//! it has seen its high-water mark of holders and keys (both arrays keep
//! their capacity), so a packet split across receives costs no allocation.

/// No place: the key is not in the heap.
const ABSENT: u32 = u32::MAX;

pub(super) struct Holders {
    /// Binary max-heap ordered by (bytes, key).
    heap: Vec<(u64, u32)>,
    /// `place[key]`: the key's index in `heap`, or ABSENT.
    place: Vec<u32>,
}

/// Heap entries allocated at start-up (it grows only past this many holders).
const HOLDERS_PREALLOC: usize = 1024;

impl Holders {
    /// For keys below `keys` (the shard's capacity): each one's place is
    /// allocated now (4 bytes per connection slot), not when it first holds.
    pub fn new(keys: u32) -> Holders {
        Holders {
            heap: Vec::with_capacity(HOLDERS_PREALLOC.min(keys as usize)),
            place: vec![ABSENT; keys as usize],
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// The largest holder.
    pub fn largest(&self) -> Option<(u64, u32)> {
        self.heap.first().copied()
    }

    /// Sets `key`'s bytes (inserting it if absent).
    pub fn set(&mut self, key: u32, bytes: u64) {
        let k = key as usize;
        if k >= self.place.len() {
            self.place.resize(k + 1, ABSENT);
        }
        match self.place[k] {
            ABSENT => {
                self.heap.push((bytes, key));
                let at = self.heap.len() - 1;
                self.place[k] = at as u32;
                self.sift_up(at);
            }
            at => {
                let at = at as usize;
                let old = self.heap[at];
                self.heap[at] = (bytes, key);
                if (bytes, key) > old {
                    self.sift_up(at);
                } else {
                    self.sift_down(at);
                }
            }
        }
    }

    /// Removes `key` (nothing if absent).
    pub fn remove(&mut self, key: u32) {
        let Some(&at) = self.place.get(key as usize) else {
            return;
        };
        if at == ABSENT {
            return;
        }
        let at = at as usize;
        self.place[key as usize] = ABSENT;
        let last = self.heap.len() - 1;
        if at == last {
            self.heap.pop();
            return;
        }
        self.heap.swap(at, last);
        self.heap.pop();
        self.place[self.heap[at].1 as usize] = at as u32;
        self.sift_up(at);
        self.sift_down(at);
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.place[self.heap[a].1 as usize] = a as u32;
        self.place[self.heap[b].1 as usize] = b as u32;
    }

    fn sift_up(&mut self, mut at: usize) {
        while at > 0 {
            let parent = (at - 1) / 2;
            if self.heap[at] <= self.heap[parent] {
                break;
            }
            self.swap(at, parent);
            at = parent;
        }
    }

    fn sift_down(&mut self, mut at: usize) {
        loop {
            let (l, r) = (2 * at + 1, 2 * at + 2);
            let mut top = at;
            if l < self.heap.len() && self.heap[l] > self.heap[top] {
                top = l;
            }
            if r < self.heap.len() && self.heap[r] > self.heap[top] {
                top = r;
            }
            if top == at {
                return;
            }
            self.swap(at, top);
            at = top;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn agrees_with_an_ordered_set_through_random_changes() {
        let mut h = Holders::new(0);
        let mut model: BTreeSet<(u64, u32)> = BTreeSet::new();
        let mut bytes_of = vec![None::<u64>; 64];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = (x % 64) as u32;
            let bytes = (x >> 8) % 1000;
            if let Some(old) = bytes_of[key as usize].take() {
                model.remove(&(old, key));
            }
            if x.is_multiple_of(3) {
                h.remove(key);
            } else {
                h.set(key, bytes);
                model.insert((bytes, key));
                bytes_of[key as usize] = Some(bytes);
            }
            assert_eq!(h.len(), model.len());
            assert_eq!(h.largest(), model.last().copied());
        }
    }

    #[test]
    fn keeps_its_memory_once_warm() {
        let mut h = Holders::new(0);
        for round in 0..3 {
            for key in 0..500 {
                h.set(key, key as u64 * 7 % 101);
            }
            let (heap_cap, place_cap) = (h.heap.capacity(), h.place.capacity());
            for key in 0..500 {
                h.remove(key);
            }
            assert_eq!(h.len(), 0);
            if round > 0 {
                assert_eq!((h.heap.capacity(), h.place.capacity()), (heap_cap, place_cap));
            }
        }
        h.remove(10_000); // absent, beyond every key seen: nothing
    }
}
