//! The io_uring shard loop: multishot accept into direct descriptors,
//! multishot recv from a provided buffer ring, batched sends, eventfd wake-ups,
//! timed waits driving the timer wheel.
//!
//! Owns the ring and every operation in flight on it. Must never free a
//! connection slot while the kernel may still complete an operation on it,
//! and never block outside `io_uring_enter`.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::conn::{IO_CLOSE_DONE, IO_CLOSE_SUBMITTED, IO_MOVING, IO_RECV_ARMED, IO_SEND_IN_FLIGHT, Phase};
use super::core::Core;
use super::counters::{CloseReason, bump};
use super::mailbox::MailboxReceiver;
use super::migrate::{MoveOut, MoveStep};
use crate::limits;
use crate::sys::bufring::BufRing;
use crate::sys::uring::ShardRing;
use crate::sys::user_data::{Op, pack, unpack};
use crate::sys::waker::EventFdWaker;

/// Key used for operations that belong to no connection.
const NO_KEY: u32 = u32::MAX;
/// Buffer group id of the shard's provided buffer ring.
const BUFFER_GROUP: u16 = 1;
/// Pause before re-arming accept after an error such as a full fd table.
const ACCEPT_RETRY_MS: u64 = 100;
/// Longest a stopping shard waits for its devices to be disconnected.
const SHUTDOWN_GRACE_MS: u64 = 3_000;
/// IORING_MSG_RING_CQE_SKIP: post no completion in the destination ring (the
/// connection's state follows by mailbox, carrying the fixed-file index).
const MSG_RING_CQE_SKIP: u32 = 1;

pub struct UringShard {
    // Field order is drop order: the ring goes first, so the kernel is done
    // with the buffer ring and the wake buffer before they are freed.
    ring: IoUring,
    bufs: BufRing,
    wake_buf: Box<[u8; 8]>,
    waker: Arc<EventFdWaker>,
    /// None on a shard that gets connections only by rebalancing.
    listener: Option<TcpListener>,
    mailbox: MailboxReceiver,
    core: Core,
    fixed_files: bool,
    accept_armed: bool,
    accept_retry_at_ms: u64,
    wake_armed: bool,
    stop_deadline_ms: Option<u64>,
    cqes: Vec<(u64, i32, u32)>,
    /// Completions taken off a full CQ while submitting (handled next turn,
    /// never from inside `push`: a handler must not recurse into handlers).
    stashed: Vec<(u64, i32, u32)>,
    keys: Vec<u32>,
    /// `io_uring_enter` failures that are neither EINTR nor EBUSY/EAGAIN.
    submit_errors: u64,
}

impl UringShard {
    pub fn new(
        shard_ring: ShardRing,
        core: Core,
        listener: Option<TcpListener>,
        mailbox: MailboxReceiver,
        waker: Arc<EventFdWaker>,
        recv_bufs: u16,
        recv_buf_bytes: u32,
    ) -> std::io::Result<UringShard> {
        let bufs = BufRing::new(&shard_ring.ring.submitter(), recv_bufs, recv_buf_bytes, BUFFER_GROUP)?;
        Ok(UringShard {
            ring: shard_ring.ring,
            bufs,
            wake_buf: Box::new([0; 8]),
            waker,
            listener,
            mailbox,
            core,
            fixed_files: shard_ring.fixed_files > 0,
            accept_armed: false,
            accept_retry_at_ms: 0,
            wake_armed: false,
            stop_deadline_ms: None,
            cqes: Vec::with_capacity(limits::COMPLETIONS_PER_TURN_MAX),
            stashed: Vec::new(),
            keys: Vec::with_capacity(1024),
            submit_errors: 0,
        })
    }

    /// The ring's fd (other shards pass sockets to it with MSG_RING).
    pub fn ring_fd(&self) -> i32 {
        self.ring.as_raw_fd()
    }

    /// Pushes one SQE, flushing the submission queue to the kernel when full.
    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry built in this file references either a fixed
            // file / fd owned by a live slot (kept until its Close completes), the
            // provided buffer ring (lives as long as the ring), the wake buffer
            // (a Box field dropped after the ring), or a connection's `sending`
            // Vec, which `Core` never touches while IO_SEND_IN_FLIGHT is set.
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
            // aside (handled at the next drain, in order, never from here: a
            // handler must not recurse into handlers) and retry.
            Some(libc::EBUSY) | Some(libc::EAGAIN) => self.stash_completions(),
            // Anything else (EBADF, EFAULT, EINVAL, ENXIO: a dead or misused
            // ring) is a bug, not load: count it, report the first and every
            // power of two, and drain so a retry can make progress.
            _ => {
                self.submit_errors += 1;
                if self.submit_errors.is_power_of_two() {
                    eprintln!(
                        "shard {}: io_uring submit failed ({} times): {e}",
                        self.core.shard_id, self.submit_errors
                    );
                }
                self.stash_completions();
            }
        }
    }

    /// Moves every CQE aside, in order, for the next drain.
    fn stash_completions(&mut self) {
        let mut cq = self.ring.completion();
        cq.sync();
        self.stashed
            .extend(cq.map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())));
    }

    fn arm_accept(&mut self) {
        let Some(listener) = self.listener.as_ref() else { return };
        let fd = types::Fd(listener.as_raw_fd());
        let entry = opcode::AcceptMulti::new(fd)
            .allocate_file_index(self.fixed_files)
            // A direct descriptor has no process fd, so no CLOEXEC (the kernel refuses it).
            .flags(if self.fixed_files { 0 } else { libc::SOCK_CLOEXEC })
            .build()
            .user_data(pack(Op::Accept, NO_KEY, 0));
        self.push(entry);
        self.accept_armed = true;
    }

    fn arm_wake(&mut self) {
        let entry = opcode::Read::new(types::Fd(self.waker.raw_fd()), self.wake_buf.as_mut_ptr(), 8)
            .build()
            .user_data(pack(Op::Wake, NO_KEY, 0));
        self.push(entry);
        self.wake_armed = true;
    }

    fn arm_recv(&mut self, key: u32) {
        let Some(conn) = self.core.conn_mut(key) else { return };
        if conn.phase == Phase::Closing || conn.io_flags & (IO_RECV_ARMED | IO_MOVING) != 0 {
            return;
        }
        conn.io_flags |= IO_RECV_ARMED;
        let (io, generation) = (conn.io, conn.generation);
        let ud = pack(Op::Recv, key, generation);
        let entry = if self.fixed_files {
            opcode::RecvMulti::new(types::Fixed(io), BUFFER_GROUP).build()
        } else {
            opcode::RecvMulti::new(types::Fd(io as i32), BUFFER_GROUP).build()
        };
        self.push(entry.user_data(ud));
    }

    fn start_send(&mut self, key: u32) {
        let Some(conn) = self.core.conn_mut(key) else { return };
        if conn.io_flags & (IO_SEND_IN_FLIGHT | IO_CLOSE_SUBMITTED | IO_MOVING) != 0 {
            return;
        }
        let (io, generation) = (conn.io, conn.generation);
        let Some(bytes) = self.core.next_send(key) else { return };
        let (ptr, len) = (bytes.as_ptr(), bytes.len() as u32);
        let ud = pack(Op::Send, key, generation);
        let entry = if self.fixed_files {
            opcode::Send::new(types::Fixed(io), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            opcode::Send::new(types::Fd(io as i32), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        };
        self.push(entry.user_data(ud));
    }

    /// Shutdown (hard-linked, so Close runs even if it fails) then Close.
    fn start_close(&mut self, key: u32) {
        let Some(conn) = self.core.conn_mut(key) else { return };
        if conn.io_flags & IO_CLOSE_SUBMITTED != 0 {
            return;
        }
        conn.io_flags |= IO_CLOSE_SUBMITTED;
        let (io, generation) = (conn.io, conn.generation);
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
        self.push(
            shutdown
                .flags(squeue::Flags::IO_HARDLINK)
                .user_data(pack(Op::Shutdown, key, generation)),
        );
        self.push(close.user_data(pack(Op::Close, key, generation)));
    }

    /// Closes an accepted socket that never got a slot.
    fn close_orphan(&mut self, io: u32) {
        let entry = if self.fixed_files {
            opcode::Close::new(types::Fixed(io)).build()
        } else {
            opcode::Close::new(types::Fd(io as i32)).build()
        };
        self.push(entry.user_data(pack(Op::Close, NO_KEY, 0)));
    }

    fn try_release(&mut self, key: u32) {
        let Some(conn) = self.core.conn_mut(key) else { return };
        let f = conn.io_flags;
        if f & IO_CLOSE_DONE != 0 && f & (IO_RECV_ARMED | IO_SEND_IN_FLIGHT) == 0 {
            self.core.release(key);
        }
    }

    fn drain_completions(&mut self) {
        self.cqes.clear();
        // Completions stashed while submitting came first: handle them first.
        self.cqes.append(&mut self.stashed);
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in cq.by_ref().take(limits::COMPLETIONS_PER_TURN_MAX) {
            self.cqes.push((cqe.user_data(), cqe.result(), cqe.flags()));
        }
    }

    fn handle_completions(&mut self) {
        let cqes = std::mem::take(&mut self.cqes);
        for &(ud, res, flags) in &cqes {
            let Some((op, key, gen24)) = unpack(ud) else { continue };
            match op {
                Op::Accept => self.on_accept(res, flags),
                Op::Wake => self.on_wake(),
                Op::Recv => self.on_recv(key, gen24, res, flags),
                Op::Send => self.on_send(key, gen24, res),
                Op::Close => {
                    if key != NO_KEY && self.core.conn(key, gen24).is_some() {
                        if let Some(c) = self.core.conn_mut(key) {
                            c.io_flags |= IO_CLOSE_DONE;
                        }
                        self.try_release(key);
                    }
                }
                Op::MsgRing => self.on_msg_ring(key, gen24, res),
                Op::Shutdown | Op::Cancel => {}
            }
        }
        self.cqes = cqes;
        self.bufs.publish();
    }

    fn on_accept(&mut self, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.accept_armed = false;
        }
        if res < 0 {
            if self
                .core
                .counters()
                .accept_errors
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
            {
                eprintln!(
                    "shard {}: accept failed: {}",
                    self.core.shard_id,
                    std::io::Error::from_raw_os_error(-res)
                );
            }
            bump(&self.core.counters().accept_errors, 1);
            self.accept_retry_at_ms = self.core.now_ms() + ACCEPT_RETRY_MS;
            return;
        }
        let io = res as u32;
        match self.core.accept(io) {
            Some((key, _)) => self.arm_recv(key),
            None => self.close_orphan(io),
        }
    }

    fn on_wake(&mut self) {
        self.wake_armed = false;
        self.mailbox.rearm();
        while let Some(command) = self.mailbox.try_recv() {
            self.core.command(command);
        }
    }

    fn on_recv(&mut self, key: u32, gen24: u32, res: i32, flags: u32) {
        let live = self.core.conn(key, gen24).is_some();
        if live
            && !cqueue::more(flags)
            && let Some(c) = self.core.conn_mut(key)
        {
            c.io_flags &= !IO_RECV_ARMED;
        }
        let len = res.max(0) as usize;
        if let Some(bid) = cqueue::buffer_select(flags) {
            if live && len > 0 {
                let data = self.bufs.filled(bid, len);
                self.core.receive(key, data);
            }
            self.bufs.consumed(bid, len, cqueue::buffer_more(flags));
        }
        if live {
            match res {
                1.. => {
                    if !cqueue::more(flags) {
                        self.arm_recv(key);
                    }
                }
                0 => self.core.peer_closed(key, CloseReason::PeerClosed),
                _ if -res == libc::ENOBUFS => {
                    bump(&self.core.counters().recv_buffer_exhausted, 1);
                    self.arm_recv(key);
                }
                _ if -res == libc::ECANCELED => {}
                _ => self.core.peer_closed(key, CloseReason::IoError),
            }
            self.try_release(key);
        }
    }

    fn on_send(&mut self, key: u32, gen24: u32, res: i32) {
        if self.core.conn(key, gen24).is_none() {
            return;
        }
        if res >= 0 {
            if self.core.send_done(key, res as usize) {
                self.start_send(key);
            }
        } else {
            self.core.send_stopped(key);
            self.core.peer_closed(key, CloseReason::IoError);
        }
        if self.core.close_ready(key) {
            self.start_close(key);
        }
        self.try_release(key);
    }

    /// The socket of a departing connection reached the other ring (res =
    /// its fixed-file index there), or could not (it comes home).
    fn on_msg_ring(&mut self, key: u32, gen24: u32, res: i32) {
        if res >= 0 {
            if let Some(old_io) = self.core.moving_passed(key, gen24, res as u32) {
                // The other ring holds the file now; drop this table's reference.
                self.close_orphan(old_io);
            }
        } else {
            if self
                .core
                .counters()
                .move_failures
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
            {
                eprintln!(
                    "shard {}: passing a connection to another ring failed: {}",
                    self.core.shard_id,
                    std::io::Error::from_raw_os_error(-res)
                );
            }
            self.core.move_failed(key, gen24);
        }
    }

    /// Takes up connections that moved here, and advances those leaving.
    fn advance_moves(&mut self) {
        for (key, fd) in self.core.take_arrivals() {
            if let Some(fd) = fd
                && let Some(c) = self.core.conn_mut(key)
            {
                c.io = fd.into_raw_fd() as u32;
            }
            self.arm_recv(key);
        }
        let moves = self.core.take_moves();
        let mut left = Vec::with_capacity(moves.len());
        for m in moves {
            match self.core.move_step(&m) {
                MoveStep::Gone => {}
                MoveStep::CancelRecv => {
                    let recv = pack(Op::Recv, m.key, m.generation);
                    self.push(
                        opcode::AsyncCancel::new(recv)
                            .build()
                            .user_data(pack(Op::Cancel, m.key, m.generation)),
                    );
                    left.push(m);
                }
                MoveStep::Wait => left.push(m),
                MoveStep::Ready => self.hand_off(m),
            }
        }
        self.core.put_moves(left);
        self.core.post_outbox();
    }

    /// Passes a quiet connection's socket to shard `m.to`: the direct
    /// descriptor by MSG_RING (its state follows once the kernel has placed
    /// it), or the plain fd inside the state.
    fn hand_off(&mut self, m: MoveOut) {
        let ring_fd = self
            .core
            .shared
            .shards()
            .get(m.to as usize)
            .map_or(-1, |h| h.ring_fd.load(std::sync::atomic::Ordering::Acquire));
        let Some(io) = self.core.conn(m.key, m.generation).map(|c| c.io) else {
            return;
        };
        if ring_fd < 0 {
            self.core.abandon_move(&m);
            self.arm_recv(m.key);
            return;
        }
        if self.fixed_files {
            let moving = self.core.hand_off(&m, None);
            self.core.park_moving(moving);
            let entry = opcode::MsgRingSendFd::new(
                types::Fd(ring_fd),
                types::Fixed(io),
                types::DestinationSlot::auto_target(),
                0,
            )
            .opcode_flags(MSG_RING_CQE_SKIP)
            .build()
            .user_data(pack(Op::MsgRing, m.key, m.generation));
            self.push(entry);
        } else {
            // SAFETY: the slot owned this fd and nothing else does; no operation
            // is in flight on it (its recv was cancelled, no send outstanding),
            // and `hand_off` frees the slot, so this shard never closes it again.
            let fd = unsafe { OwnedFd::from_raw_fd(io as i32) };
            let moving = self.core.hand_off(&m, Some(fd));
            self.core.send_moving(m.to, moving);
        }
    }

    /// Sends what handlers queued and closes what is ready to close.
    fn flush(&mut self) {
        self.advance_moves();
        let mut keys = std::mem::take(&mut self.keys);
        self.core.take_dirty(&mut keys);
        for &key in &keys {
            self.start_send(key);
        }
        self.core.take_closing(&mut keys);
        for &key in &keys {
            if self.core.close_ready(key) {
                self.start_close(key);
            }
        }
        self.keys = keys;
    }

    /// Waits for at least one completion or the next timer, whichever is first.
    fn wait(&mut self) {
        let ms = if self.core.is_shutting_down() {
            10
        } else {
            self.core.sleep_ms()
        };
        let ts = types::Timespec::from(Duration::from_millis(ms));
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) => match e.raw_os_error() {
                // The timeout expired: timers are due.
                Some(libc::ETIME) => {}
                // A signal interrupted the wait: loop and check the stop flag.
                Some(libc::EINTR) => {}
                // The CQ is full (or requests are short of memory): the next drain empties it.
                Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
                // Anything else is a bug (see `submit_now`): counted and reported.
                _ => {
                    self.submit_errors += 1;
                    if self.submit_errors.is_power_of_two() {
                        eprintln!(
                            "shard {}: io_uring_enter failed ({} times): {e}",
                            self.core.shard_id, self.submit_errors
                        );
                    }
                }
            },
        }
    }

    /// Runs until Shutdown arrives and every device is disconnected (or the grace runs out).
    pub fn run(mut self, stop: &std::sync::atomic::AtomicBool) {
        self.arm_wake();
        loop {
            self.core.tick();
            if stop.load(std::sync::atomic::Ordering::Relaxed) && !self.core.is_shutting_down() {
                self.core.shutdown();
            }
            if self.core.is_shutting_down() {
                let deadline = *self
                    .stop_deadline_ms
                    .get_or_insert(self.core.now_ms() + SHUTDOWN_GRACE_MS);
                if self.core.connections() == 0 || self.core.now_ms() >= deadline {
                    break;
                }
            } else if !self.accept_armed && self.core.now_ms() >= self.accept_retry_at_ms {
                self.arm_accept();
            }
            if !self.wake_armed {
                self.arm_wake();
            }
            self.flush();
            self.wait();
            self.drain_completions();
            self.core.tick();
            self.handle_completions();
            self.core.run_timers();
            self.flush();
            bump(&self.core.counters().loop_turns, 1);
        }
    }
}
