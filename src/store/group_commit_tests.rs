//! The group committer against counting, gated and failing stores.

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
