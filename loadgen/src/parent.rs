//! The parent process of a scenario: validates options, splits the devices into
//! worker processes (re-executing itself with the hidden `worker` subcommand),
//! aggregates their JSON lines, shows progress, samples the server in /proc,
//! stops the run and writes the report.
//! Must never: open device sockets itself, signal any process but its own
//! workers, or let a stuck worker outlive the run (it is killed after a grace).

use crate::cli::{self, ConnArgs, PushArgs};
use crate::report::{self, Progress, Report, WorkerMsg, WorkerStats};
use crate::{net, procstat, push, srcip};
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

fn fail(msg: String) -> i32 {
    eprintln!("pulsegate-loadgen: {msg}");
    2
}

/// Runs a scenario; returns the process exit code.
pub fn run(conn: &ConnArgs, scenario: &str, push_args: Option<PushArgs>) -> i32 {
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
    let http_addr = match &push_args {
        Some(p) => match cli::resolve_target(&p.http, conn.allow_remote) {
            Ok(a) => Some(a),
            Err(e) => return fail(format!("--http: {e}")),
        },
        None => None,
    };
    let positive = |x: f64| x > 0.0; // false for NaN too
    if !positive(conn.duration_s) || !positive(conn.ramp_per_s) || !positive(conn.connect_timeout_s) {
        return fail("--duration-s, --ramp-per-s and --connect-timeout-s must be > 0".into());
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
            .args(["--ramp-per-s", &(conn.ramp_per_s / workers_n as f64).to_string()])
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
            .args(["--subscribe-qos", &conn.subscribe_qos.to_string()]);
        if let Some(sub) = &conn.subscribe {
            cmd.args(["--subscribe", sub]);
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
    let mut next_progress_s = progress_every_s;
    let mut last_shown = (0.0f64, Progress::default());
    let mut established = 0u64;
    let mut established_after_s = 0.0;
    let mut cpu_at_established = cpu_start;
    let mut rss_peak = rss_before;
    let mut next_rss_sample_s = 1.0;
    let mut pusher: Option<push::Pusher> = None;

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
            handle_line(&mut procs[i], line);
        }
        let sum = sum_progress(&procs);
        if sum.connected > established {
            established = sum.connected;
            established_after_s = start.elapsed().as_secs_f64();
            cpu_at_established = pid.and_then(procstat::cpu_s);
        }
        let t = start.elapsed().as_secs_f64();
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
            show_progress(tty, t, &sum, &last_shown, conn.connections, established);
            last_shown = (t, sum);
        }
    }
    let hold_end_s = start.elapsed().as_secs_f64();
    let push_report = pusher.map(|p| p.stop());
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
            Ok((i, line)) => handle_line(&mut procs[i], line),
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
        scenario: scenario.to_string(),
        target: target.to_string(),
        mqtt_version: conn.mqtt_version,
        keepalive_s: conn.keepalive_s,
        connections_requested: conn.connections,
        workers: workers_n,
        source_ips: source_spec,
        ramp_per_s: conn.ramp_per_s,
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
                pushes_delivered += st.pushes_delivered;
                report::import(&mut rtt, &st.ping_rtt_us);
                report::import(&mut push_lat, &st.push_latency_us);
                worker_peak_at_ms = worker_peak_at_ms.max(st.peak_at_ms);
            }
            None => total.add(&p.latest),
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
    if let Some(mut pr) = push_report {
        pr.pushes_delivered = pushes_delivered;
        pr.push_latency_ms = report::quantiles_ms(&push_lat);
        r.push = Some(pr);
    }

    print!("{}", r.human());
    if let Some(path) = &conn.json {
        let text = serde_json::to_string_pretty(&r).expect("report serializes");
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("pulsegate-loadgen: cannot write {}: {e}", path.display());
            return 1;
        }
    }
    if r.worker_errors.is_empty() {
        0
    } else {
        1
    }
}

fn handle_line(p: &mut WorkerProc, line: Line) {
    match line {
        Line::Msg(WorkerMsg::Progress(pr)) => p.latest = pr,
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

fn show_progress(tty: bool, t: f64, sum: &Progress, last: &(f64, Progress), requested: u64, established: u64) {
    let dt = (t - last.0).max(1e-3);
    let conn_rate = (sum.connected as f64 - last.1.connected as f64) / dt;
    let ping_rate = (sum.pings_sent - last.1.pings_sent.min(sum.pings_sent)) as f64 / dt;
    let line = format!(
        "[{t:7.1}s] connected {}/{requested} (peak {established})  failed {}  reconnects {}  conn/s {conn_rate:.0}  pings/s {ping_rate:.0}  keepalives {}  publishes {}",
        sum.connected, sum.failed_total, sum.reconnects, sum.keepalives, sum.publishes_received
    );
    if tty {
        eprint!("\r{line}\x1b[K");
    } else {
        eprintln!("{line}");
    }
}
