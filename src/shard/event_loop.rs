//! The shard loop generic over `sys::io::Io`: the same turn as the io_uring
//! loop (accept on each listener -> `accept_gate` -> `Core::accept`, and
//! `Core::start_tls` for the TLS one; the listener rides in the accept's key
//! field; bytes -> `Core::receive`, dirty keys -> sends, closing keys -> close
//! when ready, timers, mailbox commands, moves in and out, shutdown grace),
//! written once against a completion interface
//! so a simulated ring (`sys::sim_io::SimIo`) can drive it deterministically.
//!
//! Owns the operations in flight on its `Io`. Must never free a connection
//! slot while a completion may still arrive for it (close done, no recv armed,
//! no send in flight), never touch a send buffer while its send is in flight,
//! and never recurse from a completion handler into another handler.

use std::collections::VecDeque;
use std::sync::Arc;

use super::accept_gate::AcceptGate;
use super::conn::{
    IO_CLOSE_DONE, IO_CLOSE_SUBMITTED, IO_MOVING, IO_PINGRESP_OWED, IO_RECV_ARMED, IO_SEND_IN_FLIGHT, Phase,
};
use super::core::Core;
use super::counters::{CloseReason, bump};
use super::mailbox::MailboxReceiver;
use super::migrate::{MoveOut, MoveStep};
use crate::limits;
use crate::sys::io::{Completion, Io, Listener};
use crate::sys::user_data::{GENERATION_MASK, Op, pack, unpack};

/// Key used for operations that belong to no connection.
const NO_KEY: u32 = u32::MAX;
/// Pause before re-arming accept after an error such as a full fd table.
const ACCEPT_RETRY_MS: u64 = 100;
/// Longest a stopping shard waits for its devices to be disconnected.
pub const SHUTDOWN_GRACE_MS: u64 = 3_000;
/// Wait while shutting down (the loop polls for its devices to go).
const SHUTDOWN_POLL_MS: u64 = 10;
/// Keys handled per flush, as allocated at start (grows only past it).
const KEYS_PER_FLUSH_PREALLOCATED: usize = 1024;

/// One shard: its `Io`, its mailbox and its sans-IO core.
pub struct EventLoop<I: Io> {
    pub io: I,
    pub core: Core,
    mailbox: MailboxReceiver,
    /// Accept rates, asked before a socket reaches `Core::accept`.
    accept_gate: Arc<AcceptGate>,
    /// By `Listener::index`.
    accept_armed: [bool; 2],
    /// By `Listener::index`: when an accept that failed may be re-armed.
    accept_retry_at_ms: [u64; 2],
    wake_armed: bool,
    stop_deadline_ms: Option<u64>,
    completions: Vec<Completion>,
    keys: Vec<u32>,
    /// (key, 24-bit generation) of static sends not yet settled, in order.
    static_pending: VecDeque<(u32, u32)>,
    /// Static sends settled so far (`Io::static_sends_settled` counts alike).
    static_settled: u64,
    /// Since the last wait: whether a PINGRESP went out from the static
    /// buffer, and whether anything else happened (another send, a close, an
    /// accept, a mailbox wake-up, a send completion). Only keep-alives alone
    /// let the next wait batch (`Io::wait`).
    turn_answered_keepalive: bool,
    turn_other_work: bool,
}

impl<I: Io> EventLoop<I> {
    pub fn new(io: I, core: Core, mailbox: MailboxReceiver, accept_gate: Arc<AcceptGate>) -> EventLoop<I> {
        EventLoop {
            io,
            core,
            mailbox,
            accept_gate,
            accept_armed: [false; 2],
            accept_retry_at_ms: [0; 2],
            wake_armed: false,
            stop_deadline_ms: None,
            completions: Vec::with_capacity(limits::COMPLETIONS_PER_TURN_MAX),
            keys: Vec::with_capacity(KEYS_PER_FLUSH_PREALLOCATED),
            static_pending: VecDeque::with_capacity(KEYS_PER_FLUSH_PREALLOCATED),
            static_settled: 0,
            turn_answered_keepalive: false,
            turn_other_work: false,
        }
    }

    fn tick(&mut self) {
        self.core.set_now_ms(self.io.now_ms());
    }

    fn arm_accept(&mut self, l: Listener) {
        if !self.io.has_listener(l) {
            return;
        }
        self.io.accept(pack(Op::Accept, l as u32, 0), l);
        self.accept_armed[l.index()] = true;
    }

    fn arm_wake(&mut self) {
        self.io.wake(pack(Op::Wake, NO_KEY, 0));
        self.wake_armed = true;
    }

    fn arm_recv(&mut self, key: u32) {
        let Some(conn) = self.core.conn_mut(key) else { return };
        if conn.phase == Phase::Closing || conn.io_flags & (IO_RECV_ARMED | IO_MOVING) != 0 {
            return;
        }
        conn.io_flags |= IO_RECV_ARMED;
        let (io, generation) = (conn.io, conn.generation);
        self.io.recv(pack(Op::Recv, key, generation), io);
    }

    fn start_send(&mut self, key: u32) {
        let Some(conn) = self.core.conn_mut(key) else { return };
        if conn.io_flags & (IO_SEND_IN_FLIGHT | IO_CLOSE_SUBMITTED | IO_MOVING) != 0 {
            return;
        }
        let (io, generation) = (conn.io, conn.generation);
        if conn.io_flags & IO_PINGRESP_OWED != 0 {
            if !self.io.sends_static() {
                self.core.owed_pingresp_to_output(key);
            } else if let Some(bytes) = self.core.take_owed_pingresp(key) {
                // Nothing else waits (the owed flag says so): a keep-alive
                // answered without touching the connection's buffers.
                self.io.send_static(pack(Op::PingResp, key, generation), io, bytes);
                self.static_pending.push_back((key, generation & GENERATION_MASK));
                self.turn_answered_keepalive = true;
                return;
            }
        }
        let Some(bytes) = self.core.next_send(key) else { return };
        self.turn_other_work = true;
        // SAFETY: `bytes` is the connection's `Active::sending`, which `Core`
        // never touches while IO_SEND_IN_FLIGHT is set (`next_send` just set
        // it; only `send_done` / `send_stopped`, called from this send's
        // completion, clear it), and the slot is not freed before that
        // completion (`try_release` waits for it).
        unsafe { self.io.send(pack(Op::Send, key, generation), io, bytes) };
    }

    fn start_close(&mut self, key: u32) {
        let Some(conn) = self.core.conn_mut(key) else { return };
        if conn.io_flags & IO_CLOSE_SUBMITTED != 0 {
            return;
        }
        conn.io_flags |= IO_CLOSE_SUBMITTED;
        self.turn_other_work = true;
        let (io, generation) = (conn.io, conn.generation);
        self.io.close(
            pack(Op::Shutdown, key, generation),
            pack(Op::Close, key, generation),
            io,
        );
    }

    fn close_orphan(&mut self, io: u32) {
        self.io.close_orphan(pack(Op::Close, NO_KEY, 0), io);
    }

    fn try_release(&mut self, key: u32) {
        let Some(conn) = self.core.conn_mut(key) else { return };
        let f = conn.io_flags;
        if f & IO_CLOSE_DONE != 0 && f & (IO_RECV_ARMED | IO_SEND_IN_FLIGHT) == 0 {
            self.core.release(key);
        }
    }

    fn handle_completions(&mut self) {
        let completions = std::mem::take(&mut self.completions);
        // Failed static sends first, then every static send the backend has
        // settled is released, so a device answering its PINGRESP within
        // this batch gets its next one from the static buffer too.
        for c in &completions {
            if let Some((Op::PingResp, key, gen24)) = unpack(c.user_data) {
                self.on_static_send_failed(key, gen24, c.result);
            }
        }
        self.settle_static_sends();
        for c in &completions {
            let Some((op, key, gen24)) = unpack(c.user_data) else {
                continue;
            };
            if !matches!(op, Op::Recv | Op::PingResp | Op::Shutdown) {
                self.turn_other_work = true;
            }
            match op {
                Op::Accept => {
                    if let Some(l) = Listener::from_key(key) {
                        self.on_accept(c, l);
                    }
                }
                Op::Wake => self.on_wake(),
                Op::Recv => self.on_recv(key, gen24, c),
                Op::Send => self.on_send(key, gen24, c.result),
                Op::Close => {
                    if key != NO_KEY && self.core.conn(key, gen24).is_some() {
                        if let Some(conn) = self.core.conn_mut(key) {
                            conn.io_flags |= IO_CLOSE_DONE;
                        }
                        self.try_release(key);
                    }
                }
                Op::MsgRing => self.on_msg_ring(key, gen24, c.result),
                // Handled above, before the others.
                Op::PingResp => {}
                Op::Shutdown | Op::Cancel => {}
            }
        }
        self.completions = completions;
        self.io.publish_buffers();
    }

    fn on_static_send_failed(&mut self, key: u32, gen24: u32, result: i32) {
        if self.core.conn(key, gen24).is_some() {
            self.core.static_send_failed(key, result);
            if self.core.close_ready(key) {
                self.start_close(key);
            }
            self.try_release(key);
        }
    }

    fn on_accept(&mut self, c: &Completion, l: Listener) {
        if !c.more() {
            self.accept_armed[l.index()] = false;
        }
        if c.result < 0 {
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
                    std::io::Error::from_raw_os_error(-c.result)
                );
            }
            bump(&self.core.counters().accept_errors, 1);
            self.accept_retry_at_ms[l.index()] = self.core.now_ms() + ACCEPT_RETRY_MS;
            return;
        }
        let io = c.result as u32;
        // Taken whatever the gate's settings: the backend keeps it until then.
        let peer = self.io.accepted_peer(io);
        // Before any byte is read or written (no TLS, no CONNECT): refused
        // sockets are closed at once.
        if let Err(reason) = self.accept_gate.admit(peer, self.core.now_ms()) {
            self.core.counters().accept_refused(reason);
            self.close_orphan(io);
            return;
        }
        match self.core.accept(io) {
            Some((key, _)) => {
                // A TLS connection's bytes go through its rustls state from
                // the first one (no config: it is closed at once).
                if l == Listener::MqttTls {
                    self.core.start_tls(key);
                }
                self.arm_recv(key)
            }
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

    fn on_recv(&mut self, key: u32, gen24: u32, c: &Completion) {
        let live = self.core.conn(key, gen24).is_some();
        if live
            && !c.more()
            && let Some(conn) = self.core.conn_mut(key)
        {
            conn.io_flags &= !IO_RECV_ARMED;
        }
        let len = c.result.max(0) as usize;
        if let Some(bid) = c.buffer() {
            if live && len > 0 {
                let data = self.io.received(bid, len);
                self.core.receive(key, data);
            }
            self.io.consumed(bid, len, c.buffer_more());
        }
        if !live {
            return;
        }
        match c.result {
            1.. => {
                if !c.more() {
                    self.arm_recv(key);
                }
            }
            0 => self.core.peer_closed(key, CloseReason::PeerClosed),
            r if -r == libc::ENOBUFS => {
                bump(&self.core.counters().recv_buffer_exhausted, 1);
                self.arm_recv(key);
            }
            // Our own cancellation (a move) ends the recv; any other cancel
            // (the device tore the multishot down) is re-armed, or the
            // connection would go deaf. `arm_recv` skips a moving one.
            r if -r == libc::ECANCELED => self.arm_recv(key),
            _ => self.core.peer_closed(key, CloseReason::IoError),
        }
        self.try_release(key);
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

    fn on_msg_ring(&mut self, key: u32, gen24: u32, res: i32) {
        if res >= 0 {
            if let Some(old_io) = self.core.moving_passed(key, gen24, res as u32) {
                // The other ring holds the socket now: drop this table's reference.
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
            if let Some(fd) = fd {
                let io = self.io.attach(fd);
                if let Some(conn) = self.core.conn_mut(key) {
                    conn.io = io;
                }
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
                    self.io.cancel(recv, pack(Op::Cancel, m.key, m.generation));
                    left.push(m);
                }
                MoveStep::Wait => left.push(m),
                MoveStep::Ready => self.hand_off(m),
            }
        }
        self.core.put_moves(left);
        self.core.post_outbox();
    }

    /// Passes a quiet connection's socket to shard `m.to`.
    fn hand_off(&mut self, m: MoveOut) {
        let Some(io) = self.core.conn(m.key, m.generation).map(|c| c.io) else {
            return;
        };
        if self.io.passes_descriptors() {
            if !self.io.msg_ring(m.to, io, pack(Op::MsgRing, m.key, m.generation)) {
                self.core.abandon_move(&m);
                self.arm_recv(m.key);
                return;
            }
            let moving = self.core.hand_off(&m, None);
            self.core.park_moving(moving);
        } else {
            let Some(fd) = self.io.detach(io) else {
                self.core.abandon_move(&m);
                self.arm_recv(m.key);
                return;
            };
            let moving = self.core.hand_off(&m, Some(fd));
            self.core.send_moving(m.to, moving);
        }
    }

    /// Static sends the backend has settled (issued, their failure, if any,
    /// handled): their connections may send again, and close if they waited.
    fn settle_static_sends(&mut self) {
        let settled = self.io.static_sends_settled();
        while self.static_settled < settled {
            self.static_settled += 1;
            let Some((key, gen24)) = self.static_pending.pop_front() else {
                break;
            };
            if self.core.conn(key, gen24).is_none() {
                continue;
            }
            self.core.static_send_issued(key);
            if self.core.close_ready(key) {
                self.start_close(key);
            }
            self.try_release(key);
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

    /// One turn: submit, wait, handle completions, run timers, submit again.
    /// Returns false once the shard has stopped (Shutdown, and every device
    /// gone or the grace ran out).
    pub fn turn(&mut self, stop: bool) -> bool {
        // The clock was read after the last wait (one read per turn): what
        // ran since (handlers, timers, flush) takes microseconds.
        if stop && !self.core.is_shutting_down() {
            self.core.shutdown();
        }
        if self.core.is_shutting_down() {
            let deadline = *self
                .stop_deadline_ms
                .get_or_insert(self.core.now_ms() + SHUTDOWN_GRACE_MS);
            if self.core.connections() == 0 || self.core.now_ms() >= deadline {
                return false;
            }
        } else {
            for l in Listener::ALL {
                if !self.accept_armed[l.index()] && self.core.now_ms() >= self.accept_retry_at_ms[l.index()] {
                    self.arm_accept(l);
                }
            }
        }
        if !self.wake_armed {
            self.arm_wake();
        }
        self.flush();
        let timeout_ms = if self.core.is_shutting_down() {
            SHUTDOWN_POLL_MS
        } else {
            self.core.sleep_ms()
        };
        let keepalives_only = self.turn_answered_keepalive && !self.turn_other_work;
        self.turn_answered_keepalive = false;
        self.turn_other_work = false;
        self.io.wait(timeout_ms, keepalives_only);
        self.completions.clear();
        self.io.drain(&mut self.completions, limits::COMPLETIONS_PER_TURN_MAX);
        self.tick();
        self.handle_completions();
        self.core.run_timers();
        self.flush();
        bump(&self.core.counters().loop_turns, 1);
        true
    }

    /// Runs until Shutdown arrives and every device is disconnected (or the grace runs out).
    pub fn run(mut self, stop: &std::sync::atomic::AtomicBool) {
        while self.turn(stop.load(std::sync::atomic::Ordering::Relaxed)) {}
    }
}
