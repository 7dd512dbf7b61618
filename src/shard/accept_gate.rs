//! Admission at accept, before any TLS or CONNECT work: a global accept rate
//! over every shard and listener, and a token bucket per source address
//! (IPv4 address, or IPv6 /64), both as GCRA (one "theoretical arrival
//! time" per bucket: a bucket is full when it lies in the past).
//!
//! Shared by every shard (one `Arc`, built in `ShardEnv::new`). The global
//! bucket is one atomic (compare-and-swap on admission; a refusal only
//! reads it). The per-source table is one table for the whole host, not one
//! per shard: SO_REUSEPORT hashes the 4-tuple, so one source's connections
//! land on every listening shard, and per-shard tables at rate / shards would
//! be inexact for small bursts (a burst of 5 over 4 shards is 1.25 each, and
//! an uneven split refuses a legitimate client early) and would spend one
//! entry per shard on each source an attacker sprays. The table is split
//! into cache-line-aligned stripes by a keyed hash of the source, each under
//! its own mutex held for one scan of an 8-entry set, so two shards meet on a
//! lock only when their sources share a stripe (64 stripes).
//!
//! The table is bounded (`limits::ACCEPT_SOURCES_TRACKED_MAX`, allocated at
//! start): a source not in its set takes the entry with the earliest arrival
//! time, which is the stalest, and an empty or refilled entry first (a full
//! bucket carries no information, so evicting it changes no decision). A
//! sprayed address costs one entry and only ever evicts the least recently
//! limited sources of its set; the hash is keyed per process, so a sprayer
//! cannot aim at one set.
//!
//! Owns the buckets. Must never read a clock (the caller passes its shard
//! clock), block beyond one stripe's short critical section, or allocate
//! after construction.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::config::Config;
use crate::limits;

/// Why a connection was refused at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptRefusal {
    /// Over `accept_rate_per_s` (every source together).
    GlobalRate,
    /// Over `accept_per_ip_rate_per_s` / `accept_per_ip_burst` for its source.
    SourceRate,
}

impl AcceptRefusal {
    pub const ALL: [AcceptRefusal; 2] = [AcceptRefusal::GlobalRate, AcceptRefusal::SourceRate];

    pub fn label(self) -> &'static str {
        match self {
            AcceptRefusal::GlobalRate => "global_rate",
            AcceptRefusal::SourceRate => "source_rate",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The global bucket's burst: one second of its rate.
pub const GLOBAL_BURST_MS: u64 = 1_000;
/// Entries per set of the source table (scanned under the stripe's lock).
pub const SOURCE_SET_WAYS: usize = 8;
/// Stripes (mutexes) of the source table; well above the shard count.
pub const SOURCE_STRIPES: usize = 64;
/// Compare-and-swap attempts on the global bucket before a connection is
/// refused as over the rate (each failure means another shard admitted one).
pub const GLOBAL_CAS_ATTEMPTS_MAX: u32 = 64;

const NS_PER_MS: u64 = 1_000_000;
const NS_PER_S: u64 = 1_000_000_000;

const _: () = assert!(limits::ACCEPT_SOURCES_TRACKED_MAX.is_multiple_of(SOURCE_STRIPES * SOURCE_SET_WAYS));

/// A GCRA bucket's shape: one arrival costs `interval_ns`; an arrival is
/// admitted while the bucket's arrival time is at most `tolerance_ns` ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    interval_ns: u64,
    tolerance_ns: u64,
}

impl Shape {
    /// `rate_per_s` arrivals per second, `burst` of them back to back.
    fn new(rate_per_s: u32, burst: u32) -> Shape {
        let interval_ns = (NS_PER_S / rate_per_s.max(1) as u64).max(1);
        Shape {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(burst.max(1) as u64 - 1),
        }
    }

    /// The bucket's next arrival time if one arriving at `now_ns` is admitted.
    fn admit(self, tat_ns: u64, now_ns: u64) -> Option<u64> {
        let start = tat_ns.max(now_ns);
        (start - now_ns <= self.tolerance_ns).then(|| start + self.interval_ns)
    }
}

/// The key a source is limited by: an IPv4 address (also when it arrives
/// IPv4-mapped on a dual-stack socket) as its mapped IPv6 form, an IPv6
/// address by its /64 (one subscriber's allocation).
pub fn source_key(peer: IpAddr) -> u128 {
    match peer.to_canonical() {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a) & !(u64::MAX as u128),
    }
}

#[derive(Clone, Copy, Default)]
struct Entry {
    key: u128,
    /// 0 = empty (no admission ever happens at t = 0 of a real clock: a
    /// refilled entry is as good as an empty one anyway).
    tat_ns: u64,
}

/// What one stripe's lock guards.
struct StripeState {
    entries: Box<[Entry]>,
    /// Entries taken over while their bucket was still draining (counted
    /// here, under the lock already held, not on a line shared by all).
    evicted_draining: u64,
}

/// One stripe, on its own cache line.
#[repr(align(64))]
struct Stripe(Mutex<StripeState>);

impl Stripe {
    fn lock(&self) -> std::sync::MutexGuard<'_, StripeState> {
        // A poisoned stripe holds plain numbers, each write whole: still valid.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct SourceTable {
    hasher: std::hash::RandomState,
    stripes: Box<[Stripe]>,
    sets_per_stripe: usize,
    shape: Shape,
}

impl SourceTable {
    fn new(sources_max: usize, stripes: usize, shape: Shape) -> SourceTable {
        assert!(stripes > 0 && sources_max.is_multiple_of(stripes * SOURCE_SET_WAYS));
        let per_stripe = sources_max / stripes;
        SourceTable {
            hasher: std::hash::RandomState::new(),
            stripes: (0..stripes)
                .map(|_| {
                    Stripe(Mutex::new(StripeState {
                        entries: vec![Entry::default(); per_stripe].into_boxed_slice(),
                        evicted_draining: 0,
                    }))
                })
                .collect(),
            sets_per_stripe: per_stripe / SOURCE_SET_WAYS,
            shape,
        }
    }

    /// Admits one arrival from `key` at `now_ns` if its bucket allows it and
    /// `also` (the global bucket, asked only then) agrees.
    fn admit(&self, key: u128, now_ns: u64, also: impl FnOnce() -> bool) -> Result<(), AcceptRefusal> {
        let h = self.hasher.hash_one(key) as usize;
        let stripe = &self.stripes[h % self.stripes.len()];
        let set = (h / self.stripes.len()) % self.sets_per_stripe;
        let mut state = stripe.lock();
        let state = &mut *state;
        let ways = &mut state.entries[set * SOURCE_SET_WAYS..(set + 1) * SOURCE_SET_WAYS];
        let slot = match ways.iter().position(|e| e.key == key && e.tat_ns != 0) {
            Some(i) => i,
            None => {
                // Stalest first: the earliest arrival time (empty = 0).
                let (i, victim) = ways
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| e.tat_ns)
                    .expect("a set has SOURCE_SET_WAYS > 0 entries");
                if victim.tat_ns > now_ns {
                    state.evicted_draining += 1;
                }
                ways[i] = Entry { key, tat_ns: 0 };
                i
            }
        };
        let next = self
            .shape
            .admit(ways[slot].tat_ns, now_ns)
            .ok_or(AcceptRefusal::SourceRate)?;
        if !also() {
            return Err(AcceptRefusal::GlobalRate);
        }
        ways[slot].tat_ns = next;
        Ok(())
    }
}

/// The accept-time admission policy of the whole host.
pub struct AcceptGate {
    /// (shape, arrival time) of the global bucket; None = no global limit.
    global: Option<(Shape, AtomicU64)>,
    sources: Option<SourceTable>,
}

impl AcceptGate {
    /// `rate_per_s`: every source together (burst: `GLOBAL_BURST_MS` of it);
    /// `per_source`: (rate per second, burst) of one source. None = no limit.
    pub fn new(rate_per_s: Option<u32>, per_source: Option<(u32, u32)>) -> AcceptGate {
        AcceptGate::with_table(
            rate_per_s,
            per_source,
            limits::ACCEPT_SOURCES_TRACKED_MAX,
            SOURCE_STRIPES,
        )
    }

    pub fn from_config(cfg: &Config) -> AcceptGate {
        AcceptGate::new(
            cfg.accept_rate_per_s,
            cfg.accept_per_ip_rate_per_s.map(|r| (r, cfg.accept_per_ip_burst)),
        )
    }

    fn with_table(
        rate_per_s: Option<u32>,
        per_source: Option<(u32, u32)>,
        sources_max: usize,
        stripes: usize,
    ) -> AcceptGate {
        AcceptGate {
            global: rate_per_s.map(|r| {
                let burst = (r as u64 * GLOBAL_BURST_MS / 1_000).clamp(1, u32::MAX as u64) as u32;
                (Shape::new(r, burst), AtomicU64::new(0))
            }),
            sources: per_source.map(|(r, b)| SourceTable::new(sources_max, stripes, Shape::new(r, b))),
        }
    }

    /// Whether any limit is set (false: every connection is admitted).
    pub fn limits_anything(&self) -> bool {
        self.global.is_some() || self.sources.is_some()
    }

    /// Decides on one accepted connection from `peer` (None: address unknown,
    /// only the global rate applies) at shard time `now_ms`. A source over
    /// its own rate is refused without spending the global budget, so one
    /// abusive source cannot starve the others.
    pub fn admit(&self, peer: Option<IpAddr>, now_ms: u64) -> Result<(), AcceptRefusal> {
        let now_ns = now_ms.saturating_mul(NS_PER_MS);
        let global = || self.admit_global(now_ns);
        match (&self.sources, peer) {
            (Some(table), Some(peer)) => table.admit(source_key(peer), now_ns, global),
            _ => global().then_some(()).ok_or(AcceptRefusal::GlobalRate),
        }
    }

    fn admit_global(&self, now_ns: u64) -> bool {
        let Some((shape, tat)) = &self.global else { return true };
        let mut seen = tat.load(Relaxed);
        for _ in 0..GLOBAL_CAS_ATTEMPTS_MAX {
            let Some(next) = shape.admit(seen, now_ns) else {
                return false;
            };
            match tat.compare_exchange(seen, next, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(current) => seen = current,
            }
        }
        false
    }

    /// Source entries taken over while their bucket was still draining (the
    /// table was full of sources limited more recently).
    pub fn sources_evicted_draining(&self) -> u64 {
        let Some(table) = &self.sources else { return 0 };
        table.stripes.iter().map(|s| s.lock().evicted_draining).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(last: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    fn admitted(gate: &AcceptGate, peer: Option<IpAddr>, now_ms: u64, n: usize) -> usize {
        (0..n).filter(|_| gate.admit(peer, now_ms).is_ok()).count()
    }

    #[test]
    fn no_limits_admit_everything() {
        let gate = AcceptGate::new(None, None);
        assert!(!gate.limits_anything());
        assert_eq!(admitted(&gate, v4(1), 1, 10_000), 10_000);
        assert_eq!(admitted(&gate, None, 1, 10_000), 10_000);
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let gate = AcceptGate::new(None, Some((5, 5)));
        assert_eq!(admitted(&gate, v4(1), 1_000, 30), 5);
        assert_eq!(gate.admit(v4(1), 1_000), Err(AcceptRefusal::SourceRate));
        // Another source is untouched.
        assert_eq!(admitted(&gate, v4(2), 1_000, 30), 5);
        // 5/s: one more every 200 ms, none before.
        assert_eq!(admitted(&gate, v4(1), 1_199, 10), 0);
        assert_eq!(admitted(&gate, v4(1), 1_200, 10), 1);
        assert_eq!(admitted(&gate, v4(1), 1_400, 10), 1);
        // After a quiet second the burst is back.
        assert_eq!(admitted(&gate, v4(1), 3_000, 30), 5);
    }

    #[test]
    fn ipv6_sources_share_their_slash_64_and_mapped_ipv4_is_ipv4() {
        let gate = AcceptGate::new(None, Some((1, 3)));
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(admitted(&gate, Some(a.into()), 10, 2), 2);
        assert_eq!(admitted(&gate, Some(b.into()), 10, 5), 1);
        assert_eq!(admitted(&gate, Some(other.into()), 10, 5), 3);
        let v4a = Ipv4Addr::new(192, 0, 2, 7);
        assert_eq!(admitted(&gate, Some(v4a.into()), 10, 2), 2);
        assert_eq!(admitted(&gate, Some(v4a.to_ipv6_mapped().into()), 10, 5), 1);
        assert_ne!(source_key(v4a.into()), source_key(Ipv4Addr::new(192, 0, 2, 8).into()));
    }

    #[test]
    fn the_global_rate_holds_over_every_source_and_unknown_ones() {
        let gate = AcceptGate::new(Some(100), None);
        // Burst: one second of the rate, whoever connects.
        let n: usize = (0..=255u8).map(|i| admitted(&gate, v4(i), 5, 2)).sum();
        assert_eq!(n, 100);
        assert_eq!(gate.admit(None, 5), Err(AcceptRefusal::GlobalRate));
        // 100/s: one per 10 ms.
        assert_eq!(admitted(&gate, None, 15, 10), 1);
        assert_eq!(admitted(&gate, v4(9), 45, 10), 3);
    }

    #[test]
    fn a_source_over_its_rate_spends_no_global_budget() {
        let gate = AcceptGate::new(Some(10), Some((1, 2)));
        assert_eq!(admitted(&gate, v4(1), 1, 1_000), 2);
        assert_eq!(gate.admit(v4(1), 1), Err(AcceptRefusal::SourceRate));
        // Eight global tokens are left for everyone else.
        assert_eq!((2..=20).filter(|&i| gate.admit(v4(i), 1).is_ok()).count(), 8);
        assert_eq!(gate.admit(v4(30), 1), Err(AcceptRefusal::GlobalRate));
        // Refused globally: the source's own bucket was not spent either.
        let fresh = AcceptGate::new(Some(1), Some((1, 5)));
        assert_eq!(admitted(&fresh, v4(1), 1, 1), 1);
        assert_eq!(fresh.admit(v4(1), 1), Err(AcceptRefusal::GlobalRate));
        assert_eq!(admitted(&fresh, v4(1), 1_001, 10), 1);
    }

    #[test]
    fn a_spray_of_sources_stays_in_the_table_and_evicts_the_stalest() {
        // One stripe, one set of 8: every source meets every other.
        let gate = AcceptGate::with_table(None, Some((1, 1)), SOURCE_SET_WAYS, 1);
        // Source 1 is limited at t = 100 ms; sources 2..=8 later, in order.
        assert_eq!(admitted(&gate, v4(1), 100, 3), 1);
        for i in 2..=8 {
            assert_eq!(admitted(&gate, v4(i), 100 + i as u64, 3), 1);
        }
        assert_eq!(gate.sources_evicted_draining(), 0);
        // A ninth source takes the stalest entry (source 1's) ...
        assert_eq!(admitted(&gate, v4(9), 200, 3), 1);
        assert_eq!(gate.sources_evicted_draining(), 1);
        // ... so source 1 starts over, while source 8 is still limited.
        assert_eq!(admitted(&gate, v4(8), 200, 3), 0);
        assert_eq!(admitted(&gate, v4(1), 200, 3), 1);
        // A thousand sprayed sources never grow the table, and once the
        // limited sources' buckets have refilled they cost no decision.
        for i in 0..1_000u32 {
            let peer = IpAddr::V4(Ipv4Addr::from(0x0A01_0000 + i));
            assert_eq!(admitted(&gate, Some(peer), 5_000 + i as u64, 2), 1);
        }
        let table = gate.sources.as_ref().unwrap();
        assert_eq!(
            table.stripes.len() * table.stripes[0].lock().entries.len(),
            SOURCE_SET_WAYS
        );
    }

    #[test]
    fn the_real_table_is_the_named_size() {
        let gate = AcceptGate::new(None, Some((10, 10)));
        let table = gate.sources.as_ref().unwrap();
        let entries: usize = table.stripes.iter().map(|s| s.lock().entries.len()).sum();
        assert_eq!(entries, limits::ACCEPT_SOURCES_TRACKED_MAX);
        // Many sources from many threads: each gets exactly its burst.
        let gate = std::sync::Arc::new(gate);
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let gate = gate.clone();
                std::thread::spawn(move || {
                    // 250 sources of its own, 20 arrivals each.
                    (0..5_000u32)
                        .map(|i| {
                            let peer = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + (i % 250) * 4 + t));
                            gate.admit(Some(peer), 1).is_ok() as usize
                        })
                        .sum::<usize>()
                })
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 4 * 250 * 10);
    }
}
