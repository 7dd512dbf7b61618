//! File descriptors are not leaked: the gateway's shards run in this process
//! on real sockets (epoll, then io_uring), a few thousand connections open
//! and close (some after CONNECT, some cut mid-packet, some reset, some
//! empty), and the process's fd table (/proc/self/fd) returns to its
//! baseline, every slot freed (io_uring's direct descriptors are not process
//! fds: their slots, released only after their Close completed, are counted
//! by the shards' open-connections gauge).
//!
//! Owns nothing the gateway runs. Must never run beside another test in this
//! binary: the fd count is process-wide.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pulsegate::config::Config;
use pulsegate::protocol::mqtt;
use pulsegate::shard::env::{BackendInUse, ShardEnv};
use pulsegate::shard::peers::Peers;

/// Connections opened per backend.
const CONNECTIONS: usize = 3_000;
/// Opened at once, before the batch is closed.
const BATCH: usize = 250;
/// Longest the shards may take to close everything.
const SETTLE_MS: u64 = 20_000;

/// The shards' environment for one run (the one place this test builds it).
fn new_env(cfg: Config) -> ShardEnv {
    ShardEnv::standalone(Arc::new(cfg)).0
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn connections_open(peers: &Peers) -> u64 {
    peers
        .all()
        .iter()
        .map(|h| h.counters.connections_open.load(Ordering::Relaxed))
        .sum()
}

fn accepts(peers: &Peers) -> u64 {
    peers
        .all()
        .iter()
        .map(|h| h.counters.accepts.load(Ordering::Relaxed))
        .sum()
}

fn connect_packet(id: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    mqtt::Connect {
        protocol_version: mqtt::ProtocolVersion::V5,
        clean_start: true,
        keepalive_s: 30,
        client_id: id,
        username: None,
        password: None,
        will: None,
        properties: Default::default(),
    }
    .encode(mqtt::ProtocolVersion::V5, &mut bytes);
    bytes
}

/// Opens one connection of kind `i % 4` and leaves it open (the caller drops it).
fn open(addr: SocketAddr, i: usize) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let packet = connect_packet(&format!("fd-{i}"));
    match i % 4 {
        // A whole session: CONNECT, CONNACK.
        0 => {
            s.write_all(&packet).ok()?;
            let mut ack = [0u8; 4];
            s.read_exact(&mut ack[..2]).ok()?;
        }
        // Cut mid-packet.
        1 => s.write_all(&packet[..packet.len() / 2]).ok()?,
        // Reset (SO_LINGER 0: the close sends RST) after CONNECT.
        2 => {
            s.write_all(&packet).ok()?;
            socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).ok()?;
        }
        // Nothing sent at all.
        _ => {}
    }
    Some(s)
}

fn run(backend: BackendInUse) {
    let cfg = Config {
        mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        shards: 2,
        ..Default::default()
    };
    let env = new_env(cfg);
    let shared = env.peers.clone();
    let nofile = pulsegate::sys::rlimit::raise_nofile();
    let stop = Arc::new(AtomicBool::new(false));
    let shards = pulsegate::shard::start(env, backend, nofile.soft, stop.clone())
        .unwrap_or_else(|e| panic!("{backend:?}: shards did not start: {e}"));
    let addr = shards.mqtt_addr;
    let baseline = open_fds();

    let mut opened = 0;
    for batch in 0..CONNECTIONS / BATCH {
        let streams: Vec<TcpStream> = (0..BATCH).filter_map(|j| open(addr, batch * BATCH + j)).collect();
        opened += streams.len();
        drop(streams);
    }
    assert!(
        opened > CONNECTIONS * 9 / 10,
        "{backend:?}: only {opened} connections opened"
    );

    let deadline = Instant::now() + Duration::from_millis(SETTLE_MS);
    while (accepts(&shared) < opened as u64 || connections_open(&shared) > 0 || open_fds() > baseline)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        accepts(&shared) >= opened as u64,
        "{backend:?}: {} accepted of {opened}",
        accepts(&shared)
    );
    assert_eq!(connections_open(&shared), 0, "{backend:?}: slots still held");
    assert_eq!(
        open_fds(),
        baseline,
        "{backend:?}: process fds did not return to the baseline"
    );

    stop.store(true, Ordering::Relaxed);
    shared.shutdown_all();
    for t in shards.threads {
        t.join().expect("a shard thread exits cleanly");
    }
}

#[test]
fn closed_connections_leave_no_descriptor_behind_on_either_backend() {
    run(BackendInUse::Epoll);
    if pulsegate::sys::uring::probe().is_ok() {
        run(BackendInUse::Uring);
    } else if std::env::var_os("CI").is_some() {
        panic!("io_uring unavailable under CI: the uring half of this test cannot run");
    } else {
        eprintln!("io_uring unavailable: only the epoll backend was checked");
    }
}
