//! Maps one parsed request (head + complete body) to a response: the route table, the
//! `POST /v1/messages` body schema and validation, and the `PushError` -> HTTP status mapping.
//!
//! Owns: what each path and method means.
//! Must never: touch sockets, threads or timeouts, or decide connection reuse beyond marking a
//! response `closing()` when the body framing cannot be trusted.

use serde::{Deserialize, Serialize};

use super::request::RequestHead;
use super::response::{PROMETHEUS_TEXT, Response};
use super::{Gateway, PushError, PushRequest};

/// Body of `POST /v1/messages`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    device: String,
    payload: String,
    #[serde(default = "default_qos")]
    qos: u8,
}

fn default_qos() -> u8 {
    1
}

#[derive(Serialize)]
struct Accepted<'a> {
    id: &'a str,
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

/// The route table.
pub(super) fn handle(head: &RequestHead, body: &[u8], gateway: &dyn Gateway) -> Response {
    match (head.path.as_str(), head.method.as_str()) {
        ("/v1/messages", "POST") => post_message(head, body, gateway),
        ("/v1/messages", _) => method_not_allowed("POST"),
        ("/metrics", "GET") => Response::raw(200, PROMETHEUS_TEXT, gateway.metrics_text().into_bytes()),
        ("/healthz", "GET") => Response::json(200, &Health { status: "ok" }),
        ("/metrics" | "/healthz", _) => method_not_allowed("GET"),
        (path, _) => {
            let shown: String = path.chars().take(200).collect();
            Response::error(404, "not_found", format!("no route for {shown}"))
        }
    }
}

fn method_not_allowed(allow: &'static str) -> Response {
    Response::error(
        405,
        "method_not_allowed",
        format!("only {allow} is allowed on this path"),
    )
    .with_header("Allow", allow)
}

fn post_message(head: &RequestHead, body: &[u8], gateway: &dyn Gateway) -> Response {
    if head.content_length.is_none() {
        // A body sent without framing would be read as the next request: close.
        return Response::error(411, "length_required", "POST requires a Content-Length header").closing();
    }
    // serde's derive would also accept a JSON array for the struct; only objects are valid.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return bad_request("body must be a JSON object".into());
    }
    let msg: MessageBody = match serde_json::from_slice(body) {
        Ok(m) => m,
        Err(e) => return bad_request(format!("invalid JSON body: {e}")),
    };
    if msg.device.is_empty() {
        return bad_request("device must not be empty".into());
    }
    if msg.qos > 1 {
        return bad_request(format!("qos must be 0 or 1, got {}", msg.qos));
    }
    let device = msg.device.clone();
    let req = PushRequest {
        device: msg.device,
        payload: msg.payload.into_bytes(),
        qos: msg.qos,
    };
    match gateway.push(req) {
        Ok(id) => Response::json(202, &Accepted { id: &id }),
        Err(e) => push_error(e, &device),
    }
}

fn bad_request(message: String) -> Response {
    Response::error(400, "bad_request", message)
}

/// `PushError` -> status, code and headers.
fn push_error(err: PushError, device: &str) -> Response {
    match err {
        PushError::DeviceOffline => Response::error(404, "device_offline", format!("device {device} is not connected")),
        PushError::Overloaded { retry_after_s } => Response::error(
            503,
            "overloaded",
            format!("gateway is overloaded, retry after {retry_after_s} s"),
        )
        .with_header("Retry-After", retry_after_s.to_string()),
        PushError::PayloadTooLarge { max_bytes } => Response::error(
            413,
            "payload_too_large",
            format!("payload exceeds the limit of {max_bytes} bytes"),
        ),
        PushError::ShuttingDown => Response::error(503, "shutting_down", "gateway is shutting down").closing(),
    }
}
