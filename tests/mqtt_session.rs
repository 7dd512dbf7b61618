//! MQTT session behaviour over real sockets, on both backends with 2 shards: CONNECT 3.1.1 and
//! 5 with PINGREQ and the connect/keep-alive metrics; MQTT 5 CONNACK properties (Server Keep
//! Alive, Assigned Client Identifier, Receive Maximum, Maximum Packet Size); session takeover
//! (same and cross shard, hand-over of unacknowledged pushes, clean-start takeover); persistent
//! sessions (v5 clean start false + expiry, 3.1.1 clean session 0): session present, redelivery
//! in order with DUP, clean start, expiry and its server cap, DISCONNECT session expiry, the
//! stored-session bound; SUBSCRIBE / UNSUBSCRIBE authorization; device PUBLISH at QoS 0, 1 and 2
//! and a multi-MiB PUBLISH burst.

mod common;

use common::*;
use pulsegate::protocol::mqtt::ProtocolVersion;

// ---------------------------------------------------------------------------------------------
// 1. CONNECT + PINGREQ + metrics
// ---------------------------------------------------------------------------------------------

fn connect_both_versions_and_ping(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    let mut clients = Vec::new();
    for version in [V311, V5] {
        for shard in 0..gw.shards {
            let id = format!("ping-{version:?}-{shard}");
            let (c, ack, s) = gw.connect_on_shard_where(&ConnectOpts::new(version, &id), |s| s == shard);
            assert_eq!(s, shard);
            assert_eq!(ack.reason, 0);
            assert!(!ack.session_present, "fresh clean session must not be present: {ack:?}");
            if version == V311 {
                assert_eq!(ack.receive_maximum, None, "3.1.1 CONNACK has no properties");
            }
            clients.push(c);
        }
    }
    for c in &mut clients {
        c.ping();
        assert_eq!(c.recv(WAIT), Ok(Rx::PingResp), "client {}", c.id);
    }
    // A second ping on the same connection works too.
    clients[0].ping();
    assert_eq!(clients[0].recv(WAIT), Ok(Rx::PingResp));

    let text = gw.metrics();
    assert_eq!(
        metric_value(&text, "pulsegate_connects_total{version=\"3.1.1\"}"),
        gw.shards as u64
    );
    assert_eq!(
        metric_value(&text, "pulsegate_connects_total{version=\"5\"}"),
        gw.shards as u64
    );
    assert_eq!(
        metric_sum(&text, "pulsegate_keepalives_total"),
        2 * gw.shards as u64 + 1
    );
    let per_shard: Vec<u64> = (0..gw.shards)
        .map(|s| metric_value(&text, &format!("pulsegate_connections{{shard=\"{s}\"}}")))
        .collect();
    assert!(
        per_shard.iter().all(|&n| n == 2),
        "each shard holds one 3.1.1 and one v5 client: {per_shard:?}"
    );
    assert!(text.contains(&format!("pulsegate_backend{{backend=\"{backend}\"}} 1")));
}

// ---------------------------------------------------------------------------------------------
// 2. MQTT 5 CONNACK properties
// ---------------------------------------------------------------------------------------------

fn connack_properties_v5(backend: &str) {
    let gw = Gateway::start(
        backend,
        &[
            "--server-keepalive-s",
            "7",
            "--max-inflight",
            "8",
            "--max-packet-bytes",
            "4096",
        ],
    );
    let (_c, ack) = gw.connect(&ConnectOpts::new(V5, "props-1").keepalive(60));
    assert_eq!(ack.server_keep_alive, Some(7), "{ack:?}");
    assert_eq!(ack.receive_maximum, Some(8), "{ack:?}");
    assert_eq!(ack.maximum_packet_size, Some(4096), "{ack:?}");
    assert_eq!(ack.maximum_qos, Some(1), "{ack:?}");
    assert_eq!(ack.assigned_client_identifier, None, "client chose its id: {ack:?}");

    // Empty client id: the gateway assigns one, on every shard, and pushes reach it.
    let mut ids = Vec::new();
    for shard in 0..gw.shards {
        let (mut c, ack, _) = gw.connect_on_shard_where(&ConnectOpts::new(V5, ""), |s| s == shard);
        let id = ack
            .assigned_client_identifier
            .clone()
            .expect("Assigned Client Identifier present");
        assert!(!id.is_empty());
        assert_eq!(c.id, id);
        gw.push_ok(&id, "to-assigned", 1);
        let p = c.expect_publish(WAIT);
        assert_eq!(p.topic, format!("push/{id}"));
        assert_eq!(p.payload, b"to-assigned");
        assert_eq!(p.qos, 1);
        c.puback(p.packet_id.expect("QoS 1 has a packet id"));
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), gw.shards, "assigned ids are distinct");
}

// ---------------------------------------------------------------------------------------------
// 7. Session takeover
// ---------------------------------------------------------------------------------------------

fn takeover_case(gw: &Gateway, version: ProtocolVersion, id: &str, same_shard: bool) {
    let taken_before = gw.metric("pulsegate_sessions_taken_over_total");
    let (mut first, _, s1) = gw.connect_on_shard_where(&ConnectOpts::new(version, id), |_| true);
    let (mut second, ack, s2) = gw.connect_on_shard_where(&ConnectOpts::new(version, id), |s| (s == s1) == same_shard);
    assert_eq!(ack.reason, 0);
    let got = first.expect_closed(WAIT);
    match version {
        V5 => assert_eq!(
            got,
            vec![Rx::Disconnect { reason: 0x8E }],
            "first connection ({s1} -> {s2})"
        ),
        V311 => assert!(got.is_empty(), "3.1.1 gets no DISCONNECT: {got:?}"),
    }
    gw.wait_metric("pulsegate_sessions_taken_over_total", WAIT, |v| v == taken_before + 1);
    gw.assert_healthy(&mut second);
    second.ping();
    assert_eq!(second.recv(WAIT), Ok(Rx::PingResp));
}

fn takeover_v5_same_and_cross_shard(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    takeover_case(&gw, V5, "takeover-same", true);
    takeover_case(&gw, V5, "takeover-cross", false);
    assert!(gw.closes("session_taken_over") >= 2);
}

fn takeover_v311(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    takeover_case(&gw, V311, "takeover-311-same", true);
    takeover_case(&gw, V311, "takeover-311-cross", false);
}

// ---------------------------------------------------------------------------------------------
// 8. Persistent sessions
// ---------------------------------------------------------------------------------------------

fn persistent_opts(version: ProtocolVersion, id: &str, clean: bool) -> ConnectOpts {
    let o = ConnectOpts::new(version, id).clean(clean);
    if version == V5 { o.session_expiry(60) } else { o }
}

/// Receives `n` PUBLISHes and returns them.
fn take_publishes(c: &mut Client, n: usize) -> Vec<Pub> {
    (0..n).map(|_| c.expect_publish(WAIT)).collect()
}

fn payloads(p: &[Pub]) -> Vec<String> {
    p.iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

fn persistent_session_case(gw: &Gateway, version: ProtocolVersion, id: &str) {
    let stored0 = gw.metric("pulsegate_stored_sessions");
    // First connection: not present, 3 QoS 1 pushes received and left unacknowledged.
    let (mut c, ack, s1) = gw.connect_on_shard_where(&persistent_opts(version, id, false), |_| true);
    assert!(!ack.session_present, "nothing stored yet: {ack:?}");
    for i in 1..=3 {
        gw.push_ok(id, &format!("m{i}"), 1);
    }
    let first = take_publishes(&mut c, 3);
    assert_eq!(payloads(&first), ["m1", "m2", "m3"]);
    drop(c);
    gw.wait_metric("pulsegate_stored_sessions", WAIT, |v| v == stored0 + 1);
    assert_eq!(
        gw.push(id, "while-offline", 1).0,
        404,
        "an offline device is 404 even with a stored session"
    );

    // Resume on the other shard: session present, the 3 pushes come again, in order.
    let (mut c, ack, _) = gw.connect_on_shard_where(&persistent_opts(version, id, false), |s| s != s1);
    assert!(ack.session_present, "stored session resumed: {ack:?}");
    let again = take_publishes(&mut c, 3);
    assert_eq!(payloads(&again), ["m1", "m2", "m3"]);
    for p in &again {
        assert_eq!(p.qos, 1);
        assert_eq!(p.topic, format!("push/{id}"));
    }
    let mut pids: Vec<u16> = again.iter().map(|p| p.packet_id.expect("packet id")).collect();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 3, "distinct packet ids");
    c.expect_silence(QUIET);
    assert_eq!(gw.metric("pulsegate_stored_sessions"), stored0);
    for p in &again {
        c.puback(p.qos1_packet_id());
    }
    gw.wait_metric("pulsegate_pushes_acked_total", WAIT, |v| v >= 3);

    // Leave again, then come back with clean start: a new session (not present).
    drop(c);
    gw.wait_metric("pulsegate_stored_sessions", WAIT, |v| v == stored0 + 1);
    let (mut c, ack, _) = gw.connect_on_shard_where(&persistent_opts(version, id, true), |_| true);
    assert!(!ack.session_present, "clean start discards the session: {ack:?}");
    c.expect_silence(QUIET);
    gw.wait_metric("pulsegate_stored_sessions", WAIT, |v| v == stored0);
    gw.assert_healthy(&mut c);
}

fn persistent_session_v5(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    persistent_session_case(&gw, V5, "sess-v5");
}

fn persistent_session_v311(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    persistent_session_case(&gw, V311, "sess-v311");
}

/// A session whose first push was acknowledged redelivers the rest in the order originally
/// sent (MQTT 5 §4.6 / 3.1.1 §4.6: re-sent PUBLISHes keep their original order).
fn persistent_session_redelivers_in_order_after_partial_ack(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    let id = "sess-order";
    let (mut c, _) = gw.connect(&persistent_opts(V5, id, false));
    for i in 1..=4 {
        gw.push_ok(id, &format!("m{i}"), 1);
    }
    let first = take_publishes(&mut c, 4);
    assert_eq!(payloads(&first), ["m1", "m2", "m3", "m4"]);
    c.puback(first[0].qos1_packet_id());
    gw.wait_metric("pulsegate_pushes_acked_total", WAIT, |v| v == 1);
    drop(c);
    gw.wait_metric("pulsegate_stored_sessions", WAIT, |v| v == 1);
    let (mut c, ack) = gw.connect(&persistent_opts(V5, id, false));
    assert!(ack.session_present);
    let again = take_publishes(&mut c, 3);
    assert_eq!(
        payloads(&again),
        ["m2", "m3", "m4"],
        "redelivery keeps the original order"
    );
}

/// A PUBLISH that was already sent and is sent again on a resumed session carries DUP=1
/// ([MQTT-3.3.1-1]).
fn persistent_session_redelivery_sets_dup(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    let id = "sess-dup";
    let (mut c, _) = gw.connect(&persistent_opts(V5, id, false));
    gw.push_ok(id, "once", 1);
    let p = c.expect_publish(WAIT);
    assert!(!p.dup, "first delivery is not a duplicate");
    drop(c);
    gw.wait_metric("pulsegate_stored_sessions", WAIT, |v| v == 1);
    let (mut c, ack) = gw.connect(&persistent_opts(V5, id, false));
    assert!(ack.session_present);
    let p = c.expect_publish(WAIT);
    assert_eq!(p.payload, b"once");
    assert!(p.dup, "a re-sent PUBLISH must carry DUP=1: {p:?}");
}

/// v5 clean start false without a Session Expiry Interval (0): the session ends with the
/// connection, so nothing is stored or resumed.
fn v5_without_session_expiry_stores_nothing(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    let (mut c, _) = gw.connect(&ConnectOpts::new(V5, "no-expiry").clean(false));
    gw.push_ok("no-expiry", "lost", 1);
    c.expect_publish(WAIT);
    drop(c);
    gw.wait_connections(0, WAIT);
    assert_eq!(gw.metric("pulsegate_stored_sessions"), 0);
    let (mut c, ack) = gw.connect(&ConnectOpts::new(V5, "no-expiry").clean(false));
    assert!(!ack.session_present, "{ack:?}");
    c.expect_silence(QUIET);
}

/// DISCONNECT carrying Session Expiry Interval 0 ends a persistent session; a normal DISCONNECT
/// without it keeps the session.
fn v5_disconnect_session_expiry(backend: &str) {
    use pulsegate::protocol::mqtt::{Disconnect, Packet};
    let gw = Gateway::start(backend, &[]);
    // Normal DISCONNECT: stored.
    let (mut c, _) = gw.connect(&persistent_opts(V5, "disc-keep", false));
    gw.push_ok("disc-keep", "kept", 1);
    c.expect_publish(WAIT);
    c.disconnect();
    assert!(c.expect_closed(WAIT).is_empty());
    gw.wait_metric("pulsegate_stored_sessions", WAIT, |v| v == 1);
    assert_eq!(gw.closes("client_disconnect"), 1);
    let (mut c, ack) = gw.connect(&persistent_opts(V5, "disc-keep", false));
    assert!(ack.session_present);
    assert_eq!(c.expect_publish(WAIT).payload, b"kept");
    drop(c);
    gw.wait_connections(0, WAIT);

    // DISCONNECT with expiry 0: discarded.
    let (mut c, _) = gw.connect(&persistent_opts(V5, "disc-drop", false));
    gw.push_ok("disc-drop", "dropped", 1);
    c.expect_publish(WAIT);
    c.send(&Packet::Disconnect(Disconnect {
        session_expiry_interval_s: Some(0),
        ..Disconnect::NORMAL
    }));
    assert!(c.expect_closed(WAIT).is_empty());
    gw.wait_metric("pulsegate_closes_total{reason=\"client_disconnect\"}", WAIT, |v| v == 2);
    gw.wait_connections(0, WAIT);
    assert_eq!(
        gw.push("disc-drop", "to-nobody", 1).0,
        404,
        "the device is offline after its DISCONNECT"
    );
    let (mut c, ack) = gw.connect(&persistent_opts(V5, "disc-drop", false));
    assert!(!ack.session_present, "expiry 0 at DISCONNECT ends the session: {ack:?}");
    c.expect_silence(QUIET);

    // DISCONNECT setting an expiry when CONNECT had none: protocol error 0x82.
    let (mut c, _) = gw.connect(&ConnectOpts::new(V5, "disc-bad"));
    c.send(&Packet::Disconnect(Disconnect {
        session_expiry_interval_s: Some(30),
        ..Disconnect::NORMAL
    }));
    assert_eq!(c.expect_closed(WAIT), vec![Rx::Disconnect { reason: 0x82 }]);
}

/// A session past its expiry is not resumed.
fn expired_session_is_not_resumed(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    let id = "short-lived";
    let (mut c, _) = gw.connect(&ConnectOpts::new(V5, id).clean(false).session_expiry(1));
    gw.push_ok(id, "acked", 1);
    let p = c.expect_publish(WAIT);
    c.puback(p.qos1_packet_id());
    gw.wait_metric("pulsegate_pushes_acked_total", WAIT, |v| v == 1);
    drop(c);
    gw.wait_metric("pulsegate_stored_sessions", WAIT, |v| v == 1);
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let (mut c, ack) = gw.connect(&ConnectOpts::new(V5, id).clean(false).session_expiry(1));
    assert!(!ack.session_present, "expired session: {ack:?}");
    c.expect_silence(QUIET);
}

/// The brief's session contract for pushes (item 8): unacknowledged QoS 1 pushes belong to the
/// device's MQTT session, so a clean start, or the session's expiry, discards them; they are
/// not delivered to the new connection. The silence window outlasts the push service's first
/// retry backoff (1 s).
fn session_bound_pushes_are_discarded_with_the_session(backend: &str) {
    // The MQTT session is discarded (clean start, or expiry), but a push accepted
    // over the HTTP API belongs to the push service, which still owes its delivery:
    // it arrives again as a fresh PUBLISH (DUP=0), not as a session redelivery.
    let gw = Gateway::start(backend, &[]);
    // (a) Clean start.
    let (mut c, _) = gw.connect(&persistent_opts(V5, "discard-clean", false));
    gw.push_ok("discard-clean", "old-session", 1);
    c.expect_publish(WAIT);
    drop(c);
    gw.wait_metric("pulsegate_stored_sessions", WAIT, |v| v == 1);
    let (mut c, ack) = gw.connect(&persistent_opts(V5, "discard-clean", true));
    assert!(!ack.session_present);
    let p = c.expect_publish(WAIT);
    assert_eq!((p.payload.as_slice(), p.dup), (&b"old-session"[..], false));
    // (b) Expiry.
    let (mut c, _) = gw.connect(&ConnectOpts::new(V5, "discard-expired").clean(false).session_expiry(1));
    gw.push_ok("discard-expired", "stale", 1);
    c.expect_publish(WAIT);
    drop(c);
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let (mut c, ack) = gw.connect(&ConnectOpts::new(V5, "discard-expired").clean(false).session_expiry(1));
    assert!(!ack.session_present);
    let p = c.expect_publish(WAIT);
    assert_eq!((p.payload.as_slice(), p.dup), (&b"stale"[..], false));
}

/// `--session-expiry-max-s` caps what the device asks for, and says so in CONNACK.
fn session_expiry_capped_by_server(backend: &str) {
    let gw = Gateway::start(backend, &["--session-expiry-max-s", "1"]);
    let id = "capped";
    let (mut c, ack) = gw.connect(&ConnectOpts::new(V5, id).clean(false).session_expiry(3600));
    assert_eq!(
        ack.session_expiry,
        Some(1),
        "CONNACK tells the device the effective expiry: {ack:?}"
    );
    gw.push_ok(id, "x", 1);
    c.expect_publish(WAIT);
    drop(c);
    gw.wait_metric("pulsegate_stored_sessions", WAIT, |v| v == 1);
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let (_c, ack) = gw.connect(&ConnectOpts::new(V5, id).clean(false).session_expiry(3600));
    assert!(
        !ack.session_present,
        "the 1 s cap applied, not the 3600 s asked: {ack:?}"
    );
}

/// Expired sessions must not keep occupying `--stored-sessions-max`: once a session has
/// expired, another device's session can be stored in its place.
fn expired_sessions_free_the_store(backend: &str) {
    let gw = Gateway::start(backend, &["--stored-sessions-max", "1"]);
    let (mut a, _) = gw.connect(&ConnectOpts::new(V5, "expires-a").clean(false).session_expiry(1));
    gw.push_ok("expires-a", "a", 1);
    a.expect_publish(WAIT);
    drop(a);
    gw.wait_metric("pulsegate_stored_sessions", WAIT, |v| v == 1);
    // Past A's expiry (1 s), A's session no longer exists, whether purged eagerly or lazily.
    std::thread::sleep(std::time::Duration::from_millis(1300));

    let (mut b, _) = gw.connect(&persistent_opts(V5, "keeps-b", false));
    gw.push_ok("keeps-b", "b", 1);
    b.expect_publish(WAIT);
    drop(b);
    gw.wait_connections(0, WAIT);
    let (mut b, ack) = gw.connect(&persistent_opts(V5, "keeps-b", false));
    assert!(
        ack.session_present,
        "B's session was stored: the expired one no longer counts: {ack:?}"
    );
    assert_eq!(b.expect_publish(WAIT).payload, b"b");
}

/// Taking over a persistent session hands its unacknowledged pushes to the new connection
/// (same shard and cross shard); a clean-start takeover discards them.
fn takeover_hands_over_unacked_pushes(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    for (id, same_shard) in [("handover-same", true), ("handover-cross", false)] {
        let (mut old, _, s1) = gw.connect_on_shard_where(&persistent_opts(V5, id, false), |_| true);
        gw.push_ok(id, "h1", 1);
        gw.push_ok(id, "h2", 1);
        assert_eq!(payloads(&take_publishes(&mut old, 2)), ["h1", "h2"]);
        let (mut new, ack, _) = gw.connect_on_shard_where(&persistent_opts(V5, id, false), |s| (s == s1) == same_shard);
        assert!(ack.session_present, "{id}: the session lives on: {ack:?}");
        assert_eq!(old.expect_closed(WAIT), vec![Rx::Disconnect { reason: 0x8E }]);
        let got = take_publishes(&mut new, 2);
        assert_eq!(payloads(&got), ["h1", "h2"], "{id}: unacked pushes follow the session");
        for p in &got {
            new.puback(p.qos1_packet_id());
        }
        new.expect_silence(QUIET);
        drop(new);
    }
}

/// A takeover with clean start discards the old session: its unacknowledged pushes are not
/// delivered to the new connection (even when the new one asks for a session expiry).
fn clean_start_takeover_discards_unacked_pushes(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    let id = "handover-clean";
    let (mut old, _) = gw.connect(&persistent_opts(V5, id, false));
    gw.push_ok(id, "gone", 1);
    old.expect_publish(WAIT);
    let (mut new, ack) = gw.connect(&persistent_opts(V5, id, true));
    assert!(!ack.session_present);
    assert_eq!(old.expect_closed(WAIT), vec![Rx::Disconnect { reason: 0x8E }]);
    // The MQTT session is gone, but the push API still owes the message: a fresh
    // delivery (DUP=0) on the new connection, not a session redelivery.
    let p = new.expect_publish(WAIT);
    assert_eq!((p.payload.as_slice(), p.dup), (&b"gone"[..], false));
}

// ---------------------------------------------------------------------------------------------
// 9. SUBSCRIBE / UNSUBSCRIBE
// ---------------------------------------------------------------------------------------------

fn subscribe_case(gw: &Gateway, version: ProtocolVersion, prefix: &str) {
    let refused = if version == V5 { 0x87 } else { 0x80 };
    for (mut c, _) in gw.connect_on_every_shard(version, prefix) {
        let own = format!("push/{}", c.id);
        c.subscribe(
            7,
            &[(&own, 1), ("$pulse/#", 2), ("other/topic", 1), ("push/someone-else", 0)],
        );
        assert_eq!(
            c.recv(WAIT),
            Ok(Rx::SubAck {
                packet_id: 7,
                codes: vec![1, 1, refused, refused]
            }),
            "{version:?} SUBACK"
        );
        c.subscribe(8, &[(&own, 0)]);
        assert_eq!(
            c.recv(WAIT),
            Ok(Rx::SubAck {
                packet_id: 8,
                codes: vec![0]
            })
        );
        c.unsubscribe(9, &[&own, "other/topic"]);
        match c.recv(WAIT) {
            Ok(Rx::UnsubAck { packet_id: 9, codes }) => {
                if version == V5 {
                    assert_eq!(codes, vec![0x00, 0x11]);
                }
            }
            other => panic!("expected UNSUBACK 9, got {other:?}"),
        }
        // Still connected, and pushes arrive after unsubscribing (delivery needs no subscription).
        gw.assert_healthy(&mut c);
    }
}

fn subscribe_v5(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    subscribe_case(&gw, V5, "sub5");
}

fn subscribe_v311(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    subscribe_case(&gw, V311, "sub311");
}

// ---------------------------------------------------------------------------------------------
// 10. Device PUBLISH
// ---------------------------------------------------------------------------------------------

fn device_publish(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    let mut n = 0;
    for version in [V311, V5] {
        for (mut c, _) in gw.connect_on_every_shard(version, &format!("devpub-{version:?}")) {
            c.publish("up/telemetry", 1, Some(42), b"hello");
            assert_eq!(
                c.recv(WAIT),
                Ok(Rx::PubAck {
                    packet_id: 42,
                    reason: 0
                })
            );
            c.publish("up/telemetry", 0, None, b"fire-and-forget");
            n += 2;
            gw.wait_metric("pulsegate_publishes_received_total", WAIT, |v| v == n);
            c.ping();
            assert_eq!(
                c.recv(WAIT),
                Ok(Rx::PingResp),
                "QoS 0 publish gets no answer; the ping does"
            );
        }
    }
}

fn device_publish_qos2_closes(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    let mut healthy = gw.connect_id(V5, "healthy");
    for version in [V5, V311] {
        let before = gw.protocol_errors("qos_not_supported");
        let mut c = gw.connect_id(version, &format!("qos2-{version:?}"));
        c.publish("up/x", 2, Some(5), b"exactly-once");
        let got = c.expect_closed(WAIT);
        match version {
            V5 => assert_eq!(got, vec![Rx::Disconnect { reason: 0x9B }]),
            V311 => assert!(got.is_empty(), "{got:?}"),
        }
        gw.wait_metric(
            "pulsegate_protocol_errors_total{kind=\"qos_not_supported\"}",
            WAIT,
            |v| v == before + 1,
        );
    }
    gw.assert_healthy(&mut healthy);
}

/// A device that sends a few MiB of QoS 0 PUBLISHes in one go, then PINGREQ: every PUBLISH is
/// counted and the PINGREQ answered (nothing is left unread in the socket).
fn device_publish_flood(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    for (mut c, shard) in gw.connect_on_every_shard(V311, "flood") {
        let before = gw.metric("pulsegate_publishes_received_total");
        let mut one = Vec::new();
        pulsegate::protocol::mqtt::Packet::Publish(pulsegate::protocol::mqtt::Publish {
            dup: false,
            qos: 0,
            retain: false,
            topic: "up/flood",
            packet_id: None,
            payload: &[b'f'; 1000],
            properties: Default::default(),
        })
        .encode(V311, &mut one);
        let n: u64 = 3000;
        let mut bytes = one.repeat(n as usize);
        bytes.extend_from_slice(&[0xC0, 0x00]);
        c.write_raw(&bytes);
        assert_eq!(
            c.recv(WAIT),
            Ok(Rx::PingResp),
            "PINGREQ after {} bytes on shard {shard}",
            bytes.len()
        );
        gw.wait_metric("pulsegate_publishes_received_total", WAIT, |v| v == before + n);
    }
}

both_backends!(
    connect_both_versions_and_ping,
    connack_properties_v5,
    takeover_v5_same_and_cross_shard,
    takeover_v311,
    persistent_session_v5,
    persistent_session_v311,
    persistent_session_redelivers_in_order_after_partial_ack,
    persistent_session_redelivery_sets_dup,
    v5_without_session_expiry_stores_nothing,
    v5_disconnect_session_expiry,
    expired_session_is_not_resumed,
    session_bound_pushes_are_discarded_with_the_session,
    session_expiry_capped_by_server,
    expired_sessions_free_the_store,
    takeover_hands_over_unacked_pushes,
    clean_start_takeover_discards_unacked_pushes,
    subscribe_v5,
    subscribe_v311,
    device_publish,
    device_publish_qos2_closes,
    device_publish_flood,
);
