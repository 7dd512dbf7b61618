//! Heartbeat-load relief policy (seeds/004): which devices to relieve first
//! (the preset rule: newest, or lowest match degree), how far, and how: ask to
//! lengthen the heartbeat before any disconnection, disconnect only devices
//! already adjusted (or at the cap), never one whose previous connection was
//! ended by relief.
//!
//! Owns the order and the plan. Must never touch connections or clocks: the
//! shard gathers candidates, applies the plan, and the census shows the result.

use crate::config::ReliefRule;

/// Match degree of a device to this host: +1 same MCC, +1 same MNC too, +1
/// its location area is one of the host's. 0 when it reports nothing.
pub fn match_degree(network: Option<(u16, u16, Option<u32>)>, home: Option<(u16, u16)>, home_areas: &[u32]) -> u8 {
    let Some((mcc, mnc, area)) = network else { return 0 };
    let mut degree = 0;
    if let Some((home_mcc, home_mnc)) = home
        && mcc == home_mcc
    {
        degree += 1;
        if mnc == home_mnc {
            degree += 1;
        }
    }
    if area.is_some_and(|a| home_areas.contains(&a)) {
        degree += 1;
    }
    degree
}

/// One connected device as the shard sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub keepalive_s: u16,
    /// Asked to lengthen its heartbeat in an earlier round.
    pub adjusted: bool,
    /// Its previous connection was ended by relief: never disconnect it now.
    pub relieved_before: bool,
    pub match_degree: u8,
    /// Connection order (larger = newer).
    pub order: u32,
}

/// What to do with one candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `$pulse/heartbeat` with this interval.
    Adjust { keepalive_s: u16 },
    /// DISCONNECT 0x89 / 0x9C.
    Disconnect,
}

/// How long one relief round's `$pulse/heartbeat` messages to devices moving to
/// `keepalive_s` are spread over: half the new interval plus a margin (1 s, or a
/// tenth of the interval if shorter). Shorter than spreading over the whole new
/// interval, so the load falls sooner; the offsets below still land the devices'
/// first new keep-alives uniformly over one new interval.
pub fn adjust_send_spread_ms(keepalive_s: u16) -> u64 {
    let interval_ms = keepalive_s as u64 * 1000;
    interval_ms / 2 + (interval_ms / 10).min(1_000)
}

/// The `offset_ms` for the device at `place_255` (its place in the round, in
/// 255ths) of a round spread by `adjust_send_spread_ms`: sent at place x spread
/// after the round starts, its first new keep-alive comes at place x interval
/// after the round's first one. Never more than half the interval minus the
/// margin, so that keep-alive (offset + interval after the message) comes before
/// the gateway's 1.5 x interval deadline.
pub fn adjust_offset_ms(keepalive_s: u16, place_255: u8) -> u64 {
    let interval_ms = keepalive_s as u64 * 1000;
    let slack_ms = interval_ms.saturating_sub(adjust_send_spread_ms(keepalive_s));
    slack_ms * place_255 as u64 / 255
}

/// The place (in 255ths) of device `n` of `devices` in a round: (n + 1) / N.
pub fn place_255(n: usize, devices: usize) -> u8 {
    if devices == 0 {
        return 255;
    }
    (((n as u64 + 1) * 255) / devices as u64).min(255) as u8
}

/// Sorts candidate indices by the rule: the first is relieved first.
pub fn order(candidates: &[Candidate], rule: ReliefRule) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..candidates.len()).collect();
    match rule {
        ReliefRule::Newest => idx.sort_by_key(|&i| std::cmp::Reverse(candidates[i].order)),
        ReliefRule::MatchDegree => {
            idx.sort_by_key(|&i| (candidates[i].match_degree, std::cmp::Reverse(candidates[i].order)))
        }
    }
    idx
}

/// Keep-alives per second saved by moving from `from_s` to `to_s`.
fn saving_per_s(from_s: u16, to_s: Option<u16>) -> f64 {
    let before = 1.0 / from_s as f64;
    match to_s {
        Some(t) => before - 1.0 / t as f64,
        None => before,
    }
}

/// Savings this close to the target count as reached (float rounding).
const SHED_EPSILON_PER_S: f64 = 1e-9;

/// Plans relief worth `shed_per_s` keep-alives per second over candidates in
/// `order`: adjustments first (doubling, capped at `keepalive_max_s`); only if
/// every adjustable device is adjusted and it is not enough, disconnections of
/// devices adjusted in an earlier round or already at the cap.
pub fn plan(candidates: &[Candidate], order: &[usize], shed_per_s: f64, keepalive_max_s: u16) -> Vec<(usize, Action)> {
    let mut left = shed_per_s;
    let mut actions = Vec::new();
    for &i in order {
        if left <= SHED_EPSILON_PER_S {
            return actions;
        }
        let c = candidates[i];
        if c.keepalive_s == 0 || c.adjusted || c.keepalive_s >= keepalive_max_s {
            continue;
        }
        let new_s = c.keepalive_s.saturating_mul(2).min(keepalive_max_s);
        left -= saving_per_s(c.keepalive_s, Some(new_s));
        actions.push((i, Action::Adjust { keepalive_s: new_s }));
    }
    for &i in order {
        if left <= SHED_EPSILON_PER_S {
            break;
        }
        let c = candidates[i];
        let spent = c.adjusted || c.keepalive_s >= keepalive_max_s;
        if c.keepalive_s == 0 || !spent || c.relieved_before {
            continue;
        }
        left -= saving_per_s(c.keepalive_s, None);
        actions.push((i, Action::Disconnect));
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjustments_sent_over_half_an_interval_land_over_a_whole_one_before_the_deadline() {
        use crate::policy::dispersal::send_offset_ms;
        for keepalive_s in [2u16, 10, 20, 60, 1_800] {
            let interval_ms = keepalive_s as u64 * 1000;
            let spread_ms = adjust_send_spread_ms(keepalive_s);
            assert!(spread_ms > interval_ms / 2 && spread_ms < interval_ms);
            let n = 1_000;
            let mut lands = Vec::new();
            for i in 0..n {
                let sent_ms = send_offset_ms(i, n, spread_ms);
                let offset_ms = adjust_offset_ms(keepalive_s, place_255(i, n));
                // The device's first new keep-alive: offset + interval after the message.
                let first_ms = sent_ms + offset_ms + interval_ms;
                assert!(
                    first_ms - sent_ms < interval_ms * 3 / 2,
                    "{keepalive_s} s: device {i} would miss the deadline"
                );
                lands.push(first_ms - interval_ms);
            }
            // Uniform over one interval: every tenth of it gets a tenth of the devices.
            let mut tenths = [0u32; 10];
            for l in &lands {
                tenths[((l * 10 / interval_ms) as usize).min(9)] += 1;
            }
            assert!(
                tenths.iter().all(|&t| (90..=110).contains(&t)),
                "{keepalive_s} s: {tenths:?}"
            );
        }
    }

    fn cand(keepalive_s: u16, adjusted: bool, degree: u8, order: u32) -> Candidate {
        Candidate {
            keepalive_s,
            adjusted,
            relieved_before: false,
            match_degree: degree,
            order,
        }
    }

    #[test]
    fn match_degree_weighs_network_and_location() {
        let home = Some((460, 1));
        let areas = [100, 101];
        assert_eq!(match_degree(None, home, &areas), 0);
        assert_eq!(match_degree(Some((310, 410, None)), home, &areas), 0);
        assert_eq!(match_degree(Some((460, 2, None)), home, &areas), 1);
        assert_eq!(match_degree(Some((460, 1, None)), home, &areas), 2);
        assert_eq!(match_degree(Some((460, 1, Some(101))), home, &areas), 3);
        assert_eq!(match_degree(Some((460, 1, Some(7))), home, &areas), 2);
        assert_eq!(match_degree(Some((460, 1, Some(100))), None, &areas), 1);
    }

    #[test]
    fn rules_order_newest_or_worst_match_first() {
        let c = [
            cand(10, false, 2, 1),
            cand(10, false, 0, 2),
            cand(10, false, 2, 3),
            cand(10, false, 0, 4),
        ];
        assert_eq!(order(&c, ReliefRule::Newest), vec![3, 2, 1, 0]);
        assert_eq!(order(&c, ReliefRule::MatchDegree), vec![3, 1, 2, 0]);
    }

    #[test]
    fn adjusts_everyone_it_can_before_disconnecting_anyone() {
        // 10 devices at 10 s (1/s): doubling one saves 0.05/s.
        let c: Vec<Candidate> = (0..10).map(|i| cand(10, false, 0, i)).collect();
        let o = order(&c, ReliefRule::Newest);
        let p = plan(&c, &o, 0.2, 1_800);
        assert_eq!(p.len(), 4);
        assert!(p.iter().all(|(_, a)| *a == Action::Adjust { keepalive_s: 20 }));
        assert_eq!(
            p.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![9, 8, 7, 6],
            "newest first"
        );
        // Asking for more than adjustments can give: all adjusted, nobody disconnected
        // (none was adjusted before this round).
        let p = plan(&c, &o, 5.0, 1_800);
        assert_eq!(p.len(), 10);
        assert!(p.iter().all(|(_, a)| matches!(a, Action::Adjust { .. })));
    }

    #[test]
    fn disconnects_only_adjusted_or_capped_devices_never_twice_in_a_row() {
        let mut c = vec![
            cand(20, true, 0, 1),  // adjusted earlier: may go
            cand(10, false, 0, 2), // adjustable: adjusted, not disconnected
            cand(60, false, 0, 3), // at the cap: may go
            cand(20, true, 0, 4),  // adjusted earlier, but relieved before: stays
        ];
        c[3].relieved_before = true;
        let o = order(&c, ReliefRule::Newest);
        let p = plan(&c, &o, 1.0, 60);
        assert_eq!(
            p,
            vec![
                (1, Action::Adjust { keepalive_s: 20 }),
                (2, Action::Disconnect),
                (0, Action::Disconnect)
            ]
        );
        // The plan stops once the saving is reached.
        let p = plan(&c, &o, 0.05, 60);
        assert_eq!(p, vec![(1, Action::Adjust { keepalive_s: 20 })]);
        assert!(plan(&c, &o, 0.0, 60).is_empty());
    }
}
