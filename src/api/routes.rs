//! Maps one parsed request (head + complete body) to a response: the route
//! table, authentication, and the `ApiError` -> HTTP status mapping. The
//! meaning of bodies (messages, profiles) belongs to the gateway.
//!
//! Owns: what each path and method means.
//! Must never: touch sockets, threads or timeouts, or decide connection reuse beyond marking a
//! response `closing()` when the body framing cannot be trusted.

use serde::Serialize;

use super::request::RequestHead;
use super::response::{PROMETHEUS_TEXT, Response};
use super::{ApiError, Gateway, SubmitReply};

#[derive(Serialize)]
struct Health {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    store_error: Option<String>,
}

/// The route table: the answer to `head`, or None when a `POST /v1/messages`
/// went to the gateway with the `SubmitReply` from `later` (which answers,
/// now or once the commit is durable).
pub(super) fn handle(
    head: &RequestHead,
    body: &[u8],
    gateway: &dyn Gateway,
    later: impl FnOnce() -> SubmitReply,
) -> Option<Response> {
    let path = head.path.as_str();
    let method = head.method.as_str();
    match (path, method) {
        ("/metrics", "GET") => {
            return Some(match gateway.authorize_metrics(head.authorization.as_deref()) {
                Ok(()) => Response::raw(200, PROMETHEUS_TEXT, gateway.metrics_text().into_bytes()),
                Err(e) => api_error(e),
            });
        }
        ("/healthz", "GET") => {
            // 503 while degraded, so a load balancer sends pushes elsewhere.
            return Some(match gateway.store_error() {
                None => Response::json(
                    200,
                    &Health {
                        status: "ok",
                        store_error: None,
                    },
                ),
                Some(e) => Response::json(
                    503,
                    &Health {
                        status: "degraded",
                        store_error: Some(e),
                    },
                ),
            });
        }
        ("/metrics" | "/healthz", _) => return Some(method_not_allowed("GET")),
        _ => {}
    }
    let route = if path == "/v1/messages" {
        Route::Messages
    } else if path == "/v1/mechanisms" {
        Route::Mechanisms
    } else if path == "/v1/admin/heartbeat-limit" {
        Route::HeartbeatLimit
    } else if let Some(id) = path
        .strip_prefix("/v1/messages/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
    {
        Route::Message(id)
    } else {
        let shown: String = path.chars().take(200).collect();
        return Some(Response::error(404, "not_found", format!("no route for {shown}")));
    };
    let allowed = match route {
        Route::Messages => "POST",
        Route::Mechanisms => "GET",
        Route::HeartbeatLimit => "GET, PUT",
        Route::Message(_) => "GET, PATCH, DELETE",
    };
    if !allowed.split(", ").any(|m| m == method) {
        return Some(method_not_allowed(allowed));
    }
    let caller = match gateway.authenticate(head.authorization.as_deref()) {
        Ok(c) => c,
        Err(e) => return Some(api_error(e)),
    };
    let result = match (route, method) {
        (Route::Messages, _) => {
            if head.content_length.is_none() {
                // A body sent without framing would be read as the next request: close.
                return Some(
                    Response::error(411, "length_required", "POST requires a Content-Length header").closing(),
                );
            }
            gateway.submit_then(&caller, body, later());
            return None;
        }
        (Route::Mechanisms, _) => gateway.mechanisms(&caller),
        (Route::HeartbeatLimit, "GET") => gateway.heartbeat_limit(&caller, None),
        (Route::HeartbeatLimit, _) => gateway.heartbeat_limit(&caller, Some(body)),
        (Route::Message(id), "GET") => gateway.status(&caller, id),
        (Route::Message(id), "PATCH") => gateway.update(&caller, id, body),
        (Route::Message(id), _) => gateway.cancel(&caller, id),
    };
    Some(match result {
        Ok(v) => Response::json(200, &v),
        Err(e) => api_error(e),
    })
}

/// `POST /v1/messages`'s answer.
pub(super) fn submit_response(result: Result<serde_json::Value, ApiError>) -> Response {
    match result {
        Ok(v) => Response::json(201, &v),
        Err(e) => api_error(e),
    }
}

#[derive(Clone, Copy)]
enum Route<'a> {
    Messages,
    Mechanisms,
    HeartbeatLimit,
    Message(&'a str),
}

fn method_not_allowed(allow: &'static str) -> Response {
    Response::error(
        405,
        "method_not_allowed",
        format!("only {allow} is allowed on this path"),
    )
    .with_header("Allow", allow)
}

/// `ApiError` -> status, code and headers.
fn api_error(err: ApiError) -> Response {
    match err {
        ApiError::Unauthorized(m) => {
            Response::error(401, "unauthorized", m).with_header("WWW-Authenticate", "Bearer realm=\"pulsegate\"")
        }
        ApiError::BadRequest(m) => Response::error(400, "bad_request", m),
        ApiError::Forbidden(m) => Response::error(403, "forbidden", m),
        ApiError::NotFound(m) => Response::error(404, "not_found", m),
        ApiError::DeviceOffline(device) => {
            Response::error(404, "device_offline", format!("device {device} is not connected"))
        }
        ApiError::Conflict(m) => Response::error(409, "conflict", m),
        ApiError::PayloadTooLarge { max_bytes } => Response::error(
            413,
            "payload_too_large",
            format!("payload exceeds the limit of {max_bytes} bytes"),
        ),
        ApiError::RateLimited { retry_after_s } => Response::error(
            429,
            "rate_limited",
            format!("too many requests, retry after {retry_after_s} s"),
        )
        .with_header("Retry-After", retry_after_s.to_string()),
        ApiError::SpOverBudget(m) => Response::error(429, "sp_over_budget", m),
        ApiError::InsufficientStorage(m) => Response::error(507, "insufficient_storage", m),
        ApiError::Overloaded { retry_after_s } => Response::error(
            503,
            "overloaded",
            format!("gateway is overloaded, retry after {retry_after_s} s"),
        )
        .with_header("Retry-After", retry_after_s.to_string()),
        ApiError::Unavailable(m) => Response::error(503, "unavailable", m),
        ApiError::ShuttingDown => Response::error(503, "shutting_down", "gateway is shutting down").closing(),
        ApiError::Internal(m) => Response::error(500, "internal_error", m).closing(),
    }
}
