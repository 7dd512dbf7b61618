//! Per-connection TLS I/O of a worker (`--tls`): starting a rustls client on a
//! connected socket, writing MQTT bytes through it, flushing its records, reading
//! records and handing the plaintext to the MQTT decoder, and accounting each
//! completed handshake (full vs resumed, latency) and each TLS error by kind.
//! Must never: block, buffer more than `MAX_TX_TAIL_BYTES` of unsent bytes per
//! device (rustls's buffer limit), or panic on server bytes (a TLS error closes the
//! connection with reason `tls_<kind>`).

use super::{Worker, MAX_TX_TAIL_BYTES};
use crate::device::Phase;
use crate::net;
use crate::report;
use crate::tls::{self, stats::Done};
use rustls::ClientConnection;
use std::io::{self, Read, Write};

/// One device's TLS state: only while it has a socket.
pub(super) struct TlsConn {
    pub conn: ClientConnection,
    /// Worker clock (µs) when TCP connected and the handshake began.
    pub started_us: u64,
    /// The handshake has completed (and was counted).
    pub done: bool,
}

impl Worker {
    /// TCP is connected: starts the client handshake (ClientHello is written by the
    /// next flush). Returns false if the connection was closed.
    pub(super) fn tls_begin(&mut self, idx: u32) -> bool {
        let Some(client) = self.tls.as_ref() else { return true };
        let config = if self.slots[idx as usize].dev.ever_connected {
            &client.config
        } else {
            &client.fresh_config
        };
        match ClientConnection::new(config.clone(), client.server_name.clone()) {
            Ok(mut conn) => {
                conn.set_buffer_limit(Some(MAX_TX_TAIL_BYTES));
                let started_us = self.now_us();
                self.slots[idx as usize].tls = Some(Box::new(TlsConn {
                    conn,
                    started_us,
                    done: false,
                }));
                true
            }
            Err(e) => {
                let kind = tls::error_kind(&e);
                self.tls_stats.on_error(&kind);
                self.close(idx, &format!("tls_{kind}"));
                false
            }
        }
    }

    /// Queues `self.scratch` as plaintext (sent once the handshake allows) and
    /// flushes. Returns false if the connection was closed.
    pub(super) fn tls_send(&mut self, idx: u32) -> bool {
        let Some(t) = self.slots[idx as usize].tls.as_mut() else {
            return false;
        };
        match t.conn.writer().write(&self.scratch) {
            Ok(n) if n == self.scratch.len() => {}
            Ok(_) | Err(_) => {
                self.close(idx, "tx_overflow");
                return false;
            }
        }
        self.tls_flush(idx)
    }

    /// Writes pending TLS records until done or the socket would block. Returns
    /// false if the connection was closed.
    pub(super) fn tls_flush(&mut self, idx: u32) -> bool {
        let slot = &mut self.slots[idx as usize];
        let (Some(sock), Some(t)) = (slot.sock.as_mut(), slot.tls.as_mut()) else {
            return false;
        };
        while t.conn.wants_write() {
            match t.conn.write_tls(sock) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let reason = format!("write_{}", net::errno_name(&e));
                    self.close(idx, &reason);
                    return false;
                }
            }
        }
        true
    }

    /// Whether the device has TLS records waiting for the socket.
    pub(super) fn tls_wants_write(&self, idx: u32) -> bool {
        self.slots[idx as usize]
            .tls
            .as_ref()
            .is_some_and(|t| t.conn.wants_write())
    }

    /// Whether the device is still in its TLS handshake.
    pub(super) fn tls_handshaking(&self, idx: u32) -> bool {
        self.slots[idx as usize].tls.as_ref().is_some_and(|t| !t.done)
    }

    /// Counts a TLS error and closes the connection with `tls_<kind>`.
    pub(super) fn tls_fail(&mut self, idx: u32, kind: &str) {
        self.tls_stats.on_error(kind);
        self.close(idx, &format!("tls_{kind}"));
    }

    /// Reads what the socket has: records into rustls, plaintext into the MQTT
    /// decoder; then flushes what rustls wants to send (handshake, alerts).
    pub(super) fn tls_read(&mut self, idx: u32) {
        let mut buf = std::mem::take(&mut self.read_buf);
        loop {
            let slot = &mut self.slots[idx as usize];
            let (Some(sock), Some(t)) = (slot.sock.as_mut(), slot.tls.as_mut()) else {
                break;
            };
            match t.conn.read_tls(sock) {
                Ok(0) => {
                    if !t.done {
                        self.tls_fail(idx, "eof_in_handshake");
                    } else if slot.dev.phase == Phase::Connected {
                        self.close(idx, "eof");
                    } else {
                        self.close(idx, "closed_before_connack");
                    }
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let reason = format!("read_{}", net::errno_name(&e));
                    self.close(idx, &reason);
                    break;
                }
            }
            let state = match t.conn.process_new_packets() {
                Ok(st) => st,
                Err(e) => {
                    // Best effort: send the alert rustls queued, then close.
                    let _ = t.conn.write_tls(sock);
                    let kind = tls::error_kind(&e);
                    self.tls_fail(idx, &kind);
                    break;
                }
            };
            let (mut pending, peer_closed) = (state.plaintext_bytes_to_read(), state.peer_has_closed());
            if !t.done && !t.conn.is_handshaking() {
                t.done = true;
                let started_us = t.started_us;
                let done = Done {
                    kind: t.conn.handshake_kind(),
                    tls13: t.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3),
                    reconnect: slot.dev.ever_connected,
                    storm: slot.dev.storm_pending,
                };
                if let Some(p) = t.conn.alpn_protocol() {
                    if self.tls_stats.alpn.is_empty() {
                        self.tls_stats.alpn = String::from_utf8_lossy(p).into_owned();
                    }
                }
                if self.tls_stats.on_handshake(&done) {
                    self.seconds.cur.tls_resumed += 1;
                } else {
                    self.seconds.cur.tls_full += 1;
                }
                let now_us = self.now_us();
                report::record_us(&mut self.tls_handshake, now_us.saturating_sub(started_us));
            }
            while pending > 0 {
                let Some(t) = self.slots[idx as usize].tls.as_mut() else {
                    break;
                };
                let n = match t.conn.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(_) => break,
                };
                pending = pending.saturating_sub(n);
                if self.slots[idx as usize].rx_tail.is_empty() {
                    self.process(idx, &buf[..n]);
                } else {
                    let mut joined = std::mem::take(&mut self.slots[idx as usize].rx_tail);
                    joined.extend_from_slice(&buf[..n]);
                    self.process(idx, &joined);
                }
            }
            if self.slots[idx as usize].sock.is_none() {
                break; // closed while handling a packet
            }
            if peer_closed {
                let reason = if self.slots[idx as usize].dev.phase == Phase::Connected {
                    "tls_close_notify"
                } else {
                    "closed_before_connack"
                };
                self.close(idx, reason);
                break;
            }
        }
        self.read_buf = buf;
        if self.slots[idx as usize].sock.is_some() {
            self.tls_flush(idx);
        }
    }
}
