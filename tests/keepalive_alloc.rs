//! Allocations per keep-alive on the shard threads, counted by a global
//! allocator in this test binary: real io_uring shards started in-process,
//! real TCP clients on loopback sending PINGREQs, every PINGRESP checked.
//!
//! Owns the counting allocator (it counts only on threads named `shard-*`,
//! so the clients on the test thread are not counted). Must never count a
//! thread's own start-up: the window opens after every client is connected
//! and has been answered a few times (the warm-up).
// A global allocator is an `unsafe impl` (GlobalAlloc's contract); this file
// needs it and nothing else unsafe.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use pulsegate::auth::AllowAll;
use pulsegate::config::Config;
use pulsegate::gateway::Owners;
use pulsegate::shard::env::BackendInUse;

/// Heap allocations (alloc, alloc_zeroed, realloc) made on shard threads.
static SHARD_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// 0: not yet asked, 1: a shard thread, 2: any other thread (or asking now).
    static THREAD_KIND: Cell<u8> = const { Cell::new(0) };
}

fn on_shard_thread() -> bool {
    THREAD_KIND
        .try_with(|kind| {
            if kind.get() == 0 {
                // Set first: if naming the thread allocates, that nested call
                // sees "other" and does not recurse.
                kind.set(2);
                let shard = std::thread::current().name().is_some_and(|n| n.starts_with("shard-"));
                kind.set(if shard { 1 } else { 2 });
            }
            kind.get() == 1
        })
        .unwrap_or(false)
}

struct CountingAllocator;

// SAFETY: every call is passed to the system allocator unchanged; the
// counting touches only an atomic and a const-initialised thread local.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if on_shard_thread() {
            SHARD_ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: the caller's layout contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if on_shard_thread() {
            SHARD_ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: as for alloc.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if on_shard_thread() {
            SHARD_ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: `ptr` came from this allocator (hence from System) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (hence from System) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const CLIENTS: usize = 200;
const WARM_UP_PINGS: usize = 5;
const COUNTED_ROUNDS: usize = 50;
const SPLIT_ROUNDS: usize = 10;

fn connect_packet(client_id: &str, v5: bool) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', if v5 { 5 } else { 4 }, 0x02, 0, 120]);
    if v5 {
        body.push(0); // no properties
    }
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

fn read_exact_within(stream: &mut TcpStream, buf: &mut [u8], what: &str) {
    stream
        .read_exact(buf)
        .unwrap_or_else(|e| panic!("{what}: {e} (the gateway did not answer within the read timeout)"));
}

/// One round: every client sends a PINGREQ, then every PINGRESP is read.
fn ping_round(clients: &mut [TcpStream]) {
    for c in clients.iter_mut() {
        c.write_all(&[0xC0, 0x00]).expect("PINGREQ");
    }
    let mut resp = [0u8; 2];
    for c in clients.iter_mut() {
        read_exact_within(c, &mut resp, "PINGRESP");
        assert_eq!(resp, [0xD0, 0x00], "a PINGRESP, whole and alone");
    }
}

/// One round of PINGREQs split in two: the first byte, a pause (each
/// connection now holds a partial packet), then the second.
fn split_ping_round(clients: &mut [TcpStream]) {
    for c in clients.iter_mut() {
        c.write_all(&[0xC0]).expect("PINGREQ, first byte");
    }
    std::thread::sleep(Duration::from_millis(20));
    ping_round_rest(clients);
}

fn ping_round_rest(clients: &mut [TcpStream]) {
    for c in clients.iter_mut() {
        c.write_all(&[0x00]).expect("PINGREQ, second byte");
    }
    let mut resp = [0u8; 2];
    for c in clients.iter_mut() {
        read_exact_within(c, &mut resp, "PINGRESP");
        assert_eq!(resp, [0xD0, 0x00], "a PINGRESP, whole and alone");
    }
}

#[test]
fn a_keep_alive_allocates_nothing_on_the_shard() {
    let dir = tempdir();
    let cfg = Config {
        mqtt_listen: "127.0.0.1:0".parse().expect("address"),
        shards: 2,
        pin_cpus: false,
        data_dir: dir.clone(),
        ..Config::default()
    };
    let cfg = Arc::new(cfg);
    let owners = Owners::new(cfg, Arc::new(AllowAll::default()), BackendInUse::Uring).expect("owners");
    let stop = Arc::new(AtomicBool::new(false));
    let nofile = pulsegate::sys::rlimit::raise_nofile();
    let shards = pulsegate::shard::start(owners.shard_env(), BackendInUse::Uring, nofile.soft, stop.clone())
        .expect("shards start (io_uring)");
    let addr = shards.mqtt_addr;

    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let mut c = TcpStream::connect(addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        c.set_nodelay(true).expect("nodelay");
        let v5 = i % 2 == 1;
        c.write_all(&connect_packet(&format!("alloc-{i}"), v5))
            .expect("CONNECT");
        let mut header = [0u8; 2];
        read_exact_within(&mut c, &mut header, "CONNACK");
        assert_eq!(header[0], 0x20, "CONNACK");
        assert!(header[1] < 128, "a short CONNACK");
        let mut body = vec![0u8; header[1] as usize];
        read_exact_within(&mut c, &mut body, "CONNACK body");
        assert_eq!(body[1], 0, "accepted");
        clients.push(c);
    }
    for _ in 0..WARM_UP_PINGS {
        ping_round(&mut clients);
    }

    let before = SHARD_ALLOCATIONS.load(Relaxed);
    for _ in 0..COUNTED_ROUNDS {
        ping_round(&mut clients);
    }
    let allocations = SHARD_ALLOCATIONS.load(Relaxed) - before;
    let keepalives = (CLIENTS * COUNTED_ROUNDS) as u64;

    // Split keep-alives: each connection borrows an active part for its
    // partial packet; once the pool has enough boxes, that allocates nothing.
    for _ in 0..WARM_UP_PINGS {
        split_ping_round(&mut clients);
    }
    let before = SHARD_ALLOCATIONS.load(Relaxed);
    for _ in 0..SPLIT_ROUNDS {
        split_ping_round(&mut clients);
    }
    let split_allocations = SHARD_ALLOCATIONS.load(Relaxed) - before;

    stop.store(true, Relaxed);
    drop(clients);
    for t in shards.threads {
        t.join().expect("shard thread");
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        SHARD_ALLOCATIONS.load(Relaxed) > 0,
        "the counter counts on shard threads (they allocate at start-up)"
    );
    assert_eq!(
        allocations, 0,
        "{allocations} heap allocations on shard threads for {keepalives} keep-alives"
    );
    assert_eq!(
        split_allocations,
        0,
        "{split_allocations} heap allocations on shard threads for {} keep-alives split across receives",
        CLIENTS * SPLIT_ROUNDS
    );
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pulsegate-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
