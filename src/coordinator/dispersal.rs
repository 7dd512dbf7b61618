//! Keep-alive dispersal policy (seeds/000): detect synchronized keep-alives
//! from per-second arrival counts, and spread the synchronized devices' timer
//! restarts uniformly over one period.
//!
//! Owns the detection rule and the schedule. Must never read clocks or shard
//! state: pure functions of their arguments, tested with a simulated clock.

/// Seconds whose keep-alive count exceeds `threshold_factor` x the uniform
/// expectation (`connections / period_s` per second) within the last period.
/// `counts[i]` is the count at second `first_second + i`; returns the hot seconds.
pub fn hot_seconds(
    counts: &[u32],
    first_second: u32,
    period_s: u32,
    connections: u64,
    threshold_factor: f64,
) -> Vec<u32> {
    if period_s == 0 || connections == 0 || counts.is_empty() {
        return Vec::new();
    }
    let expected_per_s = connections as f64 / period_s as f64;
    // Never flag tiny absolute counts: a handful of devices is not a storm.
    let threshold = (expected_per_s * threshold_factor).max(MIN_HOT_COUNT as f64);
    let window = counts.len().min(period_s as usize);
    let start = counts.len() - window;
    (start..counts.len())
        .filter(|&i| counts[i] as f64 > threshold)
        .map(|i| first_second + i as u32)
        .collect()
}

/// A slot is never hot below this many keep-alives per second.
pub const MIN_HOT_COUNT: u32 = 20;

/// Peak over mean of the counts (1.0 = perfectly spread).
pub fn peak_to_mean(counts: &[u32]) -> f64 {
    if counts.is_empty() {
        return 0.0;
    }
    let sum: u64 = counts.iter().map(|&c| c as u64).sum();
    if sum == 0 {
        return 0.0;
    }
    let mean = sum as f64 / counts.len() as f64;
    *counts.iter().max().unwrap_or(&0) as f64 / mean
}

/// When device n of `devices` gets its keep-alive configuration message:
/// ((n + 1) / N) x T after `start_ms` (claims 3 and 10), so the restarted
/// timers fall uniformly over one period.
pub fn send_offset_ms(n: usize, devices: usize, period_ms: u64) -> u64 {
    if devices == 0 {
        return 0;
    }
    ((n as u64 + 1) * period_ms) / devices as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_arrivals_are_not_hot_and_a_burst_is() {
        // 6,000 devices, T = 60 s: 100 per second expected.
        let uniform = vec![100u32; 60];
        assert!(hot_seconds(&uniform, 0, 60, 6_000, 2.0).is_empty());
        let mut burst = vec![50u32; 60];
        burst[10] = 3_000;
        burst[11] = 400;
        assert_eq!(hot_seconds(&burst, 1_000, 60, 6_000, 2.0), vec![1_010, 1_011]);
        assert!(peak_to_mean(&burst) > 20.0);
        assert!((peak_to_mean(&uniform) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn only_the_last_period_counts_and_small_counts_never_trigger() {
        let mut counts = vec![0u32; 120];
        counts[5] = 10_000; // more than one period ago
        assert!(hot_seconds(&counts, 0, 60, 6_000, 2.0).is_empty());
        let few = vec![0, 0, 15, 0];
        assert!(hot_seconds(&few, 0, 4, 4, 2.0).is_empty());
    }

    #[test]
    fn schedule_spreads_devices_uniformly_over_the_period() {
        let n = 1_000;
        let period_ms = 60_000;
        let offsets: Vec<u64> = (0..n).map(|i| send_offset_ms(i, n, period_ms)).collect();
        assert_eq!(offsets[0], 60);
        assert_eq!(offsets[n - 1], period_ms);
        // Per-second buckets of the restart times: within 1 of uniform.
        let mut buckets = vec![0u32; 60];
        for o in &offsets {
            buckets[((o - 1) / 1000) as usize] += 1;
        }
        assert!(buckets.iter().all(|&b| (16..=17).contains(&b)), "{buckets:?}");
        assert!(peak_to_mean(&buckets) < 1.05);
    }
}
