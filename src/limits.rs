//! Compile-time limits and the const asserts that relate them.
//!
//! Owns every fixed maximum that is not an operator setting. Must never hold a
//! value an operator would tune per host: those live in `config/table.rs`.

/// Largest number of connection slots one shard can own (slab keys fit in the
/// 32-bit key field of `sys::user_data`; the wheel indexes timers by slab key).
pub const CONNECTIONS_PER_SHARD_MAX: u32 = 1 << 22;

/// Largest number of shards (a shard id is a u16 in registry locations).
pub const SHARDS_MAX: usize = 256;

/// Largest MQTT packet the gateway will ever accept, whatever the config says
/// (the MQTT remaining-length field tops out at 268,435,455).
pub const MAX_PACKET_BYTES_CEILING: u32 = 16 * 1024 * 1024;

/// Server -> device QoS 1 window ceiling (the client's Receive Maximum and the
/// config's `max_inflight` are both clamped to this).
pub const INFLIGHT_MAX: u16 = 1024;

/// Commands waiting in one shard's mailbox before senders are told "overloaded".
/// The channel allocates and touches every slot up front (~80 bytes each), so
/// this is per-shard resident memory: 4,096 x 80 B = 320 KiB (65,536 cost 5 MiB
/// per shard, 270 MB at 52 shards). A shard drains its mailbox every loop turn.
pub const MAILBOX_COMMANDS_MAX: usize = 4_096;

/// Timers expired per wheel advance; the rest fire on the next loop turn.
pub const EXPIRED_PER_TURN_MAX: usize = 4_096;

/// Completions drained per loop turn before handlers run.
pub const COMPLETIONS_PER_TURN_MAX: usize = 4_096;

/// How long a closing connection may take to flush its last packet
/// (CONNACK with an error, DISCONNECT) before it is cut.
pub const CLOSE_LINGER_MS: u64 = 2_000;

/// Longest an event loop sleeps without a timer due, so shutdown and counters
/// are never stale by more than this.
pub const LOOP_SLEEP_MS_MAX: u64 = 250;

/// Bytes read per recv in the epoll backend (the epoll backend reads into an arena of 32 per shard).
pub const EPOLL_READ_BUF_BYTES: usize = 64 * 1024;

/// A connection whose unsent bytes exceed this is a slow consumer and is closed.
pub const SEND_BACKLOG_BYTES_MAX: usize = 1024 * 1024;

/// MQTT Subscribe/Unsubscribe filters per packet (the codec enforces it too).
pub const FILTERS_PER_PACKET_MAX: usize = 32;

const _: () = assert!(SHARDS_MAX <= u16::MAX as usize);
const _: () = assert!(CONNECTIONS_PER_SHARD_MAX <= u32::MAX / 2);
const _: () = assert!(MAX_PACKET_BYTES_CEILING <= 268_435_455);
const _: () = assert!(SEND_BACKLOG_BYTES_MAX >= MAX_PACKET_BYTES_CEILING as usize / 16);

// ---- Ceilings of the settings that were hard-coded in main.rs ----
// (config/table.rs declares the settings and their defaults; these bound them.)

/// `http_max_header_bytes` at most: request line plus headers.
pub const HTTP_MAX_HEADER_BYTES_CEILING: usize = 1024 * 1024;

/// `api_requests_queue_max` at most: the push service's request channel (a
/// bounded crossbeam channel allocates every slot up front).
pub const API_REQUESTS_QUEUE_MAX_CEILING: usize = 1 << 20;

/// `store_queue_ops_max` (and so `store_batch_ops_max`) at most: group-commit ops waiting.
pub const STORE_QUEUE_OPS_MAX_CEILING: usize = 10_000_000;

/// `outbound_workers` at most: webhook and callback sender threads.
pub const OUTBOUND_WORKERS_MAX: usize = 256;

// A full request queue of single-op submissions always fits a store queue at its ceiling.
const _: () = assert!(API_REQUESTS_QUEUE_MAX_CEILING <= STORE_QUEUE_OPS_MAX_CEILING);
// An HTTP header block at its ceiling is a slow consumer's worth, no more.
const _: () = assert!(HTTP_MAX_HEADER_BYTES_CEILING <= SEND_BACKLOG_BYTES_MAX);
