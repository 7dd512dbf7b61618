//! `UringIo`: the kernel implementation of `sys::io::Io` on one shard's
//! io_uring: multishot accept into direct descriptors, multishot recv from a
//! provided buffer ring, sends, linked shutdown + close, cancellation,
//! MSG_RING passing a direct descriptor to another shard's ring, an eventfd
//! read for mailbox wake-ups, timed waits.
//!
//! Owns the ring, its provided buffers and the wake buffer. Must never let the
//! kernel outlive a buffer it was given (field order is drop order: the ring
//! goes first), and never recurse into completion handling from a submission
//! (completions taken off a full CQ are stashed for the next drain).

use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, squeue, types};

use super::bufring::BufRing;
use super::io::{Completion, Io, Listener};
use super::uring::ShardRing;
use super::waker::EventFdWaker;

/// Buffer group id of the shard's provided buffer ring.
const BUFFER_GROUP: u16 = 1;
/// IORING_MSG_RING_CQE_SKIP: post no completion in the destination ring (the
/// connection's state follows by mailbox, carrying the fixed-file index).
const MSG_RING_CQE_SKIP: u32 = 1;

/// Another shard's ring fd (-1 while it has none), for MSG_RING.
pub type RingFdOf = Box<dyn Fn(u16) -> i32 + Send>;

pub struct UringIo {
    // Field order is drop order: the ring goes first, so the kernel is done
    // with the buffer ring and the wake buffer before they are freed.
    ring: IoUring,
    bufs: BufRing,
    wake_buf: Box<[u8; 8]>,
    waker: Arc<EventFdWaker>,
    /// None on a shard that gets connections only by rebalancing.
    listener: Option<TcpListener>,
    /// The MQTT-over-TLS listener, when `mqtt_tls_listen` is set.
    tls_listener: Option<TcpListener>,
    fixed_files: bool,
    ring_fd_of: RingFdOf,
    epoch: Instant,
    /// Completions taken off a full CQ while submitting (handed out by the
    /// next `drain`, first: a handler must not recurse into handlers).
    stashed: Vec<Completion>,
    /// `io_uring_enter` failures that are neither EINTR nor EBUSY/EAGAIN.
    submit_errors: u64,
}

impl UringIo {
    /// `epoch`: the instant the shard clock counts from (the gateway's start).
    pub fn new(
        shard_ring: ShardRing,
        listener: Option<TcpListener>,
        waker: Arc<EventFdWaker>,
        recv_bufs: u16,
        recv_buf_bytes: u32,
        ring_fd_of: RingFdOf,
        epoch: Instant,
    ) -> std::io::Result<UringIo> {
        let bufs = BufRing::new(&shard_ring.ring.submitter(), recv_bufs, recv_buf_bytes, BUFFER_GROUP)?;
        Ok(UringIo {
            ring: shard_ring.ring,
            bufs,
            wake_buf: Box::new([0; 8]),
            waker,
            listener,
            tls_listener: None,
            fixed_files: shard_ring.fixed_files > 0,
            ring_fd_of,
            epoch,
            stashed: Vec::new(),
            submit_errors: 0,
        })
    }

    /// Adds the MQTT-over-TLS listener (accepts on it are `Listener::MqttTls`).
    pub fn with_tls_listener(mut self, tls_listener: Option<TcpListener>) -> UringIo {
        self.tls_listener = tls_listener;
        self
    }

    fn listener(&self, l: Listener) -> Option<&TcpListener> {
        match l {
            Listener::Mqtt => self.listener.as_ref(),
            Listener::MqttTls => self.tls_listener.as_ref(),
        }
    }

    /// The ring's fd (other shards pass sockets to it with MSG_RING).
    pub fn ring_fd(&self) -> i32 {
        self.ring.as_raw_fd()
    }

    /// Pushes one SQE, flushing the submission queue to the kernel when full.
    ///
    /// # Safety
    /// Every buffer and descriptor `entry` names must stay valid until its
    /// completion is drained.
    unsafe fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: the caller guarantees the entry's buffers and fds outlive
            // the operation (see each call site).
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                return;
            }
            // SQ full: hand what we have to the kernel, then retry the push.
            self.submit_now();
        }
    }

    /// `io_uring_enter` without waiting; every error has its arm.
    fn submit_now(&mut self) {
        let Err(e) = self.ring.submit() else { return };
        match e.raw_os_error() {
            // A signal arrived before the kernel took anything: just retry.
            Some(libc::EINTR) => {}
            // EBUSY: the CQ is full (or overflowed) and the kernel takes no
            // more submissions until it is drained. EAGAIN: the kernel is short
            // of memory for requests. Either way, drain first: move the CQEs
            // aside (handed out by the next drain, in order) and retry.
            Some(libc::EBUSY) | Some(libc::EAGAIN) => self.stash_completions(),
            // Anything else (EBADF, EFAULT, EINVAL, ENXIO: a dead or misused
            // ring) is a bug, not load: count it, report the first and every
            // power of two, and drain so a retry can make progress.
            _ => {
                self.enter_failed(&e);
                self.stash_completions();
            }
        }
    }

    fn enter_failed(&mut self, e: &std::io::Error) {
        self.submit_errors += 1;
        if self.submit_errors.is_power_of_two() {
            eprintln!("io_uring_enter failed ({} times): {e}", self.submit_errors);
        }
    }

    /// Moves every CQE aside, in order, for the next drain.
    fn stash_completions(&mut self) {
        let mut cq = self.ring.completion();
        cq.sync();
        self.stashed.extend(cq.map(|cqe| Completion {
            user_data: cqe.user_data(),
            result: cqe.result(),
            flags: cqe.flags(),
        }));
    }
}

impl Io for UringIo {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn has_listener(&self, l: Listener) -> bool {
        self.listener(l).is_some()
    }

    fn accept(&mut self, user_data: u64, l: Listener) {
        let Some(listener) = self.listener(l) else { return };
        let entry = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
            .allocate_file_index(self.fixed_files)
            // A direct descriptor has no process fd, so no CLOEXEC (the kernel refuses it).
            .flags(if self.fixed_files { 0 } else { libc::SOCK_CLOEXEC })
            .build()
            .user_data(user_data);
        // SAFETY: both listeners are fields of self, dropped after the ring.
        unsafe { self.push(entry) };
    }

    fn wake(&mut self, user_data: u64) {
        let entry = opcode::Read::new(types::Fd(self.waker.raw_fd()), self.wake_buf.as_mut_ptr(), 8)
            .build()
            .user_data(user_data);
        // SAFETY: the wake buffer is a Box field dropped after the ring, and
        // the eventfd lives in the Arc this struct holds.
        unsafe { self.push(entry) };
    }

    fn recv(&mut self, user_data: u64, io: u32) {
        let entry = if self.fixed_files {
            opcode::RecvMulti::new(types::Fixed(io), BUFFER_GROUP).build()
        } else {
            opcode::RecvMulti::new(types::Fd(io as i32), BUFFER_GROUP).build()
        };
        // SAFETY: the provided buffer ring lives as long as the ring; the
        // descriptor belongs to a live slot, kept until its Close completes.
        unsafe { self.push(entry.user_data(user_data)) };
    }

    unsafe fn send(&mut self, user_data: u64, io: u32, bytes: &[u8]) {
        let (ptr, len) = (bytes.as_ptr(), bytes.len() as u32);
        let entry = if self.fixed_files {
            opcode::Send::new(types::Fixed(io), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            opcode::Send::new(types::Fd(io as i32), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        };
        // SAFETY: the caller keeps `bytes` valid until this send completes
        // (the trait's contract).
        unsafe { self.push(entry.user_data(user_data)) };
    }

    /// Shutdown (hard-linked, so Close runs even if it fails) then Close.
    fn close(&mut self, shutdown_user_data: u64, close_user_data: u64, io: u32) {
        let (shutdown, close) = if self.fixed_files {
            (
                opcode::Shutdown::new(types::Fixed(io), libc::SHUT_RDWR).build(),
                opcode::Close::new(types::Fixed(io)).build(),
            )
        } else {
            (
                opcode::Shutdown::new(types::Fd(io as i32), libc::SHUT_RDWR).build(),
                opcode::Close::new(types::Fd(io as i32)).build(),
            )
        };
        // Both must sit in the SQ together for the link to hold.
        let room = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if room < 2 {
            self.submit_now();
        }
        // SAFETY: no buffers; the descriptor stays in the table until this Close runs.
        unsafe {
            self.push(shutdown.flags(squeue::Flags::IO_HARDLINK).user_data(shutdown_user_data));
            self.push(close.user_data(close_user_data));
        }
    }

    fn close_orphan(&mut self, user_data: u64, io: u32) {
        let entry = if self.fixed_files {
            opcode::Close::new(types::Fixed(io)).build()
        } else {
            opcode::Close::new(types::Fd(io as i32)).build()
        };
        // SAFETY: no buffers; the descriptor is owned by nothing else.
        unsafe { self.push(entry.user_data(user_data)) };
    }

    fn cancel(&mut self, target: u64, user_data: u64) {
        let entry = opcode::AsyncCancel::new(target).build().user_data(user_data);
        // SAFETY: a cancellation names a user_data word, no memory.
        unsafe { self.push(entry) };
    }

    fn passes_descriptors(&self) -> bool {
        self.fixed_files
    }

    fn msg_ring(&mut self, to: u16, io: u32, user_data: u64) -> bool {
        let ring_fd = (self.ring_fd_of)(to);
        if ring_fd < 0 {
            return false;
        }
        let entry = opcode::MsgRingSendFd::new(
            types::Fd(ring_fd),
            types::Fixed(io),
            types::DestinationSlot::auto_target(),
            0,
        )
        .opcode_flags(MSG_RING_CQE_SKIP)
        .build()
        .user_data(user_data);
        // SAFETY: the destination ring lives as long as the gateway (its fd is
        // published once and never closed while shards run); no buffers.
        unsafe { self.push(entry) };
        true
    }

    fn detach(&mut self, io: u32) -> Option<OwnedFd> {
        // SAFETY: the caller's slot owned this fd and nothing else does; no
        // operation is in flight on it (its recv was cancelled, no send is
        // outstanding), and the slot is freed right after, so this shard
        // never closes it again.
        Some(unsafe { OwnedFd::from_raw_fd(io as i32) })
    }

    fn attach(&mut self, fd: OwnedFd) -> u32 {
        fd.into_raw_fd() as u32
    }

    fn drain(&mut self, into: &mut Vec<Completion>, max: usize) {
        // Completions stashed while submitting came first: handle them first.
        into.append(&mut self.stashed);
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in cq.by_ref().take(max) {
            into.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
    }

    fn received(&self, buffer: u16, len: usize) -> &[u8] {
        self.bufs.filled(buffer, len)
    }

    fn consumed(&mut self, buffer: u16, len: usize, more: bool) {
        self.bufs.consumed(buffer, len, more);
    }

    fn publish_buffers(&mut self) {
        self.bufs.publish();
    }

    /// Submits and waits for at least one completion or `timeout_ms`.
    fn wait(&mut self, timeout_ms: u64) {
        let ts = types::Timespec::from(Duration::from_millis(timeout_ms));
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) => match e.raw_os_error() {
                // The timeout expired: timers are due.
                Some(libc::ETIME) => {}
                // A signal interrupted the wait: the loop checks its stop flag.
                Some(libc::EINTR) => {}
                // The CQ is full (or requests are short of memory): the next drain empties it.
                Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
                // Anything else is a bug (see `submit_now`): counted and reported.
                _ => self.enter_failed(&e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::cqueue;

    #[test]
    fn completion_flags_read_as_the_kernel_writes_them() {
        for flags in [
            0u32,
            1,
            2,
            3,
            16,
            17,
            19,
            (7 << 16) | 1,
            (65_535 << 16) | 3,
            (9 << 16) | 18,
        ] {
            let c = Completion {
                user_data: 0,
                result: 0,
                flags,
            };
            assert_eq!(c.more(), cqueue::more(flags), "{flags:#x}");
            assert_eq!(c.buffer(), cqueue::buffer_select(flags), "{flags:#x}");
            assert_eq!(c.buffer_more(), cqueue::buffer_more(flags), "{flags:#x}");
        }
    }
}
