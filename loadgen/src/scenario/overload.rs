//! The `overload` scenario (seeds/004): devices connect in `--waves` waves so the
//! gateway's heartbeat load rises past its threshold, and, with
//! `--threshold-per-s`, the operator step lowers the threshold under the offered
//! load at `--threshold-at-s` (PUT /v1/admin/heartbeat-limit).
//! Owns: the wave options sent to the workers, the threshold step, and the
//! overload section of the report (`crate::overload::OverloadReport`).
//! Must never: take the threshold step more than once, or without `--http`.

use super::{RunEnd, Scenario, Tick};
use crate::cli::{ConnArgs, OverloadArgs};
use crate::overload::OverloadReport;
use crate::report::{Report, WorkerOverload};
use crate::scrape;
use std::net::SocketAddr;

/// The operator step still to take.
struct ThresholdStep {
    addr: SocketAddr,
    per_s: f64,
    at_s: f64,
    api_key: Option<String>,
}

pub struct Overload {
    args: OverloadArgs,
    /// Seconds between waves (set by `validate`).
    wave_interval_s: f64,
    step: Option<ThresholdStep>,
    /// When the gateway accepted the new threshold, run time in seconds.
    threshold_set_at_s: Option<f64>,
}

impl Overload {
    pub fn new(args: OverloadArgs) -> Overload {
        Overload {
            args,
            wave_interval_s: 0.0,
            step: None,
            threshold_set_at_s: None,
        }
    }
}

impl Scenario for Overload {
    fn name(&self) -> &'static str {
        "overload"
    }

    fn http(&self) -> Option<&str> {
        self.args.http.as_deref()
    }

    fn validate(&mut self, conn: &ConnArgs, http: Option<SocketAddr>) -> Result<(), String> {
        let o = &self.args;
        let wave_interval_s = o.wave_interval_s.unwrap_or((conn.keepalive_s as f64 / 4.0).max(1.0));
        if !(wave_interval_s.is_finite() && wave_interval_s >= 0.0) || (o.waves > 1 && wave_interval_s == 0.0) {
            return Err("--wave-interval-s must be > 0".into());
        }
        self.wave_interval_s = wave_interval_s;
        self.step = match (http, o.threshold_per_s) {
            (Some(addr), Some(per_s)) => Some(ThresholdStep {
                addr,
                per_s,
                at_s: o.threshold_at_s.unwrap_or(conn.duration_s / 3.0),
                api_key: o.admin_api_key.clone(),
            }),
            _ => None,
        };
        Ok(())
    }

    fn worker_args(&self, _workers: u64) -> Vec<String> {
        // Every worker opens its share of each wave.
        vec![
            "--waves".into(),
            self.args.waves.to_string(),
            "--wave-interval-ms".into(),
            ((self.wave_interval_s * 1000.0) as u64).to_string(),
        ]
    }

    fn samples_metrics(&self) -> bool {
        true
    }

    fn tick(&mut self, tick: &mut Tick) {
        let t = tick.t;
        let Some(step) = self.step.take_if(|step| t >= step.at_s) else {
            return;
        };
        let per_s = step.per_s;
        match scrape::set_heartbeat_limit(&step.addr, per_s, step.api_key.as_deref()) {
            Ok(200) => {
                eprintln!("pulsegate-loadgen: heartbeat-load threshold set to {per_s}/s at {t:.1} s");
                self.threshold_set_at_s = Some(t);
            }
            Ok(code) => eprintln!("pulsegate-loadgen: setting the threshold answered HTTP {code}"),
            Err(e) => eprintln!("pulsegate-loadgen: setting the threshold failed: {e}"),
        }
    }

    fn finish(&mut self, end: RunEnd, r: &mut Report) {
        let mut counts = WorkerOverload::default();
        for st in end.stats.iter().flatten() {
            counts.add(&st.overload);
        }
        let ka_s = end.conn.keepalive_s;
        let mut report = OverloadReport::build(
            self.args.waves,
            self.wave_interval_s,
            end.conn.heartbeat_max_s,
            &r.timeline,
            &r.failed,
            &counts,
            end.server_series,
        );
        if let (Some(per_s), Some(at_s)) = (self.args.threshold_per_s, self.threshold_set_at_s) {
            // Relief doubles intervals: judge on the doubled period once anyone was adjusted.
            let window_s = if report.adjusted > 0 {
                ka_s.saturating_mul(2)
            } else {
                ka_s
            };
            report.settle(per_s, at_s, ka_s, window_s);
        }
        r.overload = Some(report);
    }
}
