//! The push service's timers: at most one per message (its next action or its
//! expiry), kept in a binary heap of (due_ms, id, generation). Re-arming or
//! cancelling never searches the heap: the live (generation, due) per id is in
//! a map, and heap entries that no longer match it are skipped when they
//! surface. When stale entries pile up beyond twice the live ones plus
//! `PUSH_TIMER_HEAP_SLACK`, the heap is rebuilt from the map, so its size stays
//! bounded by the number of pending messages.
//!
//! Owns timer bookkeeping. Must never read a clock (time is an argument) or
//! decide what a timer means: the machine checks the generation and acts.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::limits::PUSH_TIMER_HEAP_SLACK;

#[derive(Default)]
pub struct Timers {
    /// id -> the one live (generation, due_ms).
    live: HashMap<u64, (u32, u64)>,
    heap: BinaryHeap<Reverse<(u64, u64, u32)>>,
}

impl Timers {
    pub fn new() -> Timers {
        Timers::default()
    }

    /// Arms (or re-arms) the timer of `id`; an earlier one of `id` is void.
    pub fn schedule(&mut self, id: u64, generation: u32, due_ms: u64) {
        self.live.insert(id, (generation, due_ms));
        self.heap.push(Reverse((due_ms, id, generation)));
        if self.heap.len() > 2 * self.live.len() + PUSH_TIMER_HEAP_SLACK {
            self.heap = self
                .live
                .iter()
                .map(|(&id, &(generation, due_ms))| Reverse((due_ms, id, generation)))
                .collect();
        }
    }

    pub fn cancel(&mut self, id: u64) {
        self.live.remove(&id);
    }

    /// Pops up to `max` live timers due at `now_ms`, as (id, generation).
    pub fn expired(&mut self, now_ms: u64, max: usize, out: &mut Vec<(u64, u32)>) {
        let mut n = 0;
        while n < max {
            let Some(&Reverse((due_ms, id, generation))) = self.heap.peek() else {
                break;
            };
            if due_ms > now_ms {
                break;
            }
            self.heap.pop();
            if self.live.get(&id) == Some(&(generation, due_ms)) {
                self.live.remove(&id);
                out.push((id, generation));
                n += 1;
            }
        }
    }

    /// When the earliest entry is due (perhaps a stale one: waking early is harmless).
    pub fn next_due_ms(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((due_ms, _, _))| *due_ms)
    }

    /// Live timers.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Heap entries, live and stale (for the bound's test).
    pub fn heap_len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rearming_voids_the_old_entry_and_the_heap_stays_bounded() {
        let mut t = Timers::new();
        t.schedule(1, 1, 100);
        t.schedule(2, 1, 50);
        t.schedule(1, 2, 200); // re-armed later: the entry at 100 is stale
        let mut out = Vec::new();
        t.expired(150, 10, &mut out);
        assert_eq!(out, vec![(2, 1)]);
        out.clear();
        t.cancel(1);
        t.expired(1_000, 10, &mut out);
        assert!(out.is_empty() && t.is_empty());
        for g in 0..100_000u32 {
            t.schedule(7, g, 1_000_000 + g as u64);
        }
        assert!(t.heap_len() <= 2 + PUSH_TIMER_HEAP_SLACK, "{}", t.heap_len());
        t.expired(u64::MAX, 10, &mut out);
        assert_eq!(out, vec![(7, 99_999)]);
    }
}
