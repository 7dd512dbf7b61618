//! Fuzz target: the API's JSON bodies, `POST /v1/messages` (`push::submit::build`) and the
//! message record the front stores for it (`push::message::Message`, JSON in the store).
//!
//! Input: the request body. Beyond "no panic" it asserts that an accepted body made
//! 1..=MULTICAST_DEVICES_MAX messages within every stated bound (device id length, qos,
//! ttl, payload size, a valid profile, distinct ids), that every message survives the
//! store's JSON round trip unchanged (what a restart reloads is what was accepted), and
//! that the same body re-serialized by serde_json (other key order, escapes, spacing) is
//! accepted with the same messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulsegate::config::Config;
use pulsegate::push::PushIds;
use pulsegate::push::message::{Message, State};
use pulsegate::push::profile::{self, Profile};
use pulsegate::push::submit::{self, DEVICE_ID_BYTES_MAX, MULTICAST_DEVICES_MAX, SubmitError, TTL_S_MAX};

const NOW_MS: u64 = 1_700_000_000_000;

fn config() -> Config {
    let mut cfg = Config::default();
    cfg.profiles.insert(
        "fast".into(),
        Profile {
            priority: 7,
            ..Default::default()
        },
    );
    cfg
}

fuzz_target!(|body: &[u8]| {
    let cfg = config();
    let ids = PushIds::new();
    let submission = match submit::build(body, "acme", None, &cfg, &ids, NOW_MS) {
        Ok(s) => s,
        Err(SubmitError::Bad(why)) => {
            assert!(!why.is_empty(), "a refusal names its reason");
            return;
        }
        Err(SubmitError::PayloadTooLarge { max_bytes }) => {
            assert!(max_bytes < u64::from(cfg.max_packet_bytes));
            return;
        }
    };
    let messages = &submission.messages;
    assert!((1..=MULTICAST_DEVICES_MAX).contains(&messages.len()));
    assert!(submission.multicast || messages.len() == 1);
    let max_payload_bytes = cfg.max_packet_bytes as usize - 16 - DEVICE_ID_BYTES_MAX;
    for (i, m) in messages.iter().enumerate() {
        assert!(
            (1..=DEVICE_ID_BYTES_MAX).contains(&m.device.len()),
            "device {:?}",
            m.device
        );
        assert!(m.qos <= 1);
        assert!(m.payload.bytes.len() <= max_payload_bytes);
        assert!(m.expires_ms > m.created_ms && m.expires_ms - m.created_ms <= u64::from(TTL_S_MAX) * 1000);
        assert_eq!(m.state, State::Accepted);
        assert_eq!(m.history.len(), 1);
        assert_eq!(profile::validate(&m.profile), Ok(()));
        assert!(i == 0 || messages[i - 1].id < m.id, "ids are distinct and rising");
        // What the front stores and recovery reads back.
        let stored = serde_json::to_vec(m).expect("a message serializes");
        let mut back: Message = serde_json::from_slice(&stored).expect("a stored message reloads");
        // A multicast's payload lives in its own row: recovery re-links it by `stored_as`.
        if m.payload.stored_as.is_some() {
            assert_eq!(back.payload.stored_as, m.payload.stored_as);
            back.payload = m.payload.clone();
        }
        assert_eq!(
            &back,
            m,
            "store round trip; stored {}",
            String::from_utf8_lossy(&stored)
        );
        let _ = m.status_json();
    }
    // The same JSON written differently means the same request.
    let value: serde_json::Value = serde_json::from_slice(body).expect("an accepted body is JSON");
    let rewritten = serde_json::to_vec(&value).expect("a JSON value serializes");
    let again = submit::build(&rewritten, "acme", None, &cfg, &ids, NOW_MS)
        .unwrap_or_else(|e| panic!("rewritten body refused: {e:?}; {}", String::from_utf8_lossy(&rewritten)));
    assert_eq!(again.multicast, submission.multicast);
    assert_eq!(again.messages.len(), messages.len());
    for (a, m) in again.messages.iter().zip(messages) {
        assert_eq!(a.payload.bytes, m.payload.bytes, "rewritten body carried another payload");
        assert_eq!(
            Message {
                id: m.id,
                payload: m.payload.clone(),
                ..a.clone()
            },
            *m,
            "rewritten body made another message"
        );
    }
});
