//! `GroupCommitter`: one writer thread owns the `Store`; callers submit op
//! lists and (for `commit`) block until the batch holding them is durable, or
//! (for `submit`) get a `Ticket` they poll without blocking.
//! Whatever piles up while one commit is in flight is merged into the next
//! commit, so N concurrent callers cost about one fsync, not N.
//!
//! Owns: the submission queue, its bound (`queue_ops_max`, back-pressure via
//! `StoreError::Full`), batching, ordering, and commit statistics.
//! Must never: acknowledge a submission before `Store::commit` covering it has
//! returned Ok, reorder submissions, split one submission across two store
//! commits (a submission is atomic), or keep committing after a store commit
//! failed (a failure is sticky: later ops could depend on the lost ones) until
//! a caller that resubmits everything it lost calls `resume`.

use super::{Store, StoreError, StoreOp};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitConfig {
    /// Ops waiting (queued or in the commit in flight) above which submissions
    /// fail with `Full`. A single submission larger than this is still taken
    /// when nothing else waits, so it cannot be rejected forever.
    pub queue_ops_max: usize,
    /// Ops per store commit; submissions are never split, so one larger
    /// submission makes a batch on its own.
    pub batch_ops_max: usize,
    /// Linger after the first submission to grow the batch (0 = commit as
    /// soon as the writer is free; concurrency alone then forms the batches).
    pub batch_wait_us: u64,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            queue_ops_max: 65_536,
            batch_ops_max: 4_096,
            batch_wait_us: 0,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Store commits attempted (each one fsync on `RedbStore`).
    pub commits: u64,
    pub failed_commits: u64,
    /// Ops handed to the store.
    pub ops: u64,
    /// Submissions received by the writer (`commit` + `commit_async`).
    pub submissions: u64,
    pub max_batch_ops: usize,
    /// Latency of `Store::commit` (i.e. write + fsync), microseconds.
    pub commit_p50_us: u64,
    pub commit_p99_us: u64,
    pub commit_max_us: u64,
}

type Reply = Sender<Result<(), StoreError>>;

struct Request {
    ops: Vec<StoreOp>,
    reply: Option<Reply>,
}

struct Counters {
    stats: GroupCommitStats,
    latency_us: Histogram<u64>,
}

struct Shared {
    queued_ops: AtomicUsize,
    failed: AtomicBool,
    failure: Mutex<Option<StoreError>>,
    counters: Mutex<Counters>,
}

impl Shared {
    fn failure(&self) -> StoreError {
        // A poisoned lock only means a panicking thread held it; the
        // Option inside is still a valid value.
        let f = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        f.clone().unwrap_or(StoreError::Closed)
    }
}

pub struct GroupCommitter {
    tx: Option<Sender<Request>>,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    config: GroupCommitConfig,
}

impl GroupCommitter {
    pub fn start(store: Arc<dyn Store>, config: GroupCommitConfig) -> GroupCommitter {
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            queued_ops: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            counters: Mutex::new(Counters {
                stats: GroupCommitStats::default(),
                // 1us..1h at 2 significant digits: these bounds are valid
                // constants, so construction cannot fail.
                latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid histogram bounds"),
            }),
        });
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(store, rx, writer_shared, config))
            // Failing to spawn one thread at start-up is unrecoverable.
            .expect("spawn store writer thread");
        GroupCommitter {
            tx: Some(tx),
            shared,
            writer: Some(writer),
            config,
        }
    }

    /// Blocks until durable (or error). Err(Full) immediately if more than
    /// `queue_ops_max` ops wait.
    pub fn commit(&self, ops: Vec<StoreOp>) -> Result<(), StoreError> {
        let (reply, done) = crossbeam_channel::bounded(1);
        self.submit_request(ops, Some(reply))?;
        // Writer dropped the reply without answering => it died.
        done.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Fire-and-forget variant for state updates whose durability nobody
    /// waits on (still ordered after earlier submissions). A later store
    /// failure shows up in `stats().failed_commits` and fails later calls.
    pub fn commit_async(&self, ops: Vec<StoreOp>) -> Result<(), StoreError> {
        self.submit_request(ops, None)
    }

    /// Non-blocking submission: the returned `Ticket` says, when polled, whether
    /// the batch holding these ops is durable. Refused at once like `commit`
    /// (`Full` over the bound, the sticky failure after a failed commit).
    pub fn submit(&self, ops: Vec<StoreOp>) -> Result<Ticket, StoreError> {
        let (reply, done) = crossbeam_channel::bounded(1);
        self.submit_request(ops, Some(reply))?;
        Ok(Ticket { done })
    }

    /// Clears a sticky failure so submissions are taken again. Only for a caller
    /// that resubmits every op it lost (the push service keeps its dirty ids
    /// until a commit of them succeeds): after `resume`, later ops no longer wait
    /// on the lost ones. Blocking callers were told of their failure already.
    pub fn resume(&self) {
        let mut f = self.shared.failure.lock().unwrap_or_else(PoisonError::into_inner);
        *f = None;
        self.shared.failed.store(false, Ordering::Release);
    }

    /// True while a failed commit blocks every submission (until `resume`).
    pub fn is_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> GroupCommitStats {
        let c = self.shared.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let mut s = c.stats.clone();
        if !c.latency_us.is_empty() {
            s.commit_p50_us = c.latency_us.value_at_quantile(0.50);
            s.commit_p99_us = c.latency_us.value_at_quantile(0.99);
            s.commit_max_us = c.latency_us.max();
        }
        s
    }

    /// Ops currently queued or in flight.
    pub fn queued_ops(&self) -> usize {
        self.shared.queued_ops.load(Ordering::Acquire)
    }

    /// Flushes what is queued, joins the writer.
    pub fn shutdown(self) {
        drop(self);
    }

    fn submit_request(&self, ops: Vec<StoreOp>, reply: Option<Reply>) -> Result<(), StoreError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(self.shared.failure());
        }
        let n = ops.len();
        let max = self.config.queue_ops_max;
        self.shared
            .queued_ops
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur == 0 || cur.saturating_add(n) <= max).then_some(cur + n)
            })
            .map_err(|cur| StoreError::Full { queued_ops: cur })?;
        let tx = self.tx.as_ref().ok_or(StoreError::Closed)?;
        if tx.send(Request { ops, reply }).is_err() {
            self.shared.queued_ops.fetch_sub(n, Ordering::AcqRel);
            return Err(StoreError::Closed);
        }
        Ok(())
    }
}

/// The answer to one `submit`, polled without blocking.
pub struct Ticket {
    done: Receiver<Result<(), StoreError>>,
}

impl Ticket {
    /// None while the batch is not committed yet; then its result, once.
    /// A writer that went away without answering is `Closed`.
    pub fn poll(&self) -> Option<Result<(), StoreError>> {
        match self.done.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(StoreError::Closed)),
        }
    }

    /// The channel the answer arrives on, for a caller that waits for it among
    /// others (`crossbeam_channel::Select::ready`, which does not consume it).
    pub fn receiver(&self) -> &Receiver<Result<(), StoreError>> {
        &self.done
    }

    /// Blocks for the result at most `timeout` (shutdown only); None = still waiting.
    pub fn wait(&self, timeout: Duration) -> Option<Result<(), StoreError>> {
        match self.done.recv_timeout(timeout) {
            Ok(r) => Some(r),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Some(Err(StoreError::Closed)),
        }
    }
}

impl Drop for GroupCommitter {
    fn drop(&mut self) {
        // Disconnecting the channel lets the writer drain what is queued and exit.
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            // A writer that panicked has already failed its waiters (Closed).
            let _ = w.join();
        }
    }
}

fn writer_loop(store: Arc<dyn Store>, rx: Receiver<Request>, shared: Arc<Shared>, cfg: GroupCommitConfig) {
    let linger = Duration::from_micros(cfg.batch_wait_us);
    let mut carry: Option<Request> = None;
    loop {
        let first = match carry.take() {
            Some(r) => r,
            None => match rx.recv() {
                Ok(r) => r,
                Err(_) => return, // disconnected and drained
            },
        };
        let deadline = (!linger.is_zero()).then(|| Instant::now() + linger);
        let mut ops = first.ops;
        let mut replies: Vec<Reply> = first.reply.into_iter().collect();
        let mut submissions = 1u64;
        while ops.len() < cfg.batch_ops_max {
            let next = match rx.try_recv() {
                Ok(r) => r,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => match deadline {
                    Some(d) => match rx.recv_deadline(d) {
                        Ok(r) => r,
                        Err(_) => break,
                    },
                    None => break,
                },
            };
            if ops.len() + next.ops.len() > cfg.batch_ops_max {
                carry = Some(next);
                break;
            }
            ops.extend(next.ops);
            replies.extend(next.reply);
            submissions += 1;
        }

        let n = ops.len();
        let result = if shared.failed.load(Ordering::Acquire) {
            Err(shared.failure())
        } else if n == 0 {
            Ok(())
        } else {
            let t0 = Instant::now();
            let r = store.commit(&ops);
            let us = t0.elapsed().as_micros().min(u64::MAX as u128) as u64;
            let mut c = shared.counters.lock().unwrap_or_else(PoisonError::into_inner);
            c.latency_us.saturating_record(us.max(1));
            c.stats.commits += 1;
            c.stats.ops += n as u64;
            c.stats.max_batch_ops = c.stats.max_batch_ops.max(n);
            if r.is_err() {
                c.stats.failed_commits += 1;
            }
            r
        };
        if let Err(e) = &result
            && !shared.failed.load(Ordering::Acquire)
        {
            *shared.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.clone());
            shared.failed.store(true, Ordering::Release);
        }
        shared
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stats
            .submissions += submissions;
        shared.queued_ops.fetch_sub(n, Ordering::AcqRel);
        for r in replies {
            // The caller may have gone away; nothing to do then.
            let _ = r.send(result.clone());
        }
    }
}

#[cfg(test)]
#[path = "group_commit_tests.rs"]
mod tests;
