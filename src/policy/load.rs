//! Heartbeat load control (seeds/004): the HB1 + HB2 load estimate, and the
//! admission decision with hysteresis between a high and a low watermark.
//!
//! Owns the estimate and the on/off rule. Must never read clocks or shard
//! state: pure functions and a tiny state machine, tested without sockets.

/// Heartbeats per second the host must process: HB1 (received in the T/2
/// before now) plus HB2 (expected in the T/2 after now, from the
/// connections' intervals), over T.
pub fn heartbeat_load_per_s(hb1_received: u64, expected_rate_per_s: f64, period_s: u32) -> f64 {
    if period_s == 0 {
        return 0.0;
    }
    let half = period_s as f64 / 2.0;
    let hb2_expected = expected_rate_per_s * half;
    (hb1_received as f64 + hb2_expected) / period_s as f64
}

/// Admission with hysteresis: closes above `high`, reopens only below `low`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Admission {
    pub high_per_s: f64,
    pub low_per_s: f64,
    pub closed: bool,
}

impl Admission {
    pub fn new(threshold_per_s: f64) -> Admission {
        Admission {
            high_per_s: threshold_per_s,
            low_per_s: threshold_per_s * LOW_WATERMARK_FRACTION,
            closed: false,
        }
    }

    /// Feeds one load estimate; returns whether new connections are refused.
    pub fn update(&mut self, load_per_s: f64) -> bool {
        if self.closed {
            if load_per_s < self.low_per_s {
                self.closed = false;
            }
        } else if load_per_s > self.high_per_s {
            self.closed = true;
        }
        self.closed
    }
}

/// Keep-alives per second (x 1000) new devices may add before the next
/// reading: up to halfway between the marks while admission is open (so
/// arrival noise around a full host does not cross the high mark and trigger
/// relief), up to the low mark once it has closed (hysteresis), never
/// negative. A CONNECT with keep-alive `k` seconds takes 1000 / k of it.
pub fn admission_budget_milli(admission: &Admission, steady_per_s: f64) -> i64 {
    let target_per_s = if admission.closed {
        admission.low_per_s
    } else {
        (admission.low_per_s + admission.high_per_s) / 2.0
    };
    ((target_per_s - steady_per_s) * 1000.0).max(0.0) as i64
}

/// What one CONNECT with keep-alive `keepalive_s` costs the admission budget
/// (a device without keep-alive, or one beyond an hour, costs the minimum).
pub fn admission_cost_milli(keepalive_s: u16) -> i64 {
    let period_s = if keepalive_s == 0 {
        3_600
    } else {
        keepalive_s.min(3_600)
    };
    (1000 / period_s as i64).max(1)
}

/// Admission reopens below this fraction of the threshold.
pub const LOW_WATERMARK_FRACTION: f64 = 0.9;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_combines_past_and_expected_halves() {
        // T = 60 s; 3,000 received in the last 30 s; 100/s expected -> 3,000 in the next 30 s.
        assert_eq!(heartbeat_load_per_s(3_000, 100.0, 60), 100.0);
        // A synchronized burst in the past half raises the estimate.
        assert_eq!(heartbeat_load_per_s(9_000, 100.0, 60), 200.0);
        assert_eq!(heartbeat_load_per_s(1, 1.0, 0), 0.0);
    }

    #[test]
    fn budget_fills_below_the_high_mark_then_only_to_the_low_one() {
        let mut a = Admission::new(500.0);
        a.update(300.0);
        // Open: fills to halfway between the marks (475/s).
        assert_eq!(admission_budget_milli(&a, 300.0), 175_000);
        // 175/s of headroom at T = 10 s: 1,750 new devices, not one more.
        assert_eq!(175_000 / admission_cost_milli(10), 1_750);
        a.update(520.0);
        assert!(a.closed);
        assert_eq!(admission_budget_milli(&a, 520.0), 0);
        assert_eq!(admission_budget_milli(&a, 460.0), 0, "closed: only below the low mark");
        assert_eq!(admission_budget_milli(&a, 400.0), 50_000);
        assert_eq!(admission_cost_milli(0), 1, "no keep-alive: the minimum");
        assert_eq!(admission_cost_milli(1), 1_000);
    }

    #[test]
    fn admission_has_hysteresis() {
        let mut a = Admission::new(1_000.0);
        assert!(!a.update(999.0));
        assert!(a.update(1_001.0));
        assert!(a.update(950.0), "stays closed between the watermarks");
        assert!(!a.update(899.0));
        assert!(!a.update(950.0), "stays open between the watermarks");
    }
}
