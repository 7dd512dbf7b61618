//! Wake-ups for sleeping shards: an eventfd the io_uring shard keeps a read
//! posted on, or mio's waker for the epoll shard.
//!
//! Owns the eventfd. Must never block the waking thread.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use rustix::event::{EventfdFlags, eventfd};

/// How a sender wakes a shard's event loop.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

/// An eventfd; a write of 1 completes the shard's pending read.
pub struct EventFdWaker {
    fd: OwnedFd,
}

impl EventFdWaker {
    pub fn new() -> std::io::Result<EventFdWaker> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(EventFdWaker { fd })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Wake for EventFdWaker {
    fn wake(&self) {
        // EAGAIN means the counter is saturated: the shard is already due to wake.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }
}

/// mio's waker behind the same trait.
pub struct MioWaker(pub mio::Waker);

impl Wake for MioWaker {
    fn wake(&self) {
        // An error here means the poll instance is gone: the shard has exited.
        let _ = self.0.wake();
    }
}
