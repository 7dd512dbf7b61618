//! Writes the seed corpus under `tests/fuzz/corpus/TARGET/` from the codec tests' sample
//! packets and bodies (run by hand when a codec changes; the seeds are committed):
//! `cargo run --manifest-path tests/fuzz/Cargo.toml --example gen_seeds`.
//!
//! Owns: the seeds' content and their input layout per target (the first bytes select
//! what each target's doc comment says). Must never: write outside `corpus/`.

use std::path::Path;

use pulsegate::protocol::mqtt::{
    ConnAck, ConnAckProperties, Connect, ConnectProperties, Disconnect, NetworkReport, Packet, ProtocolVersion, PubAck,
    Publish, PublishProperties, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};

const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// A valid packet of every type the codec speaks (as in src/protocol/mqtt/tests.rs).
fn packets() -> Vec<Packet<'static>> {
    vec![
        Packet::Connect(Connect {
            protocol_version: V5,
            clean_start: false,
            keepalive_s: 30,
            client_id: "c1",
            username: Some("u"),
            password: Some(b"p"),
            will: Some(Will {
                topic: "w/t",
                payload: b"bye",
                qos: 2,
                retain: false,
            }),
            properties: ConnectProperties {
                session_expiry_interval_s: Some(10),
                receive_maximum: Some(5),
                network: Some(NetworkReport {
                    mcc: 460,
                    mnc: 1,
                    area: Some(12),
                }),
                ..Default::default()
            },
        }),
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason: 0,
            properties: ConnAckProperties {
                server_keep_alive_s: Some(20),
                reason_string: Some("hi"),
                ..Default::default()
            },
        }),
        Packet::Publish(Publish {
            dup: false,
            qos: 1,
            retain: true,
            topic: "t/1",
            packet_id: Some(42),
            payload: b"payload",
            properties: PublishProperties {
                content_type: Some("ct"),
                message_expiry_interval_s: Some(9),
                ..Default::default()
            },
        }),
        Packet::PubAck(PubAck {
            packet_id: 42,
            reason: 0x10,
        }),
        Packet::Subscribe(Subscribe {
            packet_id: 5,
            filters: vec![("a/#", SubscriptionOptions::qos(1)), ("b", SubscriptionOptions::qos(2))],
        }),
        Packet::SubAck(SubAck {
            packet_id: 5,
            reason_codes: &[1, 2],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 6,
            filters: vec!["a/#"],
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 6,
            reason_codes: &[0],
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect {
            reason: 0x8E,
            reason_string: Some("taken"),
            ..Disconnect::NORMAL
        }),
    ]
}

fn encode(p: &Packet<'_>, version: ProtocolVersion) -> Vec<u8> {
    let mut out = Vec::new();
    p.encode(version, &mut out);
    out
}

fn publish(topic: &'static str, payload: &'static [u8], qos: u8) -> Packet<'static> {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic,
        packet_id: (qos > 0).then_some(7),
        payload,
        properties: PublishProperties::default(),
    })
}

/// What a gateway sends a device over one connection: CONNACK, a keep-alive
/// configuration, a heartbeat adjustment, a push, a PINGRESP, then DISCONNECT 0x9C with
/// a Server Reference.
fn server_session(version: ProtocolVersion) -> Vec<u8> {
    let mut out = encode(
        &Packet::ConnAck(ConnAck {
            session_present: false,
            reason: 0,
            properties: ConnAckProperties {
                server_keep_alive_s: Some(45),
                ..Default::default()
            },
        }),
        version,
    );
    out.extend(encode(
        &publish("$pulse/keepalive", br#"{"keepalive_s":30,"offset_ms":0}"#, 1),
        version,
    ));
    out.extend(encode(
        &publish("$pulse/heartbeat", br#"{"keepalive_s":120,"offset_ms":4500}"#, 1),
        version,
    ));
    out.extend(encode(&publish("push/dev-1", b"hello", 1), version));
    out.extend(encode(&publish("push/dev-1", b"q0", 0), version));
    out.extend(encode(&Packet::PingResp, version));
    out.extend(encode(
        &Packet::Disconnect(Disconnect {
            reason: 0x9C,
            server_reference: Some("127.0.0.2:1883"),
            ..Disconnect::NORMAL
        }),
        version,
    ));
    out
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    std::fs::write(dir.join(name), bytes).expect("seed file");
}

fn with_prefix(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    [prefix, rest].concat()
}

fn mqtt_seeds() {
    for (version, vbit, vname) in [(V311, 0u8, "v311"), (V5, 1, "v5")] {
        // Limit selector 7: u32::MAX (decode_packet's own).
        let sel = vbit | 7 << 1;
        let mut stream = Vec::new();
        for p in packets() {
            stream.extend(encode(&p, version));
        }
        write(
            "mqtt_frame",
            &format!("all_packets_{vname}"),
            &with_prefix(&[sel], &stream),
        );
        write(
            "mqtt_frame",
            &format!("session_{vname}"),
            &with_prefix(&[sel], &server_session(version)),
        );
    }
    // The malformed cases of tests.rs, one seed each (version V311 unless noted).
    let malformed: &[(&str, u8, &[u8])] = &[
        ("bad_remaining_length", 0, &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
        ("bad_flags", 0, &[0xC2, 0x00]),
        (
            "bad_protocol_name",
            0,
            &[0x10, 0x07, 0x00, 0x04, b'M', b'Q', b'X', b'X', 0x04],
        ),
        ("bad_property", 1, &[0x30, 0x05, 0x00, 0x01, b't', 0x01, 0x12]),
        (
            "duplicate_property",
            1,
            &[0x30, 0x08, 0x00, 0x01, b't', 0x04, 0x01, 0x00, 0x01, 0x00],
        ),
        (
            "bad_subscription_options",
            0,
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'x', 0x80],
        ),
    ];
    for (name, vbit, frame) in malformed {
        write("mqtt_frame", name, &with_prefix(&[vbit | 7 << 1], frame));
    }
}

fn http_seeds() {
    // Bytes 0-1: header limit 16 + n (little endian): 1024 + 16.
    let limit = 1024u16.to_le_bytes();
    let heads: &[(&str, &[u8])] = &[
        (
            "post_message",
            b"POST /v1/messages?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer k1\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"device\":1}",
        ),
        ("get_status", b"GET /v1/messages/0000000100000002 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        ("http10_keep_alive", b"GET /metrics HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"),
        ("expect_continue", b"PUT /v1/admin/heartbeat-limit HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"),
        ("chunked", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ("conflicting_length", b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
        ("partial", b"GET / HTTP/1.1\r\nHost:"),
    ];
    for (name, head) in heads {
        write("http_head", name, &with_prefix(&limit, head));
    }
}

fn json_seeds() {
    let bodies: &[(&str, &str)] = &[
        (
            "unicast",
            r#"{"device":"d1","payload":"hi","ttl_s":5,"collapse_key":"k","profile":"fast","callback_url":"https://sp.example/cb"}"#,
        ),
        (
            "multicast_base64",
            r#"{"devices":["a","b","c"],"payload":"AAE=","payload_encoding":"base64","qos":0}"#,
        ),
        (
            "inline_profile",
            r#"{"device":"d","payload":"x","qos":1,"profile":{"goal":"critical","deliver_within_s":30,"priority":9,"max_cost":0.5,"retry":{"max_attempts":3,"backoff_base_ms":100,"backoff_max_ms":1000,"on_failure":"same_mechanism"},"queue_if_offline":false}}"#,
        ),
        (
            "escapes",
            r#" {"device":"d\u00e9\n","payload":"\ud83d\ude00\"\\","ttl_s":2592000} "#,
        ),
        ("not_object", "[]"),
    ];
    for (name, body) in bodies {
        write("api_json", name, body.as_bytes());
    }
}

fn sdk_seeds() {
    // Byte 0: version bit 0, probing heartbeat bit 1; byte 1: read-size seed.
    write(
        "sdk_session",
        "v5_session",
        &with_prefix(&[0x01, 0x2A], &server_session(V5)),
    );
    write(
        "sdk_session",
        "v311_session",
        &with_prefix(&[0x00, 0x07], &server_session(V311)),
    );
    write(
        "sdk_session",
        "v5_probing",
        &with_prefix(&[0x03, 0x11], &server_session(V5)),
    );
    let refused = encode(
        &Packet::ConnAck(ConnAck {
            session_present: false,
            reason: 0x89,
            properties: ConnAckProperties {
                server_reference: Some("other:1883"),
                ..Default::default()
            },
        }),
        V5,
    );
    write("sdk_session", "v5_refused", &with_prefix(&[0x01, 0x01], &refused));
    let state = r#"{"heartbeat_s":120,"optimal":true,"server":"127.0.0.1:1883","location":"12","mcc_mnc":"460-01"}"#;
    write(
        "sdk_session",
        "stored_state",
        &with_prefix(&[0x01, 0x00], state.as_bytes()),
    );
}

fn loadgen_seeds() {
    for (version, vbit, vname) in [(V311, 0u8, "v311"), (V5, 1, "v5")] {
        // Limit selector 3: 1 MiB.
        let sel = vbit | 3 << 1;
        let mut subacks = encode(
            &Packet::SubAck(SubAck {
                packet_id: 9,
                reason_codes: &[1],
            }),
            version,
        );
        subacks.extend(server_session(version));
        write(
            "loadgen_mqtt",
            &format!("session_{vname}"),
            &with_prefix(&[sel], &subacks),
        );
    }
    // The loadgen's own test vectors (loadgen/src/mqtt.rs); byte 0: v5 bit 0, limit bits 1-2.
    let vectors: &[(&str, u8, &[u8])] = &[
        (
            "connack_user_property",
            7,
            &[0x20, 13, 0, 0x89, 10, 0x26, 0, 1, b'k', 0, 1, b'v', 0x13, 0, 120],
        ),
        (
            "publish_qos1_v4",
            6,
            &[0x32, 9, 0, 3, b'a', b'/', b'b', 0, 5, b'h', b'i'],
        ),
        ("props_overrun", 7, &[0x20, 4, 0, 0, 5, 0x13]),
        ("too_large", 2, &[0x30, 0x80, 0x80, 0x01]),
    ];
    for (name, sel, bytes) in vectors {
        write("loadgen_mqtt", name, &with_prefix(&[*sel], bytes));
    }
}

fn main() {
    mqtt_seeds();
    http_seeds();
    json_seeds();
    sdk_seeds();
    loadgen_seeds();
    println!("seeds written under {}/corpus", env!("CARGO_MANIFEST_DIR"));
}
