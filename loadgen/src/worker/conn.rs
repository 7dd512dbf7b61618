//! Per-connection I/O of a worker: TCP connect completion, CONNECT, reading and
//! decoding server frames, answering them (PUBACK), writes with an unsent tail,
//! and closing with accounting (failed attempt vs. lost connection).
//! Must never: block, keep more per-device state than the unsent tail and a
//! partial frame, or panic on server bytes (decode errors close the connection).

use super::{bump, Worker, MAX_FRAME_BYTES, MAX_TX_TAIL_BYTES, TS_MARKER};
use crate::device::Phase;
use crate::mqtt::{self, Packet};
use crate::{net, report};
use pulsegate::sdk::control::{self, Control};
use std::fmt::Write as _;
use std::io::{self, Read, Write};

/// DISCONNECT reasons of load relief: server busy, use another server, server moved.
pub fn is_overload_code(code: u8) -> bool {
    matches!(code, 0x89 | 0x9C | 0x9D)
}

/// Finds "lgts=<digits>" in a payload and returns the number.
pub fn find_timestamp_us(payload: &[u8]) -> Option<u64> {
    let pos = payload.windows(TS_MARKER.len()).position(|w| w == TS_MARKER)?;
    let digits = &payload[pos + TS_MARKER.len()..];
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..n.min(19)]).ok()?.parse().ok()
}

impl Worker {
    /// Closes a device's socket and accounts for it: a failed attempt if it never got
    /// CONNACK 0, a lost connection otherwise. Schedules the reconnect.
    pub(super) fn close(&mut self, idx: u32, reason: &str) {
        let now_ms = self.now_us() / 1000;
        let slot = &mut self.slots[idx as usize];
        slot.sock = None;
        slot.tx_tail = Vec::new();
        slot.rx_tail = Vec::new();
        slot.tls = None;
        match slot.dev.phase {
            Phase::Connecting | Phase::AwaitConnack => {
                self.inflight -= 1;
                self.count_failure(idx, reason);
            }
            Phase::Connected => {
                slot.dev.overload_closed = false;
                self.progress.connected -= 1;
                self.seconds.cur.closes += 1;
                self.seconds.set_connected(self.progress.connected);
                bump(&mut self.closed, reason);
            }
            _ => {}
        }
        if self.stopping {
            self.slots[idx as usize].dev.stop();
            return;
        }
        let r = self.random();
        self.slots[idx as usize].dev.on_closed(now_ms, r);
        self.arm(idx);
    }

    /// Writes `self.scratch` to the device (or queues it behind an unsent tail).
    /// Returns false if the connection was closed because of the write.
    pub(super) fn send_scratch(&mut self, idx: u32) -> bool {
        if self.slots[idx as usize].tls.is_some() {
            return self.tls_send(idx);
        }
        let slot = &mut self.slots[idx as usize];
        let Some(sock) = slot.sock.as_mut() else { return false };
        if !slot.tx_tail.is_empty() {
            if slot.tx_tail.len() + self.scratch.len() > MAX_TX_TAIL_BYTES {
                self.close(idx, "tx_overflow");
                return false;
            }
            slot.tx_tail.extend_from_slice(&self.scratch);
            return true;
        }
        let mut sent = 0;
        while sent < self.scratch.len() {
            match sock.write(&self.scratch[sent..]) {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let reason = format!("write_{}", net::errno_name(&e));
                    self.close(idx, &reason);
                    return false;
                }
            }
        }
        if sent < self.scratch.len() {
            slot.tx_tail.extend_from_slice(&self.scratch[sent..]);
        }
        true
    }

    fn flush_tail(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        let Some(sock) = slot.sock.as_mut() else { return };
        while !slot.tx_tail.is_empty() {
            match sock.write(&slot.tx_tail) {
                Ok(0) => return,
                Ok(n) => {
                    slot.tx_tail.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let reason = format!("write_{}", net::errno_name(&e));
                    self.close(idx, &reason);
                    return;
                }
            }
        }
        slot.tx_tail = Vec::new();
    }

    pub(super) fn on_event(&mut self, idx: u32, readable: bool, writable: bool) {
        if self.slots[idx as usize].dev.phase == Phase::Connecting {
            let Some(sock) = self.slots[idx as usize].sock.as_ref() else {
                return;
            };
            match sock.take_error() {
                Ok(Some(e)) | Err(e) => {
                    let reason = format!("connect_{}", net::errno_name(&e));
                    self.close(idx, &reason);
                    return;
                }
                Ok(None) => {}
            }
            match sock.peer_addr() {
                Ok(_) => self.on_tcp_connected(idx),
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                    if readable {
                        self.close(idx, "connect_hup");
                    }
                    return;
                }
                Err(e) => {
                    let reason = format!("connect_{}", net::errno_name(&e));
                    self.close(idx, &reason);
                    return;
                }
            }
        }
        if writable && !self.slots[idx as usize].tx_tail.is_empty() {
            self.flush_tail(idx);
        }
        if writable && self.tls_wants_write(idx) {
            self.tls_flush(idx);
        }
        if readable && self.slots[idx as usize].sock.is_some() {
            if self.slots[idx as usize].tls.is_some() {
                self.tls_read(idx);
            } else {
                self.read_device(idx);
            }
        }
    }

    fn on_tcp_connected(&mut self, idx: u32) {
        if !self.tls_begin(idx) {
            return;
        }
        let global = self.args.first_index + idx as u64;
        self.id_buf.clear();
        let _ = write!(self.id_buf, "{}{}", self.args.client_id_prefix, global);
        let token = match &self.minter {
            Some(m) => match m.mint(&self.id_buf, net::unix_ms() / 1000) {
                Ok(t) => Some(t),
                Err(_) => {
                    self.close(idx, "jwt_mint_failed");
                    return;
                }
            },
            None => None,
        };
        let creds = match &token {
            Some(t) => mqtt::Credentials {
                username: Some(self.id_buf.as_bytes()),
                password: Some(t.as_bytes()),
            },
            None => mqtt::Credentials::default(),
        };
        self.scratch.clear();
        // The device's current heartbeat (kept across reconnects, as the SDK's stored state).
        let keepalive_s = self.slots[idx as usize].dev.heartbeat_s();
        mqtt::encode_connect(
            &mut self.scratch,
            self.args.mqtt_version,
            self.id_buf.as_bytes(),
            keepalive_s,
            creds,
        );
        self.slots[idx as usize].dev.on_connect_sent();
        self.send_scratch(idx);
    }

    fn read_device(&mut self, idx: u32) {
        let mut buf = std::mem::take(&mut self.read_buf);
        while let Some(sock) = self.slots[idx as usize].sock.as_mut() {
            match sock.read(&mut buf) {
                Ok(0) => {
                    let reason = if self.slots[idx as usize].dev.phase == Phase::Connected {
                        "eof"
                    } else {
                        "closed_before_connack"
                    };
                    self.close(idx, reason);
                    break;
                }
                Ok(n) => {
                    if self.slots[idx as usize].rx_tail.is_empty() {
                        self.process(idx, &buf[..n]);
                    } else {
                        let mut joined = std::mem::take(&mut self.slots[idx as usize].rx_tail);
                        joined.extend_from_slice(&buf[..n]);
                        self.process(idx, &joined);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let reason = format!("read_{}", net::errno_name(&e));
                    self.close(idx, &reason);
                    break;
                }
            }
        }
        self.read_buf = buf;
    }

    /// Handles every complete frame in `data`; keeps a partial frame as the tail.
    pub(super) fn process(&mut self, idx: u32, data: &[u8]) {
        let v5 = self.args.mqtt_version == 5;
        let mut at = 0;
        while at < data.len() {
            match mqtt::decode(&data[at..], v5, MAX_FRAME_BYTES) {
                Ok(Some((packet, used))) => {
                    at += used;
                    if !self.on_packet(idx, packet) {
                        return; // closed
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let reason = format!("protocol_{e:?}").to_lowercase();
                    self.close(idx, &reason);
                    return;
                }
            }
        }
        if at < data.len() {
            if let Some(slot) = self.slots.get_mut(idx as usize).filter(|s| s.sock.is_some()) {
                slot.rx_tail.extend_from_slice(&data[at..]);
            }
        }
    }

    /// Returns false when the connection was closed.
    fn on_packet(&mut self, idx: u32, packet: Packet<'_>) -> bool {
        let now_us = self.now_us();
        let now_ms = now_us / 1000;
        match packet {
            Packet::Connack {
                code,
                server_keepalive_s,
                ..
            } => {
                if self.slots[idx as usize].dev.phase != Phase::AwaitConnack {
                    self.close(idx, "protocol_unexpected_connack");
                    return false;
                }
                let was_connected_before = self.slots[idx as usize].dev.ever_connected;
                let storm_pending = self.slots[idx as usize].dev.storm_pending;
                if !self.slots[idx as usize]
                    .dev
                    .on_connack(now_ms, code, server_keepalive_s)
                {
                    self.seconds.cur.refused += 1;
                    self.close(idx, &format!("connack_0x{code:02x}"));
                    return false;
                }
                self.inflight -= 1;
                self.progress.connected += 1;
                self.seconds.cur.connacks += 1;
                self.seconds.set_connected(self.progress.connected);
                if was_connected_before {
                    self.progress.reconnects += 1;
                }
                let all = self.progress.connected == self.slots.len() as u64;
                let epoch_now_ms = self.epoch_ms(now_ms);
                if let Some(st) = self.storm.as_mut() {
                    if storm_pending {
                        st.stats.reconnected += 1;
                        report::record_us(&mut st.reconnect, now_us.saturating_sub(st.at_us));
                    }
                    if all && st.stats.recovered_at_ms.is_none() {
                        st.stats.recovered_at_ms = Some(epoch_now_ms);
                    }
                }
                if self.progress.connected > self.peak_connected {
                    self.peak_connected = self.progress.connected;
                    self.peak_at_ms = self.epoch_offset_ms + now_ms;
                }
                self.arm(idx);
                if let Some(filter) = &self.args.subscribe {
                    let global = self.args.first_index + idx as u64;
                    let topic = filter.replace("{id}", &format!("{}{}", self.args.client_id_prefix, global));
                    self.scratch.clear();
                    mqtt::encode_subscribe(
                        &mut self.scratch,
                        self.args.mqtt_version,
                        1,
                        topic.as_bytes(),
                        self.args.subscribe_qos,
                    );
                    if !self.send_scratch(idx) {
                        return false;
                    }
                }
            }
            Packet::Publish {
                qos,
                packet_id,
                topic,
                payload,
            } => {
                self.progress.publishes_received += 1;
                self.seconds.cur.publishes += 1;
                let control = if control::is_control_topic(topic) {
                    self.control_messages += 1;
                    control::parse(topic, payload).unwrap_or_else(|_| {
                        self.overload.control_errors += 1;
                        None
                    })
                } else {
                    None
                };
                // A heartbeat adjustment changes the period before the PUBACK restarts
                // the timer, so the new interval counts from now.
                if let Some(Control::Heartbeat { keepalive_s, .. }) = control {
                    let cap_s = match self.args.heartbeat_max_s {
                        0 => u16::MAX,
                        cap => cap,
                    };
                    let dev = &mut self.slots[idx as usize].dev;
                    if !dev.adjusted {
                        self.overload.adjusted_devices += 1;
                    }
                    dev.on_heartbeat_adjust(keepalive_s, cap_s);
                    self.overload.heartbeat_adjustments += 1;
                    self.seconds.cur.hb_adjusts += 1;
                }
                if let Some(ts) = find_timestamp_us(payload) {
                    self.pushes_delivered += 1;
                    let now_unix_us = self.unix_us_at_t0 + now_us;
                    report::record_us(&mut self.push_latency, now_unix_us.saturating_sub(ts));
                }
                if let (1, Some(pid)) = (qos, packet_id) {
                    self.scratch.clear();
                    mqtt::encode_puback(&mut self.scratch, pid);
                    if !self.send_scratch(idx) {
                        return false;
                    }
                    self.pubacks_sent += 1;
                    self.slots[idx as usize].dev.on_packet_sent(now_ms);
                }
                // After the PUBACK's restart, so the re-initialization is what stays.
                match control {
                    Some(Control::KeepAlive { keepalive_s, offset_ms }) => self.slots[idx as usize]
                        .dev
                        .on_keepalive_config(now_ms, keepalive_s, offset_ms),
                    Some(Control::Heartbeat { offset_ms, .. }) => {
                        self.slots[idx as usize].dev.on_heartbeat_offset(now_ms, offset_ms)
                    }
                    None => {}
                }
                self.arm(idx);
            }
            Packet::Pingresp => {
                if let Some(rtt_us) = self.slots[idx as usize].dev.on_pingresp(now_us) {
                    self.progress.keepalives += 1;
                    self.seconds.cur.pingresps += 1;
                    report::record_us(&mut self.ping_rtt, rtt_us);
                }
            }
            Packet::Disconnect { code } => {
                let overload = is_overload_code(code);
                if overload {
                    self.overload.overload_disconnects += 1;
                    self.seconds.cur.overload_disconnects += 1;
                    if self.slots[idx as usize].dev.overload_closed {
                        self.overload.disconnected_twice += 1;
                    }
                }
                self.close(idx, &format!("disconnect_0x{code:02x}"));
                self.slots[idx as usize].dev.overload_closed = overload;
                return false;
            }
            Packet::Suback { .. } | Packet::Other(_) => {}
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_marker() {
        assert_eq!(
            find_timestamp_us(b"{\"x\":\"lgts=1700000000123456 pad\"}"),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(find_timestamp_us(b"lgts="), None);
        assert_eq!(find_timestamp_us(b"nothing"), None);
        assert_eq!(
            find_timestamp_us(b"lgts=99999999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
    }
}
