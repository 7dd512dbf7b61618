//! The parent process of a scenario: the driver common to every scenario. It
//! checks the common options, splits the devices into worker processes
//! (`procs`), runs the hold loop (worker lines, progress, /proc samples of the
//! server, the gateway's /metrics when the scenario asks), stops the run, merges
//! the workers' reports (`merge`) and writes the reports. What differs between
//! scenarios it asks the `Scenario` (`crate::scenario`).
//! Must never: open device sockets itself, signal any process but its own
//! workers, let a stuck worker outlive the run (it is killed after a grace), or
//! name a scenario (that is the trait's job).

mod merge;
mod procs;

use crate::cli::{self, ConnArgs};
use crate::report::Progress;
use crate::scenario::{RunEnd, Scenario, Tick};
use crate::srcip::Slice;
use crate::{html, net, procstat, scrape, srcip};
use procs::{WorkerPlan, Workers};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Longest wait for a worker line in one turn of the hold loop.
const TICK_MS_MAX: u64 = 100;

/// Seconds a worker gets to disconnect and report after "stop": a base plus time
/// for the kernel to tear down its sockets (closing ~18k loopback connections
/// takes 1-3 s of CPU when the server shares the cores).
fn stop_grace_s(connections: u64) -> f64 {
    15.0 + connections as f64 / 5_000.0
}

fn fail(msg: String) -> i32 {
    eprintln!("pulsegate-loadgen: {msg}");
    2
}

/// The run as the options describe it, once they passed every check.
struct Checked {
    target: SocketAddr,
    /// Normalized `--source-ips` ("none" for kernel choice).
    source_spec: String,
    http_addr: Option<SocketAddr>,
    /// Total connect attempts per second (the scenario may lower `--ramp-per-s`).
    ramp_per_s: f64,
    max_duration_s: f64,
    slices: Vec<Slice>,
}

/// Checks the common options, then the scenario's, then the descriptor limit.
fn check(conn: &ConnArgs, scenario: &mut dyn Scenario) -> Result<Checked, String> {
    let target = cli::resolve_target(&conn.target, conn.allow_remote)?;
    let source_spec = conn
        .source_ips
        .clone()
        .unwrap_or_else(|| srcip::default_sources(&target).to_string());
    let sources = srcip::parse_sources(&source_spec).map_err(|e| format!("--source-ips: {e}"))?;
    srcip::check_sources(&sources, &target, conn.allow_remote)?;
    let http_addr = match scenario.http() {
        Some(h) => Some(cli::resolve_target(h, conn.allow_remote).map_err(|e| format!("--http: {e}"))?),
        None => None,
    };
    let positive = |x: f64| x > 0.0; // false for NaN too
    if !positive(conn.duration_s) || !positive(conn.ramp_per_s) || !positive(conn.connect_timeout_s) {
        return Err("--duration-s, --ramp-per-s and --connect-timeout-s must be > 0".into());
    }
    scenario.validate(conn, http_addr)?;
    // Read the CA and the token secret once here, so a bad file refuses the run
    // (exit 2) instead of failing in every worker.
    if let Some(opts) = crate::tls::TlsOptions::from_cli(&conn.security) {
        crate::tls::ClientTls::new(&opts, 1)?;
    }
    if let Some(path) = &conn.security.jwt_secret_file {
        crate::token::read_secret(path)?;
    }
    let max_duration_s = conn.max_duration_s.unwrap_or(conn.duration_s + 120.0).max(0.1);
    let hard_limit = net::raise_nofile_limit().unwrap_or(1024);
    if conn.per_process_max == 0 || conn.per_process_max + 32 > hard_limit {
        return Err(format!(
            "--per-process-max {} must be 1..={} (RLIMIT_NOFILE hard limit {hard_limit} minus 32)",
            conn.per_process_max,
            hard_limit.saturating_sub(32)
        ));
    }
    Ok(Checked {
        target,
        source_spec,
        http_addr,
        ramp_per_s: scenario.ramp_per_s(conn),
        max_duration_s,
        slices: srcip::chunk(conn.connections, conn.per_process_max),
    })
}

/// The server's RSS and CPU time from /proc, at the points of the run the report
/// names (all `None` without `--server-pid`).
#[derive(Default)]
struct ServerSamples {
    pid: Option<u32>,
    rss_before: Option<u64>,
    rss_peak: Option<u64>,
    rss_end: Option<u64>,
    cpu_start: Option<procstat::CpuTimes>,
    /// When the peak of concurrent connections was last raised.
    cpu_at_established: Option<procstat::CpuTimes>,
    cpu_hold_end: Option<procstat::CpuTimes>,
    cpu_end: Option<procstat::CpuTimes>,
}

impl ServerSamples {
    fn start(pid: Option<u32>) -> ServerSamples {
        let rss_before = pid.and_then(procstat::rss_bytes);
        let cpu_start = pid.and_then(procstat::cpu_times);
        if let (Some(p), None) = (pid, rss_before) {
            eprintln!("pulsegate-loadgen: warning: cannot read /proc/{p}/status; server stats will be missing");
        }
        ServerSamples {
            pid,
            rss_before,
            rss_peak: rss_before,
            cpu_start,
            cpu_at_established: cpu_start,
            ..Default::default()
        }
    }

    fn cpu_s(&self) -> Option<procstat::CpuTimes> {
        self.pid.and_then(procstat::cpu_times)
    }
}

/// What the hold loop measured.
struct HoldEnd {
    /// Peak of concurrent connections, and when it was reached (run time, s).
    established: u64,
    established_after_s: f64,
    all_connected_s: Option<f64>,
    hold_end_s: f64,
}

/// Runs a scenario; returns the process exit code.
pub fn run(conn: &ConnArgs, scenario: &mut dyn Scenario) -> i32 {
    let plan = match check(conn, scenario) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let workers_n = plan.slices.len() as u64;
    let mut server = ServerSamples::start(conn.server_pid);

    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(format!("current_exe: {e}")),
    };
    let epoch_unix_ms = net::unix_ms();
    let start = Instant::now();
    let extra_args = scenario.worker_args(workers_n);
    let worker_plan = WorkerPlan {
        conn,
        target: plan.target,
        source_spec: &plan.source_spec,
        ramp_per_s: plan.ramp_per_s / workers_n as f64,
        max_duration_s: plan.max_duration_s,
        epoch_unix_ms,
        extra_args: &extra_args,
    };
    let mut workers = match Workers::spawn(&exe, &worker_plan, &plan.slices) {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    let sampler = match (scenario.samples_metrics(), plan.http_addr) {
        (true, Some(addr)) => Some(scrape::Sampler::start(addr, start)),
        _ => None,
    };
    let tty = std::io::stderr().is_terminal();
    let hold = hold(
        conn,
        scenario,
        &mut workers,
        &mut server,
        start,
        plan.max_duration_s,
        tty,
    );
    let server_series = sampler.map(scrape::Sampler::stop);
    let push_report = scenario.end_hold();
    server.rss_end = server.pid.and_then(procstat::rss_bytes);
    server.cpu_hold_end = server.cpu_s();
    if tty {
        eprintln!();
    }

    workers.stop(stop_grace_s(conn.connections));
    server.cpu_end = server.cpu_s();
    let shutdown_s = start.elapsed().as_secs_f64() - hold.hold_end_s;

    let (results, tl) = workers.results();
    let run = merge::Run {
        conn,
        scenario_name: scenario.name(),
        target: plan.target,
        source_spec: plan.source_spec,
        ramp_per_s: plan.ramp_per_s,
        workers: workers_n,
        hold: &hold,
        shutdown_s,
        server: &server,
    };
    let mut r = merge::common(run, &results, push_report);
    let established_after_s = r.established_after_s;
    // Per-second analysis: whole seconds of the hold only.
    let mut tl = tl.clone();
    tl.truncate(hold.hold_end_s.floor() as usize);
    merge::keepalives(&mut r, &tl, hold.hold_end_s, conn.keepalive_s);
    merge::connack_refused(&mut r);
    merge::loadgen_rss(&mut r, &results);
    merge::tls(&mut r, conn, &results);
    let stats: Vec<_> = results.iter().map(|w| w.stats).collect();
    let end = RunEnd {
        conn,
        hold_end_s: hold.hold_end_s,
        all_connected_s: hold.all_connected_s,
        established_after_s,
        timeline: &tl,
        stats: &stats,
        server_series,
    };
    scenario.finish(end, &mut r);
    write_reports(conn, &r)
}

/// The hold: reads worker lines, tracks the peak, lets the scenario act, samples
/// the server and shows progress, until the duration, the cap, Ctrl-C, or every
/// worker gone.
fn hold(
    conn: &ConnArgs,
    scenario: &mut dyn Scenario,
    workers: &mut Workers,
    server: &mut ServerSamples,
    start: Instant,
    max_duration_s: f64,
    tty: bool,
) -> HoldEnd {
    let progress_every_s = if tty { 1.0 } else { 5.0 };
    // Half a second past the slot boundary, so the last full second has arrived.
    let mut next_progress_s = progress_every_s + 0.5;
    let mut last_shown = (0.0f64, Progress::default());
    let mut next_rss_sample_s = 1.0;
    let mut end = HoldEnd {
        established: 0,
        established_after_s: 0.0,
        all_connected_s: None,
        hold_end_s: 0.0,
    };
    loop {
        let t = start.elapsed().as_secs_f64();
        if t >= conn.duration_s || t >= max_duration_s || INTERRUPTED.load(Ordering::SeqCst) || workers.all_done() {
            break;
        }
        let wait_s = (conn.duration_s - t).clamp(0.0, TICK_MS_MAX as f64 / 1000.0);
        workers.poll(Duration::from_secs_f64(wait_s));
        let sum = workers.progress();
        if sum.connected > end.established {
            end.established = sum.connected;
            end.established_after_s = start.elapsed().as_secs_f64();
            server.cpu_at_established = server.cpu_s();
        }
        let t = start.elapsed().as_secs_f64();
        if end.all_connected_s.is_none() && sum.connected >= conn.connections {
            end.all_connected_s = Some(t);
        }
        scenario.tick(&mut Tick {
            conn,
            start,
            t,
            connected: sum.connected,
            workers,
        });
        if let (Some(p), true) = (server.pid, t >= next_rss_sample_s) {
            next_rss_sample_s = t + 1.0;
            server.rss_peak = server.rss_peak.max(procstat::rss_bytes(p));
        }
        if t >= next_progress_s {
            next_progress_s += progress_every_s;
            let last_s = (t.floor() as usize).checked_sub(1);
            let line = ProgressLine {
                t,
                sum: &sum,
                last: &last_shown,
                requested: conn.connections,
                established: end.established,
                keepalives_last_s: last_s.and_then(|i| workers.timeline().slots.get(i)).map(|s| s.pingreqs),
                event: scenario.status(t, conn.connections),
            };
            line.show(tty);
            last_shown = (t, sum);
        }
    }
    end.hold_end_s = start.elapsed().as_secs_f64();
    end
}

/// Prints the report and writes `--json` and `--report`; returns the exit code.
fn write_reports(conn: &ConnArgs, r: &crate::report::Report) -> i32 {
    print!("{}", r.human());
    let text = serde_json::to_string_pretty(r).expect("report serializes") + "\n";
    if let Some(path) = &conn.json {
        if let Err(e) = std::fs::write(path, &text) {
            eprintln!("pulsegate-loadgen: cannot write {}: {e}", path.display());
            return 1;
        }
    }
    if let Some(dir) = &conn.report {
        match html::write_report_dir(dir, r, &text) {
            Ok(page) => eprintln!("pulsegate-loadgen: report written to {}", page.display()),
            Err(e) => {
                eprintln!("pulsegate-loadgen: cannot write the report to {}: {e}", dir.display());
                return 1;
            }
        }
    }
    if r.worker_errors.is_empty() {
        0
    } else {
        1
    }
}

/// One progress line on stderr (rewritten in place on a terminal).
struct ProgressLine<'a> {
    t: f64,
    sum: &'a Progress,
    /// When the previous line was shown, and its sums.
    last: &'a (f64, Progress),
    requested: u64,
    established: u64,
    /// PINGREQs sent in the last complete second.
    keepalives_last_s: Option<u64>,
    /// The scenario's tail (`Scenario::status`).
    event: String,
}

impl ProgressLine<'_> {
    fn show(&self, tty: bool) {
        let (t, sum, requested) = (self.t, self.sum, self.requested);
        let dt = (t - self.last.0).max(1e-3);
        let conn_rate = (sum.connected as f64 - self.last.1.connected as f64) / dt;
        let ka_last = self
            .keepalives_last_s
            .map(|n| n.to_string())
            .unwrap_or_else(|| "-".into());
        let line = format!(
            "[{t:7.1}s] connected {}/{requested} (peak {})  failed {}  reconnects {}  conn/s {conn_rate:.0}  keepalives/s {ka_last}  answered {}  publishes {}{}",
            sum.connected, self.established, sum.failed_total, sum.reconnects, sum.keepalives, sum.publishes_received, self.event
        );
        if tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }
}
