//! The common part of the report: the workers' final reports merged (counts,
//! histograms, the peak), the server's /proc samples, the pushes if any, and the
//! keep-alive measure over the per-second timeline. The scenario adds its own
//! section afterwards (`Scenario::finish`).
//! Must never: do I/O or read clocks (every time comes in as an argument).

use super::procs::WorkerResult;
use super::{HoldEnd, ServerSamples};
use crate::cli::ConnArgs;
use crate::report::{self, Progress, PushReport, Report};
use crate::timeline::{self, Timeline};
use std::net::SocketAddr;

/// The run's facts the common report is made of.
pub struct Run<'a> {
    pub conn: &'a ConnArgs,
    pub scenario_name: &'static str,
    pub target: SocketAddr,
    pub source_spec: String,
    pub ramp_per_s: f64,
    pub workers: u64,
    pub hold: &'a HoldEnd,
    pub shutdown_s: f64,
    pub server: &'a ServerSamples,
}

/// Merges the workers' results into the report's common fields.
pub fn common(run: Run, results: &[WorkerResult], push_report: Option<PushReport>) -> Report {
    let (conn, hold, server) = (run.conn, run.hold, run.server);
    let established = hold.established;
    let mut r = Report {
        scenario: run.scenario_name.to_string(),
        target: run.target.to_string(),
        mqtt_version: conn.mqtt_version,
        keepalive_s: conn.keepalive_s,
        connections_requested: conn.connections,
        workers: run.workers,
        source_ips: run.source_spec,
        ramp_per_s: run.ramp_per_s,
        established,
        duration_s: hold.hold_end_s,
        shutdown_s: run.shutdown_s,
        server_pid: server.pid,
        server_rss_bytes_before: server.rss_before,
        server_rss_bytes: server.rss_end,
        server_rss_bytes_peak: server.rss_peak.max(server.rss_end),
        ..Default::default()
    };
    let mut rtt = report::new_histogram();
    let mut push_lat = report::new_histogram();
    let mut total = Progress::default();
    let mut pushes_delivered = 0;
    let mut worker_peak_at_ms = 0;
    for w in results {
        if let Some(e) = w.error {
            r.worker_errors.push(e.to_string());
        }
        let Some(st) = w.stats else {
            total.add(w.latest);
            continue;
        };
        total.add(&st.progress);
        report::add_counts(&mut r.failed, &st.failed);
        report::add_counts(&mut r.closed, &st.closed);
        r.pubacks_sent += st.pubacks_sent;
        r.control_messages += st.control_messages;
        pushes_delivered += st.pushes_delivered;
        report::import(&mut rtt, &st.ping_rtt_us);
        report::import(&mut push_lat, &st.push_latency_us);
        worker_peak_at_ms = worker_peak_at_ms.max(st.peak_at_ms);
    }
    // Workers timestamp their own peak precisely; use it when every worker's peak
    // is part of the aggregate peak (the usual case: all connect and stay).
    let mut established_after_s = hold.established_after_s;
    if worker_peak_at_ms > 0 && (worker_peak_at_ms as f64 / 1000.0) <= established_after_s + 0.5 {
        established_after_s = worker_peak_at_ms as f64 / 1000.0;
    }
    r.established_after_s = established_after_s;
    r.connect_rate_per_s = if established_after_s > 0.0 {
        established as f64 / established_after_s
    } else {
        0.0
    };
    r.connect_attempts = total.connect_attempts;
    r.failed_total = total.failed_total;
    r.reconnects = total.reconnects;
    r.pings_sent = total.pings_sent;
    r.keepalives = total.keepalives;
    r.publishes_received = total.publishes_received;
    r.ping_rtt_ms = report::quantiles_ms(&rtt);
    if let (Some(a), Some(b)) = (server.rss_end, server.rss_before) {
        if established > 0 {
            r.server_rss_per_conn_bytes = Some((a as f64 - b as f64) / established as f64);
        }
    }
    if let (Some(a), Some(b)) = (server.cpu_end, server.cpu_start) {
        let d = a.since(&b);
        r.server_cpu_s = Some(d.total_s());
        r.server_cpu_user_s = Some(d.user_s);
        r.server_cpu_system_s = Some(d.system_s);
    }
    if let (Some(a), Some(b)) = (server.cpu_hold_end, server.cpu_at_established) {
        let d = a.since(&b);
        r.server_cpu_s_steady = Some(d.total_s());
        r.server_cpu_user_s_steady = Some(d.user_s);
        r.server_cpu_system_s_steady = Some(d.system_s);
        r.steady_s = Some((hold.hold_end_s - established_after_s).max(0.0));
    }
    r.latency_curves.push(report::curve_ms("ping RTT", &rtt));
    if let Some(mut pr) = push_report {
        pr.pushes_delivered = pushes_delivered;
        pr.push_latency_ms = report::quantiles_ms(&push_lat);
        r.latency_curves.push(report::curve_ms("push end-to-end", &push_lat));
        r.latency_curves.push(pr.http_latency_curve.clone());
        r.push = Some(pr);
    }
    r
}

/// The keep-alive measure (peak/mean PINGREQs per second over the tail window)
/// and the per-second series; `tl` holds the whole seconds of the hold only.
pub fn keepalives(r: &mut Report, tl: &Timeline, hold_end_s: f64, keepalive_s: u16) {
    r.keepalive_basis = "pingreq_sent".into();
    r.keepalive_window_s = timeline::tail_window(hold_end_s, keepalive_s);
    if let Some(w) = r.keepalive_window_s {
        r.keepalives_per_s = tl.pingreqs_in(w);
        r.keepalive_peak_to_mean = timeline::peak_to_mean(&r.keepalives_per_s);
    }
    r.timeline = tl.series();
    r.connected_per_s = r.timeline.connected.clone();
}

/// CONNACK refusals by code, from the `connack_0x..` keys of `failed`.
pub fn connack_refused(r: &mut Report) {
    r.connack_refused = r
        .failed
        .iter()
        .filter_map(|(k, &n)| k.strip_prefix("connack_").map(|code| (code.to_string(), n)))
        .filter(|(code, _)| code.starts_with("0x"))
        .collect();
}

/// The load generator's own RSS (summed over the workers that reported it).
pub fn loadgen_rss(r: &mut Report, results: &[WorkerResult]) {
    let rss: Vec<u64> = results
        .iter()
        .filter_map(|w| w.stats.and_then(|s| s.rss_bytes))
        .collect();
    if rss.is_empty() {
        return;
    }
    let total: u64 = rss.iter().sum();
    r.loadgen_rss_bytes = Some(total);
    if r.established > 0 {
        r.loadgen_rss_per_conn_bytes = Some(total as f64 / r.established as f64);
    }
}

/// The `tls` section (with `--tls`); needs the per-second series in `r.timeline`.
pub fn tls(r: &mut Report, conn: &ConnArgs, results: &[WorkerResult]) {
    let Some(opts) = crate::tls::TlsOptions::from_cli(&conn.security) else {
        return;
    };
    let workers: Vec<_> = results
        .iter()
        .filter_map(|w| w.stats.and_then(|s| s.tls.as_ref()))
        .collect();
    let settings = crate::tls::stats::Settings {
        server_name: &opts.server_name,
        alpn: &opts.alpn,
        resume: opts.resume,
    };
    let (section, h) = crate::tls::stats::merge(settings, &workers, &r.timeline);
    r.latency_curves.push(report::curve_ms("TLS handshake", &h));
    r.tls = Some(section);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_by_code_come_from_failed() {
        let mut r = Report::default();
        r.failed.insert("connack_0x86".into(), 3);
        r.failed.insert("connack_0x05".into(), 1);
        r.failed.insert("connack_timeout".into(), 7);
        r.failed.insert("connect_refused".into(), 2);
        connack_refused(&mut r);
        assert_eq!(r.connack_refused.len(), 2);
        assert_eq!((r.connack_refused["0x86"], r.connack_refused["0x05"]), (3, 1));
        assert!(r.human().contains("connack refused    [0x05=1 0x86=3]"));
    }
}
