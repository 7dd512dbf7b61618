//! Session tests with a simulated clock and a scripted server built on the gateway's codec.
//! Owns: the session's behaviour checks. Must never: open sockets or sleep (time is simulated).

use super::*;
use crate::protocol::mqtt::{ConnAckProperties, PublishProperties};

const V: ProtocolVersion = ProtocolVersion::V5;

fn cfg(policy: HeartbeatPolicy) -> SessionConfig {
    let mut c = SessionConfig::new("dev-1", policy.max_s);
    c.heartbeat = policy;
    c.backoff = BackoffPolicy::LOADGEN;
    c
}

/// Packet types (and CONNECT keep-alive / PUBACK id) the session wrote.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    Connect { keepalive_s: u16, client_id: String },
    PubAck(u16),
    PingReq,
    Disconnect,
}

fn written(s: &mut Session) -> Vec<Out> {
    let bytes = s.take_output();
    let mut at = 0;
    let mut v = Vec::new();
    while at < bytes.len() {
        let h = check_frame(&bytes[at..], u32::MAX).expect("session writes whole frames");
        let frame = &bytes[at..at + h.total_len()];
        at += h.total_len();
        v.push(match decode_packet(frame, V).expect("session writes valid packets") {
            Packet::Connect(c) => Out::Connect {
                keepalive_s: c.keepalive_s,
                client_id: c.client_id.to_string(),
            },
            Packet::PubAck(a) => Out::PubAck(a.packet_id),
            Packet::PingReq => Out::PingReq,
            Packet::Disconnect(_) => Out::Disconnect,
            other => panic!("a device does not send {other:?}"),
        });
    }
    v
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.next_event()).collect()
}

fn connack(reason: u8, server_keep_alive_s: Option<u16>, server_reference: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    ConnAck {
        session_present: false,
        reason,
        properties: ConnAckProperties {
            server_keep_alive_s,
            server_reference,
            ..ConnAckProperties::default()
        },
    }
    .encode(V, &mut out);
    out
}

fn publish(topic: &str, packet_id: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Publish {
        dup: false,
        qos: u8::from(packet_id.is_some()),
        retain: false,
        topic,
        packet_id,
        payload,
        properties: PublishProperties::default(),
    }
    .encode(V, &mut out);
    out
}

fn disconnect(reason: u8, server_reference: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    Disconnect {
        reason,
        session_expiry_interval_s: None,
        reason_string: None,
        server_reference,
    }
    .encode(V, &mut out);
    out
}

fn pingresp() -> Vec<u8> {
    let mut out = Vec::new();
    Packet::PingResp.encode(V, &mut out);
    out
}

/// A connected session (fixed 60 s heartbeat) at t = `at_ms`.
fn connected(policy: HeartbeatPolicy, at_ms: u64) -> Session {
    let mut s = Session::new(cfg(policy), "127.0.0.1:1883", None).unwrap();
    s.on_transport_open(at_ms);
    written(&mut s);
    s.on_bytes(at_ms, &connack(0, None, None));
    assert_eq!(s.phase(), Phase::Connected);
    events(&mut s);
    s
}

fn closed(evs: &[Event]) -> Option<(CloseCause, Reconnect)> {
    evs.iter().find_map(|e| match e {
        Event::Closed { cause, next } => Some((*cause, next.clone())),
        _ => None,
    })
}

#[test]
fn connect_then_ping_on_expiry_and_timer_restarts_on_every_sent_packet() {
    let mut s = Session::new(cfg(HeartbeatPolicy::fixed(60)), "127.0.0.1:1883", None).unwrap();
    assert_eq!(s.next_deadline_ms(), NEVER_MS);
    s.on_transport_open(0);
    assert_eq!(
        written(&mut s),
        [Out::Connect {
            keepalive_s: 60,
            client_id: "dev-1".into()
        }]
    );
    assert_eq!(s.next_deadline_ms(), 10_000, "CONNACK timeout");
    // CONNACK split over two reads.
    let ack = connack(0, None, None);
    s.on_bytes(5, &ack[..2]);
    assert_eq!(s.phase(), Phase::AwaitConnack);
    s.on_bytes(10, &ack[2..]);
    assert_eq!(
        events(&mut s),
        [Event::Connected {
            keepalive_s: 60,
            session_present: false
        }]
    );
    assert_eq!(s.next_deadline_ms(), 60_010);
    // A QoS 1 push at 30 s: PUBACK, and the timer restarts from it.
    s.on_bytes(30_000, &publish("push/dev-1", Some(7), b"hello"));
    assert_eq!(written(&mut s), [Out::PubAck(7)]);
    assert_eq!(
        events(&mut s),
        [Event::Push {
            topic: "push/dev-1".into(),
            payload: b"hello".to_vec(),
            qos: 1
        }]
    );
    assert_eq!(s.next_deadline_ms(), 90_000);
    // A QoS 0 push sends nothing and restarts nothing.
    s.on_bytes(40_000, &publish("push/dev-1", None, b"q0"));
    assert!(written(&mut s).is_empty());
    assert_eq!(s.next_deadline_ms(), 90_000);
    s.poll(89_999);
    assert!(written(&mut s).is_empty());
    s.poll(90_000);
    assert_eq!(written(&mut s), [Out::PingReq]);
    s.on_bytes(90_001, &pingresp());
    let evs = events(&mut s);
    assert!(
        evs.contains(&Event::PingSent) && evs.contains(&Event::PingAnswered),
        "{evs:?}"
    );
    assert_eq!(s.next_deadline_ms(), 150_000);
    // No PINGRESP this time: ping timeout one period later.
    s.poll(150_000);
    assert_eq!(written(&mut s), [Out::PingReq]);
    s.poll(210_000);
    let (cause, next) = closed(&events(&mut s)).expect("closed");
    assert_eq!(cause, CloseCause::PingTimeout);
    assert_eq!(next.server, "127.0.0.1:1883");
    assert_eq!(s.phase(), Phase::Offline);
}

#[test]
fn keepalive_configuration_reinitializes_the_timer_and_the_next_keepalive_follows_it() {
    let mut s = connected(HeartbeatPolicy::fixed(20), 0);
    // Synchronized by a push at 5 s; the configuration arrives at 12.5 s.
    s.on_bytes(5_000, &publish("push/dev-1", Some(1), b"x"));
    written(&mut s);
    events(&mut s);
    assert_eq!(s.next_deadline_ms(), 25_000);
    s.on_bytes(
        12_500,
        &publish("$pulse/keepalive", Some(2), br#"{"keepalive_s":20,"offset_ms":0}"#),
    );
    assert_eq!(written(&mut s), [Out::PubAck(2)], "acknowledged like a push");
    assert_eq!(
        events(&mut s),
        [Event::KeepAliveConfigured {
            period_s: 20,
            offset_ms: 0
        }]
    );
    assert_eq!(s.next_deadline_ms(), 32_500);
    s.poll(25_000);
    assert!(written(&mut s).is_empty(), "the old synchronized deadline is gone");
    s.poll(32_500);
    assert_eq!(written(&mut s), [Out::PingReq]);
    // With an offset, and a period longer than the device's own: the device keeps its own.
    s.on_bytes(33_000, &pingresp());
    s.on_bytes(
        40_000,
        &publish("$pulse/keepalive", Some(3), br#"{"keepalive_s":60,"offset_ms":1500}"#),
    );
    written(&mut s);
    events(&mut s);
    assert_eq!(s.next_deadline_ms(), 61_500);
    // A control message with a bad payload is acknowledged and reported, not acted on.
    s.on_bytes(41_000, &publish("$pulse/keepalive", Some(4), b"30"));
    assert_eq!(written(&mut s), [Out::PubAck(4)]);
    assert!(matches!(
        events(&mut s)[..],
        [Event::ControlIgnored {
            error: ControlError::BadPayload,
            ..
        }]
    ));
}

#[test]
fn heartbeat_adjustment_is_capped_at_the_optimal_value() {
    let policy = HeartbeatPolicy {
        min_s: 10,
        step_s: 10,
        max_s: 40,
    };
    let stored = StoredState {
        heartbeat_s: 10,
        optimal: false,
        server: "127.0.0.1:1883".into(),
        location: String::new(),
        mcc_mnc: String::new(),
    };
    // Optimal value known: 30 s; running at 20 s.
    let mut s = Session::new(cfg(policy), "127.0.0.1:1883", Some(&stored)).unwrap();
    s.hb = Heartbeat::resume(&policy, 30, true);
    s.hb.on_silent_death(&policy); // the path got stricter: optimal 20 s
    s.on_transport_open(0);
    assert_eq!(
        written(&mut s),
        [Out::Connect {
            keepalive_s: 20,
            client_id: "dev-1".into()
        }]
    );
    s.on_bytes(0, &connack(0, None, None));
    events(&mut s);
    s.on_bytes(1_000, &publish("$pulse/heartbeat", Some(9), br#"{"keepalive_s":40}"#));
    assert_eq!(written(&mut s), [Out::PubAck(9)]);
    assert_eq!(
        events(&mut s),
        [Event::HeartbeatAdjusted {
            requested_s: 40,
            interval_s: 20
        }]
    );
    // While probing, the request is followed up to the maximum (the CONNECT keep-alive).
    let mut s = connected(policy, 0);
    s.on_bytes(2_000, &publish("$pulse/heartbeat", Some(1), br#"{"keepalive_s":30}"#));
    assert!(events(&mut s).contains(&Event::HeartbeatAdjusted {
        requested_s: 30,
        interval_s: 30
    }));
    assert_eq!(s.next_deadline_ms(), 32_000, "the new interval counts from the PUBACK");
    // With an offset, its first period starts that long after the message.
    let mut s = connected(policy, 0);
    s.on_bytes(
        2_000,
        &publish("$pulse/heartbeat", Some(2), br#"{"keepalive_s":30,"offset_ms":4500}"#),
    );
    assert_eq!(written(&mut s), [Out::PubAck(2)]);
    assert_eq!(s.next_deadline_ms(), 36_500, "PUBACK at 2 s + 4.5 s offset + 30 s");
}

#[test]
fn probing_over_a_simulated_nat_finds_the_optimal_and_it_is_stored_and_reused() {
    let policy = HeartbeatPolicy {
        min_s: 30,
        step_s: 30,
        max_s: 300,
    };
    let nat_idle_timeout_s = 100; // the path drops mappings idle for 100 s
    let mut s = Session::new(cfg(policy), "127.0.0.1:1883", None).unwrap();
    let mut now_ms = 0u64;
    let mut steps = Vec::new();
    for _ in 0..50 {
        if s.phase() == Phase::Offline {
            s.on_transport_open(now_ms);
            let w = written(&mut s);
            assert!(
                matches!(w[..], [Out::Connect { keepalive_s, .. }] if keepalive_s == 300),
                "{w:?}"
            );
            s.on_bytes(now_ms, &connack(0, None, None));
        }
        now_ms = s.next_deadline_ms();
        let interval_s = s.keepalive().period_s();
        s.poll(now_ms);
        if written(&mut s).contains(&Out::PingReq) {
            if interval_s < nat_idle_timeout_s {
                s.on_bytes(now_ms + 1, &pingresp());
            } else {
                // The mapping is gone: the PINGREQ is answered with a reset.
                s.on_transport_closed();
            }
        }
        for e in events(&mut s) {
            if let Event::HeartbeatStepped { interval_s, optimal } = e {
                steps.push((interval_s, optimal));
            }
        }
        if s.heartbeat().is_optimal() {
            break;
        }
    }
    assert_eq!(steps, [(60, false), (90, false), (120, false), (90, true)]);
    let stored = s.stored_state();
    assert_eq!((stored.heartbeat_s, stored.optimal), (90, true));
    // Round trip through JSON and the next start connects with the optimal value.
    let text = stored.to_json();
    let back = StoredState::from_json(&text).unwrap();
    let mut s = Session::new(cfg(policy), "10.9.9.9:1883", Some(&back)).unwrap();
    assert_eq!(s.server(), "127.0.0.1:1883", "the stored server is tried first");
    s.on_transport_open(0);
    assert!(matches!(written(&mut s)[..], [Out::Connect { keepalive_s: 90, .. }]));
    s.on_bytes(0, &connack(0, None, None));
    assert_eq!(s.next_deadline_ms(), 90_000);
}

#[test]
fn intervals_with_traffic_are_not_probes() {
    let policy = HeartbeatPolicy {
        min_s: 30,
        step_s: 30,
        max_s: 300,
    };
    let mut s = connected(policy, 0);
    // A QoS 0 push at 20 s refreshes the NAT: the PINGREQ at 30 s is no probe.
    s.on_bytes(20_000, &publish("push/dev-1", None, b"x"));
    s.poll(30_000);
    s.on_bytes(30_001, &pingresp());
    assert!(
        !events(&mut s)
            .iter()
            .any(|e| matches!(e, Event::HeartbeatStepped { .. }))
    );
    assert_eq!(s.heartbeat().interval_s(), 30);
    // The next idle interval is.
    s.poll(60_000);
    s.on_bytes(60_001, &pingresp());
    assert!(events(&mut s).contains(&Event::HeartbeatStepped {
        interval_s: 60,
        optimal: false
    }));
    assert_eq!(
        s.next_deadline_ms(),
        60_000 + 30_000,
        "the step applies from the next restart"
    );
}

#[test]
fn server_keep_alive_caps_the_connection_interval() {
    let mut s = Session::new(cfg(HeartbeatPolicy::fixed(120)), "127.0.0.1:1883", None).unwrap();
    s.on_transport_open(0);
    s.on_bytes(0, &connack(0, Some(45), None));
    assert_eq!(
        events(&mut s),
        [Event::Connected {
            keepalive_s: 45,
            session_present: false
        }]
    );
    assert_eq!(s.next_deadline_ms(), 45_000);
}

#[test]
fn busy_refusal_backs_off_and_a_reference_is_followed() {
    let mut s = Session::new(cfg(HeartbeatPolicy::fixed(60)), "127.0.0.1:1883", None).unwrap();
    let mut delays = Vec::new();
    for _ in 0..12 {
        s.on_transport_open(0);
        s.on_bytes(1, &connack(reason::SERVER_BUSY, None, None));
        let (cause, next) = closed(&events(&mut s)).unwrap();
        assert_eq!(cause, CloseCause::Refused { reason: 0x89 });
        assert_eq!(next.server, "127.0.0.1:1883");
        assert!(next.delay_ms <= BackoffPolicy::LOADGEN.max_ms);
        delays.push(next.delay_ms);
    }
    assert!(delays[0] <= 100 && delays[11] >= 5_000, "{delays:?}");
    // CONNACK 0x9C with a reference: go there at once.
    s.on_transport_open(0);
    s.on_bytes(1, &connack(reason::USE_ANOTHER_SERVER, None, Some("127.0.0.2:1884")));
    let (_, next) = closed(&events(&mut s)).unwrap();
    assert!(next.redirected && next.delay_ms <= BackoffPolicy::LOADGEN.base_ms);
    assert_eq!(s.server(), "127.0.0.2:1884");
    // Connected there, then DISCONNECT 0x9C naming a third server.
    s.on_transport_open(10);
    s.on_bytes(11, &connack(0, None, None));
    s.on_bytes(12, &disconnect(reason::USE_ANOTHER_SERVER, Some("127.0.0.3")));
    let (cause, next) = closed(&events(&mut s)).unwrap();
    assert_eq!(cause, CloseCause::Disconnected { reason: 0x9C });
    assert_eq!(next.server, "127.0.0.3:1884");
    // DISCONNECT 0x89 (overload) without a reference: back off, same server.
    s.on_transport_open(20);
    s.on_bytes(21, &connack(0, None, None));
    s.on_bytes(22, &disconnect(reason::SERVER_BUSY, None));
    let (_, next) = closed(&events(&mut s)).unwrap();
    assert_eq!((next.server.as_str(), next.redirected), ("127.0.0.3:1884", false));
    // The referred server keeps failing: after a few attempts the device goes home.
    // (The overload disconnect was the first failure there.)
    for attempt in 1..HOME_AFTER_FAILURES {
        assert_eq!(s.server(), "127.0.0.3:1884", "attempt {attempt}");
        s.on_connect_failed();
        assert_eq!(closed(&events(&mut s)).unwrap().0, CloseCause::ConnectFailed);
    }
    assert_eq!(s.server(), "127.0.0.1:1883");
}

#[test]
fn bad_server_bytes_close_with_a_cause() {
    let mut s = connected(HeartbeatPolicy::fixed(60), 0);
    s.on_bytes(1, &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
    assert!(matches!(closed(&events(&mut s)), Some((CloseCause::Malformed(_), _))));
    let mut s = connected(HeartbeatPolicy::fixed(60), 0);
    s.on_bytes(1, &connack(0, None, None));
    assert_eq!(
        closed(&events(&mut s)).unwrap().0,
        CloseCause::Unexpected { packet_type: 2 }
    );
    // Oversized frames are refused from the header.
    let mut c = cfg(HeartbeatPolicy::fixed(60));
    c.max_packet_bytes = 64;
    let mut s = Session::new(c, "127.0.0.1:1883", None).unwrap();
    s.on_transport_open(0);
    s.on_bytes(0, &connack(0, None, None));
    s.on_bytes(1, &publish("push/dev-1", None, &[b'x'; 100]));
    assert!(matches!(
        closed(&events(&mut s)),
        Some((CloseCause::Malformed(DecodeError::TooLarge { .. }), _))
    ));
    // No CONNACK in time.
    let mut s = Session::new(cfg(HeartbeatPolicy::fixed(60)), "127.0.0.1:1883", None).unwrap();
    s.on_transport_open(0);
    s.poll(10_000);
    assert_eq!(closed(&events(&mut s)).unwrap().0, CloseCause::ConnackTimeout);
    // Bytes after the close are ignored; disconnect writes DISCONNECT only when connected.
    s.on_bytes(10_001, &pingresp());
    assert!(events(&mut s).is_empty());
    let mut s = connected(HeartbeatPolicy::fixed(60), 0);
    s.disconnect();
    assert_eq!(written(&mut s), [Out::Disconnect]);
    assert_eq!(s.next_deadline_ms(), NEVER_MS);
}

#[test]
fn garbage_never_panics() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..5_000 {
        let mut s = connected(HeartbeatPolicy::fixed(60), 0);
        let mut buf = [0u8; 32];
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let len = (x % 33) as usize;
        s.on_bytes(1, &buf[..len]);
        s.poll(2);
        events(&mut s);
    }
}

#[test]
fn credentials_ride_in_connect_and_a_refused_token_is_a_refusal() {
    let mut c = cfg(HeartbeatPolicy::fixed(60));
    c.username = Some("dev-1".into());
    c.password = Some(b"header.claims.signature".to_vec());
    let mut s = Session::new(c, "127.0.0.1:1883", None).unwrap();
    s.on_transport_open(0);
    let bytes = s.take_output();
    match decode_packet(&bytes, V).expect("a CONNECT") {
        Packet::Connect(connect) => {
            assert_eq!(connect.username, Some("dev-1"));
            assert_eq!(connect.password, Some(&b"header.claims.signature"[..]));
        }
        other => panic!("expected CONNECT, got {other:?}"),
    }
    s.on_bytes(1, &connack(reason::BAD_USER_NAME_OR_PASSWORD, None, None));
    let (cause, _) = closed(&events(&mut s)).unwrap();
    assert_eq!(cause, CloseCause::Refused { reason: 0x86 });
}
