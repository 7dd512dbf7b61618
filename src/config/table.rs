//! The settings table: every operator setting, declared once (name, type,
//! flag/file type, default, unit, range, doc). `macros::settings!` turns it
//! into the flags, the file schema, `Config`, the merge, the range checks, the
//! rendered configuration and the README's table.
//!
//! Owns the list of settings and their defaults. Must never hold logic: a
//! check between two settings is `validate.rs`, a conversion is `value.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::macros::settings;
use super::value::{Range, SettingValue, allow_rules, network, same, some};
use super::{BackendChoice, ConfigError, DeviceAuthKind, JwtAlgorithm, ReliefRule, SettingInfo};
use crate::limits;
use crate::outbound::url_policy::AllowRule;

const fn int(min: u64, max: u64) -> Range {
    Range::Int { min, max }
}

/// A finite number ≥ `min`.
const fn at_least(min: f64) -> Range {
    Range::Float {
        min,
        inclusive: true,
        max: f64::INFINITY,
    }
}

/// A finite number > `min`.
const fn above(min: f64) -> Range {
    Range::Float {
        min,
        inclusive: false,
        max: f64::INFINITY,
    }
}

const DAY_S: u64 = 24 * 3600;

fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

settings! {
    /// MQTT listen address; every shard binds it with SO_REUSEPORT (port 0 = pick one).
    mqtt_listen: SocketAddr, flag SocketAddr, via same,
        default SocketAddr::from(([127, 0, 0, 1], 1883)), unit "", range Range::Any;
    /// HTTP API listen address.
    http_listen: SocketAddr, flag SocketAddr, via same,
        default SocketAddr::from(([127, 0, 0, 1], 8080)), unit "", range Range::Any;
    /// MQTT over TLS listen address (8883 by convention; unset: no TLS listener).
    /// Needs tls_cert_file and tls_key_file.
    mqtt_tls_listen: Option<SocketAddr>, flag SocketAddr, via some,
        default None, unit "", range Range::Any;
    /// PEM certificate chain (leaf first) for the MQTT TLS listener and the
    /// HTTPS API; re-read on SIGHUP.
    tls_cert_file: Option<PathBuf>, flag PathBuf, via some,
        default None, unit "", range Range::Any;
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of tls_cert_file; re-read on SIGHUP.
    tls_key_file: Option<PathBuf>, flag PathBuf, via some,
        default None, unit "", range Range::Any;
    /// Serve the SP HTTP API over TLS (HTTPS) with tls_cert_file and tls_key_file.
    http_tls: bool, flag bool, via same,
        default false, unit "", range Range::Any;
    /// Extra PEM CA certificates trusted for outbound HTTPS (webhooks and
    /// callbacks), besides the system roots.
    outbound_ca_file: Option<PathBuf>, flag PathBuf, via some,
        default None, unit "", range Range::Any;
    /// New MQTT connections accepted per second over both listeners; beyond it
    /// a connection is closed at accept, before any TLS or CONNECT work (unset: no limit).
    accept_rate_per_s: Option<u32>, flag u32, via some,
        default None, unit "connections/s", range int(1, 10_000_000);
    /// New MQTT connections accepted per second from one source IP (token
    /// bucket, burst accept_per_ip_burst); mind carrier-grade NAT (unset: no limit).
    accept_per_ip_rate_per_s: Option<u32>, flag u32, via some,
        default None, unit "connections/s", range int(1, 10_000_000);
    /// Burst of the per-source-IP accept bucket.
    accept_per_ip_burst: u32, flag u32, via same,
        default 64, unit "connections", range int(1, 10_000_000);
    /// Device authentication: jwt (the CONNECT password is a JWT) or none
    /// (everyone; unset also means everyone, with a start-up warning).
    /// Also `kind` in the file's `[device_auth]` section.
    device_auth_kind: Option<DeviceAuthKind>, flag DeviceAuthKind, via some,
        default None, unit "", range Range::Any, arg(value_enum);
    /// JWT signature algorithm (`[device_auth] algorithm`).
    device_auth_algorithm: JwtAlgorithm, flag JwtAlgorithm, via same,
        default JwtAlgorithm::HS256, unit "", range Range::Any, arg(value_enum);
    /// The HS256 secret (raw bytes) or the RS256/ES256 PEM public key
    /// (`[device_auth] key_file`); re-read on SIGHUP.
    device_auth_key_file: Option<PathBuf>, flag PathBuf, via some,
        default None, unit "", range Range::Any;
    /// Clock leeway for the JWT `exp` and `nbf` claims (`[device_auth] leeway_s`).
    device_auth_leeway_s: u32, flag u32, via same,
        default 30, unit "s", range int(0, 3600);
    // Operator access (admin endpoints and /metrics).
    /// File holding the bearer key for `/v1/admin/...` (at least 16 bytes, surrounding
    /// whitespace trimmed). Unset: admin endpoints answer 403 unless an `[[sps]]` entry
    /// has admin = true.
    admin_key_file: Option<PathBuf>, flag PathBuf, via some,
        default None, unit "", range Range::Any;
    /// File holding a bearer key that `GET /metrics` then requires (the admin key is
    /// accepted too). Unset: /metrics is open.
    metrics_key_file: Option<PathBuf>, flag PathBuf, via some,
        default None, unit "", range Range::Any;
    /// Shard threads, pinned round-robin (default: number of CPUs). May exceed
    /// the CPU count: each io_uring shard has its own fixed-file table.
    shards: usize, flag usize, via same,
        default cpus() => "CPUs", unit "threads", range int(1, limits::SHARDS_MAX as u64);
    /// Event-loop backend: io_uring, epoll, or auto (io_uring, epoll if the kernel refuses it).
    backend: BackendChoice, flag BackendChoice, via same,
        default BackendChoice::Auto, unit "", range Range::Any, arg(value_enum);
    /// Connections held in total over all shards (at most 4,194,304 per shard;
    /// each shard is further capped by its fd table).
    max_connections: u64, flag u64, via same,
        default 1_000_000, unit "connections",
        range int(1, limits::CONNECTIONS_PER_SHARD_MAX as u64 * limits::SHARDS_MAX as u64);
    /// MQTT 5 Server Keep Alive imposed in CONNACK (unset: the client's own).
    server_keepalive_s: Option<u16>, flag u16, via some,
        default None, unit "s", range int(1, u16::MAX as u64);
    /// Time a new connection may take to send CONNECT.
    connect_timeout_s: u32, flag u32, via same,
        default 10, unit "s", range int(1, 3600);
    /// Largest MQTT packet accepted from a device.
    max_packet_bytes: u32, flag u32, via same,
        default 256 * 1024, unit "bytes", range int(64, limits::MAX_PACKET_BYTES_CEILING as u64);
    // Partial packets (device side, issue 14).
    /// Once the first byte of an MQTT packet arrived, the whole packet must
    /// arrive within this, whatever the keep-alive; past it the connection is
    /// closed (MQTT 5: DISCONNECT 0x97).
    packet_complete_timeout_s: u32, flag u32, via same,
        default 10, unit "s", range int(1, 3600);
    /// Bytes one shard may hold in started, incomplete packets over all its
    /// connections; over it the largest holders are closed (MQTT 5: 0x97, or
    /// 0x95 when the one packet announced is larger than this budget).
    shard_partial_packet_bytes_max: u64, flag u64, via same,
        default 64 << 20, unit "bytes", range int(4096, 1 << 40);
    /// Server -> device QoS 1 window per connection (also capped by the device's Receive Maximum).
    max_inflight: u16, flag u16, via same,
        default 32, unit "pushes", range int(1, limits::INFLIGHT_MAX as u64);
    /// QoS 1 pushes queued per device behind the inflight window (and kept per stored session).
    pending_pushes_per_device_max: u32, flag u32, via same,
        default 64, unit "pushes", range int(0, 65_536);
    /// Offline sessions (clean start false) kept in total (0: none are kept).
    stored_sessions_max: u32, flag u32, via same,
        default 1_000_000, unit "sessions", range int(0, 100_000_000);
    /// Longest an offline session is kept, whatever the client asks (at most a year).
    session_expiry_max_s: u32, flag u32, via same,
        default 24 * 3600, unit "s", range int(0, 365 * DAY_S);
    /// Bytes per provided receive buffer (io_uring backend).
    recv_buf_bytes: u32, flag u32, via same,
        default 2048, unit "bytes", range int(256, 1 << 20);
    /// Provided receive buffers per shard (io_uring backend).
    recv_bufs_per_shard: u16, flag u16, via same,
        default 256, unit "buffers", range Range::PowerOfTwo { min: 16, max: 32_768 };
    /// io_uring: after a loop turn that did nothing but answer keep-alives, a
    /// shard that gets a completion waits up to this long for more before
    /// handling them (min_wait of io_uring_enter, Linux 6.12+; 0 = off). Any
    /// other work in a turn (a CONNECT, a push, a close) ends the batching for
    /// the next wait, so only the first packet after a keep-alive-only turn
    /// can be held, by at most this long. Measured at 4,000 keep-alives/s over
    /// two shards: 2000 cut wake-ups 1,810 -> 403 per second and CPU per
    /// keep-alive by 28%; an idle shard still sleeps until its next timer. A
    /// shard answering fewer than two keep-alives per window does not batch.
    loop_batch_wait_us: u32, flag u32, via same,
        default 2000, unit "us", range int(0, 100_000);
    /// Pin shard threads to CPUs (round-robin).
    pin_cpus: bool, flag bool, via same,
        default true, unit "", range Range::Any;
    /// Concurrent HTTP API connections (each idle one costs a socket and a few
    /// KB, no thread); beyond it a new one is answered 503 and closed.
    http_max_connections: usize, flag usize, via same,
        default 10_000, unit "connections", range int(1, 1_000_000);
    /// Largest HTTP request body (from Content-Length); beyond it: 413 and close.
    http_max_body_bytes: usize, flag usize, via same,
        default 256 * 1024, unit "bytes", range int(64, 64 << 20);
    /// Largest HTTP request line plus headers; beyond it: 431 and close.
    http_max_header_bytes: usize, flag usize, via same,
        default 16 * 1024, unit "bytes",
        range int(1024, limits::HTTP_MAX_HEADER_BYTES_CEILING as u64);
    /// HTTP keep-alive idle close (also the time a new HTTPS connection has for
    /// its TLS handshake).
    http_idle_timeout_ms: u64, flag u64, via same,
        default 30_000, unit "ms", range int(100, 3_600_000);
    /// Requests served on one HTTP connection; the last one's response carries `Connection: close`.
    http_requests_per_connection_max: u32, flag u32, via same,
        default 1_000_000, unit "requests", range int(1, u32::MAX as u64);
    // HTTP front (issue 14): per-address cap, read deadlines, handler pool.
    /// Concurrent HTTP API connections from one source address; beyond it a new
    /// one is answered 429 and closed.
    http_connections_per_ip_max: usize, flag usize, via same,
        default 256, unit "connections", range int(1, 1_000_000);
    /// An HTTP request head must arrive whole within this of its first byte
    /// (slowloris bound: 408 and close).
    http_header_timeout_s: u32, flag u32, via same,
        default 10, unit "s", range int(1, 3600);
    /// An HTTP request body must arrive whole within this of its head (408 and close).
    http_body_timeout_s: u32, flag u32, via same,
        default 30, unit "s", range int(1, 3600);
    /// Threads running HTTP API requests (the event loop hands them complete
    /// requests; a push blocks its thread until the message is durable).
    http_handler_threads: usize, flag usize, via same,
        default 32, unit "threads", range int(1, 1024);
    /// Complete HTTP requests waiting for a handler thread; beyond it a request
    /// is answered 503 at once.
    http_handler_queue_max: usize, flag usize, via same,
        default 1024, unit "requests", range int(1, 65_536);
    /// Where accepted messages are stored (created if missing).
    data_dir: PathBuf, flag PathBuf, via same,
        default PathBuf::from("./pulsegate-data"), unit "", range Range::Any;
    /// Message time-to-live when a request gives no ttl_s.
    default_ttl_s: u32, flag u32, via same,
        default 24 * 3600, unit "s", range int(1, 30 * DAY_S);
    /// How long a QoS 1 push over the device's connection may wait for PUBACK.
    persistent_ack_timeout_ms: u64, flag u64, via same,
        default 10_000, unit "ms", range int(100, 3_600_000);
    /// Messages not yet in a terminal state, in total.
    pending_messages_max: u32, flag u32, via same,
        default 1_000_000, unit "messages", range int(1, 100_000_000);
    // -- byte budgets (issue 14: amplification) --
    /// Payload bytes held for pending messages in total, each stored payload
    /// counted once (a multicast stores its payload once); over it POST
    /// /v1/messages gets 507. Held once in memory and once on disk: 4 GiB
    /// suits a 24 GB host.
    pending_payload_bytes_max: u64, flag u64, via same,
        default 4 << 30, unit "bytes", range int(1024, 1 << 50);
    /// Payload bytes held for one SP's pending messages; over it that SP gets
    /// 429 (no Retry-After: room comes back as its messages finish). 1 GiB on
    /// a 24 GB host leaves room for several SPs.
    sp_pending_payload_bytes_max: u64, flag u64, via same,
        default 1 << 30, unit "bytes", range int(1024, 1 << 50);
    /// Record bytes of the finished messages kept for GET (beside the 100,000
    /// kept at most); the oldest go first. 256 MiB on a 24 GB host.
    completed_retention_bytes_max: u64, flag u64, via same,
        default 256 << 20, unit "bytes", range int(1024, 1 << 50);
    // -- end of byte budgets --
    /// Push API requests waiting for the push service (a bounded channel; its
    /// slots are allocated at start).
    api_requests_queue_max: usize, flag usize, via same,
        default 65_536, unit "requests", range int(1, limits::API_REQUESTS_QUEUE_MAX_CEILING as u64);
    /// Store writes waiting for a group commit; beyond it submissions fail (store full).
    store_queue_ops_max: usize, flag usize, via same,
        default 200_000, unit "ops", range int(1, limits::STORE_QUEUE_OPS_MAX_CEILING as u64);
    /// Store writes per group commit (at most store_queue_ops_max).
    store_batch_ops_max: usize, flag usize, via same,
        default 20_000, unit "ops", range int(1, limits::STORE_QUEUE_OPS_MAX_CEILING as u64);
    /// Store commits (fsyncs) start at most this often: writes arriving sooner
    /// after the last commit wait for the rest of the interval and share the
    /// next one, so a push costs a fraction of an fsync under load while an
    /// idle store commits at once (0 = commit as soon as the writer is free).
    store_commit_interval_us: u64, flag u64, via same,
        default 2_000, unit "us", range int(0, 1_000_000);
    // Store recovery and compaction (issue 14: a store that recovers, a file that shrinks).
    /// After a failed store write the gateway answers 503 and probes the store
    /// first after this long, doubling per failed probe (at most store_retry_ms_max).
    store_retry_ms_min: u64, flag u64, via same,
        default 100, unit "ms", range int(1, 60_000);
    /// Longest wait between two probes of a failed store.
    store_retry_ms_max: u64, flag u64, via same,
        default 5_000, unit "ms", range int(1, 3_600_000);
    /// The store file is compacted (shrunk) once this many of its bytes are free (0 = never)...
    store_compact_free_bytes_min: u64, flag u64, via same,
        default 16 << 20, unit "bytes", range int(0, u64::MAX);
    /// ...and the live data is at least this share below its peak since the
    /// last compaction (a burst is gone; growth slack alone never compacts).
    store_compact_free_percent_min: u32, flag u32, via same,
        default 50, unit "%", range int(0, 100);
    /// Threads sending webhooks and callbacks.
    outbound_workers: usize, flag usize, via same,
        default 16, unit "threads", range int(1, limits::OUTBOUND_WORKERS_MAX as u64);
    /// Heartbeat-load threshold of this host; over it, new devices are refused
    /// and the newest are relieved (unset: no limit).
    max_heartbeats_per_s: Option<f64>, flag f64, via some,
        default None, unit "keep-alives/s", range above(0.0);
    /// Where refused or relieved MQTT 5 devices are sent (Server Reference, 0x9C).
    server_reference: Option<String>, flag String, via some,
        default None, unit "", range Range::Any;
    /// Longest heartbeat interval load relief may ask a device for.
    heartbeat_max_s: u16, flag u16, via same,
        default 1_800, unit "s", range int(1, u16::MAX as u64);
    /// Keep-alive dispersal on (true) or off (false).
    dispersal: bool, flag bool, via same,
        default true, unit "", range Range::Any;
    /// Keep-alive dispersal: a second is hot above this multiple of the uniform rate.
    dispersal_threshold_factor: f64, flag f64, via same,
        default 1.5, unit "x uniform rate", range at_least(1.0);
    /// Keep-alive dispersal: once seconds are hot, a second whose count plus the
    /// spread devices' share would stand above this multiple of the uniform rate
    /// is spread too (at most dispersal_threshold_factor).
    dispersal_select_factor: f64, flag f64, via same,
        default 1.2, unit "x uniform rate", range at_least(1.0);
    /// Which devices load relief picks first: the newest connections, or the
    /// lowest match of network and location to this host (newest among equals).
    relief_rule: ReliefRule, flag ReliefRule, via same,
        default ReliefRule::Newest, unit "", range Range::Any;
    /// This host's home network (match degree, seeds/004; also the dispersal zone).
    home_network: Option<(u16, u16)>, flag String, via network,
        default None, unit "", range Range::Any;
    /// This host's location area codes (match degree).
    home_areas: Vec<u32>, flag Vec<u32>, via same,
        default Vec::new(), unit "", range Range::Any, arg(value_delimiter = ',');
    /// Cross-shard rebalancing on (true) or off (false).
    rebalance: bool, flag bool, via same,
        default true, unit "", range Range::Any;
    /// Cross-shard rebalancing: move connections when the busiest shard holds
    /// more than this multiple of the idlest.
    rebalance_ratio: f64, flag f64, via same,
        default 1.25, unit "x (max/min)", range above(1.0);
    /// Shards must stay imbalanced this long before connections move, and a
    /// moved connection stays put at least this long.
    rebalance_hold_s: u32, flag u32, via same,
        default 10, unit "s", range int(1, DAY_S);
    /// Connections moved per rebalancing round, at most.
    rebalance_moves_per_round_max: u32, flag u32, via same,
        default 10_000, unit "connections", range int(1, limits::CONNECTIONS_PER_SHARD_MAX as u64);
    /// Only the first N shards accept connections (the others get theirs by
    /// rebalancing; mostly for demonstrating it); default all.
    listen_shards: usize, flag usize, via same,
        default usize::MAX => "all", unit "shards", range int(1, u64::MAX);
    // ----- outbound URL policy (callbacks and webhooks) -----
    /// Inward addresses webhooks and callbacks may reach anyway (relays on a
    /// private network): CIDR blocks or addresses, optionally with a port
    /// (`10.0.0.0/8`, `10.1.2.3:8443`, `[fd00::1]:443`); no hostnames (the
    /// check is on resolved addresses). Loopback, private, link-local, CGNAT,
    /// multicast and reserved addresses are refused unless named here; the
    /// gateway's own listeners always are.
    outbound_allow: Vec<AllowRule>, flag Vec<String>, via allow_rules,
        default Vec::new(), unit "", range Range::Any, arg(value_delimiter = ',');
    /// Callback POSTs one SP's messages may start per second (token bucket);
    /// beyond it callbacks wait their turn (delayed, not dropped).
    sp_callbacks_per_s: f64, flag f64, via same,
        default 50.0, unit "callbacks/s", range above(0.0);
    /// Burst of the per-SP callback bucket.
    sp_callbacks_burst: u32, flag u32, via same,
        default 100, unit "callbacks", range int(1, 1_000_000);
}

impl FileConfig {
    /// Moves the `[device_auth]` section onto the `device_auth_*` keys; the
    /// same setting given both ways is refused.
    pub(super) fn fold_device_auth(mut self) -> Result<FileConfig, ConfigError> {
        let Some(section) = self.device_auth.take() else {
            return Ok(self);
        };
        fn fold<T>(flat: &mut Option<T>, nested: Option<T>, name: &str) -> Result<(), ConfigError> {
            if nested.is_some() {
                if flat.is_some() {
                    return Err(ConfigError::Invalid {
                        setting: format!("device_auth.{name}"),
                        why: format!("also given as device_auth_{name}; keep one"),
                    });
                }
                *flat = nested;
            }
            Ok(())
        }
        fold(&mut self.device_auth_kind, section.kind, "kind")?;
        fold(&mut self.device_auth_algorithm, section.algorithm, "algorithm")?;
        fold(&mut self.device_auth_key_file, section.key_file, "key_file")?;
        fold(&mut self.device_auth_leeway_s, section.leeway_s, "leeway_s")?;
        Ok(self)
    }
}
