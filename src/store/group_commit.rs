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
mod tests {
    use super::super::MemStore;
    use super::*;
    use std::sync::Condvar;
    use std::sync::atomic::AtomicU64;

    fn put(id: u64) -> StoreOp {
        StoreOp::Put {
            id,
            value: id.to_le_bytes().to_vec(),
        }
    }

    /// Counts commit calls and sleeps `delay` in each, like an fsync would.
    struct CountingStore {
        inner: MemStore,
        commits: AtomicU64,
        delay: Duration,
        log: Mutex<Vec<StoreOp>>,
        fail_at: Option<u64>,
    }

    impl CountingStore {
        fn new(delay: Duration) -> Arc<CountingStore> {
            Arc::new(CountingStore {
                inner: MemStore::new(),
                commits: AtomicU64::new(0),
                delay,
                log: Mutex::new(Vec::new()),
                fail_at: None,
            })
        }
    }

    impl Store for CountingStore {
        fn commit(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
            let k = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
            if self.fail_at == Some(k) {
                return Err(StoreError::Io("injected".into()));
            }
            std::thread::sleep(self.delay);
            self.log.lock().expect("log lock").extend_from_slice(ops);
            self.inner.commit(ops)
        }
        fn load_all(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
            self.inner.load_all()
        }
        fn len(&self) -> Result<u64, StoreError> {
            self.inner.len()
        }
    }

    /// Blocks every commit until `open` is called.
    struct GateStore {
        inner: MemStore,
        entered: AtomicU64,
        open: Mutex<bool>,
        cv: Condvar,
    }

    impl GateStore {
        fn open(&self) {
            *self.open.lock().expect("gate lock") = true;
            self.cv.notify_all();
        }
    }

    impl Store for GateStore {
        fn commit(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
            self.entered.fetch_add(1, Ordering::SeqCst);
            let mut open = self.open.lock().expect("gate lock");
            while !*open {
                open = self.cv.wait(open).expect("gate wait");
            }
            drop(open);
            self.inner.commit(ops)
        }
        fn load_all(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
            self.inner.load_all()
        }
        fn len(&self) -> Result<u64, StoreError> {
            self.inner.len()
        }
    }

    #[test]
    fn merges_concurrent_submissions() {
        let store = CountingStore::new(Duration::from_micros(500));
        let gc = Arc::new(GroupCommitter::start(store.clone(), GroupCommitConfig::default()));
        let threads: Vec<_> = (0..16u64)
            .map(|t| {
                let gc = Arc::clone(&gc);
                std::thread::spawn(move || {
                    for i in 0..200u64 {
                        gc.commit(vec![put(t * 1000 + i)]).expect("commit");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("submitter thread");
        }
        let stats = gc.stats();
        let commits = store.commits.load(Ordering::SeqCst);
        assert_eq!(stats.commits, commits);
        assert_eq!(stats.ops, 3200);
        assert_eq!(stats.submissions, 3200);
        assert_eq!(store.len().expect("len"), 3200);
        assert!(commits <= 800, "expected far fewer than 3200 commits, got {commits}");
        assert!(stats.max_batch_ops > 1);
        eprintln!("16x200 -> {commits} store commits, max batch {}", stats.max_batch_ops);
    }

    #[test]
    fn ops_apply_in_submission_order() {
        let store = CountingStore::new(Duration::from_micros(100));
        let gc = Arc::new(GroupCommitter::start(store.clone(), GroupCommitConfig::default()));
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let gc = Arc::clone(&gc);
                std::thread::spawn(move || {
                    for i in 0..300u64 {
                        let id = t * 1000 + i;
                        gc.commit_async(vec![put(id)]).expect("async put");
                        gc.commit_async(vec![StoreOp::Put { id, value: vec![9] }])
                            .expect("async overwrite");
                        if i % 2 == 0 {
                            gc.commit_async(vec![StoreOp::Delete { id }]).expect("async del");
                        }
                    }
                    // An empty commit is a barrier: all earlier submissions are durable.
                    gc.commit(Vec::new()).expect("barrier");
                })
            })
            .collect();
        for t in threads {
            t.join().expect("submitter thread");
        }
        let rows = store.load_all().expect("load");
        let expected: Vec<(u64, Vec<u8>)> = (0..8u64)
            .flat_map(|t| (0..300u64).filter(|i| i % 2 == 1).map(move |i| (t * 1000 + i, vec![9])))
            .collect();
        assert_eq!(rows, expected);
        // Per id, the store saw exactly the submitted sequence.
        let log = store.log.lock().expect("log lock").clone();
        let seq_of = |id: u64| -> Vec<StoreOp> {
            log.iter()
                .filter(|op| matches!(op, StoreOp::Put { id: x, .. } | StoreOp::Delete { id: x } if *x == id))
                .cloned()
                .collect()
        };
        assert_eq!(
            seq_of(4),
            vec![
                put(4),
                StoreOp::Put { id: 4, value: vec![9] },
                StoreOp::Delete { id: 4 }
            ]
        );
        assert_eq!(
            seq_of(7005),
            vec![
                put(7005),
                StoreOp::Put {
                    id: 7005,
                    value: vec![9]
                }
            ]
        );
    }

    #[test]
    fn full_when_queue_bound_hit() {
        let store = Arc::new(GateStore {
            inner: MemStore::new(),
            entered: AtomicU64::new(0),
            open: Mutex::new(false),
            cv: Condvar::new(),
        });
        let cfg = GroupCommitConfig {
            queue_ops_max: 10,
            batch_ops_max: 100,
            batch_wait_us: 0,
        };
        let gc = GroupCommitter::start(store.clone(), cfg);
        gc.commit_async(vec![put(0)]).expect("first");
        while store.entered.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        for id in 1..10 {
            gc.commit_async(vec![put(id)]).expect("within bound");
        }
        assert_eq!(gc.queued_ops(), 10);
        assert_eq!(gc.commit_async(vec![put(10)]), Err(StoreError::Full { queued_ops: 10 }));
        // The blocking variant fails immediately too instead of waiting.
        assert_eq!(gc.commit(vec![put(11)]), Err(StoreError::Full { queued_ops: 10 }));
        store.open();
        gc.shutdown(); // flushes the queued 9
        assert_eq!(store.len().expect("len"), 10);
    }

    #[test]
    fn oversized_submission_accepted_when_idle_and_batches_respect_max() {
        let store = CountingStore::new(Duration::from_micros(200));
        let cfg = GroupCommitConfig {
            queue_ops_max: 4,
            batch_ops_max: 3,
            batch_wait_us: 0,
        };
        let gc = GroupCommitter::start(store.clone(), cfg);
        gc.commit((0..6).map(put).collect()).expect("oversized but alone");
        for id in 10..14 {
            gc.commit_async(vec![put(id)]).expect("async");
        }
        gc.commit(Vec::new()).expect("barrier");
        assert_eq!(store.len().expect("len"), 10);
        let s = gc.stats();
        assert_eq!(s.max_batch_ops, 6);
        assert!(s.commits >= 3, "6 + 4 single ops with batch max 3: {s:?}");
    }

    #[test]
    fn shutdown_flushes_async_and_linger_grows_batches() {
        let store = CountingStore::new(Duration::from_micros(50));
        let cfg = GroupCommitConfig {
            batch_wait_us: 20_000,
            ..GroupCommitConfig::default()
        };
        let gc = GroupCommitter::start(store.clone(), cfg);
        for id in 0..1000 {
            gc.commit_async(vec![put(id)]).expect("async");
        }
        gc.shutdown();
        assert_eq!(store.len().expect("len"), 1000);
        assert!(store.commits.load(Ordering::SeqCst) < 20);
    }

    #[test]
    fn store_failure_is_sticky() {
        let store = Arc::new(CountingStore {
            inner: MemStore::new(),
            commits: AtomicU64::new(0),
            delay: Duration::ZERO,
            log: Mutex::new(Vec::new()),
            fail_at: Some(2),
        });
        let gc = GroupCommitter::start(store.clone(), GroupCommitConfig::default());
        gc.commit(vec![put(1)]).expect("first ok");
        assert_eq!(gc.commit(vec![put(2)]), Err(StoreError::Io("injected".into())));
        assert_eq!(gc.commit(vec![put(3)]), Err(StoreError::Io("injected".into())));
        assert_eq!(gc.commit_async(vec![put(4)]), Err(StoreError::Io("injected".into())));
        assert_eq!(store.commits.load(Ordering::SeqCst), 2);
        assert_eq!(gc.stats().failed_commits, 1);
        assert_eq!(store.load_all().expect("load").len(), 1);
    }

    /// Polls a ticket until it resolves (the writer is another thread).
    fn settle(t: &Ticket) -> Result<(), StoreError> {
        for _ in 0..5_000 {
            if let Some(r) = t.poll() {
                return r;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("ticket never resolved");
    }

    #[test]
    fn tickets_resolve_without_blocking_and_resume_clears_a_failure() {
        let store = Arc::new(GateStore {
            inner: MemStore::new(),
            entered: AtomicU64::new(0),
            open: Mutex::new(false),
            cv: Condvar::new(),
        });
        let gc = GroupCommitter::start(store.clone(), GroupCommitConfig::default());
        let t = gc.submit(vec![put(1)]).expect("taken");
        while store.entered.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // The commit is stuck in the store: polling answers at once, with nothing.
        assert_eq!(t.poll(), None);
        store.open();
        assert_eq!(settle(&t), Ok(()));
        assert_eq!(t.poll(), Some(Err(StoreError::Closed)), "answered once");

        let failing = Arc::new(CountingStore {
            inner: MemStore::new(),
            commits: AtomicU64::new(0),
            delay: Duration::ZERO,
            log: Mutex::new(Vec::new()),
            fail_at: Some(1),
        });
        let gc = GroupCommitter::start(failing.clone(), GroupCommitConfig::default());
        let t = gc.submit(vec![put(2)]).expect("taken");
        assert_eq!(settle(&t), Err(StoreError::Io("injected".into())));
        assert!(gc.is_failed());
        assert!(matches!(gc.submit(vec![put(2)]), Err(StoreError::Io(_))), "sticky");
        gc.resume();
        assert!(!gc.is_failed());
        let t = gc.submit(vec![put(2)]).expect("taken after resume");
        assert_eq!(settle(&t), Ok(()));
        assert_eq!(failing.load_all().expect("load").len(), 1);
    }
}
