//! The one gateway harness of the Rust integration tests. `Spawn` says how to run the
//! real `pulsegate` binary (backend, shards, extra flags, data dir); `Gateway` is the
//! running process: it is started on 127.0.0.1 port 0 with `--ready-file`, and the
//! addresses, pid, backend, shards and capacity come from that JSON file, never from
//! stdout. It stops (`stop`: SIGTERM and a bounded wait), dies (`kill9`), restarts over
//! the same data dir (`restart`: new ports), and keeps stdout and stderr for failure
//! messages (printed when a test panics while it is alive). On drop it SIGTERMs, then
//! SIGKILLs, the process and removes its scratch directory.
//!
//! It must never wait without a deadline, nor leave a process running after the test.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pulsegate::protocol::mqtt::{Packet, ProtocolVersion};

use super::http::{HttpConn, metric_sum, metric_value};
use super::mqtt::{Client, ConnAckInfo, ConnectOpts, Rx, Wire};
use super::{WAIT, accepted};

/// Longest wait for the ready file after the spawn.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for an exit after SIGTERM before the harness calls it a failure.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for an exit after SIGKILL.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// How to run one gateway: 2 shards, unpinned, on 127.0.0.1 port 0, with its own data dir
/// unless `data_dir` names one.
#[derive(Clone, Debug)]
pub struct Spawn {
    pub backend: String,
    pub shards: usize,
    pub args: Vec<String>,
    pub data_dir: Option<PathBuf>,
    /// `--outbound-allow` (default loopback, where tests' receivers live; empty: not given).
    pub outbound_allow: Vec<String>,
}

impl Spawn {
    pub fn new(backend: &str) -> Spawn {
        Spawn {
            backend: backend.to_string(),
            shards: 2,
            args: Vec::new(),
            data_dir: None,
            outbound_allow: vec!["127.0.0.0/8".into(), "::1/128".into()],
        }
    }

    /// The outbound URL policy's allow rules (empty: the gateway's default, nothing allowed).
    pub fn outbound_allow(mut self, rules: &[&str]) -> Spawn {
        self.outbound_allow = rules.iter().map(|r| r.to_string()).collect();
        self
    }

    pub fn shards(mut self, shards: usize) -> Spawn {
        self.shards = shards;
        self
    }

    /// Extra flags, after the harness's own. The gateway refuses a flag given twice, so the
    /// ones the harness sets (data dir, ready file, listen addresses, shards, backend,
    /// pinning) are set through `Spawn`, not here.
    pub fn args(mut self, extra: &[&str]) -> Spawn {
        self.args.extend(extra.iter().map(|a| a.to_string()));
        self
    }

    /// A data dir the caller owns (kept on drop).
    pub fn data_dir(mut self, dir: &Path) -> Spawn {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    pub fn start(self) -> Gateway {
        Gateway::spawn(self)
    }
}

/// The JSON the gateway writes to `--ready-file` once it listens.
#[derive(Debug, serde::Deserialize)]
struct Ready {
    pid: u32,
    backend: String,
    shards: usize,
    capacity: u64,
    mqtt: SocketAddr,
    http: SocketAddr,
    /// Only when `--mqtt-tls-listen` was given.
    #[serde(default)]
    mqtt_tls: Option<SocketAddr>,
}

/// Longest wait, after the child exited, for its pipes to reach EOF.
const PIPE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Text a child writes to one pipe, collected on a thread until EOF (so the child never
/// blocks on a full pipe).
struct Captured {
    text: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Captured {
    fn start(pipe: impl Read + Send + 'static) -> Captured {
        let text = Arc::new(Mutex::new(String::new()));
        let into = text.clone();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut line = String::new();
            while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                into.lock().unwrap_or_else(|p| p.into_inner()).push_str(&line);
                line.clear();
            }
        });
        Captured { text, reader }
    }

    fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Once the child exited: waits (bounded) for the reader to reach EOF, so the text
    /// holds the child's last words too.
    fn settle(&self) {
        let deadline = Instant::now() + PIPE_DRAIN_TIMEOUT;
        while !self.reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A running (or stopped) gateway process.
pub struct Gateway {
    pub backend: String,
    pub shards: usize,
    /// Connection slots over all shards, as the ready file reports them.
    pub capacity: u64,
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    /// The MQTT-over-TLS address, when the gateway listens for TLS.
    pub mqtt_tls: Option<SocketAddr>,
    pub data_dir: PathBuf,
    spec: Spawn,
    child: Child,
    pid: u32,
    exited: Option<ExitStatus>,
    stdout: Captured,
    stderr: Captured,
    /// Holds the ready files (and the data dir unless the caller gave one); removed on drop.
    scratch: PathBuf,
    /// Processes started so far (restarts + 1).
    runs: u32,
    /// stderr of the runs before the current one, each under a header.
    earlier_stderr: String,
}

impl Gateway {
    /// 2 shards, unpinned, on `backend`, plus `extra` flags.
    pub fn start(backend: &str, extra: &[&str]) -> Gateway {
        Spawn::new(backend).args(extra).start()
    }

    pub fn start_with_shards(backend: &str, shards: usize, extra: &[&str]) -> Gateway {
        Spawn::new(backend).shards(shards).args(extra).start()
    }

    pub fn spawn(spec: Spawn) -> Gateway {
        // Each gateway gets its own scratch directory: the default data dir is relative to
        // the cwd and locked, so parallel gateways would collide.
        static NEXT_DIR: AtomicU32 = AtomicU32::new(0);
        let scratch = std::env::temp_dir().join(format!(
            "pulsegate-it-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).unwrap_or_else(|e| panic!("create {}: {e}", scratch.display()));
        let data_dir = spec.data_dir.clone().unwrap_or_else(|| scratch.join("data"));
        let (child, ready, stdout, stderr) = launch(&spec, &data_dir, &scratch.join("ready-1.json"));
        Gateway {
            backend: ready.backend,
            shards: ready.shards,
            capacity: ready.capacity,
            mqtt: ready.mqtt,
            http: ready.http,
            mqtt_tls: ready.mqtt_tls,
            data_dir,
            spec,
            pid: ready.pid,
            child,
            exited: None,
            stdout,
            stderr,
            scratch,
            runs: 1,
            earlier_stderr: String::new(),
        }
    }

    /// Starts the gateway again with the same flags over the same data dir, after it
    /// exited (`stop`, `kill9`, or on its own). The ports are new.
    pub fn restart(&mut self) {
        assert!(
            self.exited.is_some(),
            "restart needs the previous process gone: call stop() or kill9() first"
        );
        self.earlier_stderr
            .push_str(&format!("--- stderr of run {} ---\n{}", self.runs, self.stderr()));
        self.runs += 1;
        let ready_path = self.scratch.join(format!("ready-{}.json", self.runs));
        let (child, ready, stdout, stderr) = launch(&self.spec, &self.data_dir, &ready_path);
        self.child = child;
        self.pid = ready.pid;
        self.mqtt = ready.mqtt;
        self.http = ready.http;
        self.mqtt_tls = ready.mqtt_tls;
        self.capacity = ready.capacity;
        self.exited = None;
        self.stdout = stdout;
        self.stderr = stderr;
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What the current process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// What the current process wrote to stdout so far (the human ready line among it).
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    pub fn sigterm(&self) {
        if self.exited.is_none() {
            signal(self.pid, rustix::process::Signal::TERM);
        }
    }

    /// SIGTERM, then a bounded wait; fails the test (with stderr) if the process does not
    /// exit within `STOP_TIMEOUT`. Returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        if self.exited.is_none() {
            self.sigterm();
        }
        match self.wait_exit(STOP_TIMEOUT) {
            Some(s) => s,
            None => {
                self.kill9();
                panic!(
                    "pulsegate did not exit within {STOP_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// SIGKILL: no clean shutdown, nothing flushed beyond what is already durable.
    pub fn kill9(&mut self) -> ExitStatus {
        if self.exited.is_none() {
            signal(self.pid, rustix::process::Signal::KILL);
        }
        self.wait_exit(KILL_TIMEOUT)
            .unwrap_or_else(|| panic!("pulsegate (pid {}) survived SIGKILL for {KILL_TIMEOUT:?}", self.pid))
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
                self.stdout.settle();
                self.stderr.settle();
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Both addresses serve: the MQTT port accepts a connection and `GET /healthz` is 200.
    pub fn assert_ports_serve(&self) {
        drop(self.tcp());
        let (status, body) = self.http_conn().request("GET", "/healthz", None);
        assert_eq!(status, 200, "GET /healthz on {}: {body}", self.http);
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

    /// POST that must be accepted (201 with an id).
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
    pub fn assert_healthy<S: Wire>(&self, c: &mut Client<S>) {
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
        if self.exited.is_none() {
            self.sigterm();
            if self.wait_exit(Duration::from_secs(3)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.stdout.settle();
                self.stderr.settle();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- pulsegate ({}) ---\n{}--- stdout of run {} ---\n{}--- stderr of run {} ---\n{}",
                self.backend,
                self.earlier_stderr,
                self.runs,
                self.stdout(),
                self.runs,
                self.stderr()
            );
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Spawns the binary for `spec` over `data_dir` and waits for `ready_path`; on any failure
/// kills the child and fails the test with its stderr.
fn launch(spec: &Spawn, data_dir: &Path, ready_path: &Path) -> (Child, Ready, Captured, Captured) {
    let shards = spec.shards.to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pulsegate"));
    cmd.arg("--data-dir")
        .arg(data_dir)
        .arg("--ready-file")
        .arg(ready_path)
        .args(["--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--shards", &shards, "--backend", &spec.backend, "--pin-cpus", "false"])
        .args(&spec.args)
        .args(if spec.outbound_allow.is_empty() {
            vec![]
        } else {
            vec!["--outbound-allow".to_string(), spec.outbound_allow.join(",")]
        })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn pulsegate");
    let stdout = Captured::start(child.stdout.take().expect("stdout is piped"));
    let stderr = Captured::start(child.stderr.take().expect("stderr is piped"));
    let fail = |child: &mut Child, why: String| -> ! {
        let _ = child.kill();
        let _ = child.wait();
        stdout.settle();
        stderr.settle();
        panic!(
            "{why}\ncommand: {cmd:?}\nstdout:\n{}\nstderr:\n{}",
            stdout.text(),
            stderr.text()
        );
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    let text = loop {
        // The gateway writes a sibling and renames it over: a file that exists is whole.
        if let Ok(text) = std::fs::read_to_string(ready_path) {
            break text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            fail(
                &mut child,
                format!("pulsegate exited with {status} before it was ready"),
            );
        }
        if Instant::now() >= deadline {
            fail(
                &mut child,
                format!("pulsegate wrote no ready file within {READY_TIMEOUT:?}"),
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let ready: Ready = match serde_json::from_str(&text) {
        Ok(r) => r,
        Err(e) => fail(
            &mut child,
            format!("ready file {text:?} is not the documented JSON: {e}"),
        ),
    };
    let checks = [
        (ready.pid == child.id(), "pid is the child's"),
        (ready.backend == spec.backend, "backend is the one asked for"),
        (ready.shards == spec.shards, "shard count is the one asked for"),
        (ready.capacity > 0, "capacity is positive"),
        (
            ready.mqtt.ip().is_loopback() && ready.mqtt.port() != 0,
            "mqtt is a bound loopback port",
        ),
        (
            ready.http.ip().is_loopback() && ready.http.port() != 0,
            "http is a bound loopback port",
        ),
    ];
    if let Some((_, what)) = checks.iter().find(|(ok, _)| !ok) {
        fail(&mut child, format!("ready file {text:?}: expected {what}"));
    }
    (child, ready, stdout, stderr)
}

/// kill(2) on a child of this test; a child already reaped is not an error here.
fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .expect("a child's pid is a positive i32");
    let _ = rustix::process::kill_process(pid, sig);
}
