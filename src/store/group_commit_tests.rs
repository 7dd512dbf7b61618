//! The group committer against counting, gated and failing stores.

use super::super::CompactPolicy;
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
    /// Probes pass only while this is set; each probe's size is logged.
    probe_ok: AtomicBool,
    probes: Mutex<Vec<usize>>,
}

impl CountingStore {
    fn new(delay: Duration) -> Arc<CountingStore> {
        Arc::new(CountingStore {
            inner: MemStore::new(),
            commits: AtomicU64::new(0),
            delay,
            log: Mutex::new(Vec::new()),
            fail_at: None,
            probe_ok: AtomicBool::new(true),
            probes: Mutex::new(Vec::new()),
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
    fn probe(&self, bytes: usize) -> Result<(), StoreError> {
        self.probes.lock().expect("probes lock").push(bytes);
        match self.probe_ok.load(Ordering::SeqCst) {
            true => Ok(()),
            false => Err(StoreError::NoSpace("still full".into())),
        }
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
    /// Commits block until `open`.
    fn closed() -> Arc<GateStore> {
        Arc::new(GateStore {
            inner: MemStore::new(),
            entered: AtomicU64::new(0),
            open: Mutex::new(false),
            cv: Condvar::new(),
        })
    }

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
    // Merging is what is asserted (fewer commits than submissions); how many fewer depends
    // on the host's scheduling, so no ratio is asserted here.
    assert!(commits < 3200, "expected fewer than 3200 commits, got {commits}");
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
    let store = GateStore::closed();
    let cfg = GroupCommitConfig {
        queue_ops_max: 10,
        batch_ops_max: 100,
        batch_wait_us: 0,
        ..GroupCommitConfig::default()
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
        ..GroupCommitConfig::default()
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
fn paced_commits_start_at_most_once_per_interval_and_gather_what_arrives() {
    let interval = Duration::from_millis(100);
    let store = CountingStore::new(Duration::ZERO);
    let cfg = GroupCommitConfig {
        commit_interval_us: interval.as_micros() as u64,
        ..GroupCommitConfig::default()
    };
    let gc = GroupCommitter::start(store.clone(), cfg);
    // Two commits in a row: the second cannot start before the interval since the first.
    let t0 = Instant::now();
    gc.commit(vec![put(0)]).expect("first");
    gc.commit(vec![put(1)]).expect("second");
    assert!(t0.elapsed() >= interval, "the second commit waited: {:?}", t0.elapsed());
    assert_eq!(store.commits.load(Ordering::SeqCst), 2);
    // An open stream (nobody waits for its answer) shares the paced commits.
    for id in 2..200 {
        gc.commit_async(vec![put(id)]).expect("async");
        std::thread::sleep(Duration::from_micros(200));
    }
    gc.commit(Vec::new()).expect("barrier");
    let commits = store.commits.load(Ordering::SeqCst) - 2;
    let intervals = (t0.elapsed().as_micros() / interval.as_micros()) as u64;
    assert!(
        commits <= intervals + 1,
        "{commits} commits in {intervals} intervals: each starts an interval after the last"
    );
    assert_eq!(store.len().expect("len"), 200, "every op landed");
}

fn failing_store(fail_at: u64) -> Arc<CountingStore> {
    Arc::new(CountingStore {
        inner: MemStore::new(),
        commits: AtomicU64::new(0),
        delay: Duration::ZERO,
        log: Mutex::new(Vec::new()),
        fail_at: Some(fail_at),
        probe_ok: AtomicBool::new(false),
        probes: Mutex::new(Vec::new()),
    })
}

const FAST_RETRY: GroupCommitConfig = GroupCommitConfig {
    queue_ops_max: 65_536,
    batch_ops_max: 4_096,
    batch_wait_us: 0,
    commit_interval_us: 0,
    retry_ms_min: 5,
    retry_ms_max: 20,
    compact: CompactPolicy {
        free_bytes_min: 0,
        free_percent_min: 50,
        check_ms: 1_000,
    },
};

/// Waits (bounded) until `gc` is no longer degraded.
fn wait_healthy(gc: &GroupCommitter) {
    let t0 = Instant::now();
    while gc.is_failed() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(!gc.is_failed(), "still degraded after 10 s: {:?}", gc.failure());
}

#[test]
fn a_failure_refuses_everything_until_a_probe_passes_then_writes_are_taken_again() {
    let store = failing_store(2);
    let gc = GroupCommitter::start(store.clone(), FAST_RETRY);
    gc.commit(vec![put(1)]).expect("first ok");
    assert_eq!(gc.failure(), None);
    assert_eq!(gc.commit(vec![put(2)]), Err(StoreError::Io("injected".into())));
    assert!(gc.is_failed());
    assert!(gc.commit(vec![put(3)]).is_err(), "refused while degraded");
    assert!(gc.commit_async(vec![put(4)]).is_err());
    // Probes fail (5, 10, 20, 20 ms ...) and nothing is committed meanwhile.
    std::thread::sleep(Duration::from_millis(100));
    assert!(gc.is_failed());
    assert_eq!(
        gc.failure(),
        Some(StoreError::NoSpace("still full".into())),
        "the latest error"
    );
    let probes = store.probes.lock().expect("probes").clone();
    assert!(probes.len() >= 2, "probed with backoff: {probes:?}");
    assert!(probes.len() <= 25, "backoff bounds the probes: {probes:?}");
    assert!(probes.iter().all(|&b| b == PROBE_BYTES_MIN), "{probes:?}");
    assert_eq!(gc.stats().failed_probes, probes.len() as u64);
    assert_eq!(store.commits.load(Ordering::SeqCst), 2);

    store.probe_ok.store(true, Ordering::SeqCst);
    wait_healthy(&gc);
    gc.commit(vec![put(3)]).expect("taken again without a restart");
    assert_eq!(gc.stats().failed_commits, 1);
    let ids: Vec<u64> = store.load_all().expect("load").iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, vec![1, 3], "the failed and refused ops were never applied later");
}

#[test]
fn start_degraded_refuses_until_the_store_opens() {
    let store = failing_store(u64::MAX);
    let gc = GroupCommitter::start_degraded(store.clone(), FAST_RETRY, StoreError::NoSpace("no space".into()));
    assert_eq!(gc.stats().failed_opens, 1);
    assert!(matches!(gc.submit(vec![put(1)]), Err(StoreError::NoSpace(_))));
    std::thread::sleep(Duration::from_millis(30));
    assert!(gc.is_failed());
    store.probe_ok.store(true, Ordering::SeqCst);
    wait_healthy(&gc);
    gc.commit(vec![put(1)]).expect("taken once the store opened");
    assert_eq!(store.len().expect("len"), 1);
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
fn tickets_resolve_without_blocking_and_a_passed_probe_ends_a_failure() {
    let store = GateStore::closed();
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

    let failing = failing_store(1);
    let gc = GroupCommitter::start(failing.clone(), FAST_RETRY);
    let t = gc.submit(vec![put(2)]).expect("taken");
    assert_eq!(settle(&t), Err(StoreError::Io("injected".into())));
    assert!(gc.is_failed());
    assert!(gc.submit(vec![put(2)]).is_err(), "refused while degraded");
    failing.probe_ok.store(true, Ordering::SeqCst);
    wait_healthy(&gc);
    let t = gc.submit(vec![put(2)]).expect("taken after the probe passed");
    assert_eq!(settle(&t), Ok(()));
    assert_eq!(failing.load_all().expect("load").len(), 1);
}

#[test]
fn commit_then_runs_once_after_the_commit_or_at_once_when_refused_and_survives_a_panic() {
    let store = CountingStore::new(Duration::from_millis(1));
    let gc = GroupCommitter::start(store.clone(), GroupCommitConfig::default());
    let (tx, rx) = crossbeam_channel::unbounded();
    let t = tx.clone();
    let seen = Arc::clone(&store);
    gc.commit_then(vec![put(1)], move |r| {
        // Runs only once the op is in the store.
        t.send((r, seen.len().expect("len"))).expect("send");
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).expect("ran"), (Ok(()), 1));
    // A continuation that panics: the writer goes on committing.
    gc.commit_then(vec![put(2)], |_| panic!("a broken continuation"));
    gc.commit(vec![put(3)]).expect("the writer survived");
    assert_eq!(store.len().expect("len"), 3);
    drop(gc);
    assert!(rx.try_recv().is_err(), "each continuation ran once");

    // Refused at once (over the queue bound): it runs on the caller's thread with the error.
    let gate = GateStore::closed();
    let cfg = GroupCommitConfig {
        queue_ops_max: 1,
        ..GroupCommitConfig::default()
    };
    let gc = GroupCommitter::start(gate.clone(), cfg);
    gc.commit_async(vec![put(0)]).expect("first");
    let caller = std::thread::current().id();
    gc.commit_then(vec![put(1)], move |r| {
        tx.send((r, (std::thread::current().id() == caller) as u64))
            .expect("send");
    });
    assert_eq!(
        rx.try_recv().expect("ran at once"),
        (Err(StoreError::Full { queued_ops: 1 }), 1)
    );
    gate.open();
}

#[test]
fn a_continuation_dropped_unanswered_hears_closed() {
    let (tx, rx) = crossbeam_channel::unbounded();
    drop(Then(Some(Box::new(move |r| tx.send(r).expect("send")))));
    assert_eq!(rx.try_recv().expect("ran"), Err(StoreError::Closed));
}
