//! Cross-shard rebalancing, the shard's side: choosing connections to move,
//! handing one off (its state leaves in a `Moving`; its socket by MSG_RING
//! into the other ring's fixed-file table, or as a plain fd inside), adopting
//! one that arrives, and forwarding pushes addressed to a connection after it
//! left.
//!
//! Owns the move protocol on both ends. Must never hand off a connection with
//! an operation in flight on its socket (the backend cancels the recv and
//! waits for the send first), and never drop a push: one that reaches the old
//! shard after the move follows the connection, in order behind it.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;

use super::conn::{
    Conn, FLAG_DIRTY, FLAG_DISPERSE, FLAG_MOVED, FLAG_REGISTERED, IO_CANCEL_SUBMITTED, IO_CLOSE_SUBMITTED, IO_MOVING,
    IO_RECV_ARMED, IO_SEND_IN_FLIGHT, Phase,
};
use super::core::Core;
use super::counters::{CloseReason, bump};
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
    pub(super) outgoing: Vec<MoveOut>,
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
}

/// Connections chosen to move and not yet handed off, at most (per shard).
pub const MOVES_OUTGOING_MAX: usize = 65_536;
/// Commands waiting for room in another shard's mailbox, at most.
pub const OUTBOX_COMMANDS_MAX: usize = 262_144;

fn g24(generation: u32) -> u32 {
    generation & 0x00FF_FFFF
}

impl Core {
    /// Command::Move: marks up to `count` connections to leave for shard `to`.
    pub(super) fn choose_moves(&mut self, to: u16, count: u32, hold_ms: u64) {
        if to == self.shard_id || to as usize >= self.env.peers.all().len() || self.is_shutting_down() {
            return;
        }
        self.move_hold_ms = hold_ms;
        let room = MOVES_OUTGOING_MAX.saturating_sub(self.moves.outgoing.len());
        let wanted = (count as usize).min(room);
        let mut chosen = 0;
        for (key, c) in self.conns.iter_mut() {
            if chosen == wanted {
                break;
            }
            let movable = c.phase == Phase::Connected
                && c.flags & (FLAG_REGISTERED | FLAG_MOVED) == FLAG_REGISTERED
                && c.client_id.is_some()
                && c.io_flags & (IO_MOVING | IO_CLOSE_SUBMITTED) == 0;
            if !movable {
                continue;
            }
            c.io_flags |= IO_MOVING;
            self.moves.outgoing.push(MoveOut {
                key: key as u32,
                generation: c.generation,
                to,
            });
            chosen += 1;
        }
    }

    /// Takes the chosen connections (the backend advances and puts back the rest).
    pub fn take_moves(&mut self) -> Vec<MoveOut> {
        std::mem::take(&mut self.moves.outgoing)
    }

    pub fn put_moves(&mut self, moves: Vec<MoveOut>) {
        debug_assert!(self.moves.outgoing.is_empty());
        self.moves.outgoing = moves;
    }

    /// Where the move of `m` stands.
    pub fn move_step(&mut self, m: &MoveOut) -> MoveStep {
        let Some(c) = self.conns.get_mut(m.key as usize) else {
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
        MoveStep::Ready
    }

    /// Gives up moving `m` (the destination cannot take it): the connection
    /// stays; the backend re-arms its recv and flushes its output.
    pub fn abandon_move(&mut self, m: &MoveOut) {
        if let Some(c) = self.conns.get_mut(m.key as usize)
            && c.generation == m.generation
        {
            c.io_flags &= !(IO_MOVING | IO_CANCEL_SUBMITTED);
            bump(&self.counters.move_failures, 1);
            self.mark_dirty(m.key);
        }
    }

    /// Takes the connection out of this shard: its slot is freed, its timers
    /// cancelled, and pushes addressed to it from now on follow it to `to`.
    /// With `fd`, the socket travels inside (plain fd backends); without, the
    /// backend passes the direct descriptor and then calls `send_moving` (or
    /// `move_failed`).
    pub fn hand_off(&mut self, m: &MoveOut, fd: Option<OwnedFd>) -> Box<Moving> {
        let key = m.key;
        let disperse_at_ms = self
            .conns
            .get(key as usize)
            .filter(|c| c.flags & FLAG_DISPERSE != 0)
            .and_then(|_| self.wheel.deadline_ms(key));
        // Invariant, asserted in release too: the backend hands off only what
        // `move_step` just found live and Ready.
        let mut conn = self.free_slot(key).expect("hand_off of a live connection");
        conn.flags &= !FLAG_DIRTY;
        conn.io_flags = 0;
        let from = Location {
            shard: self.shard_id,
            key,
            generation: conn.generation,
            persistent: conn.flags & super::conn::FLAG_PERSISTENT != 0,
        };
        self.counters.keepalive_census(conn.keepalive_s, -1);
        let id = (key, g24(conn.generation));
        self.moves.departed.insert(id, Departed { to: m.to, parked: None });
        self.moves
            .departed_expiry
            .push_back((id, self.now_ms + FORWARD_WINDOW_MS));
        Box::new(Moving {
            from,
            conn,
            disperse_at_ms,
            hold_ms: self.move_hold_ms,
            fd,
            held: Vec::new(),
        })
    }

    /// Keeps the state of a connection whose socket is in flight to another ring.
    pub fn park_moving(&mut self, moving: Box<Moving>) {
        let id = (moving.from.key, g24(moving.from.generation));
        if let Some(d) = self.moves.departed.get_mut(&id) {
            d.parked = Some(moving);
        }
    }

    /// The socket of the parked connection (key, generation24) reached the
    /// other ring at fixed-file index `io`: send its state after it. Returns
    /// the index it had in this ring (the backend drops that reference).
    pub fn moving_passed(&mut self, key: u32, generation_24: u32, io: u32) -> Option<u32> {
        let d = self.moves.departed.get_mut(&(key, generation_24))?;
        let to = d.to;
        let mut moving = d.parked.take()?;
        let old_io = std::mem::replace(&mut moving.conn.io, io);
        self.send_moving(to, moving);
        Some(old_io)
    }

    /// The socket could not be passed: the connection is adopted back here
    /// (`io` still names it in this ring). Returns its new key.
    pub fn move_failed(&mut self, key: u32, generation_24: u32) -> Option<u32> {
        let d = self.moves.departed.get_mut(&(key, generation_24))?;
        let moving = d.parked.take()?;
        d.to = self.shard_id;
        bump(&self.counters.move_failures, 1);
        let io = moving.conn.io;
        self.adopt(moving, Some(io))
    }

    /// Queues the state for the destination (behind anything already queued).
    pub fn send_moving(&mut self, to: u16, moving: Box<Moving>) {
        bump(&self.counters.connections_moved_out, 1);
        self.moves.outbox.push_back((to, Command::Adopt(moving)));
    }

    /// Posts queued cross-shard commands until a mailbox is full.
    pub fn post_outbox(&mut self) {
        while let Some((to, command)) = self.moves.outbox.pop_front() {
            let Some(h) = self.env.peers.all().get(to as usize) else {
                continue;
            };
            if let Err((_, command)) = h.mailbox.post(command) {
                self.moves.outbox.push_front((to, command));
                return;
            }
        }
    }

    /// A push for (key, generation) found no live connection: if it moved,
    /// it follows. Returns the push back when the connection did not move.
    pub(super) fn forward_if_moved(&mut self, key: u32, generation: u32, push: Push) -> Option<Push> {
        let Some(d) = self.moves.departed.get_mut(&(key, g24(generation))) else {
            return Some(push);
        };
        if let Some(parked) = d.parked.as_mut() {
            parked.held.push(push);
            return None;
        }
        if self.moves.outbox.len() >= OUTBOX_COMMANDS_MAX {
            return Some(push);
        }
        let from = Location {
            shard: self.shard_id,
            key,
            generation,
            persistent: false,
        };
        let to = d.to;
        self.moves.outbox.push_back((to, Command::PushMoved { from, push }));
        None
    }

    /// Command::PushMoved: a push for a connection that moved here.
    pub(super) fn push_moved(&mut self, from: Location, push: Push) {
        let here = self
            .moves
            .arrived
            .get(&(from.shard, from.key, g24(from.generation)))
            .copied();
        match here {
            Some((key, generation)) => self.command(Command::Push { key, generation, push }),
            None => self.not_delivered(&push, "device_gone"),
        }
    }

    /// Command::Adopt (or a failed move coming home): installs the connection
    /// in a fresh slot, re-points the registry, re-arms its timer, and queues
    /// the socket for the backend. `io` is its fixed-file index or fd when the
    /// socket is already in this ring.
    // Boxed in transit (it rides in a mailbox command); unpacked here.
    #[allow(clippy::boxed_local)]
    pub(super) fn adopt(&mut self, moving: Box<Moving>, io: Option<u32>) -> Option<u32> {
        let Moving {
            from,
            mut conn,
            disperse_at_ms,
            hold_ms,
            fd,
            held,
        } = *moving;
        let generation = self.next_generation();
        conn.generation = generation;
        conn.flags |= FLAG_MOVED;
        conn.io_flags = 0;
        if let Some(io) = io {
            conn.io = io;
        }
        let client_id = conn.client_id.clone();
        let persistent = conn.flags & super::conn::FLAG_PERSISTENT != 0;
        let keepalive_s = conn.keepalive_s;
        let has_output = conn.active.as_ref().is_some_and(|a| a.backlog_bytes() > 0);
        let deadline_ms = conn.last_activity_ms + keepalive_s as u64 * 1500;
        let key = self.conns.insert(conn) as u32;
        let timer_ms = match disperse_at_ms {
            Some(at) => at,
            None if keepalive_s > 0 => deadline_ms,
            // No keep-alive: nothing to time (the device may stay silent).
            None => 0,
        };
        if timer_ms > 0 {
            self.wheel.insert(key, timer_ms.max(self.now_ms));
        }
        self.counters.keepalive_census(keepalive_s, 1);
        bump(&self.counters.connections_open, 1);
        if from.shard != self.shard_id {
            bump(&self.counters.connections_moved_in, 1);
        }
        let old = (from.shard, from.key, g24(from.generation));
        self.moves.arrived.insert(old, (key, generation));
        let until_ms = self.now_ms + hold_ms.max(FORWARD_WINDOW_MS);
        self.moves.arrived_expiry.push_back((old, until_ms));
        self.moves.arrivals.push((key, fd));
        if has_output {
            self.mark_dirty(key);
        }
        let here = Location {
            shard: self.shard_id,
            key,
            generation,
            persistent,
        };
        let still_ours = client_id
            .as_deref()
            .is_some_and(|id| self.env.registry.relocate(id, from, here));
        if self.is_shutting_down() {
            self.disconnect(key, mqtt::reason::SERVER_SHUTTING_DOWN, CloseReason::ServerShutdown);
        } else if !still_ours {
            // Claimed by a new connection while moving: it was taken over.
            bump(&self.counters.sessions_taken_over, 1);
            self.disconnect(key, mqtt::reason::SESSION_TAKEN_OVER, CloseReason::SessionTakenOver);
        }
        for push in held {
            self.deliver(key, push);
        }
        Some(key)
    }

    /// Adopted connections whose socket the backend must take up (arm recv,
    /// register with epoll); a plain fd comes along when it travelled inside.
    pub fn take_arrivals(&mut self) -> Vec<(u32, Option<OwnedFd>)> {
        std::mem::take(&mut self.moves.arrivals)
    }

    /// Ends the hold on connections that arrived long enough ago, and the
    /// forwarding of pushes for those that left.
    pub(super) fn expire_moves(&mut self) {
        let now_ms = self.now_ms;
        while let Some(&(old, until_ms)) = self.moves.arrived_expiry.front() {
            if until_ms > now_ms {
                break;
            }
            self.moves.arrived_expiry.pop_front();
            if let Some((key, generation)) = self.moves.arrived.remove(&old)
                && let Some(c) = self.conns.get_mut(key as usize)
                && c.generation == generation
            {
                c.flags &= !FLAG_MOVED;
            }
        }
        while let Some(&(id, until_ms)) = self.moves.departed_expiry.front() {
            if until_ms > now_ms {
                break;
            }
            self.moves.departed_expiry.pop_front();
            match self.moves.departed.get(&id) {
                // Its MSG_RING completion is still due: look again later.
                Some(d) if d.parked.is_some() => {
                    self.moves.departed_expiry.push_back((id, now_ms + FORWARD_WINDOW_MS));
                }
                Some(_) => {
                    self.moves.departed.remove(&id);
                }
                None => {}
            }
        }
    }
}

const _: () = assert!(MOVES_OUTGOING_MAX <= limits::CONNECTIONS_PER_SHARD_MAX as usize);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::shard::counters::ShardCounters;
    use crate::shard::env::ShardEnv;
    use crate::shard::mailbox::{self, MailboxReceiver, Wake};
    use crate::shard::peers::ShardHandle;

    struct NoWake;
    impl Wake for NoWake {
        fn wake(&self) {}
    }

    /// Two sans-IO shards sharing one registry, and their mailboxes' receiving ends.
    fn two_shards() -> (ShardEnv, [Core; 2], [MailboxReceiver; 2]) {
        let (shared, _reports) = ShardEnv::standalone(Arc::new(crate::config::Config::default()));
        let mut handles = Vec::new();
        let mut receivers = Vec::new();
        let mut counters = Vec::new();
        for _ in 0..2 {
            let (tx, rx) = mailbox::mailbox(64, Arc::new(NoWake));
            let c = Arc::new(ShardCounters::default());
            handles.push(ShardHandle {
                mailbox: tx,
                counters: c.clone(),
                ring_fd: std::sync::atomic::AtomicI32::new(-1),
            });
            receivers.push(rx);
            counters.push(c);
        }
        shared.peers.install(handles);
        let cores = [
            Core::new(0, shared.clone(), counters[0].clone(), 16),
            Core::new(1, shared.clone(), counters[1].clone(), 16),
        ];
        let [r0, r1]: [MailboxReceiver; 2] = receivers.try_into().ok().expect("two");
        (shared, cores, [r0, r1])
    }

    fn connect(core: &mut Core, id: &str) -> (u32, u32) {
        let (key, generation) = core.accept(7).expect("room");
        let mut bytes = Vec::new();
        mqtt::Connect {
            protocol_version: mqtt::ProtocolVersion::V5,
            clean_start: true,
            keepalive_s: 30,
            client_id: id,
            username: None,
            password: None,
            will: None,
            properties: Default::default(),
        }
        .encode(mqtt::ProtocolVersion::V5, &mut bytes);
        core.receive(key, &bytes);
        (key, generation)
    }

    fn push(id: u64) -> Push {
        Push {
            id,
            qos: 1,
            payload: Bytes::from_static(b"hello"),
            tracked: false,
            control_topic: None,
            sent_as: None,
        }
    }

    fn out_len(core: &Core, key: u32) -> usize {
        core.conns[key as usize]
            .active
            .as_ref()
            .map_or(0, |a| a.backlog_bytes())
    }

    #[test]
    fn a_moved_connection_keeps_its_output_id_and_pushes() {
        let (shared, [mut a, mut b], [_ra, rb]) = two_shards();
        let (key, generation) = connect(&mut a, "dev-1");
        let connack_bytes = out_len(&a, key);
        assert!(connack_bytes > 0, "CONNACK queued, not yet sent");
        a.choose_moves(1, 5, 10_000);
        let chosen = a.take_moves();
        assert_eq!(chosen.len(), 1, "the only movable connection");
        assert_eq!(a.move_step(&chosen[0]), MoveStep::Ready);
        let moving = a.hand_off(&chosen[0], None);
        a.send_moving(1, moving);
        assert_eq!(a.connections(), 0);
        // A push routed by a registry lookup made before the move reaches the old shard.
        a.command(Command::Push {
            key,
            generation,
            push: push(1),
        });
        a.post_outbox();
        rb.rearm();
        let mut commands = 0;
        while let Some(c) = rb.try_recv() {
            b.command(c);
            commands += 1;
        }
        assert_eq!(commands, 2, "the state, then the forwarded push behind it");
        let here = shared.registry.lookup("dev-1").expect("still online");
        assert_eq!((here.shard, b.connections()), (1, 1));
        assert!(
            out_len(&b, here.key) > connack_bytes,
            "the unsent CONNACK and the PUBLISH"
        );
        assert_eq!(b.take_arrivals().len(), 1, "the backend takes up the socket");
        // A connection that just moved stays put for the hold time.
        b.choose_moves(0, 5, 10_000);
        assert!(b.take_moves().is_empty());
        assert_eq!(
            a.counters
                .connections_moved_out
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(
            b.counters
                .connections_moved_in
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn a_connection_claimed_while_moving_is_taken_over_on_arrival() {
        let (shared, [mut a, mut b], [_ra, rb]) = two_shards();
        let (key, _) = connect(&mut a, "dev-2");
        a.choose_moves(1, 1, 10_000);
        let chosen = a.take_moves();
        let moving = a.hand_off(&chosen[0], None);
        // The same client id connects again before the state arrives.
        let newcomer = Location {
            shard: 0,
            key: key + 1,
            generation: 99,
            persistent: false,
        };
        shared
            .registry
            .claim(&Arc::from("dev-2"), newcomer, false, std::time::Instant::now());
        a.send_moving(1, moving);
        a.post_outbox();
        rb.rearm();
        while let Some(c) = rb.try_recv() {
            b.command(c);
        }
        assert_eq!(shared.registry.lookup("dev-2"), Some(newcomer));
        let mut closing = Vec::new();
        b.take_closing(&mut closing);
        assert_eq!(closing.len(), 1, "the moved connection closes (0x8E)");
    }

    #[test]
    fn a_failed_pass_brings_the_connection_home() {
        let (shared, [mut a, _b], _) = two_shards();
        let (key, generation) = connect(&mut a, "dev-3");
        a.choose_moves(1, 1, 10_000);
        let chosen = a.take_moves();
        let moving = a.hand_off(&chosen[0], None);
        a.park_moving(moving);
        // A push arrives while the socket is in flight: it is held with the state.
        a.command(Command::Push {
            key,
            generation,
            push: push(2),
        });
        let home = a.move_failed(key, generation & 0x00FF_FFFF).expect("adopted back");
        let here = shared.registry.lookup("dev-3").expect("online");
        assert_eq!((here.shard, here.key), (0, home));
        assert!(out_len(&a, home) > 0, "the held push is sent");
        assert_eq!(a.counters.move_failures.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
