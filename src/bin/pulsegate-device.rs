//! pulsegate-device: a small device program on the pulsegate SDK (`pulsegate::sdk`).
//!
//! `pulsegate-device --server 127.0.0.1:1883 --client-id ID [--keepalive-s 60] [--state-file F]`
//! holds one MQTT connection with blocking std::net I/O, read timeouts set from the
//! session's next deadline, prints every push (`push/{id}`) and every control message on
//! stdout, follows server references, backs off when the server is busy, keeps its
//! heartbeat state in the state file, and stops on Ctrl-C / SIGTERM (DISCONNECT, state
//! saved, exit 0).
//!
//! Owns: the sockets, the clock, the signal flag and the state file of one device. Must
//! never: decide protocol behaviour itself (the SDK session does), block longer than
//! `POLL_MS_MAX` without checking the stop flag, or write anything but one line per event
//! on stdout.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use pulsegate::protocol::mqtt::ProtocolVersion;
use pulsegate::sdk::{
    BackoffPolicy, CloseCause, Event, HeartbeatPolicy, NEVER_MS, Session, SessionConfig, StoredState,
};

/// Longest a read waits before the stop flag is checked again.
const POLL_MS_MAX: u64 = 250;
/// TCP connect budget.
const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// A blocked write (server not reading) closes the connection after this long.
const WRITE_TIMEOUT_MS: u64 = 10_000;
const READ_BUF_BYTES: usize = 16 * 1024;

#[derive(Parser, Debug)]
#[command(
    name = "pulsegate-device",
    version,
    about = "A device on the pulsegate SDK: prints pushes and control messages"
)]
struct Args {
    /// MQTT server, HOST:PORT (the home server; a stored state's server is tried first).
    #[arg(long)]
    server: String,
    /// MQTT client id; pushes arrive on push/{client-id}.
    #[arg(long)]
    client_id: String,
    /// Heartbeat interval, seconds (the maximum when probing with --heartbeat-min-s).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u16).range(1..))]
    keepalive_s: u16,
    /// Start the step method here and probe up to --keepalive-s (default: no probing).
    #[arg(long)]
    heartbeat_min_s: Option<u16>,
    /// Step of the step method (default: --heartbeat-min-s).
    #[arg(long)]
    heartbeat_step_s: Option<u16>,
    /// Stored heartbeat state (JSON): read at start, written on changes and at exit.
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// MQTT protocol level: 4 (3.1.1) or 5.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(4..=5))]
    mqtt_version: u8,
    /// Mobile network "MCC-MNC", stored with the state.
    #[arg(long, default_value = "")]
    mcc_mnc: String,
    /// Location label, stored with the state.
    #[arg(long, default_value = "")]
    location: String,
    /// A file holding the device's JWT, sent as the CONNECT password (user
    /// name: the client id); read once at start.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn load_state(path: &Path) -> Option<StoredState> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return None,
        Err(e) => {
            eprintln!("pulsegate-device: cannot read {}: {e}; starting fresh", path.display());
            return None;
        }
    };
    match StoredState::from_json(&text) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("pulsegate-device: ignoring {}: {e}", path.display());
            None
        }
    }
}

fn save_state(path: Option<&Path>, session: &Session) {
    let Some(path) = path else { return };
    let tmp = path.with_extension("tmp");
    let result = std::fs::write(&tmp, session.stored_state().to_json()).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        eprintln!("pulsegate-device: cannot write {}: {e}", path.display());
    }
}

fn resolve(server: &str) -> Option<SocketAddr> {
    server.to_socket_addrs().ok()?.next()
}

/// Sleeps `ms`, waking early when `stop` is set.
fn sleep_unless_stopped(ms: u64, stop: &AtomicBool) {
    let until = Instant::now() + Duration::from_millis(ms);
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(POLL_MS_MAX)));
    }
}

fn payload_text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).replace('\n', "\\n")
}

/// Prints the session's events; returns the reconnect delay when the session closed.
fn report(session: &mut Session, state_file: Option<&Path>) -> Option<u64> {
    let mut closed_delay = None;
    while let Some(e) = session.next_event() {
        match e {
            Event::Connected { keepalive_s, .. } => {
                say(format_args!(
                    "connected server={} keepalive_s={keepalive_s}",
                    session.server()
                ));
                save_state(state_file, session);
            }
            Event::Push { topic, payload, qos } => {
                say(format_args!(
                    "push topic={topic} qos={qos} payload={}",
                    payload_text(&payload)
                ));
            }
            Event::KeepAliveConfigured { period_s, offset_ms } => {
                say(format_args!(
                    "control $pulse/keepalive period_s={period_s} offset_ms={offset_ms}"
                ));
            }
            Event::HeartbeatAdjusted {
                requested_s,
                interval_s,
            } => {
                say(format_args!(
                    "control $pulse/heartbeat requested_s={requested_s} interval_s={interval_s}"
                ));
                save_state(state_file, session);
            }
            Event::HeartbeatStepped { interval_s, optimal } => {
                say(format_args!("heartbeat interval_s={interval_s} optimal={optimal}"));
                save_state(state_file, session);
            }
            Event::ControlIgnored { topic, error } => {
                say(format_args!("control {topic} ignored: {error}"));
            }
            Event::PingSent | Event::PingAnswered => {}
            Event::Closed { cause, next } => {
                let cause = match cause {
                    CloseCause::Refused { reason } => format!("connack_0x{reason:02x}"),
                    CloseCause::Disconnected { reason } => format!("disconnect_0x{reason:02x}"),
                    other => format!("{other:?}"),
                };
                say(format_args!(
                    "closed cause={cause} next_server={} delay_ms={}{}",
                    next.server,
                    next.delay_ms,
                    if next.redirected { " (server reference)" } else { "" }
                ));
                save_state(state_file, session);
                closed_delay = Some(next.delay_ms);
            }
        }
    }
    closed_delay
}

/// Writes the session's pending output; false (after telling the session) on failure.
fn flush(session: &mut Session, stream: &mut TcpStream) -> bool {
    let out = session.take_output();
    if out.is_empty() {
        return true;
    }
    if stream.write_all(&out).is_err() {
        session.on_transport_closed();
        return false;
    }
    true
}

/// One connection, from TCP connect to its end (or the stop flag). Returns the reconnect
/// delay, or None when stopped.
fn run_connection(session: &mut Session, t0: Instant, stop: &AtomicBool, state_file: Option<&Path>) -> Option<u64> {
    let now_ms = || t0.elapsed().as_millis() as u64;
    let stream = resolve(session.server())
        .and_then(|addr| TcpStream::connect_timeout(&addr, Duration::from_millis(CONNECT_TIMEOUT_MS)).ok());
    let Some(mut stream) = stream else {
        session.on_connect_failed();
        return report(session, state_file);
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(WRITE_TIMEOUT_MS)));
    session.on_transport_open(now_ms());
    let mut buf = vec![0u8; READ_BUF_BYTES];
    loop {
        flush(session, &mut stream);
        if let Some(delay_ms) = report(session, state_file) {
            return Some(delay_ms);
        }
        if stop.load(Ordering::Relaxed) {
            session.disconnect();
            flush(session, &mut stream);
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return None;
        }
        let deadline = session.next_deadline_ms();
        let wait_ms = if deadline == NEVER_MS {
            POLL_MS_MAX
        } else {
            deadline.saturating_sub(now_ms()).clamp(1, POLL_MS_MAX)
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(wait_ms)));
        match stream.read(&mut buf) {
            Ok(0) => session.on_transport_closed(),
            Ok(n) => session.on_bytes(now_ms(), &buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => session.on_transport_closed(),
        }
        session.poll(now_ms());
    }
}

fn main() {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            eprintln!("pulsegate-device: cannot handle signal {signal}: {e}");
            std::process::exit(1);
        }
    }
    let min_s = args.heartbeat_min_s.unwrap_or(args.keepalive_s);
    let heartbeat = HeartbeatPolicy {
        min_s,
        step_s: if min_s < args.keepalive_s {
            args.heartbeat_step_s.unwrap_or(min_s)
        } else {
            0
        },
        max_s: args.keepalive_s,
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()) << 32;
    let cfg = SessionConfig {
        client_id: args.client_id.clone(),
        version: if args.mqtt_version == 5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        },
        heartbeat,
        backoff: BackoffPolicy::DEVICE,
        connack_timeout_ms: CONNECT_TIMEOUT_MS,
        max_packet_bytes: 1 << 20,
        mcc_mnc: args.mcc_mnc.clone(),
        location: args.location.clone(),
        seed,
        username: None,
        password: None,
    };
    let mut cfg = cfg;
    if let Some(path) = &args.token_file {
        match std::fs::read_to_string(path) {
            Ok(token) if !token.trim().is_empty() && token.len() <= pulsegate::limits::JWT_BYTES_MAX => {
                cfg.username = Some(args.client_id.clone());
                cfg.password = Some(token.trim().as_bytes().to_vec());
            }
            Ok(_) => {
                eprintln!(
                    "pulsegate-device: --token-file {}: empty or longer than {} bytes",
                    path.display(),
                    pulsegate::limits::JWT_BYTES_MAX
                );
                std::process::exit(2);
            }
            Err(e) => {
                eprintln!("pulsegate-device: --token-file {}: {e}", path.display());
                std::process::exit(2);
            }
        }
    }
    let state_file = args.state_file.as_deref();
    let stored = state_file.and_then(load_state);
    let mut session = match Session::new(cfg, &args.server, stored.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pulsegate-device: {e}");
            std::process::exit(2);
        }
    };
    let t0 = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match run_connection(&mut session, t0, &stop, state_file) {
            Some(delay_ms) => sleep_unless_stopped(delay_ms, &stop),
            None => break,
        }
    }
    save_state(state_file, &session);
    say(format_args!("stopped"));
}
