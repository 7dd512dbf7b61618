//! Per-shard counters: written by exactly one shard thread, read by anyone
//! (metrics, and later the coordinator) with relaxed atomics.
//!
//! Owns the counter layout and the label names. Must never be written by a
//! thread other than its shard (increments are load+store, not RMW).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::accept_gate::AcceptRefusal;

/// Why a connection was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    ClientDisconnect,
    PeerClosed,
    IoError,
    KeepAliveTimeout,
    ConnectTimeout,
    ProtocolError,
    SessionTakenOver,
    ServerShutdown,
    SlowConsumer,
    ServerFull,
    NotAuthorized,
    ServerBusy,
    Overload,
    /// TLS failed: a bad or oversize record, a failed handshake, an alert.
    TlsError,
    /// A packet started and did not complete within packet_complete_timeout_s.
    PartialPacketTimeout,
    /// The shard held more than shard_partial_packet_bytes_max in partial
    /// packets; this connection held the most.
    PartialPacketBudget,
}

impl CloseReason {
    pub const ALL: [CloseReason; 16] = [
        CloseReason::ClientDisconnect,
        CloseReason::PeerClosed,
        CloseReason::IoError,
        CloseReason::KeepAliveTimeout,
        CloseReason::ConnectTimeout,
        CloseReason::ProtocolError,
        CloseReason::SessionTakenOver,
        CloseReason::ServerShutdown,
        CloseReason::SlowConsumer,
        CloseReason::ServerFull,
        CloseReason::NotAuthorized,
        CloseReason::ServerBusy,
        CloseReason::Overload,
        CloseReason::TlsError,
        CloseReason::PartialPacketTimeout,
        CloseReason::PartialPacketBudget,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientDisconnect => "client_disconnect",
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::IoError => "io_error",
            CloseReason::KeepAliveTimeout => "keepalive_timeout",
            CloseReason::ConnectTimeout => "connect_timeout",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::SessionTakenOver => "session_taken_over",
            CloseReason::ServerShutdown => "server_shutdown",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::ServerFull => "server_full",
            CloseReason::NotAuthorized => "not_authorized",
            CloseReason::ServerBusy => "server_busy",
            CloseReason::Overload => "overload",
            CloseReason::TlsError => "tls_error",
            CloseReason::PartialPacketTimeout => "partial_packet_timeout",
            CloseReason::PartialPacketBudget => "partial_packet_budget",
        }
    }
}

/// What was wrong with a device's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolErrorKind {
    Malformed,
    TooLarge,
    UnsupportedProtocolVersion,
    UnsupportedPacket,
    FirstPacketNotConnect,
    SecondConnect,
    ServerOnlyPacket,
    QosNotSupported,
    RetainNotSupported,
    TopicAliasInvalid,
    ClientIdRejected,
    UnknownPacketId,
    TruncatedAtClose,
}

impl ProtocolErrorKind {
    pub const ALL: [ProtocolErrorKind; 13] = [
        ProtocolErrorKind::Malformed,
        ProtocolErrorKind::TooLarge,
        ProtocolErrorKind::UnsupportedProtocolVersion,
        ProtocolErrorKind::UnsupportedPacket,
        ProtocolErrorKind::FirstPacketNotConnect,
        ProtocolErrorKind::SecondConnect,
        ProtocolErrorKind::ServerOnlyPacket,
        ProtocolErrorKind::QosNotSupported,
        ProtocolErrorKind::RetainNotSupported,
        ProtocolErrorKind::TopicAliasInvalid,
        ProtocolErrorKind::ClientIdRejected,
        ProtocolErrorKind::UnknownPacketId,
        ProtocolErrorKind::TruncatedAtClose,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ProtocolErrorKind::Malformed => "malformed",
            ProtocolErrorKind::TooLarge => "too_large",
            ProtocolErrorKind::UnsupportedProtocolVersion => "unsupported_protocol_version",
            ProtocolErrorKind::UnsupportedPacket => "unsupported_packet",
            ProtocolErrorKind::FirstPacketNotConnect => "first_packet_not_connect",
            ProtocolErrorKind::SecondConnect => "second_connect",
            ProtocolErrorKind::ServerOnlyPacket => "server_only_packet",
            ProtocolErrorKind::QosNotSupported => "qos_not_supported",
            ProtocolErrorKind::RetainNotSupported => "retain_not_supported",
            ProtocolErrorKind::TopicAliasInvalid => "topic_alias_invalid",
            ProtocolErrorKind::ClientIdRejected => "client_id_rejected",
            ProtocolErrorKind::UnknownPacketId => "unknown_packet_id",
            ProtocolErrorKind::TruncatedAtClose => "truncated_at_close",
        }
    }
}

/// Keep-alive counting slots (one per second, a ring of this many seconds:
/// at least two periods of the longest keep-alive the coordinator disperses).
pub const KEEPALIVE_SLOTS: usize = 1024;
/// Keep-alive values counted exactly (seconds); longer ones share the last bucket.
pub const KEEPALIVE_TRACKED_MAX_S: usize = 3_600;

pub struct ShardCounters {
    pub connections_open: AtomicU64,
    pub accepts: AtomicU64,
    pub accept_errors: AtomicU64,
    /// Connections closed at accept by the accept gate, by `AcceptRefusal::index`.
    pub accepts_refused: [AtomicU64; AcceptRefusal::ALL.len()],
    pub connects_v311: AtomicU64,
    pub connects_v5: AtomicU64,
    pub keepalives: AtomicU64,
    pub publishes_received: AtomicU64,
    pub pushes_sent: AtomicU64,
    pub pushes_acked: AtomicU64,
    pub pushes_dropped: AtomicU64,
    pub pushes_redelivered: AtomicU64,
    pub sessions_taken_over: AtomicU64,
    pub sessions_resumed: AtomicU64,
    pub recv_buffer_exhausted: AtomicU64,
    /// PINGRESPs the static send could not send whole (socket buffer full),
    /// sent again as ordinary output.
    pub static_send_retries: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub loop_turns: AtomicU64,
    pub closes: [AtomicU64; CloseReason::ALL.len()],
    pub protocol_errors: [AtomicU64; ProtocolErrorKind::ALL.len()],
    /// Keep-alives per second: each slot packs (second << 32) | count.
    pub keepalive_slots: [AtomicU64; KEEPALIVE_SLOTS],
    /// Connected devices by effective keep-alive (index = seconds, 0 = none).
    pub connections_by_keepalive: Box<[AtomicU64]>,
    /// Keep-alive configuration / heartbeat-adjust messages sent.
    pub control_messages_sent: AtomicU64,
    pub dispersal_rounds: AtomicU64,
    pub heartbeat_adjustments: AtomicU64,
    pub overload_disconnects: AtomicU64,
    pub admissions_refused: AtomicU64,
    /// Cross-shard rebalancing: connections handed to / adopted from another shard.
    pub connections_moved_out: AtomicU64,
    pub connections_moved_in: AtomicU64,
    /// Moves abandoned (destination refused the socket); the connection stayed.
    pub move_failures: AtomicU64,
    /// TLS handshakes completed in full / by resuming a session (ticket or id).
    pub tls_handshakes_full: AtomicU64,
    pub tls_handshakes_resumed: AtomicU64,
    /// TLS handshakes that failed (garbage instead of a ClientHello, no
    /// common version or cipher, a client that refused our certificate).
    pub tls_handshake_failures: AtomicU64,
    /// Established TLS connections ended by a bad record or an alert.
    pub tls_errors: AtomicU64,
    /// Bytes held in partial (started, incomplete) packets on this shard.
    pub partial_packet_bytes: AtomicU64,
}

impl Default for ShardCounters {
    fn default() -> Self {
        ShardCounters {
            connections_open: AtomicU64::new(0),
            accepts: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            accepts_refused: std::array::from_fn(|_| AtomicU64::new(0)),
            connects_v311: AtomicU64::new(0),
            connects_v5: AtomicU64::new(0),
            keepalives: AtomicU64::new(0),
            publishes_received: AtomicU64::new(0),
            pushes_sent: AtomicU64::new(0),
            pushes_acked: AtomicU64::new(0),
            pushes_dropped: AtomicU64::new(0),
            pushes_redelivered: AtomicU64::new(0),
            sessions_taken_over: AtomicU64::new(0),
            sessions_resumed: AtomicU64::new(0),
            recv_buffer_exhausted: AtomicU64::new(0),
            static_send_retries: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            loop_turns: AtomicU64::new(0),
            closes: std::array::from_fn(|_| AtomicU64::new(0)),
            protocol_errors: std::array::from_fn(|_| AtomicU64::new(0)),
            keepalive_slots: std::array::from_fn(|_| AtomicU64::new(0)),
            connections_by_keepalive: (0..=KEEPALIVE_TRACKED_MAX_S).map(|_| AtomicU64::new(0)).collect(),
            control_messages_sent: AtomicU64::new(0),
            dispersal_rounds: AtomicU64::new(0),
            heartbeat_adjustments: AtomicU64::new(0),
            overload_disconnects: AtomicU64::new(0),
            admissions_refused: AtomicU64::new(0),
            connections_moved_out: AtomicU64::new(0),
            connections_moved_in: AtomicU64::new(0),
            move_failures: AtomicU64::new(0),
            tls_handshakes_full: AtomicU64::new(0),
            tls_handshakes_resumed: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            tls_errors: AtomicU64::new(0),
            partial_packet_bytes: AtomicU64::new(0),
        }
    }
}

/// Single-writer increment: a plain load and store, no locked RMW.
#[inline]
pub fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(by), Relaxed);
}

impl ShardCounters {
    pub fn close(&self, reason: CloseReason) {
        let i = CloseReason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        bump(&self.closes[i], 1);
    }

    pub fn accept_refused(&self, reason: AcceptRefusal) {
        bump(&self.accepts_refused[reason.index()], 1);
    }

    pub fn protocol_error(&self, kind: ProtocolErrorKind) {
        let i = ProtocolErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        bump(&self.protocol_errors[i], 1);
    }

    pub fn get_close(&self, reason: CloseReason) -> u64 {
        let i = CloseReason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.closes[i].load(Relaxed)
    }

    /// Counts one keep-alive seen at shard second `second`.
    pub fn keepalive(&self, second: u32) {
        bump(&self.keepalives, 1);
        let slot = &self.keepalive_slots[second as usize % KEEPALIVE_SLOTS];
        let v = slot.load(Relaxed);
        let next = if (v >> 32) as u32 == second {
            v + 1
        } else {
            ((second as u64) << 32) | 1
        };
        slot.store(next, Relaxed);
    }

    /// A connected device's keep-alive entered (`+1`) or left (`-1`) the census.
    pub fn keepalive_census(&self, keepalive_s: u16, delta: i64) {
        let c = &self.connections_by_keepalive[(keepalive_s as usize).min(KEEPALIVE_TRACKED_MAX_S)];
        c.store(c.load(Relaxed).wrapping_add_signed(delta), Relaxed);
    }

    /// Keep-alives counted at shard second `second` (0 if the slot moved on).
    pub fn keepalives_at(&self, second: u32) -> u32 {
        let v = self.keepalive_slots[second as usize % KEEPALIVE_SLOTS].load(Relaxed);
        if (v >> 32) as u32 == second { v as u32 } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_slots_count_per_second_and_roll_over() {
        let c = ShardCounters::default();
        c.keepalive(5);
        c.keepalive(5);
        c.keepalive(6);
        assert_eq!(c.keepalives_at(5), 2);
        assert_eq!(c.keepalives_at(6), 1);
        c.keepalive(5 + KEEPALIVE_SLOTS as u32);
        assert_eq!(c.keepalives_at(5), 0);
        assert_eq!(c.keepalives_at(5 + KEEPALIVE_SLOTS as u32), 1);
        assert_eq!(c.keepalives.load(Relaxed), 4);
    }

    #[test]
    fn close_and_error_labels_are_distinct() {
        let mut labels: Vec<_> = CloseReason::ALL.iter().map(|r| r.label()).collect();
        labels.extend(ProtocolErrorKind::ALL.iter().map(|k| k.label()));
        let n = labels.len();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), n);
    }
}
