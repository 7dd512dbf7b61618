//! Hierarchical timer wheel for per-connection deadlines (keepalive, handshake, write timeouts).
//!
//! Owns: one deadline per timer id (ids are dense `u32` indices, normally the connection slab key),
//! stored in flat arrays allocated once in [`TimerWheel::new`], plus the fixed slot heads and
//! occupancy bitmaps. Insert, reset (re-insert) and cancel are O(1); `advance` skips empty time
//! using the bitmaps, so a long idle gap costs O(levels), not O(ms).
//!
//! Must never:
//! - allocate after `new` (the only growth is the caller's `expired` Vec; reserve it up front),
//! - call the OS or read a clock (time is always passed in as `now_ms`, any monotonic ms clock),
//! - move wheel time backwards (an earlier `now_ms` is treated as the current wheel time),
//! - fire a timer before its deadline, or later than the first `advance` whose `now_ms >= deadline`
//!   (unless that call's `max_expired` budget was used up; the timer then fires on the next call).
//!
//! Layout: 7 levels x 64 slots; level `L` slots span `64^L` ms, so the levels cover the current
//! 2^42 ms block of wheel time (~139 years). A timer sits at the level of the highest 6-bit digit in
//! which its deadline differs from wheel time; when wheel time reaches a slot at level >= 1 the slot
//! is cascaded (re-filed one or more levels lower), so every timer fires from level 0 at its exact
//! ms. Deadlines outside the current 2^42 ms block go to one overflow list (the "furthest slot"),
//! re-cascaded when wheel time reaches the block holding the earliest of them.
//!
//! Per-id storage is 16 bytes: `next` (u32), `prev` (u32) and `deadline` (u64). Links are stored as
//! `id + 1` with 0 meaning "none"; the first entry of a slot list stores `HEAD_FLAG | slot` as its
//! `prev`, so the slot an id sits in needs no separate array, and `prev == 0` means "not armed".
//! All arrays are zero-initialised, so untouched pages of a large capacity cost no RSS.

const SLOT_BITS: u32 = 6;
const SLOTS_PER_LEVEL: usize = 1 << SLOT_BITS;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
const LEVELS: usize = 7;
/// Bits of wheel time covered by the levels (2^42 ms).
const WHEEL_SPAN_BITS: u32 = SLOT_BITS * LEVELS as u32;
const WHEEL_SPAN_MASK: u64 = (1 << WHEEL_SPAN_BITS) - 1;
/// Slot index of the overflow list, after the `LEVELS * 64` level slots.
const OVERFLOW_SLOT: usize = LEVELS * SLOTS_PER_LEVEL;
const SLOT_COUNT: usize = OVERFLOW_SLOT + 1;
/// Link value meaning "no id".
const NONE: u32 = 0;
/// Set in `prev` of the first id in a slot list; the low bits hold the slot index.
const HEAD_FLAG: u32 = 1 << 31;

/// Largest supported capacity (ids must stay below `HEAD_FLAG` once stored as `id + 1`).
pub const MAX_CAPACITY_TIMERS: u32 = HEAD_FLAG - 1;
/// Heap bytes per timer id of capacity: `next` + `prev` + `deadline`.
pub const BYTES_PER_TIMER: usize = 2 * std::mem::size_of::<u32>() + std::mem::size_of::<u64>();

/// Timer ids are dense u32 indices in `0..capacity` (the gateway uses its connection slab key).
pub struct TimerWheel {
    /// `id + 1` of the next id in the same slot list, `NONE` at the tail.
    next_link: Vec<u32>,
    /// `NONE` = not armed; `HEAD_FLAG | slot` = first in that slot's list; else `id + 1` of previous.
    prev_link: Vec<u32>,
    /// Absolute deadline of each armed id.
    deadline_ms: Vec<u64>,
    /// `id + 1` of the first id in each slot list (`SLOT_COUNT` entries), `NONE` if empty.
    slot_heads: Vec<u32>,
    /// Bit `s` of `occupied[level]` is set iff slot `s` of that level is non-empty.
    occupied: [u64; LEVELS],
    /// Wheel time: every timer with a deadline before this has fired or sits in the current
    /// level-0 slot (inserted late or left by an exhausted `max_expired` budget).
    elapsed_ms: u64,
    /// Lower bound of deadlines inserted below `elapsed_ms` since it last moved (for next_expiry).
    late_floor_ms: u64,
    /// Lower bound of the deadlines in the overflow list (`u64::MAX` when it is empty).
    overflow_floor_ms: u64,
    /// Number of armed timers.
    armed_timers: u32,
}

impl TimerWheel {
    /// All storage allocated here, once. `now_ms` is the wheel's start time (any monotonic ms clock).
    ///
    /// Memory: [`BYTES_PER_TIMER`] (16) bytes per id of capacity, zero-initialised, plus
    /// 449 slot heads (~1.8 KiB). Panics if `capacity_timers > MAX_CAPACITY_TIMERS` (2^31 - 1).
    pub fn new(capacity_timers: u32, now_ms: u64) -> Self {
        assert!(
            capacity_timers <= MAX_CAPACITY_TIMERS,
            "TimerWheel capacity {capacity_timers} exceeds {MAX_CAPACITY_TIMERS}"
        );
        let ids = capacity_timers as usize;
        Self {
            next_link: vec![NONE; ids],
            prev_link: vec![NONE; ids],
            deadline_ms: vec![0u64; ids],
            slot_heads: vec![NONE; SLOT_COUNT],
            occupied: [0; LEVELS],
            elapsed_ms: now_ms,
            late_floor_ms: u64::MAX,
            overflow_floor_ms: u64::MAX,
            armed_timers: 0,
        }
    }

    pub fn capacity_timers(&self) -> u32 {
        self.prev_link.len() as u32
    }

    /// Current wheel time: the last `now_ms` reached by `advance` (or the start time). It lags the
    /// caller's clock only when an `advance` stopped early because of its `max_expired` budget.
    pub fn now_ms(&self) -> u64 {
        self.elapsed_ms
    }

    /// Heap plus inline bytes owned by this wheel (constant after `new`).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.next_link.capacity() * std::mem::size_of::<u32>()
            + self.prev_link.capacity() * std::mem::size_of::<u32>()
            + self.deadline_ms.capacity() * std::mem::size_of::<u64>()
            + self.slot_heads.capacity() * std::mem::size_of::<u32>()
    }

    /// Arms timer `id` to fire at `deadline_ms` (ms, same clock). If already armed, it is moved
    /// (reset). O(1), no allocation. A deadline at or before the current wheel time fires on the
    /// next `advance`.
    ///
    /// # Panics
    /// Only if `id >= capacity_timers()` (a caller bug: ids must come from the connection slab).
    pub fn insert(&mut self, id: u32, deadline_ms: u64) {
        let index = id as usize;
        assert!(
            index < self.prev_link.len(),
            "TimerWheel::insert: id {id} >= capacity {}",
            self.prev_link.len()
        );
        if self.prev_link[index] == NONE {
            self.armed_timers += 1;
        } else {
            self.unlink(index);
        }
        self.deadline_ms[index] = deadline_ms;
        self.link(index);
    }

    /// Disarms; returns whether it was armed. O(1). An out-of-range id is simply not armed.
    pub fn cancel(&mut self, id: u32) -> bool {
        if !self.is_armed(id) {
            return false;
        }
        self.unlink(id as usize);
        self.armed_timers -= 1;
        true
    }

    pub fn is_armed(&self, id: u32) -> bool {
        self.prev_link.get(id as usize).is_some_and(|&prev| prev != NONE)
    }

    /// Deadline of an armed timer, `None` if not armed.
    pub fn deadline_ms(&self, id: u32) -> Option<u64> {
        self.is_armed(id).then(|| self.deadline_ms[id as usize])
    }

    /// Number of armed timers.
    pub fn len(&self) -> u32 {
        self.armed_timers
    }

    pub fn is_empty(&self) -> bool {
        self.armed_timers == 0
    }

    /// Advances wheel time to `now_ms` (never backwards; an earlier `now_ms` moves nothing but
    /// still fires timers already due at the current wheel time) and appends the ids of expired
    /// timers to `expired`, disarming them, in deadline order (ids due at the same ms in no
    /// particular order). Returns how many were appended.
    ///
    /// Stops after appending `max_expired` ids; the rest stay armed, wheel time stays at or before
    /// their deadlines, and they fire on the next call. Work per call is O(appended + levels x
    /// slots visited) plus cascading, which touches each timer at most `LEVELS` times in its life.
    pub fn advance(&mut self, now_ms: u64, max_expired: usize, expired: &mut Vec<u32>) -> usize {
        let now_ms = now_ms.max(self.elapsed_ms);
        if self.armed_timers == 0 {
            // Nothing can fire: skip the slot search (an idle wheel costs nothing per turn).
            self.set_elapsed(now_ms);
            return 0;
        }
        let mut appended = 0;
        loop {
            let Some((slot, start_ms)) = self.next_event().filter(|&(_, start)| start <= now_ms) else {
                self.set_elapsed(now_ms);
                break;
            };
            if appended == max_expired {
                break;
            }
            self.set_elapsed(start_ms);
            if slot < SLOTS_PER_LEVEL {
                // Level 0: every id here is due (deadline == start_ms, or inserted late).
                while appended < max_expired && self.slot_heads[slot] != NONE {
                    let id = self.slot_heads[slot] - 1;
                    self.unlink(id as usize);
                    self.armed_timers -= 1;
                    expired.push(id);
                    appended += 1;
                }
            } else {
                self.cascade(slot);
            }
        }
        appended
    }

    /// Time of the earliest possible expiry, for computing how long the event loop may sleep.
    /// Conservative: the start of the earliest occupied slot (at a higher level, where its timers
    /// would cascade), never later than the true earliest deadline. `None` if empty. A value at
    /// or before the caller's clock means "advance now".
    pub fn next_expiry_ms(&self) -> Option<u64> {
        let (slot, start_ms) = self.next_event()?;
        if slot < SLOTS_PER_LEVEL && start_ms == self.elapsed_ms {
            // The current level-0 slot may hold deadlines inserted after they were already due.
            Some(start_ms.min(self.late_floor_ms))
        } else {
            Some(start_ms)
        }
    }

    /// Earliest occupied slot as `(slot index, start ms)`. Every timer at level `L` lies in a later
    /// `64^L` ms block than wheel time but in the same `64^(L+1)` block, so lower levels always
    /// come first and occupied slots at level >= 1 are strictly ahead of wheel time.
    fn next_event(&self) -> Option<(usize, u64)> {
        for (level, &occupied) in self.occupied.iter().enumerate() {
            let shift = level as u32 * SLOT_BITS;
            let current = (self.elapsed_ms >> shift) & SLOT_MASK;
            let pending = occupied & (u64::MAX << current);
            if pending != 0 {
                let slot = u64::from(pending.trailing_zeros());
                let block_start_ms = self.elapsed_ms & !((1u64 << (shift + SLOT_BITS)) - 1);
                let start_ms = block_start_ms + (slot << shift);
                return Some((level * SLOTS_PER_LEVEL + slot as usize, start_ms));
            }
        }
        if self.slot_heads[OVERFLOW_SLOT] == NONE {
            return None;
        }
        // Overflow ids lie in a later 2^42 ms block, so the next block start cannot overflow u64.
        let next_block_ms = (self.elapsed_ms | WHEEL_SPAN_MASK).saturating_add(1);
        let floor_block_ms = self.overflow_floor_ms & !WHEEL_SPAN_MASK;
        Some((OVERFLOW_SLOT, floor_block_ms.max(next_block_ms)))
    }

    fn set_elapsed(&mut self, now_ms: u64) {
        if now_ms != self.elapsed_ms {
            // Only called when the current level-0 slot is empty, so no late ids remain.
            self.elapsed_ms = now_ms;
            self.late_floor_ms = u64::MAX;
        }
    }

    /// Slot for a deadline relative to wheel time: the level of the highest differing 6-bit digit.
    fn slot_for(&mut self, deadline_ms: u64) -> usize {
        if deadline_ms <= self.elapsed_ms {
            self.late_floor_ms = self.late_floor_ms.min(deadline_ms);
            return (self.elapsed_ms & SLOT_MASK) as usize;
        }
        let differing_bits = self.elapsed_ms ^ deadline_ms;
        if differing_bits > WHEEL_SPAN_MASK {
            self.overflow_floor_ms = self.overflow_floor_ms.min(deadline_ms);
            return OVERFLOW_SLOT;
        }
        let highest_bit = 63 - (differing_bits | SLOT_MASK).leading_zeros();
        let level = highest_bit / SLOT_BITS;
        let slot = (deadline_ms >> (level * SLOT_BITS)) & SLOT_MASK;
        level as usize * SLOTS_PER_LEVEL + slot as usize
    }

    /// Pushes `index` (not currently linked) onto the front of the slot for its deadline.
    fn link(&mut self, index: usize) {
        let slot = self.slot_for(self.deadline_ms[index]);
        let head = self.slot_heads[slot];
        let link = index as u32 + 1;
        self.next_link[index] = head;
        self.prev_link[index] = HEAD_FLAG | slot as u32;
        if head != NONE {
            self.prev_link[(head - 1) as usize] = link;
        }
        self.slot_heads[slot] = link;
        if slot < OVERFLOW_SLOT {
            self.occupied[slot / SLOTS_PER_LEVEL] |= 1 << (slot % SLOTS_PER_LEVEL);
        }
    }

    /// Removes a linked `index` from its slot list and marks it unarmed.
    fn unlink(&mut self, index: usize) {
        let prev = self.prev_link[index];
        let next = self.next_link[index];
        if prev & HEAD_FLAG != 0 {
            let slot = (prev & !HEAD_FLAG) as usize;
            self.slot_heads[slot] = next;
            if next == NONE {
                if slot < OVERFLOW_SLOT {
                    self.occupied[slot / SLOTS_PER_LEVEL] &= !(1 << (slot % SLOTS_PER_LEVEL));
                } else {
                    self.overflow_floor_ms = u64::MAX;
                }
            }
        } else {
            self.next_link[(prev - 1) as usize] = next;
        }
        if next != NONE {
            self.prev_link[(next - 1) as usize] = prev;
        }
        self.prev_link[index] = NONE;
        self.next_link[index] = NONE;
    }

    /// Re-files every id of a level >= 1 slot (or the overflow list) relative to wheel time, which
    /// has just reached the slot's start; each lands at a lower level (or stays in overflow).
    fn cascade(&mut self, slot: usize) {
        let mut link = std::mem::replace(&mut self.slot_heads[slot], NONE);
        if slot < OVERFLOW_SLOT {
            self.occupied[slot / SLOTS_PER_LEVEL] &= !(1 << (slot % SLOTS_PER_LEVEL));
        } else {
            self.overflow_floor_ms = u64::MAX;
        }
        while link != NONE {
            let index = (link - 1) as usize;
            link = self.next_link[index];
            self.link(index);
        }
    }
}

#[cfg(test)]
#[path = "wheel_tests.rs"]
mod tests;
