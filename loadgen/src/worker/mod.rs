//! One worker process: a single-threaded mio event loop driving a slice of devices.
//!
//! Owns: the sockets of its slice, the ramp (token bucket + in-flight bound), the
//! timer heap (per-connection I/O lives in `conn.rs`), and reporting JSON lines on stdout
//! (progress every `report_ms`, one line per completed 1-second slot, final stats at the
//! end). On "storm" on stdin it drops every connected device at once (no DISCONNECT) and
//! queues them for an immediate reconnect. Stops on "stop"/EOF on stdin or at its hard
//! stop time, sending DISCONNECT to connected devices.
//! Must never: block on a socket, allocate per device while idle (only an unsent
//! tail or a partial frame is kept per device), panic on server bytes, or write
//! anything but protocol lines to stdout.

use crate::cli::StormClose;
use crate::cli::WorkerArgs;
use crate::device::{Device, Phase, TimeoutKind, TimerAction, NEVER_MS};
use crate::mqtt;
use crate::net;
use crate::report::{self, Progress, WorkerMsg, WorkerOverload, WorkerStats, WorkerStorm};
use crate::srcip;
use crate::timeline::SlotAcc;
use crate::tls::stats::WorkerTls;
use crate::tls::{ClientTls, TlsOptions};
use crate::token::Minter;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod conn;
mod tls_io;

const STDIN_TOKEN: Token = Token(usize::MAX - 1);
const READ_BUF_BYTES: usize = 64 * 1024;
const MAX_FRAME_BYTES: usize = 1 << 20;
const MAX_TX_TAIL_BYTES: usize = 256 * 1024;
/// Marker the push scenario puts in payloads: "lgts=<unix µs>".
pub const TS_MARKER: &[u8] = b"lgts=";

struct Slot {
    sock: Option<TcpStream>,
    dev: Device,
    tx_tail: Vec<u8>,
    rx_tail: Vec<u8>,
    /// With `--tls`, while the socket exists (rustls buffers the unsent bytes then).
    tls: Option<Box<tls_io::TlsConn>>,
}

/// A storm in progress (or past) in this worker.
struct StormState {
    /// Worker clock (µs) of the drop.
    at_us: u64,
    stats: WorkerStorm,
    reconnect: Histogram<u64>,
}

struct Worker {
    args: WorkerArgs,
    sources: Vec<IpAddr>,
    target: SocketAddr,
    poll: Poll,
    slots: Vec<Slot>,
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    ready: VecDeque<u32>,
    next_fresh: u32,
    tokens: f64,
    last_refill_us: u64,
    inflight: u32,
    t0: Instant,
    unix_us_at_t0: u64,
    epoch_offset_ms: u64,
    rng: u64,
    stopping: bool,
    stop_flag: Arc<AtomicBool>,
    storm_flag: Arc<AtomicBool>,
    storm: Option<StormState>,
    seconds: SlotAcc,
    _waker: Arc<mio::Waker>,
    read_buf: Vec<u8>,
    scratch: Vec<u8>,
    id_buf: String,
    progress: Progress,
    peak_connected: u64,
    peak_at_ms: u64,
    failed: BTreeMap<String, u64>,
    closed: BTreeMap<String, u64>,
    pubacks_sent: u64,
    control_messages: u64,
    overload: WorkerOverload,
    pushes_delivered: u64,
    ping_rtt: Histogram<u64>,
    push_latency: Histogram<u64>,
    /// `--tls`: the config the connections share.
    tls: Option<ClientTls>,
    tls_stats: WorkerTls,
    tls_handshake: Histogram<u64>,
    /// `--jwt-secret-file`: a token per CONNECT.
    minter: Option<Minter>,
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(v) => *v += 1,
        None => {
            map.insert(key.to_string(), 1);
        }
    }
}

fn emit(msg: &WorkerMsg) -> bool {
    let Ok(line) = serde_json::to_string(msg) else {
        return false;
    };
    let mut out = io::stdout().lock();
    writeln!(out, "{line}").and_then(|_| out.flush()).is_ok()
}

/// Entry point of the hidden `worker` subcommand; returns the exit code.
pub fn run(args: WorkerArgs) -> i32 {
    match Worker::new(args).and_then(|mut w| w.run()) {
        Ok(()) => 0,
        Err(e) => {
            emit(&WorkerMsg::Fatal { error: e.clone() });
            eprintln!("pulsegate-loadgen worker: {e}");
            1
        }
    }
}

impl Worker {
    fn new(args: WorkerArgs) -> Result<Self, String> {
        // The parent handles Ctrl-C and tells us to stop through stdin.
        // SAFETY: installing SIG_IGN is async-signal-safe and has no preconditions.
        unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
        let limit = net::raise_nofile_limit().map_err(|e| format!("setrlimit(NOFILE): {e}"))?;
        if args.count + 32 > limit {
            return Err(format!(
                "{} connections need more than RLIMIT_NOFILE {limit}; lower --per-process-max",
                args.count
            ));
        }
        let sources = srcip::parse_sources(&args.source_ips)?;
        let poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
        // A thread watches stdin for "stop" or EOF (parent gone) and wakes the loop.
        let stop_flag = Arc::new(AtomicBool::new(false));
        let storm_flag = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(mio::Waker::new(poll.registry(), STDIN_TOKEN).map_err(|e| format!("waker: {e}"))?);
        {
            let (flag, storm, waker) = (stop_flag.clone(), storm_flag.clone(), waker.clone());
            std::thread::spawn(move || {
                let mut line = String::new();
                let stdin = io::stdin();
                loop {
                    line.clear();
                    match stdin.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line.trim() == "stop" => break,
                        Ok(_) if line.trim() == "storm" => {
                            storm.store(true, Ordering::SeqCst);
                            let _ = waker.wake();
                        }
                        Ok(_) => {}
                    }
                }
                flag.store(true, Ordering::SeqCst);
                let _ = waker.wake();
            });
        }
        let keepalive_s = args.keepalive_s;
        let slots = (0..args.count)
            .map(|_| Slot {
                sock: None,
                dev: Device::new(keepalive_s),
                tx_tail: Vec::new(),
                rx_tail: Vec::new(),
                tls: None,
            })
            .collect();
        let tls = match TlsOptions::from_cli(&args.security) {
            Some(opts) => Some(ClientTls::new(&opts, args.count as usize)?),
            None => None,
        };
        let minter = match &args.security.jwt_secret_file {
            Some(path) => Some(Minter::from_file(path, args.security.jwt_ttl_s)?),
            None => None,
        };
        let now_unix_ms = net::unix_ms();
        let epoch_offset_ms = now_unix_ms.saturating_sub(args.epoch_unix_ms);
        Ok(Worker {
            target: args.target_addr,
            sources,
            poll,
            slots,
            heap: BinaryHeap::new(),
            ready: VecDeque::new(),
            next_fresh: 0,
            tokens: 1.0,
            last_refill_us: 0,
            inflight: 0,
            t0: Instant::now(),
            unix_us_at_t0: net::unix_us(),
            epoch_offset_ms,
            rng: (now_unix_ms ^ ((std::process::id() as u64) << 32) ^ args.first_index) | 1,
            stopping: false,
            stop_flag,
            storm_flag,
            storm: None,
            seconds: SlotAcc::new(epoch_offset_ms / 1000, 0),
            _waker: waker,
            read_buf: vec![0; READ_BUF_BYTES],
            scratch: Vec::with_capacity(256),
            id_buf: String::new(),
            progress: Progress::default(),
            peak_connected: 0,
            peak_at_ms: 0,
            failed: BTreeMap::new(),
            closed: BTreeMap::new(),
            pubacks_sent: 0,
            control_messages: 0,
            overload: WorkerOverload::default(),
            pushes_delivered: 0,
            ping_rtt: report::new_histogram(),
            push_latency: report::new_histogram(),
            tls,
            tls_stats: WorkerTls::default(),
            tls_handshake: report::new_histogram(),
            minter,
            args,
        })
    }

    fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    /// ms since the parent's start of a worker-clock time.
    fn epoch_ms(&self, now_ms: u64) -> u64 {
        self.epoch_offset_ms + now_ms
    }

    /// Closes the 1-second slots that ended before `now_us` and sends them to the parent.
    /// Returns false when the parent is gone.
    fn tick_seconds(&mut self, now_us: u64) -> bool {
        let slot = self.epoch_ms(now_us / 1000) / 1000;
        let mut ok = true;
        for done in self.seconds.advance(slot, self.progress.connected) {
            ok &= emit(&WorkerMsg::Second(done));
        }
        ok
    }

    /// µs (worker clock) until the current slot ends.
    fn until_next_slot_us(&self, now_us: u64) -> u64 {
        let next_ms = (self.seconds.cur.slot + 1) * 1000;
        (next_ms.saturating_sub(self.epoch_offset_ms) * 1000).saturating_sub(now_us)
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn arm(&mut self, idx: u32) {
        let d = self.slots[idx as usize].dev.deadline_ms();
        if d != NEVER_MS {
            self.heap.push(Reverse((d, idx)));
        }
    }

    fn run(&mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(4096);
        let hard_stop_us = (self.args.hard_stop_s.max(0.0) * 1e6) as u64;
        let report_us = self.args.report_ms.max(10) * 1000;
        let mut next_report_us = 0;
        loop {
            let now_us = self.now_us();
            self.stopping |= self.stop_flag.load(Ordering::Relaxed);
            if self.stopping || now_us >= hard_stop_us {
                break;
            }
            if !self.tick_seconds(now_us) {
                break; // parent is gone
            }
            if self.storm.is_none() && self.storm_flag.load(Ordering::Relaxed) {
                self.storm(now_us);
            }
            self.pump_connects(now_us);
            self.fire_timers(now_us / 1000, now_us);
            if now_us >= next_report_us {
                next_report_us = now_us + report_us;
                if !emit(&WorkerMsg::Progress(self.progress)) {
                    break; // parent is gone
                }
            }
            self.compact_heap();
            let mut wait_us = (next_report_us - now_us)
                .min(hard_stop_us - now_us)
                .min(self.until_next_slot_us(now_us) + 100);
            if let Some(Reverse((d, _))) = self.heap.peek() {
                wait_us = wait_us.min((d * 1000).saturating_sub(now_us));
            }
            if self.has_pending_connects(now_us) && self.inflight < self.args.max_inflight {
                let need = ((1.0 - self.tokens).max(0.0) / self.args.ramp_per_s * 1e6) as u64;
                wait_us = wait_us.min(need);
            }
            if let Some(next_wave_us) = self.next_wave_us(now_us) {
                wait_us = wait_us.min(next_wave_us - now_us);
            }
            let timeout = Duration::from_micros(wait_us.max(200));
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("poll: {e}")),
            }
            // Events are counted in the slot they are handled in.
            let now_us = self.now_us();
            if !self.tick_seconds(now_us) {
                break;
            }
            for ev in events.iter() {
                if ev.token() == STDIN_TOKEN {
                    self.stopping |= self.stop_flag.load(Ordering::SeqCst);
                    continue;
                }
                let idx = ev.token().0 as u32;
                if (idx as usize) < self.slots.len() {
                    self.on_event(
                        idx,
                        ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                        ev.is_writable(),
                    );
                }
            }
        }
        self.shutdown();
        Ok(())
    }

    fn has_pending_connects(&self, now_us: u64) -> bool {
        !self.ready.is_empty() || (self.next_fresh as usize) < self.fresh_allowed(now_us)
    }

    /// Fresh devices allowed to connect by `now_us`: all of them, or with `--waves W`
    /// one more W-th of the slice every `--wave-interval-ms`.
    fn fresh_allowed(&self, now_us: u64) -> usize {
        let n = self.slots.len();
        let (waves, interval_ms) = (self.args.waves as u64, self.args.wave_interval_ms);
        if waves <= 1 || interval_ms == 0 {
            return n;
        }
        let wave = (1 + now_us / 1000 / interval_ms).min(waves);
        ((n as u64 * wave).div_ceil(waves)) as usize
    }

    /// When the next wave opens (worker clock, µs), if one is still to come.
    fn next_wave_us(&self, now_us: u64) -> Option<u64> {
        let (waves, interval_ms) = (self.args.waves as u64, self.args.wave_interval_ms);
        if waves <= 1 || interval_ms == 0 || self.fresh_allowed(now_us) >= self.slots.len() {
            return None;
        }
        Some((now_us / 1000 / interval_ms + 1) * interval_ms * 1000)
    }

    fn pump_connects(&mut self, now_us: u64) {
        let rate = self.args.ramp_per_s.max(0.001);
        let burst = (rate * 0.02).max(1.0);
        let dt_s = now_us.saturating_sub(self.last_refill_us) as f64 / 1e6;
        self.last_refill_us = now_us;
        self.tokens = (self.tokens + rate * dt_s).min(burst);
        while self.tokens >= 1.0 && self.inflight < self.args.max_inflight {
            let idx = if let Some(i) = self.ready.pop_front() {
                i
            } else if (self.next_fresh as usize) < self.fresh_allowed(now_us) {
                self.next_fresh += 1;
                self.next_fresh - 1
            } else {
                break;
            };
            self.tokens -= 1.0;
            self.start_connect(idx, now_us / 1000);
        }
    }

    fn start_connect(&mut self, idx: u32, now_ms: u64) {
        let global = self.args.first_index + idx as u64;
        let src = srcip::source_for(&self.sources, global);
        self.progress.connect_attempts += 1;
        if self.slots[idx as usize].dev.storm_pending {
            if let Some(st) = self.storm.as_mut() {
                st.stats.connect_attempts += 1;
            }
        }
        match net::connect_from(&self.target, src) {
            Ok(mut sock) => {
                if let Err(e) = self.poll.registry().register(
                    &mut sock,
                    Token(idx as usize),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    self.fail_attempt(idx, &format!("register_{}", net::errno_name(&e)), now_ms);
                    return;
                }
                let slot = &mut self.slots[idx as usize];
                slot.sock = Some(sock);
                slot.dev.on_connect_started(now_ms, self.args.connect_timeout_ms);
                self.inflight += 1;
                self.arm(idx);
            }
            Err(ce) => {
                let reason = format!("{}_{}", ce.step, net::errno_name(&ce.error));
                self.fail_attempt(idx, &reason, now_ms);
            }
        }
    }

    /// An attempt failed before a socket was registered.
    fn fail_attempt(&mut self, idx: u32, reason: &str, now_ms: u64) {
        self.count_failure(idx, reason);
        let r = self.random();
        self.slots[idx as usize].dev.on_closed(now_ms, r);
        self.arm(idx);
    }

    /// Accounts one failed connect attempt of device `idx`.
    fn count_failure(&mut self, idx: u32, reason: &str) {
        self.progress.failed_total += 1;
        self.seconds.cur.failed += 1;
        bump(&mut self.failed, reason);
        if self.slots[idx as usize].dev.storm_pending {
            if let Some(st) = self.storm.as_mut() {
                bump(&mut st.stats.failed, reason);
            }
        }
    }

    /// The storm: every connected device drops its connection at once (RST or FIN, no
    /// DISCONNECT) and is queued to reconnect right away; the connect limits switch to
    /// the storm limits (unlimited by default).
    fn storm(&mut self, now_us: u64) {
        let now_ms = now_us / 1000;
        let mut st = StormState {
            at_us: now_us,
            stats: WorkerStorm {
                at_ms: self.epoch_ms(now_ms),
                ..Default::default()
            },
            reconnect: report::new_histogram(),
        };
        let rst = self.args.storm_close == StormClose::Rst;
        for idx in 0..self.slots.len() {
            let slot = &mut self.slots[idx];
            if slot.dev.phase != Phase::Connected {
                continue;
            }
            if let Some(sock) = slot.sock.take() {
                if rst {
                    use std::os::fd::AsRawFd;
                    let _ = net::set_linger_zero(sock.as_raw_fd());
                }
                drop(sock);
            }
            slot.tx_tail = Vec::new();
            slot.rx_tail = Vec::new();
            slot.tls = None; // no close_notify: the link is gone
            slot.dev.on_storm_drop();
            self.ready.push_back(idx as u32);
            st.stats.dropped += 1;
            self.progress.connected -= 1;
            self.seconds.cur.closes += 1;
        }
        self.seconds.set_connected(self.progress.connected);
        if self.progress.connected == self.slots.len() as u64 {
            st.stats.recovered_at_ms = Some(st.stats.at_ms); // nothing was dropped
        }
        self.args.ramp_per_s = if self.args.storm_ramp_per_s > 0.0 {
            self.args.storm_ramp_per_s
        } else {
            1e12
        };
        self.args.max_inflight = if self.args.storm_max_inflight > 0 {
            self.args.storm_max_inflight
        } else {
            u32::MAX
        };
        self.tokens = self.tokens.max(1.0);
        self.storm = Some(st);
    }

    fn fire_timers(&mut self, now_ms: u64, now_us: u64) {
        while let Some(&Reverse((deadline, idx))) = self.heap.peek() {
            if deadline > now_ms {
                break;
            }
            self.heap.pop();
            if self.slots[idx as usize].dev.deadline_ms() != deadline {
                continue; // stale entry
            }
            let fresh_us = self.now_us().max(now_us);
            match self.slots[idx as usize].dev.on_timer(now_ms, fresh_us) {
                TimerAction::Nothing => {}
                TimerAction::SendPing => {
                    self.progress.pings_sent += 1;
                    self.seconds.cur.pingreqs += 1;
                    self.scratch.clear();
                    mqtt::encode_pingreq(&mut self.scratch);
                    if self.send_scratch(idx) {
                        self.arm(idx);
                    }
                }
                TimerAction::Timeout(kind) => {
                    let reason = match kind {
                        TimeoutKind::Connect => "connect_timeout",
                        TimeoutKind::Connack if self.tls_handshaking(idx) => {
                            self.tls_stats.on_error("handshake_timeout");
                            "tls_handshake_timeout"
                        }
                        TimeoutKind::Connack => "connack_timeout",
                        TimeoutKind::Ping => "ping_timeout",
                    };
                    self.close(idx, reason);
                }
                TimerAction::ReadyToConnect => self.ready.push_back(idx),
            }
        }
    }

    /// Rebuilds the heap when stale entries dominate (restarted timers leave them).
    fn compact_heap(&mut self) {
        if self.heap.len() <= 3 * self.slots.len() + 1024 {
            return;
        }
        let fresh: Vec<_> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.dev.deadline_ms() != NEVER_MS)
            .map(|(i, s)| Reverse((s.dev.deadline_ms(), i as u32)))
            .collect();
        self.heap = BinaryHeap::from(fresh);
    }

    fn shutdown(&mut self) {
        self.stopping = true;
        emit(&WorkerMsg::Progress(self.progress));
        // The completed slots, then the current (partial) one, before disconnecting.
        let now_us = self.now_us();
        self.tick_seconds(now_us);
        emit(&WorkerMsg::Second(self.seconds.cur));
        // Measured while every device still holds its socket (and TLS state).
        let rss_bytes = crate::procstat::rss_bytes(std::process::id());
        let mut disconnect = Vec::new();
        mqtt::encode_disconnect(&mut disconnect);
        for slot in &mut self.slots {
            if let Some(mut sock) = slot.sock.take() {
                let connected = slot.dev.phase == Phase::Connected;
                if let Some(mut t) = slot.tls.take() {
                    // Best effort, one write: DISCONNECT and close_notify.
                    if connected && t.conn.writer().write_all(&disconnect).is_ok() {
                        t.conn.send_close_notify();
                        let _ = t.conn.write_tls(&mut sock);
                    }
                } else if connected && slot.tx_tail.is_empty() {
                    let _ = sock.write(&disconnect);
                }
            }
            slot.dev.stop();
        }
        let tls = self.tls.as_ref().map(|client| {
            let mut t = std::mem::take(&mut self.tls_stats);
            t.handshake_us = report::export(&self.tls_handshake);
            t.pool_tickets = client.pool.as_ref().map_or(0, |p| p.tickets() as u64);
            t
        });
        let stats = WorkerStats {
            devices: self.slots.len() as u64,
            progress: self.progress,
            peak_connected: self.peak_connected,
            peak_at_ms: self.peak_at_ms,
            failed: std::mem::take(&mut self.failed),
            closed: std::mem::take(&mut self.closed),
            pubacks_sent: self.pubacks_sent,
            control_messages: self.control_messages,
            overload: std::mem::take(&mut self.overload),
            pushes_delivered: self.pushes_delivered,
            ping_rtt_us: report::export(&self.ping_rtt),
            push_latency_us: report::export(&self.push_latency),
            storm: self.storm.take().map(|mut st| {
                st.stats.reconnect_us = report::export(&st.reconnect);
                st.stats
            }),
            tls,
            rss_bytes,
        };
        emit(&WorkerMsg::Final(Box::new(stats)));
    }
}
