//! # pulsegate
//!
//! A push gateway for mobile carriers. Millions of devices each hold one MQTT
//! (3.1.1 or 5.0) connection; application servers push to them over HTTP.
//!
//! ## Architecture in a page
//! - `main` parses `config::Config` (every setting declared once, in
//!   `config/table.rs`), raises RLIMIT_NOFILE (`sys::rlimit`), probes io_uring
//!   (`sys::uring`); `gateway::Owners` builds the shared owners and hands each
//!   thread its narrow environment (`shard::env::ShardEnv`,
//!   `coordinator::CoordinatorEnv`, `front::FrontEnv`).
//! - `shard`: one pinned thread per shard. Each owns its listeners (MQTT, and
//!   MQTT over TLS when set) bound with SO_REUSEPORT, one event loop
//!   (`shard::event_loop`) generic over the completion interface
//!   `sys::io::Io`: `sys::uring_io` (a few single-shot accepts in flight per
//!   listener, each with its own address slot, into direct descriptors, so
//!   `shard::accept_gate` can refuse by source IP before any byte is read;
//!   multishot recv from a provided buffer ring),
//!   `sys::epoll_io` as the fallback (completions emulated on readiness), or
//!   the seeded, fault-injecting `sys::sim_io` in tests; a slab of `shard::conn::Conn`
//!   (≤ 64 bytes each; an `Active` box only while a connection is busy), and a
//!   hierarchical `shard::wheel::TimerWheel` for connect timeouts, keep-alive
//!   expiry (1.5 x keep-alive, re-armed lazily from the last-activity time) and
//!   close linger. The protocol logic is sans-IO and shared by every backend:
//!   `shard::core` is a facade over owners that hold their own state
//!   (`connections` with the recycled `active_pool`, `deliver`'s sessions and
//!   QoS 1 window, `migrate`'s moves, `control`'s dispersal and relief,
//!   `packets`' handlers). A TLS connection runs a rustls unbuffered state
//!   machine (`shard::tls_conn`, `shard::tls_path`) between the ring and that
//!   logic, its record buffers lent from the same pool only while it is busy.
//! - `auth`: the device authenticator (JWT or none) asked in CONNECT before
//!   the registry, so a refused device never takes a session; `tls`: PEM
//!   identities into reloadable rustls configs (SIGHUP) for MQTT, HTTPS and
//!   outbound roots.
//! - `registry`: client id -> (shard, slot, generation), striped mutexes; also
//!   stored offline sessions (clean start false) with their undelivered pushes.
//! - `shard::mailbox`: bounded crossbeam channels + wake-ups (eventfd read kept
//!   posted on the ring, or mio's waker). The API and other shards post
//!   `Command`s; a shard never waits on anyone.
//! - `shard::counters`: relaxed single-writer atomics per shard, read by
//!   `metrics` (Prometheus) and the coordinator (dispersal, heartbeat load,
//!   cross-shard rebalancing).
//! - `api`: HTTP/1.1 (httparse + serde_json): `POST /v1/messages`, `GET /metrics`. One
//!   mio event-loop thread owns the listener and every connection (an idle one costs a
//!   few KB, no thread; caps, deadlines and refusals are decided there, never sleeping); a
//!   fixed pool of handler threads runs the requests, whose gateway calls block.
//! - `protocol::mqtt`: the sans-IO codec, one file per packet type.
//! - `coordinator`: its own thread; reads counters, runs the pure policies of
//!   `policy` (dispersal, admission, relief, rebalancing), posts commands.
//! - `push`: the SP-facing service: a pure state machine (`push::machine`)
//!   whose transitions return effects, and an executor that performs them
//!   (shards through `push::Devices`, asynchronous group commits to `store`,
//!   webhooks and callbacks through `outbound`, whose `url_policy` refuses
//!   inward addresses at submission and again in the pool's resolver at send
//!   time; callbacks are paced per SP by a token bucket in `push::callbacks`).
//! - `delivery`: the plain values that cross those boundaries (`Push`,
//!   `Location`, `DeliveryEvent`).
//! - `sdk`: the device side, used by the `pulsegate-device` example and loadgen.
//!
//! ## Layers
//! Dependencies point down, never up or sideways: a module may name only
//! modules in layers below its own (`tests/architecture.rs` enforces it).
//! ```text
//! layers:begin
//! gateway: wiring; builds every owner and starts the threads
//! front: the API's Gateway implementation over push, shards and metrics
//! metrics: Prometheus text from every owner's counters
//! coordinator push: decide (heartbeat load, rebalancing) / track SP messages
//! shard: per-core event loops, connections, sessions, timers, mailboxes
//! registry auth policy: client id map / device credentials / pure decisions
//! config: runtime settings, parsed and validated once
//! delivery: values crossing boundaries
//! api outbound store sdk: HTTP server / HTTP client / durable storage / device side
//! tls: certificates and keys into rustls configs
//! protocol sys limits: sans-IO codecs / the only unsafe code / compile-time limits
//! layers:end
//! ```
#![deny(unsafe_code)]

pub mod api;
pub mod auth;
pub mod config;
pub mod coordinator;
pub mod delivery;
pub mod front;
pub mod gateway;
pub mod limits;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod protocol;
pub mod push;
pub mod registry;
pub mod sdk;
pub mod shard;
pub mod store;
#[allow(unsafe_code)]
pub mod sys;
pub mod tls;
