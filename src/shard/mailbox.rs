//! A shard's mailbox: a bounded channel of commands plus a wake-up that
//! interrupts the shard's wait (eventfd for io_uring, mio::Waker for epoll).
//!
//! Owns `Command` and `MailboxSender`. Must never block a sender: a full
//! mailbox is reported to the caller, who answers "overloaded".

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::delivery::Location;
use crate::delivery::Push;
pub use crate::sys::waker::Wake;

/// Work posted to a shard by the API, another shard, or main.
#[derive(Debug)]
pub enum Command {
    /// Deliver `push` to the connection at (key, generation).
    Push { key: u32, generation: u32, push: Push },
    /// Another connection claimed this one's client id: disconnect it (0x8E)
    /// and hand its undelivered pushes to `new_owner` if that is persistent.
    TakeOver {
        key: u32,
        generation: u32,
        new_owner: Location,
    },
    /// Keep-alive dispersal (seeds/000): devices whose last keep-alive fell in
    /// one of these shard seconds get a `$pulse/keepalive` message, spread
    /// uniformly over their period starting now.
    Disperse { hot_seconds: Vec<u32> },
    /// Heartbeat load relief (seeds/004): shed this many keep-alives per
    /// second (x 1000): devices in the relief rule's order are asked to
    /// lengthen their heartbeat (up to `keepalive_max_s`); those asked in an
    /// earlier round are disconnected (0x89, or 0x9C with `server_reference`).
    Relieve {
        shed_milli_per_s: u64,
        keepalive_max_s: u16,
    },
    /// Cross-shard rebalancing: move up to `count` connections to shard `to`
    /// (socket and state together; none moved here within `hold_ms`).
    Move { to: u16, count: u32, hold_ms: u64 },
    /// A connection moved here from another shard: its state (its socket was
    /// passed to this ring with MSG_RING, or travels inside as a plain fd).
    Adopt(Box<super::migrate::Moving>),
    /// A push addressed to a connection that has since moved here from `from`.
    PushMoved { from: Location, push: Push },
    /// Stop: disconnect every device (0x8B) and exit the loop.
    Shutdown,
}

/// The sending half, shared by everyone who posts to one shard.
#[derive(Clone)]
pub struct MailboxSender {
    tx: Sender<Command>,
    wake_pending: Arc<AtomicBool>,
    waker: Arc<dyn Wake>,
}

/// The receiving half, owned by the shard.
pub struct MailboxReceiver {
    rx: Receiver<Command>,
    wake_pending: Arc<AtomicBool>,
}

/// Why a post failed.
#[derive(Debug, PartialEq, Eq)]
pub enum PostError {
    Full,
    Closed,
}

pub fn mailbox(capacity: usize, waker: Arc<dyn Wake>) -> (MailboxSender, MailboxReceiver) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let wake_pending = Arc::new(AtomicBool::new(false));
    (
        MailboxSender {
            tx,
            wake_pending: wake_pending.clone(),
            waker,
        },
        MailboxReceiver { rx, wake_pending },
    )
}

impl MailboxSender {
    /// Posts without blocking; wakes the shard unless a wake-up is already pending.
    pub fn post(&self, command: Command) -> Result<(), (PostError, Command)> {
        match self.tx.try_send(command) {
            Ok(()) => {
                if !self.wake_pending.swap(true, Ordering::AcqRel) {
                    self.waker.wake();
                }
                Ok(())
            }
            Err(TrySendError::Full(c)) => Err((PostError::Full, c)),
            Err(TrySendError::Disconnected(c)) => Err((PostError::Closed, c)),
        }
    }
}

impl MailboxReceiver {
    /// Called by the shard when woken, before draining: later posts wake it again.
    pub fn rearm(&self) {
        self.wake_pending.store(false, Ordering::Release);
    }

    pub fn try_recv(&self) -> Option<Command> {
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn wakes_once_per_drain_and_reports_full() {
        let waker = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let (tx, rx) = mailbox(2, waker.clone());
        tx.post(Command::Shutdown).expect("room for one");
        tx.post(Command::Shutdown).expect("room for two");
        assert_eq!(waker.0.load(Ordering::Relaxed), 1);
        assert!(matches!(tx.post(Command::Shutdown), Err((PostError::Full, _))));
        rx.rearm();
        assert!(rx.try_recv().is_some());
        assert!(rx.try_recv().is_some());
        assert!(rx.try_recv().is_none());
        tx.post(Command::Shutdown).expect("room again");
        assert_eq!(waker.0.load(Ordering::Relaxed), 2);
    }
}
