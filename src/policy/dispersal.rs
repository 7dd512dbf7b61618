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

/// The seconds whose devices a dispersal round spreads: the `hot` ones, plus
/// every other second of the window that would still stand above
/// `select_factor` x the uniform rate once the spread devices' share (their
/// count / T per second) lands on it; repeated until nothing more joins.
/// This takes in a burst's shoulders (its first and last seconds are often
/// below the detection threshold but would stay a peak over the new uniform
/// floor), and leaves an already uniform remainder alone.
pub fn spread_seconds(
    counts: &[u32],
    first_second: u32,
    period_s: u32,
    connections: u64,
    hot: &[u32],
    select_factor: f64,
) -> Vec<u32> {
    if period_s == 0 || connections == 0 || counts.is_empty() || hot.is_empty() {
        return hot.to_vec();
    }
    let expected_per_s = connections as f64 / period_s as f64;
    let limit = expected_per_s * select_factor;
    let window = counts.len().min(period_s as usize);
    let start = counts.len() - window;
    let mut selected = vec![false; counts.len()];
    let mut spread: u64 = 0;
    for &s in hot {
        if let Some(i) = s.checked_sub(first_second).map(|i| i as usize)
            && i < counts.len()
            && !selected[i]
        {
            selected[i] = true;
            spread += counts[i] as u64;
        }
    }
    loop {
        let share_per_s = spread as f64 / period_s as f64;
        let joining: Vec<usize> = (start..counts.len())
            .filter(|&i| !selected[i] && counts[i] > 0 && counts[i] as f64 + share_per_s > limit)
            .collect();
        if joining.is_empty() {
            break;
        }
        for i in joining {
            selected[i] = true;
            spread += counts[i] as u64;
        }
    }
    (0..counts.len())
        .filter(|&i| selected[i])
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
    fn a_bursts_shoulders_join_the_spread_and_a_uniform_remainder_does_not() {
        // 100,000 devices, T = 30 s, all synchronized by a burst over 15 s: the
        // last second holds only the tail (1,230), below the uniform rate.
        let mut counts = vec![0u32; 30];
        for c in counts.iter_mut().take(29).skip(15) {
            *c = 7_000;
        }
        counts[29] = 1_230;
        let total: u32 = counts.iter().sum();
        let hot = hot_seconds(&counts, 100, 30, total as u64, 1.5);
        assert_eq!(hot, (115..129).collect::<Vec<_>>());
        let spread = spread_seconds(&counts, 100, 30, total as u64, &hot, 1.2);
        assert_eq!(spread, (115..130).collect::<Vec<_>>(), "the tail second joins");
        // Left out, the tail would stand at 1,230 + 98,000/30 = 4,497/s over a
        // uniform 3,308/s: peak/mean 1.36 for ever, never hot again.

        // A small storm over a uniform population: only the storm is spread.
        let mut counts = vec![3_333u32; 30];
        counts[7] = 20_000;
        counts[12] = 3_500; // noise
        let total: u64 = counts.iter().map(|&c| c as u64).sum();
        let hot = hot_seconds(&counts, 0, 30, total, 1.5);
        assert_eq!(hot, vec![7]);
        assert_eq!(spread_seconds(&counts, 0, 30, total, &hot, 1.2), vec![7]);
        // Nothing hot: nothing spread.
        assert!(spread_seconds(&counts, 0, 30, total, &[], 1.2).is_empty());
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
