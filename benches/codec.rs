//! Micro-benchmark of the MQTT codec (`pulsegate::protocol::mqtt`), std::time::Instant and
//! std::hint::black_box only.
//!
//!     CARGO_TARGET_DIR=... cargo bench --bench codec [-- FILTER]
//!
//! One row per parameter set (operation x packet x protocol version x QoS x payload size).
//! Each row: warm-up, calibration to ~`CODEC_BENCH_MS / SAMPLES` per sample, then SAMPLES
//! timed samples; ns/op is the median sample, `min` the fastest. MB/s = whole frame bytes
//! (fixed header included) / median ns/op, in 10^6 bytes per second.
//! Results are also written as JSON (see benches/support/mod.rs for the path).
//! Env: CODEC_BENCH_MS (per row, default 300), CODEC_BENCH_SAMPLES (default 7).

#[path = "support/mod.rs"]
mod support;

use pulsegate::protocol::mqtt::{
    Connect, ConnectProperties, Packet, ProtocolVersion, PubAck, Publish, PublishProperties, check_frame, decode_packet,
};
use std::hint::black_box;
use std::time::{Duration, Instant};
use support::J;

const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;
/// The gateway's default --max-packet-bytes.
const MAX_PACKET_BYTES: u32 = 262_144;
/// A push topic as the gateway writes it: push/{client id}.
const TOPIC: &str = "push/phone-0012345678";
const CLIENT_ID: &str = "phone-0012345678";

/// Runs the operation `n` times.
type Body<'a> = Box<dyn FnMut(u64) + 'a>;

struct Case<'a> {
    op: &'static str,
    packet: &'static str,
    version: Option<ProtocolVersion>,
    qos: Option<u8>,
    payload_bytes: Option<usize>,
    /// Whole frame on the wire, for MB/s.
    frame_bytes: usize,
    body: Body<'a>,
}

impl Case<'_> {
    fn name(&self) -> String {
        let mut s = format!("{} {}", self.op, self.packet);
        if let Some(v) = self.version {
            s.push_str(if v == V5 { " v5" } else { " v3.1.1" });
        }
        if let Some(q) = self.qos {
            s.push_str(&format!(" qos{q}"));
        }
        if let Some(p) = self.payload_bytes {
            s.push_str(&format!(" {}", human_bytes(p)));
        }
        s
    }
}

fn human_bytes(n: usize) -> String {
    if n >= 1024 && n.is_multiple_of(1024) {
        format!("{}KiB", n / 1024)
    } else {
        format!("{n}B")
    }
}

fn version_label(v: ProtocolVersion) -> &'static str {
    if v == V5 { "5" } else { "3.1.1" }
}

fn encode(p: &Packet<'_>, v: ProtocolVersion) -> Vec<u8> {
    let mut out = Vec::new();
    p.encode(v, &mut out);
    out
}

fn publish(qos: u8, payload: &[u8]) -> Publish<'_> {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: TOPIC,
        packet_id: (qos > 0).then_some(4242),
        payload,
        properties: PublishProperties::default(),
    }
}

fn connect(v: ProtocolVersion) -> Connect<'static> {
    Connect {
        protocol_version: v,
        clean_start: true,
        keepalive_s: 300,
        client_id: CLIENT_ID,
        username: Some("carrier-user"),
        password: Some(b"0123456789abcdef0123456789abcdef"),
        will: None,
        properties: if v == V5 {
            ConnectProperties {
                session_expiry_interval_s: Some(3600),
                receive_maximum: Some(32),
                maximum_packet_size_bytes: Some(MAX_PACKET_BYTES),
                topic_alias_maximum: Some(0),
                ..Default::default()
            }
        } else {
            ConnectProperties::default()
        },
    }
}

/// decode_packet on `frame`, checked once to be a successful decode.
fn decode_case<'a>(
    packet: &'static str,
    v: ProtocolVersion,
    qos: Option<u8>,
    payload_bytes: Option<usize>,
    frame: &'a [u8],
) -> Case<'a> {
    let decoded = decode_packet(frame, v);
    assert!(decoded.is_ok(), "{packet}: sample frame does not decode: {decoded:?}");
    Case {
        op: "decode",
        packet,
        version: Some(v),
        qos,
        payload_bytes,
        frame_bytes: frame.len(),
        body: Box::new(move |n| {
            for _ in 0..n {
                let _ = black_box(decode_packet(black_box(frame), v));
            }
        }),
    }
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let m = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[m]
    } else {
        (xs[m - 1] + xs[m]) / 2.0
    }
}

struct Measured {
    ns_median: f64,
    ns_min: f64,
    iters_per_sample: u64,
    samples: usize,
}

fn measure(body: &mut Body<'_>, budget: Duration, samples: usize) -> Measured {
    // Warm-up and calibration: double n until one call takes >= 1/20 of the budget.
    let mut n = 1u64;
    let per_call = loop {
        let t = Instant::now();
        body(n);
        let el = t.elapsed();
        if el >= budget / 20 || n >= 1 << 40 {
            break el.as_secs_f64() / n as f64;
        }
        n *= 2;
    };
    let per_sample = budget.as_secs_f64() / samples as f64;
    let iters = ((per_sample / per_call.max(1e-12)) as u64).max(1);
    let mut ns: Vec<f64> = (0..samples)
        .map(|_| {
            let t = Instant::now();
            body(iters);
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    let ns_min = ns.iter().copied().fold(f64::INFINITY, f64::min);
    Measured {
        ns_median: median(&mut ns),
        ns_min,
        iters_per_sample: iters,
        samples,
    }
}

fn env_num<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let unix = support::unix_s();
    let budget = Duration::from_millis(env_num("CODEC_BENCH_MS", 300u64).max(10));
    let samples = env_num("CODEC_BENCH_SAMPLES", 7usize).max(1);
    // cargo bench passes "--bench"; anything not starting with "-" is a name filter.
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();

    // --- sample frames (built once, borrowed by the cases) ---
    let sizes = [16usize, 256, 4096];
    let payloads: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![b'x'; n]).collect();
    let pingreq = encode(&Packet::PingReq, V311);
    let connect_frames: Vec<(ProtocolVersion, Vec<u8>)> = [V311, V5]
        .iter()
        .map(|&v| (v, encode(&Packet::Connect(connect(v)), v)))
        .collect();
    let puback = |v| {
        encode(
            &Packet::PubAck(PubAck {
                packet_id: 4242,
                reason: 0,
            }),
            v,
        )
    };
    let puback_frames = [(V311, puback(V311)), (V5, puback(V5))];
    // (version, qos, payload index, frame)
    let mut publish_frames: Vec<(ProtocolVersion, u8, usize, Vec<u8>)> = Vec::new();
    for v in [V311, V5] {
        for qos in [0u8, 1] {
            for (i, p) in payloads.iter().enumerate() {
                publish_frames.push((v, qos, i, encode(&Packet::Publish(publish(qos, p)), v)));
            }
        }
    }

    // --- the table of parameter sets ---
    let mut cases: Vec<Case<'_>> = Vec::new();
    for v in [V311, V5] {
        cases.push(decode_case("PINGREQ", v, None, None, &pingreq));
    }
    for (v, f) in &connect_frames {
        cases.push(decode_case("CONNECT", *v, None, None, f));
    }
    for (v, f) in &puback_frames {
        cases.push(decode_case("PUBACK", *v, Some(1), None, f));
    }
    for (v, qos, i, f) in &publish_frames {
        cases.push(decode_case("PUBLISH", *v, Some(*qos), Some(sizes[*i]), f));
    }
    for (v, qos, i, f) in &publish_frames {
        let (v, qos) = (*v, *qos);
        let payload: &[u8] = &payloads[*i];
        let mut out = Vec::with_capacity(f.len() * 2);
        let check = encode(&Packet::Publish(publish(qos, payload)), v);
        assert_eq!(&check, f, "encode is not deterministic");
        cases.push(Case {
            op: "encode",
            packet: "PUBLISH",
            version: Some(v),
            qos: Some(qos),
            payload_bytes: Some(sizes[*i]),
            frame_bytes: f.len(),
            // The output buffer is reused (cleared) as a shard's send buffer would be.
            body: Box::new(move |n| {
                for _ in 0..n {
                    out.clear();
                    let p = Packet::Publish(publish(qos, black_box(payload)));
                    black_box(p.encode(black_box(v), &mut out));
                    black_box(&out);
                }
            }),
        });
    }
    // check_frame alone: a 2-byte header (PINGREQ) and a 3-byte one (PUBLISH 4 KiB, 2-byte varint).
    let big = &publish_frames
        .iter()
        .find(|(v, q, i, _)| *v == V311 && *q == 1 && *i == 2)
        .unwrap()
        .3;
    for (packet, frame) in [("PINGREQ", &pingreq), ("PUBLISH 4KiB", big)] {
        assert!(check_frame(frame, MAX_PACKET_BYTES).is_ok());
        let frame: &[u8] = frame;
        cases.push(Case {
            op: "check_frame",
            packet,
            version: None,
            qos: None,
            payload_bytes: None,
            frame_bytes: frame.len(),
            body: Box::new(move |n| {
                for _ in 0..n {
                    let _ = black_box(check_frame(black_box(frame), black_box(MAX_PACKET_BYTES)));
                }
            }),
        });
    }

    println!(
        "codec bench: {} ms per row, {samples} samples, median ns/op (min), MB/s over whole frames",
        budget.as_millis()
    );
    println!(
        "{:<34} {:>7} {:>10} {:>10} {:>10}",
        "case", "bytes", "ns/op", "min", "MB/s"
    );
    let mut rows = Vec::new();
    for mut c in cases {
        let name = c.name();
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let m = measure(&mut c.body, budget, samples);
        // bytes/ns * 1e3 = 10^6 bytes/s
        let mbps = c.frame_bytes as f64 / m.ns_median * 1e3;
        println!(
            "{name:<34} {:>7} {:>10.1} {:>10.1} {:>10.1}",
            c.frame_bytes, m.ns_median, m.ns_min, mbps
        );
        let opt_int = |o: Option<usize>| o.map(|x| J::Int(x as i64)).unwrap_or(J::Null);
        rows.push(J::obj(vec![
            ("name", J::str(name)),
            ("op", J::str(c.op)),
            ("packet", J::str(c.packet)),
            (
                "protocol_version",
                c.version.map(|v| J::str(version_label(v))).unwrap_or(J::Null),
            ),
            ("qos", c.qos.map(|q| J::Int(q.into())).unwrap_or(J::Null)),
            ("payload_bytes", opt_int(c.payload_bytes)),
            ("frame_bytes", J::Int(c.frame_bytes as i64)),
            ("ns_per_op", J::Num(m.ns_median)),
            ("ns_per_op_min", J::Num(m.ns_min)),
            ("mb_per_s", J::Num(mbps)),
            ("iters_per_sample", J::Int(m.iters_per_sample as i64)),
            ("samples", J::Int(m.samples as i64)),
        ]));
    }

    let mut report = support::meta("codec", unix);
    report.push((
        "config".into(),
        J::obj(vec![
            ("ms_per_row", J::Int(budget.as_millis() as i64)),
            ("samples", J::Int(samples as i64)),
            ("topic", J::str(TOPIC)),
            ("filters", J::Arr(filters.iter().map(|f| J::str(f.clone())).collect())),
            (
                "mb",
                J::str("10^6 bytes of whole frames (fixed header included) per second, at the median"),
            ),
        ]),
    ));
    report.push(("results".into(), J::Arr(rows)));
    support::write_and_print("codec", unix, &J::Obj(report));
}
