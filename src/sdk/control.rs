//! The gateway's control messages as a device reads them (MISSION section 6).
//!
//! Owns: the control topics and their payloads. `$pulse/keepalive` with
//! `{"keepalive_s":T,"offset_ms":O}` = re-initialize the keep-alive timer now with period T
//! (its first period starting O ms from now; the gateway sends 0), seeds/000.
//! `$pulse/heartbeat` with `{"keepalive_s":N,"offset_ms":O}` = lengthen the heartbeat
//! interval to N, its first period starting O ms from now (the gateway spreads a relief
//! round's devices over one new interval this way; O defaults to 0), seeds/004.
//! Both arrive as QoS 1 PUBLISH and are acknowledged like any push.
//!
//! Must never: act on a message (the session and the load generator do), allocate for a
//! well-formed message, or accept a payload larger than `CONTROL_PAYLOAD_BYTES_MAX`.

use serde::Deserialize;

/// Every control topic starts with this.
pub const CONTROL_TOPIC_PREFIX: &str = "$pulse/";
/// Keep-alive configuration message (seeds/000).
pub const KEEPALIVE_TOPIC: &str = "$pulse/keepalive";
/// Heartbeat adjustment message (seeds/004).
pub const HEARTBEAT_TOPIC: &str = "$pulse/heartbeat";
/// Control payloads are a few dozen bytes; anything longer is refused unparsed.
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 512;

/// A parsed control message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Re-initialize the keep-alive timer with period `keepalive_s`, `offset_ms` from now.
    KeepAlive { keepalive_s: u16, offset_ms: u64 },
    /// Lengthen the heartbeat interval to `keepalive_s`, its first period `offset_ms`
    /// from now.
    Heartbeat { keepalive_s: u16, offset_ms: u64 },
}

/// Why a control message was not understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// A `$pulse/` topic this SDK does not know.
    UnknownTopic,
    TooLarge {
        payload_bytes: usize,
    },
    /// Not the JSON object expected for the topic.
    BadPayload,
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::UnknownTopic => write!(f, "unknown control topic"),
            ControlError::TooLarge { payload_bytes } => {
                write!(
                    f,
                    "control payload of {payload_bytes} bytes exceeds {CONTROL_PAYLOAD_BYTES_MAX}"
                )
            }
            ControlError::BadPayload => write!(f, "control payload is not the expected JSON object"),
        }
    }
}

impl std::error::Error for ControlError {}

#[derive(Deserialize)]
struct KeepAliveBody {
    keepalive_s: u16,
    #[serde(default)]
    offset_ms: u64,
}

#[derive(Deserialize)]
struct HeartbeatBody {
    keepalive_s: u16,
    #[serde(default)]
    offset_ms: u64,
}

/// Whether `topic` is a control topic (a push never is).
pub fn is_control_topic(topic: &[u8]) -> bool {
    topic.starts_with(CONTROL_TOPIC_PREFIX.as_bytes())
}

/// Parses a PUBLISH. Ok(None) = not a control topic (an ordinary push).
pub fn parse(topic: &[u8], payload: &[u8]) -> Result<Option<Control>, ControlError> {
    if !is_control_topic(topic) {
        return Ok(None);
    }
    let keepalive = topic == KEEPALIVE_TOPIC.as_bytes();
    if !keepalive && topic != HEARTBEAT_TOPIC.as_bytes() {
        return Err(ControlError::UnknownTopic);
    }
    if payload.len() > CONTROL_PAYLOAD_BYTES_MAX {
        return Err(ControlError::TooLarge {
            payload_bytes: payload.len(),
        });
    }
    let control = if keepalive {
        let b: KeepAliveBody = serde_json::from_slice(payload).map_err(|_| ControlError::BadPayload)?;
        Control::KeepAlive {
            keepalive_s: b.keepalive_s,
            offset_ms: b.offset_ms,
        }
    } else {
        let b: HeartbeatBody = serde_json::from_slice(payload).map_err(|_| ControlError::BadPayload)?;
        Control::Heartbeat {
            keepalive_s: b.keepalive_s,
            offset_ms: b.offset_ms,
        }
    };
    Ok(Some(control))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_gateway_payloads() {
        assert_eq!(
            parse(b"$pulse/keepalive", br#"{"keepalive_s":60,"offset_ms":0}"#),
            Ok(Some(Control::KeepAlive {
                keepalive_s: 60,
                offset_ms: 0
            }))
        );
        assert_eq!(
            parse(b"$pulse/keepalive", br#"{"keepalive_s":20}"#),
            Ok(Some(Control::KeepAlive {
                keepalive_s: 20,
                offset_ms: 0
            }))
        );
        assert_eq!(
            parse(b"$pulse/heartbeat", br#" {"keepalive_s":120} "#),
            Ok(Some(Control::Heartbeat {
                keepalive_s: 120,
                offset_ms: 0
            }))
        );
        assert_eq!(
            parse(b"$pulse/heartbeat", br#"{"keepalive_s":20,"offset_ms":4500}"#),
            Ok(Some(Control::Heartbeat {
                keepalive_s: 20,
                offset_ms: 4_500
            }))
        );
    }

    #[test]
    fn pushes_and_bad_control_messages() {
        assert_eq!(parse(b"push/dev1", b"60"), Ok(None));
        assert_eq!(parse(b"$pulse/other", b"{}"), Err(ControlError::UnknownTopic));
        // The old plain-integer guess is not the protocol.
        assert_eq!(parse(b"$pulse/keepalive", b"60"), Err(ControlError::BadPayload));
        assert_eq!(
            parse(b"$pulse/heartbeat", br#"{"keepalive_s":70000}"#),
            Err(ControlError::BadPayload)
        );
        assert_eq!(parse(b"$pulse/heartbeat", b"{"), Err(ControlError::BadPayload));
        let big = vec![b' '; CONTROL_PAYLOAD_BYTES_MAX + 1];
        assert_eq!(
            parse(b"$pulse/heartbeat", &big),
            Err(ControlError::TooLarge {
                payload_bytes: CONTROL_PAYLOAD_BYTES_MAX + 1
            })
        );
    }
}
