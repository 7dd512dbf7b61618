//! Clean shutdown over real sockets, on both backends with 2 shards: SIGTERM makes every MQTT 5
//! device receive DISCONNECT 0x8B (server shutting down) before its connection closes, 3.1.1
//! devices are simply closed, new connections are no longer served, and the process exits with
//! status 0 within 5 s.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn sigterm_disconnects_devices_and_exits_zero(backend: &str) {
    let mut gw = Gateway::start(backend, &[]);
    let mut v5 = gw.connect_on_every_shard(V5, "bye5");
    let mut v311 = gw.connect_on_every_shard(V311, "bye311");
    // Sessions in flight too: an unacknowledged QoS 1 push on one device.
    gw.push_ok(&v5[0].0.id.clone(), "pending", 1);
    assert_eq!(v5[0].0.expect_publish(WAIT).payload, b"pending");

    let t0 = Instant::now();
    gw.sigterm();
    for (c, shard) in &mut v5 {
        let got = c.expect_closed(Duration::from_secs(5));
        assert_eq!(got, vec![Rx::Disconnect { reason: 0x8B }], "v5 client on shard {shard}");
    }
    for (c, shard) in &mut v311 {
        let got = c.expect_closed(Duration::from_secs(5));
        assert!(
            got.is_empty(),
            "3.1.1 client on shard {shard} gets no DISCONNECT: {got:?}"
        );
    }
    let status = gw
        .wait_exit(Duration::from_secs(5).saturating_sub(t0.elapsed()))
        .expect("exited within 5 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}; stderr:\n{}", gw.stderr());
    assert!(t0.elapsed() <= Duration::from_secs(5));
    assert!(gw.stderr().contains("pulsegate: stopped"), "stderr:\n{}", gw.stderr());
    // Nothing listens any more.
    assert!(
        std::net::TcpStream::connect_timeout(&gw.mqtt, Duration::from_millis(500)).is_err(),
        "MQTT port closed"
    );
}

fn sigterm_with_no_devices_exits_quickly(backend: &str) {
    let mut gw = Gateway::start(backend, &[]);
    let t0 = Instant::now();
    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(5)).expect("exited within 5 s");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "idle shutdown took {:?}",
        t0.elapsed()
    );
}

both_backends!(
    sigterm_disconnects_devices_and_exits_zero,
    sigterm_with_no_devices_exits_quickly
);
