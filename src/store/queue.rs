//! The group committer's plumbing: the submission queue between callers and
//! the one writer thread, and the one-shot answer a blocking caller waits on.
//!
//! Both are a mutex and a condition variable, not channels, for two reasons
//! measured on a 2-core host at 2,000 durable pushes/s: a blocking channel
//! receive spins and calls `sched_yield` several times before it sleeps
//! (27% of the gateway's CPU samples were in `sched_yield`), and a channel
//! wakes its receiver on every send, while the writer only needs waking when
//! its batch is worth committing (`Queue::take`'s `want`).
//!
//! Owns the queued requests, the closed flag and the writer's wake-up
//! threshold. Must never hold its lock across a store call or a wake-up of
//! anyone but the writer. (That a caller always gets an answer, `Closed` if
//! its request is dropped, is the committer's continuation's promise.)

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::StoreError;

/// What one commit answers.
pub type Outcome = Result<(), StoreError>;

/// Where a blocking caller's answer lands.
#[derive(Default)]
pub struct Slot {
    outcome: Mutex<Option<Outcome>>,
    ready: Condvar,
}

impl Slot {
    /// Blocks until `set` gave the answer.
    pub fn wait(&self) -> Outcome {
        let mut o = self.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(r) = o.take() {
                return r;
            }
            o = self.ready.wait(o).unwrap_or_else(PoisonError::into_inner);
        }
    }

    pub fn set(&self, r: Outcome) {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
        self.ready.notify_one();
    }
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
    /// The writer sleeps until this many items wait (0: it is not sleeping).
    wake_at: usize,
}

/// Many producers, one consumer (the writer).
pub struct Queue<T> {
    state: Mutex<State<T>>,
    writer: Condvar,
}

/// What `take` found.
pub enum Taken<T> {
    /// Everything that was queued (possibly nothing: the deadline passed).
    Items(VecDeque<T>),
    /// Closed and empty: the writer is done.
    Closed,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
                wake_at: 0,
            }),
            writer: Condvar::new(),
        }
    }
}

impl<T> Queue<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panicking holder leaves a valid queue behind.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item`, waking the writer only if it waits for this many; Err
    /// gives it back once the queue is closed.
    pub fn push(&self, item: T) -> Result<(), T> {
        let mut s = self.lock();
        if s.closed {
            return Err(item);
        }
        s.items.push_back(item);
        if s.wake_at > 0 && s.items.len() >= s.wake_at {
            s.wake_at = 0;
            self.writer.notify_one();
        }
        Ok(())
    }

    /// No more pushes; the writer takes what is left, then sees `Closed`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.writer.notify_one();
    }

    /// Closes and drops what is queued (their answers say `Closed`): the writer is gone.
    pub fn abandon(&self) {
        let items = {
            let mut s = self.lock();
            s.closed = true;
            std::mem::take(&mut s.items)
        };
        drop(items);
    }

    /// The writer: waits until at least `want` items are queued (or the
    /// queue closes, or `until` passes), then takes everything queued.
    /// `want` 0 takes what is there without waiting.
    pub fn take(&self, want: usize, until: Option<Instant>) -> Taken<T> {
        let mut s = self.lock();
        while s.items.len() < want && !s.closed {
            s.wake_at = want;
            match until {
                None => s = self.writer.wait(s).unwrap_or_else(PoisonError::into_inner),
                Some(at) => {
                    let now = Instant::now();
                    if now >= at {
                        break;
                    }
                    s = self
                        .writer
                        .wait_timeout(s, at - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
        s.wake_at = 0;
        if s.closed && s.items.is_empty() {
            return Taken::Closed;
        }
        Taken::Items(std::mem::take(&mut s.items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn the_writer_wakes_once_enough_wait_and_takes_them_all() {
        let q = Arc::new(Queue::<u32>::default());
        let producer = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || {
                for i in 0..3 {
                    std::thread::sleep(Duration::from_millis(20));
                    q.push(i).expect("open");
                }
            })
        };
        let t0 = Instant::now();
        match q.take(3, Some(t0 + Duration::from_secs(10))) {
            Taken::Items(items) => assert_eq!(items, [0, 1, 2]),
            Taken::Closed => panic!("not closed"),
        }
        producer.join().expect("producer");
        // Nothing queued: the deadline ends the wait with nothing.
        match q.take(1, Some(Instant::now() + Duration::from_millis(20))) {
            Taken::Items(items) => assert!(items.is_empty()),
            Taken::Closed => panic!("not closed"),
        }
        q.push(7).expect("open");
        q.close();
        assert_eq!(q.push(8), Err(8), "closed to pushes");
        assert!(
            matches!(q.take(5, None), Taken::Items(i) if i == [7]),
            "what was left first"
        );
        assert!(matches!(q.take(1, None), Taken::Closed));
    }

    /// Answers `Closed` into its slot when dropped (as the committer's requests do).
    struct ClosedOnDrop(Arc<Slot>);

    impl Drop for ClosedOnDrop {
        fn drop(&mut self) {
            self.0.set(Err(StoreError::Closed));
        }
    }

    #[test]
    fn abandon_drops_what_is_queued_and_a_slot_hands_over_its_answer() {
        let slot = Arc::new(Slot::default());
        let q = Queue::default();
        q.push(ClosedOnDrop(Arc::clone(&slot))).ok().expect("open");
        q.abandon();
        assert_eq!(slot.wait(), Err(StoreError::Closed));
        assert!(q.push(ClosedOnDrop(Arc::new(Slot::default()))).is_err(), "closed");
        let slot = Arc::new(Slot::default());
        slot.set(Ok(()));
        assert_eq!(slot.wait(), Ok(()));
    }
}
