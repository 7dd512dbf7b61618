//! The gateway's own view during a run: a thread that GETs `/metrics` once per second and
//! keeps the heartbeat-load series (seeds/004) for the `overload` report.
//!
//! Owns: one HTTP/1.1 GET per second (`Connection: close`, bounded size and time) and the
//! parsing of a few Prometheus text lines. Must never: block the parent's loop (it runs on
//! its own thread), keep more than `SAMPLES_MAX` samples, or fail the run when the
//! gateway does not answer (a missed sample is a null).

use serde::Serialize;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The series sampled, in report order.
pub const SERIES: [&str; 5] = [
    "pulsegate_heartbeat_load_per_s",
    "pulsegate_heartbeat_adjustments_total",
    "pulsegate_overload_disconnects_total",
    "pulsegate_admissions_refused_total",
    "pulsegate_admission_closed",
];
/// One sample per second for a day at most.
const SAMPLES_MAX: usize = 86_400;
const RESPONSE_BYTES_MAX: usize = 4 << 20;
const TIMEOUT: Duration = Duration::from_millis(900);

/// Per-second samples of the gateway's metrics (null = that sample failed).
#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub struct ServerSeries {
    pub http: String,
    /// Seconds since the start of the run, one entry per sample.
    pub t_s: Vec<f64>,
    pub pulsegate_heartbeat_load_per_s: Vec<Option<f64>>,
    pub pulsegate_heartbeat_adjustments_total: Vec<Option<f64>>,
    pub pulsegate_overload_disconnects_total: Vec<Option<f64>>,
    pub pulsegate_admissions_refused_total: Vec<Option<f64>>,
    pub pulsegate_admission_closed: Vec<Option<f64>>,
    /// Samples that failed (connect, timeout, bad response).
    pub errors: u64,
}

impl ServerSeries {
    fn push(&mut self, t_s: f64, values: Option<[Option<f64>; 5]>) {
        if self.t_s.len() >= SAMPLES_MAX {
            return;
        }
        let v = values.unwrap_or([None; 5]);
        self.t_s.push(t_s);
        self.pulsegate_heartbeat_load_per_s.push(v[0]);
        self.pulsegate_heartbeat_adjustments_total.push(v[1]);
        self.pulsegate_overload_disconnects_total.push(v[2]);
        self.pulsegate_admissions_refused_total.push(v[3]);
        self.pulsegate_admission_closed.push(v[4]);
    }

    /// Samples taken at `[from_s, to_s)` since the start: their indices.
    pub fn indices_in(&self, from_s: f64, to_s: f64) -> impl Iterator<Item = usize> + '_ {
        (0..self.t_s.len()).filter(move |&i| self.t_s[i] >= from_s && self.t_s[i] < to_s)
    }
}

/// The value of an unlabelled series `name` in Prometheus text, or the sum over its labels.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let value = match rest.as_bytes().first() {
            Some(b' ') => rest.trim(),
            Some(b'{') => match rest.rsplit_once('}') {
                Some((_, v)) => v.trim(),
                None => continue,
            },
            _ => continue, // a longer name with this prefix
        };
        if let Ok(v) = value.parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

fn get_metrics(addr: &SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(addr, TIMEOUT).ok()?;
    s.set_read_timeout(Some(TIMEOUT)).ok()?;
    s.set_write_timeout(Some(TIMEOUT)).ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).ok()?;
    let mut body = Vec::new();
    s.take(RESPONSE_BYTES_MAX as u64).read_to_end(&mut body).ok()?;
    let text = String::from_utf8(body).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// PUT /v1/admin/heartbeat-limit: sets the gateway's heartbeat-load threshold.
/// Returns the HTTP status line's code, or the error.
pub fn set_heartbeat_limit(addr: &SocketAddr, per_s: f64, api_key: Option<&str>) -> Result<u16, String> {
    let mut s = TcpStream::connect_timeout(addr, TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    let body = format!("{{\"max_heartbeats_per_s\": {per_s}}}");
    let auth = api_key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let request = format!(
        "PUT /v1/admin/heartbeat-limit HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    s.take(RESPONSE_BYTES_MAX as u64)
        .read_to_end(&mut reply)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&reply);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {:?}", text.chars().take(80).collect::<String>()))
}

/// The sampling thread.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    series: Arc<Mutex<ServerSeries>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Samples `addr` at whole seconds after `start` (+0.5 s, mid-slot), until stopped.
    pub fn start(addr: SocketAddr, start: Instant) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let series = Arc::new(Mutex::new(ServerSeries {
            http: addr.to_string(),
            ..Default::default()
        }));
        let (st, se) = (stop.clone(), series.clone());
        let thread = std::thread::spawn(move || {
            let mut next_s = 0.5;
            while !st.load(Ordering::Relaxed) {
                let t = start.elapsed().as_secs_f64();
                if t < next_s {
                    std::thread::sleep(Duration::from_secs_f64((next_s - t).min(0.1)));
                    continue;
                }
                next_s = t.floor() + 1.5;
                let values = get_metrics(&addr).map(|text| SERIES.map(|name| metric(&text, name)));
                if let Ok(mut s) = se.lock() {
                    if values.is_none() {
                        s.errors += 1;
                    }
                    s.push(t, values);
                }
            }
        });
        Sampler {
            stop,
            series,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> ServerSeries {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let series = self.series.lock().map(|s| s.clone()).unwrap_or_default();
        series
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP pulsegate_heartbeat_load_per_s x\n# TYPE pulsegate_heartbeat_load_per_s gauge\n\
        pulsegate_heartbeat_load_per_s 512.250\n\
        pulsegate_heartbeat_adjustments_total 40\n\
        pulsegate_connections{shard=\"0\"} 10\n\
        pulsegate_connections{shard=\"1\"} 12\n\
        pulsegate_admission_closed 1\n";

    #[test]
    fn parses_series() {
        assert_eq!(metric(TEXT, "pulsegate_heartbeat_load_per_s"), Some(512.25));
        assert_eq!(metric(TEXT, "pulsegate_heartbeat_adjustments_total"), Some(40.0));
        assert_eq!(metric(TEXT, "pulsegate_connections"), Some(22.0), "sum over labels");
        assert_eq!(metric(TEXT, "pulsegate_admission"), None, "no prefix matches");
        assert_eq!(metric(TEXT, "pulsegate_overload_disconnects_total"), None);
    }

    #[test]
    fn samples_against_a_tiny_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(2) {
                let Ok(mut s) = stream else { continue };
                let mut req = Vec::new();
                let mut chunk = [0u8; 1024];
                while !req.ends_with(b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&chunk[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{TEXT}",
                    TEXT.len()
                );
                let _ = s.write_all(resp.as_bytes());
            }
        });
        let sampler = Sampler::start(addr, Instant::now());
        std::thread::sleep(Duration::from_millis(1_700));
        let s = sampler.stop();
        assert_eq!(s.t_s.len(), 2, "{s:?}");
        assert_eq!(s.pulsegate_heartbeat_load_per_s, [Some(512.25), Some(512.25)]);
        assert_eq!(s.pulsegate_admission_closed[0], Some(1.0));
        assert_eq!(s.pulsegate_overload_disconnects_total[0], None);
        assert_eq!(s.indices_in(0.0, 1.0).count(), 1);
    }
}
