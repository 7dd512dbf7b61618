//! Durability of message state changes without blocking the service loop: the
//! ids the machine changed are collected in a dirty set, written by one group
//! commit at a time (`GroupCommitter::submit`, a ticket polled each turn), and
//! kept until a commit covering them succeeds. A failed commit (or a refused
//! submission) is counted in `store_errors`, its ids go back into the dirty
//! set, and the commit is retried after a backoff (`PUSH_PERSIST_RETRY_MS_*`);
//! the committer takes it again once its own probe found the store working.
//! What is written is always the message's value at submit time, so a retry
//! supersedes whatever the lost commit held.
//!
//! A change a crash may lose without harm (an attempt started: recovery
//! starts the message again, within the at-least-once contract) is *lazy*
//! (`mark_soon`): it becomes dirty only `PUSH_PERSIST_LAZY_MS` later, and a
//! real change before then (delivered, failed) writes the message once
//! instead of twice. This halves the store writes of a push delivered at once.
//!
//! Owns the dirty set, the lazy set, pending deletes and the commit in
//! flight. Must never wait for a commit in the loop (only `shutdown` waits,
//! bounded), never drop a dirty id before a commit of it succeeded, and never
//! make a change lazy that recovery could not redo (a terminal state, a
//! closed attempt, a confirmation).

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::counters::{ServiceCounters, bump};
use crate::limits::{
    PUSH_PERSIST_DELETES_MAX, PUSH_PERSIST_LAZY_MAX, PUSH_PERSIST_LAZY_MS, PUSH_PERSIST_RETRY_MS_MAX,
    PUSH_PERSIST_RETRY_MS_MIN,
};
use crate::store::{GroupCommitter, StoreError, StoreOp, Ticket};

/// A record to delete: a message's, or a payload's row (its last message finished).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gone {
    Message(u64),
    Payload(u64),
}

impl Gone {
    fn op(self) -> StoreOp {
        match self {
            Gone::Message(id) => StoreOp::Delete { id },
            Gone::Payload(id) => StoreOp::DeletePayload { id },
        }
    }
}

struct InFlight {
    ticket: Ticket,
    puts: Vec<u64>,
    deletes: Vec<Gone>,
}

pub struct Persister {
    committer: Arc<GroupCommitter>,
    counters: Arc<ServiceCounters>,
    dirty: BTreeSet<u64>,
    /// Ids with a lazy change not yet dirty...
    lazy: HashSet<u64>,
    /// ...and when each becomes dirty (monotonic ms), oldest first; an entry
    /// whose id left `lazy` meanwhile is skipped. Bounded by `PUSH_PERSIST_LAZY_MAX`.
    lazy_due: VecDeque<(u64, u64)>,
    /// Ids whose records go (retention passed), oldest first, bounded.
    deleted: VecDeque<Gone>,
    in_flight: Option<InFlight>,
    /// Failed commits in a row (0 = healthy).
    failures: u32,
    /// No submission before this (after a failure).
    retry_at_ms: u64,
}

impl Persister {
    pub fn new(committer: Arc<GroupCommitter>, counters: Arc<ServiceCounters>) -> Persister {
        Persister {
            committer,
            counters,
            dirty: BTreeSet::new(),
            lazy: HashSet::new(),
            lazy_due: VecDeque::new(),
            deleted: VecDeque::new(),
            in_flight: None,
            failures: 0,
            retry_at_ms: 0,
        }
    }

    /// `id` changed: write its current value.
    pub fn mark(&mut self, id: u64) {
        self.lazy.remove(&id);
        self.dirty.insert(id);
    }

    /// `id` changed in a way a crash may lose: write it `PUSH_PERSIST_LAZY_MS`
    /// after `now_ms` unless a `mark` (or a commit of it) comes first.
    pub fn mark_soon(&mut self, id: u64, now_ms: u64) {
        if self.dirty.contains(&id) || self.lazy.contains(&id) {
            return;
        }
        if self.lazy_due.len() >= PUSH_PERSIST_LAZY_MAX {
            self.dirty.insert(id);
            return;
        }
        self.lazy.insert(id);
        self.lazy_due.push_back((now_ms + PUSH_PERSIST_LAZY_MS, id));
    }

    /// Lazy changes due by `now_ms` become dirty.
    fn promote_due(&mut self, now_ms: u64) {
        while let Some(&(due_ms, id)) = self.lazy_due.front() {
            if due_ms > now_ms {
                break;
            }
            self.lazy_due.pop_front();
            if self.lazy.remove(&id) {
                self.dirty.insert(id);
            }
        }
        if self.lazy.is_empty() {
            self.lazy_due.clear();
        }
    }

    /// `id` is gone from the service: delete its record.
    pub fn forget(&mut self, id: u64) {
        self.lazy.remove(&id);
        self.dirty.remove(&id);
        if self.deleted.len() >= PUSH_PERSIST_DELETES_MAX {
            // Only while the store keeps failing; see PUSH_PERSIST_DELETES_MAX.
            self.deleted.pop_front();
            bump(&self.counters.store_deletes_dropped);
        }
        self.deleted.push_back(Gone::Message(id));
    }

    /// Payload row `id` is no longer referenced by a pending message: delete
    /// it (in the commit that holds that message's terminal state, or later).
    pub fn forget_payload(&mut self, id: u64) {
        if self.deleted.len() >= PUSH_PERSIST_DELETES_MAX {
            self.deleted.pop_front();
            bump(&self.counters.store_deletes_dropped);
        }
        self.deleted.push_back(Gone::Payload(id));
    }

    /// Settles the commit in flight, if it has an answer; then, unless one is
    /// still in flight or a retry is not due, submits everything dirty.
    /// `read` gives a message's current bytes (None: it no longer exists).
    pub fn turn(&mut self, now_ms: u64, read: impl Fn(u64) -> Option<Vec<u8>>) {
        self.promote_due(now_ms);
        if let Some(f) = &self.in_flight {
            match f.ticket.poll() {
                None => return,
                Some(result) => self.settle(result, now_ms),
            }
        }
        if now_ms < self.retry_at_ms || (self.dirty.is_empty() && self.deleted.is_empty()) {
            return;
        }
        let puts: Vec<u64> = std::mem::take(&mut self.dirty).into_iter().collect();
        let deletes: Vec<Gone> = self.deleted.drain(..).collect();
        let mut ops = Vec::with_capacity(puts.len() + deletes.len());
        for &id in &puts {
            if let Some(value) = read(id) {
                ops.push(StoreOp::Put { id, value });
            }
        }
        ops.extend(deletes.iter().map(|g| g.op()));
        if ops.is_empty() {
            return;
        }
        match self.committer.submit(ops) {
            Ok(ticket) => self.in_flight = Some(InFlight { ticket, puts, deletes }),
            Err(_) => self.failed(puts, deletes, now_ms),
        }
    }

    fn settle(&mut self, result: Result<(), StoreError>, now_ms: u64) {
        let Some(f) = self.in_flight.take() else { return };
        match result {
            Ok(()) => {
                self.failures = 0;
                self.retry_at_ms = 0;
            }
            Err(_) => self.failed(f.puts, f.deletes, now_ms),
        }
    }

    fn failed(&mut self, puts: Vec<u64>, deletes: Vec<Gone>, now_ms: u64) {
        bump(&self.counters.store_errors);
        self.dirty.extend(puts);
        for id in deletes.into_iter().rev() {
            self.deleted.push_front(id);
        }
        while self.deleted.len() > PUSH_PERSIST_DELETES_MAX {
            self.deleted.pop_front();
            bump(&self.counters.store_deletes_dropped);
        }
        let backoff_ms = (PUSH_PERSIST_RETRY_MS_MIN << self.failures.min(16)).min(PUSH_PERSIST_RETRY_MS_MAX);
        self.failures = self.failures.saturating_add(1);
        self.retry_at_ms = now_ms + backoff_ms;
    }

    /// The commit in flight's answer channel (the loop wakes on it).
    pub fn waiting_on(&self) -> Option<&Ticket> {
        self.in_flight.as_ref().map(|f| &f.ticket)
    }

    /// When the next submission may go (a retry after a failure), or the
    /// next lazy change becomes dirty.
    pub fn next_due_ms(&self) -> Option<u64> {
        let work = !self.dirty.is_empty() || !self.deleted.is_empty();
        let submit = (work && self.in_flight.is_none()).then_some(self.retry_at_ms);
        let lazy = self.lazy_due.front().map(|&(due_ms, _)| due_ms);
        submit.into_iter().chain(lazy).min()
    }

    /// Ids waiting to be written (not counting the commit in flight).
    pub fn dirty_len(&self) -> usize {
        self.dirty.len()
    }

    pub fn is_dirty(&self, id: u64) -> bool {
        self.dirty.contains(&id)
            || self.lazy.contains(&id)
            || self.in_flight.as_ref().is_some_and(|f| f.puts.contains(&id))
    }

    /// Nothing waiting (dirty or lazy) and nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_none() && self.dirty.is_empty() && self.lazy.is_empty() && self.deleted.is_empty()
    }

    /// At shutdown: commits what is left, waiting at most `budget`, retrying
    /// a failure. True if everything landed.
    pub fn shutdown(&mut self, budget: Duration, read: impl Fn(u64) -> Option<Vec<u8>>) -> bool {
        // Lazy changes are written now: a clean stop loses nothing.
        self.promote_due(u64::MAX);
        let start = Instant::now();
        loop {
            if self.is_idle() {
                return true;
            }
            let Some(left) = budget.checked_sub(start.elapsed()) else {
                return false;
            };
            let now_ms = start.elapsed().as_millis() as u64;
            if let Some(f) = &self.in_flight {
                if let Some(result) = f.ticket.wait(left) {
                    self.settle(result, now_ms);
                }
                continue;
            }
            // No backoff at shutdown beyond a short pause between failures.
            self.retry_at_ms = 0;
            self.turn(now_ms, &read);
            if self.in_flight.is_none() && !self.is_idle() {
                std::thread::sleep(Duration::from_millis(PUSH_PERSIST_RETRY_MS_MIN).min(left));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use super::*;
    use crate::store::{GroupCommitConfig, MemStore, Store};

    /// A store that fails every commit while `failing` is set.
    #[derive(Default)]
    struct FlakyStore {
        inner: MemStore,
        failing: AtomicBool,
        commits: AtomicU64,
    }

    impl Store for FlakyStore {
        fn commit(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
            self.commits.fetch_add(1, Ordering::SeqCst);
            if self.failing.load(Ordering::SeqCst) {
                return Err(StoreError::Io("disk unplugged".into()));
            }
            self.inner.commit(ops)
        }
        fn load_all(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
            self.inner.load_all()
        }
        fn len(&self) -> Result<u64, StoreError> {
            self.inner.len()
        }
        fn probe(&self, _bytes: usize) -> Result<(), StoreError> {
            match self.failing.load(Ordering::SeqCst) {
                true => Err(StoreError::Io("still unplugged".into())),
                false => Ok(()),
            }
        }
    }

    /// Turns until the commit in flight has an answer (the writer is a thread).
    fn settle(p: &mut Persister, now_ms: u64, values: &HashMap<u64, Vec<u8>>) {
        for _ in 0..5_000 {
            if p.waiting_on().is_none() {
                return;
            }
            p.turn(now_ms, |id| values.get(&id).cloned());
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("commit never answered");
    }

    #[test]
    fn a_failed_commit_keeps_the_dirty_set_and_it_lands_once_the_store_works() {
        let store = Arc::new(FlakyStore::default());
        store
            .inner
            .commit(&[StoreOp::Put {
                id: 9,
                value: b"old".to_vec(),
            }])
            .expect("seed");
        let committer = Arc::new(GroupCommitter::start(store.clone(), GroupCommitConfig::default()));
        let counters = Arc::new(ServiceCounters::default());
        let mut p = Persister::new(committer.clone(), counters.clone());
        let mut values: HashMap<u64, Vec<u8>> = HashMap::new();
        values.insert(1, b"one".to_vec());
        values.insert(2, b"two".to_vec());

        store.failing.store(true, Ordering::SeqCst);
        p.mark(1);
        p.mark(2);
        p.forget(9);
        p.turn(0, |id| values.get(&id).cloned());
        assert!(p.waiting_on().is_some(), "submitted without waiting");
        settle(&mut p, 0, &values);
        assert_eq!(
            counters.store_errors.load(Ordering::Relaxed),
            1,
            "the failure is counted"
        );
        assert!(p.is_dirty(1) && p.is_dirty(2), "nothing dropped");
        assert!(!p.is_idle());

        // Changed again while the store is down; no retry before the backoff.
        values.insert(1, b"one, later".to_vec());
        p.mark(1);
        let commits = store.commits.load(Ordering::SeqCst);
        p.turn(PUSH_PERSIST_RETRY_MS_MIN - 1, |id| values.get(&id).cloned());
        assert!(p.waiting_on().is_none());
        assert_eq!(store.commits.load(Ordering::SeqCst), commits);
        assert_eq!(p.next_due_ms(), Some(PUSH_PERSIST_RETRY_MS_MIN));

        // Still failing at the retry: counted again, the backoff doubles.
        p.turn(PUSH_PERSIST_RETRY_MS_MIN, |id| values.get(&id).cloned());
        settle(&mut p, PUSH_PERSIST_RETRY_MS_MIN, &values);
        assert_eq!(counters.store_errors.load(Ordering::Relaxed), 2);
        assert_eq!(p.next_due_ms(), Some(3 * PUSH_PERSIST_RETRY_MS_MIN));

        store.failing.store(false, Ordering::SeqCst);
        // The committer takes writes again once its probe (100 ms, 200 ms, ...) passes.
        let t0 = Instant::now();
        while committer.is_failed() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!committer.is_failed(), "the probe found the store working");
        p.turn(3 * PUSH_PERSIST_RETRY_MS_MIN, |id| values.get(&id).cloned());
        settle(&mut p, 3 * PUSH_PERSIST_RETRY_MS_MIN, &values);
        assert!(p.is_idle(), "everything landed");
        assert_eq!(
            store.load_all().expect("load"),
            vec![(1, b"one, later".to_vec()), (2, b"two".to_vec())],
            "the latest values, and the delete, once the store works"
        );
        assert!(!committer.is_failed());
        assert_eq!(counters.store_errors.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_lazy_change_waits_and_a_real_change_before_it_writes_once() {
        let store = Arc::new(FlakyStore::default());
        let committer = Arc::new(GroupCommitter::start(store.clone(), GroupCommitConfig::default()));
        let mut p = Persister::new(committer, Arc::new(ServiceCounters::default()));
        let values: HashMap<u64, Vec<u8>> = [(1, b"sent".to_vec()), (2, b"sent".to_vec())].into();
        p.mark_soon(1, 0);
        p.mark_soon(2, 0);
        assert!(p.is_dirty(1) && !p.is_idle(), "waiting, not dropped");
        assert_eq!(p.next_due_ms(), Some(PUSH_PERSIST_LAZY_MS), "the loop wakes for it");
        p.turn(PUSH_PERSIST_LAZY_MS - 1, |id| values.get(&id).cloned());
        assert!(p.waiting_on().is_none(), "nothing written before it is due");
        assert_eq!(store.commits.load(Ordering::SeqCst), 0);

        // 1 is delivered before its start was written: one write of the final value.
        p.mark(1);
        p.turn(1, |id| values.get(&id).cloned());
        settle(&mut p, 1, &values);
        assert_eq!(store.load_all().expect("load"), vec![(1, b"sent".to_vec())]);
        assert_eq!(store.commits.load(Ordering::SeqCst), 1);

        // 2's lazy change lands once due, and only then.
        p.turn(PUSH_PERSIST_LAZY_MS, |id| values.get(&id).cloned());
        settle(&mut p, PUSH_PERSIST_LAZY_MS, &values);
        assert_eq!(store.load_all().expect("load").len(), 2);
        assert!(p.is_idle());
        assert_eq!(store.commits.load(Ordering::SeqCst), 2, "1 was not written again");

        // A lazy change is written at shutdown, not lost by a clean stop.
        p.mark_soon(3, 10_000);
        assert!(p.shutdown(Duration::from_secs(5), |id| Some(id.to_le_bytes().to_vec())));
        assert_eq!(store.load_all().expect("load").len(), 3);
    }

    #[test]
    fn shutdown_commits_what_is_left() {
        let store = Arc::new(FlakyStore::default());
        let committer = Arc::new(GroupCommitter::start(store.clone(), GroupCommitConfig::default()));
        let mut p = Persister::new(committer, Arc::new(ServiceCounters::default()));
        p.mark(5);
        assert!(p.shutdown(Duration::from_secs(5), |id| Some(id.to_le_bytes().to_vec())));
        assert_eq!(store.load_all().expect("load"), vec![(5, 5u64.to_le_bytes().to_vec())]);
    }
}
