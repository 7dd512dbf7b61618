//! What makes one scenario differ from another: the `Scenario` trait the parent's
//! driver (`crate::parent`) calls at each step of a run, and one file per scenario
//! (`hold`, `push`, `storm`, `rushhour`, `overload`).
//!
//! Owns: each scenario's option checks, its extra worker arguments, its events
//! during the hold (push start, storm, burst, threshold step), its part of the
//! progress line and its section of the report.
//! Must never: spawn or signal processes, open device sockets, or write files; a
//! scenario reaches the workers only through `WorkerControl`, and the driver owns
//! the clock, the worker processes and the report files.

mod hold;
mod overload;
mod push;
mod rushhour;
mod storm;

pub use hold::Hold;
pub use overload::Overload;
pub use push::Push;
pub use rushhour::Rushhour;
pub use storm::Storm;

use crate::cli::ConnArgs;
use crate::report::{PushReport, Report, WorkerStats};
use crate::scrape::ServerSeries;
use crate::timeline::Timeline;
use std::net::SocketAddr;
use std::time::Instant;

/// Commands a scenario may send to every worker (one line on each worker's stdin).
pub trait WorkerControl {
    /// Writes `line` (without its newline) to every worker still listening.
    fn broadcast(&mut self, line: &str);
}

/// One turn of the driver's hold loop (at most 100 ms apart).
pub struct Tick<'a> {
    pub conn: &'a ConnArgs,
    /// The run's start; `start.elapsed()` is the run time now.
    pub start: Instant,
    /// Run time at the start of this turn, seconds.
    pub t: f64,
    /// Devices connected now, summed over the workers' latest progress.
    pub connected: u64,
    pub workers: &'a mut dyn WorkerControl,
}

/// What the driver knows once every worker has been reaped.
pub struct RunEnd<'a> {
    pub conn: &'a ConnArgs,
    /// Run time when the hold ended, seconds.
    pub hold_end_s: f64,
    /// Run time when all requested devices were first connected together.
    pub all_connected_s: Option<f64>,
    /// Run time of the peak of concurrent connections (the report's value).
    pub established_after_s: f64,
    /// Per-second sums over the workers, cut to the whole seconds of the hold.
    pub timeline: &'a Timeline,
    /// Each worker's final report; `None` for a worker that sent none.
    pub stats: &'a [Option<&'a WorkerStats>],
    /// The gateway's /metrics series, when `samples_metrics()` and `--http`.
    pub server_series: Option<ServerSeries>,
}

/// One scenario of the load generator. The driver calls, in order: `http`,
/// `validate`, `ramp_per_s` and `worker_args` (once), `tick` (every turn of the
/// hold) with `status` (every progress line), `end_hold` (once the hold ends),
/// and `finish` (once the report's common part is merged).
pub trait Scenario {
    /// The subcommand's name, as written in the report.
    fn name(&self) -> &'static str;

    /// The gateway HTTP API address option (`--http`) when the scenario has one.
    fn http(&self) -> Option<&str> {
        None
    }

    /// Checks the scenario's own options, after the common ones passed. `http` is
    /// `http()` resolved (loopback rule applied).
    fn validate(&mut self, conn: &ConnArgs, http: Option<SocketAddr>) -> Result<(), String>;

    /// Total connect attempts per second across the workers.
    fn ramp_per_s(&self, conn: &ConnArgs) -> f64 {
        conn.ramp_per_s
    }

    /// Extra arguments for every worker; `workers` is how many there are.
    fn worker_args(&self, _workers: u64) -> Vec<String> {
        Vec::new()
    }

    /// Whether the driver samples the gateway's /metrics (needs `--http`).
    fn samples_metrics(&self) -> bool {
        false
    }

    /// The scenario's events during the hold.
    fn tick(&mut self, _tick: &mut Tick) {}

    /// The scenario's tail of the progress line at run time `t_s`.
    fn status(&self, _t_s: f64, _requested: u64) -> String {
        String::new()
    }

    /// Stops what runs beside the hold; returns the push report if pushes were sent.
    fn end_hold(&mut self) -> Option<PushReport> {
        None
    }

    /// Adds the scenario's section to the merged report.
    fn finish(&mut self, _end: RunEnd, _report: &mut Report) {}
}

/// An event time option: `at`, or a third of the hold, in `[0, --duration-s)`.
fn at_or_third(conn: &ConnArgs, at: Option<f64>, name: &str) -> Result<f64, String> {
    let t = at.unwrap_or(conn.duration_s / 3.0);
    if t.is_finite() && t >= 0.0 && t < conn.duration_s {
        Ok(t)
    } else {
        Err(format!("--{name} must be in [0, --duration-s)"))
    }
}

#[cfg(test)]
mod tests;
