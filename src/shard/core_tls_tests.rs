//! Sans-IO tests of MQTT over TLS through the shard facade: a rustls client
//! handshakes and connects through `Core::receive` / `Core::next_send`; the
//! idle connection keeps no buffers; TLS connections are never chosen to
//! move; without a TLS identity an accepted TLS connection is closed.
//!
//! Owns these tests only. Must never open a socket (tests/mqtt_tls.rs does).

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;

use super::core::Core;
use super::counters::{CloseReason, ShardCounters};
use super::mailbox::{self, Command, Wake};
use super::peers::ShardHandle;
use crate::protocol::mqtt;
use crate::shard::env::ShardEnv;
use crate::tls::test_pki::TestPki;

struct NoWake;
impl Wake for NoWake {
    fn wake(&self) {}
}

/// A core whose environment has a TLS identity (and the client roots trusting it).
fn tls_core(name: &str) -> (Core, rustls::RootCertStore) {
    let dir = std::env::temp_dir().join(format!("pulsegate-core-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = TestPki::new(&dir, "core-ca", &["localhost"]);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let (mut env, _reports) = ShardEnv::standalone(Arc::new(crate::config::Config::default()));
    env.tls = Some(Arc::new(pki.server_tls(&[b"mqtt"])));
    let _ = std::fs::remove_dir_all(&dir);
    (core_on(env), roots)
}

fn core_on(env: ShardEnv) -> Core {
    let mut handles = Vec::new();
    for _ in 0..2 {
        let (tx, _rx) = mailbox::mailbox(64, Arc::new(NoWake));
        handles.push(ShardHandle {
            mailbox: tx,
            counters: Arc::new(ShardCounters::default()),
            ring_fd: std::sync::atomic::AtomicI32::new(-1),
        });
    }
    env.peers.install(handles);
    Core::new(0, env, Arc::new(ShardCounters::default()), 16)
}

/// What the core sends for `key`, as the loop would take it.
fn sent(core: &mut Core, key: u32) -> Vec<u8> {
    let mut wire = Vec::new();
    while let Some(bytes) = core.next_send(key) {
        let n = bytes.len();
        wire.extend_from_slice(bytes);
        core.send_done(key, n);
    }
    wire
}

/// Client bytes -> core, core bytes -> client, a few rounds.
fn exchange(core: &mut Core, key: u32, client: &mut rustls::ClientConnection) {
    for _ in 0..6 {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        if !wire.is_empty() {
            core.receive(key, &wire);
        }
        let back = sent(core, key);
        let mut rd = &back[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
        }
        client.process_new_packets().unwrap();
    }
}

fn client(roots: rustls::RootCertStore) -> rustls::ClientConnection {
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"mqtt".to_vec()];
    rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap()
}

fn connect_packet(id: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    mqtt::Connect {
        protocol_version: mqtt::ProtocolVersion::V311,
        clean_start: true,
        keepalive_s: 30,
        client_id: id,
        username: None,
        password: None,
        will: None,
        properties: Default::default(),
    }
    .encode(mqtt::ProtocolVersion::V311, &mut bytes);
    bytes
}

#[test]
fn a_tls_connection_connects_through_the_core_then_idles_without_buffers_and_never_moves() {
    let (mut core, roots) = tls_core("connect");
    let (key, _) = core.accept(7).unwrap();
    core.start_tls(key);
    assert_eq!(core.tls_connections(), 1);
    let mut c = client(roots);
    c.writer().write_all(&connect_packet("tls-dev")).unwrap();
    exchange(&mut core, key, &mut c);
    let mut connack = [0u8; 4];
    c.reader().read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK, decrypted by the client");
    assert_eq!(
        core.counters()
            .tls_handshakes_full
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(
        core.conn_mut(key).unwrap().active.is_none(),
        "idle: no Active, no TLS buffers"
    );
    // PINGREQ -> PINGRESP over TLS; idle again afterwards.
    c.writer().write_all(&[0xC0, 0]).unwrap();
    exchange(&mut core, key, &mut c);
    let mut pong = [0u8; 2];
    c.reader().read_exact(&mut pong).unwrap();
    assert_eq!(pong, [0xD0, 0]);
    assert!(core.conn_mut(key).unwrap().active.is_none());
    // Rebalancing passes TLS connections over; a plain one beside it is chosen.
    let (plain, _) = core.accept(8).unwrap();
    core.receive(plain, &connect_packet("plain-dev"));
    core.command(Command::Move {
        to: 1,
        count: 10,
        hold_ms: 10_000,
    });
    let chosen = core.take_moves();
    assert_eq!(chosen.iter().map(|m| m.key).collect::<Vec<_>>(), [plain]);
    // The slot's TLS state goes with the slot.
    core.peer_closed(key, CloseReason::PeerClosed);
    core.release(key);
    assert_eq!(core.tls_connections(), 0);
}

#[test]
fn without_a_tls_identity_a_tls_connection_is_closed() {
    let (env, _reports) = ShardEnv::standalone(Arc::new(crate::config::Config::default()));
    let mut core = core_on(env);
    let (key, _) = core.accept(7).unwrap();
    core.start_tls(key);
    assert_eq!(core.counters().get_close(CloseReason::TlsError), 1);
    assert!(core.close_ready(key));
    assert_eq!(core.tls_connections(), 0);
}
