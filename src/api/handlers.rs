//! The handler pool: a fixed number of threads that run `routes::handle` for complete
//! requests (the gateway's methods block: a service reply), fed by a bounded queue; each
//! answer goes back to the event loop over a channel, then a `mio::Waker` wakes the loop.
//! A push (`POST /v1/messages`) does not hold its thread through the group commit: the
//! gateway answers through a `SubmitReply`, which the store writer calls once the commit
//! is durable, with the same channel and waker.
//!
//! The job queue is a mutex and a condition variable, not a channel: an idle handler
//! sleeps at once, where a blocking channel receive spins and calls `sched_yield`
//! first (on a 2-core host at 2,000 pushes/s, 14% of the gateway's CPU samples were
//! idle handlers yielding).
//!
//! Owns: the handler threads, the job queue and the answer channel, panic containment.
//! Must never: touch a socket, block the event loop (submission is `try_send`), or hold more
//! jobs than `queue_max` plus one per thread.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded};

use super::request::RequestHead;
use super::response::Response;
use super::{Gateway, SubmitReply, routes};

/// One complete request for a handler thread.
pub(super) struct Job {
    /// The connection's slab index and its identity (a reused slot has another id).
    pub token: usize,
    pub conn_id: u64,
    pub head: RequestHead,
    pub body: Vec<u8>,
}

/// The answer to a `Job`.
pub(super) struct Done {
    pub token: usize,
    pub conn_id: u64,
    pub response: Response,
}

/// Every handler is busy and the queue is full (or the pool is closing).
#[derive(Debug)]
pub(super) struct Busy;

/// Jobs waiting for a handler: at most `max`; closed once the pool closes.
struct Jobs {
    state: Mutex<(VecDeque<Job>, bool)>,
    ready: Condvar,
    max: usize,
}

impl Jobs {
    fn lock(&self) -> MutexGuard<'_, (VecDeque<Job>, bool)> {
        // A panicking holder leaves a valid queue behind.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn try_push(&self, job: Job) -> Result<(), Busy> {
        let mut s = self.lock();
        if s.1 || s.0.len() >= self.max {
            return Err(Busy);
        }
        s.0.push_back(job);
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job; None once closed and drained.
    fn pop(&self) -> Option<Job> {
        let mut s = self.lock();
        loop {
            if let Some(job) = s.0.pop_front() {
                return Some(job);
            }
            if s.1 {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn close(&self) {
        self.lock().1 = true;
        self.ready.notify_all();
    }
}

/// The loop's side of the pool.
pub(super) struct Pool {
    jobs: Arc<Jobs>,
    done: Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
    /// Jobs submitted whose answer the loop has not taken yet.
    in_flight: usize,
    in_flight_max: usize,
}

impl Pool {
    /// `threads` handler threads and a queue of `queue_max` jobs; `wake` is called after every
    /// answer is sent.
    pub(super) fn start(
        threads: usize,
        queue_max: usize,
        gateway: Arc<dyn Gateway>,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> io::Result<Pool> {
        assert!(threads > 0 && queue_max > 0, "validated by the server");
        let in_flight_max = queue_max.saturating_add(threads);
        let jobs = Arc::new(Jobs {
            state: Mutex::new((VecDeque::with_capacity(queue_max), false)),
            ready: Condvar::new(),
            max: queue_max,
        });
        // Never full: at most `in_flight_max` answers are outstanding (see `try_submit`).
        let (done_tx, done_rx) = bounded::<Done>(in_flight_max);
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let queue = Arc::clone(&jobs);
            let done = done_tx.clone();
            let gateway = Arc::clone(&gateway);
            let wake = Arc::clone(&wake);
            let spawned = thread::Builder::new()
                .name(format!("api-handler-{i}"))
                .spawn(move || serve(&queue, &done, &*gateway, &wake));
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // Threads already started end now.
                    jobs.close();
                    return Err(e);
                }
            }
        }
        Ok(Pool {
            jobs,
            done: done_rx,
            threads: handles,
            in_flight: 0,
            in_flight_max,
        })
    }

    /// Queues `job`, or refuses it when the queue is full (the caller answers 503).
    pub(super) fn try_submit(&mut self, job: Job) -> Result<(), Busy> {
        if self.in_flight >= self.in_flight_max {
            return Err(Busy);
        }
        self.jobs.try_push(job)?;
        self.in_flight += 1;
        Ok(())
    }

    /// The next answer, if one is waiting.
    pub(super) fn try_done(&mut self) -> Option<Done> {
        match self.done.try_recv() {
            Ok(done) => {
                self.in_flight = self.in_flight.saturating_sub(1);
                Some(done)
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        }
    }

    /// Closes the queue (threads end after their current job) and returns the threads, for
    /// the caller to join within its deadline.
    pub(super) fn close(mut self) -> Vec<JoinHandle<()>> {
        self.jobs.close();
        std::mem::take(&mut self.threads)
    }
}

/// Hands `answer` to the loop and wakes it; false once the loop is gone
/// (only at shutdown: the answer has nobody to go to).
fn answer(done: &Sender<Done>, wake: &dyn Fn(), answer: Done) -> bool {
    let sent = done.send(answer).is_ok();
    if sent {
        wake();
    }
    sent
}

fn serve(jobs: &Jobs, done: &Sender<Done>, gateway: &dyn Gateway, wake: &Arc<dyn Fn() + Send + Sync>) {
    while let Some(job) = jobs.pop() {
        let Job {
            token,
            conn_id,
            head,
            body,
        } = job;
        // A submit answers through its reply (maybe later, from the store
        // writer once the commit is durable), never also from here.
        let deferred = Cell::new(false);
        let later = || {
            deferred.set(true);
            let (done, wake) = (done.clone(), Arc::clone(wake));
            SubmitReply::new(move |result| {
                let response = routes::submit_response(result);
                answer(
                    &done,
                    &*wake,
                    Done {
                        token,
                        conn_id,
                        response,
                    },
                );
            })
        };
        let response = match panic::catch_unwind(AssertUnwindSafe(|| routes::handle(&head, &body, gateway, later))) {
            Ok(Some(response)) => response,
            Ok(None) => continue,
            // A reply made before the panic answers for itself when dropped.
            Err(_) if deferred.get() => continue,
            Err(_) => Response::error(500, "internal_error", "request handler panicked").closing(),
        };
        if !answer(
            done,
            &**wake,
            Done {
                token,
                conn_id,
                response,
            },
        ) {
            return;
        }
    }
}
