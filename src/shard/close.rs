//! How a connection ends: a protocol error or refused frame, a DISCONNECT to
//! an MQTT 5 device, a takeover, the peer going away; then `begin_close`
//! unregisters the client id, hands its undelivered pushes to the registry
//! (stored session), the new owner (takeover) or the push service (not
//! delivered), arms the linger timer and queues the key for the backend.
//!
//! Functions over `Connections` and `Ctx`; owns no state. Must never drop a
//! push silently (each one is stored, forwarded or reported), and never close
//! a socket itself: the backend does, once `close_ready` says so.

use super::active_pool::ACTIVE_BUF_KEEP_BYTES_MAX;
use super::conn::{FLAG_PERSISTENT, FLAG_REGISTERED, IO_PINGRESP_OWED, Phase};
use super::connections::Connections;
use super::counters::{CloseReason, ProtocolErrorKind, bump};
use super::ctx::Ctx;
use crate::delivery::{DeliveryEvent, HELD_IN_SESSION, Location, Push};
use crate::limits;
use crate::protocol::mqtt::{self, DecodeError, Disconnect};
use crate::registry::Release;

/// A frame (or its header) was refused by the codec.
pub(super) fn decode_failed(conns: &mut Connections, ctx: &Ctx, key: u32, error: DecodeError) {
    let kind = match error {
        DecodeError::TooLarge { .. } => ProtocolErrorKind::TooLarge,
        DecodeError::UnsupportedProtocolVersion { .. } => ProtocolErrorKind::UnsupportedProtocolVersion,
        DecodeError::UnsupportedPacket { .. } => ProtocolErrorKind::UnsupportedPacket,
        DecodeError::Incomplete { .. } => ProtocolErrorKind::TruncatedAtClose,
        DecodeError::Malformed(_) => ProtocolErrorKind::Malformed,
    };
    let Some(conn) = conns.get(key) else {
        return;
    };
    if conn.phase == Phase::AwaitConnect {
        ctx.counters.protocol_error(kind);
        if let DecodeError::UnsupportedProtocolVersion { .. } = error {
            // Answer in 3.1.1 form (return code 1), which every client understands.
            let ack = mqtt::ConnAck {
                session_present: false,
                reason: mqtt::reason::UNSUPPORTED_PROTOCOL_VERSION,
                properties: Default::default(),
            };
            conns.queue_packet(key, |out| {
                ack.encode(mqtt::ProtocolVersion::V311, out);
            });
        }
        begin_close(conns, ctx, key, CloseReason::ProtocolError);
    } else {
        protocol_error(conns, ctx, key, kind, error.reason_code());
    }
}

/// Closes a connected device for a protocol violation: MQTT 5 gets a
/// DISCONNECT with `reason`, 3.1.1 just the close.
pub(super) fn protocol_error(conns: &mut Connections, ctx: &Ctx, key: u32, kind: ProtocolErrorKind, reason: u8) {
    ctx.counters.protocol_error(kind);
    disconnect(conns, ctx, key, reason, CloseReason::ProtocolError);
}

/// Sends DISCONNECT(reason) to an MQTT 5 device, then closes.
pub(super) fn disconnect(conns: &mut Connections, ctx: &Ctx, key: u32, reason: u8, why: CloseReason) {
    let Some(conn) = conns.get(key) else {
        return;
    };
    if conn.is_v5() && conn.phase == Phase::Connected {
        let d = Disconnect {
            reason,
            session_expiry_interval_s: None,
            reason_string: None,
            server_reference: None,
        };
        conns.queue_packet(key, |out| {
            d.encode(mqtt::ProtocolVersion::V5, out);
        });
    }
    begin_close(conns, ctx, key, why);
}

/// The shard holds more than `shard_partial_packet_bytes_max` in partial
/// packets: the largest holders are closed until it is under. MQTT 5 hears
/// 0x95 when the one packet it announced alone exceeds the budget, else 0x97.
pub(super) fn partial_budget_exceeded(conns: &mut Connections, ctx: &Ctx) {
    let budget_bytes = ctx.env.cfg.shard_partial_packet_bytes_max;
    // Each pass removes one holder, so the loop ends within `holders` passes.
    let passes_max = conns.partial.holders();
    for _ in 0..passes_max {
        if conns.partial.total_bytes() <= budget_bytes {
            break;
        }
        let Some((_, key)) = conns.partial.largest() else { break };
        let announced_bytes = conns
            .get(key)
            .and_then(|c| c.active.as_ref())
            .and_then(|a| mqtt::check_frame(&a.partial, u32::MAX).ok())
            .map_or(0, |h| h.total_len() as u64);
        let reason = if announced_bytes > budget_bytes {
            mqtt::reason::PACKET_TOO_LARGE
        } else {
            mqtt::reason::QUOTA_EXCEEDED
        };
        disconnect(conns, ctx, key, reason, CloseReason::PartialPacketBudget);
        // begin_close forgot it already; a holder already closing is forgotten here.
        conns.forget_partial(key);
    }
    publish_partial_total(conns, ctx);
}

/// A packet did not complete within `packet_complete_timeout_s`.
pub(super) fn partial_packet_timed_out(conns: &mut Connections, ctx: &Ctx, key: u32) {
    disconnect(
        conns,
        ctx,
        key,
        mqtt::reason::QUOTA_EXCEEDED,
        CloseReason::PartialPacketTimeout,
    );
    publish_partial_total(conns, ctx);
}

fn publish_partial_total(conns: &Connections, ctx: &Ctx) {
    ctx.counters
        .partial_packet_bytes
        .store(conns.partial.total_bytes(), std::sync::atomic::Ordering::Relaxed);
}

/// The same client id connected again: the old connection (key, generation),
/// if it is still that one, is told so and closed.
pub(super) fn take_over(conns: &mut Connections, ctx: &Ctx, key: u32, generation: u32) {
    if conns.get(key).is_some_and(|c| c.generation == generation) {
        bump(&ctx.counters.sessions_taken_over, 1);
        disconnect(
            conns,
            ctx,
            key,
            mqtt::reason::SESSION_TAKEN_OVER,
            CloseReason::SessionTakenOver,
        );
    }
}

/// The peer closed or the socket failed: close without a farewell.
pub(super) fn peer_closed(conns: &mut Connections, ctx: &Ctx, key: u32, reason: CloseReason) {
    let Some(conn) = conns.get_mut(key) else { return };
    if conn.phase == Phase::Closing {
        return;
    }
    // Nothing more goes out: an owed PINGRESP with the rest.
    conn.io_flags &= !IO_PINGRESP_OWED;
    if let Some(a) = conn.active.as_mut() {
        if !a.partial.is_empty() {
            ctx.counters.protocol_error(ProtocolErrorKind::TruncatedAtClose);
        }
        a.out.clear();
    }
    begin_close(conns, ctx, key, reason);
}

/// Starts closing: unregisters the client id (storing or forwarding its
/// undelivered pushes), arms the linger timer, queues the key for the backend.
pub(super) fn begin_close(conns: &mut Connections, ctx: &Ctx, key: u32, reason: CloseReason) {
    let Some(conn) = conns.get_mut(key) else {
        return;
    };
    if conn.phase == Phase::Closing {
        return;
    }
    let was_connected = conn.phase == Phase::Connected;
    conn.phase = Phase::Closing;
    ctx.counters.close(reason);
    if reason != CloseReason::Overload
        && let Some(id) = conn.client_id.as_deref()
    {
        // Ended for another reason: relief may disconnect this device next time.
        ctx.env.relieved.forget(id);
    }
    if was_connected {
        ctx.counters.keepalive_census(conn.keepalive_s, -1);
    }
    let mut pending: Vec<Push> = Vec::new();
    if let Some(a) = conn.active.as_mut() {
        // A partial packet is never completed now; a large buffer is freed at once.
        a.partial.clear();
        if a.partial.capacity() > ACTIVE_BUF_KEEP_BYTES_MAX {
            a.partial = Vec::new();
        }
        pending.extend(a.inflight.drain(..).map(|i| Push {
            sent_as: Some(i.packet_id),
            ..i.push
        }));
        pending.extend(a.queued.drain(..));
    }
    let registered = conn.flags & FLAG_REGISTERED != 0;
    let persistent = conn.flags & FLAG_PERSISTENT != 0;
    let location = Location {
        shard: ctx.shard_id,
        key,
        generation: conn.generation,
        persistent,
    };
    let client_id = conn.client_id.clone();
    let expiry_s = conn.session_expiry_s.min(ctx.env.cfg.session_expiry_max_s);
    conns.forget_partial(key);
    conns.wheel.insert(key, ctx.now_ms + limits::CLOSE_LINGER_MS);
    conns.push_closing(key);
    if !registered {
        for push in &pending {
            ctx.not_delivered(push, "connection_closed");
        }
        return;
    }
    let Some(client_id) = client_id else { return };
    let keep_until = (persistent && expiry_s > 0)
        .then(|| std::time::Instant::now() + std::time::Duration::from_secs(expiry_s as u64));
    match ctx
        .env
        .registry
        .release(&client_id, location, pending.clone(), keep_until)
    {
        Release::Removed {
            session_stored: true, ..
        } => {
            // Kept in the MQTT session: redelivered with DUP and the same packet id
            // when the device resumes it; the push service waits for that PUBACK.
            for push in pending.iter().filter(|p| p.tracked) {
                ctx.env.reports.report(DeliveryEvent::NotDelivered {
                    push_id: push.id,
                    reason: HELD_IN_SESSION,
                });
            }
        }
        Release::Replaced(new_owner) if new_owner.persistent => {
            // A new connection, new packet ids: not a redelivery on this session.
            for push in pending {
                ctx.env
                    .peers
                    .route_to(new_owner, Push { sent_as: None, ..push }, &ctx.counters);
            }
        }
        Release::Removed {
            session_stored: false, ..
        }
        | Release::Absent
        | Release::Replaced(_) => {
            for push in &pending {
                ctx.not_delivered(push, "connection_closed");
            }
        }
    }
}
