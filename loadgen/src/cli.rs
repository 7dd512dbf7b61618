//! Command-line surface: one subcommand per scenario plus the hidden `worker`.
//!
//! Owns: option names, defaults, value ranges and the target safety check
//! (loopback only unless `--allow-remote`).
//! Must never: open sockets, spawn processes or read files; adding a scenario
//! means adding a subcommand here and a `Scenario` in `scenario/`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "pulsegate-loadgen",
    version,
    about = "Load generator for the pulsegate MQTT push gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Open N MQTT connections, keep them alive with PINGREQ, measure, disconnect.
    Hold(HoldArgs),
    /// `hold` plus pushes through the gateway's HTTP API, measuring end-to-end latency.
    Push(PushArgs),
    /// Reconnect thundering herd: connect N, then every device drops its TCP
    /// connection at once (no DISCONNECT) and reconnects immediately.
    Storm(StormArgs),
    /// Rush hour: connect N spread over a keep-alive period, then push once to every
    /// device as fast as HTTP allows; the PUBACKs synchronize the keep-alive timers.
    Rushhour(RushhourArgs),
    /// Heartbeat overload (seeds/004): connect N devices in waves so that their heartbeat
    /// load passes the gateway's --max-heartbeats-per-s; report the load per second, the
    /// devices adjusted, disconnected and refused. MQTT 5 by default (reason codes).
    Overload(OverloadArgs),
    /// Internal: one worker process of a scenario (started by the parent).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

/// Options shared by every device-holding scenario.
#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    /// MQTT server address, HOST:PORT (loopback only unless --allow-remote).
    #[arg(long)]
    pub target: String,
    /// Number of device connections to open.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
    pub connections: u64,
    /// How long the run lasts from start (ramp included), in seconds.
    #[arg(long)]
    pub duration_s: f64,
    /// Maximum total connect attempts per second across all workers.
    #[arg(long, default_value_t = 20_000.0)]
    pub ramp_per_s: f64,
    /// MQTT keep-alive sent in CONNECT, seconds (0 disables PINGREQ).
    #[arg(long, default_value_t = 60)]
    pub keepalive_s: u16,
    /// MQTT protocol level: 4 (3.1.1) or 5.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
    pub mqtt_version: u8,
    /// Source addresses, e.g. 127.0.0.2-127.0.0.254 or a list "a,b-c" or CIDR;
    /// "none" = let the kernel choose. Default for 127.x targets: 127.0.0.2-127.0.0.254.
    #[arg(long)]
    pub source_ips: Option<String>,
    /// Maximum connections per worker process (bounded by RLIMIT_NOFILE).
    #[arg(long, default_value_t = 18_000)]
    pub per_process_max: u64,
    /// Client id prefix; device i uses "{prefix}{i}".
    #[arg(long, default_value = "lg-")]
    pub client_id_prefix: String,
    /// Write the JSON report to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write report.json and a self-contained report.html (charts) into this directory.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// PID of the server, to sample its RSS and CPU time from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Hard cap on the run in seconds (default duration + 120).
    #[arg(long)]
    pub max_duration_s: Option<f64>,
    /// Permit non-loopback targets.
    #[arg(long)]
    pub allow_remote: bool,
    /// Maximum connects in flight (TCP + CONNACK) per worker. Large values overflow
    /// small accept backlogs (SYN drops cost a 1 s retransmit).
    #[arg(long, default_value_t = 256)]
    pub max_inflight: u32,
    /// Budget for TCP connect + CONNACK, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout_s: f64,
    /// After CONNACK, SUBSCRIBE to this filter ("{id}" = client id), e.g. "push/{id}".
    #[arg(long)]
    pub subscribe: Option<String>,
    /// QoS for --subscribe (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub subscribe_qos: u8,
    /// Longest heartbeat a device accepts from `$pulse/heartbeat` (its optimal value,
    /// seeds/004); 0 = whatever the server asks.
    #[arg(long, default_value_t = 0)]
    pub heartbeat_max_s: u16,
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// TLS and device tokens; every scenario has them and passes them to its workers.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityArgs {
    /// Connect with TLS (rustls client, ring provider).
    #[arg(long)]
    pub tls: bool,
    /// PEM CA certificate(s) to trust (default: the system roots).
    #[arg(long, requires = "tls")]
    pub tls_ca_file: Option<PathBuf>,
    /// Server name sent in SNI and checked against the certificate.
    #[arg(long, default_value = "localhost")]
    pub tls_server_name: String,
    /// Every handshake in full: no shared session cache (default: each worker
    /// process resumes with TLS 1.3 tickets / TLS 1.2 sessions it was given).
    #[arg(long)]
    pub no_tls_resume: bool,
    /// ALPN protocols offered, comma list, or "none".
    #[arg(long, default_value = "mqtt")]
    pub tls_alpn: String,
    /// HS256 secret: each CONNECT carries a JWT (claims clientid, iat, exp) as its
    /// password, with the client id as user name.
    #[arg(long)]
    pub jwt_secret_file: Option<PathBuf>,
    /// Lifetime of the device tokens, seconds (exp = iat + this).
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub jwt_ttl_s: u64,
}

#[derive(Args, Debug, Clone)]
pub struct HoldArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args, Debug, Clone)]
pub struct PushArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Gateway HTTP API address, HOST:PORT.
    #[arg(long)]
    pub http: String,
    /// Pushes per second (total).
    #[arg(long, default_value_t = 100.0)]
    pub rate_per_s: f64,
    /// QoS of the pushes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Extra payload padding bytes.
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    /// Parallel HTTP keep-alive connections.
    #[arg(long, default_value_t = 4)]
    pub http_connections: u32,
    /// Start pushing this many seconds after start (default: once all are connected).
    #[arg(long)]
    pub push_start_s: Option<f64>,
}

/// How a storm drops a connection.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StormClose {
    /// Abortive close: SO_LINGER 0, the kernel sends RST (a device losing its radio link
    /// and its NAT entry looks like this to the server once it writes).
    #[default]
    Rst,
    /// Plain close(): FIN, still without an MQTT DISCONNECT.
    Fin,
}

impl StormClose {
    pub fn as_str(self) -> &'static str {
        match self {
            StormClose::Rst => "rst",
            StormClose::Fin => "fin",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// When the storm hits, seconds after start (default: a third of --duration-s). It
    /// waits for all devices to be connected, but fires at the latest halfway between
    /// this time and the end of the hold.
    #[arg(long)]
    pub storm_at_s: Option<f64>,
    /// How each device drops its connection.
    #[arg(long, value_enum, default_value_t = StormClose::Rst)]
    pub storm_close: StormClose,
    /// Connect attempts per second (total) after the storm; 0 = unlimited (the herd).
    #[arg(long, default_value_t = 0.0)]
    pub storm_ramp_per_s: f64,
    /// Connects in flight per worker after the storm; 0 = unlimited (the herd).
    #[arg(long, default_value_t = 0)]
    pub storm_max_inflight: u32,
}

#[derive(Args, Debug, Clone)]
pub struct RushhourArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Gateway HTTP API address, HOST:PORT.
    #[arg(long)]
    pub http: String,
    /// When the burst starts, seconds after start (default: a third of --duration-s).
    #[arg(long)]
    pub burst_at_s: Option<f64>,
    /// Spread the connects over this many seconds, so that the keep-alives start spread
    /// out (default: --keepalive-s). The ramp is min(--ramp-per-s, N / spread).
    #[arg(long)]
    pub spread_s: Option<f64>,
    /// Parallel HTTP keep-alive connections for the burst.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub http_connections: u32,
    /// Requests pipelined per HTTP connection (written before reading the responses).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub pipeline: u32,
    /// QoS of the pushes (1 makes the device answer PUBACK, which restarts its timer).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Extra payload padding bytes.
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
}

#[derive(Args, Debug, Clone)]
#[command(mut_arg("mqtt_version", |a| a.default_value("5")))]
pub struct OverloadArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Gateway HTTP API address: sample its /metrics once per second into the report.
    #[arg(long)]
    pub http: Option<String>,
    /// Connect the devices in this many waves, so that admission control sees the load
    /// rise and closes before everyone is in.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub waves: u32,
    /// Seconds between waves (default: a quarter of --keepalive-s, at least 1).
    #[arg(long)]
    pub wave_interval_s: Option<f64>,
    /// The operator step: at --threshold-at-s, set the gateway's heartbeat-load
    /// threshold to this (PUT /v1/admin/heartbeat-limit on --http), e.g. half the
    /// load the connected devices offer.
    #[arg(long, requires = "http")]
    pub threshold_per_s: Option<f64>,
    /// When to apply --threshold-per-s, seconds from start (default: a third of the run).
    #[arg(long, requires = "threshold_per_s")]
    pub threshold_at_s: Option<f64>,
    /// Bearer API key for the admin call (an [[sps]] entry with admin = true).
    #[arg(long)]
    pub admin_api_key: Option<String>,
}

/// Hidden worker options; produced by the parent, not meant for humans.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    #[arg(long)]
    pub target_addr: SocketAddr,
    #[arg(long)]
    pub first_index: u64,
    #[arg(long)]
    pub count: u64,
    #[arg(long)]
    pub ramp_per_s: f64,
    #[arg(long)]
    pub max_inflight: u32,
    #[arg(long)]
    pub keepalive_s: u16,
    #[arg(long)]
    pub mqtt_version: u8,
    /// Normalized source list ("none" for kernel choice).
    #[arg(long)]
    pub source_ips: String,
    #[arg(long)]
    pub client_id_prefix: String,
    #[arg(long)]
    pub connect_timeout_ms: u64,
    /// Worker exits by itself after this many seconds.
    #[arg(long)]
    pub hard_stop_s: f64,
    /// Parent's start time (Unix ms); worker times are reported relative to it.
    #[arg(long)]
    pub epoch_unix_ms: u64,
    #[arg(long)]
    pub subscribe: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub subscribe_qos: u8,
    #[arg(long, default_value_t = 250)]
    pub report_ms: u64,
    /// On "storm" from the parent: how to drop connections.
    #[arg(long, value_enum, default_value_t = StormClose::Rst)]
    pub storm_close: StormClose,
    /// Connect rate of this worker after a storm (0 = unlimited).
    #[arg(long, default_value_t = 0.0)]
    pub storm_ramp_per_s: f64,
    /// Connects in flight after a storm (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    pub storm_max_inflight: u32,
    /// Longest heartbeat accepted from `$pulse/heartbeat` (0 = no cap).
    #[arg(long, default_value_t = 0)]
    pub heartbeat_max_s: u16,
    /// Fresh devices connect in this many waves (1 = all at the ramp rate).
    #[arg(long, default_value_t = 1)]
    pub waves: u32,
    /// Time between waves.
    #[arg(long, default_value_t = 0)]
    pub wave_interval_ms: u64,
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// Resolves HOST:PORT and enforces the loopback rule.
pub fn resolve_target(spec: &str, allow_remote: bool) -> Result<SocketAddr, String> {
    let addr = spec
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve target {spec:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("target {spec:?} resolved to no address"))?;
    if !allow_remote && !addr.ip().is_loopback() {
        return Err(format!(
            "refusing non-loopback target {addr} (from {spec:?}); pass --allow-remote to load a remote host"
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pulsegate-loadgen").chain(args.iter().copied()))
    }

    #[test]
    fn hold_defaults() {
        let cli = parse(&[
            "hold",
            "--target",
            "127.0.0.1:1883",
            "--connections",
            "100000",
            "--duration-s",
            "60",
        ])
        .unwrap();
        let Command::Hold(h) = cli.command else {
            panic!("not hold")
        };
        let c = h.conn;
        assert_eq!(c.connections, 100_000);
        assert_eq!(c.duration_s, 60.0);
        assert_eq!(c.ramp_per_s, 20_000.0);
        assert_eq!(c.keepalive_s, 60);
        assert_eq!(c.mqtt_version, 4);
        assert_eq!(c.per_process_max, 18_000);
        assert_eq!(c.client_id_prefix, "lg-");
        assert!(c.source_ips.is_none() && c.json.is_none() && c.server_pid.is_none() && !c.allow_remote);
        let sec = &c.security;
        assert!(!sec.tls && !sec.no_tls_resume && sec.tls_ca_file.is_none() && sec.jwt_secret_file.is_none());
        assert_eq!(
            (sec.tls_server_name.as_str(), sec.tls_alpn.as_str(), sec.jwt_ttl_s),
            ("localhost", "mqtt", 3600)
        );
    }

    #[test]
    fn security_options() {
        let base = [
            "storm",
            "--target",
            "127.0.0.1:8883",
            "--connections",
            "5",
            "--duration-s",
            "3",
        ];
        let mut v = base.to_vec();
        v.extend([
            "--tls",
            "--tls-ca-file",
            "/tmp/ca.pem",
            "--tls-server-name",
            "broker.test",
            "--no-tls-resume",
            "--tls-alpn",
            "none",
            "--jwt-secret-file",
            "/tmp/s",
            "--jwt-ttl-s",
            "60",
        ]);
        let Command::Storm(s) = parse(&v).unwrap().command else {
            panic!("not storm")
        };
        let sec = s.conn.security;
        assert!(sec.tls && sec.no_tls_resume);
        assert_eq!(sec.tls_ca_file.as_deref(), Some(std::path::Path::new("/tmp/ca.pem")));
        assert_eq!(
            (sec.tls_server_name.as_str(), sec.tls_alpn.as_str(), sec.jwt_ttl_s),
            ("broker.test", "none", 60)
        );
        // A CA file without --tls is a mistake, and a zero TTL is refused.
        let mut bad = base.to_vec();
        bad.extend(["--tls-ca-file", "/tmp/ca.pem"]);
        assert!(parse(&bad).is_err());
        let mut bad = base.to_vec();
        bad.extend(["--jwt-secret-file", "/tmp/s", "--jwt-ttl-s", "0"]);
        assert!(parse(&bad).is_err());
    }

    #[test]
    fn hold_all_options() {
        let cli = parse(&[
            "hold",
            "--target",
            "127.0.0.1:1883",
            "--connections",
            "5",
            "--duration-s",
            "3.5",
            "--ramp-per-s",
            "100",
            "--keepalive-s",
            "1",
            "--mqtt-version",
            "5",
            "--source-ips",
            "127.0.0.2-127.0.0.9",
            "--per-process-max",
            "2",
            "--client-id-prefix",
            "x",
            "--json",
            "/tmp/r.json",
            "--server-pid",
            "42",
            "--max-duration-s",
            "9",
            "--max-inflight",
            "7",
            "--subscribe",
            "push/{id}",
        ])
        .unwrap();
        let Command::Hold(h) = cli.command else {
            panic!("not hold")
        };
        let c = h.conn;
        assert_eq!(
            (c.keepalive_s, c.mqtt_version, c.per_process_max, c.max_inflight),
            (1, 5, 2, 7)
        );
        assert_eq!(c.source_ips.as_deref(), Some("127.0.0.2-127.0.0.9"));
        assert_eq!(c.server_pid, Some(42));
        assert_eq!(c.max_duration_s, Some(9.0));
        assert_eq!(c.subscribe.as_deref(), Some("push/{id}"));
    }

    #[test]
    fn rejects_bad_values() {
        let base = ["hold", "--target", "127.0.0.1:1", "--duration-s", "1"];
        let with = |extra: &[&str]| {
            let mut v: Vec<&str> = base.to_vec();
            v.extend_from_slice(extra);
            parse(&v)
        };
        assert!(with(&["--connections", "0"]).is_err());
        assert!(with(&["--connections", "1", "--mqtt-version", "3"]).is_err());
        assert!(with(&["--connections", "x"]).is_err());
        assert!(with(&["--connections", "1", "--bogus"]).is_err());
        assert!(parse(&["hold", "--connections", "1", "--duration-s", "1"]).is_err());
        // no target
    }

    #[test]
    fn push_options() {
        let cli = parse(&[
            "push",
            "--target",
            "127.0.0.1:1883",
            "--connections",
            "10",
            "--duration-s",
            "5",
            "--http",
            "127.0.0.1:8080",
            "--rate-per-s",
            "50",
            "--qos",
            "0",
        ])
        .unwrap();
        let Command::Push(p) = cli.command else {
            panic!("not push")
        };
        assert_eq!(p.http, "127.0.0.1:8080");
        assert_eq!((p.rate_per_s, p.qos, p.http_connections), (50.0, 0, 4));
        assert!(parse(&[
            "push",
            "--target",
            "127.0.0.1:1",
            "--connections",
            "1",
            "--duration-s",
            "1"
        ])
        .is_err());
    }

    #[test]
    fn storm_options() {
        let base = [
            "storm",
            "--target",
            "127.0.0.1:1883",
            "--connections",
            "500",
            "--duration-s",
            "6",
        ];
        let Command::Storm(s) = parse(&base).unwrap().command else {
            panic!("not storm")
        };
        assert_eq!(s.storm_at_s, None);
        assert_eq!(s.storm_close, StormClose::Rst);
        assert_eq!((s.storm_ramp_per_s, s.storm_max_inflight), (0.0, 0));
        assert!(s.conn.report.is_none());
        let mut v = base.to_vec();
        v.extend([
            "--storm-at-s",
            "2.5",
            "--storm-close",
            "fin",
            "--storm-ramp-per-s",
            "5000",
            "--storm-max-inflight",
            "64",
            "--report",
            "/tmp/rep",
        ]);
        let Command::Storm(s) = parse(&v).unwrap().command else {
            panic!("not storm")
        };
        assert_eq!(s.storm_at_s, Some(2.5));
        assert_eq!(s.storm_close.as_str(), "fin");
        assert_eq!((s.storm_ramp_per_s, s.storm_max_inflight), (5000.0, 64));
        assert_eq!(s.conn.report.as_deref(), Some(std::path::Path::new("/tmp/rep")));
        let mut bad = base.to_vec();
        bad.extend(["--storm-close", "explode"]);
        assert!(parse(&bad).is_err());
        let mut bad = base.to_vec();
        bad.extend(["--storm-at-s", "soon"]);
        assert!(parse(&bad).is_err());
    }

    #[test]
    fn rushhour_options() {
        let base = [
            "rushhour",
            "--target",
            "127.0.0.1:1883",
            "--connections",
            "20000",
            "--duration-s",
            "150",
            "--keepalive-s",
            "20",
        ];
        // --http is required
        assert!(parse(&base).is_err());
        let mut v = base.to_vec();
        v.extend(["--http", "127.0.0.1:8080"]);
        let Command::Rushhour(r) = parse(&v).unwrap().command else {
            panic!("not rushhour")
        };
        assert_eq!((r.burst_at_s, r.spread_s), (None, None));
        assert_eq!((r.http_connections, r.pipeline, r.qos, r.payload_bytes), (16, 8, 1, 0));
        assert_eq!(r.conn.keepalive_s, 20);
        v.extend([
            "--burst-at-s",
            "60",
            "--spread-s",
            "10",
            "--http-connections",
            "4",
            "--pipeline",
            "1",
            "--qos",
            "0",
        ]);
        let Command::Rushhour(r) = parse(&v).unwrap().command else {
            panic!("not rushhour")
        };
        assert_eq!((r.burst_at_s, r.spread_s), (Some(60.0), Some(10.0)));
        assert_eq!((r.http_connections, r.pipeline, r.qos), (4, 1, 0));
        let mut bad = v.clone();
        bad.extend(["--http-connections", "0"]);
        assert!(parse(&bad).is_err());
        let mut bad = v.clone();
        bad.extend(["--qos", "2"]);
        assert!(parse(&bad).is_err());
    }

    #[test]
    fn overload_options() {
        let base = [
            "overload",
            "--target",
            "127.0.0.1:1883",
            "--connections",
            "10000",
            "--keepalive-s",
            "10",
            "--duration-s",
            "90",
        ];
        let Command::Overload(o) = parse(&base).unwrap().command else {
            panic!("not overload")
        };
        assert_eq!(
            (o.conn.connections, o.conn.keepalive_s, o.conn.duration_s),
            (10_000, 10, 90.0)
        );
        assert_eq!(
            o.conn.mqtt_version, 5,
            "overload defaults to MQTT 5 for the reason codes"
        );
        assert_eq!(
            (o.http, o.waves, o.wave_interval_s, o.conn.heartbeat_max_s),
            (None, 10, None, 0)
        );
        let mut v = base.to_vec();
        v.extend([
            "--http",
            "127.0.0.1:8080",
            "--waves",
            "4",
            "--wave-interval-s",
            "2.5",
            "--heartbeat-max-s",
            "40",
            "--mqtt-version",
            "4",
            "--json",
            "/tmp/o.json",
        ]);
        let Command::Overload(o) = parse(&v).unwrap().command else {
            panic!("not overload")
        };
        assert_eq!(o.http.as_deref(), Some("127.0.0.1:8080"));
        assert_eq!((o.waves, o.wave_interval_s, o.conn.heartbeat_max_s), (4, Some(2.5), 40));
        assert_eq!(o.conn.mqtt_version, 4);
        let mut bad = base.to_vec();
        bad.extend(["--waves", "0"]);
        assert!(parse(&bad).is_err());
        // Other scenarios keep MQTT 3.1.1 as their default.
        let Command::Hold(h) = parse(&[
            "hold",
            "--target",
            "127.0.0.1:1",
            "--connections",
            "1",
            "--duration-s",
            "1",
        ])
        .unwrap()
        .command
        else {
            panic!("not hold")
        };
        assert_eq!(h.conn.mqtt_version, 4);
    }

    #[test]
    fn worker_is_parseable() {
        let cli = parse(&[
            "worker",
            "--target-addr",
            "127.0.0.1:1883",
            "--first-index",
            "18000",
            "--count",
            "18000",
            "--ramp-per-s",
            "3333.3",
            "--max-inflight",
            "1000",
            "--keepalive-s",
            "60",
            "--mqtt-version",
            "4",
            "--source-ips",
            "none",
            "--client-id-prefix",
            "lg-",
            "--connect-timeout-ms",
            "10000",
            "--hard-stop-s",
            "180",
            "--epoch-unix-ms",
            "1",
        ])
        .unwrap();
        assert!(
            matches!(cli.command, Command::Worker(ref w) if w.first_index == 18_000 && w.report_ms == 250
            && w.storm_close == StormClose::Rst && w.storm_max_inflight == 0
            && w.waves == 1 && w.wave_interval_ms == 0 && w.heartbeat_max_s == 0)
        );
    }

    #[test]
    fn loopback_rule() {
        assert!(resolve_target("127.0.0.1:1883", false).is_ok());
        assert!(resolve_target("[::1]:1883", false).is_ok());
        assert!(resolve_target("127.9.9.9:1", false).is_ok());
        let err = resolve_target("10.0.0.1:1883", false).unwrap_err();
        assert!(err.contains("--allow-remote"));
        assert!(resolve_target("10.0.0.1:1883", true).is_ok());
        assert!(resolve_target("nonsense", false).is_err());
    }
}
