//! The payload byte budgets: bytes of payload held for pending messages, in
//! total (`pending_payload_bytes_max`) and per SP
//! (`sp_pending_payload_bytes_max`), each stored payload counted once. The API
//! reserves a request's payload before anything is written (and gives it back
//! if the write fails); the push service releases it when the last pending
//! message referencing it is gone, and charges what recovery reloads.
//!
//! Owns the held-bytes tallies and the admission rule. Must never know about
//! messages or the store: it counts bytes per SP and says yes or which budget
//! said no.

use std::collections::HashMap;
use std::sync::Mutex;

/// Why a reservation was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OverBudget {
    /// `pending_payload_bytes_max`, over all SPs.
    Total {
        limit_bytes: u64,
        held_bytes: u64,
        requested_bytes: u64,
    },
    /// `sp_pending_payload_bytes_max`, this SP's share.
    Sp {
        limit_bytes: u64,
        held_bytes: u64,
        requested_bytes: u64,
    },
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, whose, limit, held, asked) = match self {
            OverBudget::Total {
                limit_bytes,
                held_bytes,
                requested_bytes,
            } => (
                "pending_payload_bytes_max",
                "the gateway holds",
                limit_bytes,
                held_bytes,
                requested_bytes,
            ),
            OverBudget::Sp {
                limit_bytes,
                held_bytes,
                requested_bytes,
            } => (
                "sp_pending_payload_bytes_max",
                "this SP holds",
                limit_bytes,
                held_bytes,
                requested_bytes,
            ),
        };
        write!(
            f,
            "{name} ({limit} bytes) would be exceeded: {whose} {held} bytes of pending payloads and this request adds {asked}"
        )?;
        if asked > limit {
            write!(f, "; a payload this large can never fit")
        } else {
            write!(f, "; retry once pending messages are delivered or expire")
        }
    }
}

#[derive(Default)]
struct Held {
    total_bytes: u64,
    by_sp: HashMap<String, u64>,
}

pub struct PayloadBudget {
    total_bytes_max: u64,
    sp_bytes_max: u64,
    held: Mutex<Held>,
}

impl PayloadBudget {
    pub fn new(total_bytes_max: u64, sp_bytes_max: u64) -> PayloadBudget {
        PayloadBudget {
            total_bytes_max,
            sp_bytes_max,
            held: Mutex::new(Held::default()),
        }
    }

    /// No limit (tests that do not exercise the budgets).
    pub fn unlimited() -> PayloadBudget {
        PayloadBudget::new(u64::MAX, u64::MAX)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // A poisoned lock only means a panicking thread held it; the tallies
        // are updated in single statements and stay valid.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `bytes` for `sp` if both budgets allow it.
    pub fn try_reserve(&self, sp: &str, bytes: u64) -> Result<(), OverBudget> {
        let mut h = self.held();
        let sp_held = h.by_sp.get(sp).copied().unwrap_or(0);
        if h.total_bytes.saturating_add(bytes) > self.total_bytes_max {
            return Err(OverBudget::Total {
                limit_bytes: self.total_bytes_max,
                held_bytes: h.total_bytes,
                requested_bytes: bytes,
            });
        }
        if sp_held.saturating_add(bytes) > self.sp_bytes_max {
            return Err(OverBudget::Sp {
                limit_bytes: self.sp_bytes_max,
                held_bytes: sp_held,
                requested_bytes: bytes,
            });
        }
        h.total_bytes += bytes;
        *h.by_sp.entry(sp.to_string()).or_insert(0) += bytes;
        Ok(())
    }

    /// Charges `bytes` whatever the budgets say (payloads recovery reloads:
    /// they are accepted already; new requests wait until they drain).
    pub fn charge(&self, sp: &str, bytes: u64) {
        let mut h = self.held();
        h.total_bytes = h.total_bytes.saturating_add(bytes);
        let v = h.by_sp.entry(sp.to_string()).or_insert(0);
        *v = v.saturating_add(bytes);
    }

    /// Gives back what `try_reserve` or `charge` took.
    pub fn release(&self, sp: &str, bytes: u64) {
        let mut h = self.held();
        h.total_bytes = h.total_bytes.saturating_sub(bytes);
        if let Some(v) = h.by_sp.get_mut(sp) {
            *v = v.saturating_sub(bytes);
            if *v == 0 {
                h.by_sp.remove(sp);
            }
        }
    }

    pub fn held_bytes(&self) -> u64 {
        self.held().total_bytes
    }

    pub fn sp_held_bytes(&self, sp: &str) -> u64 {
        self.held().by_sp.get(sp).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_within_both_budgets_and_names_the_one_that_refuses() {
        let b = PayloadBudget::new(1_000, 600);
        b.try_reserve("a", 500).expect("fits");
        assert_eq!(
            b.try_reserve("a", 200),
            Err(OverBudget::Sp {
                limit_bytes: 600,
                held_bytes: 500,
                requested_bytes: 200
            })
        );
        b.try_reserve("b", 400).expect("fits");
        let total = b.try_reserve("c", 200).expect_err("over the total");
        assert!(matches!(total, OverBudget::Total { held_bytes: 900, .. }));
        assert!(total.to_string().starts_with("pending_payload_bytes_max (1000 bytes)"));
        b.release("a", 500);
        b.try_reserve("c", 200).expect("released bytes are free again");
        assert_eq!(
            (b.held_bytes(), b.sp_held_bytes("a"), b.sp_held_bytes("c")),
            (600, 0, 200)
        );
        b.charge("a", 5_000);
        assert_eq!(b.held_bytes(), 5_600, "recovery charges beyond the budget");
        let never = b.try_reserve("z", 2_000).expect_err("larger than the budget");
        assert!(never.to_string().contains("can never fit"));
    }
}
