//! Sans-IO tests of the shard facade (`Core`) over its owners: cross-shard
//! moves end to end between two cores sharing a registry, and the `Active`
//! free list on the keep-alive path.
//!
//! Owns these tests only. Must never open a socket: the integration tests in
//! `tests/` drive the real binary.

use std::sync::Arc;

use bytes::Bytes;

use super::core::Core;
use super::mailbox::Command;
use super::migrate::MoveStep;
use crate::delivery::{Location, Push};
use crate::protocol::mqtt;
use crate::shard::counters::ShardCounters;
use crate::shard::env::ShardEnv;
use crate::shard::mailbox::{self, MailboxReceiver, Wake};
use crate::shard::peers::ShardHandle;

struct NoWake;
impl Wake for NoWake {
    fn wake(&self) {}
}

/// Two sans-IO shards sharing one registry, and their mailboxes' receiving ends.
fn two_shards() -> (ShardEnv, [Core; 2], [MailboxReceiver; 2]) {
    let (shared, _reports) = ShardEnv::standalone(Arc::new(crate::config::Config::default()));
    let mut handles = Vec::new();
    let mut receivers = Vec::new();
    let mut counters = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = mailbox::mailbox(64, Arc::new(NoWake));
        let c = Arc::new(ShardCounters::default());
        handles.push(ShardHandle {
            mailbox: tx,
            counters: c.clone(),
            ring_fd: std::sync::atomic::AtomicI32::new(-1),
        });
        receivers.push(rx);
        counters.push(c);
    }
    shared.peers.install(handles);
    let cores = [
        Core::new(0, shared.clone(), counters[0].clone(), 16),
        Core::new(1, shared.clone(), counters[1].clone(), 16),
    ];
    let [r0, r1]: [MailboxReceiver; 2] = receivers.try_into().ok().expect("two");
    (shared, cores, [r0, r1])
}

fn connect(core: &mut Core, id: &str) -> (u32, u32) {
    let (key, generation) = core.accept(7).expect("room");
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
    core.receive(key, &bytes);
    (key, generation)
}

fn push(id: u64) -> Push {
    Push {
        id,
        qos: 1,
        payload: Bytes::from_static(b"hello"),
        tracked: false,
        control_topic: None,
        sent_as: None,
    }
}

fn out_len(core: &mut Core, key: u32) -> usize {
    core.conn_mut(key)
        .and_then(|c| c.active.as_ref())
        .map_or(0, |a| a.backlog_bytes())
}

/// Command::Move, as the coordinator posts it.
fn choose_moves(core: &mut Core, to: u16, count: u32, hold_ms: u64) {
    core.command(Command::Move { to, count, hold_ms });
}

#[test]
fn a_moved_connection_keeps_its_output_id_and_pushes() {
    let (shared, [mut a, mut b], [_ra, rb]) = two_shards();
    let (key, generation) = connect(&mut a, "dev-1");
    let connack_bytes = out_len(&mut a, key);
    assert!(connack_bytes > 0, "CONNACK queued, not yet sent");
    choose_moves(&mut a, 1, 5, 10_000);
    let chosen = a.take_moves();
    assert_eq!(chosen.len(), 1, "the only movable connection");
    assert_eq!(a.move_step(&chosen[0]), MoveStep::Ready);
    let moving = a.hand_off(&chosen[0], None);
    a.send_moving(1, moving);
    assert_eq!(a.connections(), 0);
    // A push routed by a registry lookup made before the move reaches the old shard.
    a.command(Command::Push {
        key,
        generation,
        push: push(1),
    });
    a.post_outbox();
    rb.rearm();
    let mut commands = 0;
    while let Some(c) = rb.try_recv() {
        b.command(c);
        commands += 1;
    }
    assert_eq!(commands, 2, "the state, then the forwarded push behind it");
    let here = shared.registry.lookup("dev-1").expect("still online");
    assert_eq!((here.shard, b.connections()), (1, 1));
    assert!(
        out_len(&mut b, here.key) > connack_bytes,
        "the unsent CONNACK and the PUBLISH"
    );
    assert_eq!(b.take_arrivals().len(), 1, "the backend takes up the socket");
    // A connection that just moved stays put for the hold time.
    choose_moves(&mut b, 0, 5, 10_000);
    assert!(b.take_moves().is_empty());
    assert_eq!(
        a.counters()
            .connections_moved_out
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        b.counters()
            .connections_moved_in
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn a_connection_claimed_while_moving_is_taken_over_on_arrival() {
    let (shared, [mut a, mut b], [_ra, rb]) = two_shards();
    let (key, _) = connect(&mut a, "dev-2");
    choose_moves(&mut a, 1, 1, 10_000);
    let chosen = a.take_moves();
    let moving = a.hand_off(&chosen[0], None);
    // The same client id connects again before the state arrives.
    let newcomer = Location {
        shard: 0,
        key: key + 1,
        generation: 99,
        persistent: false,
    };
    shared
        .registry
        .claim(&Arc::from("dev-2"), newcomer, false, std::time::Instant::now());
    a.send_moving(1, moving);
    a.post_outbox();
    rb.rearm();
    while let Some(c) = rb.try_recv() {
        b.command(c);
    }
    assert_eq!(shared.registry.lookup("dev-2"), Some(newcomer));
    let mut closing = Vec::new();
    b.take_closing(&mut closing);
    assert_eq!(closing.len(), 1, "the moved connection closes (0x8E)");
}

#[test]
fn a_failed_pass_brings_the_connection_home() {
    let (shared, [mut a, _b], _) = two_shards();
    let (key, generation) = connect(&mut a, "dev-3");
    choose_moves(&mut a, 1, 1, 10_000);
    let chosen = a.take_moves();
    let moving = a.hand_off(&chosen[0], None);
    a.park_moving(moving);
    // A push arrives while the socket is in flight: it is held with the state.
    a.command(Command::Push {
        key,
        generation,
        push: push(2),
    });
    let home = a.move_failed(key, generation & 0x00FF_FFFF).expect("adopted back");
    let here = shared.registry.lookup("dev-3").expect("online");
    assert_eq!((here.shard, here.key), (0, home));
    assert!(out_len(&mut a, home) > 0, "the held push is sent");
    assert_eq!(a.counters().move_failures.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// Sends everything queued for `key`, as a backend would; returns the bytes.
fn flush(core: &mut Core, key: u32) -> Vec<u8> {
    let mut dirty = Vec::with_capacity(16);
    core.take_dirty(&mut dirty);
    assert_eq!(dirty, [key]);
    let mut sent = Vec::new();
    while let Some(bytes) = core.next_send(key) {
        let n = bytes.len();
        sent.extend_from_slice(bytes);
        core.send_done(key, n);
    }
    sent
}

#[test]
fn a_ping_on_an_idle_connection_is_answered_from_the_static_buffer() {
    use crate::shard::conn::{IO_PINGRESP_OWED, IO_SEND_IN_FLIGHT};
    let (_env, [mut a, _b], _) = two_shards();
    let (key, _) = connect(&mut a, "dev-ping");
    assert!(!flush(&mut a, key).is_empty(), "the CONNACK");
    assert!(a.conn_mut(key).expect("open").active.is_none(), "idle: no active part");
    let pool_before = a.active_pool_hits_misses();
    let mut dirty = Vec::with_capacity(16);
    for _ in 0..100 {
        a.receive(key, &[0xC0, 0x00]);
        let conn = a.conn_mut(key).expect("open");
        assert!(conn.active.is_none(), "a PINGREQ borrows no active part");
        assert_ne!(conn.io_flags & IO_PINGRESP_OWED, 0, "the PINGRESP is owed");
        a.take_dirty(&mut dirty);
        assert_eq!(dirty, [key]);
        assert_eq!(a.next_send(key), None, "no ordinary output");
        assert_eq!(a.take_owed_pingresp(key), Some(&[0xD0, 0x00][..]));
        assert_ne!(a.conn_mut(key).expect("open").io_flags & IO_SEND_IN_FLIGHT, 0);
        a.static_send_issued(key);
        let conn = a.conn_mut(key).expect("open");
        assert_eq!(conn.io_flags & (IO_SEND_IN_FLIGHT | IO_PINGRESP_OWED), 0);
        assert!(conn.active.is_none());
    }
    assert_eq!(a.active_pool_hits_misses(), pool_before, "the pool was never asked");
}

#[test]
fn an_owed_pingresp_is_never_overtaken_by_later_output() {
    let (_env, [mut a, _b], _) = two_shards();
    let (key, _) = connect(&mut a, "dev-order");
    flush(&mut a, key);
    // PINGREQ then SUBSCRIBE in one segment: the SUBACK is queued after the
    // owed PINGRESP, which becomes ordinary output ahead of it.
    let mut bytes = vec![0xC0, 0x00];
    mqtt::Packet::Subscribe(mqtt::Subscribe {
        packet_id: 7,
        filters: vec![(
            "push/dev-order",
            mqtt::SubscriptionOptions {
                qos: 1,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            },
        )],
    })
    .encode(mqtt::ProtocolVersion::V5, &mut bytes);
    a.receive(key, &bytes);
    assert_eq!(a.take_owed_pingresp(key), None, "no longer owed: it is output now");
    let sent = flush(&mut a, key);
    assert_eq!(&sent[..2], &[0xD0, 0x00], "PINGRESP first");
    assert_eq!(sent[2] >> 4, 9, "then the SUBACK");
    // A static send that went short: its rest goes before anything queued since.
    a.receive(key, &[0xC0, 0x00]);
    let mut dirty = Vec::new();
    a.take_dirty(&mut dirty);
    assert!(a.take_owed_pingresp(key).is_some());
    a.receive(key, &[0xC0, 0x00]);
    a.static_send_failed(key, 1);
    a.static_send_issued(key);
    assert_eq!(
        flush(&mut a, key),
        [0x00, 0xD0, 0x00],
        "the rest, then the next PINGRESP"
    );
}
