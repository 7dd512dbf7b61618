//! The parent process of a scenario: validates options, splits the devices into
//! worker processes (re-executing itself with the hidden `worker` subcommand),
//! aggregates their JSON lines (progress and per-second slots), shows progress,
//! samples the server in /proc, drives the scenario's events (push start, storm,
//! rush-hour burst), stops the run and writes the reports.
//! Must never: open device sockets itself, signal any process but its own
//! workers, or let a stuck worker outlive the run (it is killed after a grace).

use crate::cli::{self, ConnArgs, OverloadArgs, PushArgs, RushhourArgs, StormArgs};
use crate::report::{self, Progress, Report, RushhourReport, StormReport, WorkerMsg, WorkerOverload, WorkerStats};
use crate::timeline::{self, Timeline};
use crate::{html, net, overload, procstat, push, scrape, srcip};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Seconds a worker gets to disconnect and report after "stop": a base plus time
/// for the kernel to tear down its sockets (closing ~18k loopback connections
/// takes 1-3 s of CPU when the server shares the cores).
fn stop_grace_s(connections: u64) -> f64 {
    15.0 + connections as f64 / 5_000.0
}

enum Line {
    Msg(WorkerMsg),
    Eof,
}

struct WorkerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    latest: Progress,
    stats: Option<WorkerStats>,
    error: Option<String>,
    done: bool,
}

/// The scenario being run, with its own options.
pub enum Scenario {
    Hold,
    Push(PushArgs),
    Storm(StormArgs),
    Rushhour(RushhourArgs),
    Overload(OverloadArgs),
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Hold => "hold",
            Scenario::Push(_) => "push",
            Scenario::Storm(_) => "storm",
            Scenario::Rushhour(_) => "rushhour",
            Scenario::Overload(_) => "overload",
        }
    }

    fn http(&self) -> Option<&str> {
        match self {
            Scenario::Push(p) => Some(&p.http),
            Scenario::Rushhour(r) => Some(&r.http),
            Scenario::Overload(o) => o.http.as_deref(),
            _ => None,
        }
    }
}

/// Live state of the storm scenario.
struct StormRun {
    at_s: f64,
    /// Latest time to fire even if not everyone is connected.
    latest_s: f64,
    started_s: Option<f64>,
}

/// Live state of the rushhour scenario.
struct RushRun {
    at_s: f64,
    spread_s: f64,
    burst: Option<push::Burst>,
    started_s: Option<f64>,
    done_s: Option<f64>,
}

fn fail(msg: String) -> i32 {
    eprintln!("pulsegate-loadgen: {msg}");
    2
}

/// Runs a scenario; returns the process exit code.
pub fn run(conn: &ConnArgs, scenario: Scenario) -> i32 {
    let push_args = match &scenario {
        Scenario::Push(p) => Some(p.clone()),
        _ => None,
    };
    let target = match cli::resolve_target(&conn.target, conn.allow_remote) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let source_spec = conn
        .source_ips
        .clone()
        .unwrap_or_else(|| srcip::default_sources(&target).to_string());
    let sources = match srcip::parse_sources(&source_spec) {
        Ok(s) => s,
        Err(e) => return fail(format!("--source-ips: {e}")),
    };
    if let Err(e) = srcip::check_sources(&sources, &target, conn.allow_remote) {
        return fail(e);
    }
    let http_addr = match scenario.http() {
        Some(h) => match cli::resolve_target(h, conn.allow_remote) {
            Ok(a) => Some(a),
            Err(e) => return fail(format!("--http: {e}")),
        },
        None => None,
    };
    let positive = |x: f64| x > 0.0; // false for NaN too
    if !positive(conn.duration_s) || !positive(conn.ramp_per_s) || !positive(conn.connect_timeout_s) {
        return fail("--duration-s, --ramp-per-s and --connect-timeout-s must be > 0".into());
    }
    let at_or_third = |at: Option<f64>, name: &str| -> Result<f64, String> {
        let t = at.unwrap_or(conn.duration_s / 3.0);
        if t.is_finite() && t >= 0.0 && t < conn.duration_s {
            Ok(t)
        } else {
            Err(format!("--{name} must be in [0, --duration-s)"))
        }
    };
    let mut ramp_per_s = conn.ramp_per_s;
    // Overload: fresh devices connect in waves (every worker opens its share of each).
    let (waves, wave_interval_s) = match &scenario {
        Scenario::Overload(o) => (
            o.waves,
            o.wave_interval_s.unwrap_or((conn.keepalive_s as f64 / 4.0).max(1.0)),
        ),
        _ => (1, 0.0),
    };
    if !(wave_interval_s.is_finite() && wave_interval_s >= 0.0) || (waves > 1 && wave_interval_s == 0.0) {
        return fail("--wave-interval-s must be > 0".into());
    }
    let mut storm_run = None;
    let mut rush_run = None;
    let mut storm_worker_args: Vec<String> = Vec::new();
    match &scenario {
        Scenario::Storm(a) => {
            let at_s = match at_or_third(a.storm_at_s, "storm-at-s") {
                Ok(t) => t,
                Err(e) => return fail(e),
            };
            if !(a.storm_ramp_per_s.is_finite() && a.storm_ramp_per_s >= 0.0) {
                return fail("--storm-ramp-per-s must be >= 0".into());
            }
            storm_run = Some(StormRun {
                at_s,
                latest_s: at_s + (conn.duration_s - at_s) / 2.0,
                started_s: None,
            });
            storm_worker_args = vec![
                "--storm-close".into(),
                a.storm_close.as_str().into(),
                "--storm-max-inflight".into(),
                a.storm_max_inflight.to_string(),
            ];
        }
        Scenario::Rushhour(a) => {
            let at_s = match at_or_third(a.burst_at_s, "burst-at-s") {
                Ok(t) => t,
                Err(e) => return fail(e),
            };
            let spread_s = a.spread_s.unwrap_or(conn.keepalive_s as f64);
            if !(spread_s.is_finite() && spread_s >= 0.0) {
                return fail("--spread-s must be >= 0".into());
            }
            if spread_s > 0.0 {
                ramp_per_s = ramp_per_s.min(conn.connections as f64 / spread_s);
            }
            if conn.keepalive_s > 0 && at_s < spread_s + conn.keepalive_s as f64 {
                eprintln!(
                    "pulsegate-loadgen: warning: --burst-at-s {at_s} leaves less than one keep-alive period \
                     after the spread; keepalive_peak_to_mean_before will be null"
                );
            }
            rush_run = Some(RushRun {
                at_s,
                spread_s,
                burst: None,
                started_s: None,
                done_s: None,
            });
        }
        _ => {}
    }
    let max_duration_s = conn.max_duration_s.unwrap_or(conn.duration_s + 120.0).max(0.1);
    let hard_limit = net::raise_nofile_limit().unwrap_or(1024);
    if conn.per_process_max == 0 || conn.per_process_max + 32 > hard_limit {
        return fail(format!(
            "--per-process-max {} must be 1..={} (RLIMIT_NOFILE hard limit {hard_limit} minus 32)",
            conn.per_process_max,
            hard_limit.saturating_sub(32)
        ));
    }
    let slices = srcip::chunk(conn.connections, conn.per_process_max);
    let workers_n = slices.len() as u64;

    let pid = conn.server_pid;
    let rss_before = pid.and_then(procstat::rss_bytes);
    let cpu_start = pid.and_then(procstat::cpu_s);
    if let (Some(p), None) = (pid, rss_before) {
        eprintln!("pulsegate-loadgen: warning: cannot read /proc/{p}/status; server stats will be missing");
    }

    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(format!("current_exe: {e}")),
    };
    let epoch_unix_ms = net::unix_ms();
    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<(usize, Line)>();
    let mut procs: Vec<WorkerProc> = Vec::new();
    for (i, s) in slices.iter().enumerate() {
        let mut cmd = Command::new(&exe);
        cmd.arg("worker")
            .args(["--target-addr", &target.to_string()])
            .args([
                "--first-index",
                &s.first_index.to_string(),
                "--count",
                &s.count.to_string(),
            ])
            .args(["--ramp-per-s", &(ramp_per_s / workers_n as f64).to_string()])
            .args(["--max-inflight", &conn.max_inflight.max(1).to_string()])
            .args([
                "--keepalive-s",
                &conn.keepalive_s.to_string(),
                "--mqtt-version",
                &conn.mqtt_version.to_string(),
            ])
            .args([
                "--source-ips",
                &source_spec,
                "--client-id-prefix",
                &conn.client_id_prefix,
            ])
            .args([
                "--connect-timeout-ms",
                &((conn.connect_timeout_s * 1000.0) as u64).to_string(),
            ])
            .args([
                "--hard-stop-s",
                &max_duration_s.to_string(),
                "--epoch-unix-ms",
                &epoch_unix_ms.to_string(),
            ])
            .args(["--subscribe-qos", &conn.subscribe_qos.to_string()])
            .args(["--heartbeat-max-s", &conn.heartbeat_max_s.to_string()])
            .args([
                "--waves",
                &waves.to_string(),
                "--wave-interval-ms",
                &((wave_interval_s * 1000.0) as u64).to_string(),
            ]);
        if let Some(sub) = &conn.subscribe {
            cmd.args(["--subscribe", sub]);
        }
        if let Scenario::Storm(a) = &scenario {
            cmd.args(&storm_worker_args).args([
                "--storm-ramp-per-s",
                &(a.storm_ramp_per_s / workers_n as f64).to_string(),
            ]);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                for p in &mut procs {
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                }
                return fail(format!("cannot start worker {i}: {e}"));
            }
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(msg) = serde_json::from_str::<WorkerMsg>(&line) {
                    let _ = tx.send((i, Line::Msg(msg)));
                }
            }
            let _ = tx.send((i, Line::Eof));
        });
        let stdin = child.stdin.take();
        procs.push(WorkerProc {
            child,
            stdin,
            latest: Progress::default(),
            stats: None,
            error: None,
            done: false,
        });
    }
    drop(tx);

    let tty = std::io::stderr().is_terminal();
    let progress_every_s = if tty { 1.0 } else { 5.0 };
    // Half a second past the slot boundary, so the last full second has arrived.
    let mut next_progress_s = progress_every_s + 0.5;
    let mut tl = Timeline::default();
    let mut all_connected_s: Option<f64> = None;
    let mut last_shown = (0.0f64, Progress::default());
    let mut established = 0u64;
    let mut established_after_s = 0.0;
    let mut cpu_at_established = cpu_start;
    let mut rss_peak = rss_before;
    let mut next_rss_sample_s = 1.0;
    let mut pusher: Option<push::Pusher> = None;
    let sampler = match (&scenario, http_addr) {
        (Scenario::Overload(_), Some(addr)) => Some(scrape::Sampler::start(addr, start)),
        _ => None,
    };

    // Overload's operator step: lower the threshold under the offered load.
    let mut threshold_step = match (&scenario, http_addr) {
        (Scenario::Overload(o), Some(addr)) => o.threshold_per_s.map(|per_s| {
            let at_s = o.threshold_at_s.unwrap_or(conn.duration_s / 3.0);
            (addr, per_s, at_s, o.admin_api_key.clone())
        }),
        _ => None,
    };
    let mut threshold_set_at_s: Option<f64> = None;

    // Hold phase.
    loop {
        let t = start.elapsed().as_secs_f64();
        if t >= conn.duration_s
            || t >= max_duration_s
            || INTERRUPTED.load(Ordering::SeqCst)
            || procs.iter().all(|p| p.done)
        {
            break;
        }
        let wait = Duration::from_secs_f64((conn.duration_s - t).clamp(0.0, 0.1));
        if let Ok((i, line)) = rx.recv_timeout(wait) {
            handle_line(&mut procs[i], line, &mut tl);
            // Drain what else is queued (bounded) before acting on the sums.
            for _ in 0..10_000 {
                let Ok((i, line)) = rx.try_recv() else { break };
                handle_line(&mut procs[i], line, &mut tl);
            }
        }
        let sum = sum_progress(&procs);
        if sum.connected > established {
            established = sum.connected;
            established_after_s = start.elapsed().as_secs_f64();
            cpu_at_established = pid.and_then(procstat::cpu_s);
        }
        let t = start.elapsed().as_secs_f64();
        let step_due = threshold_step.as_ref().is_some_and(|step| t >= step.2);
        if let (true, Some((addr, per_s, _, key))) = (step_due, threshold_step.as_ref()) {
            match scrape::set_heartbeat_limit(addr, *per_s, key.as_deref()) {
                Ok(200) => {
                    eprintln!("pulsegate-loadgen: heartbeat-load threshold set to {per_s}/s at {t:.1} s");
                    threshold_set_at_s = Some(t);
                }
                Ok(code) => eprintln!("pulsegate-loadgen: setting the threshold answered HTTP {code}"),
                Err(e) => eprintln!("pulsegate-loadgen: setting the threshold failed: {e}"),
            }
            threshold_step = None;
        }
        if all_connected_s.is_none() && sum.connected >= conn.connections {
            all_connected_s = Some(t);
        }
        if let Some(st) = storm_run.as_mut() {
            if st.started_s.is_none() && t >= st.at_s && (sum.connected >= conn.connections || t >= st.latest_s) {
                if sum.connected < conn.connections {
                    eprintln!(
                        "pulsegate-loadgen: storm fires with {}/{} connected (not all connected by {:.1} s)",
                        sum.connected, conn.connections, st.latest_s
                    );
                }
                for p in &mut procs {
                    if let Some(stdin) = p.stdin.as_mut() {
                        let _ = stdin.write_all(b"storm\n").and_then(|_| stdin.flush());
                    }
                }
                st.started_s = Some(start.elapsed().as_secs_f64());
            }
        }
        if let (Some(rh), Some(addr)) = (rush_run.as_mut(), http_addr) {
            if let Scenario::Rushhour(a) = &scenario {
                if rh.started_s.is_none() && t >= rh.at_s {
                    rh.started_s = Some(t);
                    rh.burst = Some(push::Burst::start(
                        addr,
                        conn.connections,
                        &conn.client_id_prefix,
                        a.qos,
                        a.payload_bytes,
                        a.http_connections,
                        a.pipeline,
                    ));
                }
            }
            if let (Some(b), None, Some(started)) = (&rh.burst, rh.done_s, rh.started_s) {
                rh.done_s = b.finished_after_s().map(|d| started + d);
            }
        }
        if let (Some(p), true) = (pid, t >= next_rss_sample_s) {
            next_rss_sample_s = t + 1.0;
            rss_peak = rss_peak.max(procstat::rss_bytes(p));
        }
        if let (Some(p), None, Some(addr)) = (&push_args, &pusher, http_addr) {
            let go = match p.push_start_s {
                Some(s) => t >= s,
                None => sum.connected >= conn.connections,
            };
            if go {
                pusher = Some(push::Pusher::start(p, addr, conn.connections, &conn.client_id_prefix));
            }
        }
        if t >= next_progress_s {
            next_progress_s += progress_every_s;
            let last_s = (t.floor() as usize).checked_sub(1);
            let extra = ProgressExtra {
                keepalives_last_s: last_s.and_then(|i| tl.slots.get(i)).map(|s| s.pingreqs),
                event: event_status(storm_run.as_ref(), rush_run.as_ref(), conn.connections, t),
            };
            show_progress(tty, t, &sum, &last_shown, conn.connections, established, &extra);
            last_shown = (t, sum);
        }
    }
    let hold_end_s = start.elapsed().as_secs_f64();
    let server_series = sampler.map(scrape::Sampler::stop);
    let mut push_report = pusher.map(|p| p.stop());
    if let Some(rh) = rush_run.as_mut() {
        if let Some(b) = rh.burst.take() {
            if !b.is_done() {
                eprintln!("\npulsegate-loadgen: the hold ended before the burst finished; stopping it");
            }
            push_report = Some(b.stop());
        }
    }
    let rss_end = pid.and_then(procstat::rss_bytes);
    let cpu_hold_end = pid.and_then(procstat::cpu_s);
    if tty {
        eprintln!();
    }

    // Stop phase: ask every worker to disconnect and report, then reap.
    for p in &mut procs {
        if let Some(mut stdin) = p.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
    }
    let grace_s = stop_grace_s(conn.connections);
    let kill_at = Instant::now() + Duration::from_secs_f64(grace_s);
    while !procs.iter().all(|p| p.done) {
        let left = kill_at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok((i, line)) => handle_line(&mut procs[i], line, &mut tl),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    for (i, p) in procs.iter_mut().enumerate() {
        if !p.done {
            let _ = p.child.kill();
            p.error
                .get_or_insert_with(|| format!("worker {i} killed after {grace_s:.0} s grace"));
        }
        match p.child.wait() {
            Ok(st) if !st.success() && p.error.is_none() => p.error = Some(format!("worker {i} exited with {st}")),
            _ => {}
        }
        if p.stats.is_none() && p.error.is_none() {
            p.error = Some(format!("worker {i} sent no final report"));
        }
    }
    let cpu_end = pid.and_then(procstat::cpu_s);
    let shutdown_s = start.elapsed().as_secs_f64() - hold_end_s;

    // Merge.
    let mut r = Report {
        scenario: scenario.name().to_string(),
        target: target.to_string(),
        mqtt_version: conn.mqtt_version,
        keepalive_s: conn.keepalive_s,
        connections_requested: conn.connections,
        workers: workers_n,
        source_ips: source_spec,
        ramp_per_s,
        established,
        duration_s: hold_end_s,
        shutdown_s,
        server_pid: pid,
        server_rss_bytes_before: rss_before,
        server_rss_bytes: rss_end,
        server_rss_bytes_peak: rss_peak.max(rss_end),
        ..Default::default()
    };
    let mut rtt = report::new_histogram();
    let mut push_lat = report::new_histogram();
    let mut total = Progress::default();
    let mut pushes_delivered = 0;
    let mut worker_peak_at_ms = 0;
    let mut storm_rep = StormReport::default();
    let mut storm_reconnect = report::new_histogram();
    let mut storm_recovered_ms: Option<u64> = Some(0);
    let mut overload_counts = WorkerOverload::default();
    for p in &procs {
        if let Some(e) = &p.error {
            r.worker_errors.push(e.clone());
        }
        match &p.stats {
            Some(st) => {
                total.add(&st.progress);
                report::add_counts(&mut r.failed, &st.failed);
                report::add_counts(&mut r.closed, &st.closed);
                r.pubacks_sent += st.pubacks_sent;
                r.control_messages += st.control_messages;
                overload_counts.add(&st.overload);
                pushes_delivered += st.pushes_delivered;
                report::import(&mut rtt, &st.ping_rtt_us);
                report::import(&mut push_lat, &st.push_latency_us);
                worker_peak_at_ms = worker_peak_at_ms.max(st.peak_at_ms);
                match &st.storm {
                    Some(ws) => {
                        storm_rep.storm_dropped += ws.dropped;
                        storm_rep.storm_reconnected += ws.reconnected;
                        storm_rep.storm_connect_attempts += ws.connect_attempts;
                        report::add_counts(&mut storm_rep.storm_failed, &ws.failed);
                        report::import(&mut storm_reconnect, &ws.reconnect_us);
                        storm_recovered_ms = match (storm_recovered_ms, ws.recovered_at_ms) {
                            (Some(a), Some(b)) => Some(a.max(b)),
                            _ => None,
                        };
                    }
                    None => storm_recovered_ms = None,
                }
            }
            None => {
                total.add(&p.latest);
                storm_recovered_ms = None;
            }
        }
    }
    // Workers timestamp their own peak precisely; use it when every worker's peak
    // is part of the aggregate peak (the usual case: all connect and stay).
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
    if let (Some(a), Some(b)) = (rss_end, rss_before) {
        if established > 0 {
            r.server_rss_per_conn_bytes = Some((a as f64 - b as f64) / established as f64);
        }
    }
    if let (Some(a), Some(b)) = (cpu_end, cpu_start) {
        r.server_cpu_s = Some(a - b);
    }
    if let (Some(a), Some(b)) = (cpu_hold_end, cpu_at_established) {
        r.server_cpu_s_steady = Some(a - b);
        r.steady_s = Some((hold_end_s - established_after_s).max(0.0));
    }
    r.latency_curves.push(report::curve_ms("ping RTT", &rtt));
    if let Some(mut pr) = push_report {
        pr.pushes_delivered = pushes_delivered;
        pr.push_latency_ms = report::quantiles_ms(&push_lat);
        r.latency_curves.push(report::curve_ms("push end-to-end", &push_lat));
        r.latency_curves.push(pr.http_latency_curve.clone());
        r.push = Some(pr);
    }

    // Per-second analysis: whole seconds of the hold only.
    tl.truncate(hold_end_s.floor() as usize);
    let k = conn.keepalive_s;
    r.keepalive_basis = "pingreq_sent".into();
    r.keepalive_window_s = timeline::tail_window(hold_end_s, k);
    if let Some(w) = r.keepalive_window_s {
        r.keepalives_per_s = tl.pingreqs_in(w);
        r.keepalive_peak_to_mean = timeline::peak_to_mean(&r.keepalives_per_s);
    }
    r.timeline = tl.series();
    r.connected_per_s = r.timeline.connected.clone();
    if let (Some(st), Scenario::Storm(a)) = (&storm_run, &scenario) {
        storm_rep.storm_at_s = st.at_s;
        storm_rep.storm_started_s = st.started_s;
        storm_rep.storm_close = a.storm_close.as_str().into();
        storm_rep.storm_failed_total = storm_rep.storm_failed.values().sum();
        storm_rep.storm_reconnect_ms = report::quantiles_ms(&storm_reconnect);
        if let (Some(started), Some(ms)) = (st.started_s, storm_recovered_ms) {
            let at = ms as f64 / 1000.0;
            if at <= hold_end_s {
                storm_rep.storm_recovery_s = Some((at - started).max(0.0));
            }
        }
        r.latency_curves
            .push(report::curve_ms("storm reconnect", &storm_reconnect));
        r.storm = Some(storm_rep);
    }
    if let (Some(rh), Scenario::Rushhour(a)) = (&rush_run, &scenario) {
        let max_periods = timeline::default_window_len_s(k) / (k.max(1) as u64);
        // If not every device ever connected, the steady state starts at the peak.
        let steady_from = all_connected_s.unwrap_or(established_after_s);
        let before = rh
            .started_s
            .and_then(|b| timeline::periods_window(steady_from, b, k, max_periods));
        let after = rh
            .done_s
            .and_then(|d| timeline::periods_window(d, hold_end_s, k, max_periods));
        let per_s = |w: Option<timeline::Window>| w.map(|w| tl.pingreqs_in(w)).unwrap_or_default();
        let (before_v, after_v) = (per_s(before), per_s(after));
        let from_burst = rh
            .started_s
            .map(|b| timeline::period_windows(b, hold_end_s, k))
            .unwrap_or_default()
            .into_iter()
            .map(|w| report::PeriodPeakToMean {
                window_s: w,
                peak_to_mean: timeline::peak_to_mean(&tl.pingreqs_in(w)),
            })
            .collect();
        r.rushhour = Some(RushhourReport {
            spread_s: rh.spread_s,
            all_connected_s,
            burst_at_s: rh.at_s,
            burst_started_s: rh.started_s,
            burst_done_s: rh.done_s,
            burst_http_connections: a.http_connections,
            burst_pipeline: a.pipeline,
            keepalive_window_before_s: before,
            keepalive_peak_to_mean_before: timeline::peak_to_mean(&before_v),
            keepalives_per_s_before: before_v,
            keepalive_window_after_s: after,
            keepalive_peak_to_mean_after: timeline::peak_to_mean(&after_v),
            keepalives_per_s_after: after_v,
            keepalive_periods_from_burst: from_burst,
        });
    }

    if let Scenario::Overload(o) = &scenario {
        let mut report = overload::OverloadReport::build(
            waves,
            wave_interval_s,
            conn.heartbeat_max_s,
            &r.timeline,
            &r.failed,
            &overload_counts,
            server_series,
        );
        if let (Some(per_s), Some(at_s)) = (o.threshold_per_s, threshold_set_at_s) {
            // Relief doubles intervals: judge on the doubled period once anyone was adjusted.
            let window_s = if report.adjusted > 0 {
                conn.keepalive_s.saturating_mul(2)
            } else {
                conn.keepalive_s
            };
            report.settle(per_s, at_s, conn.keepalive_s, window_s);
        }
        r.overload = Some(report);
    }

    print!("{}", r.human());
    let text = serde_json::to_string_pretty(&r).expect("report serializes") + "\n";
    if let Some(path) = &conn.json {
        if let Err(e) = std::fs::write(path, &text) {
            eprintln!("pulsegate-loadgen: cannot write {}: {e}", path.display());
            return 1;
        }
    }
    if let Some(dir) = &conn.report {
        match html::write_report_dir(dir, &r, &text) {
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

fn handle_line(p: &mut WorkerProc, line: Line, tl: &mut Timeline) {
    match line {
        Line::Msg(WorkerMsg::Progress(pr)) => p.latest = pr,
        Line::Msg(WorkerMsg::Second(sc)) => tl.add(&sc),
        Line::Msg(WorkerMsg::Final(st)) => {
            p.latest = st.progress;
            p.stats = Some(*st);
        }
        Line::Msg(WorkerMsg::Fatal { error }) => p.error = Some(error),
        Line::Eof => p.done = true,
    }
}

fn sum_progress(procs: &[WorkerProc]) -> Progress {
    let mut s = Progress::default();
    for p in procs {
        s.add(&p.latest);
    }
    s
}

/// Scenario-specific parts of the progress line.
struct ProgressExtra {
    /// PINGREQs sent in the last complete second.
    keepalives_last_s: Option<u64>,
    event: String,
}

fn event_status(storm: Option<&StormRun>, rush: Option<&RushRun>, requested: u64, t: f64) -> String {
    if let Some(st) = storm {
        return match st.started_s {
            None => format!("  storm in {:.0}s", (st.at_s - t).max(0.0)),
            Some(s) => format!("  storm at {s:.1}s"),
        };
    }
    if let Some(rh) = rush {
        return match (&rh.burst, rh.done_s) {
            (_, Some(d)) => format!("  burst done at {d:.1}s"),
            (Some(b), None) => format!("  burst {}/{requested}", b.claimed()),
            (None, None) => format!("  burst in {:.0}s", (rh.at_s - t).max(0.0)),
        };
    }
    String::new()
}

fn show_progress(
    tty: bool,
    t: f64,
    sum: &Progress,
    last: &(f64, Progress),
    requested: u64,
    established: u64,
    extra: &ProgressExtra,
) {
    let dt = (t - last.0).max(1e-3);
    let conn_rate = (sum.connected as f64 - last.1.connected as f64) / dt;
    let ka_last = extra
        .keepalives_last_s
        .map(|n| n.to_string())
        .unwrap_or_else(|| "-".into());
    let line = format!(
        "[{t:7.1}s] connected {}/{requested} (peak {established})  failed {}  reconnects {}  conn/s {conn_rate:.0}  keepalives/s {ka_last}  answered {}  publishes {}{}",
        sum.connected, sum.failed_total, sum.reconnects, sum.keepalives, sum.publishes_received, extra.event
    );
    if tty {
        eprint!("\r{line}\x1b[K");
    } else {
        eprintln!("{line}");
    }
}
