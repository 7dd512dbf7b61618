//! Half-sent packets and bad client ids over real sockets, on both backends (issue 14).
//!
//! - Hoarders (CONNECT with keep-alive 0, then a PUBLISH announcing 262,000 bytes and all
//!   but its last byte) are closed within packet_complete_timeout_s plus slack, never
//!   before it; MQTT 5 ones hear DISCONNECT 0x97; the close counter moves; a packet that
//!   completes in time and an idle keep-alive-0 device are left alone.
//! - With a small per-shard budget (one shard), more hoarders close the largest holders
//!   (small ones stay), the gateway's RSS stays under a bound, and a legitimate device keeps
//!   working; one packet announced larger than the budget hears 0x95.
//! - Client ids `a/#`, `+`, `#`, with CR/LF, DEL or a C1 control, or over 256 bytes get
//!   CONNACK 0x85 (5.0) / 0x02 (3.1.1) and are counted; NUL (never valid in an MQTT string)
//!   is closed as malformed; an empty id is still assigned one.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pulsegate::protocol::mqtt::{ProtocolVersion, write_varint};

/// What the hoarders announce: the whole PUBLISH, header included.
const HOARD_PACKET_BYTES: usize = 262_000;

/// A QoS 0 PUBLISH of exactly `total` bytes on topic `t`, its last `missing` bytes cut off.
fn publish_cut(total: usize, missing: usize) -> Vec<u8> {
    // 1 type byte + 3 length bytes (total < 2 MB) + topic length 2 + topic 1.
    let remaining = total - 1 - 3;
    let mut p = vec![0x30];
    write_varint(&mut p, remaining as u32);
    assert_eq!(p.len(), 4, "3-byte remaining length");
    p.extend_from_slice(&[0x00, 0x01, b't']);
    p.resize(total - missing, b'x');
    p
}

/// A device that connects with keep-alive 0 and sends `bytes` of a packet it never ends.
fn hoarder(gw: &Gateway, version: ProtocolVersion, id: &str, bytes: &[u8]) -> Client {
    let (mut c, _) = gw.connect(&ConnectOpts::new(version, id).keepalive(0));
    c.write_raw(bytes);
    c
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc status")
}

fn hoarders_closed_at_the_packet_deadline(backend: &str) {
    raise_nofile();
    let timeout_s = 2;
    let gw = Gateway::start(backend, &["--packet-complete-timeout-s", &timeout_s.to_string()]);
    let mut healthy: Vec<Client> = gw
        .connect_on_every_shard(V5, "healthy")
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    let mut idle = gw.connect(&ConnectOpts::new(V311, "idle-ka0").keepalive(0)).0;
    let closes0 = gw.closes("partial_packet_timeout");
    let cut = publish_cut(HOARD_PACKET_BYTES, 1);
    let n = 40;
    let started = Instant::now();
    let mut hoarders: Vec<Client> = (0..n)
        .map(|i| {
            let v = if i % 2 == 0 { V5 } else { V311 };
            hoarder(&gw, v, &format!("hoard-{i}"), &cut)
        })
        .collect();
    let sent = started.elapsed();
    // A packet that straddles a second but completes inside the deadline is served.
    let mut slow = gw.connect(&ConnectOpts::new(V311, "slow-but-fine").keepalive(0)).0;
    let whole = {
        let mut p = vec![0x32];
        write_varint(&mut p, 2 + 1 + 2 + 1000);
        p.extend_from_slice(&[0x00, 0x01, b't', 0x00, 0x07]);
        p.resize(p.len() + 1000, b'y');
        p
    };
    slow.write_raw(&whole[..500]);
    std::thread::sleep(Duration::from_millis(1000));
    slow.write_raw(&whole[500..]);
    assert_eq!(
        slow.recv(WAIT),
        Ok(Rx::PubAck {
            packet_id: 7,
            reason: 0
        })
    );

    let slack = Duration::from_secs(3);
    for (i, c) in hoarders.iter_mut().enumerate() {
        let (got, at) = c.closed_at(Duration::from_secs(timeout_s) + slack + sent);
        let held = at.duration_since(started);
        assert!(
            held >= Duration::from_millis(timeout_s * 1000 - 500),
            "hoarder {i} closed after {held:?}, before the {timeout_s} s deadline"
        );
        let want: &[Rx] = if i % 2 == 0 {
            &[Rx::Disconnect { reason: 0x97 }]
        } else {
            &[]
        };
        assert_eq!(got, want, "hoarder {i}: packets before the close");
    }
    assert!(
        started.elapsed() <= Duration::from_secs(timeout_s) + slack + sent,
        "every hoarder gone within the deadline plus slack"
    );
    gw.wait_metric("pulsegate_closes_total{reason=\"partial_packet_timeout\"}", WAIT, |v| {
        v == closes0 + n as u64
    });
    gw.wait_metric("pulsegate_partial_packet_bytes", WAIT, |v| v == 0);
    // Idle with keep-alive 0 and no packet started: not a hoarder.
    idle.ping();
    assert_eq!(idle.recv(WAIT), Ok(Rx::PingResp), "an idle keep-alive-0 device stays");
    for c in &mut healthy {
        gw.assert_healthy(c);
    }
}

fn budget_closes_the_largest_holders(backend: &str) {
    raise_nofile();
    let budget_bytes: u64 = 1 << 20;
    let gw = Spawn::new(backend)
        .shards(1)
        .args(&[
            "--shard-partial-packet-bytes-max",
            &budget_bytes.to_string(),
            "--packet-complete-timeout-s",
            "600",
        ])
        .start();
    let mut legit = gw.connect_id(V5, "legit");
    let closes0 = gw.closes("partial_packet_budget");
    // Small holders first: 8 KB of a big packet each.
    let small_cut = publish_cut(HOARD_PACKET_BYTES, HOARD_PACKET_BYTES - 8 * 1024);
    let mut small: Vec<Client> = (0..5)
        .map(|i| hoarder(&gw, V5, &format!("small-{i}"), &small_cut))
        .collect();
    gw.assert_healthy(&mut legit);
    let rss0 = rss_kib(gw.pid());
    let cut = publish_cut(HOARD_PACKET_BYTES, 1);
    let n_big = 100;
    let mut big: Vec<Client> = Vec::with_capacity(n_big);
    for i in 0..n_big {
        let v = if i % 2 == 0 { V5 } else { V311 };
        big.push(hoarder(&gw, v, &format!("big-{i}"), &cut));
        if i % 25 == 0 {
            gw.assert_healthy(&mut legit);
        }
    }
    std::thread::sleep(QUIET);
    let rss1 = rss_kib(gw.pid());
    let growth_kib = rss1.saturating_sub(rss0);
    // Unbounded, 100 hoarders cost ~27 MB; the budget (1 MiB) plus allocator slack must hold.
    assert!(
        growth_kib < 8 * 1024,
        "RSS grew {growth_kib} KiB for {n_big} hoarders under a {budget_bytes}-byte budget"
    );
    let mut closed_big = 0;
    for (i, c) in big.iter_mut().enumerate() {
        match c.recv(QUIET) {
            Err(RecvError::Timeout) => {}
            got => {
                closed_big += 1;
                if i % 2 == 0 {
                    assert_eq!(got, Ok(Rx::Disconnect { reason: 0x97 }), "big-{i}");
                }
            }
        }
    }
    let held_max = (budget_bytes / (HOARD_PACKET_BYTES as u64 / 2)) as usize;
    assert!(
        n_big - closed_big <= held_max,
        "{} big hoarders still held under a {budget_bytes}-byte budget",
        n_big - closed_big
    );
    for (i, c) in small.iter_mut().enumerate() {
        assert_eq!(
            c.recv(QUIET),
            Err(RecvError::Timeout),
            "small-{i} is not the largest: kept"
        );
    }
    gw.wait_metric("pulsegate_closes_total{reason=\"partial_packet_budget\"}", WAIT, |v| {
        v == closes0 + closed_big as u64
    });
    let held = gw.metric("pulsegate_partial_packet_bytes{shard=\"0\"}");
    assert!(
        held <= budget_bytes,
        "{held} bytes held over a {budget_bytes}-byte budget"
    );
    gw.assert_healthy(&mut legit);
}

fn one_packet_over_the_budget_is_too_large(backend: &str) {
    let budget_bytes = 64 * 1024;
    let gw = Spawn::new(backend)
        .shards(1)
        .args(&["--shard-partial-packet-bytes-max", &budget_bytes.to_string()])
        .start();
    let mut legit = gw.connect_id(V5, "legit");
    let closes0 = gw.closes("partial_packet_budget");
    let mut c = hoarder(
        &gw,
        V5,
        "absurd",
        &publish_cut(HOARD_PACKET_BYTES, HOARD_PACKET_BYTES - 100 * 1024),
    );
    assert_eq!(c.expect_closed(WAIT), vec![Rx::Disconnect { reason: 0x95 }]);
    gw.wait_metric("pulsegate_closes_total{reason=\"partial_packet_budget\"}", WAIT, |v| {
        v == closes0 + 1
    });
    gw.assert_healthy(&mut legit);
}

fn bad_client_ids_are_refused(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    let long = "d".repeat(257);
    let bad = ["a/#", "+", "a\r\nb", "a\x7fb", "a\u{85}b", "#", long.as_str()];
    for version in [V5, V311] {
        for id in bad {
            let before = gw.protocol_errors("client_id_rejected");
            let mut c = Client::new(gw.tcp(), version);
            if version == V5 {
                let ack = c.handshake(&ConnectOpts::new(version, id));
                assert_eq!(ack.reason, 0x85, "MQTT 5 client id {id:?}");
                c.expect_closed(WAIT);
            } else {
                // The kit decodes 3.1.1 return codes into 5.0 reasons: check the wire bytes.
                c.write_raw(&ConnectOpts::new(version, id).encode());
                let wire = c.raw_until_closed(WAIT);
                assert_eq!(
                    wire,
                    [0x20, 0x02, 0x00, 0x02],
                    "3.1.1 client id {id:?}: identifier rejected"
                );
            }
            gw.wait_metric(
                "pulsegate_protocol_errors_total{kind=\"client_id_rejected\"}",
                WAIT,
                |v| v == before + 1,
            );
        }
    }
    // NUL is not allowed in any MQTT UTF-8 string: the codec refuses the CONNECT as
    // malformed (closed without CONNACK, counted), before any client id rule.
    for version in [V5, V311] {
        let before = gw.protocol_errors("malformed");
        let mut c = Client::new(gw.tcp(), version);
        c.write_raw(&ConnectOpts::new(version, "a\0b").encode());
        assert_eq!(c.expect_closed(WAIT), vec![], "{version:?} NUL in the client id");
        gw.wait_metric("pulsegate_protocol_errors_total{kind=\"malformed\"}", WAIT, |v| {
            v == before + 1
        });
    }
    // What devices use keeps working: the longest allowed id, punctuation, non-ASCII.
    for id in ["d".repeat(256), "dev-1.a_b:c@x".to_string(), "Gerät-日本".to_string()] {
        let mut c = gw.connect_id(V5, &id);
        gw.assert_healthy(&mut c);
    }
    // An empty id with clean start is still assigned one.
    let (mut c, ack) = gw.connect(&ConnectOpts::new(V5, ""));
    assert!(ack.assigned_client_identifier.is_some(), "{ack:?}");
    gw.assert_healthy(&mut c);
}

both_backends!(
    hoarders_closed_at_the_packet_deadline,
    budget_closes_the_largest_holders,
    one_packet_over_the_budget_is_too_large,
    bad_client_ids_are_refused,
);
