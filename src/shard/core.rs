//! The shard's sans-IO heart: the connection slab, the timer wheel, and what
//! happens on accept, bytes received, timer expiry, mailbox command and close.
//!
//! Owns connection lifecycles. Must never perform I/O: backends (io_uring,
//! epoll) feed it events and drain its dirty and closing lists.

use std::sync::Arc;
use std::time::Instant;

use slab::Slab;

use super::conn::{Conn, FLAG_DIRTY, FLAG_FORCE_CLOSE, FLAG_PERSISTENT, FLAG_REGISTERED, IO_SEND_IN_FLIGHT, Phase};
use super::counters::{CloseReason, ProtocolErrorKind, ShardCounters, bump};
use super::mailbox::Command;
use super::wheel::TimerWheel;
use crate::delivery::Location;
use crate::delivery::Push;
use crate::gateway::Shared;
use crate::limits;
use crate::protocol::mqtt::{self, DecodeError, Disconnect};
use crate::registry::Release;

pub struct Core {
    pub shard_id: u16,
    pub(super) shared: Arc<Shared>,
    pub(super) conns: Slab<Conn>,
    pub(super) wheel: TimerWheel,
    pub(super) counters: Arc<ShardCounters>,
    epoch: Instant,
    pub(super) now_ms: u64,
    capacity: u32,
    next_generation: u32,
    dirty: Vec<u32>,
    closing: Vec<u32>,
    expired: Vec<u32>,
    pub(super) topic_scratch: String,
    shutting_down: bool,
    /// Cross-shard moves in both directions.
    pub(super) moves: super::migrate::Moves,
    /// The hold time of the last Move command (carried by each connection moved).
    pub(super) move_hold_ms: u64,
}

/// Result of handling one frame: keep reading, or stop (the connection closes).
pub(super) enum Flow {
    Continue,
    Stop,
}

impl Core {
    pub fn new(shard_id: u16, shared: Arc<Shared>, counters: Arc<ShardCounters>, capacity: u32) -> Core {
        let epoch = shared.started;
        let now_ms = epoch.elapsed().as_millis() as u64;
        Core {
            shard_id,
            shared,
            conns: Slab::with_capacity(0),
            wheel: TimerWheel::new(capacity, now_ms),
            counters,
            epoch,
            now_ms,
            capacity,
            next_generation: 1,
            dirty: Vec::with_capacity(1024),
            closing: Vec::with_capacity(1024),
            expired: Vec::with_capacity(limits::EXPIRED_PER_TURN_MAX),
            topic_scratch: String::with_capacity(256),
            shutting_down: false,
            moves: Default::default(),
            move_hold_ms: 0,
        }
    }

    /// Moves the shard clock to now.
    pub fn tick(&mut self) {
        self.now_ms = self.epoch.elapsed().as_millis() as u64;
    }

    /// Moves the shard clock to `now_ms` from the loop's `Io` clock (virtual
    /// in the simulation); never backwards.
    pub fn set_now_ms(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    pub fn counters(&self) -> &ShardCounters {
        &self.counters
    }

    /// How long the loop may sleep before the next timer is due.
    pub fn sleep_ms(&self) -> u64 {
        match self.wheel.next_expiry_ms() {
            Some(t) => t.saturating_sub(self.now_ms).min(limits::LOOP_SLEEP_MS_MAX),
            None => limits::LOOP_SLEEP_MS_MAX,
        }
    }

    /// A socket was accepted. Returns (key, generation), or None when the shard
    /// is full or shutting down (the backend closes the socket).
    pub fn accept(&mut self, io: u32) -> Option<(u32, u32)> {
        bump(&self.counters.accepts, 1);
        if self.shutting_down || self.conns.len() as u32 >= self.capacity {
            self.counters.close(CloseReason::ServerFull);
            return None;
        }
        let generation = self.next_generation();
        let key = self.conns.insert(Conn::new(io, generation, self.now_ms)) as u32;
        let deadline_ms = self.now_ms + self.shared.cfg.connect_timeout_s as u64 * 1000;
        self.wheel.insert(key, deadline_ms);
        bump(&self.counters.connections_open, 1);
        Some((key, generation))
    }

    /// A fresh slot generation (never 0).
    pub(super) fn next_generation(&mut self) -> u32 {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        generation
    }

    /// Queues `key` for the backend's next send (once).
    pub(super) fn mark_dirty(&mut self, key: u32) {
        if let Some(conn) = self.conns.get_mut(key as usize)
            && conn.flags & FLAG_DIRTY == 0
        {
            conn.flags |= FLAG_DIRTY;
            self.dirty.push(key);
        }
    }

    /// The connection behind (key, generation), if it is still that one.
    pub fn conn(&self, key: u32, generation_24: u32) -> Option<&Conn> {
        self.conns
            .get(key as usize)
            .filter(|c| crate::sys::user_data::generation_matches(c.generation, generation_24))
    }

    pub fn conn_mut(&mut self, key: u32) -> Option<&mut Conn> {
        self.conns.get_mut(key as usize)
    }

    /// Bytes arrived for `key`.
    pub fn receive(&mut self, key: u32, data: &[u8]) {
        bump(&self.counters.bytes_received, data.len() as u64);
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.phase == Phase::Closing {
            return;
        }
        conn.last_activity_ms = self.now_ms;
        let has_partial = conn.active.as_ref().is_some_and(|a| !a.partial.is_empty());
        if has_partial {
            let mut partial = std::mem::take(&mut conn.active().partial);
            partial.extend_from_slice(data);
            let consumed = self.process(key, &partial);
            if let Some(consumed) = consumed {
                partial.drain(..consumed);
                if let Some(c) = self.conns.get_mut(key as usize)
                    && c.phase != Phase::Closing
                    && !partial.is_empty()
                {
                    c.active().partial = partial;
                }
            }
        } else if let Some(consumed) = self.process(key, data)
            && consumed < data.len()
            && let Some(c) = self.conns.get_mut(key as usize)
        {
            c.active().partial.extend_from_slice(&data[consumed..]);
        }
        if let Some(c) = self.conns.get_mut(key as usize) {
            c.shrink_if_idle();
        }
    }

    /// Handles every whole frame in `buf`; returns the bytes consumed, or None
    /// if the connection is closing.
    fn process(&mut self, key: u32, buf: &[u8]) -> Option<usize> {
        let max_packet_bytes = self.shared.cfg.max_packet_bytes;
        let mut pos = 0;
        while pos < buf.len() {
            let header = match mqtt::check_frame(&buf[pos..], max_packet_bytes) {
                Ok(h) => h,
                Err(DecodeError::Incomplete { .. }) => break,
                Err(e) => {
                    self.decode_failed(key, e);
                    return None;
                }
            };
            let total = header.total_len();
            if buf.len() - pos < total {
                break;
            }
            if let Flow::Stop = self.handle_frame(key, &buf[pos..pos + total]) {
                return None;
            }
            pos += total;
        }
        Some(pos)
    }

    /// A frame (or its header) was refused by the codec.
    pub(super) fn decode_failed(&mut self, key: u32, error: DecodeError) {
        let kind = match error {
            DecodeError::TooLarge { .. } => ProtocolErrorKind::TooLarge,
            DecodeError::UnsupportedProtocolVersion { .. } => ProtocolErrorKind::UnsupportedProtocolVersion,
            DecodeError::UnsupportedPacket { .. } => ProtocolErrorKind::UnsupportedPacket,
            DecodeError::Incomplete { .. } => ProtocolErrorKind::TruncatedAtClose,
            DecodeError::Malformed(_) => ProtocolErrorKind::Malformed,
        };
        let Some(conn) = self.conns.get(key as usize) else {
            return;
        };
        if conn.phase == Phase::AwaitConnect {
            self.counters.protocol_error(kind);
            if let DecodeError::UnsupportedProtocolVersion { .. } = error {
                // Answer in 3.1.1 form (return code 1), which every client understands.
                let ack = mqtt::ConnAck {
                    session_present: false,
                    reason: mqtt::reason::UNSUPPORTED_PROTOCOL_VERSION,
                    properties: Default::default(),
                };
                self.queue_packet(key, |out| {
                    ack.encode(mqtt::ProtocolVersion::V311, out);
                });
            }
            self.begin_close(key, CloseReason::ProtocolError);
        } else {
            self.protocol_error(key, kind, error.reason_code());
        }
    }

    /// Closes a connected device for a protocol violation: MQTT 5 gets a
    /// DISCONNECT with `reason`, 3.1.1 just the close.
    pub(super) fn protocol_error(&mut self, key: u32, kind: ProtocolErrorKind, reason: u8) {
        self.counters.protocol_error(kind);
        self.disconnect(key, reason, CloseReason::ProtocolError);
    }

    /// Sends DISCONNECT(reason) to an MQTT 5 device, then closes.
    pub(super) fn disconnect(&mut self, key: u32, reason: u8, why: CloseReason) {
        let Some(conn) = self.conns.get(key as usize) else {
            return;
        };
        if conn.is_v5() && conn.phase == Phase::Connected {
            let d = Disconnect {
                reason,
                session_expiry_interval_s: None,
                reason_string: None,
                server_reference: None,
            };
            self.queue_packet(key, |out| {
                d.encode(mqtt::ProtocolVersion::V5, out);
            });
        }
        self.begin_close(key, why);
    }

    /// Appends an encoded packet to the connection's output and marks it dirty.
    pub(super) fn queue_packet(&mut self, key: u32, encode: impl FnOnce(&mut Vec<u8>)) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        encode(&mut conn.active().out);
        self.mark_dirty(key);
    }

    /// Starts closing: unregisters the client id (storing or forwarding its
    /// undelivered pushes), arms the linger timer, queues the key for the backend.
    pub fn begin_close(&mut self, key: u32, reason: CloseReason) {
        let now_ms = self.now_ms;
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.phase == Phase::Closing {
            return;
        }
        let was_connected = conn.phase == Phase::Connected;
        conn.phase = Phase::Closing;
        self.counters.close(reason);
        if reason != CloseReason::Overload
            && let Some(id) = conn.client_id.as_deref()
        {
            // Ended for another reason: relief may disconnect this device next time.
            self.shared.relieved.forget(id);
        }
        if was_connected {
            self.counters.keepalive_census(conn.keepalive_s, -1);
        }
        let mut pending: Vec<Push> = Vec::new();
        if let Some(a) = conn.active.as_mut() {
            a.partial = Vec::new();
            pending.extend(a.inflight.drain(..).map(|i| Push {
                sent_as: Some(i.packet_id),
                ..i.push
            }));
            pending.extend(a.queued.drain(..));
        }
        let registered = conn.flags & FLAG_REGISTERED != 0;
        let persistent = conn.flags & FLAG_PERSISTENT != 0;
        let location = Location {
            shard: self.shard_id,
            key,
            generation: conn.generation,
            persistent,
        };
        let client_id = conn.client_id.clone();
        let expiry_s = conn.session_expiry_s.min(self.shared.cfg.session_expiry_max_s);
        self.wheel.insert(key, now_ms + limits::CLOSE_LINGER_MS);
        self.closing.push(key);
        if !registered {
            for push in &pending {
                self.not_delivered(push, "connection_closed");
            }
            return;
        }
        let Some(client_id) = client_id else { return };
        let keep_until =
            (persistent && expiry_s > 0).then(|| Instant::now() + std::time::Duration::from_secs(expiry_s as u64));
        match self
            .shared
            .registry
            .release(&client_id, location, pending.clone(), keep_until)
        {
            Release::Removed {
                session_stored: true, ..
            } => {
                // Kept in the MQTT session: redelivered with DUP and the same packet id
                // when the device resumes it; the push service waits for that PUBACK.
                for push in pending.iter().filter(|p| p.tracked) {
                    self.shared.report(crate::delivery::DeliveryEvent::NotDelivered {
                        push_id: push.id,
                        reason: crate::delivery::HELD_IN_SESSION,
                    });
                }
            }
            Release::Replaced(new_owner) if new_owner.persistent => {
                // A new connection, new packet ids: not a redelivery on this session.
                for push in pending {
                    self.shared
                        .route_to(new_owner, Push { sent_as: None, ..push }, &self.counters);
                }
            }
            Release::Removed {
                session_stored: false, ..
            }
            | Release::Absent
            | Release::Replaced(_) => {
                for push in &pending {
                    self.not_delivered(push, "connection_closed");
                }
            }
        }
    }

    /// Tells the push service a tracked push did not reach the device.
    pub(super) fn not_delivered(&self, push: &Push, reason: &'static str) {
        bump(&self.counters.pushes_dropped, 1);
        if push.tracked {
            self.shared.report(crate::delivery::DeliveryEvent::NotDelivered {
                push_id: push.id,
                reason,
            });
        }
    }

    /// The peer closed or the socket failed: close without a farewell.
    pub fn peer_closed(&mut self, key: u32, reason: CloseReason) {
        if let Some(conn) = self.conns.get(key as usize)
            && conn.phase != Phase::Closing
        {
            if conn.active.as_ref().is_some_and(|a| !a.partial.is_empty()) {
                self.counters.protocol_error(ProtocolErrorKind::TruncatedAtClose);
            }
            if let Some(c) = self.conns.get_mut(key as usize)
                && let Some(a) = c.active.as_mut()
            {
                a.out.clear();
            }
            self.begin_close(key, reason);
        }
    }

    /// Whether the backend may close the socket now (last bytes flushed, or linger ran out).
    pub fn close_ready(&self, key: u32) -> bool {
        let Some(conn) = self.conns.get(key as usize) else {
            return false;
        };
        if conn.phase != Phase::Closing {
            return false;
        }
        if conn.flags & FLAG_FORCE_CLOSE != 0 {
            return true;
        }
        conn.io_flags & IO_SEND_IN_FLIGHT == 0 && conn.active.as_ref().is_none_or(|a| a.backlog_bytes() == 0)
    }

    /// The backend closed the socket and no operation is outstanding: free the slot.
    pub fn release(&mut self, key: u32) {
        self.free_slot(key);
    }

    /// Takes the connection out of its slot: its timer cancelled, the open
    /// gauge lowered. None if the slot is empty.
    pub(super) fn free_slot(&mut self, key: u32) -> Option<Conn> {
        if !self.conns.contains(key as usize) {
            return None;
        }
        self.wheel.cancel(key);
        let conn = self.conns.remove(key as usize);
        let open = self
            .counters
            .connections_open
            .load(std::sync::atomic::Ordering::Relaxed);
        self.counters
            .connections_open
            .store(open.saturating_sub(1), std::sync::atomic::Ordering::Relaxed);
        Some(conn)
    }

    /// Keys that gained output since the last call (each once).
    pub fn take_dirty(&mut self, into: &mut Vec<u32>) {
        into.clear();
        std::mem::swap(&mut self.dirty, into);
        for &key in into.iter() {
            if let Some(c) = self.conns.get_mut(key as usize) {
                c.flags &= !FLAG_DIRTY;
            }
        }
    }

    /// Keys that entered Closing (or whose linger ran out) since the last call.
    pub fn take_closing(&mut self, into: &mut Vec<u32>) {
        into.clear();
        std::mem::swap(&mut self.closing, into);
    }

    /// The next bytes to hand the kernel for `key`, or None if nothing is
    /// waiting or a send is in flight. Marks a send in flight.
    pub fn next_send(&mut self, key: u32) -> Option<&[u8]> {
        let conn = self.conns.get_mut(key as usize)?;
        if conn.io_flags & IO_SEND_IN_FLIGHT != 0 {
            return None;
        }
        let a = conn.active.as_mut()?;
        if a.sent_bytes == a.sending.len() {
            if a.out.is_empty() {
                return None;
            }
            a.sending.clear();
            a.sent_bytes = 0;
            std::mem::swap(&mut a.sending, &mut a.out);
        }
        conn.io_flags |= IO_SEND_IN_FLIGHT;
        Some(&a.sending[a.sent_bytes..])
    }

    /// The kernel took `n_bytes` of the send. Returns whether more is waiting.
    pub fn send_done(&mut self, key: u32, n_bytes: usize) -> bool {
        bump(&self.counters.bytes_sent, n_bytes as u64);
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return false;
        };
        conn.io_flags &= !IO_SEND_IN_FLIGHT;
        let Some(a) = conn.active.as_mut() else { return false };
        a.sent_bytes = (a.sent_bytes + n_bytes).min(a.sending.len());
        if a.sent_bytes == a.sending.len() {
            a.sending.clear();
            a.sent_bytes = 0;
            if a.sending.capacity() > 4096 {
                a.sending = Vec::new();
            }
        }
        let more = a.backlog_bytes() > 0;
        conn.shrink_if_idle();
        more
    }

    /// The send failed or could not proceed now (the tail stays queued).
    pub fn send_stopped(&mut self, key: u32) {
        if let Some(conn) = self.conns.get_mut(key as usize) {
            conn.io_flags &= !IO_SEND_IN_FLIGHT;
        }
    }

    /// Fires due timers: connect timeouts, keep-alive expiry, close linger.
    pub fn run_timers(&mut self) {
        self.expire_moves();
        let mut expired = std::mem::take(&mut self.expired);
        expired.clear();
        self.wheel
            .advance(self.now_ms, limits::EXPIRED_PER_TURN_MAX, &mut expired);
        for &key in &expired {
            let Some(conn) = self.conns.get_mut(key as usize) else {
                continue;
            };
            match conn.phase {
                Phase::AwaitConnect => self.begin_close(key, CloseReason::ConnectTimeout),
                Phase::Connected => {
                    if conn.keepalive_s == 0 {
                        continue;
                    }
                    let deadline_ms = conn.last_activity_ms + conn.keepalive_s as u64 * 1500;
                    if self.now_ms >= deadline_ms {
                        self.disconnect(key, mqtt::reason::KEEP_ALIVE_TIMEOUT, CloseReason::KeepAliveTimeout);
                    } else if conn.flags & super::conn::FLAG_DISPERSE != 0 {
                        self.send_due_control(key);
                    } else {
                        self.wheel.insert(key, deadline_ms);
                    }
                }
                Phase::Closing => {
                    conn.flags |= FLAG_FORCE_CLOSE;
                    self.closing.push(key);
                }
            }
        }
        self.expired = expired;
    }

    /// Handles one mailbox command.
    pub fn command(&mut self, command: Command) {
        match command {
            Command::Push { key, generation, push } => {
                let live = self
                    .conns
                    .get(key as usize)
                    .is_some_and(|c| c.generation == generation && c.phase == Phase::Connected);
                if live {
                    self.deliver(key, push);
                } else if let Some(push) = self.forward_if_moved(key, generation, push) {
                    self.not_delivered(&push, "device_gone");
                }
            }
            Command::TakeOver {
                key,
                generation,
                new_owner: _,
            } => {
                let live = self.conns.get(key as usize).is_some_and(|c| c.generation == generation);
                if live {
                    bump(&self.counters.sessions_taken_over, 1);
                    self.disconnect(key, mqtt::reason::SESSION_TAKEN_OVER, CloseReason::SessionTakenOver);
                }
            }
            Command::Disperse { hot_seconds } => self.disperse(&hot_seconds),
            Command::Relieve {
                shed_milli_per_s,
                keepalive_max_s,
            } => self.relieve(shed_milli_per_s as f64 / 1000.0, keepalive_max_s),
            Command::Move { to, count, hold_ms } => self.choose_moves(to, count, hold_ms),
            Command::Adopt(moving) => {
                self.adopt(moving, None);
            }
            Command::PushMoved { from, push } => self.push_moved(from, push),
            Command::Shutdown => self.shutdown(),
        }
    }

    /// Disconnects every device (MQTT 5: 0x8B server shutting down).
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
        let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        for key in keys {
            self.disconnect(key, mqtt::reason::SERVER_SHUTTING_DOWN, CloseReason::ServerShutdown);
        }
    }
}
