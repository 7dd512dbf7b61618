//! The `storm` scenario (reconnect thundering herd): once every device is
//! connected at `--storm-at-s` (or at the latest halfway between it and the end of
//! the hold), every worker drops all its connections at once without DISCONNECT
//! and reconnects; the report says how long the herd took to get back in.
//! Owns: the storm's timing, the workers' storm options, and the storm section
//! of the report merged from the workers' `WorkerStorm` counters.
//! Must never: fire twice, or fire before `--storm-at-s`.

use super::{at_or_third, RunEnd, Scenario, Tick};
use crate::cli::{ConnArgs, StormArgs};
use crate::report::{self, Report, StormReport};

pub struct Storm {
    args: StormArgs,
    /// When the storm is due, run time in seconds (set by `validate`).
    at_s: f64,
    /// Latest time to fire even if not everyone is connected.
    latest_s: f64,
    started_s: Option<f64>,
}

impl Storm {
    pub fn new(args: StormArgs) -> Storm {
        Storm {
            args,
            at_s: 0.0,
            latest_s: 0.0,
            started_s: None,
        }
    }
}

impl Scenario for Storm {
    fn name(&self) -> &'static str {
        "storm"
    }

    fn validate(&mut self, conn: &ConnArgs, _http: Option<std::net::SocketAddr>) -> Result<(), String> {
        let at_s = at_or_third(conn, self.args.storm_at_s, "storm-at-s")?;
        if !(self.args.storm_ramp_per_s.is_finite() && self.args.storm_ramp_per_s >= 0.0) {
            return Err("--storm-ramp-per-s must be >= 0".into());
        }
        self.at_s = at_s;
        self.latest_s = at_s + (conn.duration_s - at_s) / 2.0;
        Ok(())
    }

    fn worker_args(&self, workers: u64) -> Vec<String> {
        vec![
            "--storm-close".into(),
            self.args.storm_close.as_str().into(),
            "--storm-max-inflight".into(),
            self.args.storm_max_inflight.to_string(),
            "--storm-ramp-per-s".into(),
            (self.args.storm_ramp_per_s / workers as f64).to_string(),
        ]
    }

    fn tick(&mut self, tick: &mut Tick) {
        let requested = tick.conn.connections;
        if self.started_s.is_some() || tick.t < self.at_s || (tick.connected < requested && tick.t < self.latest_s) {
            return;
        }
        if tick.connected < requested {
            eprintln!(
                "pulsegate-loadgen: storm fires with {}/{} connected (not all connected by {:.1} s)",
                tick.connected, requested, self.latest_s
            );
        }
        tick.workers.broadcast("storm");
        self.started_s = Some(tick.start.elapsed().as_secs_f64());
    }

    fn status(&self, t_s: f64, _requested: u64) -> String {
        match self.started_s {
            None => format!("  storm in {:.0}s", (self.at_s - t_s).max(0.0)),
            Some(s) => format!("  storm at {s:.1}s"),
        }
    }

    fn finish(&mut self, end: RunEnd, r: &mut Report) {
        let mut rep = StormReport::default();
        let mut reconnect = report::new_histogram();
        // The herd is back when the last worker is; unknown if any worker cannot say.
        let mut recovered_ms: Option<u64> = Some(0);
        for st in end.stats {
            let Some(ws) = st.and_then(|st| st.storm.as_ref()) else {
                recovered_ms = None;
                continue;
            };
            rep.storm_dropped += ws.dropped;
            rep.storm_reconnected += ws.reconnected;
            rep.storm_connect_attempts += ws.connect_attempts;
            report::add_counts(&mut rep.storm_failed, &ws.failed);
            report::import(&mut reconnect, &ws.reconnect_us);
            recovered_ms = match (recovered_ms, ws.recovered_at_ms) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
        rep.storm_at_s = self.at_s;
        rep.storm_started_s = self.started_s;
        rep.storm_close = self.args.storm_close.as_str().into();
        rep.storm_failed_total = rep.storm_failed.values().sum();
        rep.storm_reconnect_ms = report::quantiles_ms(&reconnect);
        if let (Some(started), Some(ms)) = (self.started_s, recovered_ms) {
            let at = ms as f64 / 1000.0;
            if at <= end.hold_end_s {
                rep.storm_recovery_s = Some((at - started).max(0.0));
            }
        }
        r.latency_curves.push(report::curve_ms("storm reconnect", &reconnect));
        r.storm = Some(rep);
    }
}
