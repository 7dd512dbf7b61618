//! Timers over real sockets, on both backends with 2 shards: keep-alive expiry (1.5 x the
//! keep-alive, MQTT 5 gets DISCONNECT 0x8D first, 3.1.1 just the close), activity (PINGREQ or
//! PUBLISH) keeping a connection open, keep-alive 0 meaning none, the MQTT 5 Server Keep Alive
//! override, and the connect timeout for sockets that never finish a CONNECT.
//!
//! Connections under watch run on their own threads so each close is timed exactly.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;
use pulsegate::protocol::mqtt::ProtocolVersion;

/// Waits for the gateway to close `c`; returns (packets before the close, seconds since `t0`).
fn time_close(mut c: Client, t0: Instant, timeout: Duration) -> (Vec<Rx>, f64) {
    let got = c.expect_closed(timeout);
    (got, t0.elapsed().as_secs_f64())
}

fn silent_client_is_closed_after_one_and_a_half_keepalives(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    // Bare sockets on every shard first (shard discovery takes time), then all CONNECTs at once.
    let mut sockets = Vec::new();
    for version in [V5, V311] {
        for (shard, s) in gw.tcp_on_each_shard().into_iter().enumerate() {
            sockets.push((version, shard, s));
        }
    }
    let results: Vec<(ProtocolVersion, usize, Vec<Rx>, f64)> = thread::scope(|s| {
        let handles: Vec<_> = sockets
            .into_iter()
            .map(|(version, shard, stream)| {
                s.spawn(move || {
                    let mut c = Client::new(stream, version);
                    let t0 = Instant::now();
                    c.handshake(&ConnectOpts::new(version, &format!("ka1-{version:?}-{shard}")).keepalive(1));
                    let (got, secs) = time_close(c, t0, Duration::from_secs(3));
                    (version, shard, got, secs)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("watcher thread")).collect()
    });
    for (version, shard, got, secs) in results {
        assert!(secs >= 1.2, "{version:?} on shard {shard} closed too early: {secs:.2}s");
        assert!(secs <= 3.0, "{version:?} on shard {shard} closed late: {secs:.2}s");
        match version {
            V5 => assert_eq!(got, vec![Rx::Disconnect { reason: 0x8D }], "shard {shard}"),
            V311 => assert!(got.is_empty(), "3.1.1 gets no DISCONNECT: {got:?}"),
        }
    }
    gw.wait_metric("pulsegate_closes_total{reason=\"keepalive_timeout\"}", WAIT, |v| {
        v == 2 * gw.shards as u64
    });
    gw.wait_connections(0, WAIT);
}

/// One v5 client with keep-alive 1 and nothing else to wait on: the close time is exact.
fn keepalive_close_is_not_early(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    let mut c = Client::new(gw.tcp(), V5);
    let t0 = Instant::now();
    c.handshake(&ConnectOpts::new(V5, "ka-exact").keepalive(1));
    let (got, secs) = time_close(c, t0, Duration::from_secs(3));
    assert_eq!(got, vec![Rx::Disconnect { reason: 0x8D }]);
    assert!((1.2..=3.0).contains(&secs), "closed after {secs:.2}s, want ~1.5s");
}

fn active_clients_stay_connected(backend: &str) {
    let gw = Gateway::start(backend, &[]);
    // Pingers with keep-alive 1 on every shard, both versions.
    let mut pingers = Vec::new();
    for version in [V5, V311] {
        for (c, _) in gw.connect_on_every_shard_with(&format!("pinger-{version:?}"), |id| {
            ConnectOpts::new(version, id).keepalive(1)
        }) {
            pingers.push(c);
        }
    }
    // A client whose only activity is QoS 0 PUBLISHes, and one with keep-alive 0 (none).
    let (publisher, _) = gw.connect(&ConnectOpts::new(V5, "publisher").keepalive(1));
    let (idle_forever, _) = gw.connect(&ConnectOpts::new(V5, "no-keepalive").keepalive(0));

    let run_for = Duration::from_secs(3);
    let mut survivors: Vec<Client> = thread::scope(|s| {
        let mut handles = Vec::new();
        for mut c in pingers {
            handles.push(s.spawn(move || {
                let start = Instant::now();
                while start.elapsed() < run_for {
                    c.ping();
                    assert_eq!(c.recv(WAIT), Ok(Rx::PingResp), "{} at {:?}", c.id, start.elapsed());
                    thread::sleep(Duration::from_millis(500));
                }
                c
            }));
        }
        let mut p = publisher;
        handles.push(s.spawn(move || {
            let start = Instant::now();
            while start.elapsed() < run_for {
                p.publish("up/tick", 0, None, b"tick");
                p.expect_silence(Duration::from_millis(500));
            }
            p
        }));
        let mut idle = idle_forever;
        handles.push(s.spawn(move || {
            idle.expect_silence(run_for);
            idle
        }));
        handles.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    assert_eq!(gw.closes("keepalive_timeout"), 0);
    let n = survivors.len() as u64;
    assert_eq!(gw.metric_sum("pulsegate_connections"), n, "everyone is still connected");
    for c in &mut survivors {
        c.ping();
        assert_eq!(c.recv(WAIT), Ok(Rx::PingResp), "{}", c.id);
    }
}

fn server_keepalive_overrides_client_value(backend: &str) {
    let gw = Gateway::start(backend, &["--server-keepalive-s", "1"]);
    let mut v5 = Client::new(gw.tcp(), V5);
    let t0 = Instant::now();
    let ack = v5.handshake(&ConnectOpts::new(V5, "ska-v5").keepalive(60));
    assert_eq!(ack.server_keep_alive, Some(1));
    // 3.1.1 has no Server Keep Alive: its own 60 s applies.
    let (mut v311, _) = gw.connect(&ConnectOpts::new(V311, "ska-v311").keepalive(60));
    let (got, secs) = time_close(v5, t0, Duration::from_secs(3));
    assert_eq!(got, vec![Rx::Disconnect { reason: 0x8D }]);
    assert!(
        (1.2..=3.0).contains(&secs),
        "v5 closed after {secs:.2}s under Server Keep Alive 1"
    );
    v311.expect_silence(Duration::from_millis(500));
    v311.ping();
    assert_eq!(v311.recv(WAIT), Ok(Rx::PingResp));
}

fn connect_timeout(backend: &str) {
    let gw = Gateway::start(backend, &["--connect-timeout-s", "1"]);
    // One silent socket per shard, one that sends half a CONNECT, and a proper client.
    // The timeout runs from the accept, which precedes the shard being known: t0 is taken
    // before the connect, so the measured time is an upper bound of the real one.
    let mut silent = Vec::new();
    for want in 0..gw.shards {
        loop {
            let t0 = Instant::now();
            let (s, shard) = gw.tcp_with_shard();
            if shard == want {
                silent.push((Client::new(s, V311), t0));
                break;
            }
        }
    }
    let mut half = Client::new(gw.tcp(), V5);
    let connect = ConnectOpts::new(V5, "half").encode();
    half.write_raw(&connect[..connect.len() / 2]);
    silent.push((half, Instant::now()));
    let (mut proper, _) = gw.connect(&ConnectOpts::new(V5, "in-time").keepalive(60));

    let results: Vec<f64> = thread::scope(|s| {
        let handles: Vec<_> = silent
            .into_iter()
            .map(|(c, t0)| {
                s.spawn(move || {
                    let (got, secs) = time_close(c, t0, Duration::from_secs(3));
                    assert!(got.is_empty(), "no CONNACK before the connect timeout: {got:?}");
                    secs
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("watcher")).collect()
    });
    for secs in &results {
        assert!(
            (0.9..=2.5).contains(secs),
            "connect timeout fired after {secs:.2}s, want ~1s"
        );
    }
    assert_eq!(gw.closes("connect_timeout"), results.len() as u64);
    // The connected client is not subject to the connect timeout.
    proper.ping();
    assert_eq!(proper.recv(WAIT), Ok(Rx::PingResp));
}

both_backends!(
    silent_client_is_closed_after_one_and_a_half_keepalives,
    keepalive_close_is_not_early,
    active_clients_stay_connected,
    server_keepalive_overrides_client_value,
    connect_timeout,
);

/// io_uring's batched wait (`--loop-batch-wait-us`, min_wait) follows only turns that did
/// nothing but answer keep-alives. With a window of 100 ms, far above any loopback round trip:
/// PINGREQs sent one round trip at a time are held for the window (the batching is real),
/// while SUBSCRIBEs one round trip at a time on the same shard are not (request/response
/// traffic never waits for a batch, except the first request after a keep-alive-only turn).
/// A shard batches only while it answers at least two keep-alives per window (over the last
/// second), so four other devices keep pinging meanwhile: alone, sequential pings would
/// turn batching off by their own slowness.
#[test]
fn batched_waits_follow_only_keepalive_turns() {
    const WINDOW_MS: u64 = 100;
    const ROUNDS: u32 = 20;
    let window_us = (WINDOW_MS * 1000).to_string();
    let gw = Gateway::start_with_shards("uring", 1, &["--loop-batch-wait-us", &window_us]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pingers: Vec<_> = (0..4)
        .map(|i| {
            let mut p = gw.connect_id(V311, &format!("batch-pinger-{i}"));
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    p.ping();
                    assert_eq!(p.recv(WAIT), Ok(Rx::PingResp));
                }
            })
        })
        .collect();
    // One second of their keep-alives: the shard's rate is measured per second.
    std::thread::sleep(Duration::from_millis(1_500));
    let mut c = gw.connect_id(V311, "batch-window");
    let t0 = Instant::now();
    for _ in 0..ROUNDS {
        c.ping();
        assert_eq!(c.recv(WAIT), Ok(Rx::PingResp));
    }
    let pings_s = t0.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in pingers {
        p.join().expect("pinger");
    }
    let t0 = Instant::now();
    for i in 0..ROUNDS {
        let id = 1 + i as u16;
        c.subscribe(id, &[("batch/window", 0)]);
        assert!(matches!(c.recv(WAIT), Ok(Rx::SubAck { packet_id, .. }) if packet_id == id));
    }
    let subscribes_s = t0.elapsed().as_secs_f64();
    let window_s = WINDOW_MS as f64 / 1000.0;
    // Every ping after the first waits out the window (the kernel returns at min_wait), or
    // less when a timer is due sooner: at least half of them in all, where unbatched pings
    // take well under a millisecond each.
    assert!(
        pings_s >= window_s * f64::from(ROUNDS - 1) * 0.5,
        "{ROUNDS} sequential pings took {pings_s:.3} s: the keep-alive-only turns did not batch (io_uring min_wait, Linux 6.12+)"
    );
    // At most the first SUBSCRIBE (after the last ping's turn) waits for the window.
    assert!(
        subscribes_s < window_s * 5.0,
        "{ROUNDS} sequential SUBSCRIBEs took {subscribes_s:.3} s: request/response turns were batched"
    );
}
