//! The `rushhour` scenario (seeds/000): connect the devices spread over one
//! keep-alive period, then at `--burst-at-s` push once to every device as fast as
//! HTTP allows (`crate::push::Burst`); the QoS 1 PUBACKs restart the devices'
//! timers together. The report compares keep-alive peak/mean before and after.
//! Owns: the connect spread (it lowers the ramp), the burst's timing, and the
//! rushhour section of the report.
//! Must never: start the burst twice, or let it run past the hold.

use super::{at_or_third, RunEnd, Scenario, Tick};
use crate::cli::{ConnArgs, RushhourArgs};
use crate::push::Burst;
use crate::report::{PeriodPeakToMean, PushReport, Report, RushhourReport};
use crate::timeline::{self, Window};
use std::net::SocketAddr;

pub struct Rushhour {
    args: RushhourArgs,
    /// `--http`, resolved by `validate`.
    http_addr: Option<SocketAddr>,
    /// When the burst is due, run time in seconds (set by `validate`).
    at_s: f64,
    /// Seconds the connects are spread over (set by `validate`).
    spread_s: f64,
    burst: Option<Burst>,
    started_s: Option<f64>,
    done_s: Option<f64>,
}

impl Rushhour {
    pub fn new(args: RushhourArgs) -> Rushhour {
        Rushhour {
            args,
            http_addr: None,
            at_s: 0.0,
            spread_s: 0.0,
            burst: None,
            started_s: None,
            done_s: None,
        }
    }
}

impl Scenario for Rushhour {
    fn name(&self) -> &'static str {
        "rushhour"
    }

    fn http(&self) -> Option<&str> {
        Some(&self.args.http)
    }

    fn validate(&mut self, conn: &ConnArgs, http: Option<SocketAddr>) -> Result<(), String> {
        let at_s = at_or_third(conn, self.args.burst_at_s, "burst-at-s")?;
        let spread_s = self.args.spread_s.unwrap_or(conn.keepalive_s as f64);
        if !(spread_s.is_finite() && spread_s >= 0.0) {
            return Err("--spread-s must be >= 0".into());
        }
        if conn.keepalive_s > 0 && at_s < spread_s + conn.keepalive_s as f64 {
            eprintln!(
                "pulsegate-loadgen: warning: --burst-at-s {at_s} leaves less than one keep-alive period \
                 after the spread; keepalive_peak_to_mean_before will be null"
            );
        }
        self.http_addr = http;
        self.at_s = at_s;
        self.spread_s = spread_s;
        Ok(())
    }

    fn ramp_per_s(&self, conn: &ConnArgs) -> f64 {
        if self.spread_s > 0.0 {
            conn.ramp_per_s.min(conn.connections as f64 / self.spread_s)
        } else {
            conn.ramp_per_s
        }
    }

    fn tick(&mut self, tick: &mut Tick) {
        let Some(addr) = self.http_addr else { return };
        if self.started_s.is_none() && tick.t >= self.at_s {
            self.started_s = Some(tick.t);
            let a = &self.args;
            self.burst = Some(Burst::start(
                addr,
                tick.conn.connections,
                &tick.conn.client_id_prefix,
                a.qos,
                a.payload_bytes,
                a.http_connections,
                a.pipeline,
            ));
        }
        if let (Some(b), None, Some(started)) = (&self.burst, self.done_s, self.started_s) {
            self.done_s = b.finished_after_s().map(|d| started + d);
        }
    }

    fn status(&self, t_s: f64, requested: u64) -> String {
        match (&self.burst, self.done_s) {
            (_, Some(d)) => format!("  burst done at {d:.1}s"),
            (Some(b), None) => format!("  burst {}/{requested}", b.claimed()),
            (None, None) => format!("  burst in {:.0}s", (self.at_s - t_s).max(0.0)),
        }
    }

    fn end_hold(&mut self) -> Option<PushReport> {
        let b = self.burst.take()?;
        if !b.is_done() {
            eprintln!("\npulsegate-loadgen: the hold ended before the burst finished; stopping it");
        }
        Some(b.stop())
    }

    fn finish(&mut self, end: RunEnd, r: &mut Report) {
        let k = end.conn.keepalive_s;
        let tl = end.timeline;
        let max_periods = timeline::default_window_len_s(k) / (k.max(1) as u64);
        // If not every device ever connected, the steady state starts at the peak.
        let steady_from = end.all_connected_s.unwrap_or(end.established_after_s);
        let before = self
            .started_s
            .and_then(|b| timeline::periods_window(steady_from, b, k, max_periods));
        let after = self
            .done_s
            .and_then(|d| timeline::periods_window(d, end.hold_end_s, k, max_periods));
        let per_s = |w: Option<Window>| w.map(|w| tl.pingreqs_in(w)).unwrap_or_default();
        let (before_v, after_v) = (per_s(before), per_s(after));
        let from_burst = self
            .started_s
            .map(|b| timeline::period_windows(b, end.hold_end_s, k))
            .unwrap_or_default()
            .into_iter()
            .map(|w| PeriodPeakToMean {
                window_s: w,
                peak_to_mean: timeline::peak_to_mean(&tl.pingreqs_in(w)),
            })
            .collect();
        r.rushhour = Some(RushhourReport {
            spread_s: self.spread_s,
            all_connected_s: end.all_connected_s,
            burst_at_s: self.at_s,
            burst_started_s: self.started_s,
            burst_done_s: self.done_s,
            burst_http_connections: self.args.http_connections,
            burst_pipeline: self.args.pipeline,
            keepalive_window_before_s: before,
            keepalive_peak_to_mean_before: timeline::peak_to_mean(&before_v),
            keepalives_per_s_before: before_v,
            keepalive_window_after_s: after,
            keepalive_peak_to_mean_after: timeline::peak_to_mean(&after_v),
            keepalives_per_s_after: after_v,
            keepalive_periods_from_burst: from_burst,
        });
    }
}
