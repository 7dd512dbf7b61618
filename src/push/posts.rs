//! The outbound POSTs in flight, by tag: a webhook attempt (with when it
//! started) or a callback job. Builds the requests, so their shape (body,
//! headers) is in one place, and names a failed outcome.
//!
//! Owns tags and request shapes. Must never send: the machine returns the
//! request as an effect, and looks the tag up when the result comes back.

use std::collections::HashMap;

use super::effects::AttemptRef;
use super::format_id;
use super::message::Message;
use crate::outbound::{PostOutcome, PostRequest};

/// What a POST was for.
pub enum PostFor {
    /// A webhook attempt, started at this monotonic time.
    Attempt(AttemptRef, u64),
    Callback {
        job: u64,
    },
}

pub struct Posts {
    by_tag: HashMap<u64, PostFor>,
    next_tag: u64,
}

impl Default for Posts {
    fn default() -> Self {
        Posts {
            by_tag: HashMap::new(),
            next_tag: 1,
        }
    }
}

impl Posts {
    pub fn new() -> Posts {
        Posts::default()
    }

    fn tag(&mut self, what: PostFor) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.by_tag.insert(tag, what);
        tag
    }

    /// The POST of a webhook attempt for `msg`.
    pub fn webhook(
        &mut self,
        attempt: AttemptRef,
        started_ms: u64,
        msg: &Message,
        url: &str,
        timeout_ms: u64,
    ) -> PostRequest {
        let body = serde_json::json!({
            "id": format_id(msg.id),
            "device": msg.device,
            "payload": String::from_utf8_lossy(&msg.payload.bytes),
            "qos": msg.qos,
        });
        PostRequest {
            tag: self.tag(PostFor::Attempt(attempt, started_ms)),
            url: url.to_string(),
            body: body.to_string().into_bytes(),
            content_type: "application/json",
            headers: vec![("X-Pulsegate-Message-Id".into(), format_id(msg.id))],
            timeout_ms,
        }
    }

    /// The POST of callback `job`.
    pub fn callback(&mut self, job: u64, url: String, body: Vec<u8>, timeout_ms: u64) -> PostRequest {
        PostRequest {
            tag: self.tag(PostFor::Callback { job }),
            url,
            body,
            content_type: "application/json",
            headers: vec![],
            timeout_ms,
        }
    }

    /// What `tag` was for (once: the result or refusal settles it).
    pub fn take(&mut self, tag: u64) -> Option<PostFor> {
        self.by_tag.remove(&tag)
    }

    /// POSTs in flight.
    pub fn len(&self) -> usize {
        self.by_tag.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_tag.is_empty()
    }
}

/// The attempt outcome a failed POST records.
pub fn failure_reason(outcome: &PostOutcome) -> String {
    match outcome {
        PostOutcome::Status(code) => format!("http_{code}"),
        PostOutcome::Timeout => "timeout".into(),
        PostOutcome::ConnectFailed(_) => "connect_failed".into(),
        PostOutcome::BadUrl(_) => "bad_url".into(),
        PostOutcome::Tls(_) => "tls_error".into(),
        PostOutcome::Refused(_) => "refused_by_url_policy".into(),
        PostOutcome::Other(_) => "relay_error".into(),
    }
}
