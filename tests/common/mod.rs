//! Shared helpers for the pulsegate integration tests: a `Gateway` guard that runs the real
//! binary on 127.0.0.1 port 0 (parsing its ready line, SIGTERM then SIGKILL on drop), a small
//! blocking MQTT client built on the gateway's own codec, a tiny HTTP/1.1 client, Prometheus
//! text helpers, and the `both_backends!` macro that runs each behaviour test on io_uring and
//! on epoll.
//!
//! Every read here has a timeout; every wait has a deadline.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use pulsegate::protocol::mqtt::{
    Connect, ConnectProperties, Disconnect, Packet, ProtocolVersion, PubAck, Publish, PublishProperties, Subscribe,
    SubscriptionOptions, Unsubscribe, check_frame, decode_packet,
};

pub use pulsegate::protocol::mqtt::ProtocolVersion::{V5, V311};

/// Both event-loop backends; every behaviour test runs once per entry.
pub const BACKENDS: [&str; 2] = ["uring", "epoll"];

/// Generates `mod uring { #[test] fn name() }` and `mod epoll { ... }` calling `name(backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $( #[test] fn $name() { super::$name("uring"); } )*
        }
        mod epoll {
            $( #[test] fn $name() { super::$name("epoll"); } )*
        }
    };
}

/// Whether an HTTP status means "push accepted" (202 in the first API, 201 since messages
/// became durable resources).
pub fn accepted(status: u16) -> bool {
    status == 201 || status == 202
}

/// Default time to wait for a packet the test expects.
pub const WAIT: Duration = Duration::from_secs(3);
/// How long "nothing arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// Gateway process guard
// ---------------------------------------------------------------------------------------------

pub struct Gateway {
    child: Child,
    pub backend: String,
    pub shards: usize,
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    stderr: Arc<Mutex<String>>,
    exited: Option<ExitStatus>,
    data_dir: std::path::PathBuf,
}

impl Gateway {
    /// 2 shards, unpinned, on `backend`, plus `extra` flags.
    pub fn start(backend: &str, extra: &[&str]) -> Gateway {
        Gateway::start_with_shards(backend, 2, extra)
    }

    pub fn start_with_shards(backend: &str, shards: usize, extra: &[&str]) -> Gateway {
        let shards_s = shards.to_string();
        // Each gateway gets its own store directory (the default is relative to the cwd and
        // locked, so parallel gateways would collide), removed on drop.
        static NEXT_DIR: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let data_dir = std::env::temp_dir().join(format!(
            "pulsegate-it-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&data_dir);
        let data_dir_s = data_dir.to_str().expect("utf-8 temp dir").to_string();
        let mut args: Vec<&str> = vec![
            "--data-dir",
            &data_dir_s,
            "--mqtt-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--shards",
            &shards_s,
            "--backend",
            backend,
            "--pin-cpus",
            "false",
        ];
        args.extend_from_slice(extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_pulsegate"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pulsegate");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stderr_pipe);
                let mut line = String::new();
                while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                    stderr.lock().unwrap().push_str(&line);
                    line.clear();
                }
            });
        }
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let mut tx = Some(tx);
            // Keep draining stdout until EOF so the child never blocks on a full pipe.
            while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                if line.starts_with("pulsegate: ready")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line.trim().to_string());
                }
                line.clear();
            }
        });
        let ready = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_dir_all(&data_dir);
                panic!(
                    "pulsegate did not print its ready line; stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        let field = |name: &str| -> String {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("ready line lacks {name}=: {ready}"))
                .to_string()
        };
        assert_eq!(field("backend"), backend, "ready line: {ready}");
        assert_eq!(field("shards"), shards.to_string(), "ready line: {ready}");
        let mqtt: SocketAddr = field("mqtt").parse().expect("mqtt address");
        let http: SocketAddr = field("http").parse().expect("http address");
        assert!(mqtt.ip().is_loopback() && http.ip().is_loopback());
        Gateway {
            child,
            backend: backend.to_string(),
            shards,
            mqtt,
            http,
            stderr,
            exited: None,
            data_dir,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn sigterm(&self) {
        unsafe_kill(self.pid(), libc::SIGTERM);
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exited {
            return Some(s);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exited = Some(s);
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    // -- MQTT ------------------------------------------------------------------------------

    pub fn tcp(&self) -> TcpStream {
        let s = TcpStream::connect_timeout(&self.mqtt, Duration::from_secs(3)).expect("tcp connect to mqtt port");
        s.set_nodelay(true).ok();
        s
    }

    /// Connects and expects a successful CONNACK.
    pub fn connect(&self, opts: &ConnectOpts) -> (Client, ConnAckInfo) {
        let mut c = Client::new(self.tcp(), opts.version);
        let ack = c.handshake(opts);
        assert_eq!(ack.reason, 0, "CONNACK refused for {:?}: {ack:?}", opts.client_id);
        (c, ack)
    }

    pub fn connect_id(&self, version: ProtocolVersion, id: &str) -> Client {
        self.connect(&ConnectOpts::new(version, id)).0
    }

    /// Opens a TCP connection and reports which shard accepted it (from the per-shard accept
    /// counter; tests never connect concurrently to one gateway while using this).
    pub fn tcp_with_shard(&self) -> (TcpStream, usize) {
        let before = self.accepts_per_shard();
        let s = self.tcp();
        let deadline = Instant::now() + WAIT;
        loop {
            let after = self.accepts_per_shard();
            if let Some(shard) = (0..after.len()).find(|&i| after[i] > before[i]) {
                return (s, shard);
            }
            assert!(Instant::now() < deadline, "no shard counted the accept");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// One bare TCP connection (no CONNECT yet) accepted by each shard, in shard order.
    pub fn tcp_on_each_shard(&self) -> Vec<TcpStream> {
        (0..self.shards)
            .map(|want| {
                loop {
                    let (s, shard) = self.tcp_with_shard();
                    if shard == want {
                        break s;
                    }
                }
            })
            .collect()
    }

    /// Connects (CONNECT + successful CONNACK) on a shard for which `want` holds.
    pub fn connect_on_shard_where(
        &self,
        opts: &ConnectOpts,
        want: impl Fn(usize) -> bool,
    ) -> (Client, ConnAckInfo, usize) {
        for _ in 0..64 {
            let (s, shard) = self.tcp_with_shard();
            if !want(shard) {
                continue;
            }
            let mut c = Client::new(s, opts.version);
            let ack = c.handshake(opts);
            assert_eq!(ack.reason, 0, "CONNACK refused for {:?}: {ack:?}", opts.client_id);
            return (c, ack, shard);
        }
        panic!("64 connections never landed on the wanted shard");
    }

    /// Connects one client per shard, ids `{prefix}-{shard}`. Returns (client, shard) pairs.
    pub fn connect_on_every_shard(&self, version: ProtocolVersion, prefix: &str) -> Vec<(Client, usize)> {
        self.connect_on_every_shard_with(prefix, |id| ConnectOpts::new(version, id))
    }

    pub fn connect_on_every_shard_with(
        &self,
        prefix: &str,
        opts: impl Fn(&str) -> ConnectOpts,
    ) -> Vec<(Client, usize)> {
        (0..self.shards)
            .map(|shard| {
                let (c, _, s) = self.connect_on_shard_where(&opts(&format!("{prefix}-{shard}")), |s| s == shard);
                (c, s)
            })
            .collect()
    }

    pub fn accepts_per_shard(&self) -> Vec<u64> {
        let text = self.metrics();
        (0..self.shards)
            .map(|s| metric_value(&text, &format!("pulsegate_accepts_total{{shard=\"{s}\"}}")))
            .collect()
    }

    // -- HTTP ------------------------------------------------------------------------------

    pub fn http_conn(&self) -> HttpConn {
        HttpConn::open(self.http)
    }

    /// POST /v1/messages on a fresh connection. Returns (status, body).
    pub fn push(&self, device: &str, payload: &str, qos: u8) -> (u16, String) {
        self.http_conn().push(device, payload, qos)
    }

    /// POST that must be accepted (202 with an id).
    pub fn push_ok(&self, device: &str, payload: &str, qos: u8) -> String {
        let (status, body) = self.push(device, payload, qos);
        assert!(accepted(status), "push to {device} refused: {status} {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("accept body is JSON");
        v["id"].as_str().expect("accept body has an id").to_string()
    }

    pub fn metrics(&self) -> String {
        let (status, body) = self.http_conn().request("GET", "/metrics", None);
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// One sample, e.g. `pulsegate_connects_total{version="5"}` (0 if absent).
    pub fn metric(&self, series: &str) -> u64 {
        metric_value(&self.metrics(), series)
    }

    /// Sum of every series of `name` (all label sets).
    pub fn metric_sum(&self, name: &str) -> u64 {
        metric_sum(&self.metrics(), name)
    }

    pub fn connections_per_shard(&self) -> Vec<u64> {
        let text = self.metrics();
        (0..self.shards)
            .map(|s| metric_value(&text, &format!("pulsegate_connections{{shard=\"{s}\"}}")))
            .collect()
    }

    pub fn protocol_errors(&self, kind: &str) -> u64 {
        self.metric(&format!("pulsegate_protocol_errors_total{{kind=\"{kind}\"}}"))
    }

    pub fn closes(&self, reason: &str) -> u64 {
        self.metric(&format!("pulsegate_closes_total{{reason=\"{reason}\"}}"))
    }

    /// Polls /metrics until `pred(value of series)` holds; returns the last value.
    pub fn wait_metric(&self, series: &str, timeout: Duration, pred: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = if series.contains('{') {
                self.metric(series)
            } else {
                self.metric_sum(series)
            };
            if pred(v) {
                return v;
            }
            if Instant::now() >= deadline {
                panic!("{series} = {v} never satisfied the condition within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the summed connection gauge equals `n`.
    pub fn wait_connections(&self, n: u64, timeout: Duration) {
        self.wait_metric("pulsegate_connections", timeout, |v| v == n);
    }

    /// The healthy-client check: `c` (connected earlier) still gets PINGRESP and a QoS 0 push.
    pub fn assert_healthy(&self, c: &mut Client) {
        c.send(&Packet::PingReq);
        match c.recv(WAIT) {
            Ok(Rx::PingResp) => {}
            other => panic!("healthy client {} got {other:?} instead of PINGRESP", c.id),
        }
        let payload = format!("still-alive-{}", c.id);
        self.push_ok(&c.id.clone(), &payload, 0);
        let p = c.expect_publish(WAIT);
        assert_eq!(p.topic, format!("push/{}", c.id));
        assert_eq!(p.payload, payload.as_bytes());
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.exited.is_none()
            && let Ok(None) = self.child.try_wait()
        {
            self.sigterm();
            if self.wait_exit(Duration::from_secs(3)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("--- pulsegate ({}) stderr ---\n{}", self.backend, self.stderr());
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn unsafe_kill(pid: i32, sig: i32) {
    // kill(2) on our own child's pid; no memory is involved.
    unsafe {
        libc::kill(pid, sig);
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------------------------

pub fn metric_value(text: &str, series: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .map(|v| v as u64)
        .unwrap_or(0)
}

pub fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let base = series.split('{').next()?;
            (base == name).then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .map(|v| v as u64)
        .sum()
}

// ---------------------------------------------------------------------------------------------
// MQTT client
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct ConnectOpts {
    pub version: ProtocolVersion,
    pub client_id: String,
    pub clean_start: bool,
    pub keepalive_s: u16,
    pub props: ConnectProperties,
}

impl ConnectOpts {
    pub fn new(version: ProtocolVersion, client_id: &str) -> ConnectOpts {
        ConnectOpts {
            version,
            client_id: client_id.to_string(),
            clean_start: true,
            keepalive_s: 60,
            props: ConnectProperties::default(),
        }
    }

    pub fn keepalive(mut self, s: u16) -> Self {
        self.keepalive_s = s;
        self
    }

    pub fn clean(mut self, clean: bool) -> Self {
        self.clean_start = clean;
        self
    }

    pub fn session_expiry(mut self, s: u32) -> Self {
        self.props.session_expiry_interval_s = Some(s);
        self
    }

    pub fn receive_maximum(mut self, n: u16) -> Self {
        self.props.receive_maximum = Some(n);
        self
    }

    pub fn max_packet(mut self, n: u32) -> Self {
        self.props.maximum_packet_size_bytes = Some(n);
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let c = Connect {
            protocol_version: self.version,
            clean_start: self.clean_start,
            keepalive_s: self.keepalive_s,
            client_id: &self.client_id,
            username: None,
            password: None,
            will: None,
            properties: self.props,
        };
        let mut out = Vec::new();
        Packet::Connect(c).encode(self.version, &mut out);
        out
    }
}

/// CONNACK, owned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnAckInfo {
    pub session_present: bool,
    pub reason: u8,
    pub receive_maximum: Option<u16>,
    pub maximum_packet_size: Option<u32>,
    pub maximum_qos: Option<u8>,
    pub server_keep_alive: Option<u16>,
    pub assigned_client_identifier: Option<String>,
    pub session_expiry: Option<u32>,
}

/// PUBLISH, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pub {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    pub packet_id: Option<u16>,
    pub payload: Vec<u8>,
}

/// A packet received from the gateway, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rx {
    ConnAck(ConnAckInfo),
    Publish(Pub),
    PubAck { packet_id: u16, reason: u8 },
    SubAck { packet_id: u16, codes: Vec<u8> },
    UnsubAck { packet_id: u16, codes: Vec<u8> },
    PingResp,
    Disconnect { reason: u8 },
    Other(String),
}

/// Why `recv` returned no packet.
#[derive(Debug, PartialEq, Eq)]
pub enum RecvError {
    Timeout,
    /// EOF or reset.
    Closed,
    Decode(String),
}

pub struct Client {
    pub stream: TcpStream,
    pub version: ProtocolVersion,
    pub id: String,
    buf: Vec<u8>,
}

impl Client {
    pub fn new(stream: TcpStream, version: ProtocolVersion) -> Client {
        Client {
            stream,
            version,
            id: String::new(),
            buf: Vec::new(),
        }
    }

    /// Sends CONNECT, returns the CONNACK. Records the (assigned) client id.
    pub fn handshake(&mut self, opts: &ConnectOpts) -> ConnAckInfo {
        self.write_raw(&opts.encode());
        match self.recv(WAIT) {
            Ok(Rx::ConnAck(a)) => {
                self.id = a
                    .assigned_client_identifier
                    .clone()
                    .unwrap_or_else(|| opts.client_id.clone());
                a
            }
            other => panic!("expected CONNACK for {:?}, got {other:?}", opts.client_id),
        }
    }

    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.set_write_timeout(Some(WAIT)).ok();
        self.stream.write_all(bytes).expect("write to gateway");
    }

    /// Writes, ignoring errors (the peer may already have closed).
    pub fn try_write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.set_write_timeout(Some(WAIT)).ok();
        self.stream.write_all(bytes)
    }

    pub fn send(&mut self, p: &Packet<'_>) {
        let mut out = Vec::new();
        p.encode(self.version, &mut out);
        self.write_raw(&out);
    }

    pub fn ping(&mut self) {
        self.send(&Packet::PingReq);
    }

    pub fn puback(&mut self, packet_id: u16) {
        self.send(&Packet::PubAck(PubAck { packet_id, reason: 0 }));
    }

    pub fn publish(&mut self, topic: &str, qos: u8, packet_id: Option<u16>, payload: &[u8]) {
        let p = Publish {
            dup: false,
            qos,
            retain: false,
            topic,
            packet_id,
            payload,
            properties: PublishProperties::default(),
        };
        self.send(&Packet::Publish(p));
    }

    pub fn subscribe(&mut self, packet_id: u16, filters: &[(&str, u8)]) {
        let filters = filters
            .iter()
            .map(|(f, q)| (*f, SubscriptionOptions::qos(*q)))
            .collect();
        self.send(&Packet::Subscribe(Subscribe { packet_id, filters }));
    }

    pub fn unsubscribe(&mut self, packet_id: u16, filters: &[&str]) {
        self.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id,
            filters: filters.to_vec(),
        }));
    }

    pub fn disconnect(&mut self) {
        self.send(&Packet::Disconnect(Disconnect::NORMAL));
    }

    /// Next whole packet, waiting at most `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Result<Rx, RecvError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(rx) = self.take_buffered()? {
                return Ok(rx);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RecvError::Timeout);
            }
            self.stream
                .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
                .ok();
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(RecvError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(RecvError::Timeout);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(RecvError::Closed),
            }
        }
    }

    fn take_buffered(&mut self) -> Result<Option<Rx>, RecvError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let h = match check_frame(&self.buf, u32::MAX) {
            Ok(h) => h,
            Err(pulsegate::protocol::mqtt::DecodeError::Incomplete { .. }) => return Ok(None),
            Err(e) => return Err(RecvError::Decode(e.to_string())),
        };
        let total = h.total_len();
        if self.buf.len() < total {
            return Ok(None);
        }
        let rx = {
            let p = decode_packet(&self.buf[..total], self.version).map_err(|e| RecvError::Decode(e.to_string()))?;
            to_owned(p)
        };
        self.buf.drain(..total);
        Ok(Some(rx))
    }

    /// Next packet must be a PUBLISH.
    pub fn expect_publish(&mut self, timeout: Duration) -> Pub {
        match self.recv(timeout) {
            Ok(Rx::Publish(p)) => p,
            other => panic!("client {}: expected PUBLISH, got {other:?}", self.id),
        }
    }

    /// Asserts nothing arrives (and the connection stays open) for `d`.
    pub fn expect_silence(&mut self, d: Duration) {
        match self.recv(d) {
            Err(RecvError::Timeout) => {}
            other => panic!("client {}: expected silence, got {other:?}", self.id),
        }
    }

    /// Reads until the gateway closes the connection, at most `timeout`. Returns the packets
    /// received before the close, or panics if the connection stays open.
    pub fn expect_closed(&mut self, timeout: Duration) -> Vec<Rx> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Ok(p) => got.push(p),
                Err(RecvError::Closed) => return got,
                Err(RecvError::Decode(e)) => panic!(
                    "client {}: undecodable bytes from gateway: {e} (after {got:?})",
                    self.id
                ),
                Err(RecvError::Timeout) => {
                    panic!("client {}: still open after {timeout:?} (received {got:?})", self.id)
                }
            }
        }
    }

    /// Like `expect_closed`, returning also when the close happened.
    pub fn closed_at(&mut self, timeout: Duration) -> (Vec<Rx>, Instant) {
        let got = self.expect_closed(timeout);
        (got, Instant::now())
    }

    /// Raw bytes until the gateway closes (anything already buffered first); panics if the
    /// connection is still open after `timeout`.
    pub fn raw_until_closed(&mut self, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let mut got = std::mem::take(&mut self.buf);
        loop {
            let now = Instant::now();
            assert!(now < deadline, "still open after {timeout:?} (received {got:02x?})");
            self.stream.set_read_timeout(Some(deadline - now)).ok();
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return got,
            }
        }
    }

    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

fn to_owned(p: Packet<'_>) -> Rx {
    match p {
        Packet::ConnAck(a) => Rx::ConnAck(ConnAckInfo {
            session_present: a.session_present,
            reason: a.reason,
            receive_maximum: a.properties.receive_maximum,
            maximum_packet_size: a.properties.maximum_packet_size_bytes,
            maximum_qos: a.properties.maximum_qos,
            server_keep_alive: a.properties.server_keep_alive_s,
            assigned_client_identifier: a.properties.assigned_client_identifier.map(str::to_string),
            session_expiry: a.properties.session_expiry_interval_s,
        }),
        Packet::Publish(p) => Rx::Publish(Pub {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: p.topic.to_string(),
            packet_id: p.packet_id,
            payload: p.payload.to_vec(),
        }),
        Packet::PubAck(a) => Rx::PubAck {
            packet_id: a.packet_id,
            reason: a.reason,
        },
        Packet::SubAck(s) => Rx::SubAck {
            packet_id: s.packet_id,
            codes: s.reason_codes.to_vec(),
        },
        Packet::UnsubAck(u) => Rx::UnsubAck {
            packet_id: u.packet_id,
            codes: u.reason_codes.to_vec(),
        },
        Packet::PingResp => Rx::PingResp,
        Packet::Disconnect(d) => Rx::Disconnect { reason: d.reason },
        other => Rx::Other(format!("{other:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------------------------

/// One HTTP/1.1 keep-alive connection to the API.
pub struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    pub fn open(addr: SocketAddr) -> HttpConn {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("connect to HTTP API");
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
        stream.set_write_timeout(Some(Duration::from_secs(5))).ok();
        HttpConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// POST /v1/messages for a connected-device push: `queue_if_offline: false` keeps the
    /// contract "a device that is not connected is refused with 404" (the default profile
    /// stores and forwards instead).
    pub fn push(&mut self, device: &str, payload: &str, qos: u8) -> (u16, String) {
        let body = serde_json::json!({
            "device": device,
            "payload": payload,
            "qos": qos,
            "profile": { "queue_if_offline": false },
        })
        .to_string();
        self.request("POST", "/v1/messages", Some(&body))
    }

    /// Sends one request, reads one response (Content-Length framed). Returns (status, body).
    pub fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        if let Some(b) = body {
            req.push_str(b);
        }
        self.stream.write_all(req.as_bytes()).expect("write HTTP request");
        self.read_response()
    }

    fn read_response(&mut self) -> (u16, String) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head_len)) = resp.parse(&self.buf) {
                let status = resp.code.expect("status code");
                let len: usize = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| {
                        std::str::from_utf8(h.value)
                            .expect("ascii")
                            .trim()
                            .parse()
                            .expect("number")
                    })
                    .expect("response has Content-Length");
                if self.buf.len() >= head_len + len {
                    let body = String::from_utf8_lossy(&self.buf[head_len..head_len + len]).into_owned();
                    self.buf.drain(..head_len + len);
                    return (status, body);
                }
            }
            assert!(Instant::now() < deadline, "HTTP response incomplete after 5 s");
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!(
                    "HTTP connection closed mid-response ({} bytes buffered)",
                    self.buf.len()
                ),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("HTTP read failed: {e}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------------------------

/// Tiny deterministic PRNG (xorshift64*) for garbage bytes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Raises this process's soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
/// Appends what a non-blocking socket has to `buf`; true once the peer closed
/// (or the socket failed). Frames already buffered stay there for `take_frame`.
pub fn read_available(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// The next whole MQTT frame at the front of `buf`, removed from it.
pub fn take_frame(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let total = check_frame(buf, 1 << 20).ok()?.total_len();
    (buf.len() >= total).then(|| buf.drain(..total).collect())
}

pub fn raise_nofile() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    if cur.maximum != cur.current {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: cur.maximum,
                maximum: cur.maximum,
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}
