//! The tests' one HTTP client: `HttpConn`, a single HTTP/1.1 keep-alive connection to
//! the gateway's API (Content-Length framed requests and responses; plain, or HTTPS with
//! `open_tls`), with the push helpers every test uses, and the Prometheus text readers for
//! `/metrics`. It owns no
//! process; every read and write has a timeout, and a response that does not complete
//! within `HTTP_TIMEOUT` fails the test.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// Longest wait for a connect, a write or a whole response.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Most response headers one answer may carry.
const RESPONSE_HEADERS_MAX: usize = 32;

/// What an `HttpConn` reads and writes: a socket, or rustls over one.
trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

/// One HTTP/1.1 keep-alive connection to the API.
pub struct HttpConn {
    stream: Box<dyn Duplex>,
    buf: Vec<u8>,
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to the HTTP API at {addr}: {e}"));
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).ok();
    stream.set_write_timeout(Some(HTTP_TIMEOUT)).ok();
    stream
}

impl HttpConn {
    pub fn open(addr: SocketAddr) -> HttpConn {
        HttpConn {
            stream: Box::new(connect(addr)),
            buf: Vec::new(),
        }
    }

    /// HTTPS with `config` (e.g. `TestCa::client_config`); the handshake happens with the
    /// first request, and a failed one fails the test.
    pub fn open_tls(addr: SocketAddr, config: Arc<ClientConfig>) -> HttpConn {
        let conn = ClientConnection::new(config, ServerName::from(addr.ip())).expect("TLS client");
        HttpConn {
            stream: Box::new(StreamOwned::new(conn, connect(addr))),
            buf: Vec::new(),
        }
    }

    /// POST /v1/messages for a connected-device push: `queue_if_offline: false` keeps the
    /// contract "a device that is not connected is refused with 404" (the default profile
    /// stores and forwards instead).
    pub fn push(&mut self, device: &str, payload: &str, qos: u8) -> (u16, String) {
        self.post_message(&serde_json::json!({
            "device": device,
            "payload": payload,
            "qos": qos,
            "profile": { "queue_if_offline": false },
        }))
    }

    /// POST /v1/messages with `body` as it is (the default profile unless it names one).
    pub fn post_message(&mut self, body: &serde_json::Value) -> (u16, String) {
        self.request("POST", "/v1/messages", Some(&body.to_string()))
    }

    /// Sends one request, reads one response (Content-Length framed). Returns (status, body).
    pub fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.request_as(method, path, body, None)
    }

    /// `request` with `Authorization: Bearer <key>` when a key is given.
    pub fn request_as(&mut self, method: &str, path: &str, body: Option<&str>, key: Option<&str>) -> (u16, String) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        if let Some(k) = key {
            req.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        if let Some(b) = body {
            req.push_str(b);
        }
        self.stream
            .write_all(req.as_bytes())
            .and_then(|()| self.stream.flush())
            .unwrap_or_else(|e| panic!("write HTTP request {method} {path}: {e}"));
        self.read_response()
    }

    fn read_response(&mut self) -> (u16, String) {
        let deadline = Instant::now() + HTTP_TIMEOUT;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; RESPONSE_HEADERS_MAX];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head_len)) = resp.parse(&self.buf) {
                let status = resp.code.expect("a complete response head has a status code");
                let len: usize = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| {
                        std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or_else(|| panic!("bad Content-Length {:?}", h.value))
                    })
                    .expect("response has Content-Length");
                if self.buf.len() >= head_len + len {
                    let body = String::from_utf8_lossy(&self.buf[head_len..head_len + len]).into_owned();
                    self.buf.drain(..head_len + len);
                    return (status, body);
                }
            }
            assert!(
                Instant::now() < deadline,
                "HTTP response incomplete after {HTTP_TIMEOUT:?}"
            );
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!(
                    "HTTP connection closed mid-response ({} bytes buffered)",
                    self.buf.len()
                ),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("HTTP read failed: {e}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------------------------

/// One sample, e.g. `pulsegate_connects_total{version="5"}` (0 if absent).
pub fn metric_value(text: &str, series: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// Sum of every series of `name` (all label sets).
pub fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let base = series.split('{').next()?;
            (base == name).then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .map(|v| v as u64)
        .sum()
}
