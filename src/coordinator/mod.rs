//! The coordinator thread: once a second it reads every shard's lock-free
//! counters (keep-alives per second, connections by keep-alive), detects
//! synchronized keep-alives and posts dispersal commands, estimates the
//! heartbeat load (HB1 + HB2), sets the admission budget with hysteresis,
//! asks shards to relieve load when it stays over the threshold, and moves
//! connections between shards when their loads drift apart.
//!
//! Owns when those decisions are taken (the policies themselves are pure
//! functions in `crate::policy`). Must never touch a connection, and never
//! make a shard wait: it only reads atomics and posts to mailboxes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::config::Config;
use crate::policy::{dispersal, load, rebalance};
use crate::shard::admission::Admission;
use crate::shard::counters::{KEEPALIVE_SLOTS, KEEPALIVE_TRACKED_MAX_S};
use crate::shard::mailbox::Command;
use crate::shard::peers::Peers;

/// What the coordinator last measured (for /metrics).
#[derive(Default)]
pub struct CoordinatorGauges {
    /// Heartbeat load estimate x 1000.
    pub load_milli_per_s: AtomicU64,
    /// Keep-alive peak/mean over the last period x 1000.
    pub peak_to_mean_milli: AtomicU64,
    /// The dominant keep-alive period (seconds).
    pub period_s: AtomicU64,
    pub dispersals: AtomicU64,
    pub reliefs: AtomicU64,
    /// Rebalancing rounds started, and connections asked to move.
    pub rebalance_rounds: AtomicU64,
    pub rebalance_moves_requested: AtomicU64,
}

/// What the coordinator reads and writes, and nothing more.
#[derive(Clone)]
pub struct CoordinatorEnv {
    pub cfg: Arc<Config>,
    pub peers: Arc<Peers>,
    pub admission: Arc<Admission>,
    pub gauges: Arc<CoordinatorGauges>,
    /// The shards' clock epoch: coordinator seconds are shard seconds.
    pub epoch: std::time::Instant,
}

/// One second's reading of every shard.
struct Census {
    /// Σ connections_T / T: keep-alives expected per second.
    expected_per_s: f64,
    /// The keep-alive most devices use.
    dominant_period_s: u32,
    per_shard: Vec<rebalance::ShardLoad>,
}

fn census(peers: &Peers) -> Census {
    let mut by_ka = vec![0u64; KEEPALIVE_TRACKED_MAX_S + 1];
    let mut per_shard = Vec::new();
    for h in peers.all() {
        let mut load = rebalance::ShardLoad::default();
        for (ka, c) in h.counters.connections_by_keepalive.iter().enumerate() {
            let v = c.load(Relaxed);
            by_ka[ka] += v;
            load.connections += v;
            if ka > 0 {
                load.keepalives_per_s += v as f64 / ka as f64;
            }
        }
        per_shard.push(load);
    }
    let expected_per_s = by_ka
        .iter()
        .enumerate()
        .skip(1)
        .map(|(ka, &n)| n as f64 / ka as f64)
        .sum();
    let dominant_period_s = by_ka
        .iter()
        .enumerate()
        .skip(1)
        .max_by_key(|(_, n)| **n)
        .filter(|(_, n)| **n > 0)
        .map_or(0, |(ka, _)| ka as u32);
    Census {
        expected_per_s,
        dominant_period_s,
        per_shard,
    }
}

/// Keep-alives per second over all shards for seconds `first..=last`.
fn keepalive_counts(peers: &Peers, first: u32, last: u32) -> Vec<u32> {
    (first..=last)
        .map(|s| peers.all().iter().map(|h| h.counters.keepalives_at(s)).sum())
        .collect()
}

/// Admission and relief state between readings.
#[derive(Default)]
struct HeartbeatControl {
    admission: Option<load::Admission>,
    relief_hold_until_s: u32,
    /// Arrivals before this second still include devices a relief round has
    /// not yet reached (its messages go out spread over one period).
    relief_settled_from_s: u32,
}

/// One second's heartbeat-load figures.
struct LoadReading {
    /// seeds/004's estimate: (HB1 + HB2) / T.
    estimate_per_s: f64,
    /// Keep-alives received over the last period, per second.
    measured_per_s: f64,
    /// The first second of that period.
    measured_from_s: u32,
}

/// seeds/004, once a second: admission budget with hysteresis, and relief
/// rounds (a full period apart). Relief starts when the seed's estimate is
/// over the threshold and the steady load (what the census expects, or what
/// arrived over a whole period, whichever is more) is too: a burst inside one
/// period is dispersal's work, not a reason to send devices away.
fn heartbeat_control(
    env: &CoordinatorEnv,
    state: &mut HeartbeatControl,
    c: &Census,
    reading: LoadReading,
    now_s: u32,
    period_s: u32,
) {
    let load_per_s = reading.estimate_per_s;
    let gauges = &env.gauges;
    gauges.load_milli_per_s.store((load_per_s * 1000.0) as u64, Relaxed);
    let Some(threshold_per_s) = env.admission.threshold_per_s() else {
        state.admission = None;
        env.admission.closed.store(false, Relaxed);
        return;
    };
    // The threshold may change at run time (admin API): keep the state, move the marks.
    let adm = state
        .admission
        .get_or_insert_with(|| load::Admission::new(threshold_per_s));
    if adm.high_per_s != threshold_per_s {
        *adm = load::Admission {
            closed: adm.closed,
            ..load::Admission::new(threshold_per_s)
        };
    }
    // The census is exact at once; arrivals count only over a window that no
    // relief round was still reaching (they reveal devices ignoring adjustments).
    let measured_valid = reading.measured_from_s >= state.relief_settled_from_s;
    let measured_per_s = if measured_valid { reading.measured_per_s } else { 0.0 };
    let steady_per_s = measured_per_s.max(c.expected_per_s);
    let closed = adm.update(steady_per_s);
    env.admission.closed.store(closed, Relaxed);
    let budget_milli = load::admission_budget_milli(adm, steady_per_s);
    env.admission.budget_milli.store(budget_milli, Relaxed);
    // Over: the steady load is, and either the seed's estimate or the census agrees.
    let over = steady_per_s > adm.high_per_s && (load_per_s > adm.high_per_s || c.expected_per_s > adm.high_per_s);
    if over && now_s >= state.relief_hold_until_s && c.expected_per_s > 0.0 {
        // Shed down to the low watermark, each shard its share of the keep-alives.
        let shed_per_s = steady_per_s - adm.low_per_s;
        let cfg = &env.cfg;
        for (i, shard) in c.per_shard.iter().enumerate() {
            let share = shed_per_s * shard.keepalives_per_s / c.expected_per_s;
            if share > 0.0 {
                let command = Command::Relieve {
                    shed_milli_per_s: (share * 1000.0).ceil() as u64,
                    keepalive_max_s: cfg.heartbeat_max_s,
                };
                let _ = env.peers.post(i as u16, command);
            }
        }
        gauges.reliefs.fetch_add(1, Relaxed);
        // A full period: every relieved device's next keep-alive shows in HB1 first.
        state.relief_hold_until_s = now_s + period_s.max(1);
        // Adjustments go out over the doubled period.
        state.relief_settled_from_s = now_s + 2 * period_s.max(1);
    }
}

/// Starts the coordinator thread; it exits when `stop` is set.
pub fn spawn(env: CoordinatorEnv, stop: Arc<AtomicBool>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("coordinator".into())
        .spawn(move || run(&env, &stop))
}

fn run(env: &CoordinatorEnv, stop: &AtomicBool) {
    let cfg = env.cfg.clone();
    let mut heartbeat = HeartbeatControl::default();
    let mut dispersal_hold_until_s = 0u32;
    let mut rebalancer = rebalance::Rebalancer::new(
        cfg.rebalance_ratio,
        cfg.rebalance_hold_s,
        cfg.rebalance_moves_per_round_max as u64,
    );
    let gauges = &env.gauges;
    while !stop.load(Relaxed) {
        // Wake just after each shard second ends, so the slot is complete.
        let elapsed_ms = env.epoch.elapsed().as_millis() as u64;
        std::thread::sleep(Duration::from_millis(1_000 - elapsed_ms % 1_000 + 20));
        let now_s = (env.epoch.elapsed().as_millis() / 1000) as u32;
        let Some(last) = now_s.checked_sub(1) else { continue };
        let c = census(&env.peers);
        if cfg.rebalance {
            let moves = rebalancer.update(now_s, &c.per_shard);
            if !moves.is_empty() {
                gauges.rebalance_rounds.fetch_add(1, Relaxed);
            }
            for m in moves {
                let command = Command::Move {
                    to: m.to,
                    count: m.count,
                    hold_ms: cfg.rebalance_hold_s as u64 * 1000,
                };
                if env.peers.post(m.from, command).is_ok() {
                    gauges.rebalance_moves_requested.fetch_add(m.count as u64, Relaxed);
                }
            }
        }
        let period_s = c.dominant_period_s;
        gauges.period_s.store(period_s as u64, Relaxed);
        if period_s == 0 || period_s as usize * 2 >= KEEPALIVE_SLOTS {
            // Nobody connected (or periods too long to count): no load but the census.
            let reading = LoadReading {
                estimate_per_s: c.expected_per_s,
                measured_per_s: 0.0,
                measured_from_s: now_s,
            };
            heartbeat_control(env, &mut heartbeat, &c, reading, now_s, period_s);
            continue;
        }
        let first = last.saturating_sub(period_s - 1);
        let counts = keepalive_counts(&env.peers, first, last);
        gauges
            .peak_to_mean_milli
            .store((dispersal::peak_to_mean(&counts) * 1000.0) as u64, Relaxed);

        // seeds/000: disperse synchronized keep-alives, then let a period or two settle.
        if cfg.dispersal && now_s >= dispersal_hold_until_s && last >= period_s {
            let uniform_equivalent = (c.expected_per_s * period_s as f64) as u64;
            let hot = dispersal::hot_seconds(
                &counts,
                first,
                period_s,
                uniform_equivalent,
                cfg.dispersal_threshold_factor,
            );
            let spread = dispersal::spread_seconds(
                &counts,
                first,
                period_s,
                uniform_equivalent,
                &hot,
                cfg.dispersal_select_factor,
            );
            // Wait for a burst to end before dispersing: its devices arrive over several
            // seconds, and dispersing on the first hot second would catch only those.
            // Only a burst filling the whole period is dispersed while it lasts.
            let burst_ongoing = spread.last() == Some(&last) && spread.len() < period_s as usize;
            if !spread.is_empty() && !burst_ongoing {
                for (i, _) in env.peers.all().iter().enumerate() {
                    let _ = env.peers.post(
                        i as u16,
                        Command::Disperse {
                            hot_seconds: spread.clone(),
                        },
                    );
                }
                gauges.dispersals.fetch_add(1, Relaxed);
                dispersal_hold_until_s = now_s + 2 * period_s;
            }
        }

        // seeds/004: heartbeat load = (HB1 + HB2) / T.
        let half = (period_s / 2).max(1);
        let hb1: u64 = counts.iter().rev().take(half as usize).map(|&n| n as u64).sum();
        let load = load::heartbeat_load_per_s(hb1, c.expected_per_s, period_s);
        // Arrivals over the whole period: a burst inside it averages out.
        let measured_per_s = counts.iter().map(|&n| n as f64).sum::<f64>() / period_s as f64;
        let reading = LoadReading {
            estimate_per_s: load,
            measured_per_s,
            measured_from_s: first,
        };
        heartbeat_control(env, &mut heartbeat, &c, reading, now_s, period_s);
    }
}
