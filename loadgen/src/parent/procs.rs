//! The parent's worker processes: starting them (the binary re-executed with the
//! hidden `worker` subcommand), reading their JSON lines on one thread each,
//! sending them commands on stdin, and stopping and reaping them.
//! Must never: signal any process but its own children, or wait for a stuck
//! worker past its grace (it is killed).

use crate::cli::{ConnArgs, SecurityArgs};
use crate::report::{Progress, WorkerMsg, WorkerStats};
use crate::scenario::WorkerControl;
use crate::srcip::Slice;
use crate::timeline::Timeline;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Queued worker lines handled in one turn after the first, before the parent acts
/// on the sums again.
const DRAIN_LINES_MAX: usize = 10_000;

/// Longest wait for a line while the workers stop, so the deadline is checked.
const STOP_POLL_MS: u64 = 200;

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

impl WorkerProc {
    fn handle(&mut self, line: Line, tl: &mut Timeline) {
        match line {
            Line::Msg(WorkerMsg::Progress(pr)) => self.latest = pr,
            Line::Msg(WorkerMsg::Second(sc)) => tl.add(&sc),
            Line::Msg(WorkerMsg::Final(st)) => {
                self.latest = st.progress;
                self.stats = Some(*st);
            }
            Line::Msg(WorkerMsg::Fatal { error }) => self.error = Some(error),
            Line::Eof => self.done = true,
        }
    }
}

/// The options every worker gets besides its slice of devices.
pub struct WorkerPlan<'a> {
    pub conn: &'a ConnArgs,
    pub target: SocketAddr,
    /// Normalized `--source-ips` ("none" for kernel choice).
    pub source_spec: &'a str,
    /// Connect attempts per second of one worker.
    pub ramp_per_s: f64,
    pub max_duration_s: f64,
    pub epoch_unix_ms: u64,
    /// The scenario's own worker arguments.
    pub extra_args: &'a [String],
}

impl WorkerPlan<'_> {
    fn command(&self, exe: &Path, s: &Slice) -> Command {
        let conn = self.conn;
        let mut cmd = Command::new(exe);
        cmd.arg("worker")
            .args(["--target-addr", &self.target.to_string()])
            .args([
                "--first-index",
                &s.first_index.to_string(),
                "--count",
                &s.count.to_string(),
            ])
            .args(["--ramp-per-s", &self.ramp_per_s.to_string()])
            .args(["--max-inflight", &conn.max_inflight.max(1).to_string()])
            .args([
                "--keepalive-s",
                &conn.keepalive_s.to_string(),
                "--mqtt-version",
                &conn.mqtt_version.to_string(),
            ])
            .args([
                "--source-ips",
                self.source_spec,
                "--client-id-prefix",
                &conn.client_id_prefix,
            ])
            .args([
                "--connect-timeout-ms",
                &((conn.connect_timeout_s * 1000.0) as u64).to_string(),
            ])
            .args([
                "--hard-stop-s",
                &self.max_duration_s.to_string(),
                "--epoch-unix-ms",
                &self.epoch_unix_ms.to_string(),
            ])
            .args(["--subscribe-qos", &conn.subscribe_qos.to_string()])
            .args(["--heartbeat-max-s", &conn.heartbeat_max_s.to_string()]);
        if let Some(sub) = &conn.subscribe {
            cmd.args(["--subscribe", sub]);
        }
        cmd.args(security_args(&conn.security));
        cmd.args(self.extra_args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd
    }
}

/// The worker's copy of the TLS and token options.
fn security_args(s: &SecurityArgs) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    if s.tls {
        v.push("--tls".into());
    }
    if let Some(ca) = &s.tls_ca_file {
        v.extend(["--tls-ca-file".into(), ca.display().to_string()]);
    }
    v.extend(["--tls-server-name".into(), s.tls_server_name.clone()]);
    if s.no_tls_resume {
        v.push("--no-tls-resume".into());
    }
    v.extend(["--tls-alpn".into(), s.tls_alpn.clone()]);
    if let Some(f) = &s.jwt_secret_file {
        v.extend(["--jwt-secret-file".into(), f.display().to_string()]);
    }
    v.extend(["--jwt-ttl-s".into(), s.jwt_ttl_s.to_string()]);
    v
}

/// What one worker left behind once reaped.
pub struct WorkerResult<'a> {
    pub error: Option<&'a str>,
    /// Its final report; `None` if it sent none.
    pub stats: Option<&'a WorkerStats>,
    /// Its last progress line (the final one if it reported).
    pub latest: &'a Progress,
}

/// The running workers, the channel their reader threads send lines on, and the
/// sum of the per-second slots they sent.
pub struct Workers {
    procs: Vec<WorkerProc>,
    rx: mpsc::Receiver<(usize, Line)>,
    timeline: Timeline,
}

impl Workers {
    /// Starts one worker per slice; on a failure, kills those already started.
    pub fn spawn(exe: &Path, plan: &WorkerPlan, slices: &[Slice]) -> Result<Workers, String> {
        let (tx, rx) = mpsc::channel::<(usize, Line)>();
        let mut procs: Vec<WorkerProc> = Vec::new();
        for (i, s) in slices.iter().enumerate() {
            let mut child = match plan.command(exe, s).spawn() {
                Ok(c) => c,
                Err(e) => {
                    for p in &mut procs {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                    }
                    return Err(format!("cannot start worker {i}: {e}"));
                }
            };
            // `command()` pipes stdout, so the child has one to take.
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
        Ok(Workers {
            procs,
            rx,
            timeline: Timeline::default(),
        })
    }

    /// Waits up to `wait` for a line, then handles what else is queued (bounded).
    pub fn poll(&mut self, wait: Duration) {
        if let Ok((i, line)) = self.rx.recv_timeout(wait) {
            self.procs[i].handle(line, &mut self.timeline);
            for _ in 0..DRAIN_LINES_MAX {
                let Ok((i, line)) = self.rx.try_recv() else { break };
                self.procs[i].handle(line, &mut self.timeline);
            }
        }
    }

    /// Per-second sums over the workers so far.
    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// Whether every worker has closed its stdout.
    pub fn all_done(&self) -> bool {
        self.procs.iter().all(|p| p.done)
    }

    /// The workers' latest progress, summed.
    pub fn progress(&self) -> Progress {
        let mut s = Progress::default();
        for p in &self.procs {
            s.add(&p.latest);
        }
        s
    }

    /// Asks every worker to disconnect and report, waits up to `grace_s` for their
    /// lines, kills the stragglers, and reaps them all.
    pub fn stop(&mut self, grace_s: f64) {
        for p in &mut self.procs {
            if let Some(mut stdin) = p.stdin.take() {
                let _ = stdin.write_all(b"stop\n");
            }
        }
        let kill_at = Instant::now() + Duration::from_secs_f64(grace_s);
        while !self.all_done() {
            let left = kill_at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.rx.recv_timeout(left.min(Duration::from_millis(STOP_POLL_MS))) {
                Ok((i, line)) => self.procs[i].handle(line, &mut self.timeline),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        for (i, p) in self.procs.iter_mut().enumerate() {
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
    }

    /// What each worker left, in worker order, and the per-second sums.
    pub fn results(&self) -> (Vec<WorkerResult<'_>>, &Timeline) {
        let results = self
            .procs
            .iter()
            .map(|p| WorkerResult {
                error: p.error.as_deref(),
                stats: p.stats.as_ref(),
                latest: &p.latest,
            })
            .collect();
        (results, &self.timeline)
    }
}

impl WorkerControl for Workers {
    fn broadcast(&mut self, line: &str) {
        for p in &mut self.procs {
            if let Some(stdin) = p.stdin.as_mut() {
                let _ = stdin
                    .write_all(format!("{line}\n").as_bytes())
                    .and_then(|_| stdin.flush());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn security_options_reach_the_worker_unchanged() {
        let sec = SecurityArgs {
            tls: true,
            tls_ca_file: Some("/tmp/ca.pem".into()),
            tls_server_name: "broker.test".into(),
            no_tls_resume: true,
            tls_alpn: "mqtt,x".into(),
            jwt_secret_file: Some("/tmp/secret".into()),
            jwt_ttl_s: 90,
        };
        let mut argv: Vec<String> = ["pulsegate-loadgen", "worker", "--target-addr", "127.0.0.1:1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for (k, v) in [
            ("--first-index", "0"),
            ("--count", "1"),
            ("--ramp-per-s", "1"),
            ("--max-inflight", "1"),
            ("--keepalive-s", "1"),
            ("--mqtt-version", "4"),
            ("--source-ips", "none"),
            ("--client-id-prefix", "x"),
            ("--connect-timeout-ms", "1"),
            ("--hard-stop-s", "1"),
            ("--epoch-unix-ms", "1"),
        ] {
            argv.extend([k.to_string(), v.to_string()]);
        }
        argv.extend(security_args(&sec));
        let Command::Worker(w) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("not a worker")
        };
        assert_eq!(w.security, sec);
        let plain = SecurityArgs {
            tls_server_name: "localhost".into(),
            tls_alpn: "mqtt".into(),
            jwt_ttl_s: 3600,
            ..Default::default()
        };
        assert!(!security_args(&plain).contains(&"--tls".to_string()));
    }
}
