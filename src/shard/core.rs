//! The shard's sans-IO facade: what the event loops (io_uring, epoll) call on
//! accept, bytes received, send progress, timer expiry, mailbox command and
//! close. It composes the owners and routes each event to the one that owns
//! it: `Connections` (slab, wheel, output), `Sessions` (QoS 1 window),
//! `Moves` (cross-shard moves), `Control` (dispersal, relief), `Packets`
//! (the protocol state machine), `TlsConns` with `tls_path` (MQTT over
//! TLS: records in, plaintext to `Packets`, sealed output) and `close` (how
//! a connection ends).
//!
//! Owns the composition and the shard clock's advance. Must never hold
//! protocol or connection logic of its own, and never perform I/O: backends
//! feed it events and drain its dirty and closing lists.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::close;
use super::conn::{Conn, FLAG_DISPERSE, FLAG_FORCE_CLOSE, IO_TLS, Phase};
use super::connections::Connections;
use super::control::Control;
use super::counters::{CloseReason, ShardCounters, bump};
use super::ctx::Ctx;
use super::deliver::Sessions;
use super::env::ShardEnv;
use super::mailbox::Command;
use super::migrate::{MoveOut, MoveStep, Moves, Moving};
use super::packets::Packets;
use super::tls_conn::TlsConns;
use super::tls_path;
use crate::delivery::Push;
use crate::limits;
use crate::protocol::mqtt;

pub struct Core {
    pub shard_id: u16,
    ctx: Ctx,
    conns: Connections,
    sessions: Sessions,
    moves: Moves,
    control: Control,
    tls: TlsConns,
}

impl Core {
    pub fn new(shard_id: u16, env: ShardEnv, counters: Arc<ShardCounters>, capacity: u32) -> Core {
        let ctx = Ctx::new(shard_id, env, counters);
        Core {
            shard_id,
            conns: Connections::new(capacity, ctx.now_ms),
            ctx,
            sessions: Sessions::new(),
            moves: Moves::default(),
            control: Control::default(),
            tls: TlsConns::default(),
        }
    }

    /// Moves the shard clock to now.
    pub fn tick(&mut self) {
        self.ctx.tick();
    }

    /// Moves the shard clock to `now_ms` from the loop's `Io` clock (virtual
    /// in the simulation); never backwards.
    pub fn set_now_ms(&mut self, now_ms: u64) {
        self.ctx.now_ms = self.ctx.now_ms.max(now_ms);
    }

    pub fn now_ms(&self) -> u64 {
        self.ctx.now_ms
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.ctx.shutting_down
    }

    pub fn counters(&self) -> &ShardCounters {
        &self.ctx.counters
    }

    /// (handed out from the `Active` free list, allocated because it was empty).
    pub fn active_pool_hits_misses(&self) -> (u64, u64) {
        self.conns.pool.hits_misses()
    }

    /// How long the loop may sleep before the next timer is due.
    pub fn sleep_ms(&self) -> u64 {
        let next_ms = match (self.conns.wheel.next_expiry_ms(), self.conns.partial.next_expiry_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match next_ms {
            Some(t) => t.saturating_sub(self.ctx.now_ms).min(limits::LOOP_SLEEP_MS_MAX),
            None => limits::LOOP_SLEEP_MS_MAX,
        }
    }

    /// A socket was accepted. Returns (key, generation), or None when the shard
    /// is full or shutting down (the backend closes the socket).
    pub fn accept(&mut self, io: u32) -> Option<(u32, u32)> {
        let ctx = &self.ctx;
        bump(&ctx.counters.accepts, 1);
        let deadline_ms = ctx.now_ms + ctx.env.cfg.connect_timeout_s as u64 * 1000;
        let accepted = match ctx.shutting_down {
            true => None,
            false => self.conns.accept(io, ctx.now_ms, deadline_ms, &ctx.counters),
        };
        if accepted.is_none() {
            ctx.counters.close(CloseReason::ServerFull);
        }
        accepted
    }

    /// The connection `key` came in on the TLS listener: from now on its
    /// bytes go through its own rustls state (closed at once if TLS is off).
    pub fn start_tls(&mut self, key: u32) {
        tls_path::start(&mut self.tls, &mut self.conns, &self.ctx, key);
    }

    /// TLS connections this shard holds.
    pub fn tls_connections(&self) -> usize {
        self.tls.len()
    }

    fn is_tls(&self, key: u32) -> bool {
        self.conns.get(key).is_some_and(|c| c.io_flags & IO_TLS != 0)
    }

    /// The connection behind (key, generation), if it is still that one.
    pub fn conn(&self, key: u32, generation_24: u32) -> Option<&Conn> {
        self.conns
            .get(key)
            .filter(|c| crate::sys::user_data::generation_matches(c.generation, generation_24))
    }

    pub fn conn_mut(&mut self, key: u32) -> Option<&mut Conn> {
        self.conns.get_mut(key)
    }

    /// Bytes arrived for `key`.
    pub fn receive(&mut self, key: u32, data: &[u8]) {
        bump(&self.ctx.counters.bytes_received, data.len() as u64);
        if self.is_tls(key) {
            tls_path::pump(&mut self.tls, &mut self.conns, &mut self.sessions, &self.ctx, key, data);
            return;
        }
        Packets {
            conns: &mut self.conns,
            sessions: &mut self.sessions,
            ctx: &self.ctx,
        }
        .receive(key, data);
    }

    /// Starts closing: unregisters the client id (storing or forwarding its
    /// undelivered pushes), arms the linger timer, queues the key for the backend.
    pub fn begin_close(&mut self, key: u32, reason: CloseReason) {
        close::begin_close(&mut self.conns, &self.ctx, key, reason);
    }

    /// The peer closed or the socket failed: close without a farewell.
    pub fn peer_closed(&mut self, key: u32, reason: CloseReason) {
        close::peer_closed(&mut self.conns, &self.ctx, key, reason);
    }

    /// Whether the backend may close the socket now (last bytes flushed, or linger ran out).
    pub fn close_ready(&self, key: u32) -> bool {
        self.conns.close_ready(key)
    }

    /// The backend closed the socket and no operation is outstanding: free the slot.
    pub fn release(&mut self, key: u32) {
        self.tls.remove(key);
        self.conns.release(key, &self.ctx.counters);
    }

    /// Keys that gained output since the last call (each once).
    pub fn take_dirty(&mut self, into: &mut Vec<u32>) {
        self.conns.take_dirty(into);
    }

    /// Keys that entered Closing (or whose linger ran out) since the last call.
    pub fn take_closing(&mut self, into: &mut Vec<u32>) {
        self.conns.take_closing(into);
    }

    /// The next bytes to hand the kernel for `key`, or None if nothing is
    /// waiting or a send is in flight. Marks a send in flight.
    pub fn next_send(&mut self, key: u32) -> Option<&[u8]> {
        if self.is_tls(key) {
            // Seal what the MQTT side queued (and any session tickets due).
            tls_path::pump(&mut self.tls, &mut self.conns, &mut self.sessions, &self.ctx, key, &[]);
        }
        self.conns.next_send(key)
    }

    /// The owed PINGRESP, to send from its static buffer (marks a send in
    /// flight until `static_send_issued`). None if none is owed.
    pub fn take_owed_pingresp(&mut self, key: u32) -> Option<&'static [u8]> {
        self.conns.take_owed_pingresp(key)
    }

    /// The owed PINGRESP becomes ordinary output (no static sends here).
    pub fn owed_pingresp_to_output(&mut self, key: u32) {
        self.conns.owed_pingresp_to_output(key);
    }

    /// The static send of `key` has been issued: other sends may follow.
    pub fn static_send_issued(&mut self, key: u32) {
        bump(
            &self.ctx.counters.bytes_sent,
            crate::protocol::mqtt::PINGRESP.len() as u64,
        );
        self.conns.static_send_issued(key);
    }

    /// The static send of `key` failed: -EAGAIN (the socket's buffer is full)
    /// or short (`result` bytes taken) queue the rest as ordinary output; any
    /// other error closes the connection. (`bytes_sent` counted it whole.)
    pub fn static_send_failed(&mut self, key: u32, result: i32) {
        if result >= 0 || result == -libc::EAGAIN {
            bump(&self.ctx.counters.static_send_retries, 1);
            self.conns.static_send_short(key, result.max(0) as usize);
        } else {
            self.peer_closed(key, CloseReason::IoError);
        }
    }

    /// The kernel took `n_bytes` of the send. Returns whether more is waiting.
    pub fn send_done(&mut self, key: u32, n_bytes: usize) -> bool {
        bump(&self.ctx.counters.bytes_sent, n_bytes as u64);
        self.conns.send_done(key, n_bytes)
    }

    /// The send failed or could not proceed now (the tail stays queued).
    pub fn send_stopped(&mut self, key: u32) {
        self.conns.send_stopped(key);
    }

    /// Fires due timers: connect timeouts, keep-alive expiry, close linger.
    pub fn run_timers(&mut self) {
        let now_ms = self.ctx.now_ms;
        self.moves.expire(&mut self.conns, now_ms);
        let expired = self.conns.take_expired(now_ms);
        let (conns, ctx) = (&mut self.conns, &self.ctx);
        for &key in &expired {
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            match conn.phase {
                Phase::AwaitConnect => close::begin_close(conns, ctx, key, CloseReason::ConnectTimeout),
                Phase::Connected => {
                    if conn.keepalive_s == 0 {
                        continue;
                    }
                    let deadline_ms = conn.last_activity_ms + conn.keepalive_s as u64 * 1500;
                    if now_ms >= deadline_ms {
                        close::disconnect(
                            conns,
                            ctx,
                            key,
                            mqtt::reason::KEEP_ALIVE_TIMEOUT,
                            CloseReason::KeepAliveTimeout,
                        );
                    } else if conn.flags & FLAG_DISPERSE != 0 {
                        Control::send_due(conns, &mut self.sessions, ctx, key);
                    } else {
                        conns.wheel.insert(key, deadline_ms);
                    }
                }
                Phase::Closing => {
                    conn.flags |= FLAG_FORCE_CLOSE;
                    conns.push_closing(key);
                }
            }
        }
        self.conns.put_expired(expired);
        self.expire_partial_packets(now_ms);
    }

    /// Closes the connections whose started packet did not complete within
    /// `packet_complete_timeout_s` (whatever their keep-alive).
    fn expire_partial_packets(&mut self, now_ms: u64) {
        let expired = self.conns.partial.take_expired(now_ms);
        let timeout_ms = self.ctx.env.cfg.packet_complete_timeout_s as u64 * 1000;
        for &key in &expired {
            let due = self.conns.get(key).is_some_and(|c| {
                c.phase != Phase::Closing
                    && c.active
                        .as_ref()
                        .is_some_and(|a| !a.partial.is_empty() && now_ms >= a.partial_since_ms + timeout_ms)
            });
            if due {
                close::partial_packet_timed_out(&mut self.conns, &self.ctx, key);
            }
        }
        self.conns.partial.put_expired(expired);
    }

    /// Handles one mailbox command.
    pub fn command(&mut self, command: Command) {
        match command {
            Command::Push { key, generation, push } => self.push(key, generation, push),
            Command::TakeOver {
                key,
                generation,
                new_owner: _,
            } => close::take_over(&mut self.conns, &self.ctx, key, generation),
            Command::Disperse { hot_seconds } => self.control.disperse(&mut self.conns, &self.ctx, &hot_seconds),
            Command::Relieve {
                shed_milli_per_s,
                keepalive_max_s,
            } => self.control.relieve(
                &mut self.conns,
                &self.ctx,
                shed_milli_per_s as f64 / 1000.0,
                keepalive_max_s,
            ),
            Command::Move { to, count, hold_ms } => self.moves.choose(&mut self.conns, &self.ctx, to, count, hold_ms),
            Command::Adopt(moving) => {
                self.moves
                    .adopt(&mut self.conns, &mut self.sessions, &self.ctx, moving, None);
            }
            Command::PushMoved { from, push } => match self.moves.arrived_from(from) {
                Some((key, generation)) => self.push(key, generation, push),
                None => self.ctx.not_delivered(&push, "device_gone"),
            },
            Command::Shutdown => self.shutdown(),
        }
    }

    /// A push for (key, generation): delivered if it is still connected here,
    /// forwarded if it moved, else reported not delivered.
    fn push(&mut self, key: u32, generation: u32, push: Push) {
        let live = self
            .conns
            .get(key)
            .is_some_and(|c| c.generation == generation && c.phase == Phase::Connected);
        if live {
            self.sessions.deliver(&mut self.conns, &self.ctx, key, push);
        } else if let Some(push) = self.moves.forward_if_moved(&self.ctx, key, generation, push) {
            self.ctx.not_delivered(&push, "device_gone");
        }
    }

    /// Disconnects every device (MQTT 5: 0x8B server shutting down).
    pub fn shutdown(&mut self) {
        self.ctx.shutting_down = true;
        let keys: Vec<u32> = self.conns.slab.iter().map(|(k, _)| k as u32).collect();
        for key in keys {
            close::disconnect(
                &mut self.conns,
                &self.ctx,
                key,
                mqtt::reason::SERVER_SHUTTING_DOWN,
                CloseReason::ServerShutdown,
            );
        }
    }

    /// Takes the connections chosen to move (the backend advances and puts back the rest).
    pub fn take_moves(&mut self) -> Vec<MoveOut> {
        self.moves.take_moves()
    }

    pub fn put_moves(&mut self, moves: Vec<MoveOut>) {
        self.moves.put_moves(moves);
    }

    /// Where the move of `m` stands.
    pub fn move_step(&mut self, m: &MoveOut) -> MoveStep {
        Moves::step(&mut self.conns, m)
    }

    /// Gives up moving `m`: the connection stays; the backend re-arms its
    /// recv and flushes its output.
    pub fn abandon_move(&mut self, m: &MoveOut) {
        Moves::abandon(&mut self.conns, &self.ctx, m);
    }

    /// Takes the connection out of this shard (see `Moves::hand_off`).
    pub fn hand_off(&mut self, m: &MoveOut, fd: Option<OwnedFd>) -> Box<Moving> {
        self.moves.hand_off(&mut self.conns, &self.ctx, m, fd)
    }

    /// Keeps the state of a connection whose socket is in flight to another ring.
    pub fn park_moving(&mut self, moving: Box<Moving>) {
        self.moves.park(moving);
    }

    /// The parked connection's socket reached the other ring at `io`: its
    /// state follows. Returns the index it had in this ring.
    pub fn moving_passed(&mut self, key: u32, generation_24: u32, io: u32) -> Option<u32> {
        self.moves.passed(&self.ctx, key, generation_24, io)
    }

    /// The socket could not be passed: the connection is adopted back here.
    /// Returns its new key.
    pub fn move_failed(&mut self, key: u32, generation_24: u32) -> Option<u32> {
        let moving = self.moves.failed(&self.ctx, key, generation_24)?;
        let io = moving.conn.io;
        self.moves
            .adopt(&mut self.conns, &mut self.sessions, &self.ctx, moving, Some(io))
    }

    /// Queues the state for the destination (behind anything already queued).
    pub fn send_moving(&mut self, to: u16, moving: Box<Moving>) {
        self.moves.send_moving(&self.ctx, to, moving);
    }

    /// Posts queued cross-shard commands until a mailbox is full.
    pub fn post_outbox(&mut self) {
        self.moves.post_outbox(&self.ctx);
    }

    /// Adopted connections whose socket the backend must take up.
    pub fn take_arrivals(&mut self) -> Vec<(u32, Option<OwnedFd>)> {
        self.moves.take_arrivals()
    }
}
