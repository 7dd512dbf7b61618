//! Runtime configuration: command-line flags over a TOML file over embedded
//! defaults, parsed and validated once at start-up.
//!
//! Owns `Config` and its validation. Must never be re-read or mutated after
//! start-up; every other module receives an `Arc<Config>`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;

use crate::limits;

/// Which event-loop backend the shards run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// io_uring, falling back to epoll when the kernel refuses the ring.
    Auto,
    /// io_uring only; start-up fails if it is unavailable.
    Uring,
    /// mio/epoll.
    Epoll,
}

/// Command-line flags. Every flag is optional so the TOML file can set it.
#[derive(Parser, Debug, Default)]
#[command(name = "pulsegate", version, about = "MQTT push gateway for mobile carriers")]
pub struct Flags {
    /// TOML configuration file (flags win over it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Once listening, write the bound addresses here as JSON (`pid`,
    /// `backend`, `shards`, `capacity`, `mqtt`, `http`), atomically (write, rename).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// MQTT listen address (every shard binds it with SO_REUSEPORT).
    #[arg(long)]
    pub mqtt_listen: Option<SocketAddr>,
    /// HTTP API listen address.
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// Shard threads (default: number of CPUs). May exceed the CPU count:
    /// each io_uring shard has its own fixed-file table.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Event-loop backend.
    #[arg(long, value_enum)]
    pub backend: Option<BackendChoice>,
    /// Connections held in total over all shards.
    #[arg(long)]
    pub max_connections: Option<u64>,
    /// MQTT 5 Server Keep Alive imposed in CONNACK (seconds).
    #[arg(long)]
    pub server_keepalive_s: Option<u16>,
    /// Seconds a new connection may take to send CONNECT.
    #[arg(long)]
    pub connect_timeout_s: Option<u32>,
    /// Largest MQTT packet accepted from a device.
    #[arg(long)]
    pub max_packet_bytes: Option<u32>,
    /// Server -> device QoS 1 window per connection.
    #[arg(long)]
    pub max_inflight: Option<u16>,
    /// QoS 1 pushes kept per device beyond the inflight window (and per stored session).
    #[arg(long)]
    pub pending_pushes_per_device_max: Option<u32>,
    /// Offline sessions (clean start false) kept in total.
    #[arg(long)]
    pub stored_sessions_max: Option<u32>,
    /// Longest an offline session is kept, whatever the client asks (seconds).
    #[arg(long)]
    pub session_expiry_max_s: Option<u32>,
    /// Bytes per provided receive buffer (io_uring backend).
    #[arg(long)]
    pub recv_buf_bytes: Option<u32>,
    /// Provided receive buffers per shard (io_uring backend, power of two).
    #[arg(long)]
    pub recv_bufs_per_shard: Option<u16>,
    /// Pin shard threads to CPUs (round-robin).
    #[arg(long)]
    pub pin_cpus: Option<bool>,
    /// Concurrent HTTP API connections.
    #[arg(long)]
    pub http_max_connections: Option<usize>,
    /// Largest HTTP request body.
    #[arg(long)]
    pub http_max_body_bytes: Option<usize>,
    /// Where accepted messages are stored (created if missing).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Default message time-to-live (seconds) when a request gives no ttl_s.
    #[arg(long)]
    pub default_ttl_s: Option<u32>,
    /// How long a QoS 1 push over the device's connection may wait for PUBACK.
    #[arg(long)]
    pub persistent_ack_timeout_ms: Option<u64>,
    /// Messages not yet in a terminal state, in total.
    #[arg(long)]
    pub pending_messages_max: Option<u32>,
    /// Heartbeat-load threshold of this host (keep-alives per second); over it,
    /// new devices are refused and the newest are relieved. Unset = no limit.
    #[arg(long)]
    pub max_heartbeats_per_s: Option<f64>,
    /// Where refused or relieved MQTT 5 devices are sent (Server Reference, 0x9C).
    #[arg(long)]
    pub server_reference: Option<String>,
    /// Keep-alive dispersal: a second is hot above this multiple of the uniform rate.
    #[arg(long)]
    pub dispersal_threshold_factor: Option<f64>,
    /// Keep-alive dispersal: once seconds are hot, a second whose count plus the spread
    /// devices' share would stand above this multiple of the uniform rate is spread too.
    #[arg(long)]
    pub dispersal_select_factor: Option<f64>,
    /// Turn keep-alive dispersal off.
    #[arg(long)]
    pub dispersal: Option<bool>,
    /// Longest heartbeat interval load relief may ask a device for (seconds).
    #[arg(long)]
    pub heartbeat_max_s: Option<u16>,
    /// Cross-shard rebalancing: move connections when shards differ this much (max/min).
    #[arg(long)]
    pub rebalance_ratio: Option<f64>,
    /// Shards must stay imbalanced this long before connections move, and a
    /// moved connection stays put at least this long (seconds).
    #[arg(long)]
    pub rebalance_hold_s: Option<u32>,
    /// Connections moved per rebalancing round, at most.
    #[arg(long)]
    pub rebalance_moves_per_round_max: Option<u32>,
    /// Turn cross-shard rebalancing off.
    #[arg(long)]
    pub rebalance: Option<bool>,
    /// Which devices load relief picks first: "newest" (connection), or
    /// "match_degree" (lowest match of network and location to this host first).
    #[arg(long)]
    pub relief_rule: Option<ReliefRule>,
    /// This host's home network, "MCC-MNC" (match degree, seeds/004).
    #[arg(long)]
    pub home_network: Option<String>,
    /// This host's location area codes (match degree), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub home_areas: Option<Vec<u32>>,
    /// Only the first N shards accept connections (the others get theirs by
    /// rebalancing); default all. Mostly for demonstrating rebalancing.
    #[arg(long)]
    pub listen_shards: Option<usize>,
}

/// Which connections heartbeat-load relief picks first (seeds/004's preset rule).
#[derive(clap::ValueEnum, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum ReliefRule {
    /// The most recent connections.
    Newest,
    /// The lowest match degree (network and location vs this host), newest among equals.
    MatchDegree,
}

/// An application server allowed to push (`[[sps]]` in the config file).
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpConfig {
    pub name: String,
    /// Bearer token for the HTTP API.
    pub api_key: String,
    /// Name of a `[profiles.NAME]` used when a request names none.
    #[serde(default)]
    pub default_profile: Option<String>,
    /// Messages accepted per second (token bucket, burst = one second's worth).
    #[serde(default)]
    pub rate_per_s: Option<f64>,
    /// May call the operator endpoints (`/v1/admin/...`).
    #[serde(default)]
    pub admin: bool,
}

/// The TOML file: same names as the flags, with underscores.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    mqtt_listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
    shards: Option<usize>,
    backend: Option<BackendChoice>,
    max_connections: Option<u64>,
    server_keepalive_s: Option<u16>,
    connect_timeout_s: Option<u32>,
    max_packet_bytes: Option<u32>,
    max_inflight: Option<u16>,
    pending_pushes_per_device_max: Option<u32>,
    stored_sessions_max: Option<u32>,
    session_expiry_max_s: Option<u32>,
    recv_buf_bytes: Option<u32>,
    recv_bufs_per_shard: Option<u16>,
    pin_cpus: Option<bool>,
    http_max_connections: Option<usize>,
    http_max_body_bytes: Option<usize>,
    data_dir: Option<PathBuf>,
    default_ttl_s: Option<u32>,
    persistent_ack_timeout_ms: Option<u64>,
    pending_messages_max: Option<u32>,
    max_heartbeats_per_s: Option<f64>,
    server_reference: Option<String>,
    dispersal_threshold_factor: Option<f64>,
    dispersal_select_factor: Option<f64>,
    dispersal: Option<bool>,
    heartbeat_max_s: Option<u16>,
    rebalance_ratio: Option<f64>,
    rebalance_hold_s: Option<u32>,
    rebalance_moves_per_round_max: Option<u32>,
    rebalance: Option<bool>,
    listen_shards: Option<usize>,
    relief_rule: Option<ReliefRule>,
    home_network: Option<String>,
    home_areas: Option<Vec<u32>>,
    #[serde(default)]
    sps: Vec<SpConfig>,
    #[serde(default)]
    profiles: std::collections::BTreeMap<String, crate::push::profile::Profile>,
    #[serde(default)]
    mechanisms: Vec<crate::push::mechanism::MechanismConfig>,
}

/// The effective configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub mqtt_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub shards: usize,
    pub backend: BackendChoice,
    pub max_connections: u64,
    pub server_keepalive_s: Option<u16>,
    pub connect_timeout_s: u32,
    pub max_packet_bytes: u32,
    pub max_inflight: u16,
    pub pending_pushes_per_device_max: u32,
    pub stored_sessions_max: u32,
    pub session_expiry_max_s: u32,
    pub recv_buf_bytes: u32,
    pub recv_bufs_per_shard: u16,
    pub pin_cpus: bool,
    pub http_max_connections: usize,
    pub http_max_body_bytes: usize,
    pub data_dir: PathBuf,
    pub default_ttl_s: u32,
    pub persistent_ack_timeout_ms: u64,
    pub pending_messages_max: u32,
    pub max_heartbeats_per_s: Option<f64>,
    pub server_reference: Option<String>,
    pub dispersal_threshold_factor: f64,
    /// A burst's shoulders join a dispersal round above this multiple of the uniform rate.
    pub dispersal_select_factor: f64,
    pub dispersal: bool,
    pub heartbeat_max_s: u16,
    /// Rebalance when the busiest shard holds more than this multiple of the idlest.
    pub rebalance_ratio: f64,
    pub rebalance_hold_s: u32,
    pub rebalance_moves_per_round_max: u32,
    pub rebalance: bool,
    /// Shards that accept connections (≤ shards).
    pub listen_shards: usize,
    pub relief_rule: ReliefRule,
    /// (MCC, MNC) of this host's network, for match degrees.
    pub home_network: Option<(u16, u16)>,
    pub home_areas: Vec<u32>,
    /// SPs and their API keys; empty = the API is open (a warning at start-up).
    pub sps: Vec<SpConfig>,
    pub profiles: std::collections::BTreeMap<String, crate::push::profile::Profile>,
    /// External mechanisms (webhooks); `persistent` is built in.
    pub mechanisms: Vec<crate::push::mechanism::MechanismConfig>,
}

/// Why a configuration was refused.
#[derive(Debug)]
pub enum ConfigError {
    FileUnreadable {
        path: PathBuf,
        error: std::io::Error,
    },
    FileInvalid {
        path: PathBuf,
        error: String,
    },
    OutOfRange {
        setting: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    Invalid {
        setting: String,
        why: String,
    },
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::FileUnreadable { path, error } => {
                write!(f, "cannot read config file {}: {error}", path.display())
            }
            ConfigError::FileInvalid { path, error } => {
                write!(f, "invalid config file {}: {error}", path.display())
            }
            ConfigError::OutOfRange {
                setting,
                value,
                min,
                max,
            } => {
                write!(f, "{setting} = {value} is out of range [{min}, {max}]")
            }
            ConfigError::Invalid { setting, why } => write!(f, "{setting}: {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Default for Config {
    fn default() -> Self {
        Config {
            mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shards: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            backend: BackendChoice::Auto,
            max_connections: 1_000_000,
            server_keepalive_s: None,
            connect_timeout_s: 10,
            max_packet_bytes: 256 * 1024,
            max_inflight: 32,
            pending_pushes_per_device_max: 64,
            stored_sessions_max: 1_000_000,
            session_expiry_max_s: 24 * 3600,
            recv_buf_bytes: 2048,
            recv_bufs_per_shard: 256,
            pin_cpus: true,
            http_max_connections: 256,
            http_max_body_bytes: 256 * 1024,
            data_dir: PathBuf::from("./pulsegate-data"),
            default_ttl_s: 24 * 3600,
            persistent_ack_timeout_ms: 10_000,
            pending_messages_max: 1_000_000,
            max_heartbeats_per_s: None,
            server_reference: None,
            dispersal_threshold_factor: 1.5,
            dispersal_select_factor: 1.2,
            dispersal: true,
            heartbeat_max_s: 1_800,
            rebalance_ratio: 1.25,
            rebalance_hold_s: 10,
            rebalance_moves_per_round_max: 10_000,
            rebalance: true,
            listen_shards: usize::MAX,
            relief_rule: ReliefRule::Newest,
            home_network: None,
            home_areas: Vec::new(),
            sps: Vec::new(),
            profiles: Default::default(),
            mechanisms: Vec::new(),
        }
    }
}

impl Config {
    /// Flags over file over defaults, then validation.
    pub fn from_flags(flags: &Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| ConfigError::FileUnreadable {
                    path: path.clone(),
                    error,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::FileInvalid {
                    path: path.clone(),
                    error: e.to_string(),
                })?
            }
        };
        let d = Config::default();
        let config = Config {
            mqtt_listen: flags.mqtt_listen.or(file.mqtt_listen).unwrap_or(d.mqtt_listen),
            http_listen: flags.http_listen.or(file.http_listen).unwrap_or(d.http_listen),
            shards: flags.shards.or(file.shards).unwrap_or(d.shards),
            backend: flags.backend.or(file.backend).unwrap_or(d.backend),
            max_connections: flags
                .max_connections
                .or(file.max_connections)
                .unwrap_or(d.max_connections),
            server_keepalive_s: flags.server_keepalive_s.or(file.server_keepalive_s),
            connect_timeout_s: flags
                .connect_timeout_s
                .or(file.connect_timeout_s)
                .unwrap_or(d.connect_timeout_s),
            max_packet_bytes: flags
                .max_packet_bytes
                .or(file.max_packet_bytes)
                .unwrap_or(d.max_packet_bytes),
            max_inflight: flags.max_inflight.or(file.max_inflight).unwrap_or(d.max_inflight),
            pending_pushes_per_device_max: flags
                .pending_pushes_per_device_max
                .or(file.pending_pushes_per_device_max)
                .unwrap_or(d.pending_pushes_per_device_max),
            stored_sessions_max: flags
                .stored_sessions_max
                .or(file.stored_sessions_max)
                .unwrap_or(d.stored_sessions_max),
            session_expiry_max_s: flags
                .session_expiry_max_s
                .or(file.session_expiry_max_s)
                .unwrap_or(d.session_expiry_max_s),
            recv_buf_bytes: flags.recv_buf_bytes.or(file.recv_buf_bytes).unwrap_or(d.recv_buf_bytes),
            recv_bufs_per_shard: flags
                .recv_bufs_per_shard
                .or(file.recv_bufs_per_shard)
                .unwrap_or(d.recv_bufs_per_shard),
            pin_cpus: flags.pin_cpus.or(file.pin_cpus).unwrap_or(d.pin_cpus),
            http_max_connections: flags
                .http_max_connections
                .or(file.http_max_connections)
                .unwrap_or(d.http_max_connections),
            http_max_body_bytes: flags
                .http_max_body_bytes
                .or(file.http_max_body_bytes)
                .unwrap_or(d.http_max_body_bytes),
            data_dir: flags.data_dir.clone().or(file.data_dir).unwrap_or(d.data_dir),
            default_ttl_s: flags.default_ttl_s.or(file.default_ttl_s).unwrap_or(d.default_ttl_s),
            persistent_ack_timeout_ms: flags
                .persistent_ack_timeout_ms
                .or(file.persistent_ack_timeout_ms)
                .unwrap_or(d.persistent_ack_timeout_ms),
            pending_messages_max: flags
                .pending_messages_max
                .or(file.pending_messages_max)
                .unwrap_or(d.pending_messages_max),
            max_heartbeats_per_s: flags.max_heartbeats_per_s.or(file.max_heartbeats_per_s),
            server_reference: flags.server_reference.clone().or(file.server_reference),
            dispersal_threshold_factor: flags
                .dispersal_threshold_factor
                .or(file.dispersal_threshold_factor)
                .unwrap_or(d.dispersal_threshold_factor),
            dispersal_select_factor: flags
                .dispersal_select_factor
                .or(file.dispersal_select_factor)
                .unwrap_or(d.dispersal_select_factor),
            dispersal: flags.dispersal.or(file.dispersal).unwrap_or(d.dispersal),
            heartbeat_max_s: flags
                .heartbeat_max_s
                .or(file.heartbeat_max_s)
                .unwrap_or(d.heartbeat_max_s),
            rebalance_ratio: flags
                .rebalance_ratio
                .or(file.rebalance_ratio)
                .unwrap_or(d.rebalance_ratio),
            rebalance_hold_s: flags
                .rebalance_hold_s
                .or(file.rebalance_hold_s)
                .unwrap_or(d.rebalance_hold_s),
            rebalance_moves_per_round_max: flags
                .rebalance_moves_per_round_max
                .or(file.rebalance_moves_per_round_max)
                .unwrap_or(d.rebalance_moves_per_round_max),
            rebalance: flags.rebalance.or(file.rebalance).unwrap_or(d.rebalance),
            listen_shards: flags.listen_shards.or(file.listen_shards).unwrap_or(d.listen_shards),
            relief_rule: flags.relief_rule.or(file.relief_rule).unwrap_or(d.relief_rule),
            home_network: match flags.home_network.clone().or(file.home_network) {
                None => None,
                Some(s) => Some(crate::protocol::mqtt::NetworkReport::parse_network(&s).ok_or_else(|| {
                    ConfigError::Invalid {
                        setting: "home_network".into(),
                        why: format!("{s:?} is not MCC-MNC (e.g. 460-01)"),
                    }
                })?),
            },
            home_areas: flags.home_areas.clone().or(file.home_areas).unwrap_or_default(),
            sps: file.sps,
            profiles: file.profiles,
            mechanisms: file.mechanisms,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        fn range(setting: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
            if value < min || value > max {
                return Err(ConfigError::OutOfRange {
                    setting,
                    value,
                    min,
                    max,
                });
            }
            Ok(())
        }
        range("shards", self.shards as u64, 1, limits::SHARDS_MAX as u64)?;
        range(
            "max_connections",
            self.max_connections,
            1,
            limits::CONNECTIONS_PER_SHARD_MAX as u64 * self.shards as u64,
        )?;
        range("connect_timeout_s", self.connect_timeout_s as u64, 1, 3600)?;
        range(
            "max_packet_bytes",
            self.max_packet_bytes as u64,
            64,
            limits::MAX_PACKET_BYTES_CEILING as u64,
        )?;
        range("max_inflight", self.max_inflight as u64, 1, limits::INFLIGHT_MAX as u64)?;
        range(
            "pending_pushes_per_device_max",
            self.pending_pushes_per_device_max as u64,
            0,
            65_536,
        )?;
        range("recv_buf_bytes", self.recv_buf_bytes as u64, 256, 1 << 20)?;
        range("recv_bufs_per_shard", self.recv_bufs_per_shard as u64, 16, 32_768)?;
        if !self.recv_bufs_per_shard.is_power_of_two() {
            return Err(ConfigError::OutOfRange {
                setting: "recv_bufs_per_shard (power of two)",
                value: self.recv_bufs_per_shard as u64,
                min: 16,
                max: 32_768,
            });
        }
        if let Some(ka) = self.server_keepalive_s {
            range("server_keepalive_s", ka as u64, 1, u16::MAX as u64)?;
        }
        range("http_max_connections", self.http_max_connections as u64, 1, 65_536)?;
        range("http_max_body_bytes", self.http_max_body_bytes as u64, 64, 64 << 20)?;
        range("default_ttl_s", self.default_ttl_s as u64, 1, 30 * 24 * 3600)?;
        range(
            "persistent_ack_timeout_ms",
            self.persistent_ack_timeout_ms,
            100,
            3_600_000,
        )?;
        range("pending_messages_max", self.pending_messages_max as u64, 1, 100_000_000)?;
        let invalid = |setting: String, why: String| Err(ConfigError::Invalid { setting, why });
        if self.max_heartbeats_per_s.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return invalid("max_heartbeats_per_s".into(), "must be a positive number".into());
        }
        if !(self.dispersal_threshold_factor >= 1.0 && self.dispersal_threshold_factor.is_finite()) {
            return invalid("dispersal_threshold_factor".into(), "must be ≥ 1".into());
        }
        if !(self.dispersal_select_factor >= 1.0 && self.dispersal_select_factor <= self.dispersal_threshold_factor) {
            return invalid(
                "dispersal_select_factor".into(),
                "must be ≥ 1 and at most dispersal_threshold_factor".into(),
            );
        }
        range("heartbeat_max_s", self.heartbeat_max_s as u64, 1, u16::MAX as u64)?;
        if !(self.rebalance_ratio > 1.0 && self.rebalance_ratio.is_finite()) {
            return invalid("rebalance_ratio".into(), "must be a number > 1".into());
        }
        range("rebalance_hold_s", self.rebalance_hold_s as u64, 1, 86_400)?;
        range(
            "rebalance_moves_per_round_max",
            self.rebalance_moves_per_round_max as u64,
            1,
            limits::CONNECTIONS_PER_SHARD_MAX as u64,
        )?;
        if self.listen_shards == 0 {
            return invalid("listen_shards".into(), "must be ≥ 1".into());
        }
        for (name, p) in &self.profiles {
            if let Err(why) = crate::push::profile::validate(p) {
                return invalid(format!("profiles.{name}"), why);
            }
        }
        let mut keys = std::collections::HashSet::new();
        for sp in &self.sps {
            if sp.api_key.len() < 8 {
                return invalid(
                    format!("sps.{}.api_key", sp.name),
                    "must be at least 8 characters".into(),
                );
            }
            if !keys.insert(sp.api_key.as_str()) {
                return invalid(format!("sps.{}.api_key", sp.name), "is used by another SP".into());
            }
            if let Some(p) = &sp.default_profile
                && !self.profiles.contains_key(p)
            {
                return invalid(format!("sps.{}.default_profile", sp.name), format!("no [profiles.{p}]"));
            }
            if sp.rate_per_s.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                return invalid(
                    format!("sps.{}.rate_per_s", sp.name),
                    "must be a positive number".into(),
                );
            }
        }
        let mut names = std::collections::HashSet::from(["persistent"]);
        for m in &self.mechanisms {
            if !names.insert(m.name.as_str()) {
                return invalid(format!("mechanisms.{}", m.name), "duplicate mechanism name".into());
            }
            if let crate::push::mechanism::Kind::Webhook { url } = &m.kind
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return invalid(
                    format!("mechanisms.{}.url", m.name),
                    "must be an http:// or https:// URL".into(),
                );
            }
        }
        Ok(())
    }

    /// Connection slots each shard owns.
    pub fn connections_per_shard(&self) -> u32 {
        let per = self.max_connections.div_ceil(self.shards as u64);
        per.min(limits::CONNECTIONS_PER_SHARD_MAX as u64) as u32
    }

    /// The effective configuration, one `key = value` per line (TOML).
    pub fn render(&self) -> String {
        let backend = match self.backend {
            BackendChoice::Auto => "auto",
            BackendChoice::Uring => "uring",
            BackendChoice::Epoll => "epoll",
        };
        let ka = self
            .server_keepalive_s
            .map(|s| s.to_string())
            .unwrap_or_else(|| "none (client's own)".into());
        let mut out = format!(
            "mqtt_listen = \"{}\"\nhttp_listen = \"{}\"\nshards = {}\nbackend = \"{backend}\"\nmax_connections = {}\n\
             server_keepalive_s = {ka}\nconnect_timeout_s = {}\nmax_packet_bytes = {}\nmax_inflight = {}\n\
             pending_pushes_per_device_max = {}\nstored_sessions_max = {}\nsession_expiry_max_s = {}\n\
             recv_buf_bytes = {}\nrecv_bufs_per_shard = {}\npin_cpus = {}\nhttp_max_connections = {}\nhttp_max_body_bytes = {}\n",
            self.mqtt_listen,
            self.http_listen,
            self.shards,
            self.max_connections,
            self.connect_timeout_s,
            self.max_packet_bytes,
            self.max_inflight,
            self.pending_pushes_per_device_max,
            self.stored_sessions_max,
            self.session_expiry_max_s,
            self.recv_buf_bytes,
            self.recv_bufs_per_shard,
            self.pin_cpus,
            self.http_max_connections,
            self.http_max_body_bytes,
        );
        let sps: Vec<&str> = self.sps.iter().map(|s| s.name.as_str()).collect();
        let mechanisms: Vec<&str> = self.mechanisms.iter().map(|m| m.name.as_str()).collect();
        let profiles: Vec<&str> = self.profiles.keys().map(|k| k.as_str()).collect();
        out.push_str(&format!(
            "data_dir = {:?}\ndefault_ttl_s = {}\npersistent_ack_timeout_ms = {}\npending_messages_max = {}\n\
             # sps = {sps:?} (api keys not shown)\n# profiles = {profiles:?}\n# mechanisms = [\"persistent\", {mechanisms:?}]\n",
            self.data_dir.display().to_string(),
            self.default_ttl_s,
            self.persistent_ack_timeout_ms,
            self.pending_messages_max,
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let dir = std::env::temp_dir().join(format!("pg-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        let path = dir.join("a.toml");
        std::fs::write(&path, "shards = 3\nmax_inflight = 7\nbackend = \"epoll\"\n").expect("temp file is writable");
        let flags = Flags::try_parse_from([
            "pulsegate",
            "--config",
            path.to_str().expect("utf-8 path"),
            "--shards",
            "5",
        ])
        .expect("flags parse");
        let c = Config::from_flags(&flags).expect("valid");
        assert_eq!(c.shards, 5);
        assert_eq!(c.max_inflight, 7);
        assert_eq!(c.backend, BackendChoice::Epoll);
        assert_eq!(c.connect_timeout_s, 10);
    }

    #[test]
    fn unknown_file_keys_and_out_of_range_values_are_refused() {
        let dir = std::env::temp_dir().join(format!("pg-config-b-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        let path = dir.join("b.toml");
        std::fs::write(&path, "shardz = 3\n").expect("temp file is writable");
        let flags =
            Flags::try_parse_from(["pulsegate", "--config", path.to_str().expect("utf-8 path")]).expect("parse");
        assert!(matches!(
            Config::from_flags(&flags),
            Err(ConfigError::FileInvalid { .. })
        ));
        let flags = Flags::try_parse_from(["pulsegate", "--shards", "0"]).expect("parse");
        assert!(matches!(
            Config::from_flags(&flags),
            Err(ConfigError::OutOfRange { setting: "shards", .. })
        ));
        let flags = Flags::try_parse_from(["pulsegate", "--recv-bufs-per-shard", "1000"]).expect("parse");
        assert!(Config::from_flags(&flags).is_err());
    }

    #[test]
    fn connections_are_split_over_shards() {
        let c = Config {
            shards: 3,
            max_connections: 100,
            ..Config::default()
        };
        assert_eq!(c.connections_per_shard(), 34);
    }
}
