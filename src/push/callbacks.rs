//! Callbacks to SPs: the status of a message that reached a terminal state,
//! POSTed to its `callback_url`, tried up to `callback_attempts_max` times with
//! exponential backoff (`PUSH_CALLBACK_BACKOFF_MS_MIN` doubling, at most
//! `PUSH_CALLBACK_BACKOFF_SHIFT_MAX` times), at most `callbacks_pending_max`
//! waiting in total.
//!
//! Owns callback jobs and their schedule. Must never send anything or read a
//! clock: the machine turns a due job into a POST effect, and tells it the
//! outcome with the time it happened.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::limits::{PUSH_CALLBACK_BACKOFF_MS_MIN, PUSH_CALLBACK_BACKOFF_SHIFT_MAX, PUSH_CALLBACK_REQUEUE_MS};

struct Job {
    url: String,
    body: Vec<u8>,
    /// POSTs started so far.
    attempts: u32,
}

/// One POST to make now.
pub struct DueCallback {
    pub job: u64,
    pub url: String,
    pub body: Vec<u8>,
}

/// What an answered POST means for its job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// 2xx: the job is done.
    Delivered,
    /// Failed, tried again later.
    Retrying,
    /// Failed its last attempt (or the job is unknown): dropped.
    GaveUp,
}

pub struct Callbacks {
    jobs: HashMap<u64, Job>,
    /// (due_ms, job); a job is in here once while it waits.
    due: BinaryHeap<Reverse<(u64, u64)>>,
    next_job: u64,
    attempts_max: u32,
    pending_max: usize,
}

impl Callbacks {
    pub fn new(attempts_max: u32, pending_max: usize) -> Callbacks {
        Callbacks {
            jobs: HashMap::new(),
            due: BinaryHeap::new(),
            next_job: 1,
            attempts_max,
            pending_max,
        }
    }

    /// Queues a callback due at once; false if `callbacks_pending_max` wait already.
    pub fn queue(&mut self, url: String, body: Vec<u8>) -> bool {
        if self.jobs.len() >= self.pending_max {
            return false;
        }
        let job = self.next_job;
        self.next_job += 1;
        self.jobs.insert(job, Job { url, body, attempts: 0 });
        self.due.push(Reverse((0, job)));
        true
    }

    /// The next job due at `now_ms`, counted as an attempt.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<DueCallback> {
        while let Some(&Reverse((due_ms, job))) = self.due.peek() {
            if due_ms > now_ms {
                return None;
            }
            self.due.pop();
            if let Some(j) = self.jobs.get_mut(&job) {
                j.attempts += 1;
                return Some(DueCallback {
                    job,
                    url: j.url.clone(),
                    body: j.body.clone(),
                });
            }
        }
        None
    }

    /// The outbound queue refused the POST: due again `PUSH_CALLBACK_REQUEUE_MS` later.
    pub fn refused(&mut self, job: u64, now_ms: u64) {
        if self.jobs.contains_key(&job) {
            // It still counts as an attempt (as it always has): a queue that
            // stays full cannot hold a job forever.
            self.due.push(Reverse((now_ms + PUSH_CALLBACK_REQUEUE_MS, job)));
        }
    }

    /// The POST of `job` was answered (`ok` = 2xx) at `now_ms`.
    pub fn answered(&mut self, job: u64, ok: bool, now_ms: u64) -> CallbackOutcome {
        if ok {
            self.jobs.remove(&job);
            return CallbackOutcome::Delivered;
        }
        let Some(j) = self.jobs.get(&job) else {
            return CallbackOutcome::GaveUp;
        };
        if j.attempts >= self.attempts_max {
            self.jobs.remove(&job);
            return CallbackOutcome::GaveUp;
        }
        let backoff_ms = PUSH_CALLBACK_BACKOFF_MS_MIN << j.attempts.min(PUSH_CALLBACK_BACKOFF_SHIFT_MAX);
        self.due.push(Reverse((now_ms + backoff_ms, job)));
        CallbackOutcome::Retrying
    }

    pub fn next_due_ms(&self) -> Option<u64> {
        self.due.peek().map(|Reverse((due_ms, _))| *due_ms)
    }

    /// Jobs waiting (queued, in flight or backing off).
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_with_doubling_backoff_then_gives_up() {
        let mut c = Callbacks::new(3, 10);
        assert!(c.queue("http://sp/cb".into(), b"{}".to_vec()));
        let d = c.pop_due(0).expect("due at once");
        assert!(c.pop_due(0).is_none(), "in flight, not due twice");
        assert_eq!(c.answered(d.job, false, 1_000), CallbackOutcome::Retrying);
        assert_eq!(c.next_due_ms(), Some(1_000 + 2 * PUSH_CALLBACK_BACKOFF_MS_MIN));
        assert!(c.pop_due(1_999).is_none());
        let d = c.pop_due(2_000).expect("second attempt");
        assert_eq!(c.answered(d.job, false, 2_000), CallbackOutcome::Retrying);
        assert_eq!(c.next_due_ms(), Some(2_000 + 4 * PUSH_CALLBACK_BACKOFF_MS_MIN));
        let d = c.pop_due(10_000).expect("third attempt");
        assert_eq!(c.answered(d.job, false, 10_000), CallbackOutcome::GaveUp);
        assert!(c.is_empty());
    }

    #[test]
    fn bounded_and_a_refused_post_is_due_again_later() {
        let mut c = Callbacks::new(2, 1);
        assert!(c.queue("u".into(), vec![]));
        assert!(!c.queue("v".into(), vec![]), "over callbacks_pending_max");
        let d = c.pop_due(5).expect("due");
        c.refused(d.job, 5);
        assert!(c.pop_due(5 + PUSH_CALLBACK_REQUEUE_MS - 1).is_none());
        let d = c.pop_due(5 + PUSH_CALLBACK_REQUEUE_MS).expect("due again");
        assert_eq!(c.answered(d.job, true, 0), CallbackOutcome::Delivered);
        assert!(c.is_empty());
    }
}
