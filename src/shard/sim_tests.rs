//! Deterministic simulation: two shards on `SimIo` (seeded faults, virtual
//! clock), thousands of simulated devices speaking MQTT 5 with the crate's
//! own codec through them: connect, keep-alive and its expiry, takeover,
//! QoS 1 pushes with PUBACK, dispersal, a cross-shard move, resets and
//! connections cut mid-packet.
//!
//! Asserts: every push ends exactly once (acked or reported not delivered),
//! none reaches a device twice, every push to a healthy device is acked, no
//! descriptor leaks, every slot is freed. A failing run prints its seed:
//! `PULSEGATE_SIM_SEED=1234 cargo test --release --lib sim_` replays it;
//! `PULSEGATE_SIM_SOAK=200` runs that many seeds.
//!
//! Owns nothing the gateway runs. Must never depend on wall-clock time or
//! thread scheduling (one thread drives every shard and device).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::core::Core;
use super::counters::ShardCounters;
use super::env::ShardEnv;
use super::event_loop::EventLoop;
use super::mailbox::{self, Command, MailboxReceiver, Wake};
use super::peers::ShardHandle;
use crate::delivery::{DeliveryEvent, HELD_IN_SESSION, Push};
use crate::protocol::mqtt::{self, Packet, ProtocolVersion};
use crate::sys::sim_io::{SimFaults, SimIo, SimNet, SimRng, SockId};

/// Virtual time per simulation round.
const ROUND_MS: u64 = 10;
/// Commands a simulated shard's mailbox holds.
const SIM_MAILBOX_COMMANDS_MAX: usize = 8_192;
/// Provided buffers per simulated shard, and their size (small: splits packets).
const SIM_RECV_BUFS: u16 = 256;
const SIM_RECV_BUF_BYTES: usize = 512;

/// Builds `n` sans-IO cores sharing one environment, each with a mailbox
/// woken by `wakers[i]`, and the receiving end of what they report. The one
/// place these tests construct a Core.
pub(super) fn build_cores(
    cfg: crate::config::Config,
    wakers: Vec<Arc<dyn Wake>>,
    capacity: u32,
) -> (
    ShardEnv,
    crossbeam_channel::Receiver<DeliveryEvent>,
    Vec<(Core, MailboxReceiver)>,
) {
    let (shared, events) = ShardEnv::standalone(Arc::new(cfg));
    let mut handles = Vec::new();
    let mut parts = Vec::new();
    for waker in wakers {
        let (tx, rx) = mailbox::mailbox(SIM_MAILBOX_COMMANDS_MAX, waker);
        let counters = Arc::new(ShardCounters::default());
        handles.push(ShardHandle {
            mailbox: tx,
            counters: counters.clone(),
            ring_fd: std::sync::atomic::AtomicI32::new(-1),
        });
        parts.push((counters, rx));
    }
    shared.peers.install(handles);
    let cores = parts
        .into_iter()
        .enumerate()
        .map(|(i, (counters, rx))| (Core::new(i as u16, shared.clone(), counters, capacity), rx))
        .collect();
    (shared, events, cores)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DevState {
    /// Not yet connected (waits for its start round).
    Waiting,
    /// CONNECT sent, no CONNACK yet.
    Connecting,
    Connected,
    /// Its connection ended (either side); it does nothing more.
    Done,
}

/// What a device will do wrong, if anything.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Misbehaviour {
    None,
    /// Stops sending at some point: the server must expire it.
    GoesSilent {
        at_ms: u64,
    },
    /// Resets its connection at some point (maybe mid-packet).
    Resets {
        at_ms: u64,
        mid_packet: bool,
    },
    /// Sends FIN (a clean close without DISCONNECT).
    Leaves {
        at_ms: u64,
    },
}

struct Device {
    client_id: String,
    sock: Option<SockId>,
    state: DevState,
    start_ms: u64,
    keepalive_s: u16,
    next_ping_ms: u64,
    misbehaviour: Misbehaviour,
    /// A second connection claimed this id (or this one claimed an older one).
    taken_over: bool,
    /// Got its CONNACK.
    connected_once: bool,
    inbox: Vec<u8>,
    disconnect_reason: Option<u8>,
}

#[derive(Default)]
struct PushRecord {
    device: usize,
    /// Times the device received this push's PUBLISH.
    received: u32,
    acked: u32,
    not_delivered: u32,
}

struct Sim {
    seed: u64,
    net: Rc<RefCell<SimNet>>,
    shared: ShardEnv,
    shards: Vec<EventLoop<SimIo>>,
    events: crossbeam_channel::Receiver<DeliveryEvent>,
    devices: Vec<Device>,
    pushes: HashMap<u64, PushRecord>,
    next_push_id: u64,
    control_messages: u64,
    rng: SimRng,
}

macro_rules! check {
    ($sim:expr, $cond:expr, $($arg:tt)+) => {
        assert!(
            $cond,
            "seed {}: {} (replay: PULSEGATE_SIM_SEED={} cargo test --release --lib sim_)",
            $sim.seed,
            format!($($arg)+),
            $sim.seed
        )
    };
}

impl Sim {
    fn new(seed: u64, faults: SimFaults, devices: usize) -> Sim {
        let cfg = crate::config::Config {
            shards: 2,
            ..Default::default()
        };
        // Two shards: 0 listens, 1 gets connections only by moving (and takes a share).
        let net = SimNet::new(seed, faults, 0, &[true, true]);
        let wakers = vec![net.borrow().waker(0), net.borrow().waker(1)];
        let (shared, events, cores) = build_cores(cfg, wakers, devices as u32 * 2);
        let start_ms = cores.iter().map(|(c, _)| c.now_ms()).max().unwrap_or(0) + 1;
        net.borrow_mut().now_ms = start_ms;
        let shards = cores
            .into_iter()
            .enumerate()
            .map(|(i, (core, rx))| {
                let io = SimIo::new(net.clone(), i as u16, SIM_RECV_BUFS, SIM_RECV_BUF_BYTES);
                EventLoop::new(io, core, rx, shared.accept_gate.clone())
            })
            .collect();
        let mut rng = SimRng::new(seed ^ 0x5EED_DE71_CE00_0000);
        let devices = (0..devices)
            .map(|i| {
                let start_ms = start_ms + rng.below(2_000);
                let misbehaviour = match rng.below(20) {
                    0 => Misbehaviour::GoesSilent {
                        at_ms: start_ms + 1_000 + rng.below(5_000),
                    },
                    1 => Misbehaviour::Resets {
                        at_ms: start_ms + 500 + rng.below(8_000),
                        mid_packet: rng.chance(500),
                    },
                    2 => Misbehaviour::Leaves {
                        at_ms: start_ms + 500 + rng.below(8_000),
                    },
                    _ => Misbehaviour::None,
                };
                Device {
                    client_id: format!("d{i}"),
                    sock: None,
                    state: DevState::Waiting,
                    start_ms,
                    keepalive_s: 4 + rng.below(4) as u16,
                    next_ping_ms: 0,
                    misbehaviour,
                    taken_over: false,
                    connected_once: false,
                    inbox: Vec::new(),
                    disconnect_reason: None,
                }
            })
            .collect();
        Sim {
            seed,
            net,
            shared,
            shards,
            events,
            devices,
            pushes: HashMap::new(),
            next_push_id: 1,
            control_messages: 0,
            rng,
        }
    }

    fn now_ms(&self) -> u64 {
        self.net.borrow().now_ms
    }

    /// One round: every device acts, every shard takes a turn, time moves on.
    fn round(&mut self, stop: bool) -> bool {
        for d in 0..self.devices.len() {
            self.device_step(d);
        }
        let mut running = false;
        for shard in &mut self.shards {
            running |= shard.turn(stop);
        }
        self.take_events();
        self.net.borrow_mut().now_ms += ROUND_MS;
        running
    }

    fn device_step(&mut self, d: usize) {
        let now_ms = self.now_ms();
        let dev = &mut self.devices[d];
        match dev.state {
            DevState::Waiting if now_ms >= dev.start_ms => {
                let Some(sock) = self.net.borrow_mut().connect(0) else {
                    return;
                };
                let mut bytes = Vec::new();
                mqtt::Connect {
                    protocol_version: ProtocolVersion::V5,
                    clean_start: true,
                    keepalive_s: dev.keepalive_s,
                    client_id: &dev.client_id,
                    username: None,
                    password: None,
                    will: None,
                    properties: Default::default(),
                }
                .encode(ProtocolVersion::V5, &mut bytes);
                self.net.borrow_mut().device_write(sock, &bytes);
                dev.sock = Some(sock);
                dev.state = DevState::Connecting;
                dev.next_ping_ms = now_ms + dev.keepalive_s as u64 * 500;
            }
            DevState::Waiting | DevState::Done => {}
            DevState::Connecting | DevState::Connected => self.device_io(d, now_ms),
        }
    }

    fn device_io(&mut self, d: usize, now_ms: u64) {
        let Some(sock) = self.devices[d].sock else { return };
        let mut net = self.net.borrow_mut();
        let dev = &mut self.devices[d];
        dev.inbox.extend(net.device_read(sock));
        let mut out = Vec::new();
        let mut pos = 0;
        while let Ok(h) = mqtt::check_frame(&dev.inbox[pos..], u32::MAX) {
            let total = h.total_len();
            if dev.inbox.len() - pos < total {
                break;
            }
            let frame = &dev.inbox[pos..pos + total];
            pos += total;
            match mqtt::decode_packet(frame, ProtocolVersion::V5) {
                Ok(Packet::ConnAck(ack)) => {
                    assert_eq!(ack.reason, 0, "seed {}: CONNACK refused", self.seed);
                    dev.state = DevState::Connected;
                    dev.connected_once = true;
                }
                Ok(Packet::Publish(p)) => {
                    if let Some(id) = p.packet_id {
                        mqtt::PubAck {
                            packet_id: id,
                            reason: 0,
                        }
                        .encode(ProtocolVersion::V5, &mut out);
                    }
                    if p.topic.starts_with("$pulse/") {
                        self.control_messages += 1;
                    } else {
                        let id = u64::from_le_bytes(p.payload.try_into().expect("8-byte push id payload"));
                        let record = self.pushes.get_mut(&id).expect("a push this test posted");
                        check!(self, record.device == d, "push {id} reached device {d}, not its own");
                        record.received += 1;
                    }
                }
                Ok(Packet::Disconnect(x)) => dev.disconnect_reason = Some(x.reason),
                Ok(Packet::PingResp) => {}
                other => panic!("seed {}: device {d} got {other:?}", self.seed),
            }
        }
        dev.inbox.drain(..pos);
        if net.server_closed(sock) && net_is_drained(&mut net, sock, dev) {
            dev.state = DevState::Done;
            return;
        }
        match dev.misbehaviour {
            // Silent: not even its PUBACKs go out.
            Misbehaviour::GoesSilent { at_ms } if now_ms >= at_ms => return,
            Misbehaviour::Resets { at_ms, mid_packet } if now_ms >= at_ms => {
                net.device_write(sock, &out);
                if mid_packet {
                    // The start of a 16-byte PUBLISH, then the reset a few rounds later.
                    net.device_write(sock, &[0x30, 0x10, 0x00]);
                    dev.misbehaviour = Misbehaviour::Resets {
                        at_ms: now_ms + 3 * ROUND_MS,
                        mid_packet: false,
                    };
                    return;
                }
                net.device_reset(sock);
                dev.state = DevState::Done;
                return;
            }
            Misbehaviour::Leaves { at_ms } if now_ms >= at_ms => {
                net.device_write(sock, &out);
                net.device_fin(sock);
                dev.state = DevState::Done;
                return;
            }
            _ => {}
        }
        if dev.state == DevState::Connected && now_ms >= dev.next_ping_ms {
            Packet::PingReq.encode(ProtocolVersion::V5, &mut out);
            dev.next_ping_ms = now_ms + dev.keepalive_s as u64 * 500;
        }
        net.device_write(sock, &out);
    }

    fn take_events(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            match event {
                DeliveryEvent::Acked { push_id } => {
                    if let Some(r) = self.pushes.get_mut(&push_id) {
                        r.acked += 1;
                    }
                }
                DeliveryEvent::NotDelivered { push_id, reason } => {
                    check!(self, reason != HELD_IN_SESSION, "clean sessions hold nothing");
                    if let Some(r) = self.pushes.get_mut(&push_id) {
                        r.not_delivered += 1;
                    }
                }
                DeliveryEvent::DeviceOnline { .. } => {}
            }
        }
    }

    /// Posts a tracked QoS 1 push to device `d` where the registry places it.
    fn push_to(&mut self, d: usize) -> bool {
        if self.devices[d].taken_over {
            // Its id now names the newcomer.
            return false;
        }
        let Some(location) = self.shared.registry.lookup(&self.devices[d].client_id) else {
            return false;
        };
        let id = self.next_push_id;
        let push = Push {
            id,
            qos: 1,
            payload: Bytes::copy_from_slice(&id.to_le_bytes()),
            tracked: true,
            control_topic: None,
            sent_as: None,
        };
        let command = Command::Push {
            key: location.key,
            generation: location.generation,
            push,
        };
        if self.shared.peers.post(location.shard, command).is_err() {
            return false;
        }
        self.next_push_id += 1;
        self.pushes.insert(
            id,
            PushRecord {
                device: d,
                ..Default::default()
            },
        );
        true
    }

    /// A second device claims the client id of device `d` (takeover).
    fn take_over(&mut self, d: usize) {
        let now_ms = self.now_ms();
        let old = &mut self.devices[d];
        old.taken_over = true;
        let new = Device {
            client_id: old.client_id.clone(),
            sock: None,
            state: DevState::Waiting,
            start_ms: now_ms,
            keepalive_s: old.keepalive_s,
            next_ping_ms: 0,
            misbehaviour: Misbehaviour::None,
            taken_over: false,
            connected_once: false,
            inbox: Vec::new(),
            disconnect_reason: None,
        };
        self.devices.push(new);
    }

    fn counter(&self, shard: usize, f: impl Fn(&ShardCounters) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(self.shards[shard].core.counters()).load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Whether the device has read everything the server sent before closing.
fn net_is_drained(net: &mut SimNet, sock: SockId, dev: &mut Device) -> bool {
    let rest = net.device_read(sock);
    dev.inbox.extend(rest);
    dev.inbox.is_empty() || mqtt::check_frame(&dev.inbox, u32::MAX).is_err()
}

/// The scenario, for one seed.
fn run_seed(seed: u64, devices: usize) {
    let mut sim = Sim::new(seed, SimFaults::chaos(), devices);
    let start_ms = sim.now_ms();
    let mut pushes_posted = 0;
    let mut phase_done = [false; 4];
    // 12 s of traffic: connects over the first 2 s, pushes throughout,
    // takeovers, a dispersal round and a move half-way.
    while sim.now_ms() < start_ms + 12_000 {
        let t_ms = sim.now_ms() - start_ms;
        for _ in 0..sim.rng.below(6) {
            let d = sim.rng.below(devices as u64) as usize;
            if sim.devices[d].state == DevState::Connected && sim.push_to(d) {
                pushes_posted += 1;
            }
        }
        if t_ms >= 3_000 && !phase_done[0] {
            phase_done[0] = true;
            for _ in 0..devices / 50 {
                let d = sim.rng.below(devices as u64) as usize;
                if sim.devices[d].state == DevState::Connected && !sim.devices[d].taken_over {
                    sim.take_over(d);
                }
            }
        }
        if t_ms >= 4_000 && !phase_done[1] {
            phase_done[1] = true;
            let now_s = (sim.now_ms() / 1000) as u32;
            let hot_seconds = (now_s.saturating_sub(10)..=now_s).collect();
            let _ = sim.shared.peers.post(0, Command::Disperse { hot_seconds });
        }
        if t_ms >= 5_000 && !phase_done[2] {
            phase_done[2] = true;
            let count = devices as u32 / 3;
            let _ = sim.shared.peers.post(
                0,
                Command::Move {
                    to: 1,
                    count,
                    hold_ms: 60_000,
                },
            );
        }
        sim.round(false);
    }
    // Quiesce: no new pushes; let PUBACKs and moves settle.
    for _ in 0..300 {
        sim.round(false);
    }
    let quiesced: Vec<bool> = sim
        .devices
        .iter()
        .map(|d| d.state == DevState::Connected && d.misbehaviour == Misbehaviour::None && !d.taken_over)
        .collect();
    // Shutdown: every shard disconnects its devices and stops.
    let mut rounds = 0;
    while sim.round(true) {
        rounds += 1;
        check!(sim, rounds < 1_000, "shutdown did not finish");
    }
    sim.take_events();

    let moved_in = sim.counter(1, |c| &c.connections_moved_in);
    check!(sim, moved_in > 0, "no connection moved to shard 1");
    check!(sim, sim.counter(0, |c| &c.dispersal_rounds) > 0, "no dispersal round");
    check!(sim, sim.control_messages > 0, "no dispersal message reached a device");
    check!(sim, sim.counter(0, |c| &c.sessions_taken_over) > 0, "no takeover");
    check!(
        sim,
        pushes_posted > devices / 2,
        "too few pushes posted: {pushes_posted}"
    );
    for (id, r) in &sim.pushes {
        check!(
            sim,
            r.received <= 1,
            "push {id} reached its device {} times",
            r.received
        );
        check!(
            sim,
            r.acked + r.not_delivered == 1,
            "push {id}: acked {} times, not delivered {} times (to device {}, {:?})",
            r.acked,
            r.not_delivered,
            r.device,
            sim.devices[r.device].misbehaviour
        );
        check!(
            sim,
            r.acked == 0 || r.received == 1,
            "push {id} acked but never received"
        );
        if quiesced[r.device] {
            check!(sim, r.acked == 1, "push {id} to healthy device {} was lost", r.device);
        }
    }
    for (d, dev) in sim.devices.iter().enumerate() {
        if let Misbehaviour::GoesSilent { .. } = dev.misbehaviour
            && !dev.taken_over
            && dev.connected_once
        {
            check!(
                sim,
                dev.disconnect_reason == Some(mqtt::reason::KEEP_ALIVE_TIMEOUT)
                    || dev.disconnect_reason == Some(mqtt::reason::SERVER_SHUTTING_DOWN),
                "silent device {d} ended with {:?}",
                dev.disconnect_reason
            );
        }
        if dev.taken_over && dev.state == DevState::Done && dev.misbehaviour == Misbehaviour::None {
            check!(
                sim,
                dev.disconnect_reason == Some(mqtt::reason::SESSION_TAKEN_OVER),
                "taken-over device {d} ended with {:?}",
                dev.disconnect_reason
            );
        }
    }
    let net = sim.net.borrow();
    let acked = sim.pushes.values().filter(|r| r.acked == 1).count();
    eprintln!(
        "sim seed {seed}: {} devices, {pushes_posted} pushes ({acked} acked), {moved_in} moved, {} control messages, \
         {} move failures, {} EBUSY, {} descriptors, {} virtual ms",
        sim.devices.len(),
        sim.control_messages,
        sim.counter(0, |c| &c.move_failures),
        net.submit_busy,
        net.descriptor_totals().0,
        net.now_ms - start_ms
    );
    check!(sim, net.bad_descriptor_uses == 0, "a descriptor was used after close");
    for (i, shard) in sim.shards.iter().enumerate() {
        check!(
            sim,
            shard.core.connections() == 0,
            "shard {i} kept {} slots",
            shard.core.connections()
        );
        check!(
            sim,
            net.descriptors_open(i as u16) == 0,
            "shard {i} leaked {} descriptors",
            net.descriptors_open(i as u16)
        );
    }
    let (opened, closed) = net.descriptor_totals();
    check!(
        sim,
        opened == closed && opened > devices as u64,
        "descriptors {opened} opened, {closed} closed"
    );
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("PULSEGATE_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let soak: u64 = std::env::var("PULSEGATE_SIM_SOAK")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let count = if soak > 0 { soak } else { 16 };
    (1..=count).collect()
}

#[test]
fn sim_devices_through_faults_lose_and_leak_nothing() {
    for seed in seeds() {
        eprintln!("sim seed {seed}");
        run_seed(seed, 2_000);
    }
}

#[test]
fn sim_without_faults_acks_every_push() {
    let mut sim = Sim::new(7, SimFaults::default(), 200);
    let start_ms = sim.now_ms();
    while sim.now_ms() < start_ms + 3_000 {
        sim.round(false);
    }
    for d in 0..200 {
        if sim.devices[d].misbehaviour == Misbehaviour::None {
            check!(
                sim,
                sim.devices[d].state == DevState::Connected,
                "device {d} not connected"
            );
            check!(sim, sim.push_to(d), "push to device {d} refused");
        }
    }
    for _ in 0..100 {
        sim.round(false);
    }
    for (id, r) in &sim.pushes {
        if sim.devices[r.device].misbehaviour == Misbehaviour::None {
            check!(sim, r.acked == 1 && r.received == 1, "push {id}: {} acked", r.acked);
        }
    }
}
