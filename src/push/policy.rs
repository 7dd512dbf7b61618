//! Policies: from a profile and the mechanisms' measured behaviour, the ordered
//! plan of mechanisms a message will try.
//!
//! Owns mechanism selection. Must never start an attempt or look at devices:
//! it is a pure function, tested without sockets.

use super::mechanism::Mechanism;
use super::profile::{Goal, Profile};

/// Indices into `mechanisms`, best first. Empty if none qualifies.
pub fn plan(profile: &Profile, mechanisms: &[Mechanism], now_ms: u64) -> Vec<usize> {
    let mut up: Vec<usize> = (0..mechanisms.len())
        .filter(|&i| {
            let m = &mechanisms[i];
            let affordable = profile.max_cost.is_none_or(|c| m.config.cost <= c);
            let free_ok = profile.goal != Goal::Free || m.config.cost == 0.0;
            let fast_enough = profile
                .deliver_within_s
                .is_none_or(|s| m.expected_latency_ms() <= s as f64 * 1000.0);
            affordable && free_ok && fast_enough
        })
        .collect();
    // Down mechanisms go last rather than vanish: if everything is down, still try.
    let key = |i: &usize| -> (bool, f64, f64) {
        let m = &mechanisms[*i];
        let down = m.stats.is_down(now_ms);
        match profile.goal {
            Goal::MinimizeCost | Goal::Free => (down, m.config.cost, -m.stats.success_rate()),
            Goal::MinimizeLatency => (down, m.expected_latency_ms(), m.config.cost),
            Goal::MaximizeReliability | Goal::Critical => (down, -m.stats.success_rate(), m.config.cost),
        }
    };
    up.sort_by(|a, b| key(a).partial_cmp(&key(b)).unwrap_or(std::cmp::Ordering::Equal));
    up
}

/// How many mechanisms of the plan run in parallel.
pub fn parallelism(profile: &Profile) -> usize {
    if profile.goal == Goal::Critical { 2 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::mechanism::{Kind, MechanismConfig, Stats, persistent};

    fn mechs() -> Vec<Mechanism> {
        let webhook = |name: &str, cost: f64, lat: u64| MechanismConfig {
            name: name.into(),
            kind: Kind::Webhook {
                url: "http://127.0.0.1:1/".into(),
            },
            cost,
            timeout_ms: 1_000,
            expected_latency_ms: lat,
        };
        vec![
            Mechanism {
                config: persistent(10_000),
                stats: Stats::default(),
            },
            Mechanism {
                config: webhook("sms", 5.0, 2_000),
                stats: Stats::default(),
            },
            Mechanism {
                config: webhook("fcm", 1.0, 300),
                stats: Stats::default(),
            },
        ]
    }

    #[test]
    fn goals_order_mechanisms() {
        let m = mechs();
        let p = |goal| Profile {
            goal,
            ..Default::default()
        };
        assert_eq!(plan(&p(Goal::MinimizeCost), &m, 0), vec![0, 2, 1]);
        assert_eq!(plan(&p(Goal::MinimizeLatency), &m, 0), vec![0, 2, 1]);
        assert_eq!(plan(&p(Goal::Free), &m, 0), vec![0]);
        let capped = Profile {
            max_cost: Some(2.0),
            ..Default::default()
        };
        assert_eq!(plan(&capped, &m, 0), vec![0, 2]);
        let quick = Profile {
            deliver_within_s: Some(1),
            ..Default::default()
        };
        assert_eq!(plan(&quick, &m, 0), vec![0, 2]);
        assert_eq!(parallelism(&p(Goal::Critical)), 2);
    }

    #[test]
    fn measured_reliability_and_down_status_reorder_the_plan() {
        let mut m = mechs();
        for _ in 0..20 {
            m[0].stats.record_failure(0);
            m[2].stats.record_success(100);
        }
        let rel = Profile {
            goal: Goal::MaximizeReliability,
            ..Default::default()
        };
        assert_eq!(plan(&rel, &m, 0)[0], 2);
        // persistent is down right after its failures: cheapest-first puts it last.
        let cost = Profile::default();
        assert_eq!(plan(&cost, &m, 1).last(), Some(&0));
    }
}
