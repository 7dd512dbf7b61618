//! Partial packets on one shard: the bytes each connection holds of a packet
//! that has started but not finished arriving, their running total, the
//! holders ordered by size, and one deadline per holder (its own timer wheel,
//! so the keep-alive and connect timers are never displaced).
//!
//! Owns the bookkeeping behind `packet_complete_timeout_s` and
//! `shard_partial_packet_bytes_max`. Must never decide how a connection is
//! closed (`close` does) and never scan every connection: the largest holder
//! comes from an indexed heap of the holders (`Holders`, allocation-free once
//! warm), touched only when a holder's bytes change.

use super::conn::Active;
use super::holders::Holders;
use super::wheel::TimerWheel;
use crate::limits;

pub(super) struct PartialPackets {
    /// Bytes held in partial packets (their buffers' capacity) over the shard.
    total_bytes: u64,
    /// (bytes held, key) of every connection holding a partial packet.
    holders: Holders,
    /// When each holder's packet must be complete.
    deadlines: TimerWheel,
    /// Reused list of expired keys.
    expired: Vec<u32>,
}

impl PartialPackets {
    pub fn new(capacity: u32, now_ms: u64) -> PartialPackets {
        PartialPackets {
            total_bytes: 0,
            holders: Holders::new(capacity),
            deadlines: TimerWheel::new(capacity, now_ms),
            expired: Vec::with_capacity(limits::EXPIRED_PER_TURN_MAX),
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    pub fn holders(&self) -> usize {
        self.holders.len()
    }

    /// The connection holding the most bytes, with how many.
    pub fn largest(&self) -> Option<(u64, u32)> {
        self.holders.largest()
    }

    /// Re-accounts `key` after its partial buffer changed. `new_packet`: a
    /// whole frame completed in this receive, so what is left (if anything)
    /// is a packet that started now. A packet that starts gets its deadline
    /// (`now_ms + timeout_ms`); one that continues keeps it.
    pub fn update(&mut self, key: u32, a: &mut Active, now_ms: u64, timeout_ms: u64, new_packet: bool) {
        let held_old = a.partial_held_bytes;
        let held_new = if a.partial.is_empty() {
            0
        } else {
            a.partial.capacity() as u64
        };
        if held_old == held_new && !(held_new > 0 && new_packet) {
            return;
        }
        if held_old > 0 {
            self.total_bytes -= held_old;
        }
        a.partial_held_bytes = held_new;
        if held_new == 0 {
            self.holders.remove(key);
            self.deadlines.cancel(key);
            return;
        }
        self.holders.set(key, held_new);
        self.total_bytes += held_new;
        if held_old == 0 || new_packet {
            a.partial_since_ms = now_ms;
            self.deadlines.insert(key, now_ms + timeout_ms);
        }
    }

    /// `key` holds nothing any more (closing, or its slot is freed).
    pub fn forget(&mut self, key: u32, a: Option<&mut Active>) {
        if let Some(a) = a
            && a.partial_held_bytes > 0
        {
            self.holders.remove(key);
            self.total_bytes -= a.partial_held_bytes;
            a.partial_held_bytes = 0;
        }
        self.deadlines.cancel(key);
    }

    /// Keys whose packet deadline passed at `now_ms` (at most
    /// `EXPIRED_PER_TURN_MAX`); give the list back with `put_expired`.
    pub fn take_expired(&mut self, now_ms: u64) -> Vec<u32> {
        let mut expired = std::mem::take(&mut self.expired);
        expired.clear();
        self.deadlines
            .advance(now_ms, limits::EXPIRED_PER_TURN_MAX, &mut expired);
        expired
    }

    pub fn put_expired(&mut self, expired: Vec<u32>) {
        self.expired = expired;
    }

    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.deadlines.next_expiry_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(bytes: usize) -> Active {
        let mut a = Active::default();
        a.partial.reserve_exact(bytes);
        a.partial.resize(bytes, 0);
        a
    }

    #[test]
    fn total_and_largest_follow_each_holder() {
        let mut p = PartialPackets::new(8, 0);
        let mut a = holding(100);
        let mut b = holding(300);
        p.update(1, &mut a, 0, 1000, false);
        p.update(2, &mut b, 0, 1000, false);
        assert_eq!(p.total_bytes(), (a.partial.capacity() + b.partial.capacity()) as u64);
        assert_eq!(p.largest().map(|(_, k)| k), Some(2));
        b.partial.clear();
        p.update(2, &mut b, 5, 1000, true);
        assert_eq!(p.total_bytes(), a.partial.capacity() as u64);
        assert_eq!(p.largest().map(|(_, k)| k), Some(1));
        p.forget(1, Some(&mut a));
        assert_eq!((p.total_bytes(), p.holders()), (0, 0));
        assert!(p.next_expiry_ms().is_none(), "no deadline left armed");
    }

    #[test]
    fn a_continuing_packet_keeps_its_deadline_and_a_new_one_gets_its_own() {
        let mut p = PartialPackets::new(8, 0);
        let mut a = holding(10);
        p.update(3, &mut a, 0, 1000, false);
        a.partial.extend_from_slice(&[0; 500]);
        p.update(3, &mut a, 900, 1000, false);
        assert_eq!(a.partial_since_ms, 0, "the same packet: deadline unchanged");
        assert!(p.take_expired(999).is_empty());
        let mut fired = p.take_expired(1000);
        assert_eq!(fired, vec![3]);
        fired.clear();
        p.put_expired(fired);
        p.update(3, &mut a, 1500, 1000, true);
        assert_eq!(a.partial_since_ms, 1500, "a new packet restarts the clock");
        assert!(p.take_expired(2499).is_empty());
        assert_eq!(p.take_expired(2500), vec![3]);
    }
}
