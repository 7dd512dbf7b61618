//! Micro-benchmark for the timer wheel with 1,000,000 timers (std::time::Instant only).
//! Ids are used in shuffled order, as connection slab keys touched by traffic would be.
//! Results are also written as JSON (see benches/support/mod.rs for the path).

#[path = "support/mod.rs"]
mod support;

use pulsegate::shard::wheel::TimerWheel;
use std::hint::black_box;
use std::time::Instant;
use support::J;

const TIMERS: u32 = 1_000_000;
/// Deadlines spread over 10 minutes (keepalive-like).
const SPREAD_MS: u64 = 600_000;

struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// Prints one result and records it for the JSON report.
fn report(rows: &mut Vec<J>, round: u32, name: &str, ops: u64, started: Instant) {
    let ns = started.elapsed().as_nanos() as f64;
    println!("{name:<44} {:>8.1} ns/op  ({ops} ops)", ns / ops as f64);
    rows.push(J::obj(vec![
        ("round", J::Int(round.into())),
        ("name", J::str(name)),
        ("ns_per_op", J::Num(ns / ops as f64)),
        ("ops", J::Int(ops as i64)),
    ]));
}

fn main() {
    let unix = support::unix_s();
    let mut rows = Vec::new();
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    let mut ids: Vec<u32> = (0..TIMERS).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let deadlines: Vec<u64> = (0..TIMERS).map(|_| 1 + rng.below(SPREAD_MS)).collect();
    let resets: Vec<u64> = (0..TIMERS).map(|_| 1 + rng.below(SPREAD_MS)).collect();
    let mut expired = Vec::with_capacity(TIMERS as usize);

    for round in 0..3 {
        println!("-- round {round}");
        let mut wheel = TimerWheel::new(TIMERS, 0);

        let started = Instant::now();
        for (&id, &deadline_ms) in ids.iter().zip(&deadlines) {
            wheel.insert(id, deadline_ms);
        }
        report(&mut rows, round, "insert (fresh, 1M armed)", u64::from(TIMERS), started);

        let started = Instant::now();
        for (&id, &deadline_ms) in ids.iter().zip(&resets) {
            wheel.insert(id, deadline_ms);
        }
        report(
            &mut rows,
            round,
            "reset (re-insert armed id)",
            u64::from(TIMERS),
            started,
        );

        let started = Instant::now();
        for &id in &ids {
            black_box(wheel.cancel(id));
        }
        report(&mut rows, round, "cancel", u64::from(TIMERS), started);

        for (&id, &deadline_ms) in ids.iter().zip(&deadlines) {
            wheel.insert(id, deadline_ms);
        }
        let started = Instant::now();
        let mut calls = 0u64;
        let mut now_ms = 0;
        while !wheel.is_empty() {
            now_ms += 1;
            expired.clear();
            wheel.advance(now_ms, usize::MAX, &mut expired);
            black_box(&expired);
            calls += 1;
        }
        report(
            &mut rows,
            round,
            "advance 1 ms steps, per expired timer",
            u64::from(TIMERS),
            started,
        );
        report(
            &mut rows,
            round,
            "advance 1 ms steps, per call (~1.7 fired)",
            calls,
            started,
        );

        // Idle gaps: 1,000 armed timers spread over ~34 years, advanced in 1-hour jumps.
        let mut sparse = TimerWheel::new(1_000, 0);
        for id in 0..1_000u32 {
            sparse.insert(id, 1 + rng.below(1 << 40));
        }
        let started = Instant::now();
        let mut calls = 0u64;
        let mut now_ms = 0;
        while !sparse.is_empty() {
            now_ms += 3_600_000;
            expired.clear();
            sparse.advance(now_ms, usize::MAX, &mut expired);
            calls += 1;
        }
        report(
            &mut rows,
            round,
            "advance 1 h jumps, sparse wheel, per call",
            calls,
            started,
        );

        let mut sum = 0u64;
        for (&id, &deadline_ms) in ids.iter().zip(&deadlines) {
            wheel.insert(id, now_ms + deadline_ms);
        }
        let started = Instant::now();
        for _ in 0..u64::from(TIMERS) {
            sum = sum.wrapping_add(wheel.next_expiry_ms().unwrap_or(0));
        }
        black_box(sum);
        report(
            &mut rows,
            round,
            "next_expiry_ms (1M armed)",
            u64::from(TIMERS),
            started,
        );
    }
    let mut out = support::meta("wheel", unix);
    out.push((
        "config".into(),
        J::obj(vec![
            ("timers", J::Int(TIMERS.into())),
            ("spread_ms", J::Int(SPREAD_MS as i64)),
        ]),
    ));
    out.push(("results".into(), J::Arr(rows)));
    support::write_and_print("wheel", unix, &J::Obj(out));
}
