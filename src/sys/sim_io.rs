//! `SimIo`: a seeded, deterministic, fault-injecting ring for the simulated
//! shard tests. A `SimNet` holds what the shards share (sockets, every
//! shard's descriptor table, the virtual clock, the PRNG, the faults); each
//! shard's `SimIo` holds its own submission queue, completions in flight and
//! provided buffers. The test driver plays the devices through `SimNet`.
//!
//! Faults: short sends, packets split at random points, a multishot recv or
//! accept ended early (with or without -ECANCELED), -ENOBUFS, EBUSY on
//! submit (submissions wait a turn), completions delayed and reordered
//! (completions of one operation stay in order, as the kernel posts them),
//! accept errors, failed MSG_RING, connection resets (driven by the device).
//!
//! Owns the simulated kernel state. Must never read the wall clock or any
//! unseeded randomness (a seed replays exactly), and never lose count of a
//! descriptor: every one handed out is counted, and every close.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::io::{CQE_BUFFER_SHIFT, CQE_F_BUFFER, CQE_F_MORE, Completion, Io, Listener};
pub use super::sim_faults::{SimFaults, SimRng};
use super::waker::Wake;

/// Submissions one `SimIo` queues before it flushes them itself (its SQ size).
pub const SIM_SQ_ENTRIES_MAX: usize = 256;
/// Recv chunks one multishot recv produces per simulated kernel step, at most.
const RECV_CHUNKS_PER_STEP_MAX: usize = 4;

/// Handle on a simulated socket (the device's end).
pub type SockId = usize;

struct Socket {
    /// The device's address (what accept reports as the peer).
    peer: IpAddr,
    to_server: VecDeque<u8>,
    to_device: Vec<u8>,
    /// The device sent FIN.
    device_fin: bool,
    /// The device reset the connection (RST).
    reset: bool,
    /// The server shut it down.
    server_shut: bool,
    /// Descriptor-table entries naming it, over every shard.
    refs: u32,
}

#[derive(Default)]
struct Table {
    entries: Vec<Option<SockId>>,
    free: Vec<u32>,
    opened: u64,
    closed: u64,
}

impl Table {
    fn install(&mut self, sock: SockId) -> u32 {
        self.opened += 1;
        match self.free.pop() {
            Some(i) => {
                self.entries[i as usize] = Some(sock);
                i
            }
            None => {
                self.entries.push(Some(sock));
                (self.entries.len() - 1) as u32
            }
        }
    }

    fn remove(&mut self, io: u32) -> Option<SockId> {
        let sock = self.entries.get_mut(io as usize)?.take()?;
        self.free.push(io);
        self.closed += 1;
        Some(sock)
    }

    fn get(&self, io: u32) -> Option<SockId> {
        self.entries.get(io as usize).copied().flatten()
    }
}

/// What the shards share: sockets, descriptor tables, clock, PRNG, faults.
pub struct SimNet {
    pub now_ms: u64,
    pub rng: SimRng,
    pub faults: SimFaults,
    sockets: Vec<Socket>,
    tables: Vec<Table>,
    backlogs: Vec<Option<VecDeque<SockId>>>,
    wake_flags: Vec<Arc<AtomicBool>>,
    /// Uses of a descriptor that names nothing (a bug in the loop): must stay 0.
    pub bad_descriptor_uses: u64,
    /// EBUSY answers given, over every shard.
    pub submit_busy: u64,
}

/// Wakes a simulated shard: its next kernel step completes the wake read.
pub struct SimWaker(Arc<AtomicBool>);

impl Wake for SimWaker {
    fn wake(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl SimNet {
    /// `listening[i]`: shard i has a listener.
    pub fn new(seed: u64, faults: SimFaults, start_ms: u64, listening: &[bool]) -> Rc<RefCell<SimNet>> {
        Rc::new(RefCell::new(SimNet {
            now_ms: start_ms,
            rng: SimRng::new(seed),
            faults,
            sockets: Vec::new(),
            tables: listening.iter().map(|_| Table::default()).collect(),
            backlogs: listening.iter().map(|&l| l.then(VecDeque::new)).collect(),
            wake_flags: listening.iter().map(|_| Arc::new(AtomicBool::new(false))).collect(),
            bad_descriptor_uses: 0,
            submit_busy: 0,
        }))
    }

    /// The waker for shard `shard`'s mailbox.
    pub fn waker(&self, shard: u16) -> Arc<dyn Wake> {
        Arc::new(SimWaker(self.wake_flags[shard as usize].clone()))
    }

    /// A device connects to shard `shard`'s listener, from an address of its
    /// own (10.0.0.0/8, numbered by socket).
    pub fn connect(&mut self, shard: u16) -> Option<SockId> {
        let peer = Ipv4Addr::from(0x0A00_0000 | (self.sockets.len() as u32 & 0x00FF_FFFF));
        self.connect_from(shard, peer.into())
    }

    /// A device connects to shard `shard`'s listener from address `peer`.
    pub fn connect_from(&mut self, shard: u16, peer: IpAddr) -> Option<SockId> {
        let backlog = self.backlogs.get_mut(shard as usize)?.as_mut()?;
        self.sockets.push(Socket {
            peer,
            to_server: VecDeque::new(),
            to_device: Vec::new(),
            device_fin: false,
            reset: false,
            server_shut: false,
            refs: 0,
        });
        let sock = self.sockets.len() - 1;
        backlog.push_back(sock);
        Some(sock)
    }

    pub fn device_write(&mut self, sock: SockId, bytes: &[u8]) {
        let s = &mut self.sockets[sock];
        if !s.reset && !s.device_fin && !s.server_shut {
            s.to_server.extend(bytes);
        }
    }

    /// Bytes the server sent since the last call.
    pub fn device_read(&mut self, sock: SockId) -> Vec<u8> {
        std::mem::take(&mut self.sockets[sock].to_device)
    }

    pub fn device_fin(&mut self, sock: SockId) {
        self.sockets[sock].device_fin = true;
    }

    pub fn device_reset(&mut self, sock: SockId) {
        let s = &mut self.sockets[sock];
        s.reset = true;
        s.to_server.clear();
    }

    /// The server shut the socket down, or holds no descriptor for it any more.
    pub fn server_closed(&self, sock: SockId) -> bool {
        let s = &self.sockets[sock];
        s.server_shut || (s.refs == 0 && !self.in_backlog(sock))
    }

    fn in_backlog(&self, sock: SockId) -> bool {
        self.backlogs.iter().flatten().any(|b| b.contains(&sock))
    }

    /// Descriptors open in shard `shard`'s table.
    pub fn descriptors_open(&self, shard: u16) -> u64 {
        let t = &self.tables[shard as usize];
        t.opened - t.closed
    }

    /// (handed out, closed) over every shard.
    pub fn descriptor_totals(&self) -> (u64, u64) {
        self.tables
            .iter()
            .fold((0, 0), |(o, c), t| (o + t.opened, c + t.closed))
    }

    /// Whether the fault `pick` selects strikes this time.
    fn fault(&mut self, pick: impl Fn(&SimFaults) -> u32) -> bool {
        let permille = pick(&self.faults);
        self.rng.chance(permille)
    }

    fn delay_ms(&mut self) -> u64 {
        let max = self.faults.delay_ms_max;
        if max == 0 || self.rng.chance(500) {
            0
        } else {
            self.rng.below(max + 1)
        }
    }
}

/// A completion held back: (ready at ms, sequence, user_data, result, flags),
/// smallest first.
type Delayed = Reverse<(u64, u64, u64, i32, u32)>;

enum Sub {
    Accept(u64),
    Wake(u64),
    Recv(u64, u32),
    Send(u64, u32, Vec<u8>),
    /// `send_static`: a completion only when not every byte went.
    SendStatic(u64, u32, &'static [u8]),
    Close(u64, u64, u32),
    CloseOrphan(u64, u32),
    Cancel(u64, u64),
    MsgRing(u16, u32, u64),
}

/// One shard's simulated ring.
pub struct SimIo {
    net: Rc<RefCell<SimNet>>,
    shard: u16,
    sq: Vec<Sub>,
    /// (ready at ms, sequence) -> completion: the delayed completion queue.
    pending: BinaryHeap<Delayed>,
    seq: u64,
    /// Latest ready time per operation, so one operation's completions stay in order.
    last_ready_ms: HashMap<u64, u64>,
    accept: Option<u64>,
    /// `send_static`s processed so far; the failed ones whose completion is
    /// not drained yet (user_data -> their number, counted from 1).
    static_issued: u64,
    static_unsettled: HashMap<u64, u64>,
    /// Peer addresses of accepted descriptors, until the loop takes them.
    peers: HashMap<u32, IpAddr>,
    wake: Option<u64>,
    recvs: Vec<(u64, u32)>,
    buffers: Vec<Box<[u8]>>,
    free_buffers: Vec<u16>,
    returned: Vec<u16>,
}

impl SimIo {
    pub fn new(net: Rc<RefCell<SimNet>>, shard: u16, recv_bufs: u16, recv_buf_bytes: usize) -> SimIo {
        SimIo {
            net,
            shard,
            sq: Vec::with_capacity(SIM_SQ_ENTRIES_MAX),
            pending: BinaryHeap::new(),
            seq: 0,
            last_ready_ms: HashMap::new(),
            accept: None,
            static_issued: 0,
            static_unsettled: HashMap::new(),
            peers: HashMap::new(),
            wake: None,
            recvs: Vec::new(),
            buffers: (0..recv_bufs)
                .map(|_| vec![0u8; recv_buf_bytes].into_boxed_slice())
                .collect(),
            free_buffers: (0..recv_bufs).rev().collect(),
            returned: Vec::new(),
        }
    }

    /// Completions submitted and not yet drained, plus submissions not yet processed.
    pub fn in_flight(&self) -> usize {
        self.pending.len() + self.sq.len() + self.recvs.len() + self.accept.is_some() as usize
    }

    /// Provided buffers not in the free list (held by a completion or the loop).
    pub fn buffers_out(&self) -> usize {
        self.buffers.len() - self.free_buffers.len() - self.returned.len()
    }

    fn complete(&mut self, net: &mut SimNet, user_data: u64, result: i32, flags: u32) {
        let at = net.now_ms + net.delay_ms();
        let at = at.max(self.last_ready_ms.get(&user_data).copied().unwrap_or(0));
        if flags & CQE_F_MORE != 0 {
            self.last_ready_ms.insert(user_data, at);
        } else {
            self.last_ready_ms.remove(&user_data);
        }
        self.seq += 1;
        self.pending.push(Reverse((at, self.seq, user_data, result, flags)));
    }

    fn push(&mut self, sub: Sub) {
        if self.sq.len() >= SIM_SQ_ENTRIES_MAX {
            // SQ full: the loop's submission flushes it (as `io_uring_enter` would).
            self.submit();
        }
        self.sq.push(sub);
    }

    fn submit(&mut self) {
        let net = self.net.clone();
        let mut net = net.borrow_mut();
        for sub in std::mem::take(&mut self.sq) {
            self.process(&mut net, sub);
        }
    }

    /// A send reaching the device's socket: the bytes taken (a short send,
    /// by fault, takes `short_min` or more), a negated errno, or None for a
    /// descriptor this table does not hold (counted as a bad use).
    fn device_send(&mut self, net: &mut SimNet, io: u32, bytes: &[u8], short_min: usize) -> Option<i32> {
        let Some(sock) = net.tables[self.shard as usize].get(io) else {
            net.bad_descriptor_uses += 1;
            return None;
        };
        let short = bytes.len() > 1 && net.fault(|f| f.short_send_permille);
        let n = if short {
            short_min + net.rng.below((bytes.len() - short_min) as u64) as usize
        } else {
            bytes.len()
        };
        let s = &mut net.sockets[sock];
        Some(if s.reset {
            -libc::ECONNRESET
        } else if s.server_shut {
            -libc::EPIPE
        } else if n == 0 {
            -libc::EAGAIN
        } else {
            s.to_device.extend_from_slice(&bytes[..n]);
            n as i32
        })
    }

    fn process(&mut self, net: &mut SimNet, sub: Sub) {
        let shard = self.shard as usize;
        match sub {
            Sub::Accept(ud) => self.accept = Some(ud),
            Sub::Wake(ud) => self.wake = Some(ud),
            Sub::Recv(ud, io) => match net.tables[shard].get(io) {
                Some(_) => self.recvs.push((ud, io)),
                None => {
                    net.bad_descriptor_uses += 1;
                    self.complete(net, ud, -libc::EBADF, 0);
                }
            },
            Sub::Send(ud, io, bytes) => {
                // A short send takes at least one byte.
                let result = self.device_send(net, io, &bytes, 1).unwrap_or(-libc::EBADF);
                self.complete(net, ud, result, 0);
            }
            Sub::SendStatic(ud, io, bytes) => {
                // A short one may take nothing: MSG_DONTWAIT's -EAGAIN.
                // Every one counts, whatever became of it (the loop counts its calls).
                self.static_issued += 1;
                let result = self.device_send(net, io, bytes, 0).unwrap_or(-libc::EBADF);
                if result != bytes.len() as i32 {
                    self.static_unsettled.insert(ud, self.static_issued);
                    self.complete(net, ud, result, 0);
                }
            }
            Sub::Close(shutdown_ud, close_ud, io) => {
                let Some(sock) = net.tables[shard].remove(io) else {
                    net.bad_descriptor_uses += 1;
                    return self.complete(net, close_ud, -libc::EBADF, 0);
                };
                net.sockets[sock].server_shut = true;
                net.sockets[sock].refs -= 1;
                // Shutdown ends the recv armed on it.
                let ended: Vec<u64> = self.recvs.iter().filter(|r| r.1 == io).map(|r| r.0).collect();
                self.recvs.retain(|r| r.1 != io);
                for ud in ended {
                    self.complete(net, ud, 0, 0);
                }
                self.complete(net, shutdown_ud, 0, 0);
                self.complete(net, close_ud, 0, 0);
            }
            Sub::CloseOrphan(ud, io) => match net.tables[shard].remove(io) {
                Some(sock) => {
                    net.sockets[sock].refs -= 1;
                    self.complete(net, ud, 0, 0);
                }
                None => {
                    net.bad_descriptor_uses += 1;
                    self.complete(net, ud, -libc::EBADF, 0);
                }
            },
            Sub::Cancel(target, ud) => match self.recvs.iter().position(|r| r.0 == target) {
                Some(i) => {
                    self.recvs.swap_remove(i);
                    self.complete(net, target, -libc::ECANCELED, 0);
                    self.complete(net, ud, 0, 0);
                }
                None => self.complete(net, ud, -libc::ENOENT, 0),
            },
            Sub::MsgRing(to, io, ud) => {
                let Some(sock) = net.tables[shard].get(io) else {
                    net.bad_descriptor_uses += 1;
                    return self.complete(net, ud, -libc::EBADF, 0);
                };
                if net.fault(|f| f.msg_ring_fail_permille) {
                    return self.complete(net, ud, -libc::ENFILE, 0);
                }
                let index = net.tables[to as usize].install(sock);
                net.sockets[sock].refs += 1;
                // CQE_SKIP: nothing posted in the destination ring.
                self.complete(net, ud, index as i32, 0);
            }
        }
    }

    /// The simulated kernel's work for one turn: accepts, wake, received bytes.
    fn step(&mut self) {
        let net = self.net.clone();
        let mut net = net.borrow_mut();
        let shard = self.shard as usize;
        if let Some(ud) = self.accept {
            while let Some(sock) = net.backlogs[shard].as_mut().and_then(|b| b.pop_front()) {
                if net.fault(|f| f.accept_error_permille) {
                    // The device stays in the backlog; the multishot ends.
                    if let Some(b) = net.backlogs[shard].as_mut() {
                        b.push_front(sock);
                    }
                    self.accept = None;
                    self.complete(&mut net, ud, -libc::EMFILE, 0);
                    break;
                }
                let index = net.tables[shard].install(sock);
                net.sockets[sock].refs += 1;
                self.peers.insert(index, net.sockets[sock].peer);
                let end = net.fault(|f| f.multishot_end_permille);
                self.complete(&mut net, ud, index as i32, if end { 0 } else { CQE_F_MORE });
                if end {
                    self.accept = None;
                    break;
                }
            }
        }
        if let Some(ud) = self.wake
            && net.wake_flags[shard].swap(false, Ordering::AcqRel)
        {
            self.wake = None;
            self.complete(&mut net, ud, 8, 0);
        }
        let recvs = std::mem::take(&mut self.recvs);
        for (ud, io) in recvs {
            if self.recv_step(&mut net, ud, io) {
                self.recvs.push((ud, io));
            }
        }
    }

    /// Produces one recv's completions; false when the multishot ended.
    fn recv_step(&mut self, net: &mut SimNet, ud: u64, io: u32) -> bool {
        let Some(sock) = net.tables[self.shard as usize].get(io) else {
            net.bad_descriptor_uses += 1;
            self.complete(net, ud, -libc::EBADF, 0);
            return false;
        };
        if net.fault(|f| f.recv_cancel_permille) {
            self.complete(net, ud, -libc::ECANCELED, 0);
            return false;
        }
        for _ in 0..RECV_CHUNKS_PER_STEP_MAX {
            let s = &net.sockets[sock];
            if s.reset {
                self.complete(net, ud, -libc::ECONNRESET, 0);
                return false;
            }
            if s.to_server.is_empty() {
                if s.device_fin {
                    self.complete(net, ud, 0, 0);
                    return false;
                }
                return true;
            }
            let Some(bid) = self.free_buffers.pop() else {
                self.complete(net, ud, -libc::ENOBUFS, 0);
                return false;
            };
            let buf = &mut self.buffers[bid as usize];
            let avail = net.sockets[sock].to_server.len().min(buf.len());
            let n = if avail > 1 && net.fault(|f| f.split_recv_permille) {
                1 + net.rng.below(avail as u64 - 1) as usize
            } else {
                avail
            };
            for (dst, src) in buf.iter_mut().zip(net.sockets[sock].to_server.drain(..n)) {
                *dst = src;
            }
            let end = net.fault(|f| f.multishot_end_permille);
            let flags = CQE_F_BUFFER | ((bid as u32) << CQE_BUFFER_SHIFT) | if end { 0 } else { CQE_F_MORE };
            self.complete(net, ud, n as i32, flags);
            if end {
                return false;
            }
        }
        true
    }
}

impl Io for SimIo {
    fn now_ms(&self) -> u64 {
        self.net.borrow().now_ms
    }

    /// Simulated devices speak plain MQTT only: no shard has a TLS listener.
    fn has_listener(&self, l: Listener) -> bool {
        l == Listener::Mqtt && self.net.borrow().backlogs[self.shard as usize].is_some()
    }

    fn accept(&mut self, user_data: u64, l: Listener) {
        if l == Listener::Mqtt {
            self.push(Sub::Accept(user_data));
        }
    }

    fn accepted_peer(&mut self, io: u32) -> Option<IpAddr> {
        self.peers.remove(&io)
    }

    fn wake(&mut self, user_data: u64) {
        self.push(Sub::Wake(user_data));
    }

    fn recv(&mut self, user_data: u64, io: u32) {
        self.push(Sub::Recv(user_data, io));
    }

    unsafe fn send(&mut self, user_data: u64, io: u32, bytes: &[u8]) {
        // Copied now: the simulated kernel never reads the caller's buffer later.
        self.push(Sub::Send(user_data, io, bytes.to_vec()));
    }

    fn sends_static(&self) -> bool {
        true
    }

    fn static_sends_settled(&mut self) -> u64 {
        // Issued in SQ order; settled up to the first whose failure is not drained.
        match self.static_unsettled.values().min() {
            Some(&first) => first - 1,
            None => self.static_issued,
        }
    }

    fn send_static(&mut self, user_data: u64, io: u32, bytes: &'static [u8]) {
        self.push(Sub::SendStatic(user_data, io, bytes));
    }

    fn close(&mut self, shutdown_user_data: u64, close_user_data: u64, io: u32) {
        self.push(Sub::Close(shutdown_user_data, close_user_data, io));
    }

    fn close_orphan(&mut self, user_data: u64, io: u32) {
        self.push(Sub::CloseOrphan(user_data, io));
    }

    fn cancel(&mut self, target: u64, user_data: u64) {
        self.push(Sub::Cancel(target, user_data));
    }

    fn passes_descriptors(&self) -> bool {
        true
    }

    fn msg_ring(&mut self, to: u16, io: u32, user_data: u64) -> bool {
        if to as usize >= self.net.borrow().tables.len() {
            return false;
        }
        self.push(Sub::MsgRing(to, io, user_data));
        true
    }

    fn detach(&mut self, _io: u32) -> Option<OwnedFd> {
        // Descriptors are passed by msg_ring here; no plain fd exists.
        None
    }

    fn attach(&mut self, _fd: OwnedFd) -> u32 {
        unreachable!("SimIo passes descriptors: no plain fd ever arrives")
    }

    fn drain(&mut self, into: &mut Vec<Completion>, max: usize) {
        let now_ms = self.net.borrow().now_ms;
        let mut taken = 0;
        while taken < max
            && let Some(Reverse((at, _, user_data, result, flags))) = self.pending.peek().copied()
            && at <= now_ms
        {
            self.pending.pop();
            self.static_unsettled.remove(&user_data);
            into.push(Completion {
                user_data,
                result,
                flags,
            });
            taken += 1;
        }
    }

    fn received(&self, buffer: u16, len: usize) -> &[u8] {
        &self.buffers[buffer as usize][..len]
    }

    fn consumed(&mut self, buffer: u16, _len: usize, more: bool) {
        if !more {
            self.returned.push(buffer);
        }
    }

    fn publish_buffers(&mut self) {
        self.free_buffers.append(&mut self.returned);
    }

    fn wait(&mut self, _timeout_ms: u64, _keepalives_only: bool) {
        // The driver moves the virtual clock; a wait is one kernel step.
        let busy = {
            let mut net = self.net.borrow_mut();
            let busy = net.fault(|f| f.submit_busy_permille);
            net.submit_busy += busy as u64;
            busy
        };
        // EBUSY: the CQ is full; the kernel takes no submissions until it is drained.
        if !busy {
            self.submit();
        }
        self.step();
    }
}
