//! An HTTP response and its wire form: status line, Content-Type, Content-Length, Connection and
//! any extra headers, plus the JSON error body shape `{"error": <code>, "message": <text>}`.
//!
//! Owns: response building and serialization.
//! Must never: touch sockets, call the gateway, or emit a response without Content-Length and
//! Content-Type.

use serde::Serialize;

pub(super) const JSON: &str = "application/json";
pub(super) const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Extra headers; values are server-made (never request data), so contain no CR/LF.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// The connection must be closed after this response.
    pub close: bool,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl Response {
    /// A JSON response; falls back to a 500 error body if `value` cannot be serialized.
    pub fn json<T: Serialize>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response::raw(status, JSON, body),
            Err(_) => Response::error(500, "internal_error", "response serialization failed"),
        }
    }

    /// A JSON error: `{"error": code, "message": message}`.
    pub fn error(status: u16, code: &str, message: impl AsRef<str>) -> Response {
        let body = ErrorBody {
            error: code,
            message: message.as_ref(),
        };
        // Two string fields always serialize; the fallback only keeps this total.
        let body = serde_json::to_vec(&body).unwrap_or_else(|_| br#"{"error":"internal_error","message":""}"#.to_vec());
        Response::raw(status, JSON, body)
    }

    pub fn raw(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body,
            close: false,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// Marks the response as the last one on its connection.
    pub fn closing(mut self) -> Response {
        self.close = true;
        self
    }

    /// Wire bytes; `keep_alive` decides the Connection header (always sent, so HTTP/1.0
    /// keep-alive clients see it).
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len(),
            if keep_alive { "keep-alive" } else { "close" },
        );
        for (name, value) in &self.headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// Interim response sent before reading a body announced with `Expect: 100-continue`.
pub(super) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        401 => "Unauthorized",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::Response;

    #[test]
    fn error_wire_form() {
        let r = Response::error(503, "overloaded", "say \"later\"").with_header("Retry-After", "3");
        let text = String::from_utf8(r.to_bytes(false)).expect("ascii response");
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.contains("Retry-After: 3\r\n"));
        let body = r#"{"error":"overloaded","message":"say \"later\""}"#;
        assert!(text.ends_with(&format!(
            "Content-Length: {}\r\nConnection: close\r\nRetry-After: 3\r\n\r\n{body}",
            body.len()
        )));
    }
}
