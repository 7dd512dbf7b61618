//! Cross-shard rebalancing end to end, over real sockets: every device lands
//! on one shard of four (`--listen-shards 1`), pushes keep flowing over the
//! HTTP API while the coordinator moves connections, and the shards end
//! within 10% of each other with every push delivered exactly once, no device
//! disconnected, and every moved socket still answering PINGREQ.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{ConnectOpts, Gateway, V5, V311, accepted};
use pulsegate::protocol::mqtt::{Packet, ProtocolVersion, PubAck, decode_packet};

const DEVICES: usize = 160;
const ROUNDS: usize = 24;

/// A device on a non-blocking socket: records push payloads, acks QoS 1.
struct Device {
    id: String,
    version: ProtocolVersion,
    stream: TcpStream,
    buf: Vec<u8>,
    payloads: Vec<usize>,
    ping_responses: u32,
    closed: bool,
}

impl Device {
    fn poll(&mut self) {
        if common::read_available(&mut self.stream, &mut self.buf) {
            self.closed = true;
        }
        while let Some(frame) = common::take_frame(&mut self.buf) {
            match decode_packet(&frame, self.version) {
                Ok(Packet::Publish(p)) if p.topic.starts_with("push/") => {
                    let n: usize = String::from_utf8_lossy(p.payload).parse().expect("numbered payload");
                    self.payloads.push(n);
                    if let Some(packet_id) = p.packet_id {
                        let mut out = Vec::new();
                        PubAck { packet_id, reason: 0 }.encode(self.version, &mut out);
                        self.write(&out);
                    }
                }
                Ok(Packet::Publish(p)) => {
                    // Control messages ($pulse/...): acknowledge like any QoS 1 PUBLISH.
                    if let Some(packet_id) = p.packet_id {
                        let mut out = Vec::new();
                        PubAck { packet_id, reason: 0 }.encode(self.version, &mut out);
                        self.write(&out);
                    }
                }
                Ok(Packet::PingResp) => self.ping_responses += 1,
                Ok(Packet::Disconnect(_)) => self.closed = true,
                _ => {}
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.stream.set_nonblocking(false).expect("blocking");
        self.stream.write_all(bytes).expect("device write");
        self.stream.set_nonblocking(true).expect("nonblocking");
    }
}

fn all_on_one_shard_converge_while_pushes_flow(backend: &str) {
    let gw = Gateway::start_with_shards(backend, 4, &["--listen-shards", "1", "--rebalance-hold-s", "2"]);
    let mut devices: Vec<Device> = (0..DEVICES)
        .map(|i| {
            let version = if i % 2 == 0 { V5 } else { V311 };
            let id = format!("mover-{i}");
            let (client, _) = gw.connect(&ConnectOpts::new(version, &id).keepalive(60));
            client.stream.set_nonblocking(true).expect("nonblocking");
            Device {
                id,
                version,
                stream: client.stream,
                buf: Vec::new(),
                payloads: Vec::new(),
                ping_responses: 0,
                closed: false,
            }
        })
        .collect();
    let accepts = gw.accepts_per_shard();
    assert_eq!(
        accepts[0], DEVICES as u64,
        "every device landed on shard 0: {accepts:?}"
    );
    assert_eq!(accepts[1..].iter().sum::<u64>(), 0, "{accepts:?}");

    // Pushes flow from another thread while the coordinator moves connections.
    let ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    let http = gw.http;
    let pusher = std::thread::spawn(move || {
        let mut conn = common::HttpConn::open(http);
        for round in 0..ROUNDS {
            for id in &ids {
                let (status, body) = conn.push(id, &round.to_string(), (round % 2) as u8);
                assert!(accepted(status), "push {round} to {id}: {status} {body}");
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    });

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pusher = Some(pusher);
    loop {
        for d in &mut devices {
            d.poll();
        }
        if pusher.as_ref().is_some_and(|p| p.is_finished()) {
            pusher.take().expect("pusher").join().expect("pusher thread");
        }
        let complete = devices.iter().all(|d| d.payloads.len() >= ROUNDS);
        if pusher.is_none() && complete {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pushes incomplete after 60 s: {} of {} devices complete",
            devices.iter().filter(|d| d.payloads.len() >= ROUNDS).count(),
            DEVICES
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // Converged: within 10% of each other, and connections really moved.
    let per_shard = gw.connections_per_shard();
    let (min, max) = (
        *per_shard.iter().min().expect("shards"),
        *per_shard.iter().max().expect("shards"),
    );
    assert_eq!(per_shard.iter().sum::<u64>(), DEVICES as u64, "{per_shard:?}");
    assert!(
        (max - min) as f64 <= 0.1 * max as f64,
        "shards not within 10%: {per_shard:?}"
    );
    assert!(gw.metric_sum("pulsegate_connections_moved_in_total") >= (DEVICES as u64 * 3 / 4) - 3);
    assert_eq!(gw.metric("pulsegate_move_failures_total"), 0);

    // Nothing lost, nothing doubled, nobody noticed.
    for d in &devices {
        assert!(!d.closed, "{} was disconnected", d.id);
        let got: BTreeSet<usize> = d.payloads.iter().copied().collect();
        assert_eq!(got, (0..ROUNDS).collect(), "{} got {:?}", d.id, d.payloads);
        assert_eq!(d.payloads.len(), ROUNDS, "{} got duplicates: {:?}", d.id, d.payloads);
    }
    assert_eq!(gw.metric("pulsegate_pushes_dropped_total"), 0);

    // Every socket, moved or not, still works both ways.
    for d in &mut devices {
        let mut out = Vec::new();
        Packet::PingReq.encode(d.version, &mut out);
        d.write(&out);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while devices.iter().any(|d| d.ping_responses == 0) {
        assert!(Instant::now() < deadline, "a moved device got no PINGRESP");
        for d in &mut devices {
            d.poll();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(devices.iter().all(|d| !d.closed));
    assert_eq!(gw.metric_sum("pulsegate_closes_total"), 0, "{}", gw.metrics());

    // Hysteresis: once balanced, nothing moves again (two more hold times).
    let rounds = gw.metric("pulsegate_rebalance_rounds_total");
    let moved = gw.metric_sum("pulsegate_connections_moved_in_total");
    std::thread::sleep(Duration::from_millis(4_500));
    assert_eq!(gw.metric("pulsegate_rebalance_rounds_total"), rounds);
    assert_eq!(gw.metric_sum("pulsegate_connections_moved_in_total"), moved);
}

both_backends!(all_on_one_shard_converge_while_pushes_flow);
