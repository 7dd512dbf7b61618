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
    fn admission_has_hysteresis() {
        let mut a = Admission::new(1_000.0);
        assert!(!a.update(999.0));
        assert!(a.update(1_001.0));
        assert!(a.update(950.0), "stays closed between the watermarks");
        assert!(!a.update(899.0));
        assert!(!a.update(950.0), "stays open between the watermarks");
    }
}
