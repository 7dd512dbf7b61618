//! Fuzz target: the device SDK's decoding of what a server sends (`sdk::Session::on_bytes`:
//! framing, the gateway codec, CONNACK/PUBLISH/DISCONNECT handling, the `$pulse/`
//! control payloads) and its stored state (`sdk::StoredState::from_json`).
//!
//! Input: byte 0 picks the version (bit 0), the heartbeat policy (bit 1: probing or
//! fixed) and the packet size limit (bit 2); byte 1 seeds how the stream is cut into reads;
//! the rest is the server's byte stream. Beyond "no panic" it asserts that the session
//! does the same (events, bytes sent, phase) however the stream is cut into reads, that
//! everything it sends is a well-formed packet a device may send, that it is offline
//! exactly when it reported `Closed`, and that an accepted stored state round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulsegate::protocol::mqtt::{Packet, ProtocolVersion, check_frame, decode_packet};
use pulsegate::sdk::{Event, HeartbeatPolicy, Phase, Session, SessionConfig, StoredState};

const NOW_MS: u64 = 1_000_000;

/// What one run of a session produced.
#[derive(Debug, PartialEq)]
struct Run {
    events: Vec<Event>,
    sent: Vec<u8>,
    phase: Phase,
}

fn session(flags: u8) -> Session {
    let mut cfg = SessionConfig::new("dev-1", 60);
    if flags & 1 == 0 {
        cfg.version = ProtocolVersion::V311;
    }
    if flags & 2 != 0 {
        cfg.heartbeat = HeartbeatPolicy {
            min_s: 20,
            step_s: 10,
            max_s: 300,
        };
    }
    if flags & 4 != 0 {
        cfg.max_packet_bytes = 64;
    }
    let mut s = Session::new(cfg, "127.0.0.1:1883", None).expect("a valid heartbeat policy");
    s.on_transport_open(0);
    s
}

/// Feeds `stream` in reads whose sizes come from `seed` (None: one read), draining events
/// and output after every call as the SDK's contract asks; with `tick_ms`, time advances
/// by that much per read and the timers run.
fn run(flags: u8, stream: &[u8], seed: Option<u8>, tick_ms: u64) -> Run {
    let mut s = session(flags);
    let mut out = Run {
        events: Vec::new(),
        sent: s.take_output(),
        phase: s.phase(),
    };
    let mut rng = u64::from(seed.unwrap_or(0)) | 0x100;
    let mut rest = stream;
    let mut now_ms = NOW_MS;
    while !rest.is_empty() {
        let n = match seed {
            None => rest.len(),
            Some(_) => {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                1 + (rng % 24) as usize
            }
        };
        let (read, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        s.on_bytes(now_ms, read);
        if tick_ms > 0 {
            now_ms += tick_ms;
            s.poll(now_ms);
        }
        out.events.extend(std::iter::from_fn(|| s.next_event()));
        out.sent.extend(s.take_output());
    }
    out.phase = s.phase();
    out
}

/// Everything a device sends decodes, and is a packet a device may send.
fn assert_well_formed(sent: &[u8], flags: u8) {
    let version = if flags & 1 == 0 {
        ProtocolVersion::V311
    } else {
        ProtocolVersion::V5
    };
    let mut rest = sent;
    while !rest.is_empty() {
        let h = check_frame(rest, u32::MAX).unwrap_or_else(|e| panic!("device sent a bad header: {e:?} {rest:?}"));
        let (frame, tail) = rest.split_at(h.total_len());
        let packet = decode_packet(frame, version).unwrap_or_else(|e| panic!("device sent {frame:?}: {e:?}"));
        assert!(
            matches!(
                packet,
                Packet::Connect(_) | Packet::PubAck(_) | Packet::PingReq | Packet::Disconnect(_)
            ),
            "a device never sends {packet:?}"
        );
        rest = tail;
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, seed, stream @ ..] = data else {
        return;
    };
    let whole = run(*flags, stream, None, 0);
    let cut = run(*flags, stream, Some(*seed), 0);
    assert_eq!(whole, cut, "the same bytes in other reads changed what the session did");
    let closed = whole.events.iter().any(|e| matches!(e, Event::Closed { .. }));
    assert_eq!(closed, whole.phase == Phase::Offline, "{whole:?}");
    assert_well_formed(&whole.sent, *flags);
    // With time passing between reads: timers fire, but the bytes sent stay well-formed.
    let timed = run(*flags, stream, Some(*seed), 1 + u64::from(*seed) * 500);
    assert_well_formed(&timed.sent, *flags);

    if let Ok(text) = std::str::from_utf8(stream)
        && let Ok(state) = StoredState::from_json(text)
    {
        let back = StoredState::from_json(&state.to_json()).expect("a stored state reloads");
        assert_eq!(back, state);
    }
});
