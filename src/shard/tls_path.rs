//! Where a TLS connection's bytes meet its slot: lends the connection's
//! ciphertext buffers (`Active::tls_in`, `Active::tls_out`) and its plaintext
//! queue (`Active::out`) to its `TlsConn` for one `drive`, hands decrypted
//! bytes to `Packets`, and turns what the drive reports into counters and
//! closes.
//!
//! Functions over `TlsConns`, `Connections`, `Sessions` and `Ctx`; owns no
//! state. Must never keep a buffer on an idle connection: what the drive
//! left empty goes back with the `Active` box to the pool.

use rustls::HandshakeKind;

use super::close;
use super::conn::{IO_TLS, Phase};
use super::connections::Connections;
use super::counters::{CloseReason, bump};
use super::ctx::Ctx;
use super::deliver::Sessions;
use super::packets::Packets;
use super::tls_conn::{TlsApp, TlsConns, TlsEnd};

/// Gives the connection just accepted on the TLS listener its rustls state
/// (the identity current now); without one it is closed at once.
pub(super) fn start(tls: &mut TlsConns, conns: &mut Connections, ctx: &Ctx, key: u32) {
    let Some(server) = ctx.env.tls.as_ref() else {
        close::begin_close(conns, ctx, key, CloseReason::TlsError);
        return;
    };
    match tls.start(key, server.current()) {
        Ok(()) => {
            if let Some(conn) = conns.get_mut(key) {
                conn.io_flags |= IO_TLS;
            }
        }
        Err(_) => {
            bump(&ctx.counters.tls_handshake_failures, 1);
            close::begin_close(conns, ctx, key, CloseReason::TlsError);
        }
    }
}

/// The MQTT side of one drive.
struct Plain<'a> {
    conns: &'a mut Connections,
    sessions: &'a mut Sessions,
    ctx: &'a Ctx,
    key: u32,
}

impl TlsApp for Plain<'_> {
    fn deliver(&mut self, plaintext: &[u8]) {
        Packets {
            conns: self.conns,
            sessions: self.sessions,
            ctx: self.ctx,
        }
        .receive(self.key, plaintext);
    }

    fn with_plaintext(&mut self, seal: &mut dyn FnMut(&mut Vec<u8>)) {
        let has_plaintext = self
            .conns
            .get(self.key)
            .and_then(|c| c.active.as_ref())
            .is_some_and(|a| !a.out.is_empty());
        if has_plaintext && let Some(a) = self.conns.active(self.key) {
            seal(&mut a.out);
        }
    }

    fn closing(&self) -> bool {
        self.conns.get(self.key).is_none_or(|c| c.phase == Phase::Closing)
    }
}

/// Ciphertext `data` arrived for TLS connection `key` (empty: only seal
/// what is waiting, as before a send).
pub(super) fn pump(
    tls: &mut TlsConns,
    conns: &mut Connections,
    sessions: &mut Sessions,
    ctx: &Ctx,
    key: u32,
    data: &[u8],
) {
    let Some(t) = tls.get_mut(key) else { return };
    let Some(conn) = conns.get(key) else { return };
    let closing = conn.phase == Phase::Closing;
    if closing && !data.is_empty() {
        // Closing: nothing more is read (as for plain MQTT).
        return;
    }
    let waiting = conn
        .active
        .as_ref()
        .is_some_and(|a| !a.tls_in.is_empty() || !a.out.is_empty());
    if data.is_empty() && !waiting && t.is_established() {
        // Nothing to seal and nothing to read: leave an idle connection idle.
        return;
    }
    let (mut incoming, mut outgoing) = match conns.active(key) {
        Some(a) => {
            a.tls_in.extend_from_slice(data);
            (std::mem::take(&mut a.tls_in), std::mem::take(&mut a.tls_out))
        }
        None => return,
    };
    let sent_before = outgoing.len();
    let driven = t.drive(
        &mut incoming,
        &mut outgoing,
        &mut Plain {
            conns,
            sessions,
            ctx,
            key,
        },
    );
    let has_output = outgoing.len() > sent_before;
    // Give the buffers back, capacity and all (the MQTT side may have
    // released the box meanwhile: one comes from the pool's free list; the
    // box, buffers inside, goes back to it below if the connection is idle).
    if let Some(a) = conns.active(key) {
        a.tls_in = incoming;
        a.tls_out = outgoing;
    }
    if has_output {
        conns.mark_dirty(key);
    }
    match driven.handshake_completed {
        Some(HandshakeKind::Resumed) => bump(&ctx.counters.tls_handshakes_resumed, 1),
        Some(_) => bump(&ctx.counters.tls_handshakes_full, 1),
        None => {}
    }
    match driven.end {
        TlsEnd::Open => {}
        TlsEnd::PeerClosed => close::peer_closed(conns, ctx, key, CloseReason::PeerClosed),
        TlsEnd::Failed(_) => {
            let counter = if driven.was_established {
                &ctx.counters.tls_errors
            } else {
                &ctx.counters.tls_handshake_failures
            };
            bump(counter, 1);
            // Whatever the MQTT side queued will never be sealed; the alert
            // (if any) in `tls_out` still goes out before the close.
            if let Some(a) = conns.get_mut(key).and_then(|c| c.active.as_mut()) {
                a.out.clear();
            }
            close::begin_close(conns, ctx, key, CloseReason::TlsError);
        }
    }
    conns.shrink_if_idle(key);
}
