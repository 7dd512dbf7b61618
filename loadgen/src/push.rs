//! The SP side of the `push` and `rushhour` scenarios: POST /v1/messages to the
//! gateway's HTTP API, either at a fixed total rate over a few keep-alive connections
//! (`Pusher`) or once to every device as fast as the connections allow, pipelined
//! (`Burst`).
//!
//! Owns: the HTTP/1.1 client (request encoding, httparse response parsing with
//! Content-Length bodies), pacing, and counting accepted/failed requests. Each
//! payload carries "lgts=<unix µs>" so the devices compute end-to-end latency.
//! Must never: talk MQTT, block the parent's loop (it runs on its own threads),
//! or follow redirects / talk to any address but the one given.

use crate::cli::PushArgs;
use crate::net;
use crate::report::{self, PushReport};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MAX_RESPONSE_BYTES: usize = 1 << 20;

#[derive(Default)]
struct ThreadStats {
    sent: u64,
    accepted: u64,
    errors: BTreeMap<String, u64>,
    latency: Option<Histogram<u64>>,
}

pub struct Pusher {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<ThreadStats>>,
    base: PushReport,
}

/// Builds the request bytes for one push.
pub fn build_request(host: &str, device: &str, qos: u8, sent_unix_us: u64, pad_bytes: usize) -> Vec<u8> {
    let payload = format!("lgts={sent_unix_us}{}", "x".repeat(pad_bytes));
    let body = serde_json::json!({ "device": device, "payload": payload, "qos": qos }).to_string();
    format!(
        "POST /v1/messages HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Parses one response at the front of `buf`: Ok(Some((status, total_len))) when
/// complete, Ok(None) when more bytes are needed.
pub fn parse_response(buf: &[u8]) -> Result<Option<(u16, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp
        .parse(buf)
        .map_err(|e| format!("http_parse_{e:?}").to_lowercase())?
    {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = resp.code.unwrap_or(0);
    let mut body_len = 0usize;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            body_len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or("http_bad_length")?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("http_chunked_unsupported".into());
        }
    }
    if body_len > MAX_RESPONSE_BYTES {
        return Err("http_body_too_large".into());
    }
    let total = head_len + body_len;
    Ok(if buf.len() >= total {
        Some((status, total))
    } else {
        None
    })
}

fn bump(map: &mut BTreeMap<String, u64>, key: String) {
    *map.entry(key).or_default() += 1;
}

/// Sends one request and reads its response on an established connection.
fn exchange(stream: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> Result<u16, String> {
    stream
        .write_all(req)
        .map_err(|e| format!("io_{}", net::errno_name(&e)))?;
    buf.clear();
    read_response(stream, buf)
}

/// Reads the next response; `buf` holds bytes already received (pipelined responses)
/// and keeps what follows this response.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16, String> {
    let mut chunk = [0u8; 16384];
    loop {
        if let Some((status, used)) = parse_response(buf)? {
            buf.drain(..used);
            return Ok(status);
        }
        if buf.len() > MAX_RESPONSE_BYTES {
            return Err("http_response_too_large".into());
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("http_closed".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("io_{}", net::errno_name(&e))),
        }
    }
}

/// What one pacing thread needs.
struct ThreadCfg {
    addr: SocketAddr,
    rate_per_s: f64,
    devices: u64,
    prefix: String,
    qos: u8,
    pad_bytes: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
}

fn thread_main(cfg: ThreadCfg) -> ThreadStats {
    let ThreadCfg {
        addr,
        rate_per_s,
        devices,
        prefix,
        qos,
        pad_bytes: pad,
        seed,
        stop,
    } = cfg;
    let mut st = ThreadStats {
        latency: Some(report::new_histogram()),
        ..Default::default()
    };
    let host = addr.to_string();
    let mut rng = seed | 1;
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::new();
    let start = Instant::now();
    let interval_s = 1.0 / rate_per_s.max(0.001);
    let mut k: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = Duration::from_secs_f64(k as f64 * interval_s);
        let now = start.elapsed();
        if due > now {
            std::thread::sleep((due - now).min(Duration::from_millis(50)));
            continue;
        }
        k += 1;
        if conn.is_none() {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    conn = Some(s);
                }
                Err(e) => {
                    bump(&mut st.errors, format!("connect_{}", net::errno_name(&e)));
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let device = format!("{prefix}{}", rng % devices.max(1));
        let t = Instant::now();
        let req = build_request(&host, &device, qos, net::unix_us(), pad);
        st.sent += 1;
        let stream = conn.as_mut().expect("connected above");
        match exchange(stream, &req, &mut buf) {
            Ok(status) => {
                if let Some(h) = st.latency.as_mut() {
                    report::record_us(h, t.elapsed().as_micros() as u64);
                }
                if (200..300).contains(&status) {
                    st.accepted += 1;
                } else {
                    bump(&mut st.errors, format!("status_{status}"));
                }
            }
            Err(e) => {
                bump(&mut st.errors, e);
                conn = None;
            }
        }
    }
    st
}

/// What one burst thread needs.
struct BurstThreadCfg {
    addr: SocketAddr,
    devices: u64,
    prefix: String,
    qos: u8,
    pad_bytes: usize,
    pipeline: u64,
    next: Arc<AtomicU64>,
    finished: Arc<AtomicU64>,
    /// µs from `started` until the last thread finished.
    finished_us: Arc<AtomicU64>,
    started: Instant,
    stop: Arc<AtomicBool>,
}

fn connect_http(addr: &SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(addr, Duration::from_secs(2))?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// Takes `pipeline` device indices at a time from the shared counter, writes their
/// requests in one go and reads the responses in order. A device whose request failed
/// is not retried (it counts as an error).
fn burst_thread(cfg: BurstThreadCfg) -> ThreadStats {
    let mut st = ThreadStats {
        latency: Some(report::new_histogram()),
        ..Default::default()
    };
    let host = cfg.addr.to_string();
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::new();
    let mut reqs = Vec::new();
    let mut connect_failures = 0;
    while !cfg.stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            match connect_http(&cfg.addr) {
                Ok(s) => conn = Some(s),
                Err(e) => {
                    bump(&mut st.errors, format!("connect_{}", net::errno_name(&e)));
                    connect_failures += 1;
                    if connect_failures >= 20 {
                        break; // the other connections take over the remaining devices
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            buf.clear();
        }
        let first = cfg.next.fetch_add(cfg.pipeline, Ordering::Relaxed);
        if first >= cfg.devices {
            break;
        }
        let last = (first + cfg.pipeline).min(cfg.devices);
        reqs.clear();
        let now_us = net::unix_us();
        for i in first..last {
            let device = format!("{}{i}", cfg.prefix);
            reqs.extend_from_slice(&build_request(&host, &device, cfg.qos, now_us, cfg.pad_bytes));
        }
        let t = Instant::now();
        st.sent += last - first;
        let stream = conn.as_mut().expect("connected above");
        if let Err(e) = stream.write_all(&reqs) {
            st.errors
                .entry(format!("io_{}", net::errno_name(&e)))
                .and_modify(|n| *n += last - first)
                .or_insert(last - first);
            conn = None;
            continue;
        }
        for k in first..last {
            match read_response(stream, &mut buf) {
                Ok(status) => {
                    if let Some(h) = st.latency.as_mut() {
                        report::record_us(h, t.elapsed().as_micros() as u64);
                    }
                    if (200..300).contains(&status) {
                        st.accepted += 1;
                    } else {
                        bump(&mut st.errors, format!("status_{status}"));
                    }
                }
                Err(e) => {
                    // This and the rest of the batch got no answer.
                    st.errors.entry(e).and_modify(|n| *n += last - k).or_insert(last - k);
                    conn = None;
                    break;
                }
            }
        }
    }
    cfg.finished_us
        .fetch_max(cfg.started.elapsed().as_micros() as u64, Ordering::SeqCst);
    cfg.finished.fetch_add(1, Ordering::SeqCst);
    st
}

/// One push to every device `0..devices`, as fast as the HTTP connections allow.
pub struct Burst {
    stop: Arc<AtomicBool>,
    next: Arc<AtomicU64>,
    finished: Arc<AtomicU64>,
    finished_us: Arc<AtomicU64>,
    devices: u64,
    threads: Vec<JoinHandle<ThreadStats>>,
    base: PushReport,
    started: Instant,
}

impl Burst {
    pub fn start(
        addr: SocketAddr,
        devices: u64,
        prefix: &str,
        qos: u8,
        pad_bytes: usize,
        connections: u32,
        pipeline: u32,
    ) -> Burst {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let finished = Arc::new(AtomicU64::new(0));
        let finished_us = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let threads = (0..connections.max(1))
            .map(|_| {
                let cfg = BurstThreadCfg {
                    addr,
                    devices,
                    prefix: prefix.to_string(),
                    qos,
                    pad_bytes,
                    pipeline: pipeline.max(1) as u64,
                    next: next.clone(),
                    finished: finished.clone(),
                    finished_us: finished_us.clone(),
                    started,
                    stop: stop.clone(),
                };
                std::thread::spawn(move || burst_thread(cfg))
            })
            .collect();
        let base = PushReport {
            push_http: addr.to_string(),
            push_qos: qos,
            ..Default::default()
        };
        Burst {
            stop,
            next,
            finished,
            finished_us,
            devices,
            threads,
            base,
            started,
        }
    }

    /// Devices whose request has been taken by a connection so far.
    pub fn claimed(&self) -> u64 {
        self.next.load(Ordering::Relaxed).min(self.devices)
    }

    /// Every connection thread has finished (all requests answered or failed).
    pub fn is_done(&self) -> bool {
        self.finished.load(Ordering::SeqCst) as usize == self.threads.len()
    }

    /// Once done: seconds from the start until the last request was answered.
    pub fn finished_after_s(&self) -> Option<f64> {
        self.is_done()
            .then(|| self.finished_us.load(Ordering::SeqCst) as f64 / 1e6)
    }

    /// Stops (if still running), joins, and returns the SP-side counts;
    /// `push_rate_per_s` is the achieved rate (requests over the burst's duration).
    pub fn stop(self) -> PushReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut r = join_threads(self.base, self.threads);
        let elapsed = match self.finished_us.load(Ordering::SeqCst) {
            0 => self.started.elapsed().as_secs_f64(),
            us => us as f64 / 1e6,
        };
        r.push_rate_per_s = if elapsed > 0.0 {
            r.pushes_sent as f64 / elapsed
        } else {
            0.0
        };
        r
    }
}

fn join_threads(mut r: PushReport, threads: Vec<JoinHandle<ThreadStats>>) -> PushReport {
    let mut lat = report::new_histogram();
    for t in threads {
        if let Ok(st) = t.join() {
            r.pushes_sent += st.sent;
            r.pushes_accepted += st.accepted;
            report::add_counts(&mut r.http_errors, &st.errors);
            if let Some(h) = st.latency {
                let _ = lat.add(&h);
            }
        }
    }
    r.http_latency_ms = report::quantiles_ms(&lat);
    r.http_latency_curve = report::curve_ms("HTTP request", &lat);
    r
}

impl Pusher {
    /// Starts `http_connections` pacing threads pushing to random devices 0..devices.
    pub fn start(p: &PushArgs, addr: SocketAddr, devices: u64, prefix: &str) -> Pusher {
        let stop = Arc::new(AtomicBool::new(false));
        let n = p.http_connections.max(1);
        let seed = net::unix_us();
        let threads = (0..n)
            .map(|i| {
                let cfg = ThreadCfg {
                    addr,
                    rate_per_s: p.rate_per_s / n as f64,
                    devices,
                    prefix: prefix.to_string(),
                    qos: p.qos,
                    pad_bytes: p.payload_bytes,
                    seed: seed.wrapping_mul(i as u64 + 1).wrapping_add(0x9E37_79B9_7F4A_7C15),
                    stop: stop.clone(),
                };
                std::thread::spawn(move || thread_main(cfg))
            })
            .collect();
        let base = PushReport {
            push_http: addr.to_string(),
            push_rate_per_s: p.rate_per_s,
            push_qos: p.qos,
            ..Default::default()
        };
        Pusher { stop, threads, base }
    }

    /// Stops the threads and returns the SP-side counts (delivery is merged by the parent).
    pub fn stop(self) -> PushReport {
        self.stop.store(true, Ordering::Relaxed);
        join_threads(self.base, self.threads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_shape() {
        let req = String::from_utf8(build_request("127.0.0.1:8080", "lg-7", 1, 123, 2)).unwrap();
        assert!(req.starts_with("POST /v1/messages HTTP/1.1\r\n"));
        let body = req.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["device"], "lg-7");
        assert_eq!(v["payload"], "lgts=123xx");
        assert_eq!(v["qos"], 1);
        assert!(req.contains(&format!("Content-Length: {}\r\n", body.len())));
    }

    #[test]
    fn response_parsing() {
        let r = b"HTTP/1.1 202 Accepted\r\nContent-Length: 4\r\n\r\n{}{}";
        assert_eq!(parse_response(r).unwrap(), Some((202, r.len())));
        assert_eq!(parse_response(&r[..r.len() - 1]).unwrap(), None);
        assert_eq!(parse_response(b"HTTP/1.1 500 X\r\n").unwrap(), None);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn burst_pushes_every_device_once_pipelined() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // A tiny HTTP server (one connection after the other): answers every request,
        // 202 for even devices and 404 for odd ones.
        let srv = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = l.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut data = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    data.extend_from_slice(&chunk[..n]);
                    // Each body is one JSON object with a single '}' at its end.
                    while let Some(end) = data.iter().position(|&b| b == b'}') {
                        let req = String::from_utf8(data.drain(..end + 1).collect()).unwrap();
                        let dev: u64 = req
                            .split("\"device\":\"d")
                            .nth(1)
                            .unwrap()
                            .split('"')
                            .next()
                            .unwrap()
                            .parse()
                            .unwrap();
                        seen.push(dev);
                        let status = if dev.is_multiple_of(2) {
                            "202 Accepted"
                        } else {
                            "404 Not Found"
                        };
                        s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\n{{}}").as_bytes())
                            .unwrap();
                    }
                }
            }
            seen
        });
        let b = Burst::start(addr, 25, "d", 1, 0, 2, 4);
        let t0 = Instant::now();
        while !b.is_done() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(b.is_done());
        assert_eq!(b.claimed(), 25);
        let took = b.finished_after_s().unwrap();
        assert!(took > 0.0 && took <= t0.elapsed().as_secs_f64() + 0.01, "{took}");
        let r = b.stop();
        assert_eq!((r.pushes_sent, r.pushes_accepted), (25, 13));
        assert_eq!(r.http_errors.get("status_404"), Some(&12));
        assert_eq!(r.http_latency_ms.count, 25);
        assert!(r.push_rate_per_s > 0.0);
        let mut seen = srv.join().unwrap();
        seen.sort_unstable();
        assert_eq!(seen, (0..25).collect::<Vec<_>>());
    }

    #[test]
    fn exchange_against_tiny_server() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let srv = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 4096];
            let _ = s.read(&mut b).unwrap();
            s.write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}")
                .unwrap();
        });
        let mut c = TcpStream::connect(addr).unwrap();
        let mut buf = Vec::new();
        assert_eq!(exchange(&mut c, &build_request("h", "d", 0, 1, 0), &mut buf), Ok(202));
        srv.join().unwrap();
    }
}
