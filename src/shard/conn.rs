//! One connection's state: a small fixed slot for every connection, and a boxed
//! `Active` part only while the connection is mid-packet, sending, or has
//! pushes in flight.
//!
//! Owns the per-connection layout and its size budget. Must never allocate for
//! an idle connection: `active` is None whenever there is nothing in flight,
//! and the box comes from (and goes back to) the shard's `ActivePool`.

use std::collections::VecDeque;
use std::sync::Arc;

use super::active_pool::ActivePool;
use crate::delivery::Push;
use crate::protocol::mqtt::PINGRESP;
use crate::protocol::mqtt::ProtocolVersion;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Accepted, no CONNECT yet (connect timeout armed).
    AwaitConnect,
    /// CONNECT accepted (keep-alive armed).
    Connected,
    /// Closing: flushing its last bytes, then the backend closes the socket.
    Closing,
}

/// `Conn::flags`: protocol facts.
pub const FLAG_V5: u8 = 1 << 0;
/// The session outlives the connection (clean start false / session expiry > 0).
pub const FLAG_PERSISTENT: u8 = 1 << 1;
/// Queued on the shard's dirty list (has output to flush).
pub const FLAG_DIRTY: u8 = 1 << 2;
/// Closing and its linger ran out: close without waiting for output.
pub const FLAG_FORCE_CLOSE: u8 = 1 << 3;
/// Was registered in the registry (its client id is claimed).
pub const FLAG_REGISTERED: u8 = 1 << 4;
/// A control message is due when the timer fires (which: `Conn::control_due`).
pub const FLAG_DISPERSE: u8 = 1 << 5;
/// Already asked to lengthen its heartbeat (load relief); next time: disconnect.
pub const FLAG_HB_ADJUSTED: u8 = 1 << 6;
/// Moved here from another shard within the rebalancing hold time: stays put.
pub const FLAG_MOVED: u8 = 1 << 7;

/// `Conn::io_flags`: backend operations outstanding on this connection.
pub const IO_RECV_ARMED: u8 = 1 << 0;
pub const IO_SEND_IN_FLIGHT: u8 = 1 << 1;
pub const IO_CLOSE_SUBMITTED: u8 = 1 << 2;
pub const IO_CLOSE_DONE: u8 = 1 << 3;
/// The socket carries TLS: received bytes are ciphertext for the connection's
/// rustls state (`tls_conn`), and what it sends is `Active::tls_out`.
pub const IO_TLS: u8 = 1 << 4;
/// Chosen to move to another shard: no new recv or send is started.
pub const IO_MOVING: u8 = 1 << 5;
/// The multishot recv's cancellation was submitted (moving).
pub const IO_CANCEL_SUBMITTED: u8 = 1 << 6;
/// A PINGRESP is owed and nothing else is: the loop sends it from a static
/// buffer (`Io::send_static`), touching no `Active`. Whoever takes the active
/// part first turns it into ordinary output (`active_in`), so it is never
/// overtaken by bytes queued after it.
pub const IO_PINGRESP_OWED: u8 = 1 << 7;

/// The slab entry: every connection has one, idle or not.
pub struct Conn {
    /// Shard clock (ms) of the last packet received.
    pub last_activity_ms: u64,
    /// The client id, shared with the registry (stored once).
    pub client_id: Option<Arc<str>>,
    /// Only while something is in flight.
    pub active: Option<Box<Active>>,
    /// Fixed-file index (io_uring direct descriptor) or raw fd.
    pub io: u32,
    /// Bumped on every slot reuse; completions and commands carry it.
    pub generation: u32,
    /// The device's Maximum Packet Size (MQTT 5), else the protocol maximum.
    pub client_max_packet_bytes: u32,
    /// Session expiry the device asked for (MQTT 5), seconds.
    pub session_expiry_s: u32,
    /// The device's network as MCC x 1000 + MNC (0 = not reported): its
    /// dispersal zone.
    pub zone: u32,
    /// Effective keep-alive (0 = none).
    pub keepalive_s: u16,
    /// Server -> device QoS 1 window: min(config max_inflight, device Receive Maximum).
    pub window: u16,
    /// Next packet id to try for a server -> device QoS 1 PUBLISH.
    pub next_packet_id: u16,
    pub phase: Phase,
    pub flags: u8,
    pub io_flags: u8,
    /// How well the device's network and location match this host (0-3).
    pub match_degree: u8,
    /// Which control message the timer sends under FLAG_DISPERSE.
    pub control_due: ControlDue,
}

/// A control message scheduled on the connection's timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlDue {
    /// `$pulse/keepalive` (dispersal, seeds/000).
    Keepalive,
    /// `$pulse/heartbeat` with the already-adjusted interval (relief, seeds/004),
    /// and the device's place in its round (255ths), which sets its offset.
    Heartbeat { place_255: u8 },
}

/// A QoS 1 push sent and not yet acknowledged.
#[derive(Debug)]
pub struct Inflight {
    pub packet_id: u16,
    pub push: Push,
}

/// The borrowed part of a busy connection.
#[derive(Default)]
pub struct Active {
    /// Bytes of a packet that straddled receive buffers (≤ max_packet_bytes).
    pub partial: Vec<u8>,
    /// Encoded packets waiting for the next send (plaintext, for a TLS
    /// connection: sealed into `tls_out` once its handshake is done).
    pub out: Vec<u8>,
    /// TLS: ciphertext received and not yet processed (a partial record),
    /// at most one record plus one receive.
    pub tls_in: Vec<u8>,
    /// TLS: ciphertext waiting for the next send (handshake flights, alerts,
    /// sealed records).
    pub tls_out: Vec<u8>,
    /// Bytes handed to the kernel; never touched while a send is in flight.
    pub sending: Vec<u8>,
    /// How much of `sending` the kernel has taken.
    pub sent_bytes: usize,
    /// QoS 1 pushes awaiting PUBACK (≤ window).
    pub inflight: Vec<Inflight>,
    /// QoS 1 pushes waiting for window room (≤ pending_pushes_per_device_max).
    pub queued: VecDeque<Push>,
    /// Bytes of `partial` counted in the shard's partial-packet total (0: none).
    pub partial_held_bytes: u64,
    /// Shard clock (ms) when the packet in `partial` started.
    pub partial_since_ms: u64,
}

impl Active {
    pub fn is_idle(&self) -> bool {
        self.partial.is_empty()
            && self.out.is_empty()
            && self.tls_in.is_empty()
            && self.tls_out.is_empty()
            && self.sending.len() == self.sent_bytes
            && self.inflight.is_empty()
            && self.queued.is_empty()
    }

    /// Bytes waiting to be sent, in flight or not.
    pub fn backlog_bytes(&self) -> usize {
        self.out.len() + self.tls_out.len() + (self.sending.len() - self.sent_bytes)
    }

    /// Empties every part for reuse, keeping each buffer's capacity unless it
    /// exceeds `keep_bytes_max` (one huge packet must not pin its memory).
    pub fn recycle(&mut self, keep_bytes_max: usize) {
        fn keep<T>(v: &mut Vec<T>, keep_bytes_max: usize) {
            v.clear();
            if v.capacity() * std::mem::size_of::<T>() > keep_bytes_max {
                *v = Vec::new();
            }
        }
        keep(&mut self.partial, keep_bytes_max);
        keep(&mut self.out, keep_bytes_max);
        keep(&mut self.tls_in, keep_bytes_max);
        keep(&mut self.tls_out, keep_bytes_max);
        keep(&mut self.sending, keep_bytes_max);
        keep(&mut self.inflight, keep_bytes_max);
        self.queued.clear();
        if self.queued.capacity() * std::mem::size_of::<Push>() > keep_bytes_max {
            self.queued = VecDeque::new();
        }
        self.sent_bytes = 0;
        self.partial_held_bytes = 0;
        self.partial_since_ms = 0;
    }
}

impl Conn {
    pub fn new(io: u32, generation: u32, now_ms: u64) -> Conn {
        Conn {
            last_activity_ms: now_ms,
            client_id: None,
            active: None,
            io,
            generation,
            client_max_packet_bytes: 268_435_455,
            session_expiry_s: 0,
            zone: 0,
            keepalive_s: 0,
            window: 1,
            next_packet_id: 1,
            phase: Phase::AwaitConnect,
            flags: 0,
            io_flags: 0,
            match_degree: 0,
            control_due: ControlDue::Keepalive,
        }
    }

    pub fn version(&self) -> ProtocolVersion {
        if self.flags & FLAG_V5 != 0 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        }
    }

    pub fn is_v5(&self) -> bool {
        self.flags & FLAG_V5 != 0
    }

    /// The active part, taken from `pool` if the connection had none; an
    /// owed static PINGRESP becomes its first output.
    pub fn active_in(&mut self, pool: &mut ActivePool) -> &mut Active {
        let owed = self.io_flags & IO_PINGRESP_OWED != 0;
        self.io_flags &= !IO_PINGRESP_OWED;
        let a = self.active.get_or_insert_with(|| pool.take());
        if owed {
            a.out.extend_from_slice(&PINGRESP);
        }
        a
    }

    /// Whether a PINGREQ can be answered from the static buffer: plaintext,
    /// connected, not moving, no send in flight and nothing else waiting.
    pub fn can_owe_static_pingresp(&self) -> bool {
        self.phase == Phase::Connected
            && self.io_flags & (IO_TLS | IO_SEND_IN_FLIGHT | IO_MOVING | IO_PINGRESP_OWED | IO_CLOSE_SUBMITTED) == 0
            && self.active.as_ref().is_none_or(|a| a.backlog_bytes() == 0)
    }

    /// Takes the active part out if nothing is in flight (the caller gives it
    /// back to the pool).
    pub fn take_if_idle(&mut self) -> Option<Box<Active>> {
        if self.io_flags & IO_SEND_IN_FLIGHT != 0 {
            return None;
        }
        if self.active.as_ref().is_some_and(|a| a.is_idle()) {
            return self.active.take();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_slot_fits_the_memory_budget() {
        // DESIGN-NOTES: ≤ 64 bytes of slot per connection (the slab entry adds its tag).
        assert!(
            std::mem::size_of::<Conn>() <= 64,
            "Conn is {} bytes",
            std::mem::size_of::<Conn>()
        );
        // The phase enum leaves a niche, so the slab's entry tag costs nothing.
        assert!(std::mem::size_of::<Option<Conn>>() <= 64);
    }

    #[test]
    fn active_part_is_released_when_idle_and_no_send_is_in_flight() {
        let mut pool = ActivePool::new(0);
        let mut c = Conn::new(3, 1, 0);
        c.active_in(&mut pool).out.extend_from_slice(&[0xD0, 0]);
        assert!(c.take_if_idle().is_none());
        assert!(c.active.is_some());
        let a = c.active_in(&mut pool);
        a.sending = std::mem::take(&mut a.out);
        a.sent_bytes = 2;
        c.io_flags |= IO_SEND_IN_FLIGHT;
        assert!(c.take_if_idle().is_none(), "kept while the kernel may still read it");
        c.io_flags &= !IO_SEND_IN_FLIGHT;
        assert!(c.take_if_idle().is_some());
        assert!(c.active.is_none());
    }

    #[test]
    fn recycling_keeps_small_buffers_and_drops_huge_ones() {
        let mut a = Active::default();
        a.out.extend_from_slice(&[0; 64]);
        a.partial.extend_from_slice(&[0; 10_000]);
        a.sending.extend_from_slice(&[1; 16]);
        a.sent_bytes = 16;
        a.recycle(4096);
        assert!(a.is_idle());
        assert!(a.out.capacity() >= 64, "a small buffer keeps its capacity");
        assert_eq!(a.partial.capacity(), 0, "a huge one gives its memory back");
        assert_eq!(a.sent_bytes, 0);
    }
}
