//! End-to-end tests of the coordinator at small scale, over real sockets:
//! synchronized keep-alives are detected and dispersed (seeds/000) without a
//! single keep-alive expiry, and heartbeat-load admission and relief (seeds/004)
//! answer CONNACK 0x89 / return code 3 and send `$pulse/heartbeat`.
//!
//! The devices here behave like libmosquitto clients: one keep-alive timer that
//! restarts whenever the device sends a packet (PINGREQ or PUBACK).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{ConnectOpts, Gateway, V5, V311};
use pulsegate::protocol::mqtt::{NetworkReport, Packet, ProtocolVersion, PubAck, decode_packet};

/// A device on a non-blocking socket, driven by the test's poll loop.
struct Device {
    stream: TcpStream,
    buf: Vec<u8>,
    last_sent: Instant,
    keepalive: Duration,
    version: ProtocolVersion,
    control_messages: u32,
    /// `$pulse/heartbeat` messages among them (load relief).
    heartbeat_messages: u32,
    /// Applies `$pulse/heartbeat` like the SDK (stock clients ignore it).
    obeys_heartbeat: bool,
    closed: bool,
}

impl Device {
    fn send(&mut self, bytes: &[u8], now: Instant) {
        // A write to a connection the gateway closed fails: the next read sees
        // the close (after what arrived before it).
        let _ = self.stream.write_all(bytes);
        self.last_sent = now;
    }

    /// Reads what arrived; answers QoS 1 PUBLISH with PUBACK (restarting the timer).
    fn poll(&mut self, now: Instant) {
        // Closed: still handle what arrived before the close.
        if common::read_available(&mut self.stream, &mut self.buf) {
            self.closed = true;
        }
        while let Some(frame) = common::take_frame(&mut self.buf) {
            match decode_packet(&frame, self.version) {
                Ok(Packet::Publish(p)) => {
                    if p.topic.starts_with("$pulse/") {
                        self.control_messages += 1;
                    }
                    if p.topic == "$pulse/heartbeat" {
                        self.heartbeat_messages += 1;
                        if self.obeys_heartbeat
                            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(p.payload)
                            && let Some(s) = v["keepalive_s"].as_u64()
                        {
                            self.keepalive = Duration::from_secs(s);
                        }
                    }
                    if let Some(packet_id) = p.packet_id {
                        let mut out = Vec::new();
                        PubAck { packet_id, reason: 0 }.encode(self.version, &mut out);
                        self.send(&out, now);
                    }
                }
                Ok(Packet::Disconnect(_)) => self.closed = true,
                _ => {}
            }
        }
    }
}

fn connect_devices(gw: &Gateway, n: usize, keepalive_s: u16) -> Vec<Device> {
    connect_devices_with(gw, n, |i| {
        ConnectOpts::new(V311, &format!("sync-{i}")).keepalive(keepalive_s)
    })
}

fn connect_devices_with(gw: &Gateway, n: usize, opts: impl Fn(usize) -> ConnectOpts) -> Vec<Device> {
    (0..n)
        .map(|i| {
            let opts = opts(i);
            let (client, ack) = gw.connect(&opts);
            assert_eq!(ack.reason, 0, "device {i} admitted");
            let keepalive_s = opts.keepalive_s;
            let version = opts.version;
            let stream = client.stream;
            stream.set_nonblocking(true).expect("nonblocking");
            Device {
                stream,
                buf: Vec::new(),
                last_sent: Instant::now(),
                keepalive: Duration::from_secs(keepalive_s as u64),
                version,
                control_messages: 0,
                heartbeat_messages: 0,
                obeys_heartbeat: false,
                closed: false,
            }
        })
        .collect()
}

/// Runs the devices for `duration`; returns PINGREQs sent per second since start.
fn run_devices(devices: &mut [Device], duration: Duration) -> Vec<u32> {
    let start = Instant::now();
    let mut per_s = vec![0u32; duration.as_secs() as usize + 1];
    while start.elapsed() < duration {
        let now = Instant::now();
        for d in devices.iter_mut().filter(|d| !d.closed) {
            d.poll(now);
            if now >= d.last_sent + d.keepalive {
                d.send(&[0xC0, 0x00], now);
                per_s[now.duration_since(start).as_secs() as usize] += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    per_s
}

fn peak_to_mean(counts: &[u32]) -> f64 {
    let sum: u32 = counts.iter().sum();
    let mean = sum as f64 / counts.len() as f64;
    *counts.iter().max().unwrap_or(&0) as f64 / mean
}

fn gauge(gw: &Gateway, name: &str) -> f64 {
    gw.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
        .unwrap_or(f64::NAN)
}

#[test]
fn synchronized_keepalives_are_dispersed_without_expiries() {
    common::raise_nofile();
    let gw = Gateway::start("uring", &[]);
    // 400 devices connected within about a second: their keep-alives (T = 4 s)
    // land in the same second or two, every period, until dispersed.
    let mut devices = connect_devices(&gw, 400, 4);
    let per_s = run_devices(&mut devices, Duration::from_secs(28));
    // The first period's keep-alives arrive as one burst (≥ 3/4 of the devices in one second);
    // dispersal starts right after it, so no later window is guaranteed synchronized.
    let burst = per_s[..8].iter().copied().max().unwrap_or(0);
    assert!(burst >= 300, "the keep-alives start synchronized: {per_s:?}");
    let after = peak_to_mean(&per_s[20..28]);
    assert!(
        after <= 1.5,
        "dispersed to ≤ 1.5 peak/mean within a few periods: {per_s:?}"
    );
    assert!(devices.iter().all(|d| !d.closed), "no device lost its connection");
    assert!(
        devices.iter().filter(|d| d.control_messages > 0).count() >= 300,
        "most devices got $pulse/keepalive"
    );
    let m = gw.metrics();
    assert!(common::metric_sum(&m, "pulsegate_dispersals_total") >= 1);
    assert_eq!(
        common::metric_value(&m, "pulsegate_closes_total{reason=\"keepalive_timeout\"}"),
        0
    );
    assert!(
        gauge(&gw, "pulsegate_keepalive_peak_to_mean ") <= 1.5,
        "the gateway sees it spread too"
    );
}

/// The operator's bearer key of `admin_flags`.
const ADMIN_KEY: &str = "coordinator-test-admin-key";

/// Flags that give the gateway an admin key file (admin endpoints are closed without one).
fn admin_flags() -> Vec<String> {
    let path = std::env::temp_dir().join(format!("pulsegate-coordinator-admin-{}.key", std::process::id()));
    std::fs::write(&path, ADMIN_KEY).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    vec!["--admin-key-file".into(), path.display().to_string()]
}

/// Sets the heartbeat-load threshold at run time (the operator API).
fn set_threshold(gw: &Gateway, per_s: f64) {
    let body = format!("{{\"max_heartbeats_per_s\": {per_s}}}");
    let (status, reply) = gw
        .http_conn()
        .request_as("PUT", "/v1/admin/heartbeat-limit", Some(&body), Some(ADMIN_KEY));
    assert_eq!(status, 200, "{reply}");
}

#[test]
fn heartbeat_load_over_threshold_refuses_and_relieves() {
    common::raise_nofile();
    let admin = admin_flags();
    let mut flags: Vec<&str> = admin.iter().map(String::as_str).collect();
    flags.extend(["--server-reference", "10.1.2.3:1883"]);
    let gw = Gateway::start("uring", &flags);
    // 200 devices pinging every 2 s offer ~100 keep-alives/s; then the operator
    // lowers the host's threshold to 40 (offered load 2.5 x the threshold).
    let mut devices = connect_devices(&gw, 200, 2);
    run_devices(&mut devices, Duration::from_secs(2));
    set_threshold(&gw, 40.0);
    // Admission is closed: MQTT 5 gets 0x9C with the Server Reference, 3.1.1 return code 3.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge(&gw, "pulsegate_admission_closed ") < 1.0 && Instant::now() < deadline {
        run_devices(&mut devices, Duration::from_millis(500));
    }
    assert_eq!(
        gauge(&gw, "pulsegate_admission_closed "),
        1.0,
        "admission closes over the threshold"
    );
    let mut v5 = common::Client::new(gw.tcp(), V5);
    let ack = v5.handshake(&ConnectOpts::new(V5, "late-v5"));
    assert_eq!(ack.reason, 0x9C, "use another server: {ack:?}");
    let mut v311 = common::Client::new(gw.tcp(), V311);
    let ack = v311.handshake(&ConnectOpts::new(V311, "late-v311"));
    assert_eq!(
        ack.reason, 0x88,
        "3.1.1 return code 3 (server unavailable) decodes as 0x88: {ack:?}"
    );
    // Relief: these devices ignore $pulse/heartbeat (stock clients), so after the
    // adjustment round the load stays high and adjusted devices are disconnected.
    run_devices(&mut devices, Duration::from_secs(10));
    let m = gw.metrics();
    assert!(
        common::metric_sum(&m, "pulsegate_heartbeat_adjustments_total") > 0,
        "{m}"
    );
    assert!(common::metric_sum(&m, "pulsegate_admissions_refused_total") >= 2);
    let closed: Vec<&Device> = devices.iter().filter(|d| d.closed).collect();
    assert!(
        !closed.is_empty(),
        "load still over: adjusted devices were disconnected"
    );
    assert!(
        closed.iter().all(|d| d.heartbeat_messages > 0),
        "every disconnected device was asked to lengthen its heartbeat first"
    );
    assert_eq!(
        common::metric_sum(&m, "pulsegate_overload_disconnects_total"),
        closed.len() as u64
    );
}

#[test]
fn relief_by_match_degree_picks_foreign_devices_first() {
    common::raise_nofile();
    let admin = admin_flags();
    let mut flags: Vec<&str> = admin.iter().map(String::as_str).collect();
    flags.extend([
        "--relief-rule",
        "match_degree",
        "--home-network",
        "460-01",
        "--home-areas",
        "100,101",
    ]);
    let gw = Gateway::start("uring", &flags);
    // 100 home devices (degree 3) connect first, 100 roaming ones (degree 0) last.
    let mut devices = connect_devices_with(&gw, 200, |i| {
        let (mcc, mnc, area) = if i < 100 { (460, 1, Some(100)) } else { (310, 410, None) };
        let mut o = ConnectOpts::new(V5, &format!("net-{i}")).keepalive(2);
        o.props.network = Some(NetworkReport { mcc, mnc, area });
        o
    });
    for d in &mut devices {
        d.obeys_heartbeat = true;
    }
    run_devices(&mut devices, Duration::from_secs(2));
    // ~100/s offered, threshold 90: shed to the low mark (81/s), about 19/s:
    // 76 of the roaming devices adjusted from 2 s to 4 s, no home device touched.
    set_threshold(&gw, 90.0);
    // Adjustments go out spread over the new period (4 s).
    run_devices(&mut devices, Duration::from_secs(6));
    let adjusted_home = devices[..100].iter().filter(|d| d.heartbeat_messages > 0).count();
    let adjusted_roaming = devices[100..].iter().filter(|d| d.heartbeat_messages > 0).count();
    assert!(adjusted_roaming >= 50, "roaming devices relieved: {adjusted_roaming}");
    assert_eq!(
        adjusted_home,
        0,
        "home devices are relieved last ({adjusted_roaming} roaming adjusted); {}",
        gw.metrics()
            .lines()
            .filter(|l| l.contains("relief") || l.contains("heartbeat") || l.contains("dispers"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
