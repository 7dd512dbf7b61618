//! Cross-shard rebalancing policy: when the shards' loads (connections, and
//! keep-alives expected per second) differ beyond a ratio for longer than a
//! hold time, plan moves from the busiest shards to the idlest so that every
//! shard ends near the mean.
//!
//! Owns the trigger (ratio, hold, one round per hold time) and the plan. Must
//! never read clocks or shard state: the coordinator feeds it one reading per
//! second and posts the moves it returns.

/// Shards closer than this many connections are never rebalanced (a handful
/// of devices is not worth moving).
pub const DIFFERENCE_MIN_CONNECTIONS: u64 = 8;

/// One shard's reading.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ShardLoad {
    pub connections: u64,
    pub keepalives_per_s: f64,
}

/// A planned move: `count` connections from shard `from` to shard `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    pub from: u16,
    pub to: u16,
    pub count: u32,
}

/// Whether the busiest shard carries more than `ratio` x the idlest, in
/// connections or in keep-alives per second.
pub fn imbalanced(loads: &[ShardLoad], ratio: f64) -> bool {
    if loads.len() < 2 {
        return false;
    }
    let max_c = loads.iter().map(|l| l.connections).max().unwrap_or(0);
    let min_c = loads.iter().map(|l| l.connections).min().unwrap_or(0);
    if max_c - min_c < DIFFERENCE_MIN_CONNECTIONS {
        return false;
    }
    let max_k = loads.iter().map(|l| l.keepalives_per_s).fold(0.0, f64::max);
    let min_k = loads.iter().map(|l| l.keepalives_per_s).fold(f64::INFINITY, f64::min);
    max_c as f64 > ratio * min_c.max(1) as f64 || max_k > ratio * min_k.max(f64::MIN_POSITIVE)
}

/// Moves that bring every shard to the mean number of connections, busiest
/// to idlest first, `moves_max` connections in all at most.
pub fn plan(loads: &[ShardLoad], moves_max: u64) -> Vec<Move> {
    let n = loads.len() as u64;
    if n < 2 {
        return Vec::new();
    }
    let total: u64 = loads.iter().map(|l| l.connections).sum();
    let mean = total / n;
    // Shards above the mean give down to it (the remainder stays where it is);
    // shards below take up to it.
    let mut givers: Vec<(u16, u64)> = loads
        .iter()
        .enumerate()
        .filter(|(_, l)| l.connections > mean + 1)
        .map(|(i, l)| (i as u16, l.connections - mean))
        .collect();
    let mut takers: Vec<(u16, u64)> = loads
        .iter()
        .enumerate()
        .filter(|(_, l)| l.connections < mean)
        .map(|(i, l)| (i as u16, mean - l.connections))
        .collect();
    givers.sort_by_key(|g| std::cmp::Reverse(g.1));
    takers.sort_by_key(|t| std::cmp::Reverse(t.1));
    let mut budget = moves_max;
    let mut moves = Vec::new();
    let (mut g, mut t) = (0, 0);
    while g < givers.len() && t < takers.len() && budget > 0 {
        let count = givers[g].1.min(takers[t].1).min(budget);
        if count > 0 {
            moves.push(Move {
                from: givers[g].0,
                to: takers[t].0,
                count: count.min(u32::MAX as u64) as u32,
            });
        }
        givers[g].1 -= count;
        takers[t].1 -= count;
        budget -= count;
        if givers[g].1 == 0 {
            g += 1;
        }
        if takers[t].1 == 0 {
            t += 1;
        }
    }
    moves
}

/// The trigger: imbalance held for `hold_s`, then one round, then at least
/// `hold_s` before the next (moved connections settle; no ping-pong).
#[derive(Clone, Debug)]
pub struct Rebalancer {
    pub ratio: f64,
    pub hold_s: u32,
    pub moves_max: u64,
    imbalanced_since_s: Option<u32>,
    next_round_s: u32,
}

impl Rebalancer {
    pub fn new(ratio: f64, hold_s: u32, moves_max: u64) -> Rebalancer {
        Rebalancer {
            ratio,
            hold_s,
            moves_max,
            imbalanced_since_s: None,
            next_round_s: 0,
        }
    }

    /// Feeds one second's reading; returns the moves to make now (often none).
    pub fn update(&mut self, now_s: u32, loads: &[ShardLoad]) -> Vec<Move> {
        if !imbalanced(loads, self.ratio) {
            self.imbalanced_since_s = None;
            return Vec::new();
        }
        let since = *self.imbalanced_since_s.get_or_insert(now_s);
        if now_s < since + self.hold_s || now_s < self.next_round_s {
            return Vec::new();
        }
        self.next_round_s = now_s + self.hold_s;
        plan(loads, self.moves_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(connections: &[u64]) -> Vec<ShardLoad> {
        connections
            .iter()
            .map(|&c| ShardLoad {
                connections: c,
                keepalives_per_s: c as f64 / 30.0,
            })
            .collect()
    }

    fn apply(mut l: Vec<ShardLoad>, moves: &[Move]) -> Vec<u64> {
        for m in moves {
            l[m.from as usize].connections -= m.count as u64;
            l[m.to as usize].connections += m.count as u64;
        }
        l.iter().map(|x| x.connections).collect()
    }

    #[test]
    fn everything_on_one_shard_is_spread_evenly_in_one_plan() {
        let l = loads(&[4_000, 0, 0, 0]);
        assert!(imbalanced(&l, 1.25));
        let moves = plan(&l, 1_000_000);
        assert_eq!(moves.len(), 3);
        assert!(moves.iter().all(|m| m.from == 0 && m.count == 1_000));
        assert_eq!(apply(l, &moves), vec![1_000; 4]);
    }

    #[test]
    fn several_givers_and_takers_meet_at_the_mean() {
        let l = loads(&[900, 700, 100, 300]);
        let after = apply(l.clone(), &plan(&l, u64::MAX));
        assert_eq!(after, vec![500; 4]);
        // Uneven totals leave at most one connection of difference per shard.
        let l = loads(&[10_003, 0, 0]);
        let after = apply(l.clone(), &plan(&l, u64::MAX));
        let (min, max) = (after.iter().min().unwrap(), after.iter().max().unwrap());
        assert!(max - min <= 3, "{after:?}");
    }

    #[test]
    fn the_budget_caps_a_round() {
        let l = loads(&[4_000, 0, 0, 0]);
        let moves = plan(&l, 1_500);
        assert_eq!(moves.iter().map(|m| m.count as u64).sum::<u64>(), 1_500);
    }

    #[test]
    fn small_or_proportionate_differences_are_left_alone() {
        assert!(!imbalanced(&loads(&[5, 0]), 1.25), "below the absolute minimum");
        assert!(!imbalanced(&loads(&[1_100, 1_000, 1_050]), 1.25));
        assert!(imbalanced(&loads(&[1_300, 1_000]), 1.25));
        assert!(
            !imbalanced(&loads(&[1_000]), 1.25),
            "one shard has no one to share with"
        );
        // Same connections, but one shard's devices beat twice as often.
        let l = vec![
            ShardLoad {
                connections: 1_000,
                keepalives_per_s: 100.0,
            },
            ShardLoad {
                connections: 1_000,
                keepalives_per_s: 40.0,
            },
        ];
        assert!(!imbalanced(&l, 1.25), "equal connections: nothing to move");
    }

    #[test]
    fn trigger_waits_for_the_hold_time_and_spaces_rounds() {
        let mut r = Rebalancer::new(1.25, 10, 1_000_000);
        let skewed = loads(&[4_000, 0, 0, 0]);
        for s in 100..110 {
            assert!(r.update(s, &skewed).is_empty(), "second {s}: still within the hold");
        }
        assert_eq!(r.update(110, &skewed).len(), 3);
        // Still skewed (moves in flight): no new round before the hold passes again.
        for s in 111..120 {
            assert!(r.update(s, &skewed).is_empty());
        }
        assert_eq!(r.update(120, &skewed).len(), 3);
        // Balanced: the clock resets; a fresh imbalance waits a full hold again.
        assert!(r.update(121, &loads(&[1_000; 4])).is_empty());
        assert!(r.update(122, &skewed).is_empty());
        assert!(r.update(131, &skewed).is_empty());
        assert_eq!(r.update(132, &skewed).len(), 3);
    }
}
