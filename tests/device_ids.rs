//! One device id rule on both sides, over real sockets: ids that are MQTT wildcards or
//! carry control characters (`a/#`, `+`, CR/LF, NUL) or exceed 256 bytes are refused by
//! `POST /v1/messages` with 400 and by CONNECT with 0x85 (3.1.1: return code 2), and
//! counted; ordinary ids keep working on both.
//!
//! Owns these probes. Must never reach beyond 127.0.0.1.

mod common;

use std::time::Duration;

use common::{Client, ConnectOpts, Gateway, V5, V311};

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
        gw.metric("pulsegate_messages_pending"),
        2,
        "only the two good messages were taken"
    );
}

#[test]
fn connect_refuses_bad_client_ids_with_the_identifier_reason_code() {
    let gw = Gateway::start("uring", &[]);
    let before = gw.protocol_errors("client_id_rejected");
    let ids: Vec<String> = bad_ids().into_iter().filter(|id| !id.contains('\0')).collect();
    for id in &ids {
        let mut v5 = Client::new(gw.tcp(), V5);
        let ack = v5.handshake(&ConnectOpts::new(V5, id));
        assert_eq!(ack.reason, 0x85, "{id:?}: {ack:?}");
        v5.expect_closed(Duration::from_secs(5));
        let mut v311 = Client::new(gw.tcp(), V311);
        let ack = v311.handshake(&ConnectOpts::new(V311, id));
        // The codec reads 3.1.1 return code 2 (identifier rejected) as 0x85.
        assert_eq!(ack.reason, 0x85, "3.1.1 identifier rejected for {id:?}: {ack:?}");
    }
    assert_eq!(
        gw.protocol_errors("client_id_rejected") - before,
        2 * ids.len() as u64,
        "every refusal is counted"
    );
    let mut ok = gw.connect_id(V5, "tenant/device-1");
    gw.assert_healthy(&mut ok);
}
