//! `UringIo`: the kernel implementation of `sys::io::Io` on one shard's
//! io_uring: accept into direct descriptors (the loop's multishot accept is
//! served by a few single-shot accepts kept in flight, `AcceptSlots`, since a
//! multishot accept cannot return peer addresses and a direct descriptor has
//! no fd for getpeername), multishot recv from a provided buffer ring, sends,
//! linked shutdown + close, cancellation, MSG_RING passing a direct descriptor
//! to another shard's ring, an eventfd read for mailbox wake-ups, timed waits.
//!
//! Owns the ring, its provided buffers, the wake buffer and the accept
//! address slots. Must never let the kernel outlive a buffer it was given
//! (field order is drop order: the ring goes first), and never recurse into
//! completion handling from a submission (completions taken off a full CQ
//! are stashed for the next drain).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, squeue, types};

use super::bufring::BufRing;
use super::io::{CQE_F_MORE, Completion, Io, Listener};
use super::uring::ShardRing;
use super::waker::EventFdWaker;

/// Buffer group id of the shard's provided buffer ring.
const BUFFER_GROUP: u16 = 1;
/// IORING_MSG_RING_CQE_SKIP: post no completion in the destination ring (the
/// connection's state follows by mailbox, carrying the fixed-file index).
const MSG_RING_CQE_SKIP: u32 = 1;

/// Another shard's ring fd (-1 while it has none), for MSG_RING.
pub type RingFdOf = Box<dyn Fn(u16) -> i32 + Send>;

/// The top byte of the user_data of accepts `AcceptSlots` submits itself (no
/// `sys::user_data::Op` uses it; these completions never reach the loop as
/// such: they are translated to the loop's accept user_data).
const OWN_ACCEPT_TAG: u64 = 0xA5 << 56;
const OWN_ACCEPT_TAG_MASK: u64 = 0xFF << 56;
/// Single-shot accepts kept in flight per listener, each with its own
/// peer-address slot (the slot index sits in the low byte of its user_data).
const ACCEPT_SLOTS: usize = 16;
/// A batching wait (`with_batch_wait_us`) returns early once this many
/// completions are there (a quarter of what one turn handles: the shard
/// asserts it against `limits::COMPLETIONS_PER_TURN_MAX`).
pub const BATCH_WANT_COMPLETIONS: usize = 1024;
/// A wait batches only if the shard answered at least this many keep-alives
/// per batch window over the last second: a shard that sees fewer (many
/// shards, a light load) would pay the window's timer and gather nothing.
const BATCH_KEEPALIVES_PER_WINDOW_MIN: u64 = 2;
/// Accepted descriptors whose peer address waits for the loop to take it, at
/// most (the loop takes each in the turn it drains the accept; beyond this
/// the waiting ones are stale and dropped).
const ACCEPTED_PEERS_WAITING_MAX: usize = 8_192;
/// Room for one turn's accepts, allocated at start.
const ACCEPTED_PEERS_PREALLOCATED: usize = 1_024;

const _: () = assert!(ACCEPT_SLOTS > 0 && ACCEPT_SLOTS <= 32);
const _: () = assert!(ACCEPTED_PEERS_PREALLOCATED <= ACCEPTED_PEERS_WAITING_MAX);

/// The loop's multishot accept on one listener, served by `ACCEPT_SLOTS`
/// single-shot accepts, each writing its peer's address into a slot of its
/// own; a completed slot is re-armed at the end of the next drain. The loop
/// sees the multishot contract: one completion per connection under its own
/// user_data, `CQE_F_MORE` while any slot is armed or about to be. A failed
/// accept retires its slot; the last slot to retire ends the "multishot"
/// (no MORE), and the loop's `accept` re-arms every slot.
struct AcceptSlots {
    listener_fd: RawFd,
    /// Which listener's slots these are, in their accepts' user_data.
    set: u8,
    /// The loop's accept user_data; None until it arms.
    user_data: Option<u64>,
    // SAFETY (for the pointers below): both boxes live as long as the UringIo
    // field that holds this, which is dropped after the ring; a slot is given
    // to the kernel only while `armed[i]` is false, and read only after its
    // completion was taken off the CQ (`armed[i]` false again).
    addrs: Box<[libc::sockaddr_storage; ACCEPT_SLOTS]>,
    addr_lens: Box<[libc::socklen_t; ACCEPT_SLOTS]>,
    /// Submitted and not completed.
    armed: [bool; ACCEPT_SLOTS],
    /// Bit i: slot i completed while the loop still wants connections, to
    /// submit again (a mask, so "none wanted" costs one test per drain).
    wanted: u32,
    /// Peers of accepted descriptors until the loop takes them
    /// (`ACCEPTED_PEERS_WAITING_MAX` at most).
    peers: HashMap<u32, IpAddr>,
}

impl AcceptSlots {
    fn new(listener_fd: RawFd, set: u8) -> AcceptSlots {
        AcceptSlots {
            listener_fd,
            set,
            user_data: None,
            // SAFETY: sockaddr_storage is plain bytes; all zeros is a valid value.
            addrs: Box::new(unsafe { std::mem::zeroed() }),
            addr_lens: Box::new([0; ACCEPT_SLOTS]),
            armed: [false; ACCEPT_SLOTS],
            wanted: 0,
            peers: HashMap::with_capacity(ACCEPTED_PEERS_PREALLOCATED),
        }
    }

    /// The loop (re-)arms its accept: every idle slot is wanted.
    fn arm(&mut self, user_data: u64) {
        self.user_data = Some(user_data);
        for i in 0..ACCEPT_SLOTS {
            if !self.armed[i] {
                self.wanted |= 1 << i;
            }
        }
    }

    fn own_user_data(&self, slot: usize) -> u64 {
        OWN_ACCEPT_TAG | ((self.set as u64) << 8) | slot as u64
    }

    /// Takes the next wanted slot: the accept to submit for it (the slot
    /// counts as armed from here).
    fn next_entry(&mut self, fixed_files: bool) -> Option<squeue::Entry> {
        if self.wanted == 0 {
            return None;
        }
        let i = self.wanted.trailing_zeros() as usize;
        self.wanted &= !(1 << i);
        self.armed[i] = true;
        self.addr_lens[i] = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let addr = std::ptr::from_mut(&mut self.addrs[i]).cast::<libc::sockaddr>();
        let addr_len = std::ptr::from_mut(&mut self.addr_lens[i]);
        let accept = opcode::Accept::new(types::Fd(self.listener_fd), addr, addr_len);
        let entry = if fixed_files {
            // A direct descriptor has no process fd, so no CLOEXEC (the kernel refuses it).
            accept.file_index(Some(types::DestinationSlot::auto_target())).build()
        } else {
            accept.flags(libc::SOCK_CLOEXEC).build()
        };
        Some(entry.user_data(self.own_user_data(i)))
    }

    /// Translates one of this set's completions into the loop's; None if
    /// `c` is not one of them.
    fn translate(&mut self, c: Completion) -> Option<Completion> {
        if c.user_data & OWN_ACCEPT_TAG_MASK != OWN_ACCEPT_TAG || (c.user_data >> 8) as u8 != self.set {
            return None;
        }
        let i = (c.user_data & 0xFF) as usize;
        if i >= ACCEPT_SLOTS || !self.armed[i] {
            return None;
        }
        self.armed[i] = false;
        if c.result >= 0 {
            let io = c.result as u32;
            match peer_of(&self.addrs[i], self.addr_lens[i]) {
                Some(peer) => {
                    if self.peers.len() >= ACCEPTED_PEERS_WAITING_MAX {
                        // Never taken (a caller that does not ask): stale, all of them.
                        self.peers.clear();
                    }
                    self.peers.insert(io, peer);
                }
                None => {
                    self.peers.remove(&io);
                }
            }
            if self.user_data.is_some() {
                self.wanted |= 1 << i;
            } else {
                self.wanted &= !(1 << i);
            }
        }
        let live = self.wanted != 0 || self.armed.iter().any(|&a| a);
        Some(Completion {
            user_data: self.user_data?,
            result: c.result,
            flags: if live { CQE_F_MORE } else { 0 },
        })
    }
}

/// The IP address in a sockaddr the kernel wrote (`len` bytes of it).
fn peer_of(addr: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<IpAddr> {
    let len = len as usize;
    match addr.ss_family as i32 {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: sockaddr_storage is sized and aligned for every sockaddr
            // type, and the kernel wrote an AF_INET address of this length.
            let a = unsafe { &*std::ptr::from_ref(addr).cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for AF_INET6.
            let a = unsafe { &*std::ptr::from_ref(addr).cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

pub struct UringIo {
    // Field order is drop order: the ring goes first, so the kernel is done
    // with the buffer ring and the wake buffer before they are freed.
    ring: IoUring,
    bufs: BufRing,
    wake_buf: Box<[u8; 8]>,
    /// Each listener's accepts and their address slots, by `Listener::index`
    /// (None without that listener).
    accepts: [Option<AcceptSlots>; 2],
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
    /// CQEs taken off the ring so far (drained or stashed).
    cqes_consumed: u64,
    /// `send_static` calls so far, and how many of them have settled.
    static_sent: u64,
    static_settled: u64,
    /// (static sends issued, CQEs to consume): when those sends settle.
    static_mark: Option<(u64, u64)>,
    /// See `with_batch_wait_us`.
    batch_wait_us: u32,
    /// The keep-alive rate the batching decision uses: when the current
    /// measurement began (ms) with `static_sent` then, and the last rate.
    rate_since_ms: u64,
    rate_sent_at_start: u64,
    static_per_s: u64,
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
            accepts: [
                listener
                    .as_ref()
                    .map(|l| AcceptSlots::new(l.as_raw_fd(), Listener::Mqtt.index() as u8)),
                None,
            ],
            listener,
            tls_listener: None,
            fixed_files: shard_ring.fixed_files > 0,
            ring_fd_of,
            epoch,
            stashed: Vec::new(),
            submit_errors: 0,
            cqes_consumed: 0,
            static_sent: 0,
            static_settled: 0,
            static_mark: None,
            batch_wait_us: 0,
            rate_since_ms: 0,
            rate_sent_at_start: 0,
            static_per_s: 0,
        })
    }

    /// Batches completions after a turn that only answered keep-alives: a
    /// wait that has one keeps waiting up to `batch_wait_us` for more (0, or a
    /// kernel without min_wait: off). Any other work in a turn (a CONNECT, a
    /// push, an accept, a close) makes the next wait return at its first
    /// completion, so request/response traffic is held at most once, by at
    /// most the window, after a keep-alive-only turn. A shard answering fewer
    /// than `BATCH_KEEPALIVES_PER_WINDOW_MIN` keep-alives per window (over the
    /// last second) does not batch at all: it would gather nothing.
    pub fn with_batch_wait_us(mut self, batch_wait_us: u32) -> UringIo {
        self.batch_wait_us = if self.ring.params().is_feature_min_timeout() {
            batch_wait_us
        } else {
            0
        };
        self
    }

    /// Adds the MQTT-over-TLS listener (accepts on it are `Listener::MqttTls`).
    pub fn with_tls_listener(mut self, tls_listener: Option<TcpListener>) -> UringIo {
        let set = Listener::MqttTls.index();
        self.accepts[set] = tls_listener
            .as_ref()
            .map(|l| AcceptSlots::new(l.as_raw_fd(), set as u8));
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
        self.cqes_consumed += cq.len() as u64;
        let accepts = &mut self.accepts;
        self.stashed.extend(cq.filter_map(|cqe| {
            translate(
                accepts,
                Completion {
                    user_data: cqe.user_data(),
                    result: cqe.result(),
                    flags: cqe.flags(),
                },
            )
        }));
    }

    /// After an `io_uring_enter`: if the kernel took every SQE, each static
    /// send so far has been issued and any completion it posted sits in the
    /// CQ, so they settle once the loop has drained up to its current tail.
    /// Not while the CQ overflows (posted completions may not be in it yet),
    /// nor while an earlier mark waits (it is reached first).
    fn mark_static_sends(&mut self) {
        if self.static_mark.is_some() || self.static_sent == self.static_settled {
            return;
        }
        let sq = self.ring.submission();
        if !sq.is_empty() || sq.cq_overflow() {
            return;
        }
        drop(sq);
        let mut cq = self.ring.completion();
        cq.sync();
        self.static_mark = Some((self.static_sent, self.cqes_consumed + cq.len() as u64));
    }

    /// Submits an accept for every wanted slot (after a drain, or when the
    /// loop arms its accept).
    fn arm_accepts(&mut self) {
        // Bounded: each pass arms one slot, and a slot re-wanted by a
        // completion stashed meanwhile is armed at most once more.
        for _ in 0..2 * ACCEPT_SLOTS {
            let fixed_files = self.fixed_files;
            let Some(entry) = self
                .accepts
                .iter_mut()
                .flatten()
                .find_map(|a| a.next_entry(fixed_files))
            else {
                return;
            };
            // SAFETY: the listener is a field of self, dropped after the ring;
            // the address slot this entry names is valid until its completion
            // (see `AcceptSlots`).
            unsafe { self.push(entry) };
        }
    }
}

/// A completion as the loop sees it: an own accept's translated, dropped if
/// it is not one the loop asked for.
fn translate(accepts: &mut [Option<AcceptSlots>], c: Completion) -> Option<Completion> {
    if c.user_data & OWN_ACCEPT_TAG_MASK != OWN_ACCEPT_TAG {
        return Some(c);
    }
    accepts.iter_mut().flatten().find_map(|a| a.translate(c))
}

impl UringIo {
    /// Whether the keep-alive rate fills a batch window, measured over spans of
    /// at least a second (from one keep-alive-only wait to a later one).
    fn keepalives_dense(&mut self) -> bool {
        let now_ms = self.now_ms();
        let span_ms = now_ms.saturating_sub(self.rate_since_ms);
        if span_ms >= 1_000 {
            self.static_per_s = (self.static_sent - self.rate_sent_at_start) * 1_000 / span_ms;
            self.rate_since_ms = now_ms;
            self.rate_sent_at_start = self.static_sent;
        }
        self.static_per_s * self.batch_wait_us as u64 >= BATCH_KEEPALIVES_PER_WINDOW_MIN * 1_000_000
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
        let Some(accepts) = self.accepts[l.index()].as_mut() else {
            return;
        };
        accepts.arm(user_data);
        self.arm_accepts();
    }

    fn accepted_peer(&mut self, io: u32) -> Option<IpAddr> {
        // A descriptor is unique until closed: at most one listener knows it.
        self.accepts.iter_mut().flatten().find_map(|a| a.peers.remove(&io))
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

    fn sends_static(&self) -> bool {
        true
    }

    fn static_sends_settled(&mut self) -> u64 {
        if let Some((sends, cq_mark)) = self.static_mark
            && self.cqes_consumed >= cq_mark
        {
            self.static_settled = sends;
            self.static_mark = None;
        }
        self.static_settled
    }

    /// Issued inline by the next `io_uring_enter` (never parked on a poll:
    /// MSG_DONTWAIT makes a full socket answer -EAGAIN at once), so it is
    /// done before `wait` returns and cannot overlap a later send. MSG_WAITALL
    /// makes a short send a failure, whose completion reports the bytes
    /// taken; IOSQE_CQE_SKIP_SUCCESS drops the completion of a whole one, so
    /// an answered keep-alive costs no completion and no loop turn.
    fn send_static(&mut self, user_data: u64, io: u32, bytes: &'static [u8]) {
        let (ptr, len) = (bytes.as_ptr(), bytes.len() as u32);
        let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT | libc::MSG_WAITALL;
        let entry = if self.fixed_files {
            opcode::Send::new(types::Fixed(io), ptr, len).flags(flags).build()
        } else {
            opcode::Send::new(types::Fd(io as i32), ptr, len).flags(flags).build()
        };
        let entry = entry.flags(squeue::Flags::SKIP_SUCCESS).user_data(user_data);
        // SAFETY: `bytes` is 'static; the descriptor belongs to a live slot,
        // and its Close is queued after this send (SQ order), never before.
        unsafe { self.push(entry) };
        self.static_sent += 1;
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
            self.cqes_consumed += 1;
            let c = Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            };
            into.extend(translate(&mut self.accepts, c));
        }
        drop(cq);
        // The slots whose accepts completed go back to the kernel.
        self.arm_accepts();
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

    /// Submits and waits for at least one completion or `timeout_ms`; after a
    /// keep-alive-only turn, batched (`with_batch_wait_us`).
    fn wait(&mut self, timeout_ms: u64, keepalives_only: bool) {
        let ts = types::Timespec::from(Duration::from_millis(timeout_ms));
        let args = types::SubmitArgs::new().timespec(&ts);
        // With min_wait the kernel returns after batch_wait_us once any
        // completion is there (or when `want` arrived, or at the timeout).
        let dense = keepalives_only && self.batch_wait_us > 0 && self.keepalives_dense();
        let (want, args) = match self.batch_wait_us {
            // A timer due sooner ends the window early: it must run then anyway.
            us if dense => {
                let us = (us as u64).min(timeout_ms.saturating_mul(1000)) as u32;
                (BATCH_WANT_COMPLETIONS, args.min_wait_usec(us))
            }
            _ => (1, args),
        };
        let entered = self.ring.submitter().submit_with_args(want, &args);
        self.mark_static_sends();
        match entered {
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

    const LOOP_ACCEPT: u64 = 0x0100_0000_FFFF_FFFF;

    fn own(slots: &AcceptSlots, slot: usize, result: i32) -> Completion {
        Completion {
            user_data: slots.own_user_data(slot),
            result,
            flags: 0,
        }
    }

    /// Writes an IPv4 peer into slot `i` as the kernel would.
    fn write_v4(slots: &mut AcceptSlots, i: usize, ip: Ipv4Addr) {
        // SAFETY: sockaddr_storage is sized and aligned for a sockaddr_in.
        let a = unsafe { &mut *std::ptr::from_mut(&mut slots.addrs[i]).cast::<libc::sockaddr_in>() };
        a.sin_family = libc::AF_INET as libc::sa_family_t;
        a.sin_addr.s_addr = u32::from(ip).to_be();
        slots.addr_lens[i] = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    }

    #[test]
    fn accept_slots_keep_the_multishot_contract() {
        let mut slots = AcceptSlots::new(3, 0);
        let mut accepts = [Some(AcceptSlots::new(3, 0)), None];
        // Nothing armed before the loop asks.
        assert!(slots.next_entry(true).is_none());
        slots.arm(LOOP_ACCEPT);
        let armed = std::iter::from_fn(|| slots.next_entry(true)).count();
        assert_eq!(armed, ACCEPT_SLOTS);
        // A connection on slot 3: the loop's user_data, MORE, the peer kept once.
        write_v4(&mut slots, 3, Ipv4Addr::new(127, 0, 0, 2));
        let c = slots.translate(own(&slots, 3, 41)).expect("one of ours");
        assert_eq!((c.user_data, c.result, c.more()), (LOOP_ACCEPT, 41, true));
        assert_eq!(slots.peers.remove(&41), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
        assert_eq!(slots.peers.remove(&41), None);
        // Slot 3 goes back to the kernel, the others are still there.
        assert!(slots.next_entry(true).is_some());
        assert!(slots.next_entry(true).is_none());
        // Every slot fails: each retires; only the last ends the multishot.
        let mores: Vec<bool> = (0..ACCEPT_SLOTS)
            .map(|i| slots.translate(own(&slots, i, -libc::ENFILE)).expect("ours").more())
            .collect();
        assert!(mores[..ACCEPT_SLOTS - 1].iter().all(|&m| m));
        assert!(!mores[ACCEPT_SLOTS - 1]);
        assert!(slots.next_entry(true).is_none());
        // A completion for a slot not armed, or of another listener, is not this one's.
        assert!(slots.translate(own(&slots, 0, 7)).is_none());
        assert!(AcceptSlots::new(3, 1).translate(own(&slots, 0, 7)).is_none());
        // Everything else passes through untouched.
        let other = Completion {
            user_data: 0x0200_0001_0000_0005,
            result: 12,
            flags: CQE_F_MORE,
        };
        assert_eq!(translate(&mut accepts, other), Some(other));
        // Re-armed by the loop: every slot again.
        slots.arm(LOOP_ACCEPT);
        assert_eq!(std::iter::from_fn(|| slots.next_entry(false)).count(), ACCEPT_SLOTS);
    }

    #[test]
    fn peer_addresses_read_as_the_kernel_writes_them() {
        let mut slots = AcceptSlots::new(3, 0);
        write_v4(&mut slots, 0, Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(
            peer_of(&slots.addrs[0], slots.addr_lens[0]),
            Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)))
        );
        // Too short for its family: no address.
        assert_eq!(peer_of(&slots.addrs[0], 4), None);
        let v6: Ipv6Addr = "2001:db8::42".parse().unwrap();
        // SAFETY: sockaddr_storage is sized and aligned for a sockaddr_in6.
        let a = unsafe { &mut *std::ptr::from_mut(&mut slots.addrs[1]).cast::<libc::sockaddr_in6>() };
        a.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        a.sin6_addr.s6_addr = v6.octets();
        let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        assert_eq!(peer_of(&slots.addrs[1], len), Some(IpAddr::V6(v6)));
        // AF_UNIX or nothing written: no address.
        assert_eq!(peer_of(&slots.addrs[2], 128), None);
    }

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
