//! `POST /v1/messages` bodies: parsing, validation and the messages they make
//! (one per device for multicast).
//!
//! Owns the request schema. Must never store or route anything: the caller
//! makes the messages durable and hands them to the service.

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;

use super::PushIds;
use super::message::{Event, Message, State};
use super::payload::Payload;
use super::profile::{self, Profile};
use crate::config::Config;
use crate::protocol::device_id;

/// Devices one multicast request may name.
pub const MULTICAST_DEVICES_MAX: usize = 1_000;
pub use crate::protocol::device_id::DEVICE_ID_BYTES_MAX;
/// Longest collapse key (a callback URL: `url_policy::URL_BYTES_MAX`).
pub const FIELD_BYTES_MAX: usize = 2_048;
/// Largest unicast payload carried inline in its record (base64, 4/3 of it)
/// rather than in a payload row of its own (a second B-tree entry costs more
/// than that below this size).
pub const PAYLOAD_INLINE_BYTES_MAX: usize = 1_024;
/// Longest time-to-live a request may ask for.
pub const TTL_S_MAX: u32 = 30 * 24 * 3600;

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Encoding {
    Utf8,
    Base64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ProfileRef {
    Named(String),
    Inline(Profile),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    device: Option<String>,
    devices: Option<Vec<String>>,
    payload: String,
    payload_encoding: Option<Encoding>,
    qos: Option<u8>,
    ttl_s: Option<u32>,
    collapse_key: Option<String>,
    callback_url: Option<String>,
    profile: Option<ProfileRef>,
}

/// The messages one request made.
pub struct Submission {
    /// They share one payload (`Payload::shared`), stored once.
    pub messages: Vec<Message>,
    /// The request named `devices` (answered with `ids`), not `device`.
    pub multicast: bool,
}

/// Why a body was refused.
#[derive(Debug, PartialEq)]
pub enum SubmitError {
    Bad(String),
    PayloadTooLarge { max_bytes: u64 },
}

/// Parses a body into messages for SP `sp` (state Accepted, history started).
pub fn build(
    body: &[u8],
    sp: &str,
    default_profile: Option<&str>,
    cfg: &Config,
    ids: &PushIds,
    now_unix_ms: u64,
) -> Result<Submission, SubmitError> {
    let bad = |m: String| Err(SubmitError::Bad(m));
    if body.trim_ascii_start().first() != Some(&b'{') {
        return bad("body must be a JSON object".into());
    }
    let b: Body = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return bad(format!("invalid JSON body: {e}")),
    };
    let multicast = b.devices.is_some();
    let devices = match (b.device, b.devices) {
        (Some(d), None) => vec![d],
        (None, Some(list)) if !list.is_empty() => list,
        (None, Some(_)) => return bad("devices must not be empty".into()),
        (Some(_), Some(_)) => return bad("give either device or devices, not both".into()),
        (None, None) => return bad("device (or devices) is required".into()),
    };
    if devices.len() > MULTICAST_DEVICES_MAX {
        return bad(format!("at most {MULTICAST_DEVICES_MAX} devices per request"));
    }
    for d in &devices {
        if let Err(e) = device_id::validate(d) {
            let shown: String = d.escape_debug().take(80).collect();
            return bad(format!("device \"{shown}\": {e}"));
        }
    }
    let payload = match b.payload_encoding.unwrap_or(Encoding::Utf8) {
        Encoding::Utf8 => b.payload.into_bytes(),
        Encoding::Base64 => match base64::engine::general_purpose::STANDARD.decode(b.payload.as_bytes()) {
            Ok(p) => p,
            Err(e) => return bad(format!("payload is not valid base64: {e}")),
        },
    };
    // Room for the PUBLISH header and the topic push/{device}.
    let max_payload = cfg.max_packet_bytes as u64 - 16 - DEVICE_ID_BYTES_MAX as u64;
    if payload.len() as u64 > max_payload {
        return Err(SubmitError::PayloadTooLarge { max_bytes: max_payload });
    }
    let qos = b.qos.unwrap_or(1);
    if qos > 1 {
        return bad(format!("qos must be 0 or 1, got {qos}"));
    }
    let ttl_s = b.ttl_s.unwrap_or(cfg.default_ttl_s);
    if ttl_s == 0 || ttl_s > TTL_S_MAX {
        return bad(format!("ttl_s must be 1..{TTL_S_MAX}"));
    }
    if b.collapse_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > FIELD_BYTES_MAX)
    {
        return bad(format!("collapse_key must be 1..{FIELD_BYTES_MAX} bytes"));
    }
    // Syntax here (pure); the caller resolves the host and checks its addresses.
    if let Some(url) = &b.callback_url
        && let Err(why) = crate::outbound::url_policy::parse(url)
    {
        return bad(format!("callback_url refused: {why}"));
    }
    let profile = match b.profile {
        Some(ProfileRef::Inline(p)) => p,
        Some(ProfileRef::Named(name)) => match cfg.profiles.get(&name) {
            Some(p) => p.clone(),
            None => return bad(format!("unknown profile {name:?}")),
        },
        None => default_profile
            .and_then(|n| cfg.profiles.get(n))
            .cloned()
            .unwrap_or_default(),
    };
    if let Err(why) = profile::validate(&profile) {
        return bad(why);
    }
    let ttl_s = profile.deliver_within_s.map_or(ttl_s, |w| w.min(ttl_s));
    // One allocation for every device of the request, and one store row
    // unless a small unicast payload is cheaper inline (as base64) in its record.
    let payload = if devices.len() == 1 && payload.len() <= PAYLOAD_INLINE_BYTES_MAX {
        Payload::inline(payload)
    } else {
        Payload::shared(ids.next_id(), Bytes::from(payload))
    };
    let messages = devices
        .into_iter()
        .map(|device| Message {
            id: ids.next_id(),
            sp: sp.to_string(),
            device,
            payload: payload.clone(),
            qos,
            created_ms: now_unix_ms,
            expires_ms: now_unix_ms + ttl_s as u64 * 1000,
            collapse_key: b.collapse_key.clone(),
            callback_url: b.callback_url.clone(),
            profile: profile.clone(),
            state: State::Accepted,
            collapsed_into: None,
            history: vec![Event {
                at_ms: now_unix_ms,
                state: State::Accepted,
                detail: String::new(),
            }],
            attempts: vec![],
        })
        .collect();
    Ok(Submission { messages, multicast })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_one(body: &str) -> Result<Vec<Message>, SubmitError> {
        let mut cfg = Config::default();
        cfg.profiles.insert(
            "fast".into(),
            Profile {
                priority: 7,
                ..Default::default()
            },
        );
        build(body.as_bytes(), "acme", None, &cfg, &PushIds::new(), 1_000).map(|s| s.messages)
    }

    #[test]
    fn builds_unicast_and_multicast_messages() {
        let m = build_one(r#"{"device":"d1","payload":"hi","ttl_s":5,"collapse_key":"k","profile":"fast"}"#)
            .expect("valid");
        assert_eq!(m.len(), 1);
        assert_eq!(
            (m[0].device.as_str(), &m[0].payload.bytes[..], m[0].qos),
            ("d1", &b"hi"[..], 1)
        );
        assert_eq!(m[0].expires_ms, 6_000);
        assert_eq!(m[0].payload.stored_as, None, "a small unicast payload is inline");
        let large = build_one(&format!(r#"{{"device":"d","payload":"{}"}}"#, "x".repeat(2_000))).expect("valid");
        assert!(
            large.iter().all(|m| m.payload.stored_as.is_some()),
            "a large one has its row"
        );
        assert_eq!(m[0].profile.priority, 7);
        let m = build_one(r#"{"devices":["a","b","c"],"payload":"AAE=","payload_encoding":"base64","qos":0}"#)
            .expect("valid");
        assert_eq!(m.len(), 3);
        assert_ne!(m[0].id, m[1].id);
        assert_eq!(&m[2].payload.bytes[..], &[0, 1]);
        assert_eq!(
            m[0].payload.bytes.as_ptr(),
            m[2].payload.bytes.as_ptr(),
            "one allocation"
        );
        assert!(m[0].payload.stored_as.is_some() && m[0].payload == m[2].payload);
        assert!(m.iter().all(|x| Some(x.id) != m[0].payload.stored_as), "its own id");
    }

    #[test]
    fn refuses_bad_bodies_with_a_reason() {
        for body in [
            "[]",
            "{",
            r#"{"payload":"x"}"#,
            r#"{"device":"d","devices":["e"],"payload":"x"}"#,
            r#"{"device":"","payload":"x"}"#,
            r#"{"device":"d","payload":"x","qos":2}"#,
            r#"{"device":"d","payload":"x","ttl_s":0}"#,
            r#"{"device":"d","payload":"x","extra":1}"#,
            r#"{"device":"d","payload":"!!","payload_encoding":"base64"}"#,
            r#"{"device":"d","payload":"x","profile":"nope"}"#,
            r#"{"device":"d","payload":"x","profile":{"priority":11}}"#,
            r#"{"device":"d","payload":"x","callback_url":"ftp://x"}"#,
            r#"{"device":"d","payload":"x","callback_url":"http://u:p@example.com/"}"#,
            r#"{"device":"d","payload":"x","callback_url":"http://example.com/\r\nX: y"}"#,
        ] {
            assert!(
                matches!(build_one(body), Err(SubmitError::Bad(_))),
                "{body} should be refused"
            );
        }
        let big = format!(r#"{{"device":"d","payload":"{}"}}"#, "x".repeat(300 * 1024));
        assert!(matches!(build_one(&big), Err(SubmitError::PayloadTooLarge { .. })));
    }
}
