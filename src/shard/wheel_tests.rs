use super::*;
use std::collections::{BTreeMap, BTreeSet};

/// Deterministic xorshift64 generator.
struct XorShift(u64);

impl XorShift {
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

fn advance_all(wheel: &mut TimerWheel, now_ms: u64) -> Vec<u32> {
    let mut expired = Vec::new();
    let count = wheel.advance(now_ms, usize::MAX, &mut expired);
    assert_eq!(count, expired.len());
    expired.sort_unstable();
    expired
}

const DISTANCES_MS: [u64; 10] = [0, 1, 63, 64, 65, 4095, 4096, 262_143, 1_000_000, 1_000_000_000];
const STARTS_MS: [u64; 6] = [0, 1, 63, 123_456_789, 1_700_000_000_123, (1 << 42) - 5];

#[test]
fn fires_exactly_at_deadline_at_many_distances() {
    for start_ms in STARTS_MS {
        for distance_ms in DISTANCES_MS {
            let deadline_ms = start_ms + distance_ms;
            let mut wheel = TimerWheel::new(4, start_ms);
            wheel.insert(2, deadline_ms);
            assert!(wheel.next_expiry_ms().unwrap() <= deadline_ms);
            if distance_ms > 1 {
                assert!(advance_all(&mut wheel, start_ms + distance_ms / 2).is_empty());
                assert!(wheel.next_expiry_ms().unwrap() <= deadline_ms);
            }
            if distance_ms > 0 {
                let fired = advance_all(&mut wheel, deadline_ms - 1);
                assert!(fired.is_empty(), "early at start {start_ms} distance {distance_ms}");
                assert!(wheel.is_armed(2));
                assert!(wheel.next_expiry_ms().unwrap() <= deadline_ms);
            }
            let fired = advance_all(&mut wheel, deadline_ms);
            assert_eq!(fired, vec![2], "late at start {start_ms} distance {distance_ms}");
            assert!(!wheel.is_armed(2) && wheel.is_empty());
            assert_eq!(wheel.next_expiry_ms(), None);
        }
    }
}

#[test]
fn fires_exactly_when_ticking_every_ms() {
    let span_ms = 4200u32;
    for start_ms in [0u64, 37, 123_456_789] {
        let mut wheel = TimerWheel::new(span_ms + 1, start_ms);
        for id in 0..=span_ms {
            wheel.insert(id, start_ms + u64::from(id));
        }
        for tick in 0..=span_ms {
            assert_eq!(advance_all(&mut wheel, start_ms + u64::from(tick)), vec![tick]);
        }
        assert!(wheel.is_empty());
    }
}

#[test]
fn far_deadlines_use_overflow_and_fire_exactly() {
    for deadline_ms in [1u64 << 42, (1 << 42) + 7, 1 << 50, u64::MAX / 3, u64::MAX - 1, u64::MAX] {
        let mut wheel = TimerWheel::new(2, 5);
        wheel.insert(1, deadline_ms);
        assert!(advance_all(&mut wheel, deadline_ms - 1).is_empty());
        assert!(wheel.next_expiry_ms().unwrap() <= deadline_ms);
        assert_eq!(advance_all(&mut wheel, deadline_ms), vec![1]);
    }
}

#[test]
fn reset_moves_later_and_earlier() {
    let mut wheel = TimerWheel::new(8, 0);
    wheel.insert(0, 100);
    wheel.insert(0, 200);
    assert_eq!(wheel.len(), 1);
    assert!(advance_all(&mut wheel, 150).is_empty());
    assert_eq!(advance_all(&mut wheel, 200), vec![0]);

    wheel.insert(1, 10_000);
    wheel.insert(1, 250);
    assert_eq!(wheel.deadline_ms(1), Some(250));
    assert!(advance_all(&mut wheel, 249).is_empty());
    assert_eq!(advance_all(&mut wheel, 250), vec![1]);
    assert!(advance_all(&mut wheel, 10_000).is_empty());

    // Resetting to a deadline already passed fires on the next advance, even at the same time.
    wheel.insert(2, 20_000);
    wheel.insert(2, 9_000);
    assert!(wheel.next_expiry_ms().unwrap() <= 9_000);
    assert_eq!(advance_all(&mut wheel, 10_000), vec![2]);
}

#[test]
fn cancel_prevents_firing_and_reports_armed() {
    let mut wheel = TimerWheel::new(4, 1_000);
    assert!(!wheel.cancel(0), "never armed");
    assert!(!wheel.cancel(99), "out of range");
    wheel.insert(0, 1_500);
    wheel.insert(1, 1_500);
    assert!(wheel.cancel(0));
    assert!(!wheel.cancel(0), "already cancelled");
    assert_eq!(wheel.len(), 1);
    assert_eq!(advance_all(&mut wheel, 5_000), vec![1]);
    assert!(!wheel.cancel(1), "already fired");
    assert!(wheel.is_empty());
}

#[test]
fn reinsert_after_fire_works() {
    let mut wheel = TimerWheel::new(1, 0);
    for round in 1..=100u64 {
        wheel.insert(0, round * 1_000);
        assert!(advance_all(&mut wheel, round * 1_000 - 1).is_empty());
        assert_eq!(advance_all(&mut wheel, round * 1_000), vec![0]);
    }
}

#[test]
#[should_panic(expected = "capacity")]
fn insert_out_of_range_panics() {
    TimerWheel::new(3, 0).insert(3, 10);
}

#[test]
fn max_expired_bound_loses_and_duplicates_nothing() {
    let due_ms = 5_000;
    let mut wheel = TimerWheel::new(10_001, 0);
    for id in 0..10_000 {
        wheel.insert(id, due_ms);
    }
    wheel.insert(10_000, due_ms + 1);
    let mut seen = BTreeSet::new();
    for _ in 0..10 {
        let mut expired = Vec::new();
        assert_eq!(wheel.advance(due_ms + 10, 1_000, &mut expired), 1_000);
        assert!(expired.iter().all(|&id| id < 10_000 && seen.insert(id)));
        assert!(wheel.now_ms() <= due_ms, "wheel time moved past unexpired timers");
        let expected_next_ms = if seen.len() < 10_000 { due_ms } else { due_ms + 1 };
        assert!(wheel.next_expiry_ms().unwrap() <= expected_next_ms);
    }
    assert_eq!(seen.len(), 10_000);
    assert_eq!(advance_all(&mut wheel, due_ms + 10), vec![10_000]);
    assert!(wheel.is_empty());
    let mut expired = Vec::new();
    assert_eq!(wheel.advance(due_ms + 20, 1_000, &mut expired), 0);
}

#[test]
fn zero_budget_moves_time_only_up_to_due_timers() {
    let mut wheel = TimerWheel::new(2, 0);
    wheel.insert(0, 300);
    let mut expired = Vec::new();
    assert_eq!(wheel.advance(200, 0, &mut expired), 0);
    assert_eq!(wheel.now_ms(), 200);
    assert_eq!(wheel.advance(400, 0, &mut expired), 0);
    assert!(wheel.now_ms() <= 300 && wheel.is_armed(0));
    assert_eq!(advance_all(&mut wheel, 400), vec![0]);
}

#[test]
fn per_id_storage_is_at_most_16_bytes() {
    let capacity = 100_000u32;
    let wheel = TimerWheel::new(capacity, 0);
    let per_id = std::mem::size_of_val(&wheel.next_link[0])
        + std::mem::size_of_val(&wheel.prev_link[0])
        + std::mem::size_of_val(&wheel.deadline_ms[0]);
    assert!(per_id <= 16, "per-id storage {per_id} bytes");
    assert_eq!(per_id, BYTES_PER_TIMER);
    let fixed = TimerWheel::new(0, 0).memory_bytes();
    assert!(fixed < 4096, "fixed part {fixed} bytes");
    assert!(wheel.memory_bytes() - fixed <= 16 * capacity as usize);
}

/// Reference model: id -> deadline, plus (deadline, id) ordering.
#[derive(Default)]
struct Model {
    by_id: BTreeMap<u32, u64>,
    by_deadline: BTreeSet<(u64, u32)>,
}

impl Model {
    fn insert(&mut self, id: u32, deadline_ms: u64) {
        self.cancel(id);
        self.by_id.insert(id, deadline_ms);
        self.by_deadline.insert((deadline_ms, id));
    }

    fn cancel(&mut self, id: u32) -> bool {
        match self.by_id.remove(&id) {
            Some(deadline_ms) => self.by_deadline.remove(&(deadline_ms, id)),
            None => false,
        }
    }

    fn due(&self, now_ms: u64) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .by_deadline
            .range(..=(now_ms, u32::MAX))
            .map(|&(_, id)| id)
            .collect();
        ids.sort_unstable();
        ids
    }
}

fn random_distance_ms(rng: &mut XorShift) -> u64 {
    match rng.below(16) {
        0 => 0,
        1..=4 => rng.below(64),
        5..=7 => rng.below(4_096),
        8..=10 => rng.below(1 << 18),
        11 => rng.below(1 << 24),
        12 => rng.below(1 << 36),
        13 => rng.below(1 << 44),
        14 => (1 << 42) - 64 + rng.below(128),
        _ => 60_000 + rng.below(2),
    }
}

#[test]
fn model_based_randomized() {
    const IDS: u32 = 3_000;
    const OPS: usize = 200_000;
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let start_ms = 1_700_000_000_000 + rng.below(1 << 20);
    let mut wheel = TimerWheel::new(IDS, start_ms);
    let mut model = Model::default();
    let mut now_ms = start_ms;
    let mut expired = Vec::with_capacity(IDS as usize);
    let (mut fired_total, mut advances) = (0usize, 0usize);
    for op in 0..OPS {
        let id = rng.below(u64::from(IDS)) as u32;
        match rng.below(100) {
            0..=44 => {
                let deadline_ms = if rng.below(20) == 0 {
                    now_ms.saturating_sub(rng.below(100)) // already due
                } else {
                    now_ms + random_distance_ms(&mut rng)
                };
                wheel.insert(id, deadline_ms);
                model.insert(id, deadline_ms);
            }
            45..=59 => assert_eq!(wheel.cancel(id), model.cancel(id), "op {op} cancel {id}"),
            _ => {
                now_ms += match rng.below(1_000) {
                    0 => rng.below(1 << 44),
                    1..=10 => rng.below(1 << 30),
                    11..=100 => rng.below(1 << 18),
                    101..=500 => rng.below(4_096),
                    501..=800 => rng.below(64),
                    _ => rng.below(3),
                };
                advances += 1;
                expired.clear();
                let due = model.due(now_ms);
                if rng.below(10) == 0 {
                    // Bounded call: exactly min(budget, due) ids, all due, no duplicates.
                    let budget = 1 + rng.below(8) as usize;
                    let count = wheel.advance(now_ms, budget, &mut expired);
                    assert_eq!(count, budget.min(due.len()), "op {op} bounded count");
                    assert_eq!(count, expired.len());
                    for &fired in &expired {
                        assert!(due.binary_search(&fired).is_ok(), "op {op}: {fired} not due");
                        assert!(model.cancel(fired), "op {op}: {fired} fired twice");
                    }
                } else {
                    wheel.advance(now_ms, usize::MAX, &mut expired);
                    expired.sort_unstable();
                    assert_eq!(expired, due, "op {op} advance to {now_ms}");
                    for &fired in &expired {
                        model.cancel(fired);
                    }
                }
                fired_total += expired.len();
            }
        }
        assert_eq!(wheel.len() as usize, model.by_id.len(), "op {op} len");
        assert_eq!(wheel.is_armed(id), model.by_id.contains_key(&id), "op {op} is_armed");
        match (wheel.next_expiry_ms(), model.by_deadline.first()) {
            (None, None) => {}
            (Some(next_ms), Some(&(earliest_ms, _))) => {
                assert!(next_ms <= earliest_ms, "op {op}: next {next_ms} > {earliest_ms}");
            }
            (got, want) => panic!("op {op}: next_expiry {got:?} vs model {want:?}"),
        }
    }
    assert!(
        fired_total > 20_000 && advances > 50_000,
        "{fired_total} fired, {advances} advances"
    );
}
