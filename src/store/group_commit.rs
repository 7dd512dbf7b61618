//! `GroupCommitter`: one writer thread owns the `Store`; callers submit op
//! lists and (for `commit`) block until the batch holding them is durable, or
//! (for `submit`) get a `Ticket` they poll without blocking.
//! Whatever piles up while one commit is in flight is merged into the next
//! commit, so N concurrent callers cost about one fsync, not N.
//!
//! A failed store commit makes the committer *degraded*: that batch's callers
//! get the error, and so does every submission after it (refused at once),
//! until the writer's probe (`Store::probe`, retried with backoff from
//! `retry_ms_min` to `retry_ms_max`) commits a record as large as the failed
//! batch. Then submissions are taken again, with no restart. A caller whose
//! ops failed decides what to resubmit (the API answered 503, so its ops are
//! simply gone; the push service keeps its dirty ids and writes them again),
//! so nothing that failed is applied later behind its caller's back.
//! While idle the writer also compacts the store (`CompactPolicy`).
//!
//! Owns: the submission queue, its bound (`queue_ops_max`, back-pressure via
//! `StoreError::Full`), batching, ordering, the degraded state and its probes,
//! when to compact, and commit statistics.
//! Must never: acknowledge a submission before `Store::commit` covering it has
//! returned Ok, reorder submissions, split one submission across two store
//! commits (a submission is atomic), retry a failed submission by itself, or
//! commit anything while degraded (ops queued behind a failure fail too).

use super::pacing::Pacer;
use super::queue::{Outcome, Queue, Slot, Taken};
use super::{CompactPolicy, Store, StoreError, StoreOp};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use hdrhistogram::Histogram;
use std::collections::VecDeque;
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
    /// Store commits start at most this often (0 = no bound), unless as many
    /// submissions wait as a recent commit held (see `pacing`).
    pub commit_interval_us: u64,
    /// First probe this long after a failure; doubles per failed probe...
    pub retry_ms_min: u64,
    /// ...up to this.
    pub retry_ms_max: u64,
    pub compact: CompactPolicy,
}

/// A probe writes at least this much (a failed batch of one small op must not
/// be "cured" by the few pages a full file still has free)...
pub const PROBE_BYTES_MIN: usize = 64 << 10;
/// ...and at most this much (a huge failed batch must not make probing costly).
pub const PROBE_BYTES_MAX: usize = 1 << 20;

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            queue_ops_max: 65_536,
            batch_ops_max: 4_096,
            batch_wait_us: 0,
            commit_interval_us: 0,
            retry_ms_min: 100,
            retry_ms_max: 5_000,
            compact: CompactPolicy::default(),
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
    /// Probes (while degraded) that failed.
    pub failed_probes: u64,
    /// Store opens that failed (`start_degraded`).
    pub failed_opens: u64,
    pub compactions: u64,
    pub failed_compactions: u64,
    /// The store file's size at the last measurement (0: unknown).
    pub file_bytes: u64,
}

/// Who hears about a submission's commit.
enum Reply {
    /// A `Ticket` (polled, or selected on among channels).
    Ticket(Sender<Outcome>),
    /// `commit_then`'s continuation (a blocking `commit`'s is its slot's
    /// `set`), run on the writer thread.
    Then(Then),
}

impl Reply {
    fn send(self, r: Outcome) {
        match self {
            // The caller may have gone away; nothing to do then.
            Reply::Ticket(t) => {
                let _ = t.send(r);
            }
            Reply::Then(t) => t.run(r),
        }
    }
}

type Continuation = Box<dyn FnOnce(Outcome) + Send>;

/// A continuation that runs once: with the commit's outcome, or `Closed` if
/// dropped unanswered (the writer ended). A panic in it is contained: the
/// writer goes on committing.
struct Then(Option<Continuation>);

impl Then {
    fn run(mut self, r: Outcome) {
        if let Some(f) = self.0.take() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(r)));
        }
    }
}

impl Drop for Then {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(Err(StoreError::Closed))));
        }
    }
}

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
    queue: Arc<Queue<Request>>,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    config: GroupCommitConfig,
}

impl GroupCommitter {
    pub fn start(store: Arc<dyn Store>, config: GroupCommitConfig) -> GroupCommitter {
        GroupCommitter::start_with(store, config, None)
    }

    /// Starts degraded: the store could not be opened (`error`); the writer
    /// probes it (which opens it) with the usual backoff.
    pub fn start_degraded(store: Arc<dyn Store>, config: GroupCommitConfig, error: StoreError) -> GroupCommitter {
        GroupCommitter::start_with(store, config, Some(error))
    }

    fn start_with(store: Arc<dyn Store>, config: GroupCommitConfig, failure: Option<StoreError>) -> GroupCommitter {
        assert!(
            config.retry_ms_min > 0 && config.retry_ms_min <= config.retry_ms_max,
            "retry_ms_min must be in 1..=retry_ms_max"
        );
        let queue = Arc::new(Queue::default());
        let rx = Arc::clone(&queue);
        let failed_opens = u64::from(failure.is_some());
        let shared = Arc::new(Shared {
            queued_ops: AtomicUsize::new(0),
            failed: AtomicBool::new(failure.is_some()),
            failure: Mutex::new(failure),
            counters: Mutex::new(Counters {
                stats: GroupCommitStats {
                    failed_opens,
                    ..GroupCommitStats::default()
                },
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
            queue,
            shared,
            writer: Some(writer),
            config,
        }
    }

    /// Blocks until durable (or error). Err(Full) immediately if more than
    /// `queue_ops_max` ops wait.
    pub fn commit(&self, ops: Vec<StoreOp>) -> Result<(), StoreError> {
        let slot = Arc::new(Slot::default());
        let answer = Arc::clone(&slot);
        // Refused, answered, or dropped unanswered (the writer died: Closed): the slot hears.
        self.commit_then(ops, move |r| answer.set(r));
        slot.wait()
    }

    /// Non-blocking `commit`: `then` runs exactly once, with the outcome, on
    /// the writer thread once the batch holding these ops is durable (or
    /// failed), so it must be short and must not block; or at once, on this
    /// thread, with the refusal (`Full`, the failure while degraded, `Closed`).
    pub fn commit_then(&self, ops: Vec<StoreOp>, then: impl FnOnce(Outcome) + Send + 'static) {
        let reply = Reply::Then(Then(Some(Box::new(then))));
        if let Err((e, Some(reply))) = self.submit_request(ops, Some(reply)) {
            reply.send(Err(e));
        }
    }

    /// Fire-and-forget variant for state updates whose durability nobody
    /// waits on (still ordered after earlier submissions). A later store
    /// failure shows up in `stats().failed_commits` and fails later calls.
    pub fn commit_async(&self, ops: Vec<StoreOp>) -> Result<(), StoreError> {
        self.submit_request(ops, None).map_err(|(e, _)| e)
    }

    /// Non-blocking submission: the returned `Ticket` says, when polled, whether
    /// the batch holding these ops is durable. Refused at once like `commit`
    /// (`Full` over the bound, the sticky failure after a failed commit).
    pub fn submit(&self, ops: Vec<StoreOp>) -> Result<Ticket, StoreError> {
        let (reply, done) = crossbeam_channel::bounded(1);
        self.submit_request(ops, Some(Reply::Ticket(reply)))
            .map_err(|(e, _)| e)?;
        Ok(Ticket { done })
    }

    /// The store's error while degraded (every submission is refused with
    /// it until a probe succeeds); None while healthy.
    pub fn failure(&self) -> Option<StoreError> {
        self.is_failed().then(|| self.shared.failure())
    }

    /// True while degraded: a failed commit blocks every submission until a probe succeeds.
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

    /// Queues a submission; a refusal gives its reply back unsent.
    fn submit_request(&self, ops: Vec<StoreOp>, reply: Option<Reply>) -> Result<(), (StoreError, Option<Reply>)> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err((self.shared.failure(), reply));
        }
        let n = ops.len();
        let max = self.config.queue_ops_max;
        if let Some(cur) = self
            .shared
            .queued_ops
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur == 0 || cur.saturating_add(n) <= max).then_some(cur + n)
            })
            .err()
        {
            return Err((StoreError::Full { queued_ops: cur }, reply));
        }
        if let Err(request) = self.queue.push(Request { ops, reply }) {
            self.shared.queued_ops.fetch_sub(n, Ordering::AcqRel);
            return Err((StoreError::Closed, request.reply));
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
        // Closing the queue lets the writer drain what is queued and exit.
        self.queue.close();
        if let Some(w) = self.writer.take() {
            // A writer that panicked has already failed its waiters (Closed).
            let _ = w.join();
        }
    }
}

/// The writer thread's own state besides the queue.
struct Writer {
    store: Arc<dyn Store>,
    shared: Arc<Shared>,
    cfg: GroupCommitConfig,
    /// Some while degraded: when to probe next, and how hard.
    probe: Option<Probe>,
    /// Ops committed since free space was last measured.
    ops_since_check: u64,
    check_at: Instant,
}

struct Probe {
    at: Instant,
    /// Failed probes in a row.
    attempt: u32,
    bytes: usize,
    since: Instant,
}

impl Writer {
    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.shared.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let ms = self.cfg.retry_ms_min.saturating_mul(1u64 << attempt.min(20));
        Duration::from_millis(ms.min(self.cfg.retry_ms_max))
    }

    /// Degraded from now on, with `error`, until a probe of `bytes` succeeds.
    fn fail(&mut self, error: StoreError, bytes: usize) {
        *self.shared.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.clone());
        self.shared.failed.store(true, Ordering::Release);
        let bytes = bytes.clamp(PROBE_BYTES_MIN, PROBE_BYTES_MAX);
        match &mut self.probe {
            Some(p) => p.bytes = p.bytes.max(bytes),
            None => {
                eprintln!("pulsegate: store degraded ({error}); refusing writes, probing from now on");
                let now = Instant::now();
                self.probe = Some(Probe {
                    at: now + self.backoff(0),
                    attempt: 0,
                    bytes,
                    since: now,
                });
            }
        }
    }

    /// When `upkeep` has work next (None: only a request wakes the writer).
    fn next_due(&self) -> Option<Instant> {
        match &self.probe {
            Some(p) => Some(p.at),
            None => (self.cfg.compact.free_bytes_min > 0 && self.ops_since_check > 0).then_some(self.check_at),
        }
    }

    /// Runs what is due: a probe while degraded, else a compaction check.
    fn upkeep(&mut self) {
        let now = Instant::now();
        if let Some(p) = &self.probe {
            if now < p.at {
                return;
            }
            let (bytes, attempt, since) = (p.bytes, p.attempt, p.since);
            match self.store.probe(bytes) {
                Ok(()) => {
                    self.probe = None;
                    *self.shared.failure.lock().unwrap_or_else(PoisonError::into_inner) = None;
                    self.shared.failed.store(false, Ordering::Release);
                    eprintln!(
                        "pulsegate: store recovered after {} ms ({} probes); taking writes again",
                        since.elapsed().as_millis(),
                        attempt + 1
                    );
                }
                Err(e) => {
                    self.counters().stats.failed_probes += 1;
                    *self.shared.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                    let at = now + self.backoff(attempt + 1);
                    if let Some(p) = &mut self.probe {
                        p.attempt = attempt.saturating_add(1);
                        p.at = at;
                    }
                }
            }
            return;
        }
        let policy = self.cfg.compact;
        if policy.free_bytes_min == 0 || self.ops_since_check == 0 || now < self.check_at {
            return;
        }
        self.ops_since_check = 0;
        self.check_at = now + Duration::from_millis(policy.check_ms);
        let result = self.store.compact(&policy);
        let file_bytes = self.store.file_bytes().unwrap_or(0);
        let mut c = self.counters();
        c.stats.file_bytes = file_bytes;
        match result {
            Ok(None) => {}
            Ok(Some(done)) => {
                c.stats.compactions += 1;
                drop(c);
                eprintln!(
                    "pulsegate: store compacted {} -> {} bytes in {} ms (live {} bytes, peak {})",
                    done.file_bytes_before,
                    done.file_bytes_after,
                    done.duration_ms,
                    done.live_bytes,
                    done.live_peak_bytes
                );
            }
            Err(e) => {
                c.stats.failed_compactions += 1;
                drop(c);
                eprintln!("pulsegate: store compaction failed: {e}");
                // A failed write poisons the store until it is reopened: probe it.
                if matches!(e, StoreError::Io(_) | StoreError::NoSpace(_)) {
                    self.fail(e, 0);
                }
            }
        }
    }
}

/// Abandons the queue when dropped (the writer ended).
struct Abandon(Arc<Queue<Request>>);

impl Drop for Abandon {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

fn writer_loop(store: Arc<dyn Store>, rx: Arc<Queue<Request>>, shared: Arc<Shared>, cfg: GroupCommitConfig) {
    let linger = Duration::from_micros(cfg.batch_wait_us);
    let mut pacer = Pacer::new(Duration::from_micros(cfg.commit_interval_us), Instant::now());
    let file_bytes = store.file_bytes().unwrap_or(0);
    shared
        .counters
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .stats
        .file_bytes = file_bytes;
    let mut w = Writer {
        store,
        shared,
        cfg,
        probe: None,
        ops_since_check: 0,
        check_at: Instant::now(),
    };
    if w.shared.failed.load(Ordering::Acquire) {
        // Started degraded (the store did not open).
        w.fail(w.shared.failure(), 0);
    }
    // Ends the queue with the writer, even by a panic: waiting callers hear `Closed`.
    let _abandon = Abandon(Arc::clone(&rx));
    // Taken from the queue, not committed yet, in submission order.
    let mut carry: VecDeque<Request> = VecDeque::new();
    loop {
        if carry.is_empty() {
            w.upkeep();
            match rx.take(1, w.next_due()) {
                Taken::Closed => return, // closed and drained
                Taken::Items(items) => carry = items,
            }
            if carry.is_empty() {
                continue; // upkeep is due
            }
        }
        let now = Instant::now();
        let lingered = (!linger.is_zero()).then(|| now + linger);
        let full = w.shared.queued_ops.load(Ordering::Acquire) >= cfg.batch_ops_max;
        let more = match lingered.max(pacer.deadline(now)) {
            // Sleeps until the deadline, or until as many wait as a recent commit held.
            Some(until) if !full => rx.take(pacer.more_wanted(carry.len()), Some(until)),
            _ => rx.take(0, None),
        };
        if let Taken::Items(items) = more {
            carry.extend(items);
        }
        let mut ops = Vec::new();
        let mut replies: Vec<Reply> = Vec::new();
        let mut submissions = 0u64;
        // Submissions are never split: one larger than the batch goes alone.
        while let Some(next) = carry.front() {
            if !ops.is_empty() && ops.len() + next.ops.len() > cfg.batch_ops_max {
                break;
            }
            let Some(next) = carry.pop_front() else { break };
            ops.extend(next.ops);
            replies.extend(next.reply);
            submissions += 1;
        }

        let n = ops.len();
        let result = if w.probe.is_some() {
            Err(w.shared.failure())
        } else if n == 0 {
            Ok(())
        } else {
            let t0 = Instant::now();
            pacer.started(t0, submissions);
            let r = w.store.commit(&ops);
            let us = t0.elapsed().as_micros().min(u64::MAX as u128) as u64;
            let mut c = w.counters();
            c.latency_us.saturating_record(us.max(1));
            c.stats.commits += 1;
            c.stats.ops += n as u64;
            c.stats.max_batch_ops = c.stats.max_batch_ops.max(n);
            if r.is_err() {
                c.stats.failed_commits += 1;
            }
            drop(c);
            w.ops_since_check += n as u64;
            if let Err(e) = &r {
                w.fail(e.clone(), ops_bytes(&ops));
            }
            r
        };
        w.counters().stats.submissions += submissions;
        w.shared.queued_ops.fetch_sub(n, Ordering::AcqRel);
        for r in replies {
            r.send(result.clone());
        }
    }
}

/// About what `ops` occupy in the store (values plus a key per op).
fn ops_bytes(ops: &[StoreOp]) -> usize {
    ops.iter()
        .map(|op| match op {
            StoreOp::Put { value, .. } | StoreOp::PutPayload { value, .. } => value.len() + 8,
            StoreOp::Delete { .. } | StoreOp::DeletePayload { .. } => 8,
        })
        .sum()
}

#[cfg(test)]
#[path = "group_commit_tests.rs"]
mod tests;
