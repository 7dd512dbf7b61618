//! When the store writer starts its next commit (`commit_interval_us`).
//!
//! A commit (one fsync) starts at most once per interval: a submission that
//! arrives sooner after the last commit started waits for the rest of the
//! interval, so a stream of small submissions costs one fsync per interval
//! instead of one each. Waiting only helps while more submissions can still
//! come: callers that block on their commit (each HTTP connection of an SP
//! waits for its 201) cannot send their next push until it lands, so once as
//! many submissions wait as the busiest commit of the last one to two
//! seconds held, the commit starts at once. A fixed pool of such callers thus
//! waits for the timer only when it shrinks or falls out of step (until the
//! busier size is forgotten), while an open stream still shares fsyncs.
//!
//! Owns the interval, the last commit's start and the recent batch sizes.
//! Must never delay a commit by more than the interval, nor hold anything
//! but counts and instants.

use std::time::{Duration, Instant};

/// Batch sizes are remembered over windows of this length (the current one and the last).
const WINDOW: Duration = Duration::from_secs(1);

pub struct Pacer {
    interval: Duration,
    last_start: Option<Instant>,
    window_start: Instant,
    /// Most submissions one commit held in this window, and in the previous one.
    max_this: u64,
    max_prev: u64,
}

impl Pacer {
    pub fn new(interval: Duration, now: Instant) -> Pacer {
        Pacer {
            interval,
            last_start: None,
            window_start: now,
            max_this: 0,
            max_prev: 0,
        }
    }

    /// The latest a batch whose first submission is here at `now` waits
    /// (None: commit at once).
    pub fn deadline(&self, now: Instant) -> Option<Instant> {
        if self.interval.is_zero() {
            return None;
        }
        self.last_start.map(|at| at + self.interval).filter(|&at| at > now)
    }

    /// How many more submissions, beside the `waiting` ones, end the wait:
    /// once as many wait as a recent commit held, more are unlikely before
    /// the deadline and the commit starts now (0: now; usize::MAX: only the
    /// deadline). A batch of one never counts: it would pin the writer to
    /// one fsync per submission.
    pub fn more_wanted(&self, waiting: usize) -> usize {
        let target = self.max_this.max(self.max_prev) as usize;
        if target < 2 {
            usize::MAX
        } else {
            target.saturating_sub(waiting)
        }
    }

    #[cfg(test)]
    fn enough(&self, waiting: u64) -> bool {
        self.more_wanted(waiting as usize) == 0
    }

    /// A commit of `submissions` starts at `at`.
    pub fn started(&mut self, at: Instant, submissions: u64) {
        if at.duration_since(self.window_start) >= WINDOW {
            // Two windows or more since the last roll: the previous one saw nothing.
            let idle = at.duration_since(self.window_start) >= 2 * WINDOW;
            self.max_prev = if idle { 0 } else { self.max_this };
            self.max_this = 0;
            self.window_start = at;
        }
        self.max_this = self.max_this.max(submissions);
        self.last_start = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_the_rest_of_the_interval_only_after_a_recent_commit() {
        let t0 = Instant::now();
        let mut p = Pacer::new(2 * MS, t0);
        assert_eq!(p.deadline(t0), None, "no commit yet: at once");
        p.started(t0, 1);
        assert_eq!(p.deadline(t0 + MS), Some(t0 + 2 * MS));
        assert_eq!(p.deadline(t0 + 3 * MS), None, "an idle interval: at once");
        assert_eq!(Pacer::new(Duration::ZERO, t0).deadline(t0), None, "0 turns pacing off");
    }

    #[test]
    fn commits_once_as_many_wait_as_a_recent_commit_held() {
        let t0 = Instant::now();
        let mut p = Pacer::new(2 * MS, t0);
        p.started(t0, 1);
        assert!(!p.enough(1) && !p.enough(5), "batches of one never end the wait");
        p.started(t0 + 2 * MS, 8);
        assert!(!p.enough(7) && p.enough(8), "eight callers came back");
        // The pool shrinks: the old size is forgotten after one to two windows.
        p.started(t0 + WINDOW + 3 * MS, 4);
        assert!(!p.enough(4), "8 is still this side of the last window");
        p.started(t0 + 2 * WINDOW + 4 * MS, 4);
        assert!(p.enough(4));
        p.started(t0 + 5 * WINDOW, 3);
        assert!(p.enough(3), "after an idle window only the new size counts");
    }
}
