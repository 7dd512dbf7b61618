//! Cross-shard rebalancing, the shard's side: choosing connections to move,
//! handing one off (its state leaves in a `Moving`; its socket by MSG_RING
//! into the other ring's fixed-file table, or as a plain fd inside), adopting
//! one that arrives, and forwarding pushes addressed to a connection after it
//! left.
//!
//! Owns the move protocol on both ends (`Moves`: chosen, departed, arrived,
//! the ordered outbox), working on the `Connections` and `Sessions` it is
//! given. Must never hand off a connection with
//! an operation in flight on its socket (the backend cancels the recv and
//! waits for the send first), and never drop a push: one that reaches the old
//! shard after the move follows the connection, in order behind it.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;

use super::close;
use super::conn::{
    Conn, FLAG_DIRTY, FLAG_DISPERSE, FLAG_MOVED, FLAG_PERSISTENT, FLAG_REGISTERED, IO_CANCEL_SUBMITTED,
    IO_CLOSE_SUBMITTED, IO_MOVING, IO_RECV_ARMED, IO_SEND_IN_FLIGHT, IO_TLS, Phase,
};
use super::connections::Connections;
use super::counters::{CloseReason, bump};
use super::ctx::Ctx;
use super::deliver::Sessions;
use super::mailbox::Command;
use crate::delivery::Location;
use crate::delivery::Push;
use crate::limits;
use crate::protocol::mqtt;

/// How long the old shard forwards pushes for a connection that left, and the
/// new one recognises them (far beyond any registry lookup in flight).
pub const FORWARD_WINDOW_MS: u64 = 10_000;

/// A connection on its way between shards: everything but the socket.
pub struct Moving {
    /// Where it was (the registry still points there until adoption).
    pub from: Location,
    /// Its slot, as it was; `io` is the new ring's fixed-file index once passed.
    pub conn: Conn,
    /// The dispersal timer, when one was armed.
    pub disperse_at_ms: Option<u64>,
    /// No further move before this long after arrival.
    pub hold_ms: u64,
    /// The socket, when it travels as a plain fd (epoll, or a ring without
    /// direct descriptors).
    pub fd: Option<OwnedFd>,
    /// Pushes that reached the old shard while the socket was being passed.
    pub held: Vec<Push>,
}

impl std::fmt::Debug for Moving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moving")
            .field("from", &self.from)
            .field("held", &self.held.len())
            .finish()
    }
}

/// One chosen connection and where it goes.
#[derive(Clone, Copy, Debug)]
pub struct MoveOut {
    pub key: u32,
    pub generation: u32,
    pub to: u16,
}

/// What the backend should do next for a chosen connection.
#[derive(Debug, PartialEq, Eq)]
pub enum MoveStep {
    /// Closed or replaced meanwhile: forget it.
    Gone,
    /// Cancel its multishot recv (not yet submitted).
    CancelRecv,
    /// An operation is still outstanding (recv cancellation, send): wait.
    Wait,
    /// Nothing in flight: hand it off now.
    Ready,
}

/// A connection that left: where its pushes go.
struct Departed {
    to: u16,
    /// The state, while its socket is in flight to the other ring.
    parked: Option<Box<Moving>>,
}

/// The move protocol's state in one shard (both directions).
#[derive(Default)]
pub struct Moves {
    /// Chosen, not yet handed off.
    outgoing: Vec<MoveOut>,
    /// (key, generation24) of connections that left -> where to.
    departed: HashMap<(u32, u32), Departed>,
    departed_expiry: VecDeque<((u32, u32), u64)>,
    /// Commands to other shards, posted in order (a push forwarded after a move
    /// must never overtake the move itself).
    outbox: VecDeque<(u16, Command)>,
    /// Old location (shard, key, generation) -> (key, generation) here.
    arrived: HashMap<(u16, u32, u32), (u32, u32)>,
    arrived_expiry: VecDeque<((u16, u32, u32), u64)>,
    /// Adopted keys whose socket the backend must take up (plain fds inside).
    arrivals: Vec<(u32, Option<OwnedFd>)>,
    /// The hold time of the last Move command (carried by each connection moved).
    hold_ms: u64,
}

/// Connections chosen to move and not yet handed off, at most (per shard).
pub const MOVES_OUTGOING_MAX: usize = 65_536;
/// Commands waiting for room in another shard's mailbox, at most.
pub const OUTBOX_COMMANDS_MAX: usize = 262_144;

fn g24(generation: u32) -> u32 {
    generation & 0x00FF_FFFF
}

impl Moves {
    /// Command::Move: marks up to `count` connections to leave for shard `to`.
    pub(super) fn choose(&mut self, conns: &mut Connections, ctx: &Ctx, to: u16, count: u32, hold_ms: u64) {
        if to == ctx.shard_id || to as usize >= ctx.env.peers.all().len() || ctx.shutting_down {
            return;
        }
        self.hold_ms = hold_ms;
        let room = MOVES_OUTGOING_MAX.saturating_sub(self.outgoing.len());
        let wanted = (count as usize).min(room);
        let mut chosen = 0;
        for (key, c) in conns.slab.iter_mut() {
            if chosen == wanted {
                break;
            }
            let movable = c.phase == Phase::Connected
                && c.flags & (FLAG_REGISTERED | FLAG_MOVED) == FLAG_REGISTERED
                && c.client_id.is_some()
                // TLS connections stay: their rustls state does not travel.
                && c.io_flags & (IO_MOVING | IO_CLOSE_SUBMITTED | IO_TLS) == 0;
            if !movable {
                continue;
            }
            c.io_flags |= IO_MOVING;
            self.outgoing.push(MoveOut {
                key: key as u32,
                generation: c.generation,
                to,
            });
            chosen += 1;
        }
    }

    /// Takes the chosen connections (the backend advances and puts back the rest).
    pub(super) fn take_moves(&mut self) -> Vec<MoveOut> {
        std::mem::take(&mut self.outgoing)
    }

    pub(super) fn put_moves(&mut self, moves: Vec<MoveOut>) {
        debug_assert!(self.outgoing.is_empty());
        self.outgoing = moves;
    }

    /// Where the move of `m` stands.
    pub(super) fn step(conns: &mut Connections, m: &MoveOut) -> MoveStep {
        let Some(c) = conns.get_mut(m.key) else {
            return MoveStep::Gone;
        };
        if c.generation != m.generation || c.io_flags & IO_MOVING == 0 {
            return MoveStep::Gone;
        }
        if c.phase != Phase::Connected {
            // Closing meanwhile: the close path owns it now.
            c.io_flags &= !(IO_MOVING | IO_CANCEL_SUBMITTED);
            return MoveStep::Gone;
        }
        if c.io_flags & IO_RECV_ARMED != 0 {
            if c.io_flags & IO_CANCEL_SUBMITTED == 0 {
                c.io_flags |= IO_CANCEL_SUBMITTED;
                return MoveStep::CancelRecv;
            }
            return MoveStep::Wait;
        }
        if c.io_flags & IO_SEND_IN_FLIGHT != 0 {
            return MoveStep::Wait;
        }
        // An owed static PINGRESP travels as ordinary output.
        conns.owed_pingresp_to_output(m.key);
        MoveStep::Ready
    }

    /// Gives up moving `m` (the destination cannot take it): the connection
    /// stays; the backend re-arms its recv and flushes its output.
    pub(super) fn abandon(conns: &mut Connections, ctx: &Ctx, m: &MoveOut) {
        if let Some(c) = conns.get_mut(m.key)
            && c.generation == m.generation
        {
            c.io_flags &= !(IO_MOVING | IO_CANCEL_SUBMITTED);
            bump(&ctx.counters.move_failures, 1);
            conns.mark_dirty(m.key);
        }
    }

    /// Takes the connection out of this shard: its slot is freed, its timers
    /// cancelled, and pushes addressed to it from now on follow it to `to`.
    /// With `fd`, the socket travels inside (plain fd backends); without, the
    /// backend passes the direct descriptor and then calls `send_moving` (or
    /// `move_failed`).
    pub(super) fn hand_off(
        &mut self,
        conns: &mut Connections,
        ctx: &Ctx,
        m: &MoveOut,
        fd: Option<OwnedFd>,
    ) -> Box<Moving> {
        let key = m.key;
        let disperse_at_ms = conns
            .get(key)
            .filter(|c| c.flags & FLAG_DISPERSE != 0)
            .and_then(|_| conns.wheel.deadline_ms(key));
        // Invariant, asserted in release too: the backend hands off only what
        // `move_step` just found live and Ready.
        let mut conn = conns
            .free_slot(key, &ctx.counters)
            .expect("hand_off of a live connection");
        conn.flags &= !FLAG_DIRTY;
        conn.io_flags = 0;
        let from = Location {
            shard: ctx.shard_id,
            key,
            generation: conn.generation,
            persistent: conn.flags & FLAG_PERSISTENT != 0,
        };
        ctx.counters.keepalive_census(conn.keepalive_s, -1);
        let id = (key, g24(conn.generation));
        self.departed.insert(id, Departed { to: m.to, parked: None });
        self.departed_expiry.push_back((id, ctx.now_ms + FORWARD_WINDOW_MS));
        Box::new(Moving {
            from,
            conn,
            disperse_at_ms,
            hold_ms: self.hold_ms,
            fd,
            held: Vec::new(),
        })
    }

    /// Keeps the state of a connection whose socket is in flight to another ring.
    pub(super) fn park(&mut self, moving: Box<Moving>) {
        let id = (moving.from.key, g24(moving.from.generation));
        if let Some(d) = self.departed.get_mut(&id) {
            d.parked = Some(moving);
        }
    }

    /// The socket of the parked connection (key, generation24) reached the
    /// other ring at fixed-file index `io`: send its state after it. Returns
    /// the index it had in this ring (the backend drops that reference).
    pub(super) fn passed(&mut self, ctx: &Ctx, key: u32, generation_24: u32, io: u32) -> Option<u32> {
        let d = self.departed.get_mut(&(key, generation_24))?;
        let to = d.to;
        let mut moving = d.parked.take()?;
        let old_io = std::mem::replace(&mut moving.conn.io, io);
        self.send_moving(ctx, to, moving);
        Some(old_io)
    }

    /// The socket could not be passed: the parked state, to adopt back here
    /// (`io` still names it in this ring).
    pub(super) fn failed(&mut self, ctx: &Ctx, key: u32, generation_24: u32) -> Option<Box<Moving>> {
        let d = self.departed.get_mut(&(key, generation_24))?;
        let moving = d.parked.take()?;
        d.to = ctx.shard_id;
        bump(&ctx.counters.move_failures, 1);
        Some(moving)
    }

    /// Queues the state for the destination (behind anything already queued).
    pub(super) fn send_moving(&mut self, ctx: &Ctx, to: u16, moving: Box<Moving>) {
        bump(&ctx.counters.connections_moved_out, 1);
        self.outbox.push_back((to, Command::Adopt(moving)));
    }

    /// Posts queued cross-shard commands until a mailbox is full.
    pub(super) fn post_outbox(&mut self, ctx: &Ctx) {
        while let Some((to, command)) = self.outbox.pop_front() {
            let Some(h) = ctx.env.peers.all().get(to as usize) else {
                continue;
            };
            if let Err((_, command)) = h.mailbox.post(command) {
                self.outbox.push_front((to, command));
                return;
            }
        }
    }

    /// A push for (key, generation) found no live connection: if it moved,
    /// it follows. Returns the push back when the connection did not move.
    pub(super) fn forward_if_moved(&mut self, ctx: &Ctx, key: u32, generation: u32, push: Push) -> Option<Push> {
        let Some(d) = self.departed.get_mut(&(key, g24(generation))) else {
            return Some(push);
        };
        if let Some(parked) = d.parked.as_mut() {
            parked.held.push(push);
            return None;
        }
        if self.outbox.len() >= OUTBOX_COMMANDS_MAX {
            return Some(push);
        }
        let from = Location {
            shard: ctx.shard_id,
            key,
            generation,
            persistent: false,
        };
        let to = d.to;
        self.outbox.push_back((to, Command::PushMoved { from, push }));
        None
    }

    /// Command::PushMoved: where a connection that moved here from `from` is
    /// now (key, generation), if it arrived within the forwarding window.
    pub(super) fn arrived_from(&self, from: Location) -> Option<(u32, u32)> {
        self.arrived.get(&(from.shard, from.key, g24(from.generation))).copied()
    }

    /// Command::Adopt (or a failed move coming home): installs the connection
    /// in a fresh slot, re-points the registry, re-arms its timer, and queues
    /// the socket for the backend. `io` is its fixed-file index or fd when the
    /// socket is already in this ring.
    // Boxed in transit (it rides in a mailbox command); unpacked here.
    #[allow(clippy::boxed_local)]
    pub(super) fn adopt(
        &mut self,
        conns: &mut Connections,
        sessions: &mut Sessions,
        ctx: &Ctx,
        moving: Box<Moving>,
        io: Option<u32>,
    ) -> Option<u32> {
        let Moving {
            from,
            mut conn,
            disperse_at_ms,
            hold_ms,
            fd,
            held,
        } = *moving;
        let generation = conns.next_generation();
        conn.generation = generation;
        conn.flags |= FLAG_MOVED;
        conn.io_flags = 0;
        if let Some(io) = io {
            conn.io = io;
        }
        let client_id = conn.client_id.clone();
        let persistent = conn.flags & FLAG_PERSISTENT != 0;
        let keepalive_s = conn.keepalive_s;
        let has_output = conn.active.as_ref().is_some_and(|a| a.backlog_bytes() > 0);
        let deadline_ms = conn.last_activity_ms + keepalive_s as u64 * 1500;
        let key = conns.insert(conn, &ctx.counters);
        // A packet it had started is held here now: counted, and timed afresh (a
        // moved connection stays put for rebalance_hold_s, so this cannot repeat fast).
        let packet_timeout_ms = ctx.env.cfg.packet_complete_timeout_s as u64 * 1000;
        conns.account_partial(key, ctx.now_ms, packet_timeout_ms, false, &ctx.counters);
        let timer_ms = match disperse_at_ms {
            Some(at) => at,
            None if keepalive_s > 0 => deadline_ms,
            // No keep-alive: nothing to time (the device may stay silent).
            None => 0,
        };
        if timer_ms > 0 {
            conns.wheel.insert(key, timer_ms.max(ctx.now_ms));
        }
        ctx.counters.keepalive_census(keepalive_s, 1);
        if from.shard != ctx.shard_id {
            bump(&ctx.counters.connections_moved_in, 1);
        }
        let old = (from.shard, from.key, g24(from.generation));
        self.arrived.insert(old, (key, generation));
        let until_ms = ctx.now_ms + hold_ms.max(FORWARD_WINDOW_MS);
        self.arrived_expiry.push_back((old, until_ms));
        self.arrivals.push((key, fd));
        if has_output {
            conns.mark_dirty(key);
        }
        let here = Location {
            shard: ctx.shard_id,
            key,
            generation,
            persistent,
        };
        let still_ours = client_id
            .as_deref()
            .is_some_and(|id| ctx.env.registry.relocate(id, from, here));
        if ctx.shutting_down {
            close::disconnect(
                conns,
                ctx,
                key,
                mqtt::reason::SERVER_SHUTTING_DOWN,
                CloseReason::ServerShutdown,
            );
        } else if !still_ours {
            // Claimed by a new connection while moving: it was taken over.
            bump(&ctx.counters.sessions_taken_over, 1);
            close::disconnect(
                conns,
                ctx,
                key,
                mqtt::reason::SESSION_TAKEN_OVER,
                CloseReason::SessionTakenOver,
            );
        }
        for push in held {
            sessions.deliver(conns, ctx, key, push);
        }
        Some(key)
    }

    /// Adopted connections whose socket the backend must take up (arm recv,
    /// register with epoll); a plain fd comes along when it travelled inside.
    pub(super) fn take_arrivals(&mut self) -> Vec<(u32, Option<OwnedFd>)> {
        std::mem::take(&mut self.arrivals)
    }

    /// Ends the hold on connections that arrived long enough ago, and the
    /// forwarding of pushes for those that left.
    pub(super) fn expire(&mut self, conns: &mut Connections, now_ms: u64) {
        while let Some(&(old, until_ms)) = self.arrived_expiry.front() {
            if until_ms > now_ms {
                break;
            }
            self.arrived_expiry.pop_front();
            if let Some((key, generation)) = self.arrived.remove(&old)
                && let Some(c) = conns.get_mut(key)
                && c.generation == generation
            {
                c.flags &= !FLAG_MOVED;
            }
        }
        while let Some(&(id, until_ms)) = self.departed_expiry.front() {
            if until_ms > now_ms {
                break;
            }
            self.departed_expiry.pop_front();
            match self.departed.get(&id) {
                // Its MSG_RING completion is still due: look again later.
                Some(d) if d.parked.is_some() => {
                    self.departed_expiry.push_back((id, now_ms + FORWARD_WINDOW_MS));
                }
                Some(_) => {
                    self.departed.remove(&id);
                }
                None => {}
            }
        }
    }
}

const _: () = assert!(MOVES_OUTGOING_MAX <= limits::CONNECTIONS_PER_SHARD_MAX as usize);
