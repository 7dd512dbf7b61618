//! Delivery mechanisms and what we measure of them (seeds/003 Table A): cost,
//! success rate, mean latency and jitter, and whether a mechanism is down.
//!
//! Owns the mechanism table. Adding APNs, FCM or SMPP means one more `Kind`
//! (`config::mechanism`, re-exported here: the config file parses it) and one
//! adapter in `service` (start + outcome); nothing else changes.
//! Must never perform I/O: the service starts attempts through the shards or
//! the outbound HTTP pool.

pub use crate::config::mechanism::{Kind, MechanismConfig};

/// Consecutive failures after which a mechanism is considered down.
pub const DOWN_AFTER_FAILURES: u32 = 5;
/// How long a down mechanism is skipped before it is tried again.
pub const DOWN_FOR_MS: u64 = 30_000;

/// Measured behaviour of one mechanism (Welford's running mean/variance).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub attempts: u64,
    pub successes: u64,
    pub failures: u64,
    latency_n: u64,
    latency_mean_ms: f64,
    latency_m2: f64,
    consecutive_failures: u32,
    down_until_ms: u64,
}

impl Stats {
    pub fn record_success(&mut self, latency_ms: u64) {
        self.successes += 1;
        self.consecutive_failures = 0;
        self.latency_n += 1;
        let x = latency_ms as f64;
        let d = x - self.latency_mean_ms;
        self.latency_mean_ms += d / self.latency_n as f64;
        self.latency_m2 += d * (x - self.latency_mean_ms);
    }

    pub fn record_failure(&mut self, now_ms: u64) {
        self.failures += 1;
        self.consecutive_failures += 1;
        if self.consecutive_failures >= DOWN_AFTER_FAILURES {
            self.down_until_ms = now_ms + DOWN_FOR_MS;
            self.consecutive_failures = 0;
        }
    }

    /// Laplace-smoothed success rate (unknown = 0.5).
    pub fn success_rate(&self) -> f64 {
        (self.successes as f64 + 1.0) / ((self.successes + self.failures) as f64 + 2.0)
    }

    pub fn mean_latency_ms(&self) -> Option<f64> {
        (self.latency_n > 0).then_some(self.latency_mean_ms)
    }

    /// Standard deviation of latency.
    pub fn jitter_ms(&self) -> Option<f64> {
        (self.latency_n > 1).then(|| (self.latency_m2 / (self.latency_n - 1) as f64).sqrt())
    }

    pub fn is_down(&self, now_ms: u64) -> bool {
        now_ms < self.down_until_ms
    }
}

/// A mechanism with its measurements.
#[derive(Clone, Debug)]
pub struct Mechanism {
    pub config: MechanismConfig,
    pub stats: Stats,
}

impl Mechanism {
    pub fn expected_latency_ms(&self) -> f64 {
        self.stats
            .mean_latency_ms()
            .unwrap_or(self.config.expected_latency_ms as f64)
    }

    /// Table A row for `GET /v1/mechanisms`.
    pub fn to_json(&self, now_ms: u64) -> serde_json::Value {
        serde_json::json!({
            "name": self.config.name,
            "config": self.config,
            "status": if self.stats.is_down(now_ms) { "down" } else { "up" },
            "attempts": self.stats.attempts,
            "successes": self.stats.successes,
            "failures": self.stats.failures,
            "success_rate": self.stats.success_rate(),
            "mean_latency_ms": self.stats.mean_latency_ms(),
            "jitter_ms": self.stats.jitter_ms(),
        })
    }
}

/// The built-in persistent mechanism.
pub fn persistent(ack_timeout_ms: u64) -> MechanismConfig {
    MechanismConfig {
        name: "persistent".into(),
        kind: Kind::Persistent,
        cost: 0.0,
        timeout_ms: ack_timeout_ms,
        expected_latency_ms: 50,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_measure_mean_jitter_and_go_down_after_repeated_failures() {
        let mut s = Stats::default();
        for l in [10, 20, 30] {
            s.record_success(l);
        }
        assert_eq!(s.mean_latency_ms(), Some(20.0));
        assert!((s.jitter_ms().expect("3 samples") - 10.0).abs() < 1e-9);
        assert!(s.success_rate() > 0.7);
        for _ in 0..DOWN_AFTER_FAILURES {
            s.record_failure(1_000);
        }
        assert!(s.is_down(1_000 + DOWN_FOR_MS - 1));
        assert!(!s.is_down(1_000 + DOWN_FOR_MS));
    }
}
