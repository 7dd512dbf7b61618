//! Hostile and broken device input over real sockets, on both backends with 2 shards. Each
//! case opens its own connection, sends the bad bytes, and checks that the gateway closes
//! that connection (MQTT 5 connected clients get the right DISCONNECT reason first), that the
//! matching `pulsegate_protocol_errors_total{kind=...}` counter moves, and that healthy clients
//! connected earlier (one per shard) still ping and receive pushes afterwards.
//!
//! Cases: garbage (an HTTP request), a 5-byte remaining length, an oversize packet, a truncated
//! CONNECT then close, protocol levels 3 and 6, a first packet that is not CONNECT, a second
//! CONNECT, an invalid UTF-8 topic, reserved packet types 0 and 15, other violations (retain,
//! topic alias, server-only packets, unknown PUBACK id), and a burst of 200 garbage connections.

mod common;

use std::time::Duration;

use common::*;
use pulsegate::protocol::mqtt::{ProtocolVersion, write_varint};

struct Bench {
    gw: Gateway,
    healthy: Vec<Client>,
}

impl Bench {
    fn new(backend: &str, extra: &[&str]) -> Bench {
        let gw = Gateway::start(backend, extra);
        let healthy = gw
            .connect_on_every_shard(V5, "healthy")
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        Bench { gw, healthy }
    }

    fn raw(&self) -> Client {
        Client::new(self.gw.tcp(), V311)
    }

    fn connected(&self, version: ProtocolVersion, id: &str) -> Client {
        self.gw.connect_id(version, id)
    }

    /// Sends `bytes` on `c`, expects the close with exactly `want` before it, the `kind`
    /// counter up by one, and every healthy client still working.
    fn expect(&mut self, what: &str, mut c: Client, bytes: &[u8], kind: &str, want: &[Rx]) {
        let before = self.gw.protocol_errors(kind);
        let _ = c.try_write_raw(bytes);
        let got = c.expect_closed(WAIT);
        assert_eq!(got, want, "{what}: packets before the close");
        let series = format!("pulsegate_protocol_errors_total{{kind=\"{kind}\"}}");
        self.gw.wait_metric(&series, WAIT, |v| v == before + 1);
        self.check_healthy();
    }

    fn check_healthy(&mut self) {
        for c in &mut self.healthy {
            self.gw.assert_healthy(c);
        }
    }
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    write_varint(&mut out, body.len() as u32);
    out.extend_from_slice(body);
    out
}

fn garbage_http_request(backend: &str) {
    let mut b = Bench::new(backend, &[]);
    // 'G' = type 4 (PUBACK) with flags 7, 'E' = remaining length 69: a malformed first packet.
    let mut req = b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n".to_vec();
    req.resize(120, b' ');
    let c = b.raw();
    b.expect("HTTP request", c, &req, "malformed", &[]);
    assert_eq!(b.gw.closes("protocol_error"), 1);
}

fn five_byte_remaining_length(backend: &str) {
    let mut b = Bench::new(backend, &[]);
    let bad = [0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x00];
    let c = b.raw();
    b.expect("before CONNECT", c, &bad, "malformed", &[]);
    let bad = [0x30, 0x80, 0x80, 0x80, 0x80, 0x01];
    let c = b.connected(V5, "rl5-v5");
    b.expect("v5 connected", c, &bad, "malformed", &[Rx::Disconnect { reason: 0x81 }]);
    let c = b.connected(V311, "rl5-v311");
    b.expect("3.1.1 connected", c, &bad, "malformed", &[]);
}

fn oversize_packet(backend: &str) {
    let mut b = Bench::new(backend, &["--max-packet-bytes", "1024"]);
    // Only the header is sent: the size alone must condemn the packet.
    let mut header = vec![0x30];
    write_varint(&mut header, 2000);
    header.extend_from_slice(&[0x00, 0x03, b'a', b'/', b'b']);
    let c = b.connected(V5, "big-v5");
    b.expect(
        "v5 PUBLISH of 2000 bytes",
        c,
        &header,
        "too_large",
        &[Rx::Disconnect { reason: 0x95 }],
    );
    let c = b.connected(V311, "big-v311");
    b.expect("3.1.1 PUBLISH of 2000 bytes", c, &header, "too_large", &[]);
    let mut connect = vec![0x10];
    write_varint(&mut connect, 5000);
    let c = b.raw();
    b.expect("CONNECT of 5000 bytes", c, &connect, "too_large", &[]);
    // Exactly at the limit is fine: a 1024-byte PUBLISH is acknowledged.
    let mut ok = b.connected(V5, "at-limit");
    let topic = "a/b";
    let payload = vec![b'p'; 1024 - (1 + 2 + 2 + topic.len() + 2 + 1)];
    ok.publish(topic, 1, Some(9), &payload);
    assert_eq!(
        ok.recv(WAIT),
        Ok(Rx::PubAck {
            packet_id: 9,
            reason: 0
        }),
        "a 1024-byte packet is accepted"
    );
}

fn truncated_connect_then_close(backend: &str) {
    let mut b = Bench::new(backend, &[]);
    let before = b.gw.protocol_errors("truncated_at_close");
    let mut c = b.raw();
    let connect = ConnectOpts::new(V5, "truncated").encode();
    c.write_raw(&connect[..connect.len() - 4]);
    // Let the partial packet reach the gateway before the FIN.
    std::thread::sleep(Duration::from_millis(50));
    c.shutdown_write();
    let got = c.expect_closed(WAIT);
    assert!(got.is_empty(), "no CONNACK for a truncated CONNECT: {got:?}");
    b.gw.wait_metric(
        "pulsegate_protocol_errors_total{kind=\"truncated_at_close\"}",
        WAIT,
        |v| v == before + 1,
    );
    b.gw.wait_connections(b.healthy.len() as u64, WAIT);
    b.check_healthy();
}

/// Partial CONNECT and FIN sent back to back (they reach the gateway together): the close must
/// still be noticed at once, not left to the 10 s connect timeout.
fn truncated_connect_with_immediate_fin(backend: &str) {
    let mut b = Bench::new(backend, &[]);
    let before = b.gw.protocol_errors("truncated_at_close");
    let connect = ConnectOpts::new(V5, "truncated-fin").encode();
    let n = 10;
    for _ in 0..n {
        let mut c = b.raw();
        c.write_raw(&connect[..connect.len() - 4]);
        c.shutdown_write();
        let got = c.expect_closed(WAIT);
        assert!(got.is_empty(), "no CONNACK for a truncated CONNECT: {got:?}");
    }
    b.gw.wait_metric(
        "pulsegate_protocol_errors_total{kind=\"truncated_at_close\"}",
        WAIT,
        |v| v == before + n,
    );
    b.gw.wait_connections(b.healthy.len() as u64, WAIT);
    b.check_healthy();
}

fn unsupported_protocol_levels(backend: &str) {
    let mut b = Bench::new(backend, &[]);
    let v311 = ConnectOpts::new(V311, "old-timer").encode();
    assert_eq!(&v311[2..9], b"\x00\x04MQTT\x04", "level byte at offset 8");
    let mqtt_level = |level: u8| {
        let mut p = v311.clone();
        p[8] = level;
        p
    };
    // MQTT 3.1 proper: "MQIsdp", level 3.
    let mut body = vec![0x00, 0x06];
    body.extend_from_slice(b"MQIsdp");
    body.extend_from_slice(&[0x03, 0x02, 0x00, 0x3C, 0x00, 0x02, b'i', b'd']);
    let cases = [
        ("MQIsdp level 3", frame(0x10, &body)),
        ("MQTT level 3", mqtt_level(3)),
        ("MQTT level 6", mqtt_level(6)),
    ];
    for (what, packet) in cases {
        let before = b.gw.protocol_errors("unsupported_protocol_version");
        let mut c = b.raw();
        c.write_raw(&packet);
        let got = c.raw_until_closed(WAIT);
        assert_eq!(
            got,
            [0x20, 0x02, 0x00, 0x01],
            "{what}: CONNACK return code 1 in 3.1.1 form, then close"
        );
        b.gw.wait_metric(
            "pulsegate_protocol_errors_total{kind=\"unsupported_protocol_version\"}",
            WAIT,
            |v| v == before + 1,
        );
        b.check_healthy();
    }
}

fn first_packet_not_connect(backend: &str) {
    let mut b = Bench::new(backend, &[]);
    let ping = [0xC0, 0x00];
    let c = b.raw();
    b.expect("PINGREQ first", c, &ping, "first_packet_not_connect", &[]);
    let publish = frame(0x30, b"\x00\x03a/bhello");
    let c = b.raw();
    b.expect("PUBLISH first", c, &publish, "first_packet_not_connect", &[]);
    let disconnect = [0xE0, 0x00];
    let c = b.raw();
    b.expect("DISCONNECT first", c, &disconnect, "first_packet_not_connect", &[]);
}

fn second_connect(backend: &str) {
    let mut b = Bench::new(backend, &[]);
    let c = b.connected(V5, "twice-v5");
    let again = ConnectOpts::new(V5, "twice-v5").encode();
    b.expect(
        "v5 second CONNECT",
        c,
        &again,
        "second_connect",
        &[Rx::Disconnect { reason: 0x82 }],
    );
    let c = b.connected(V311, "twice-v311");
    let again = ConnectOpts::new(V311, "twice-v311").encode();
    b.expect("3.1.1 second CONNECT", c, &again, "second_connect", &[]);
}

fn invalid_utf8_topic(backend: &str) {
    let mut b = Bench::new(backend, &[]);
    // v5: topic 0xC3 0x28 (invalid UTF-8), empty properties, payload "x".
    let v5 = frame(0x30, &[0x00, 0x02, 0xC3, 0x28, 0x00, b'x']);
    let c = b.connected(V5, "utf8-v5");
    b.expect("v5 bad topic", c, &v5, "malformed", &[Rx::Disconnect { reason: 0x81 }]);
    let v311 = frame(0x30, &[0x00, 0x02, 0xC3, 0x28, b'x']);
    let c = b.connected(V311, "utf8-v311");
    b.expect("3.1.1 bad topic", c, &v311, "malformed", &[]);
    // A surrogate code point encoded in UTF-8 (ED A0 80) is invalid too.
    let c = b.connected(V311, "utf8-surrogate");
    b.expect(
        "3.1.1 surrogate",
        c,
        &frame(0x30, &[0x00, 0x03, 0xED, 0xA0, 0x80, b'x']),
        "malformed",
        &[],
    );
}

fn reserved_packet_types(backend: &str) {
    let mut b = Bench::new(backend, &[]);
    for first in [0x00u8, 0xF0] {
        let packet = [first, 0x00];
        let c = b.raw();
        b.expect(
            &format!("type {} before CONNECT", first >> 4),
            c,
            &packet,
            "unsupported_packet",
            &[],
        );
        let c = b.connected(V311, &format!("reserved-{first:02x}-v311"));
        b.expect(
            &format!("type {} on 3.1.1", first >> 4),
            c,
            &packet,
            "unsupported_packet",
            &[],
        );
        let before = b.gw.protocol_errors("unsupported_packet");
        let mut c = b.connected(V5, &format!("reserved-{first:02x}-v5"));
        c.write_raw(&packet);
        let got = c.expect_closed(WAIT);
        assert!(
            matches!(got.as_slice(), [Rx::Disconnect { reason: 0x81 | 0x82 }]),
            "type {} on v5: want DISCONNECT malformed/protocol error, got {got:?}",
            first >> 4
        );
        b.gw.wait_metric(
            "pulsegate_protocol_errors_total{kind=\"unsupported_packet\"}",
            WAIT,
            |v| v == before + 1,
        );
        b.check_healthy();
    }
}

fn other_protocol_violations(backend: &str) {
    let mut b = Bench::new(backend, &[]);
    // Retained PUBLISH on v5: Retain Available is false.
    let retain = frame(0x31, b"\x00\x03a/b\x00x");
    let c = b.connected(V5, "retainer");
    b.expect(
        "v5 retain",
        c,
        &retain,
        "retain_not_supported",
        &[Rx::Disconnect { reason: 0x9A }],
    );
    // Topic alias on v5: Topic Alias Maximum is 0.
    let alias = frame(0x30, b"\x00\x03a/b\x03\x23\x00\x01x");
    let c = b.connected(V5, "aliaser");
    b.expect(
        "v5 topic alias",
        c,
        &alias,
        "topic_alias_invalid",
        &[Rx::Disconnect { reason: 0x94 }],
    );
    // A server-only packet (PINGRESP) from a device.
    let c = b.connected(V5, "impostor");
    b.expect(
        "v5 PINGRESP from device",
        c,
        &[0xD0, 0x00],
        "server_only_packet",
        &[Rx::Disconnect { reason: 0x82 }],
    );
    // A wildcard in a PUBLISH topic name.
    let c = b.connected(V311, "wildcard");
    b.expect(
        "3.1.1 wildcard topic",
        c,
        &frame(0x30, b"\x00\x03a/#x"),
        "malformed",
        &[],
    );

    // A PUBACK for an id never sent is counted but the connection stays.
    let before = b.gw.protocol_errors("unknown_packet_id");
    let mut c = b.connected(V5, "stray-ack");
    c.puback(777);
    b.gw.wait_metric(
        "pulsegate_protocol_errors_total{kind=\"unknown_packet_id\"}",
        WAIT,
        |v| v == before + 1,
    );
    b.gw.assert_healthy(&mut c);
}

fn garbage_burst(backend: &str) {
    let mut b = Bench::new(backend, &[]);
    let addr = b.gw.mqtt;
    let accepts0 = b.gw.metric_sum("pulsegate_accepts_total");
    std::thread::scope(|s| {
        for t in 0..8u64 {
            s.spawn(move || {
                let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15 ^ ((t + 1) * 7919));
                for _ in 0..25 {
                    let mut sock = std::net::TcpStream::connect_timeout(&addr, WAIT).expect("connect");
                    sock.set_write_timeout(Some(WAIT)).ok();
                    let n = 1 + (rng.next_u64() % 512) as usize;
                    let bytes = rng.bytes(n);
                    let _ = std::io::Write::write_all(&mut sock, &bytes);
                }
            });
        }
    });
    b.gw.wait_metric("pulsegate_accepts_total", WAIT, |v| v >= accepts0 + 200);
    // Every garbage connection is gone (closed by the gateway or by us), only the healthy remain.
    b.gw.wait_connections(b.healthy.len() as u64, Duration::from_secs(5));
    b.check_healthy();
    let text = b.gw.metrics();
    assert!(
        text.contains("pulsegate_protocol_errors_total"),
        "/metrics still answers"
    );
    let fresh = b.gw.connect_id(V311, "after-burst");
    drop(fresh);
}

both_backends!(
    garbage_http_request,
    five_byte_remaining_length,
    oversize_packet,
    truncated_connect_then_close,
    truncated_connect_with_immediate_fin,
    unsupported_protocol_levels,
    first_packet_not_connect,
    second_connect,
    invalid_utf8_topic,
    reserved_packet_types,
    other_protocol_violations,
    garbage_burst,
);
