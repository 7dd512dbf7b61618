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

/// Source addresses (IPv4, or IPv6 /64) the per-source accept rate tracks
/// at once, over every shard (`shard::accept_gate`): 65,536 x 32 B = 2 MiB,
/// allocated at start when the limit is set; the stalest entry makes room.
pub const ACCEPT_SOURCES_TRACKED_MAX: usize = 65_536;

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

// ----- push service (src/push/) -----

/// Requests, delivery events and outbound results each handled per push-service
/// loop turn; the rest wait for the next turn.
pub const PUSH_EVENTS_PER_TURN_MAX: usize = 4_096;

/// Longest the push service sleeps with nothing due, so shutdown and its
/// gauges are never stale by more than this.
pub const PUSH_LOOP_SLEEP_MS_MAX: u64 = 250;

/// How often devices with held messages are checked against the registry (an
/// online event lost to a full channel is found this late at most).
pub const PUSH_SWEEP_EVERY_MS: u64 = 1_000;

/// Devices checked per sweep.
pub const PUSH_SWEEP_DEVICES_MAX: usize = 10_000;

/// Slack on top of a webhook's own timeout before the service gives up on it
/// (the outbound pool reports its own timeout first).
pub const PUSH_WEBHOOK_TIMEOUT_SLACK_MS: u64 = 1_000;

/// Outbound POSTs (webhook attempts and callbacks) queued for the pool's workers.
pub const PUSH_OUTBOUND_QUEUE_MAX: usize = 65_536;

/// First callback retry delay; each later one doubles, up to
/// `PUSH_CALLBACK_BACKOFF_SHIFT_MAX` doublings.
pub const PUSH_CALLBACK_BACKOFF_MS_MIN: u64 = 500;
pub const PUSH_CALLBACK_BACKOFF_SHIFT_MAX: u32 = 10;

/// A callback the outbound queue refused is tried again this much later.
pub const PUSH_CALLBACK_REQUEUE_MS: u64 = 1_000;

/// After a failed store commit, the dirty messages are resubmitted this much
/// later, doubling per consecutive failure up to the max.
pub const PUSH_PERSIST_RETRY_MS_MIN: u64 = 100;
pub const PUSH_PERSIST_RETRY_MS_MAX: u64 = 5_000;

/// A change only a crash could lose without harm (an attempt started: recovery
/// starts it again) is written this much later, and not at all if the message
/// changes for good before then (a PUBACK within it costs one write, not two).
pub const PUSH_PERSIST_LAZY_MS: u64 = 1_000;
/// Lazy changes waiting at most; beyond it a change is written at once.
pub const PUSH_PERSIST_LAZY_MAX: usize = 1 << 20;

/// Store deletes (messages past their retention) waiting while the store
/// fails; beyond it the oldest are dropped and counted (a stale record comes
/// back at recovery as a finished message and is deleted again).
pub const PUSH_PERSIST_DELETES_MAX: usize = 1 << 20;

/// Stale entries the push service's timer heap may hold beyond two per live
/// timer before it is rebuilt from the live ones.
pub const PUSH_TIMER_HEAP_SLACK: usize = 1_024;

/// Longest shutdown waits for the push service's last commit.
pub const PUSH_SHUTDOWN_FLUSH_MS: u64 = 10_000;

const _: () = assert!(PUSH_LOOP_SLEEP_MS_MAX <= PUSH_SWEEP_EVERY_MS);
const _: () = assert!(PUSH_PERSIST_RETRY_MS_MIN > 0 && PUSH_PERSIST_RETRY_MS_MIN <= PUSH_PERSIST_RETRY_MS_MAX);
const _: () = assert!(PUSH_CALLBACK_BACKOFF_MS_MIN > 0);
const _: () = assert!(PUSH_CALLBACK_BACKOFF_SHIFT_MAX < 32);
const _: () = assert!((PUSH_CALLBACK_BACKOFF_MS_MIN << PUSH_CALLBACK_BACKOFF_SHIFT_MAX) < u32::MAX as u64);
const _: () = assert!(PUSH_EVENTS_PER_TURN_MAX <= PUSH_OUTBOUND_QUEUE_MAX);

/// TLS 1.2 sessions remembered for resumption by session id, per listener
/// (TLS 1.3 resumes from stateless tickets and needs none).
pub const TLS_SESSION_CACHE_ENTRIES: usize = 32_768;
/// Largest PEM file (certificate chain, key, CA bundle, JWT key) read at start or on SIGHUP.
pub const KEY_FILE_BYTES_MAX: u64 = 1 << 20;
/// Longest JWT accepted as a CONNECT password; a longer one is refused unread.
pub const JWT_BYTES_MAX: usize = 4096;
/// Shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash size).
pub const JWT_HS256_SECRET_BYTES_MIN: usize = 32;
