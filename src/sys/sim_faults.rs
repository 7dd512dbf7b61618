//! The simulation's randomness and its fault menu: a seeded splitmix64 PRNG
//! (`SimRng`) and the rates of every fault `SimIo` injects (`SimFaults`).
//!
//! Owns the fault rates and the one random source of a simulation. Must never
//! read the wall clock or any unseeded randomness: a seed replays exactly.

/// splitmix64: small, seedable, good enough to pick faults.
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `permille` / 1000.
    pub fn chance(&mut self, permille: u32) -> bool {
        self.below(1000) < permille as u64
    }
}

/// Fault rates, per mille of the operations they apply to.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimFaults {
    /// A send takes only part of its bytes.
    pub short_send_permille: u32,
    /// A recv chunk is cut at a random point (else it takes all it can).
    pub split_recv_permille: u32,
    /// A multishot recv ends with -ECANCELED without being asked.
    pub recv_cancel_permille: u32,
    /// A multishot (recv or accept) ends after a completion (no MORE flag).
    pub multishot_end_permille: u32,
    /// `io_uring_enter` answers EBUSY: submissions wait for the next turn.
    pub submit_busy_permille: u32,
    /// An accept completes with -EMFILE.
    pub accept_error_permille: u32,
    /// MSG_RING fails with -ENFILE (the connection stays home).
    pub msg_ring_fail_permille: u32,
    /// Longest a completion is held back (ms of virtual time); 0 = never.
    pub delay_ms_max: u64,
}

impl SimFaults {
    /// Every fault on, at rates that leave most operations clean.
    pub fn chaos() -> SimFaults {
        SimFaults {
            short_send_permille: 200,
            split_recv_permille: 300,
            recv_cancel_permille: 5,
            multishot_end_permille: 20,
            submit_busy_permille: 30,
            accept_error_permille: 10,
            msg_ring_fail_permille: 100,
            delay_ms_max: 40,
        }
    }
}
