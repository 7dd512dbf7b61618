//! The API side of the one device id rule (`protocol::device_id`), over real sockets: ids
//! that are MQTT wildcards or carry control characters (`a/#`, `+`, CR/LF, NUL) or exceed
//! 256 bytes are refused by `POST /v1/messages` with 400 and the reason; ordinary ids pass.
//! The CONNECT side is `tests/partial_packets.rs` (`bad_client_ids_are_refused`).
//!
//! Owns these probes. Must never reach beyond 127.0.0.1.

mod common;

use common::Gateway;

fn bad_ids() -> Vec<String> {
    vec![
        "a/#".into(),
        "+".into(),
        "a/+/b".into(),
        "#".into(),
        "evil\r\nHost: x".into(),
        "nul\0id".into(),
        "tab\tid".into(),
        "x".repeat(257),
    ]
}

#[test]
fn the_api_refuses_bad_device_ids_with_400_and_the_reason() {
    let gw = Gateway::start("uring", &[]);
    for id in bad_ids() {
        for body in [
            serde_json::json!({"device": id, "payload": "x"}),
            serde_json::json!({"devices": ["ok-device", id], "payload": "x"}),
        ] {
            let (status, reply) = gw.http_conn().post_message(&body);
            assert_eq!(status, 400, "{id:?}: {reply}");
            assert!(reply.contains("device"), "{reply}");
        }
    }
    let (status, reply) = gw
        .http_conn()
        .post_message(&serde_json::json!({"devices": ["tenant/device-1", "phone-42"], "payload": "x"}));
    assert_eq!(status, 201, "ordinary ids still pass: {reply}");
    assert_eq!(
        // The service publishes the gauge at the end of its turn, just after the 201.
        gw.wait_metric("pulsegate_messages_pending", std::time::Duration::from_secs(5), |v| v
            == 2),
        2,
        "only the two good messages were taken"
    );
}
