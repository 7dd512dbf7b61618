//! Per-second accounting of a run: what workers count in each 1-second slot (slot
//! `s` = seconds `[s, s+1)` after the parent's start), the parent's sum over
//! workers, and the keep-alive synchronization measure of seeds/000 (peak slot
//! over mean slot within whole keep-alive periods; 1.0 = perfectly spread).
//! Must never: do I/O, read clocks or know about sockets; every function here is
//! pure so the analysis is testable with hand-made numbers.

use serde::{Deserialize, Serialize};

/// Counts of one worker (or, summed, of the whole run) in one 1-second slot.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotCounts {
    /// Slot index: seconds since the parent's start.
    pub slot: u64,
    /// PINGREQs the devices sent (the keep-alives the server receives).
    pub pingreqs: u64,
    /// PINGRESPs that answered an outstanding PINGREQ.
    pub pingresps: u64,
    /// CONNACK 0 received (connects and reconnects).
    pub connacks: u64,
    /// Established connections lost (server close, ping timeout, storm drop...).
    pub closes: u64,
    /// Failed connect attempts.
    pub failed: u64,
    /// PUBLISH packets received.
    pub publishes: u64,
    /// Devices connected at the end of the slot.
    pub connected: u64,
    /// Fewest devices connected at any moment within the slot.
    pub connected_min: u64,
    /// Heartbeat adjustments (`$pulse/heartbeat`) received.
    #[serde(default)]
    pub hb_adjusts: u64,
    /// Connections ended by an overload DISCONNECT (0x89 / 0x9C / 0x9D).
    #[serde(default)]
    pub overload_disconnects: u64,
    /// Connect attempts refused by CONNACK (any non-zero code).
    #[serde(default)]
    pub refused: u64,
    /// TLS handshakes completed in full (`--tls`).
    #[serde(default)]
    pub tls_full: u64,
    /// TLS handshakes completed by resuming a session (`--tls`).
    #[serde(default)]
    pub tls_resumed: u64,
}

impl SlotCounts {
    pub fn new(slot: u64, connected: u64) -> Self {
        SlotCounts {
            slot,
            connected,
            connected_min: connected,
            ..Default::default()
        }
    }

    fn add(&mut self, o: &SlotCounts) {
        self.pingreqs += o.pingreqs;
        self.pingresps += o.pingresps;
        self.connacks += o.connacks;
        self.closes += o.closes;
        self.failed += o.failed;
        self.publishes += o.publishes;
        self.connected += o.connected;
        self.connected_min += o.connected_min;
        self.hb_adjusts += o.hb_adjusts;
        self.overload_disconnects += o.overload_disconnects;
        self.refused += o.refused;
        self.tls_full += o.tls_full;
        self.tls_resumed += o.tls_resumed;
    }
}

/// A worker's current slot: counters are bumped in place, and `advance` hands
/// back every slot that completed.
#[derive(Debug, Clone)]
pub struct SlotAcc {
    pub cur: SlotCounts,
}

impl SlotAcc {
    pub fn new(slot: u64, connected: u64) -> Self {
        SlotAcc {
            cur: SlotCounts::new(slot, connected),
        }
    }

    /// Records the current connected count (after a change).
    pub fn set_connected(&mut self, connected: u64) {
        self.cur.connected = connected;
        self.cur.connected_min = self.cur.connected_min.min(connected);
    }

    /// Moves to `slot` (no-op if not later). Returns the completed slots, one per
    /// second even when nothing happened in some of them.
    pub fn advance(&mut self, slot: u64, connected: u64) -> Vec<SlotCounts> {
        let mut done = Vec::new();
        while self.cur.slot < slot {
            let next = SlotCounts::new(self.cur.slot + 1, connected);
            done.push(std::mem::replace(&mut self.cur, next));
        }
        done
    }
}

/// The parent's sum of all workers' slots, indexed by slot.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub slots: Vec<SlotCounts>,
}

impl Timeline {
    pub fn add(&mut self, s: &SlotCounts) {
        // A slot index comes from a worker's clock; refuse absurd ones (> 30 days).
        if s.slot > 30 * 86_400 {
            return;
        }
        let i = s.slot as usize;
        while self.slots.len() <= i {
            let n = self.slots.len() as u64;
            self.slots.push(SlotCounts {
                slot: n,
                ..Default::default()
            });
        }
        self.slots[i].add(s);
    }

    /// Keeps only slots `0..n`.
    pub fn truncate(&mut self, n: usize) {
        self.slots.truncate(n);
    }

    /// PINGREQ counts of slots `[start, end)` (missing slots count 0).
    pub fn pingreqs_in(&self, w: Window) -> Vec<u64> {
        (w.start..w.end)
            .map(|i| self.slots.get(i as usize).map_or(0, |s| s.pingreqs))
            .collect()
    }

    /// Struct-of-arrays view for the JSON report and the charts.
    pub fn series(&self) -> Series {
        let col = |f: fn(&SlotCounts) -> u64| self.slots.iter().map(f).collect();
        Series {
            pingreqs: col(|s| s.pingreqs),
            pingresps: col(|s| s.pingresps),
            connacks: col(|s| s.connacks),
            closes: col(|s| s.closes),
            failed: col(|s| s.failed),
            publishes: col(|s| s.publishes),
            connected: col(|s| s.connected),
            connected_min: col(|s| s.connected_min),
            hb_adjusts: col(|s| s.hb_adjusts),
            overload_disconnects: col(|s| s.overload_disconnects),
            refused: col(|s| s.refused),
            tls_full: col(|s| s.tls_full),
            tls_resumed: col(|s| s.tls_resumed),
        }
    }
}

/// Whole-run per-second arrays; index = second since start.
#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub pingreqs: Vec<u64>,
    pub pingresps: Vec<u64>,
    pub connacks: Vec<u64>,
    pub closes: Vec<u64>,
    pub failed: Vec<u64>,
    pub publishes: Vec<u64>,
    pub connected: Vec<u64>,
    pub connected_min: Vec<u64>,
    pub hb_adjusts: Vec<u64>,
    pub overload_disconnects: Vec<u64>,
    pub refused: Vec<u64>,
    pub tls_full: Vec<u64>,
    pub tls_resumed: Vec<u64>,
}

/// Slots `[start, end)`, in seconds since the start of the run.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub end: u64,
}

/// Peak slot divided by the mean slot. None when there are no slots or no
/// keep-alives at all. 1.0 = perfectly spread; a fully synchronized population
/// with period T gives T (all of a period's keep-alives in one slot).
pub fn peak_to_mean(counts: &[u64]) -> Option<f64> {
    let sum: u64 = counts.iter().sum();
    if counts.is_empty() || sum == 0 {
        return None;
    }
    let peak = *counts.iter().max()? as f64;
    Some(peak / (sum as f64 / counts.len() as f64))
}

/// Length of the default analysis window: max(3 x keep-alive, 30 s), rounded up
/// to whole keep-alive periods (a partial period would bias the mean).
pub fn default_window_len_s(keepalive_s: u16) -> u64 {
    let k = keepalive_s as u64;
    if k == 0 {
        return 30;
    }
    let want = (3 * k).max(30);
    want.div_ceil(k) * k
}

/// The default window: the last `default_window_len_s` full slots before
/// `end_s` (clipped at the start of the run). None if no full slot exists.
pub fn tail_window(end_s: f64, keepalive_s: u16) -> Option<Window> {
    let end = end_s.max(0.0).floor() as u64;
    if end == 0 {
        return None;
    }
    Some(Window {
        start: end.saturating_sub(default_window_len_s(keepalive_s)),
        end,
    })
}

/// Consecutive whole keep-alive periods from `from_s` (rounded up to a second)
/// to `to_s`: where a synchronized burst shows, and each period after it.
pub fn period_windows(from_s: f64, to_s: f64, keepalive_s: u16) -> Vec<Window> {
    let k = keepalive_s as u64;
    if k == 0 || !from_s.is_finite() || !to_s.is_finite() {
        return Vec::new();
    }
    let mut start = from_s.max(0.0).ceil() as u64;
    let end = to_s.max(0.0).floor() as u64;
    let mut windows = Vec::new();
    while start + k <= end {
        windows.push(Window { start, end: start + k });
        start += k;
    }
    windows
}

/// The latest window of whole keep-alive periods that starts at or after
/// `from_s` and ends at or before `to_s`, at most `max_periods` long (at least
/// one). None when not even one whole period fits, or keep-alive is 0.
pub fn periods_window(from_s: f64, to_s: f64, keepalive_s: u16, max_periods: u64) -> Option<Window> {
    let k = keepalive_s as u64;
    if k == 0 || !from_s.is_finite() || !to_s.is_finite() {
        return None;
    }
    let start_min = from_s.max(0.0).ceil() as u64;
    let end = to_s.max(0.0).floor() as u64;
    let periods = (end.saturating_sub(start_min) / k).min(max_periods.max(1));
    if periods == 0 {
        return None;
    }
    Some(Window {
        start: end - periods * k,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_to_mean_values() {
        assert_eq!(peak_to_mean(&[]), None);
        assert_eq!(peak_to_mean(&[0, 0, 0]), None);
        assert_eq!(peak_to_mean(&[5, 5, 5, 5]), Some(1.0));
        // everything in one slot of a 20-slot period: peak/mean = 20
        let mut v = vec![0u64; 20];
        v[7] = 1000;
        assert_eq!(peak_to_mean(&v), Some(20.0));
        let r = peak_to_mean(&[1, 2, 3, 2]).unwrap();
        assert!((r - 1.5).abs() < 1e-12, "{r}");
    }

    #[test]
    fn slot_accumulator_emits_every_second() {
        let mut a = SlotAcc::new(0, 0);
        a.cur.pingreqs += 3;
        a.set_connected(10);
        assert!(a.advance(0, 10).is_empty());
        let done = a.advance(3, 7);
        assert_eq!(done.len(), 3);
        assert_eq!((done[0].slot, done[0].pingreqs, done[0].connected), (0, 3, 10));
        assert_eq!((done[1].slot, done[1].pingreqs, done[1].connected), (1, 0, 7));
        assert_eq!(done[2].slot, 2);
        assert_eq!(a.cur.slot, 3);
        a.set_connected(2);
        a.set_connected(9);
        assert_eq!((a.cur.connected, a.cur.connected_min), (9, 2));
        assert!(a.advance(1, 9).is_empty(), "never goes back");
    }

    #[test]
    fn timeline_sums_workers_by_slot() {
        let mut t = Timeline::default();
        let s = |slot, pingreqs, connected| SlotCounts {
            slot,
            pingreqs,
            connected,
            connected_min: connected,
            ..Default::default()
        };
        t.add(&s(1, 10, 100));
        t.add(&s(1, 5, 50));
        t.add(&s(3, 7, 150));
        t.add(&s(u64::MAX, 1, 1)); // ignored
        assert_eq!(t.series().pingreqs, vec![0, 15, 0, 7]);
        assert_eq!(t.series().connected, vec![0, 150, 0, 150]);
        assert_eq!(t.pingreqs_in(Window { start: 2, end: 6 }), vec![0, 7, 0, 0]);
        t.truncate(2);
        assert_eq!(t.slots.len(), 2);
    }

    #[test]
    fn whole_periods_from_a_point() {
        let w = period_windows(90.4, 250.0, 30);
        assert_eq!(w.len(), 5);
        assert_eq!((w[0].start, w[0].end), (91, 121));
        assert_eq!((w[4].start, w[4].end), (211, 241));
        assert!(period_windows(90.0, 100.0, 30).is_empty());
        assert!(period_windows(0.0, 100.0, 0).is_empty());
    }

    #[test]
    fn windows() {
        assert_eq!(default_window_len_s(20), 60);
        assert_eq!(default_window_len_s(60), 180);
        assert_eq!(default_window_len_s(7), 35); // 30 rounded up to whole periods
        assert_eq!(default_window_len_s(0), 30);
        assert_eq!(tail_window(100.4, 20), Some(Window { start: 40, end: 100 }));
        assert_eq!(tail_window(10.0, 20), Some(Window { start: 0, end: 10 }));
        assert_eq!(tail_window(0.5, 20), None);
        // before a burst at 61.3 s, all connected at 20.2 s, K = 20: two periods [21, 61)
        assert_eq!(periods_window(20.2, 61.3, 20, 3), Some(Window { start: 21, end: 61 }));
        assert_eq!(periods_window(20.2, 61.3, 20, 1), Some(Window { start: 41, end: 61 }));
        // after: burst done at 64.5, hold ends at 150.2: 3 periods max -> [90, 150)
        assert_eq!(periods_window(64.5, 150.2, 20, 3), Some(Window { start: 90, end: 150 }));
        assert_eq!(periods_window(64.5, 80.0, 20, 3), None);
        assert_eq!(periods_window(0.0, 80.0, 0, 3), None);
        assert_eq!(periods_window(0.0, 80.0, 20, 0), Some(Window { start: 60, end: 80 }));
    }
}
