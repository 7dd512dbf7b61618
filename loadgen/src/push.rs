//! The SP side of the `push` scenario: POST /v1/messages to the gateway's HTTP API
//! at a fixed total rate over a few keep-alive connections.
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
use std::sync::atomic::{AtomicBool, Ordering};
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
    let mut chunk = [0u8; 4096];
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
        let mut r = self.base;
        let mut lat = report::new_histogram();
        for t in self.threads {
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
        r
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
