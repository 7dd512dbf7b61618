//! Messages from workers to the parent, and the merged final report.
//!
//! Owns: the JSON-lines protocol on a worker's stdout (progress + final stats),
//! latency histograms (µs; exported as bucket counts, merged losslessly), and the
//! report's JSON shape and human summary.
//! Must never: do socket I/O or decide when a run starts or stops.

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
    Final(Box<WorkerStats>),
    Fatal { error: String },
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
    pub pushes_delivered: u64,
    pub ping_rtt_us: Vec<(u64, u64)>,
    pub push_latency_us: Vec<(u64, u64)>,
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
    /// Server CPU between `established` being reached and the end of the hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_s_steady: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steady_s: Option<f64>,
    /// Push scenario fields, flattened into the top level.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushReport>,
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
}

fn fmt_counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
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
            if let Some(cpu) = self.server_cpu_s {
                line(format!("server cpu         {cpu:.2} s over the run"));
            }
            if let (Some(cpu), Some(st)) = (self.server_cpu_s_steady, self.steady_s) {
                line(format!(
                    "server cpu steady  {cpu:.2} s over {st:.1} s after all connected ({:.1}% of a core)",
                    if st > 0.0 { 100.0 * cpu / st } else { 0.0 }
                ));
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
        for e in &self.worker_errors {
            line(format!("worker error       {e}"));
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
