//! Many connections over real sockets, on both backends with 2 shards: 2,000 concurrent idle
//! MQTT clients all get CONNACK, the per-shard `pulsegate_connections` gauges sum to 2,000
//! (both shards used), a sample still pings and receives pushes, and after every client
//! closes the gauges return to 0.

mod common;

use std::time::{Duration, Instant};

use common::*;

const CLIENTS: usize = 2_000;
const THREADS: usize = 8;

fn two_thousand_idle_clients(backend: &str) {
    let soft = raise_nofile();
    // Both backends' tests may run at once in this process.
    assert!(
        soft >= (2 * CLIENTS + 256) as u64,
        "RLIMIT_NOFILE {soft} is too low for {CLIENTS} clients"
    );
    let gw = Gateway::start(backend, &[]);
    let t0 = Instant::now();
    let mut clients: Vec<Client> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let gw = &gw;
                s.spawn(move || {
                    (0..CLIENTS / THREADS)
                        .map(|i| {
                            let version = if i % 2 == 0 { V5 } else { V311 };
                            gw.connect(&ConnectOpts::new(version, &format!("scale-{t}-{i}")).keepalive(300))
                                .0
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("connector thread"))
            .collect()
    });
    assert_eq!(clients.len(), CLIENTS);
    eprintln!("{backend}: {CLIENTS} connects in {:?}", t0.elapsed());

    let per_shard = gw.connections_per_shard();
    assert_eq!(
        per_shard.iter().sum::<u64>(),
        CLIENTS as u64,
        "per shard: {per_shard:?}"
    );
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "both shards hold connections: {per_shard:?}"
    );
    let text = gw.metrics();
    assert_eq!(
        metric_value(&text, "pulsegate_connects_total{version=\"5\"}"),
        (CLIENTS / 2) as u64
    );
    assert_eq!(
        metric_value(&text, "pulsegate_connects_total{version=\"3.1.1\"}"),
        (CLIENTS / 2) as u64
    );

    // A sample of them is alive end to end.
    for c in clients.iter_mut().step_by(97) {
        gw.assert_healthy(c);
    }

    drop(clients);
    gw.wait_connections(0, Duration::from_secs(5));
    let per_shard = gw.connections_per_shard();
    assert!(per_shard.iter().all(|&n| n == 0), "{per_shard:?}");
    assert_eq!(gw.closes("peer_closed"), CLIENTS as u64);
}

both_backends!(two_thousand_idle_clients);
