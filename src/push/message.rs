//! A tracked message: what the SP asked for, where it stands, and its history
//! (every state change and every delivery attempt). Serialized as JSON for the
//! store (the payload as a reference to its row, see `payload`) and for
//! `GET /v1/messages/{id}` (without the payload).
//!
//! Owns the message record and its state transitions' bookkeeping. Must never
//! decide what happens next (the service does) or touch I/O.

use serde::{Deserialize, Serialize};

use super::payload::Payload;
use super::profile::Profile;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Durable, not yet tried.
    Accepted,
    /// Waiting for the device to come online (store and forward).
    Queued,
    /// An attempt is in progress.
    Sent,
    /// The device (PUBACK) or a relay (2xx) took it.
    Delivered,
    /// The SP confirmed the round trip.
    Confirmed,
    Failed,
    Expired,
    Cancelled,
    /// Replaced by a newer message with the same collapse key.
    Collapsed,
}

impl State {
    pub fn is_terminal(self) -> bool {
        !matches!(self, State::Accepted | State::Queued | State::Sent)
    }
}

/// One delivery attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub n: u32,
    pub mechanism: String,
    pub started_ms: u64,
    /// None while in progress; "delivered", "timeout", "http_500", "connection_closed", ...
    pub outcome: Option<String>,
    pub latency_ms: Option<u64>,
}

/// One state change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    pub state: State,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub detail: String,
}

/// Events kept per message (older ones are dropped, the first is kept).
pub const HISTORY_EVENTS_MAX: usize = 64;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: u64,
    pub sp: String,
    pub device: String,
    /// The payload, shared by the messages of one multicast.
    pub payload: Payload,
    pub qos: u8,
    pub created_ms: u64,
    pub expires_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub collapse_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub callback_url: Option<String>,
    pub profile: Profile,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub collapsed_into: Option<u64>,
    pub history: Vec<Event>,
    pub attempts: Vec<Attempt>,
}

impl Message {
    /// Records a state change.
    pub fn set_state(&mut self, state: State, at_ms: u64, detail: impl Into<String>) {
        self.state = state;
        if self.history.len() >= HISTORY_EVENTS_MAX {
            self.history.remove(1);
        }
        self.history.push(Event {
            at_ms,
            state,
            detail: detail.into(),
        });
    }

    /// The attempt in progress on `mechanism`, if any.
    pub fn open_attempt(&mut self, mechanism: &str) -> Option<&mut Attempt> {
        self.attempts
            .iter_mut()
            .rev()
            .find(|a| a.mechanism == mechanism && a.outcome.is_none())
    }

    /// Closes every open attempt with `outcome`.
    pub fn close_open_attempts(&mut self, outcome: &str, now_ms: u64) {
        for a in self.attempts.iter_mut().filter(|a| a.outcome.is_none()) {
            a.outcome = Some(outcome.to_string());
            a.latency_ms = Some(now_ms.saturating_sub(a.started_ms));
        }
    }

    /// Bytes of the message's record (its stored JSON, payload excluded when
    /// shared): what a finished message costs the retention window.
    pub fn record_bytes(&self) -> u64 {
        struct Count(u64);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len() as u64;
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut n = Count(0);
        // Writing to a counter cannot fail; a failure would only undercount.
        let _ = serde_json::to_writer(&mut n, self);
        n.0
    }

    /// The public view for `GET /v1/messages/{id}` and callbacks.
    pub fn status_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "id": super::format_id(self.id),
            "device": self.device,
            "state": self.state,
            "qos": self.qos,
            "created_ms": self.created_ms,
            "expires_ms": self.expires_ms,
            "history": self.history,
            "attempts": self.attempts,
        });
        if let Some(into) = self.collapsed_into {
            v["collapsed_into"] = serde_json::Value::String(super::format_id(into));
        }
        if let Some(k) = &self.collapse_key {
            v["collapse_key"] = serde_json::Value::String(k.clone());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Message {
        Message {
            id: 7,
            sp: "acme".into(),
            device: "d1".into(),
            payload: Payload::inline(&[0u8, 1, 255][..]),
            qos: 1,
            created_ms: 1,
            expires_ms: 100,
            collapse_key: None,
            callback_url: None,
            profile: Profile::default(),
            state: State::Accepted,
            collapsed_into: None,
            history: vec![],
            attempts: vec![],
        }
    }

    #[test]
    fn round_trips_through_json_with_binary_payload() {
        let mut m = msg();
        m.set_state(State::Sent, 5, "persistent attempt 1");
        let text = serde_json::to_vec(&m).expect("serializable");
        let back: Message = serde_json::from_slice(&text).expect("deserializable");
        assert_eq!(back, m);
    }

    #[test]
    fn history_is_bounded_and_keeps_the_first_event() {
        let mut m = msg();
        for i in 0..200 {
            m.set_state(if i == 0 { State::Accepted } else { State::Queued }, i, "");
        }
        assert_eq!(m.history.len(), HISTORY_EVENTS_MAX);
        assert_eq!(m.history[0].state, State::Accepted);
        assert!(State::Delivered.is_terminal() && !State::Queued.is_terminal());
    }
}
