//! The HTTP -> shard -> device push path over real sockets, on both backends with 2 shards:
//! QoS 0 and QoS 1 pushes arrive as PUBLISH on `push/{id}` (3.1.1 and 5, every shard), PUBACK
//! counting, 404 for offline devices; the QoS 1 inflight window (device Receive Maximum and
//! `--max-inflight`); the device's Maximum Packet Size; HTTP keep-alive.

mod common;

use common::*;

// ---------------------------------------------------------------------------------------------
// 3. QoS 0 / QoS 1 / offline
// ---------------------------------------------------------------------------------------------

fn push_qos0_and_qos1(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    let mut acked = 0;
    for version in [V311, V5] {
        for (mut c, shard) in gw.connect_on_every_shard(version, &format!("push-{version:?}")) {
            let id = c.id.clone();
            let topic = format!("push/{id}");

            let payload0 = format!("q0 héllo ✓ {id} shard {shard}");
            let push_id = gw.push_ok(&id, &payload0, 0);
            assert_eq!(push_id.len(), 16, "push id is 16 hex digits: {push_id}");
            let p = c.expect_publish(WAIT);
            assert_eq!(
                (p.topic.as_str(), p.qos, p.packet_id, p.retain, p.dup),
                (topic.as_str(), 0, None, false, false)
            );
            assert_eq!(p.payload, payload0.as_bytes());

            let payload1 = format!("q1 {id}");
            gw.push_ok(&id, &payload1, 1);
            let p = c.expect_publish(WAIT);
            assert_eq!(p.topic, topic);
            assert_eq!(p.qos, 1);
            assert_eq!(p.payload, payload1.as_bytes());
            let pid = p.packet_id.expect("QoS 1 PUBLISH has a packet id");
            assert_ne!(pid, 0);
            c.expect_silence(QUIET);
            assert_eq!(gw.metric("pulsegate_pushes_acked_total"), acked, "not acked yet");
            c.puback(pid);
            acked += 1;
            gw.wait_metric("pulsegate_pushes_acked_total", WAIT, |v| v == acked);
        }
    }
    assert_eq!(gw.metric("pulsegate_pushes_sent_total"), 2 * acked);
    assert_eq!(
        gw.metric("pulsegate_protocol_errors_total{kind=\"unknown_packet_id\"}"),
        0
    );
}

fn push_to_offline_device_is_404(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    let (status, body) = gw.push("nobody-home", "x", 1);
    assert_eq!(status, 404, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("404 body is JSON");
    assert!(body.contains("device_offline"), "{v}");

    // A device that was connected and left is offline again.
    let c = gw.connect_id(V5, "leaver");
    gw.push_ok("leaver", "hi", 0);
    drop(c);
    gw.wait_connections(0, WAIT);
    let (status, body) = gw.push("leaver", "gone", 1);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("device_offline"), "{body}");
}

// ---------------------------------------------------------------------------------------------
// 4. Inflight window
// ---------------------------------------------------------------------------------------------

/// Pushes `n` QoS 1 messages without acking; checks exactly `window` arrive, then that each
/// PUBACK releases exactly the next one, all in order with distinct packet ids.
fn check_window(gw: &Gateway, c: &mut Client, n: usize, window: usize) {
    let id = c.id.clone();
    for i in 1..=n {
        gw.push_ok(&id, &format!("w{i}"), 1);
    }
    let mut outstanding: std::collections::VecDeque<Pub> = (0..window.min(n)).map(|_| c.expect_publish(WAIT)).collect();
    c.expect_silence(QUIET);
    let mut all: Vec<Pub> = outstanding.iter().cloned().collect();
    while let Some(oldest) = outstanding.pop_front() {
        c.puback(oldest.packet_id.expect("packet id"));
        if all.len() < n {
            let next = c.expect_publish(WAIT);
            all.push(next.clone());
            outstanding.push_back(next);
            // Exactly one per PUBACK.
            c.expect_silence(std::time::Duration::from_millis(100));
        }
    }
    let got: Vec<String> = all
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    let want: Vec<String> = (1..=n).map(|i| format!("w{i}")).collect();
    assert_eq!(got, want, "all pushes, in order");
    let mut ids: Vec<u16> = all.iter().map(|p| p.qos1_packet_id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "distinct packet ids among {all:?}");
}

fn inflight_window_receive_maximum(backend: &str) {
    let gw = Gateway::start(backend, &["--max-inflight", "8"]);
    let clients = gw.connect_on_every_shard_with("win-rm2", |id| ConnectOpts::new(V5, id).receive_maximum(2));
    let mut acked = 0;
    for (mut c, _) in clients {
        check_window(&gw, &mut c, 5, 2);
        acked += 5;
        gw.wait_metric("pulsegate_pushes_acked_total", WAIT, |v| v == acked);
    }
}

fn inflight_window_capped_by_server(backend: &str) {
    let gw = Gateway::start(backend, &["--max-inflight", "3"]);
    for version in [V5, V311] {
        let clients = gw.connect_on_every_shard_with(&format!("win-cap-{version:?}"), |id| {
            let o = ConnectOpts::new(version, id);
            if version == V5 { o.receive_maximum(20) } else { o }
        });
        for (mut c, _) in clients {
            check_window(&gw, &mut c, 6, 3);
        }
    }
}

/// Beyond the window, at most `--pending-pushes-per-device-max` QoS 1 pushes wait; the rest
/// are dropped and counted.
fn pending_queue_is_bounded(backend: &str) {
    let gw = Gateway::start(backend, &["--pending-pushes-per-device-max", "2"]);
    let (mut c, _) = gw.connect(&ConnectOpts::new(V5, "queue").receive_maximum(1));
    let dropped0 = gw.metric("pulsegate_pushes_dropped_total");
    for i in 1..=5 {
        gw.push_ok("queue", &format!("p{i}"), 1);
    }
    gw.wait_metric("pulsegate_pushes_dropped_total", WAIT, |v| v == dropped0 + 2);
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = c.expect_publish(WAIT);
        c.expect_silence(std::time::Duration::from_millis(100));
        got.push(String::from_utf8_lossy(&p.payload).into_owned());
        c.puback(p.qos1_packet_id());
    }
    assert_eq!(got, ["p1", "p2", "p3"]);
    c.expect_silence(QUIET);
}

/// Many pushes to devices on both shards, over one HTTP connection, arrive complete and in order.
fn many_pushes_arrive_in_order(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    let mut devices = gw.connect_on_every_shard(V5, "order");
    let mut http = gw.http_conn();
    // 60 QoS 1 pushes per device: within the default window (32) + pending bound (64).
    let n = 120;
    for i in 0..n {
        for (c, _) in &devices {
            let (status, body) = http.push(&c.id.clone(), &format!("{i}"), (i % 2) as u8);
            assert!(accepted(status), "{status} {body}");
        }
    }
    for (c, shard) in &mut devices {
        let mut q0 = Vec::new();
        let mut q1 = Vec::new();
        for _ in 0..n {
            let p = c.expect_publish(WAIT);
            let i: usize = String::from_utf8_lossy(&p.payload).parse().expect("number");
            match p.packet_id {
                Some(pid) => {
                    q1.push(i);
                    c.puback(pid);
                }
                None => q0.push(i),
            }
        }
        // MQTT orders messages per QoS; QoS 0 may overtake QoS 1 pushes waiting for the window.
        assert_eq!(
            q0,
            (0..n).step_by(2).collect::<Vec<_>>(),
            "QoS 0 order on shard {shard}"
        );
        assert_eq!(
            q1,
            (1..n).step_by(2).collect::<Vec<_>>(),
            "QoS 1 order on shard {shard}"
        );
        c.expect_silence(QUIET);
    }
    assert_eq!(gw.metric("pulsegate_pushes_dropped_total"), 0);
}

/// The API's refusals against the real gateway.
fn push_api_rejects_bad_requests(backend: &str) {
    let gw = Gateway::start(backend, &["--max-packet-bytes", "1024"]);
    let mut c = gw.connect_id(V311, "api-target");
    let mut http = gw.http_conn();
    let (status, body) = http.push("api-target", &"x".repeat(2000), 1);
    assert_eq!(status, 413, "payload above max-packet-bytes: {body}");
    let (status, _) = http.push("api-target", "x", 2);
    assert_eq!(status, 400, "qos 2");
    let (status, _) = http.request("POST", "/v1/messages", Some("{\"device\": 5}"));
    assert_eq!(status, 400, "bad JSON");
    let (status, _) = http.request("POST", "/v1/messages", Some("{\"device\": \"\", \"payload\": \"x\"}"));
    assert_eq!(status, 400, "empty device");
    let (status, _) = http.request("GET", "/v1/messages", None);
    assert_eq!(status, 405);
    let (status, _) = http.request("GET", "/nope", None);
    assert_eq!(status, 404);
    let (status, _) = http.request("GET", "/healthz", None);
    assert_eq!(status, 200);
    // Nothing reached the device; the connection still works.
    c.expect_silence(QUIET);
    let (status, _) = http.push("api-target", "fine", 0);
    assert!(accepted(status), "{status}");
    assert_eq!(c.expect_publish(WAIT).payload, b"fine");
}

// ---------------------------------------------------------------------------------------------
// 5. Device Maximum Packet Size
// ---------------------------------------------------------------------------------------------

fn client_maximum_packet_size(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    let clients = gw.connect_on_every_shard_with("mps", |id| ConnectOpts::new(V5, id).max_packet(64));
    // The push service may retry a dropped push (each retry is dropped again), so drops are
    // checked as "at least".
    for (mut c, _) in clients {
        let id = c.id.clone();
        let topic_len = format!("push/{id}").len();
        // v5 QoS 1 PUBLISH: 1 + 1 (remaining length < 128) + 2 + topic + 2 (id) + 1 (no properties) + payload.
        let fits_q1 = 64 - (7 + topic_len);
        // QoS 0 has no packet id.
        let fits_q0 = 64 - (5 + topic_len);

        for (qos, fits) in [(1u8, fits_q1), (0u8, fits_q0)] {
            // One byte too many: accepted by the API, never sent, counted as dropped.
            let dropped = gw.metric("pulsegate_pushes_dropped_total");
            gw.push_ok(&id, &"x".repeat(fits + 1), qos);
            gw.wait_metric("pulsegate_pushes_dropped_total", WAIT, |v| v > dropped);
            c.expect_silence(QUIET);
            // Exactly the limit: delivered.
            gw.push_ok(&id, &"y".repeat(fits), qos);
            let p = c.expect_publish(WAIT);
            assert_eq!(p.payload.len(), fits);
            assert_eq!(p.qos, qos);
            if let Some(pid) = p.packet_id {
                c.puback(pid);
            }
        }
        // A dropped QoS 1 push does not hold a window slot: a long run of them, then a small one.
        let dropped = gw.metric("pulsegate_pushes_dropped_total");
        for _ in 0..40 {
            gw.push_ok(&id, &"z".repeat(200), 1);
        }
        gw.wait_metric("pulsegate_pushes_dropped_total", WAIT, |v| v >= dropped + 40);
        gw.push_ok(&id, "small", 1);
        let p = c.expect_publish(WAIT);
        assert_eq!(p.payload, b"small");
        c.puback(p.qos1_packet_id());
        gw.assert_healthy(&mut c);
    }
}

// ---------------------------------------------------------------------------------------------
// 12. HTTP keep-alive
// ---------------------------------------------------------------------------------------------

fn http_keep_alive(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    let mut devices: Vec<(Client, usize)> = gw.connect_on_every_shard(V311, "ka-http");
    let mut http = gw.http_conn();
    for i in 0..3 {
        let (c, _) = &devices[i % devices.len()];
        let (status, body) = http.push(&c.id.clone(), &format!("keepalive-{i}"), 0);
        assert!(accepted(status), "request {i} on the same connection: {status} {body}");
    }
    let (status, body) = http.request("GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(body.contains("pulsegate_connections{shard=\"0\"}"));
    let (status, _) = http.push("nobody", "x", 1);
    assert_eq!(status, 404, "an error answer keeps the connection too");
    let (status, _) = http.push(&devices[0].0.id.clone(), "after-404", 0);
    assert!(accepted(status), "{status}");
    for i in 0..3 {
        let (c, _) = &mut devices[i % 2];
        let p = c.expect_publish(WAIT);
        assert_eq!(p.payload, format!("keepalive-{i}").as_bytes());
    }
    assert_eq!(devices[0].0.expect_publish(WAIT).payload, b"after-404");
}

both_backends!(
    push_qos0_and_qos1,
    push_to_offline_device_is_404,
    inflight_window_receive_maximum,
    inflight_window_capped_by_server,
    pending_queue_is_bounded,
    many_pushes_arrive_in_order,
    push_api_rejects_bad_requests,
    client_maximum_packet_size,
    http_keep_alive,
);
