//! The shard's connections: the slab of `Conn`, slot generations, the timer
//! wheel, the dirty and closing lists the backend drains, the pool of `Active`
//! boxes, and each connection's output path (queue, next send, send done).
//!
//! Owns slots and their buffers. Must never decide what a packet means or
//! where a push goes (packets, sessions and moves do), and never perform I/O.

use slab::Slab;

use super::active_pool::{ACTIVE_BUF_KEEP_BYTES_MAX, ACTIVE_POOL_PREALLOC, ActivePool};
use super::conn::{Active, Conn, FLAG_DIRTY, FLAG_FORCE_CLOSE, IO_PINGRESP_OWED, IO_SEND_IN_FLIGHT, IO_TLS, Phase};
use super::counters::{ShardCounters, bump};
use super::partial::PartialPackets;
use super::wheel::TimerWheel;
use crate::limits;
use crate::protocol::mqtt::PINGRESP;
use crate::protocol::mqtt::{Packet, ProtocolVersion};

/// Keys queued for the backend (dirty, closing) before the lists grow.
const KEY_LIST_PREALLOC: usize = 1024;

pub(super) struct Connections {
    pub slab: Slab<Conn>,
    pub wheel: TimerWheel,
    /// Bytes held in partial packets, their holders and deadlines.
    pub partial: PartialPackets,
    pub pool: ActivePool,
    /// Connections this shard holds, at most.
    capacity: u32,
    next_generation: u32,
    dirty: Vec<u32>,
    closing: Vec<u32>,
    expired: Vec<u32>,
}

impl Connections {
    pub fn new(capacity: u32, now_ms: u64) -> Connections {
        Connections {
            slab: Slab::with_capacity(0),
            wheel: TimerWheel::new(capacity, now_ms),
            partial: PartialPackets::new(capacity, now_ms),
            pool: ActivePool::new(ACTIVE_POOL_PREALLOC),
            capacity,
            next_generation: 1,
            dirty: Vec::with_capacity(KEY_LIST_PREALLOC),
            closing: Vec::with_capacity(KEY_LIST_PREALLOC),
            expired: Vec::with_capacity(limits::EXPIRED_PER_TURN_MAX),
        }
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn get(&self, key: u32) -> Option<&Conn> {
        self.slab.get(key as usize)
    }

    pub fn get_mut(&mut self, key: u32) -> Option<&mut Conn> {
        self.slab.get_mut(key as usize)
    }

    /// A new connection on socket `io`, its connect timeout due at
    /// `deadline_ms`. None when the shard is full.
    pub fn accept(&mut self, io: u32, now_ms: u64, deadline_ms: u64, counters: &ShardCounters) -> Option<(u32, u32)> {
        if self.slab.len() as u32 >= self.capacity {
            return None;
        }
        let generation = self.next_generation();
        let key = self.slab.insert(Conn::new(io, generation, now_ms)) as u32;
        self.wheel.insert(key, deadline_ms);
        bump(&counters.connections_open, 1);
        Some((key, generation))
    }

    /// Installs a connection that arrived from elsewhere (its generation set).
    pub fn insert(&mut self, conn: Conn, counters: &ShardCounters) -> u32 {
        bump(&counters.connections_open, 1);
        self.slab.insert(conn) as u32
    }

    /// A fresh slot generation (never 0).
    pub fn next_generation(&mut self) -> u32 {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        generation
    }

    /// Queues `key` for the backend's next send (once).
    pub fn mark_dirty(&mut self, key: u32) {
        if let Some(conn) = self.slab.get_mut(key as usize)
            && conn.flags & FLAG_DIRTY == 0
        {
            conn.flags |= FLAG_DIRTY;
            self.dirty.push(key);
        }
    }

    /// Queues `key` for the backend's close path.
    pub fn push_closing(&mut self, key: u32) {
        self.closing.push(key);
    }

    /// The active part of `key`, borrowed from the pool if it had none.
    pub fn active(&mut self, key: u32) -> Option<&mut Active> {
        let conn = self.slab.get_mut(key as usize)?;
        Some(conn.active_in(&mut self.pool))
    }

    /// Re-accounts `key`'s partial packet after a receive (see
    /// `PartialPackets::update`); publishes the shard's total.
    pub fn account_partial(
        &mut self,
        key: u32,
        now_ms: u64,
        timeout_ms: u64,
        new_packet: bool,
        counters: &ShardCounters,
    ) {
        let Some(a) = self.slab.get_mut(key as usize).and_then(|c| c.active.as_deref_mut()) else {
            return;
        };
        self.partial.update(key, a, now_ms, timeout_ms, new_packet);
        counters
            .partial_packet_bytes
            .store(self.partial.total_bytes(), std::sync::atomic::Ordering::Relaxed);
    }

    /// `key` holds no partial packet any more (closing or freed). The
    /// published total follows at the next `account_partial` or close.
    pub fn forget_partial(&mut self, key: u32) {
        let a = self.slab.get_mut(key as usize).and_then(|c| c.active.as_deref_mut());
        self.partial.forget(key, a);
    }

    /// Gives `key`'s active part back to the pool if nothing is in flight.
    pub fn shrink_if_idle(&mut self, key: u32) {
        if let Some(a) = self.slab.get_mut(key as usize).and_then(|c| c.take_if_idle()) {
            self.pool.give(a);
        }
    }

    /// A PINGREQ came: owe its PINGRESP (sent from a static buffer, see
    /// `IO_PINGRESP_OWED`) when nothing else is waiting, else queue it.
    pub fn owe_pingresp(&mut self, key: u32, version: ProtocolVersion) {
        let Some(conn) = self.slab.get_mut(key as usize) else {
            return;
        };
        if conn.can_owe_static_pingresp() {
            conn.io_flags |= IO_PINGRESP_OWED;
            self.mark_dirty(key);
        } else {
            self.queue_packet(key, |out| {
                Packet::PingResp.encode(version, out);
            });
        }
    }

    /// Takes the owed PINGRESP to send from its static buffer: marks a send in
    /// flight (cleared by `static_send_issued`). None if none is owed.
    pub fn take_owed_pingresp(&mut self, key: u32) -> Option<&'static [u8]> {
        let conn = self.slab.get_mut(key as usize)?;
        if conn.io_flags & IO_PINGRESP_OWED == 0 || conn.io_flags & IO_SEND_IN_FLIGHT != 0 {
            return None;
        }
        conn.io_flags &= !IO_PINGRESP_OWED;
        conn.io_flags |= IO_SEND_IN_FLIGHT;
        Some(&PINGRESP)
    }

    /// The owed PINGRESP becomes ordinary output (a backend without static
    /// sends, or a connection about to move).
    pub fn owed_pingresp_to_output(&mut self, key: u32) {
        if let Some(conn) = self.slab.get_mut(key as usize)
            && conn.io_flags & IO_PINGRESP_OWED != 0
        {
            conn.active_in(&mut self.pool);
        }
    }

    /// The static send has settled (`Io::static_sends_settled`): other
    /// sends may follow. Marks the connection dirty if output waits.
    pub fn static_send_issued(&mut self, key: u32) {
        let Some(conn) = self.slab.get_mut(key as usize) else {
            return;
        };
        conn.io_flags &= !IO_SEND_IN_FLIGHT;
        if conn.active.as_ref().is_some_and(|a| a.backlog_bytes() > 0) {
            self.mark_dirty(key);
        }
    }

    /// The static send took only `taken_bytes`: the rest goes out first, before
    /// anything queued since (no other send started meanwhile: the static one
    /// counted as in flight until settled).
    pub fn static_send_short(&mut self, key: u32, taken_bytes: usize) {
        let Some(conn) = self.slab.get_mut(key as usize) else {
            return;
        };
        let rest = &PINGRESP[taken_bytes.min(PINGRESP.len())..];
        let a = conn.active_in(&mut self.pool);
        a.out.splice(0..0, rest.iter().copied());
        self.mark_dirty(key);
    }

    /// Appends an encoded packet to the connection's output and marks it dirty.
    pub fn queue_packet(&mut self, key: u32, encode: impl FnOnce(&mut Vec<u8>)) {
        let Some(a) = self.active(key) else { return };
        encode(&mut a.out);
        self.mark_dirty(key);
    }

    /// Takes the connection out of its slot: its timer cancelled, the open
    /// gauge lowered. None if the slot is empty. Its active part goes with it.
    pub fn free_slot(&mut self, key: u32, counters: &ShardCounters) -> Option<Conn> {
        if !self.slab.contains(key as usize) {
            return None;
        }
        self.wheel.cancel(key);
        self.forget_partial(key);
        let conn = self.slab.remove(key as usize);
        let open = counters.connections_open.load(std::sync::atomic::Ordering::Relaxed);
        counters
            .connections_open
            .store(open.saturating_sub(1), std::sync::atomic::Ordering::Relaxed);
        Some(conn)
    }

    /// Frees the slot of a closed connection; its active part is recycled.
    pub fn release(&mut self, key: u32, counters: &ShardCounters) {
        if let Some(a) = self.free_slot(key, counters).and_then(|c| c.active) {
            self.pool.give(a);
        }
    }

    /// Keys that gained output since the last call (each once).
    pub fn take_dirty(&mut self, into: &mut Vec<u32>) {
        into.clear();
        std::mem::swap(&mut self.dirty, into);
        for &key in into.iter() {
            if let Some(c) = self.slab.get_mut(key as usize) {
                c.flags &= !FLAG_DIRTY;
            }
        }
    }

    /// Keys that entered Closing (or whose linger ran out) since the last call.
    pub fn take_closing(&mut self, into: &mut Vec<u32>) {
        into.clear();
        std::mem::swap(&mut self.closing, into);
    }

    /// Keys whose timer is due at `now_ms` (at most `EXPIRED_PER_TURN_MAX`);
    /// give the list back with `put_expired`.
    pub fn take_expired(&mut self, now_ms: u64) -> Vec<u32> {
        let mut expired = std::mem::take(&mut self.expired);
        expired.clear();
        self.wheel.advance(now_ms, limits::EXPIRED_PER_TURN_MAX, &mut expired);
        expired
    }

    pub fn put_expired(&mut self, expired: Vec<u32>) {
        self.expired = expired;
    }

    /// Whether the backend may close the socket now (last bytes flushed, or linger ran out).
    pub fn close_ready(&self, key: u32) -> bool {
        let Some(conn) = self.slab.get(key as usize) else {
            return false;
        };
        if conn.phase != Phase::Closing {
            return false;
        }
        if conn.flags & FLAG_FORCE_CLOSE != 0 {
            return true;
        }
        conn.io_flags & (IO_SEND_IN_FLIGHT | IO_PINGRESP_OWED) == 0
            && conn.active.as_ref().is_none_or(|a| a.backlog_bytes() == 0)
    }

    /// The next bytes to hand the kernel for `key`, or None if nothing is
    /// waiting or a send is in flight. Marks a send in flight. A TLS
    /// connection sends its ciphertext (`tls_out`), never `out`.
    pub fn next_send(&mut self, key: u32) -> Option<&[u8]> {
        let conn = self.slab.get_mut(key as usize)?;
        if conn.io_flags & IO_SEND_IN_FLIGHT != 0 {
            return None;
        }
        let tls = conn.io_flags & IO_TLS != 0;
        let a = conn.active.as_mut()?;
        if a.sent_bytes == a.sending.len() {
            let waiting = if tls { &mut a.tls_out } else { &mut a.out };
            if waiting.is_empty() {
                return None;
            }
            a.sending.clear();
            a.sent_bytes = 0;
            std::mem::swap(&mut a.sending, waiting);
        }
        conn.io_flags |= IO_SEND_IN_FLIGHT;
        Some(&a.sending[a.sent_bytes..])
    }

    /// The kernel took `n_bytes` of the send. Returns whether more is waiting.
    pub fn send_done(&mut self, key: u32, n_bytes: usize) -> bool {
        let Some(conn) = self.slab.get_mut(key as usize) else {
            return false;
        };
        conn.io_flags &= !IO_SEND_IN_FLIGHT;
        let Some(a) = conn.active.as_mut() else { return false };
        a.sent_bytes = (a.sent_bytes + n_bytes).min(a.sending.len());
        if a.sent_bytes == a.sending.len() {
            a.sending.clear();
            a.sent_bytes = 0;
            if a.sending.capacity() > ACTIVE_BUF_KEEP_BYTES_MAX {
                a.sending = Vec::new();
            }
        }
        let more = a.backlog_bytes() > 0;
        self.shrink_if_idle(key);
        more
    }

    /// The send failed or could not proceed now (the tail stays queued).
    pub fn send_stopped(&mut self, key: u32) {
        if let Some(conn) = self.slab.get_mut(key as usize) {
            conn.io_flags &= !IO_SEND_IN_FLIGHT;
        }
    }
}
