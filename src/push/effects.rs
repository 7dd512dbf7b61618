//! The vocabulary between the machine and the executor: the time a transition
//! happens at (`Now`), which attempt a report is about (`AttemptRef`), and what
//! the executor must do (`Effect`).
//!
//! Owns these plain values. Must never carry a channel, a lock or a handle:
//! effects are data the machine returns and a test can compare.

use crate::delivery::{Location, Push};
use crate::outbound::PostRequest;

/// The time of a transition: monotonic for timers, wall clock for the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub mono_ms: u64,
    pub unix_ms: u64,
}

/// One attempt as the executor reports on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptRef {
    pub id: u64,
    /// The message's attempt round; a report of an older round is stale.
    pub generation: u32,
    /// Index into the machine's mechanisms.
    pub mechanism: usize,
}

/// What the executor must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Hand `push` to the device's connection at `at`, then report with `on_handoff`.
    Deliver {
        at: Location,
        push: Push,
        attempt: AttemptRef,
    },
    /// Queue this POST on the outbound pool; its result comes back by tag
    /// (`on_post_result`), a refusal with `on_post_refused`.
    Post(PostRequest),
    /// Call `on_timer(id, generation)` at `due_ms` (monotonic); replaces the
    /// message's earlier timer.
    Schedule {
        id: u64,
        generation: u32,
        due_ms: u64,
    },
    CancelTimer {
        id: u64,
    },
    /// Write the message's current value.
    Persist {
        id: u64,
    },
    /// Write it too, but a crash may lose this change (recovery redoes it):
    /// later, and not at all if a `Persist` of it comes first.
    PersistSoon {
        id: u64,
    },
    /// Delete the message's record.
    Delete {
        id: u64,
    },
    /// Recovery reloaded a payload of `sp`: charge it to the byte budgets.
    PayloadHeld {
        sp: String,
        len_bytes: u64,
    },
    /// The last pending message of a payload is gone: give its bytes back to
    /// the budgets and delete its row (`stored_as`), in the commit that holds
    /// the message's terminal state.
    PayloadReleased {
        sp: String,
        len_bytes: u64,
        stored_as: Option<u64>,
    },
}
