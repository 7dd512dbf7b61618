//! Messages from workers to the parent, and the merged final report.
//!
//! Owns: the JSON-lines protocol on a worker's stdout (progress, per-second slots,
//! final stats), latency histograms (µs; exported as bucket counts, merged
//! losslessly) and curves for the charts, and the report's JSON shape and human summary.
//! Must never: do socket I/O or decide when a run starts or stops.

use crate::timeline::{Series, SlotCounts, Window};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Highest trackable latency: one hour in µs.
const HIST_MAX_US: u64 = 3_600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("static histogram bounds are valid")
}

/// Records one latency in µs (clamped into the histogram range).
pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, HIST_MAX_US));
}

/// Bucket counts `[value_us, count]` of a histogram.
pub fn export(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub fn import(h: &mut Histogram<u64>, buckets: &[(u64, u64)]) {
    for &(v, n) in buckets {
        let _ = h.record_n(v.clamp(1, HIST_MAX_US), n);
    }
}

/// A line a worker writes on stdout.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum WorkerMsg {
    Progress(Progress),
    /// One completed 1-second slot (sent once per second; the last, partial one at the end).
    Second(SlotCounts),
    Final(Box<WorkerStats>),
    Fatal {
        error: String,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Currently connected (CONNACK 0, not yet closed).
    pub connected: u64,
    pub connect_attempts: u64,
    pub failed_total: u64,
    pub reconnects: u64,
    pub pings_sent: u64,
    pub keepalives: u64,
    pub publishes_received: u64,
}

impl Progress {
    pub fn add(&mut self, o: &Progress) {
        self.connected += o.connected;
        self.connect_attempts += o.connect_attempts;
        self.failed_total += o.failed_total;
        self.reconnects += o.reconnects;
        self.pings_sent += o.pings_sent;
        self.keepalives += o.keepalives;
        self.publishes_received += o.publishes_received;
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct WorkerStats {
    pub devices: u64,
    pub progress: Progress,
    pub peak_connected: u64,
    /// ms after the parent's epoch when this worker first reached its peak.
    pub peak_at_ms: u64,
    /// Failed connect attempts by reason.
    pub failed: BTreeMap<String, u64>,
    /// Established connections lost, by reason.
    pub closed: BTreeMap<String, u64>,
    pub pubacks_sent: u64,
    pub control_messages: u64,
    /// Heartbeat-load relief as the devices saw it (seeds/004).
    #[serde(default)]
    pub overload: WorkerOverload,
    pub pushes_delivered: u64,
    pub ping_rtt_us: Vec<(u64, u64)>,
    pub push_latency_us: Vec<(u64, u64)>,
    /// Present when this worker received "storm".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm: Option<WorkerStorm>,
    /// Present with `--tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::stats::WorkerTls>,
    /// The worker's own VmRSS at the end of the hold (all its devices still held).
    #[serde(default)]
    pub rss_bytes: Option<u64>,
}

/// What one worker's devices saw of heartbeat-load relief.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerOverload {
    /// Devices that received at least one `$pulse/heartbeat`.
    pub adjusted_devices: u64,
    /// `$pulse/heartbeat` messages received.
    pub heartbeat_adjustments: u64,
    /// Connections ended by DISCONNECT 0x89 / 0x9C / 0x9D.
    pub overload_disconnects: u64,
    /// Overload disconnects of a device whose previous connection also ended that way.
    pub disconnected_twice: u64,
    /// `$pulse/...` messages whose topic or payload was not understood.
    pub control_errors: u64,
}

impl WorkerOverload {
    pub fn add(&mut self, o: &WorkerOverload) {
        self.adjusted_devices += o.adjusted_devices;
        self.heartbeat_adjustments += o.heartbeat_adjustments;
        self.overload_disconnects += o.overload_disconnects;
        self.disconnected_twice += o.disconnected_twice;
        self.control_errors += o.control_errors;
    }
}

/// What one worker saw of a storm.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct WorkerStorm {
    /// ms after the parent's epoch when the worker dropped its connections.
    pub at_ms: u64,
    /// Devices connected at that moment (all dropped).
    pub dropped: u64,
    /// Dropped devices that got CONNACK 0 again.
    pub reconnected: u64,
    /// ms after the parent's epoch when all of this worker's devices were first
    /// connected again.
    pub recovered_at_ms: Option<u64>,
    /// Failed reconnect attempts of dropped devices, by reason.
    pub failed: BTreeMap<String, u64>,
    pub connect_attempts: u64,
    /// Drop -> CONNACK 0, per reconnected device.
    pub reconnect_us: Vec<(u64, u64)>,
}

pub fn add_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq)]
pub struct Quantiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// Quantiles in ms of a µs histogram (all zero when empty).
pub fn quantiles_ms(h: &Histogram<u64>) -> Quantiles {
    if h.is_empty() {
        return Quantiles::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Quantiles {
        count: h.len(),
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
        mean: h.mean() / 1000.0,
    }
}

/// Latency at increasing quantiles, for the percentile chart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyCurve {
    pub name: String,
    /// (quantile, ms), quantile ascending in 0.5..1.
    pub points: Vec<(f64, f64)>,
}

/// Quantiles plotted: only those the sample count supports are kept.
const CURVE_QUANTILES: [f64; 10] = [0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999];

/// The latency curve (ms) of a µs histogram; empty when the histogram is.
pub fn curve_ms(name: &str, h: &Histogram<u64>) -> LatencyCurve {
    let n = h.len() as f64;
    let points = CURVE_QUANTILES
        .iter()
        .filter(|&&q| n > 0.0 && (q <= 0.5 || 1.0 / (1.0 - q) <= n))
        .map(|&q| (q, h.value_at_quantile(q) as f64 / 1000.0))
        .collect();
    LatencyCurve {
        name: name.to_string(),
        points,
    }
}

/// The final report (`--json`).
#[derive(Serialize, Debug, Clone, Default)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub mqtt_version: u8,
    pub keepalive_s: u16,
    pub connections_requested: u64,
    pub workers: u64,
    pub source_ips: String,
    pub ramp_per_s: f64,
    /// Peak concurrently connected (CONNACK 0, not yet closed).
    pub established: u64,
    /// Seconds from start until `established` was first reached.
    pub established_after_s: f64,
    pub connect_rate_per_s: f64,
    pub connect_attempts: u64,
    pub failed: BTreeMap<String, u64>,
    pub failed_total: u64,
    pub closed: BTreeMap<String, u64>,
    /// Successful re-connections of devices that had been connected before.
    pub reconnects: u64,
    pub pings_sent: u64,
    /// PINGREQs that got their PINGRESP.
    pub keepalives: u64,
    pub ping_rtt_ms: Quantiles,
    pub publishes_received: u64,
    pub pubacks_sent: u64,
    pub control_messages: u64,
    /// Seconds from start until the stop was requested (the hold).
    pub duration_s: f64,
    /// Seconds the workers took to disconnect, close and report after the hold.
    pub shutdown_s: f64,
    pub worker_errors: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_bytes_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_bytes_peak: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_per_conn_bytes: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_s: Option<f64>,
    /// `server_cpu_s` split: utime (user mode) and stime (kernel) from /proc/PID/stat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_user_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_system_s: Option<f64>,
    /// Server CPU between `established` being reached and the end of the hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_s_steady: Option<f64>,
    /// `server_cpu_s_steady` split into utime and stime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_user_s_steady: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_system_s_steady: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steady_s: Option<f64>,
    /// What the keep-alive counts are: "pingreq_sent" (PINGREQs the devices sent, stamped
    /// when sent, which is what the server receives).
    pub keepalive_basis: String,
    /// The analysis window, seconds since start `[start, end)`: the last max(3 x keep-alive,
    /// 30) s of the hold rounded up to whole keep-alive periods.
    pub keepalive_window_s: Option<Window>,
    /// Keep-alives per 1-second slot over the window.
    pub keepalives_per_s: Vec<u64>,
    /// Peak slot / mean slot over the window (1.0 = perfectly spread; null = no keep-alives).
    pub keepalive_peak_to_mean: Option<f64>,
    /// Devices connected at the end of each second, from the start to the end of the hold.
    pub connected_per_s: Vec<u64>,
    /// Every per-second count of the run (index = second since start).
    pub timeline: Series,
    /// Push / rushhour fields, flattened into the top level.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushReport>,
    /// CONNACK refusals by return/reason code ("0x86", "0x87"; "0x04", "0x05" for
    /// 3.1.1), taken from `failed`.
    pub connack_refused: BTreeMap<String, u64>,
    /// The load generator's own memory: the workers' VmRSS summed, at the end of the
    /// hold, and per established connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadgen_rss_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadgen_rss_per_conn_bytes: Option<f64>,
    /// With `--tls`: handshakes, resumption, latency, errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::stats::TlsReport>,
    /// Storm fields, flattened into the top level.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormReport>,
    /// Rushhour fields, flattened into the top level.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub rushhour: Option<RushhourReport>,
    /// Overload fields, flattened into the top level.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub overload: Option<crate::overload::OverloadReport>,
    /// For the HTML charts only.
    #[serde(skip)]
    pub latency_curves: Vec<LatencyCurve>,
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct StormReport {
    /// Requested storm time (seconds since start).
    pub storm_at_s: f64,
    /// When the parent told the workers (null = the storm never happened).
    pub storm_started_s: Option<f64>,
    pub storm_close: String,
    /// Devices connected when the storm hit; all of them were dropped.
    pub storm_dropped: u64,
    /// Dropped devices that were connected again by the end of the hold.
    pub storm_reconnected: u64,
    /// From the storm until all N devices were connected again (null = not by the end).
    pub storm_recovery_s: Option<f64>,
    /// Failed reconnect attempts of dropped devices, by reason.
    pub storm_failed: BTreeMap<String, u64>,
    pub storm_failed_total: u64,
    pub storm_connect_attempts: u64,
    /// Drop -> CONNACK 0 per reconnected device.
    pub storm_reconnect_ms: Quantiles,
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct RushhourReport {
    /// Connects were spread over this many seconds.
    pub spread_s: f64,
    /// When all devices were first connected (null = never).
    pub all_connected_s: Option<f64>,
    /// Requested burst time.
    pub burst_at_s: f64,
    pub burst_started_s: Option<f64>,
    /// When the last burst request was answered.
    pub burst_done_s: Option<f64>,
    pub burst_http_connections: u32,
    pub burst_pipeline: u32,
    /// Whole keep-alive periods after all devices connected (or, if some never did,
    /// after the peak was reached) and before the burst.
    pub keepalive_window_before_s: Option<Window>,
    pub keepalives_per_s_before: Vec<u64>,
    pub keepalive_peak_to_mean_before: Option<f64>,
    /// The last whole keep-alive periods (up to the default window) after the burst.
    pub keepalive_window_after_s: Option<Window>,
    pub keepalives_per_s_after: Vec<u64>,
    pub keepalive_peak_to_mean_after: Option<f64>,
    /// Every whole keep-alive period from the burst's start to the end of the hold,
    /// with its keep-alive peak/mean: the synchronized period, then each one after.
    pub keepalive_periods_from_burst: Vec<PeriodPeakToMean>,
}

/// One keep-alive period's keep-alive peak/mean.
#[derive(Serialize, Debug, Clone, Copy)]
pub struct PeriodPeakToMean {
    pub window_s: Window,
    pub peak_to_mean: Option<f64>,
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct PushReport {
    pub push_http: String,
    pub push_rate_per_s: f64,
    pub push_qos: u8,
    pub pushes_sent: u64,
    pub pushes_accepted: u64,
    pub http_errors: BTreeMap<String, u64>,
    pub pushes_delivered: u64,
    pub push_latency_ms: Quantiles,
    pub http_latency_ms: Quantiles,
    /// For the HTML charts only.
    #[serde(skip)]
    pub http_latency_curve: LatencyCurve,
}

fn fmt_counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

fn fmt_ptm(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "n/a".into())
}

fn fmt_window(w: Option<Window>) -> String {
    w.map(|w| format!("[{}, {}) s", w.start, w.end))
        .unwrap_or_else(|| "no window".into())
}

fn fmt_peak_mean(v: &[u64]) -> String {
    let sum: u64 = v.iter().sum();
    let mean = if v.is_empty() { 0.0 } else { sum as f64 / v.len() as f64 };
    format!(
        "peak {}/s, mean {mean:.1}/s, {sum} keep-alives",
        v.iter().max().copied().unwrap_or(0)
    )
}

fn fmt_q(q: &Quantiles) -> String {
    format!(
        "p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  (n={})",
        q.p50, q.p99, q.p999, q.max, q.count
    )
}

impl Report {
    /// Human summary for stdout.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let mut line = |t: String| {
            s.push_str(&t);
            s.push('\n');
        };
        line(format!(
            "== pulsegate-loadgen {} -> {} (MQTT v{}, keepalive {} s)",
            self.scenario,
            self.target,
            if self.mqtt_version == 5 { "5" } else { "3.1.1" },
            self.keepalive_s
        ));
        line(format!(
            "workers            {}  sources {}",
            self.workers, self.source_ips
        ));
        line(format!(
            "established        {} / {} requested (peak concurrent), reached after {:.2} s = {:.0} conn/s",
            self.established, self.connections_requested, self.established_after_s, self.connect_rate_per_s
        ));
        line(format!(
            "connect attempts   {}  failed {} [{}]",
            self.connect_attempts,
            self.failed_total,
            fmt_counts(&self.failed)
        ));
        line(format!(
            "closed by server   [{}]  reconnects {}",
            fmt_counts(&self.closed),
            self.reconnects
        ));
        line(format!(
            "keepalives         {} answered / {} PINGREQ sent",
            self.keepalives, self.pings_sent
        ));
        line(format!("ping rtt           {}", fmt_q(&self.ping_rtt_ms)));
        line(format!(
            "keepalive sync     peak/mean {} over {} ({})",
            fmt_ptm(self.keepalive_peak_to_mean),
            fmt_window(self.keepalive_window_s),
            fmt_peak_mean(&self.keepalives_per_s)
        ));
        line(format!(
            "publishes received {}  pubacks sent {}  control msgs {}",
            self.publishes_received, self.pubacks_sent, self.control_messages
        ));
        line(format!(
            "duration           {:.2} s hold + {:.2} s shutdown",
            self.duration_s, self.shutdown_s
        ));
        if let Some(pid) = self.server_pid {
            let mib = |b: Option<u64>| {
                b.map(|b| format!("{:.1} MiB", b as f64 / 1048576.0))
                    .unwrap_or_else(|| "n/a".into())
            };
            line(format!(
                "server pid {pid}     rss before {}  at end of hold {}  peak {}",
                mib(self.server_rss_bytes_before),
                mib(self.server_rss_bytes),
                mib(self.server_rss_bytes_peak)
            ));
            if let Some(per) = self.server_rss_per_conn_bytes {
                line(format!("server rss/conn    {per:.0} bytes"));
            }
            let split = |user: Option<f64>, system: Option<f64>| match (user, system) {
                (Some(u), Some(s)) => format!("  [user {u:.2} s, system {s:.2} s]"),
                _ => String::new(),
            };
            if let Some(cpu) = self.server_cpu_s {
                line(format!(
                    "server cpu         {cpu:.2} s over the run{}",
                    split(self.server_cpu_user_s, self.server_cpu_system_s)
                ));
            }
            if let (Some(cpu), Some(st)) = (self.server_cpu_s_steady, self.steady_s) {
                line(format!(
                    "server cpu steady  {cpu:.2} s over {st:.1} s after all connected ({:.1}% of a core){}",
                    if st > 0.0 { 100.0 * cpu / st } else { 0.0 },
                    split(self.server_cpu_user_s_steady, self.server_cpu_system_s_steady)
                ));
            }
        }
        if !self.connack_refused.is_empty() {
            line(format!("connack refused    [{}]", fmt_counts(&self.connack_refused)));
        }
        if let Some(rss) = self.loadgen_rss_bytes {
            line(format!(
                "loadgen rss        {:.1} MiB ({:.0} bytes per connection)",
                rss as f64 / 1048576.0,
                self.loadgen_rss_per_conn_bytes.unwrap_or(0.0)
            ));
        }
        if let Some(t) = &self.tls {
            for l in t.human() {
                line(l);
            }
        }
        if let Some(p) = &self.push {
            line(format!(
                "pushes             sent {} accepted {} delivered {}  http errors [{}]",
                p.pushes_sent,
                p.pushes_accepted,
                p.pushes_delivered,
                fmt_counts(&p.http_errors)
            ));
            line(format!("push latency       {}", fmt_q(&p.push_latency_ms)));
            line(format!("http latency       {}", fmt_q(&p.http_latency_ms)));
        }
        if let Some(st) = &self.storm {
            line(format!(
                "storm              at {} ({} close): dropped {} reconnected {}  recovery {}",
                st.storm_started_s
                    .map(|t| format!("{t:.2} s"))
                    .unwrap_or_else(|| "never".into()),
                st.storm_close,
                st.storm_dropped,
                st.storm_reconnected,
                st.storm_recovery_s
                    .map(|t| format!("{t:.3} s"))
                    .unwrap_or_else(|| "not recovered".into())
            ));
            line(format!(
                "storm reconnects   attempts {}  failed {} [{}]",
                st.storm_connect_attempts,
                st.storm_failed_total,
                fmt_counts(&st.storm_failed)
            ));
            line(format!("storm reconnect    {}", fmt_q(&st.storm_reconnect_ms)));
        }
        if let Some(rh) = &self.rushhour {
            let t = |x: Option<f64>| x.map(|t| format!("{t:.2} s")).unwrap_or_else(|| "never".into());
            line(format!(
                "rushhour           spread {:.1} s, all connected {}, burst {} -> {} ({:.0} pushes/s)",
                rh.spread_s,
                t(rh.all_connected_s),
                t(rh.burst_started_s),
                t(rh.burst_done_s),
                self.push.as_ref().map_or(0.0, |p| p.push_rate_per_s)
            ));
            line(format!(
                "keepalive before   peak/mean {} over {} ({})",
                fmt_ptm(rh.keepalive_peak_to_mean_before),
                fmt_window(rh.keepalive_window_before_s),
                fmt_peak_mean(&rh.keepalives_per_s_before)
            ));
            line(format!(
                "keepalive after    peak/mean {} over {} ({})",
                fmt_ptm(rh.keepalive_peak_to_mean_after),
                fmt_window(rh.keepalive_window_after_s),
                fmt_peak_mean(&rh.keepalives_per_s_after)
            ));
            if !rh.keepalive_periods_from_burst.is_empty() {
                let periods: Vec<String> = rh
                    .keepalive_periods_from_burst
                    .iter()
                    .map(|p| format!("{} {}", fmt_window(Some(p.window_s)), fmt_ptm(p.peak_to_mean)))
                    .collect();
                line(format!("keepalive periods  peak/mean {}", periods.join("  ")));
            }
        }
        for e in &self.worker_errors {
            line(format!("worker error       {e}"));
        }
        if let Some(o) = &self.overload {
            s.push_str(&o.human(&self.timeline.connected));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_export_import_is_lossless_enough() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        for v in 1..=1000u64 {
            record_us(&mut a, v * 37);
            record_us(&mut b, v * 1000);
        }
        let mut merged = new_histogram();
        import(&mut merged, &export(&a));
        import(&mut merged, &export(&b));
        assert_eq!(merged.len(), 2000);
        let mut direct = a.clone();
        direct.add(&b).unwrap();
        for q in [0.5, 0.9, 0.99, 0.999] {
            assert_eq!(merged.value_at_quantile(q), direct.value_at_quantile(q));
        }
        let q = quantiles_ms(&merged);
        assert!(q.max >= 999.0 && q.max <= 1001.0, "{q:?}");
        assert_eq!(quantiles_ms(&new_histogram()), Quantiles::default());
    }

    #[test]
    fn latency_curve_keeps_supported_quantiles() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            record_us(&mut h, v * 1000);
        }
        let c = curve_ms("x", &h);
        let qs: Vec<f64> = c.points.iter().map(|p| p.0).collect();
        assert_eq!(qs, vec![0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999]);
        assert!(c.points.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!((c.points[0].1 - 500.0).abs() < 1.0);
        assert!(curve_ms("empty", &new_histogram()).points.is_empty());
    }

    #[test]
    fn worker_msg_roundtrip() {
        let mut st = WorkerStats {
            devices: 3,
            ..Default::default()
        };
        st.failed.insert("connack_0x89".into(), 2);
        st.ping_rtt_us = vec![(100, 4)];
        let line = serde_json::to_string(&WorkerMsg::Final(Box::new(st))).unwrap();
        assert!(line.starts_with("{\"t\":\"final\""));
        let back: WorkerMsg = serde_json::from_str(&line).unwrap();
        let WorkerMsg::Final(st) = back else { panic!() };
        assert_eq!(st.failed["connack_0x89"], 2);
        let p: WorkerMsg = serde_json::from_str(r#"{"t":"progress","connected":5,"connect_attempts":5,"failed_total":0,"reconnects":0,"pings_sent":1,"keepalives":1,"publishes_received":0}"#).unwrap();
        assert!(matches!(p, WorkerMsg::Progress(p) if p.connected == 5));
        let sec = WorkerMsg::Second(SlotCounts {
            slot: 4,
            pingreqs: 9,
            ..Default::default()
        });
        let back: WorkerMsg = serde_json::from_str(&serde_json::to_string(&sec).unwrap()).unwrap();
        assert!(matches!(back, WorkerMsg::Second(s) if s.slot == 4 && s.pingreqs == 9));
    }

    #[test]
    fn server_cpu_split_is_reported_next_to_the_totals() {
        let r = Report {
            scenario: "hold".into(),
            server_pid: Some(1),
            server_cpu_s: Some(3.0),
            server_cpu_user_s: Some(1.0),
            server_cpu_system_s: Some(2.0),
            server_cpu_s_steady: Some(1.5),
            server_cpu_user_s_steady: Some(0.5),
            server_cpu_system_s_steady: Some(1.0),
            steady_s: Some(10.0),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["server_cpu_s"], 3.0);
        assert_eq!(v["server_cpu_user_s"], 1.0);
        assert_eq!(v["server_cpu_system_s"], 2.0);
        assert_eq!(v["server_cpu_s_steady"], 1.5);
        assert_eq!(v["server_cpu_user_s_steady"], 0.5);
        assert_eq!(v["server_cpu_system_s_steady"], 1.0);
        let text = r.human();
        assert!(
            text.contains("server cpu         3.00 s over the run  [user 1.00 s, system 2.00 s]"),
            "{text}"
        );
        assert!(
            text.contains("(15.0% of a core)  [user 0.50 s, system 1.00 s]"),
            "{text}"
        );
        // Without --server-pid none of them appear.
        let v: serde_json::Value = serde_json::to_value(Report::default()).unwrap();
        assert!(v.get("server_cpu_user_s").is_none() && v.get("server_cpu_system_s_steady").is_none());
    }

    #[test]
    fn report_json_has_required_fields() {
        let r = Report {
            scenario: "hold".into(),
            server_pid: Some(1),
            server_rss_bytes: Some(5),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for k in [
            "scenario",
            "target",
            "connections_requested",
            "established",
            "failed",
            "reconnects",
            "connect_rate_per_s",
            "keepalives",
            "ping_rtt_ms",
            "publishes_received",
            "duration_s",
            "server_rss_bytes",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        for k in ["p50", "p99", "p999", "max"] {
            assert!(v["ping_rtt_ms"].get(k).is_some());
        }
        assert!(v.get("pushes_delivered").is_none());
        assert!(v.get("storm_reconnected").is_none() && v.get("keepalive_peak_to_mean_before").is_none());
        for k in [
            "keepalives_per_s",
            "keepalive_peak_to_mean",
            "connected_per_s",
            "timeline",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert!(v["keepalive_peak_to_mean"].is_null());
        let r = Report {
            storm: Some(StormReport {
                storm_reconnected: 500,
                ..Default::default()
            }),
            rushhour: Some(RushhourReport {
                keepalive_peak_to_mean_after: Some(7.5),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["storm_reconnected"], 500);
        assert!(v["storm_recovery_s"].is_null());
        assert_eq!(v["keepalive_peak_to_mean_after"], 7.5);
        assert!(v["keepalive_peak_to_mean_before"].is_null());
        assert!(r.human().contains("keepalive after"));
        let r = Report {
            push: Some(PushReport {
                pushes_delivered: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["pushes_delivered"], 3);
        assert!(v["push_latency_ms"].get("p99").is_some());
        assert!(!r.human().is_empty());
    }
}
