//! The keep-alive floor: a minimal io_uring MQTT responder, the least work any server must do
//! to answer keep-alives, and nothing else. It is the yardstick the gateway's keep-alive CPU is
//! measured against (`benches/side_by_side.py --runs keepalive`).
//!
//!     keepalive_floor --listen 127.0.0.1:PORT [--fixed-files N] [--cqe-skip true|false]
//!     cargo bench --bench keepalive_floor      # a short self-check instead (no --listen)
//!
//! One thread, one ring (SINGLE_ISSUER + DEFER_TASKRUN, else COOP_TASKRUN), a sparse
//! fixed-file table, multishot accept into direct descriptors (slot picked by the kernel),
//! multishot recv on a provided buffer ring (`pulsegate::sys::bufring::BufRing`, incremental
//! where the kernel has it), re-armed only when a completion comes without IORING_CQE_F_MORE,
//! and one `io_uring_enter` per loop turn that both submits and waits.
//!
//! Per receive it scans whole MQTT frames: CONNECT -> CONNACK (protocol level 5 gets the v5
//! form, any other level the 3.1.1 form), PINGREQ -> PINGRESP, SUBSCRIBE -> SUBACK granting
//! what was asked capped at QoS 1, DISCONNECT / EOF / error -> close; anything else is ignored.
//! A frame split across two receives (by TCP, or by the end of a provided buffer: in
//! incremental mode receives fill one buffer back to back, so one frame in ~4 KiB of traffic
//! straddles two) is completed in a small per-connection carry (`CARRY_BYTES`); a longer
//! split frame, which no keep-alive client sends, is skipped and counted as `split_dropped`.
//! Replies go out from static buffers (SUBACK from a per-turn scratch allocated once) with
//! `MSG_NOSIGNAL | MSG_DONTWAIT` and IOSQE_CQE_SKIP_SUCCESS, so a successful send posts no
//! completion (`--cqe-skip false` turns that off, to see what it buys).
//!
//! Owns: its listener, its ring and the connections in its table. Must never: authenticate,
//! route, keep sessions, time out idle clients, allocate per packet, or do anything else a
//! real server does beyond answering; a number measured on it is a lower bound, not a target
//! with features.
//!
//! On SIGTERM / SIGINT it prints its counters on stderr and exits 0.

// The crate denies unsafe_code for every target; this bench is the one target that talks to
// io_uring directly (pushing SQEs whose buffers and descriptors the kernel reads later), which
// cannot be done without `unsafe`. Every block says why what the kernel reads outlives it.
#![allow(unsafe_code)]

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use pulsegate::sys::bufring::BufRing;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Default size of the sparse fixed-file table (capped at the soft RLIMIT_NOFILE).
const FIXED_FILES_DEFAULT: u32 = 20_000;
const SQ_ENTRIES: u32 = 4096;
const CQ_ENTRIES: u32 = 32_768;
/// Provided buffers (a power of two) and their size.
const BUF_ENTRIES: u16 = 512;
const BUF_BYTES: u32 = 4096;
const BUF_GROUP: u16 = 0xF1;
/// Listen backlog: the loadgen ramps at up to 20,000 connects/s.
const LISTEN_BACKLOG: i32 = 4096;
/// SUBACK scratch per loop turn; a SUBACK that does not fit is dropped (counted).
const SCRATCH_BYTES: usize = 64 * 1024;
/// Frames longer than this are malformed (the gateway's default maximum packet size).
const MAX_FRAME_BYTES: usize = 262_144;
/// A partial frame up to this long is carried to the connection's next receive; a longer
/// one (no keep-alive client sends one) is skipped and counted as `split_dropped`.
const CARRY_BYTES: usize = 256;

const CONNACK_V4: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
const CONNACK_V5: [u8; 5] = [0x20, 0x03, 0x00, 0x00, 0x00];
const PINGRESP: [u8; 2] = [0xD0, 0x00];

/// user_data: operation kind in the high 32 bits, the fixed-file slot in the low 32.
const UD_ACCEPT: u64 = 1 << 32;
const UD_RECV: u64 = 2 << 32;
const UD_SEND: u64 = 3 << 32;
const UD_CANCEL: u64 = 4 << 32;
const UD_CLOSE: u64 = 5 << 32;
const UD_KIND_MASK: u64 = 0xFFFF_FFFF << 32;

/// Self-check (`cargo bench`): clients, PINGREQs per client, socket timeout.
const CHECK_CLIENTS: usize = 200;
const CHECK_PINGS: usize = 20;
const CHECK_TIMEOUT_MS: u64 = 5000;

struct Options {
    listen: Option<SocketAddr>,
    fixed_files: u32,
    cqe_skip: bool,
    bench: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        listen: None,
        fixed_files: FIXED_FILES_DEFAULT,
        cqe_skip: true,
        bench: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                o.listen = Some(v.parse().map_err(|e| format!("--listen {v}: {e}"))?);
            }
            "--fixed-files" => {
                let v = value("--fixed-files")?;
                o.fixed_files = v.parse().map_err(|e| format!("--fixed-files {v}: {e}"))?;
            }
            "--cqe-skip" => {
                o.cqe_skip = match value("--cqe-skip")?.as_str() {
                    "true" => true,
                    "false" => false,
                    v => return Err(format!("--cqe-skip takes true or false, not {v}")),
                }
            }
            "--bench" => o.bench = true,
            "-h" | "--help" => {
                return Err("usage: keepalive_floor --listen ADDR [--fixed-files N] [--cqe-skip true|false]".into());
            }
            // `cargo bench -- FILTER` passes filters; there is nothing to filter.
            a if !a.starts_with('-') => {}
            a => return Err(format!("unknown option {a}")),
        }
    }
    Ok(o)
}

fn main() -> std::process::ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("keepalive_floor: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let nofile = pulsegate::sys::rlimit::raise_nofile();
    let fixed_files = opts.fixed_files.min(u32::try_from(nofile.soft).unwrap_or(u32::MAX));
    let result = match opts.listen {
        Some(addr) => serve_until_signal(addr, fixed_files, opts.cqe_skip),
        None if opts.bench => self_check(fixed_files),
        None => Err("--listen ADDR is required (or run it through `cargo bench`)".into()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keepalive_floor: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve_until_signal(addr: SocketAddr, fixed_files: u32, cqe_skip: bool) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| format!("signal handler: {e}"))?;
    }
    let listener = listen(addr)?;
    let mut floor = Floor::new(fixed_files, cqe_skip)?;
    let local = listener.local_addr().map_err(|e| format!("local_addr: {e}"))?;
    eprintln!("keepalive_floor: {}", floor.describe());
    // One parseable line for scripts, like the gateway's.
    println!("keepalive_floor: ready {local}");
    let _ = std::io::stdout().flush();
    let result = floor.run(&listener, &stop);
    eprintln!("keepalive_floor: stopping; {}", floor.stats.line());
    floor.shutdown();
    result
}

fn listen(addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(|e| format!("socket: {e}"))?;
    s.set_reuse_address(true).map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    s.bind(&addr.into()).map_err(|e| format!("bind {addr}: {e}"))?;
    s.listen(LISTEN_BACKLOG).map_err(|e| format!("listen {addr}: {e}"))?;
    Ok(s.into())
}

/// What the responder did; printed at exit.
#[derive(Default)]
struct Stats {
    enters: u64,
    cqes: u64,
    accepted: u64,
    accept_errors: u64,
    recvs: u64,
    recv_rearms: u64,
    recv_nobufs: u64,
    connects: u64,
    pingreqs: u64,
    subscribes: u64,
    disconnects: u64,
    ignored_frames: u64,
    carried: u64,
    split_dropped: u64,
    malformed: u64,
    closes: u64,
    send_cqes: u64,
    send_errors: u64,
    suback_dropped: u64,
    cancel_errors: u64,
    close_errors: u64,
    other_errors: u64,
}

impl Stats {
    fn line(&self) -> String {
        format!(
            "enters={} cqes={} accepted={} accept_errors={} recvs={} recv_rearms={} recv_nobufs={} connects={} \
             pingreqs={} subscribes={} disconnects={} ignored_frames={} carried={} split_dropped={} malformed={} closes={} \
             send_cqes={} send_errors={} suback_dropped={} cancel_errors={} close_errors={} other_errors={}",
            self.enters,
            self.cqes,
            self.accepted,
            self.accept_errors,
            self.recvs,
            self.recv_rearms,
            self.recv_nobufs,
            self.connects,
            self.pingreqs,
            self.subscribes,
            self.disconnects,
            self.ignored_frames,
            self.carried,
            self.split_dropped,
            self.malformed,
            self.closes,
            self.send_cqes,
            self.send_errors,
            self.suback_dropped,
            self.cancel_errors,
            self.close_errors,
            self.other_errors,
        )
    }
}

/// Per fixed-file slot.
#[derive(Clone, Copy, Default)]
struct Slot {
    /// The MQTT protocol level its CONNECT gave (0 before).
    level: u8,
    /// A close is under way: data after it is ignored.
    closing: bool,
    /// Bytes of a partial frame kept in this slot's carry (see `feed`).
    carry_len: u16,
    /// Bytes still to skip of a frame too long to carry.
    skip_bytes: u32,
}

struct Floor {
    ring: IoUring,
    bufs: BufRing,
    slots: Box<[Slot]>,
    /// CARRY_BYTES per slot: a frame split across receives (by TCP, or by the end of a
    /// provided buffer in incremental mode) is completed here. Zeroed pages are mapped on
    /// first use, so only slots that ever carried cost memory.
    carry: Box<[u8]>,
    scratch: Scratch,
    /// Replies of one receive (capacity kept: no allocation per receive).
    replies: Vec<Reply>,
    accept_armed: bool,
    cqe_skip: bool,
    ring_flags: &'static str,
    fixed_files: u32,
    stats: Stats,
}

impl Floor {
    fn new(fixed_files: u32, cqe_skip: bool) -> Result<Floor, String> {
        let (ring, ring_flags) = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)
        {
            Ok(r) => (r, "single_issuer+defer_taskrun"),
            Err(_) => (
                IoUring::builder()
                    .setup_coop_taskrun()
                    .setup_cqsize(CQ_ENTRIES)
                    .build(SQ_ENTRIES)
                    .map_err(|e| format!("io_uring_setup: {e}"))?,
                "coop_taskrun",
            ),
        };
        ring.submitter()
            .register_files_sparse(fixed_files)
            .map_err(|e| format!("register {fixed_files} sparse files: {e}"))?;
        let bufs = BufRing::new(&ring.submitter(), BUF_ENTRIES, BUF_BYTES, BUF_GROUP)
            .map_err(|e| format!("provided buffer ring: {e}"))?;
        Ok(Floor {
            ring,
            bufs,
            slots: vec![Slot::default(); fixed_files as usize].into_boxed_slice(),
            carry: vec![0u8; fixed_files as usize * CARRY_BYTES].into_boxed_slice(),
            scratch: Scratch::new(),
            // A receive is at most BUF_BYTES and the smallest frame (PINGREQ) 2 bytes, plus
            // one frame completed from the carry.
            replies: Vec::with_capacity(BUF_BYTES as usize / 2 + 1),
            accept_armed: false,
            cqe_skip,
            ring_flags,
            fixed_files,
            stats: Stats::default(),
        })
    }

    fn describe(&self) -> String {
        format!(
            "ring={} fixed_files={} bufs={}x{}B{} cqe_skip={}",
            self.ring_flags,
            self.fixed_files,
            BUF_ENTRIES,
            BUF_BYTES,
            if self.bufs.is_incremental() { " incremental" } else { "" },
            self.cqe_skip
        )
    }

    /// Unregisters the buffer ring so its memory may be freed (BufRing's contract).
    fn shutdown(self) {
        let _ = self.ring.submitter().unregister_buf_ring(BUF_GROUP);
    }

    /// Pushes one SQE, submitting (without waiting) first if the queue is full.
    ///
    /// # Safety
    /// Whatever `entry` points to (buffers, descriptors) must stay valid until the operation
    /// has finished; callers state why.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> Result<(), String> {
        loop {
            // SAFETY: forwarded from the caller's contract on `entry`.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.ring
                .submit()
                .map_err(|e| format!("io_uring_enter (submit): {e}"))?;
            self.stats.enters += 1;
        }
    }

    fn arm_accept(&mut self, listener_fd: i32) -> Result<(), String> {
        let e = opcode::AcceptMulti::new(types::Fd(listener_fd))
            .allocate_file_index(true)
            .build()
            .user_data(UD_ACCEPT);
        // SAFETY: the accept reads no memory of ours; the listener fd outlives the ring's use
        // of it (`run` borrows the listener for the whole loop; the ring is dropped first).
        unsafe { self.push(&e)? };
        self.accept_armed = true;
        Ok(())
    }

    fn arm_recv(&mut self, slot: u32) -> Result<(), String> {
        let e = opcode::RecvMulti::new(types::Fixed(slot), BUF_GROUP)
            .build()
            .user_data(UD_RECV | slot as u64);
        // SAFETY: the receive writes only into provided buffers, which `self.bufs` owns for
        // the ring's whole life; the slot stays open until this receive has ended (we close
        // only after a completion without F_MORE).
        unsafe { self.push(&e) }
    }

    /// Sends `len` bytes at `buf`, which must be static or in this turn's scratch.
    fn send(&mut self, slot: u32, buf: *const u8, len: usize) -> Result<(), String> {
        let mut e = opcode::Send::new(types::Fixed(slot), buf, len as u32)
            .flags(libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
            .build()
            .user_data(UD_SEND | slot as u64);
        if self.cqe_skip {
            e = e.flags(squeue::Flags::SKIP_SUCCESS);
        }
        // SAFETY: `buf` is a static reply or lies in `self.scratch`, which is rewritten only
        // once the submission queue is empty after an io_uring_enter. With MSG_DONTWAIT the
        // kernel issues the send inline in that enter (REQ_F_NOWAIT: a full socket fails with
        // -EAGAIN instead of being retried later), so the bytes are copied by then. The slot
        // may close meanwhile: the request holds its own reference to the socket.
        unsafe { self.push(&e) }
    }

    /// Ends a slot's receive that is still armed: cancelled, it completes without F_MORE
    /// and the slot is closed on that completion. (An IORING_OP_SHUTDOWN was tried first: it
    /// is not issued inline, so it ran after the close and failed with EBADF.)
    fn cancel_recv(&mut self, slot: u32) -> Result<(), String> {
        self.slots[slot as usize].closing = true;
        let e = opcode::AsyncCancel::new(UD_RECV | slot as u64)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(UD_CANCEL | slot as u64);
        // SAFETY: reads no memory of ours.
        unsafe { self.push(&e) }
    }

    /// Closes a slot whose receive has ended; re-arms accept if the table was full.
    fn close_slot(&mut self, slot: u32, listener_fd: i32) -> Result<(), String> {
        self.slots[slot as usize] = Slot {
            closing: true,
            ..Slot::default()
        };
        self.stats.closes += 1;
        let e = opcode::Close::new(types::Fixed(slot))
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(UD_CLOSE | slot as u64);
        // SAFETY: reads no memory of ours; no receive is armed on the slot any more.
        unsafe { self.push(&e)? };
        if !self.accept_armed {
            self.arm_accept(listener_fd)?;
        }
        Ok(())
    }

    fn run(&mut self, listener: &std::net::TcpListener, stop: &AtomicBool) -> Result<(), String> {
        let lfd = listener.as_raw_fd();
        self.arm_accept(lfd)?;
        while !stop.load(Ordering::Relaxed) {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // CQ overflow backlog: reap below, then enter again.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(format!("io_uring_enter: {e}")),
            }
            self.stats.enters += 1;
            if self.ring.submission().is_empty() {
                self.scratch.used_bytes = 0;
            }
            self.turn(lfd)?;
            self.bufs.publish();
        }
        Ok(())
    }

    /// Handles every completion that is ready.
    fn turn(&mut self, lfd: i32) -> Result<(), String> {
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                return Ok(());
            };
            self.stats.cqes += 1;
            let (ud, res, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
            let slot = (ud & 0xFFFF_FFFF) as u32;
            match ud & UD_KIND_MASK {
                UD_ACCEPT => self.on_accept(res, flags, lfd)?,
                UD_RECV => self.on_recv(slot, res, flags, lfd)?,
                UD_SEND => {
                    self.stats.send_cqes += 1;
                    if res < 0 {
                        // The connection's receive sees the error or EOF and closes it.
                        self.stats.send_errors += 1;
                    }
                }
                // -ENOENT: the receive had ended already (EOF in the same turn).
                UD_CANCEL if res < 0 && res != -libc::ENOENT => self.stats.cancel_errors += 1,
                UD_CLOSE if res < 0 => self.stats.close_errors += 1,
                _ => {}
            }
        }
    }

    fn on_accept(&mut self, res: i32, flags: u32, lfd: i32) -> Result<(), String> {
        let more = cqueue::more(flags);
        if res >= 0 {
            self.stats.accepted += 1;
            let slot = res as u32;
            if let Some(s) = self.slots.get_mut(slot as usize) {
                *s = Slot::default();
                self.arm_recv(slot)?;
            }
        } else {
            self.stats.accept_errors += 1;
        }
        if !more {
            self.accept_armed = false;
            // A full table (-ENFILE) would fail again at once: wait for a close instead.
            if res != -libc::ENFILE {
                self.arm_accept(lfd)?;
            }
        }
        Ok(())
    }

    fn on_recv(&mut self, slot: u32, res: i32, flags: u32, lfd: i32) -> Result<(), String> {
        let more = cqueue::more(flags);
        let Some(closing_before) = self.slots.get(slot as usize).map(|s| s.closing) else {
            self.stats.other_errors += 1;
            return Ok(());
        };
        let mut want_close = false;
        if res > 0 {
            self.stats.recvs += 1;
            let len = res as usize;
            let Some(bid) = cqueue::buffer_select(flags) else {
                self.stats.other_errors += 1;
                return Ok(());
            };
            if !closing_before {
                want_close = self.answer(slot, bid, len)?;
            }
            self.bufs.consumed(bid, len, cqueue::buffer_more(flags));
        } else if res == -libc::ENOBUFS {
            // Out of provided buffers: they go back at the end of this turn; re-arm below.
            self.stats.recv_nobufs += 1;
        } else {
            // EOF (0) or an error: the peer is gone.
            want_close = true;
        }
        if more {
            // The receive stays armed: cancel it, close on its last completion.
            if want_close && !closing_before {
                self.cancel_recv(slot)?;
            }
        } else if want_close || closing_before {
            self.close_slot(slot, lfd)?;
        } else {
            self.stats.recv_rearms += 1;
            self.arm_recv(slot)?;
        }
        Ok(())
    }

    /// Answers the whole frames of one receive; true if the connection is to be closed.
    fn answer(&mut self, slot: u32, bid: u16, len: usize) -> Result<bool, String> {
        let mut replies = std::mem::take(&mut self.replies);
        replies.clear();
        let data = self.bufs.filled(bid, len);
        let carry = &mut self.carry[slot as usize * CARRY_BYTES..(slot as usize + 1) * CARRY_BYTES];
        let mut sink = Sink {
            scratch: &mut self.scratch,
            out: &mut replies,
            stats: &mut self.stats,
        };
        let close = feed(data, &mut self.slots[slot as usize], carry, &mut sink);
        for &r in &replies {
            let (ptr, n) = match r {
                Reply::Connack(5) => (CONNACK_V5.as_ptr(), CONNACK_V5.len()),
                Reply::Connack(_) => (CONNACK_V4.as_ptr(), CONNACK_V4.len()),
                Reply::Pingresp => (PINGRESP.as_ptr(), PINGRESP.len()),
                Reply::Suback { start, len } => (self.scratch.buf[start..start + len].as_ptr(), len),
            };
            self.send(slot, ptr, n)?;
        }
        self.replies = replies;
        Ok(close)
    }
}

/// One reply to send, in the order the frames came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    /// CONNACK for this protocol level.
    Connack(u8),
    Pingresp,
    /// A SUBACK written into the scratch at `start`.
    Suback {
        start: usize,
        len: usize,
    },
}

/// Per-turn bytes for replies that are not constant (SUBACK), allocated once. It is
/// rewritten only after an io_uring_enter left the submission queue empty (see `Floor::send`).
struct Scratch {
    buf: Box<[u8]>,
    used_bytes: usize,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            buf: vec![0u8; SCRATCH_BYTES].into_boxed_slice(),
            used_bytes: 0,
        }
    }

    /// `n` fresh bytes (and where they start), or None when this turn's space is used up.
    fn take(&mut self, n: usize) -> Option<(usize, &mut [u8])> {
        let start = self.used_bytes;
        let end = start.checked_add(n).filter(|&e| e <= self.buf.len())?;
        self.used_bytes = end;
        Some((start, &mut self.buf[start..end]))
    }
}

/// A frame at the start of a connection's bytes.
#[derive(Debug, PartialEq, Eq)]
enum Frame<'a> {
    /// First byte, body (after the remaining length), whole frame length.
    Whole { first: u8, body: &'a [u8], len: usize },
    /// The frame goes on in a later receive; its whole length once the header is complete.
    Partial { len: Option<usize> },
    /// A remaining length longer than 4 bytes or than MAX_FRAME_BYTES.
    Malformed,
}

fn next_frame(d: &[u8]) -> Frame<'_> {
    let mut remaining = 0usize;
    let mut i = 1;
    loop {
        let Some(&b) = d.get(i) else {
            return Frame::Partial { len: None };
        };
        remaining |= ((b & 0x7F) as usize) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Frame::Malformed;
        }
    }
    if remaining > MAX_FRAME_BYTES {
        return Frame::Malformed;
    }
    match d.get(i..i + remaining) {
        Some(body) => Frame::Whole {
            first: d[0],
            body,
            len: i + remaining,
        },
        None => Frame::Partial {
            len: Some(i + remaining),
        },
    }
}

/// The MQTT remaining-length varint of `n` (< 2^28) into `out`; its length.
fn put_varint(mut n: usize, out: &mut [u8]) -> usize {
    let mut i = 0;
    loop {
        let b = (n & 0x7F) as u8;
        n >>= 7;
        out[i] = if n > 0 { b | 0x80 } else { b };
        i += 1;
        if n == 0 {
            return i;
        }
    }
}

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Where one receive's replies go, and the counters.
struct Sink<'a> {
    scratch: &'a mut Scratch,
    out: &'a mut Vec<Reply>,
    stats: &'a mut Stats,
}

/// Feeds one receive of a connection: first completes a frame carried over from its last
/// receive, then scans the whole frames, then carries (or skips) a trailing partial one.
/// Appends the replies; true if the connection is to be closed (DISCONNECT, malformed).
fn feed(mut data: &[u8], st: &mut Slot, carry: &mut [u8], sink: &mut Sink<'_>) -> bool {
    if st.skip_bytes > 0 {
        let k = (st.skip_bytes as usize).min(data.len());
        st.skip_bytes -= k as u32;
        data = &data[k..];
    }
    while st.carry_len > 0 {
        let cl = st.carry_len as usize;
        match next_frame(&carry[..cl]) {
            Frame::Whole { first, body, .. } => {
                st.carry_len = 0;
                if handle(first, body, &mut st.level, sink) {
                    return true;
                }
            }
            Frame::Malformed => {
                sink.stats.malformed += 1;
                return true;
            }
            Frame::Partial { len: Some(total) } if total > carry.len() => {
                // Too long to carry (no keep-alive frame is): skip the rest of it.
                sink.stats.split_dropped += 1;
                st.carry_len = 0;
                let k = (total - cl).min(data.len());
                st.skip_bytes = (total - cl - k) as u32;
                data = &data[k..];
            }
            Frame::Partial { len } => {
                // The rest of the frame, or the header's next byte.
                let k = len.map_or(1, |total| total - cl).min(data.len());
                if k == 0 {
                    return false;
                }
                carry[cl..cl + k].copy_from_slice(&data[..k]);
                st.carry_len += k as u16;
                data = &data[k..];
            }
        }
    }
    while !data.is_empty() {
        match next_frame(data) {
            Frame::Whole { first, body, len } => {
                data = &data[len..];
                if handle(first, body, &mut st.level, sink) {
                    return true;
                }
            }
            Frame::Partial { len: Some(total) } if total > carry.len() => {
                sink.stats.split_dropped += 1;
                st.skip_bytes = (total - data.len()) as u32;
                return false;
            }
            Frame::Partial { .. } => {
                // Shorter than the carry: a whole frame fits it, an incomplete header is
                // at most 4 bytes.
                sink.stats.carried += 1;
                carry[..data.len()].copy_from_slice(data);
                st.carry_len = data.len() as u16;
                return false;
            }
            Frame::Malformed => {
                sink.stats.malformed += 1;
                return true;
            }
        }
    }
    false
}

/// Answers one whole frame; true if the connection is to be closed.
fn handle(first: u8, body: &[u8], level: &mut u8, sink: &mut Sink<'_>) -> bool {
    let stats = &mut *sink.stats;
    match first >> 4 {
        1 => {
            // Protocol name (2-byte length + bytes), then the level.
            let Some(&l) = body
                .get(..2)
                .and_then(|n| body.get(2 + u16::from_be_bytes([n[0], n[1]]) as usize))
            else {
                stats.malformed += 1;
                return true;
            };
            stats.connects += 1;
            *level = l;
            sink.out.push(Reply::Connack(l));
        }
        12 => {
            stats.pingreqs += 1;
            sink.out.push(Reply::Pingresp);
        }
        8 => {
            stats.subscribes += 1;
            match suback(body, *level, sink.scratch) {
                Ok(Some(r)) => sink.out.push(r),
                Ok(None) => stats.suback_dropped += 1,
                Err(()) => {
                    stats.malformed += 1;
                    return true;
                }
            }
        }
        14 => {
            stats.disconnects += 1;
            return true;
        }
        _ => stats.ignored_frames += 1,
    }
    false
}

/// The SUBACK for a SUBSCRIBE body, written into the scratch: every filter granted the QoS
/// it asked for, at most 1. Ok(None) when the scratch is full; Err on a malformed body.
fn suback(body: &[u8], level: u8, scratch: &mut Scratch) -> Result<Option<Reply>, ()> {
    let pid = body.get(..2).ok_or(())?;
    let mut pos = 2;
    if level == 5 {
        // Properties: a varint length, then that many bytes (skipped).
        let mut props = 0usize;
        let mut shift = 0;
        loop {
            let b = *body.get(pos).ok_or(())?;
            pos += 1;
            props |= ((b & 0x7F) as usize) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
            if shift > 21 {
                return Err(());
            }
        }
        pos += props;
    }
    let filters_at = pos;
    let mut filters = 0usize;
    while pos < body.len() {
        let n = body.get(pos..pos + 2).ok_or(())?;
        pos += 2 + u16::from_be_bytes([n[0], n[1]]) as usize;
        body.get(pos).ok_or(())?;
        pos += 1;
        filters += 1;
    }
    if filters == 0 || pos != body.len() {
        return Err(());
    }
    let v5 = usize::from(level == 5);
    let remaining = 2 + v5 + filters;
    let total = 1 + varint_len(remaining) + remaining;
    let Some((start, out)) = scratch.take(total) else {
        return Ok(None);
    };
    out[0] = 0x90;
    let mut i = 1 + put_varint(remaining, &mut out[1..]);
    out[i..i + 2].copy_from_slice(pid);
    i += 2;
    if v5 == 1 {
        out[i] = 0;
        i += 1;
    }
    let mut pos = filters_at;
    while pos < body.len() {
        let n = u16::from_be_bytes([body[pos], body[pos + 1]]) as usize;
        pos += 2 + n;
        out[i] = (body[pos] & 0x03).min(1);
        pos += 1;
        i += 1;
    }
    Ok(Some(Reply::Suback { start, len: total }))
}

// --------------------------------------------------------------------------------------
// `cargo bench`: a short self-check against a floor on an ephemeral port
// --------------------------------------------------------------------------------------

/// Starts a floor on 127.0.0.1:0 in its own thread (the ring's single issuer); returns its
/// address once it listens. The thread runs until the process ends.
fn spawn_floor(fixed_files: u32, cqe_skip: bool) -> Result<SocketAddr, String> {
    let listener = listen("127.0.0.1:0".parse().map_err(|e| format!("{e}"))?)?;
    let addr = listener.local_addr().map_err(|e| format!("local_addr: {e}"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("keepalive-floor".into())
        .spawn(move || {
            let mut floor = match Floor::new(fixed_files, cqe_skip) {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(floor.describe()));
            let never = AtomicBool::new(false);
            if let Err(e) = floor.run(&listener, &never) {
                eprintln!("keepalive_floor: self-check server: {e}");
            }
        })
        .map_err(|e| format!("spawn: {e}"))?;
    let described = rx
        .recv_timeout(Duration::from_millis(CHECK_TIMEOUT_MS))
        .map_err(|e| format!("floor thread: {e}"))??;
    eprintln!("keepalive_floor: self-check server {addr}: {described}");
    Ok(addr)
}

fn mqtt_connect(level: u8, client_id: &str) -> Vec<u8> {
    let name: &[u8] = if level == 3 { b"MQIsdp" } else { b"MQTT" };
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, 0x02, 0x00, 0x3C]);
    if level == 5 {
        body.push(0); // no properties
    }
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut frame = vec![0x10, body.len() as u8];
    frame.extend_from_slice(&body);
    frame
}

fn mqtt_subscribe(level: u8, pid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    if level == 5 {
        body.push(0);
    }
    for (f, qos) in filters {
        body.extend_from_slice(&(f.len() as u16).to_be_bytes());
        body.extend_from_slice(f.as_bytes());
        body.push(*qos);
    }
    let mut frame = vec![0x82, body.len() as u8];
    frame.extend_from_slice(&body);
    frame
}

fn expect(s: &mut TcpStream, want: &[u8], what: &str) -> Result<(), String> {
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got).map_err(|e| format!("{what}: {e}"))?;
    if got != want {
        return Err(format!("{what}: got {got:02x?}, want {want:02x?}"));
    }
    Ok(())
}

/// CHECK_CLIENTS clients (every tenth MQTT 5) connect at once, then CHECK_PINGS PINGREQs
/// each: half one per write, half in one write (several frames in one receive). Every
/// PINGRESP must arrive. Plus a SUBSCRIBE per protocol level and a DISCONNECT.
fn check_one(fixed_files: u32, cqe_skip: bool) -> Result<u64, String> {
    let addr = spawn_floor(fixed_files, cqe_skip)?;
    let timeout = Some(Duration::from_millis(CHECK_TIMEOUT_MS));
    let mut clients = Vec::with_capacity(CHECK_CLIENTS);
    let level = |i: usize| if i % 10 == 9 { 5 } else { 4 };
    for i in 0..CHECK_CLIENTS {
        let s = TcpStream::connect(addr).map_err(|e| format!("connect #{i}: {e}"))?;
        s.set_read_timeout(timeout).map_err(|e| format!("{e}"))?;
        s.set_nodelay(true).map_err(|e| format!("{e}"))?;
        clients.push(s);
    }
    for (i, s) in clients.iter_mut().enumerate() {
        s.write_all(&mqtt_connect(level(i), &format!("floor-check-{i}")))
            .map_err(|e| format!("CONNECT #{i}: {e}"))?;
    }
    for (i, s) in clients.iter_mut().enumerate() {
        let want: &[u8] = if level(i) == 5 { &CONNACK_V5 } else { &CONNACK_V4 };
        expect(s, want, &format!("CONNACK #{i}"))?;
    }
    let mut pingresps = 0u64;
    let single = CHECK_PINGS / 2;
    for round in 0..single {
        for (i, s) in clients.iter_mut().enumerate() {
            s.write_all(&[0xC0, 0x00])
                .map_err(|e| format!("PINGREQ #{i}/{round}: {e}"))?;
        }
        for (i, s) in clients.iter_mut().enumerate() {
            expect(s, &PINGRESP, &format!("PINGRESP #{i}/{round}"))?;
            pingresps += 1;
        }
    }
    let batch = CHECK_PINGS - single;
    let pings: Vec<u8> = [0xC0, 0x00].repeat(batch);
    let pongs: Vec<u8> = PINGRESP.repeat(batch);
    for (i, s) in clients.iter_mut().enumerate() {
        s.write_all(&pings).map_err(|e| format!("PINGREQ batch #{i}: {e}"))?;
    }
    for (i, s) in clients.iter_mut().enumerate() {
        expect(s, &pongs, &format!("PINGRESP batch #{i}"))?;
        pingresps += batch as u64;
    }
    // Frames split across receives (two writes, 50 ms apart): completed from the carry.
    let connect = mqtt_connect(4, "floor-check-split");
    let mut split = TcpStream::connect(addr).map_err(|e| format!("connect split: {e}"))?;
    split.set_read_timeout(timeout).map_err(|e| format!("{e}"))?;
    split.set_nodelay(true).map_err(|e| format!("{e}"))?;
    for (part, what) in [(&connect[..1], "CONNECT head"), (&connect[1..9], "CONNECT middle")] {
        split.write_all(part).map_err(|e| format!("{what}: {e}"))?;
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut tail_and_ping = connect[9..].to_vec();
    tail_and_ping.push(0xC0);
    split
        .write_all(&tail_and_ping)
        .map_err(|e| format!("CONNECT tail: {e}"))?;
    expect(&mut split, &CONNACK_V4, "CONNACK after a split CONNECT")?;
    std::thread::sleep(Duration::from_millis(50));
    split.write_all(&[0x00]).map_err(|e| format!("PINGREQ tail: {e}"))?;
    expect(&mut split, &PINGRESP, "PINGRESP after a split PINGREQ")?;
    // SUBSCRIBE: QoS 0 and 2 asked (0 and 1 granted) at 3.1.1, QoS 1 at 5.
    clients[0]
        .write_all(&mqtt_subscribe(4, 7, &[("push/a", 0), ("push/b", 2)]))
        .map_err(|e| format!("SUBSCRIBE v4: {e}"))?;
    expect(&mut clients[0], &[0x90, 0x04, 0x00, 0x07, 0x00, 0x01], "SUBACK v4")?;
    clients[9]
        .write_all(&mqtt_subscribe(5, 0x0102, &[("push/c", 1)]))
        .map_err(|e| format!("SUBSCRIBE v5: {e}"))?;
    expect(&mut clients[9], &[0x90, 0x04, 0x01, 0x02, 0x00, 0x01], "SUBACK v5")?;
    // DISCONNECT: the floor closes the connection (EOF here).
    clients[0]
        .write_all(&[0xE0, 0x00])
        .map_err(|e| format!("DISCONNECT: {e}"))?;
    let mut b = [0u8; 1];
    match clients[0].read(&mut b) {
        Ok(0) => {}
        other => return Err(format!("after DISCONNECT: want EOF, got {other:?}")),
    }
    let want = (CHECK_CLIENTS * CHECK_PINGS) as u64;
    if pingresps != want {
        return Err(format!("{pingresps} PINGRESPs, {want} expected"));
    }
    Ok(pingresps)
}

fn self_check(fixed_files: u32) -> Result<(), String> {
    for cqe_skip in [true, false] {
        let t = Instant::now();
        let n = check_one(fixed_files, cqe_skip)?;
        println!(
            "keepalive_floor: self-check ok (cqe_skip={cqe_skip}): {CHECK_CLIENTS} clients, {n} PINGRESPs of {n} \
             in {:.0} ms",
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
