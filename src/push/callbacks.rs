//! Callbacks to SPs: the status of a message that reached a terminal state,
//! POSTed to its `callback_url`, tried up to `callback_attempts_max` times with
//! exponential backoff (`PUSH_CALLBACK_BACKOFF_MS_MIN` doubling, at most
//! `PUSH_CALLBACK_BACKOFF_SHIFT_MAX` times), at most `callbacks_pending_max`
//! waiting in total. Each SP has a budget of callback POSTs (`CallbackBudget`:
//! a token bucket, `sp_callbacks_per_s` with a burst of `sp_callbacks_burst`):
//! a job that is due when its SP's budget is spent waits, in order, for the
//! next token (delayed, never dropped or coalesced), so one multicast cannot
//! turn into thousands of POSTs a second at one target.
//!
//! Owns callback jobs, their schedule and the budgets. Must never send anything or read a
//! clock: the machine turns a due job into a POST effect, and tells it the
//! outcome with the time it happened.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use crate::limits::{PUSH_CALLBACK_BACKOFF_MS_MIN, PUSH_CALLBACK_BACKOFF_SHIFT_MAX, PUSH_CALLBACK_REQUEUE_MS};

struct Job {
    sp: String,
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

/// Callback POSTs one SP may start: a token bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CallbackBudget {
    /// Tokens added per second (`sp_callbacks_per_s`).
    pub per_s: f64,
    /// Bucket size, and its content at start (`sp_callbacks_burst`).
    pub burst: u32,
}

struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    fn refill(&mut self, now_ms: u64, budget: CallbackBudget) {
        let elapsed_ms = now_ms.saturating_sub(self.at_ms);
        self.tokens = (self.tokens + elapsed_ms as f64 * budget.per_s / 1000.0).min(f64::from(budget.burst));
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// When the next whole token is there (now if it is).
    fn token_due_ms(&self, budget: CallbackBudget) -> u64 {
        if self.tokens >= 1.0 {
            return self.at_ms;
        }
        self.at_ms + ((1.0 - self.tokens) * 1000.0 / budget.per_s).ceil() as u64
    }
}

pub struct Callbacks {
    jobs: HashMap<u64, Job>,
    /// (due_ms, job); a job is in here once while it waits for its time.
    due: BinaryHeap<Reverse<(u64, u64)>>,
    /// Jobs whose time came, waiting for their SP's budget, oldest first.
    ready: HashMap<String, VecDeque<u64>>,
    /// SPs with ready jobs, in the order they are served (round robin).
    ready_order: VecDeque<String>,
    /// One per SP that has had a callback (SPs come from the configuration).
    buckets: HashMap<String, Bucket>,
    budget: CallbackBudget,
    next_job: u64,
    attempts_max: u32,
    pending_max: usize,
}

impl Callbacks {
    pub fn new(attempts_max: u32, pending_max: usize, budget: CallbackBudget) -> Callbacks {
        assert!(
            budget.per_s > 0.0 && budget.per_s.is_finite() && budget.burst >= 1,
            "callback budget {budget:?}"
        );
        Callbacks {
            jobs: HashMap::new(),
            due: BinaryHeap::new(),
            ready: HashMap::new(),
            ready_order: VecDeque::new(),
            buckets: HashMap::new(),
            budget,
            next_job: 1,
            attempts_max,
            pending_max,
        }
    }

    /// Queues a callback of `sp` due at once; false if `callbacks_pending_max` wait already.
    pub fn queue(&mut self, sp: &str, url: String, body: Vec<u8>) -> bool {
        if self.jobs.len() >= self.pending_max {
            return false;
        }
        let job = self.next_job;
        self.next_job += 1;
        let job_state = Job {
            sp: sp.to_string(),
            url,
            body,
            attempts: 0,
        };
        self.jobs.insert(job, job_state);
        self.due.push(Reverse((0, job)));
        true
    }

    /// The next job due at `now_ms` whose SP has budget left, counted as an attempt.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<DueCallback> {
        self.promote_due(now_ms);
        for _ in 0..self.ready_order.len() {
            let sp = self.ready_order.pop_front()?;
            let budget = self.budget;
            let bucket = self.buckets.entry(sp.clone()).or_insert(Bucket {
                tokens: f64::from(budget.burst),
                at_ms: now_ms,
            });
            bucket.refill(now_ms, budget);
            if bucket.tokens < 1.0 {
                self.ready_order.push_back(sp);
                continue;
            }
            let Some(queue) = self.ready.get_mut(&sp) else { continue };
            let Some(job) = queue.pop_front() else {
                self.ready.remove(&sp);
                continue;
            };
            if queue.is_empty() {
                self.ready.remove(&sp);
            } else {
                self.ready_order.push_back(sp);
            }
            let Some(j) = self.jobs.get_mut(&job) else { continue };
            bucket.tokens -= 1.0;
            j.attempts += 1;
            return Some(DueCallback {
                job,
                url: j.url.clone(),
                body: j.body.clone(),
            });
        }
        None
    }

    /// Moves jobs whose time came into their SP's ready queue.
    fn promote_due(&mut self, now_ms: u64) {
        while let Some(&Reverse((due_ms, job))) = self.due.peek() {
            if due_ms > now_ms {
                return;
            }
            self.due.pop();
            let Some(j) = self.jobs.get(&job) else { continue };
            let queue = self.ready.entry(j.sp.clone()).or_default();
            if queue.is_empty() {
                self.ready_order.push_back(j.sp.clone());
            }
            queue.push_back(job);
        }
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

    /// When `pop_due` may next return a job: the earliest time a job is due,
    /// or a waiting job's SP gets a token.
    pub fn next_due_ms(&self) -> Option<u64> {
        let scheduled = self.due.peek().map(|Reverse((due_ms, _))| *due_ms);
        let budgeted = self
            .ready_order
            .iter()
            .map(|sp| self.buckets.get(sp).map_or(0, |b| b.token_due_ms(self.budget)))
            .min();
        scheduled.into_iter().chain(budgeted).min()
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

    const WIDE: CallbackBudget = CallbackBudget {
        per_s: 1_000.0,
        burst: 1_000,
    };

    #[test]
    fn retries_with_doubling_backoff_then_gives_up() {
        let mut c = Callbacks::new(3, 10, WIDE);
        assert!(c.queue("acme", "http://sp/cb".into(), b"{}".to_vec()));
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
        let mut c = Callbacks::new(2, 1, WIDE);
        assert!(c.queue("acme", "u".into(), vec![]));
        assert!(!c.queue("acme", "v".into(), vec![]), "over callbacks_pending_max");
        let d = c.pop_due(5).expect("due");
        c.refused(d.job, 5);
        assert!(c.pop_due(5 + PUSH_CALLBACK_REQUEUE_MS - 1).is_none());
        let d = c.pop_due(5 + PUSH_CALLBACK_REQUEUE_MS).expect("due again");
        assert_eq!(c.answered(d.job, true, 0), CallbackOutcome::Delivered);
        assert!(c.is_empty());
    }

    #[test]
    fn an_sp_over_its_budget_waits_for_tokens_and_others_are_not_held_up() {
        let budget = CallbackBudget { per_s: 10.0, burst: 3 };
        let mut c = Callbacks::new(1, 100, budget);
        for _ in 0..10 {
            assert!(c.queue("loud", "http://a/".into(), vec![]));
        }
        assert!(c.queue("quiet", "http://b/".into(), vec![]));
        let mut at_0 = Vec::new();
        while let Some(d) = c.pop_due(0) {
            at_0.push(d.url);
        }
        assert_eq!(at_0.len(), 4, "the burst of 3, and the quiet SP's one: {at_0:?}");
        assert_eq!(at_0.iter().filter(|u| *u == "http://b/").count(), 1);
        assert_eq!(c.next_due_ms(), Some(100), "one token per 100 ms");
        assert!(c.pop_due(99).is_none());
        assert!(c.pop_due(100).is_some());
        assert!(c.pop_due(100).is_none());
        // Over 1 s at most 10 more start; none is dropped: all 10 have started by 700 ms.
        let mut started = 5;
        for now_ms in (100..=1_000).step_by(50) {
            while c.pop_due(now_ms).is_some() {
                started += 1;
            }
        }
        assert_eq!(started, 11);
        assert_eq!(c.len(), 11, "in flight, not dropped");
    }
}
