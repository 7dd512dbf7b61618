//! Admission before a device is taken in (heartbeat-load admission, as the
//! carrier patents describe it): the threshold, whether admission is
//! closed, and the budget of new keep-alives the coordinator last allowed.
//! Shards take from the budget on every CONNECT; the coordinator refills it
//! once a second; the operator API changes the threshold.
//!
//! Owns those three atomics. Must never block or lock: a CONNECT costs one
//! fetch_sub.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use crate::policy::load::admission_cost_milli;

pub struct Admission {
    /// Set by the coordinator over the heartbeat-load threshold: CONNECTs are refused.
    pub closed: AtomicBool,
    /// Keep-alives per second x 1000 that new CONNECTs may still add before the
    /// coordinator's next reading (each costs 1/keep-alive).
    pub budget_milli: AtomicI64,
    /// The host's heartbeat-load threshold x 1000 (0 = none).
    threshold_milli: AtomicU64,
}

impl Admission {
    pub fn new(threshold_per_s: Option<f64>) -> Admission {
        let threshold_milli = threshold_per_s.map_or(0, |t| (t * 1000.0).round().max(1.0) as u64);
        Admission {
            closed: AtomicBool::new(false),
            // An empty host's headroom is the whole threshold.
            budget_milli: AtomicI64::new(threshold_milli as i64),
            threshold_milli: AtomicU64::new(threshold_milli),
        }
    }

    /// The heartbeat-load threshold in force (keep-alives per second), if any.
    pub fn threshold_per_s(&self) -> Option<f64> {
        match self.threshold_milli.load(Ordering::Relaxed) {
            0 => None,
            milli => Some(milli as f64 / 1000.0),
        }
    }

    /// Sets the threshold (x 1000; 0 = none). Nobody is admitted on the old
    /// budget: the coordinator recomputes it within a second.
    pub fn set_threshold_milli(&self, milli: u64) {
        self.threshold_milli.store(milli, Ordering::Relaxed);
        self.budget_milli.store(0, Ordering::Relaxed);
    }

    /// Takes a CONNECT with keep-alive `keepalive_s` out of the admission
    /// budget; false = refuse it (no heartbeat headroom left).
    pub fn admit(&self, keepalive_s: u16) -> bool {
        if self.threshold_milli.load(Ordering::Relaxed) == 0 {
            return true;
        }
        let cost = admission_cost_milli(keepalive_s);
        self.budget_milli.fetch_sub(cost, Ordering::Relaxed) >= cost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_threshold_admits_everyone_and_a_budget_runs_out() {
        let open = Admission::new(None);
        assert!((0..10_000).all(|_| open.admit(30)));
        // 1/s of headroom: 30 devices with a 30 s keep-alive fill it.
        let gate = Admission::new(Some(1.0));
        let admitted = (0..100).filter(|_| gate.admit(30)).count();
        assert_eq!(admitted, 30);
        gate.set_threshold_milli(0);
        assert!(gate.admit(30));
    }
}
