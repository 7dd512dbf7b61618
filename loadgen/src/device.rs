//! Sans-IO state machine of one simulated device (one MQTT client), in 40 bytes.
//!
//! Owns: the connection phase, connect timeout, reconnect backoff and the storm drop
//! (reconnect at once, then back off normally). The device behaviour it shares with real
//! devices comes from the gateway's SDK (`pulsegate::sdk`), not a copy: the keep-alive
//! timer (`sdk::KeepAlive`: restarts whenever the device sends a packet, like libmosquitto,
//! so a QoS 1 push restarts it through its PUBACK; `$pulse/keepalive` re-initializes it;
//! PINGREQ on expiry, ping timeout one period later), the heartbeat adjustment rule of
//! `$pulse/heartbeat` (`sdk::heartbeat::adjusted_interval_s`: toward the request, never
//! beyond the device's cap) and the backoff with jitter (`sdk::reconnect::backoff_ms`).
//! The heartbeat interval (the keep-alive period) is kept across reconnects, as the SDK's
//! stored state is.
//! Must never: touch sockets, clocks or randomness sources itself (time and random
//! numbers are passed in), allocate, or grow beyond 40 bytes.

use pulsegate::sdk::heartbeat::adjusted_interval_s;
use pulsegate::sdk::keepalive::{configured_period_s, KeepAlive, KeepAliveAction};
use pulsegate::sdk::reconnect::{backoff_ms, BackoffPolicy};

/// Reconnect backoff: 100 ms base, 10 s cap.
pub const BACKOFF: BackoffPolicy = BackoffPolicy::LOADGEN;

/// Deadline meaning "no timer".
pub const NEVER_MS: u64 = pulsegate::sdk::NEVER_MS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Never tried yet (waiting for the ramp).
    Fresh,
    /// Waiting out a reconnect backoff; the deadline is when it may reconnect.
    Backoff,
    /// Waiting for a connect slot (backoff over, ramp or in-flight limit holds it).
    Ready,
    /// TCP connect in progress.
    Connecting,
    /// CONNECT sent, waiting for CONNACK.
    AwaitConnack,
    /// CONNACK 0 received.
    Connected,
    /// Stopped for good.
    Done,
}

/// What the I/O layer must do after a timer expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerAction {
    Nothing,
    /// Write a PINGREQ (already accounted as sent).
    SendPing,
    /// Give up on this connection attempt / connection; then call `on_closed`.
    Timeout(TimeoutKind),
    /// Backoff elapsed; queue the device for a connect slot.
    ReadyToConnect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    Connect,
    Connack,
    Ping,
}

#[derive(Debug, Clone, Copy)]
pub struct Device {
    pub phase: Phase,
    /// Deadline (ms, worker clock) of the connect attempt or the backoff; while
    /// connected the keep-alive timer holds the deadline.
    other_deadline_ms: u64,
    /// The SDK keep-alive timer; its period is the device's heartbeat interval.
    ka: KeepAlive,
    /// Time the outstanding PINGREQ was sent (µs on the worker clock), for the RTT.
    ping_sent_us: u64,
    /// Consecutive failed attempts, for backoff.
    failures: u8,
    /// Has this device ever completed a CONNACK 0 (then a later connect is a reconnect).
    pub ever_connected: bool,
    /// Dropped by a storm and not connected again yet.
    pub storm_pending: bool,
    /// Has this device ever received a heartbeat adjustment.
    pub adjusted: bool,
    /// Its last connection ended with an overload DISCONNECT (0x89 / 0x9C / 0x9D).
    pub overload_closed: bool,
}

const _: () = assert!(std::mem::size_of::<Device>() <= 40);

impl Device {
    pub fn new(keepalive_s: u16) -> Self {
        Device {
            phase: Phase::Fresh,
            other_deadline_ms: NEVER_MS,
            ka: KeepAlive::new(keepalive_s),
            ping_sent_us: 0,
            failures: 0,
            ever_connected: false,
            storm_pending: false,
            adjusted: false,
            overload_closed: false,
        }
    }

    /// Absolute time (ms on the worker clock) of the next timer expiry.
    pub fn deadline_ms(&self) -> u64 {
        if self.phase == Phase::Connected {
            self.ka.deadline_ms()
        } else {
            self.other_deadline_ms
        }
    }

    /// The heartbeat interval: the keep-alive sent in CONNECT and the timer's period.
    pub fn heartbeat_s(&self) -> u16 {
        self.ka.period_s()
    }

    /// A connect slot was granted and the socket's connect() started.
    pub fn on_connect_started(&mut self, now_ms: u64, connect_timeout_ms: u64) {
        self.phase = Phase::Connecting;
        self.other_deadline_ms = now_ms + connect_timeout_ms;
    }

    /// TCP is up and CONNECT has been written. The CONNACK deadline keeps the
    /// connect-attempt deadline (one budget for TCP + MQTT handshake).
    pub fn on_connect_sent(&mut self) {
        self.phase = Phase::AwaitConnack;
    }

    /// CONNACK arrived. Returns true when accepted (code 0).
    pub fn on_connack(&mut self, now_ms: u64, code: u8, server_keepalive_s: Option<u16>) -> bool {
        if code != 0 {
            return false;
        }
        if let Some(k) = server_keepalive_s {
            self.ka.set_period(k);
        }
        self.phase = Phase::Connected;
        self.other_deadline_ms = NEVER_MS;
        self.failures = 0;
        self.ever_connected = true;
        self.storm_pending = false;
        self.ping_sent_us = 0;
        // The CONNECT was our last sent packet; starting here is the same within an RTT.
        self.ka.start(now_ms);
        true
    }

    /// The device sent a packet (PUBACK, SUBSCRIBE...): restart the keep-alive timer.
    pub fn on_packet_sent(&mut self, now_ms: u64) {
        self.ka.on_packet_sent(now_ms);
    }

    /// `$pulse/keepalive`: re-initialize the timer now (after the PUBACK's restart) with
    /// the announced period, never longer than the device's own.
    pub fn on_keepalive_config(&mut self, now_ms: u64, keepalive_s: u16, offset_ms: u64) {
        let period_s = configured_period_s(keepalive_s, self.ka.period_s());
        self.ka.reinitialize(now_ms, period_s, offset_ms);
    }

    /// `$pulse/heartbeat`: lengthen the interval toward `requested_s`, never beyond
    /// `cap_s`; applies from the next restart (call before the PUBACK is accounted).
    /// Returns the new interval.
    pub fn on_heartbeat_adjust(&mut self, requested_s: u16, cap_s: u16) -> u16 {
        let interval_s = adjusted_interval_s(self.ka.period_s(), requested_s, cap_s);
        self.ka.set_period(interval_s);
        self.adjusted = true;
        interval_s
    }

    /// `$pulse/heartbeat`'s offset: the adjusted interval's first period starts
    /// `offset_ms` from now (call after the PUBACK's restart).
    pub fn on_heartbeat_offset(&mut self, now_ms: u64, offset_ms: u64) {
        self.ka.restart_in(now_ms, offset_ms);
    }

    /// PINGRESP arrived; returns the round trip in µs if a ping was outstanding.
    pub fn on_pingresp(&mut self, now_us: u64) -> Option<u64> {
        if !self.ka.on_pingresp() {
            return None;
        }
        Some(now_us.saturating_sub(self.ping_sent_us))
    }

    /// The timer fired at `now` (the caller checked `now >= deadline_ms()`).
    pub fn on_timer(&mut self, now_ms: u64, now_us: u64) -> TimerAction {
        match self.phase {
            Phase::Connecting => TimerAction::Timeout(TimeoutKind::Connect),
            Phase::AwaitConnack => TimerAction::Timeout(TimeoutKind::Connack),
            Phase::Connected => match self.ka.poll(now_ms) {
                KeepAliveAction::Idle => TimerAction::Nothing,
                KeepAliveAction::SendPing => {
                    self.ping_sent_us = now_us;
                    TimerAction::SendPing
                }
                KeepAliveAction::Timeout => TimerAction::Timeout(TimeoutKind::Ping),
            },
            Phase::Backoff => {
                self.phase = Phase::Ready;
                self.other_deadline_ms = NEVER_MS;
                TimerAction::ReadyToConnect
            }
            Phase::Fresh | Phase::Ready | Phase::Done => TimerAction::Nothing,
        }
    }

    /// The connection (or attempt) ended. Schedules the reconnect; returns the
    /// backoff chosen in ms.
    pub fn on_closed(&mut self, now_ms: u64, random: u64) -> u64 {
        let delay = backoff_ms(&BACKOFF, self.failures, random);
        self.failures = self.failures.saturating_add(1);
        self.ka.stop();
        self.phase = Phase::Backoff;
        self.other_deadline_ms = now_ms + delay;
        delay
    }

    /// The device dropped its connection on purpose (storm): it wants to reconnect
    /// at once, without backoff for this first attempt (the I/O layer queues it);
    /// failures after that back off normally, starting from the base.
    pub fn on_storm_drop(&mut self) {
        self.phase = Phase::Ready;
        self.other_deadline_ms = NEVER_MS;
        self.ka.stop();
        self.failures = 0;
        self.storm_pending = true;
        self.overload_closed = false;
    }

    pub fn stop(&mut self) {
        self.phase = Phase::Done;
        self.other_deadline_ms = NEVER_MS;
        self.ka.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_is_small() {
        assert!(std::mem::size_of::<Device>() <= 40);
    }

    #[test]
    fn backoff_grows_and_caps_with_jitter() {
        let mut d = Device::new(60);
        assert!((50..=100).contains(&d.on_closed(0, 12345)));
        assert!((100..=200).contains(&d.on_closed(0, 999)));
        for r in [0, 1, 77, u64::MAX] {
            for _ in 0..10 {
                d.on_closed(0, r);
            }
            let delay = d.on_closed(0, r);
            assert!((5_000..=10_000).contains(&delay), "{delay}");
        }
    }

    #[test]
    fn keepalive_cycle_and_rtt() {
        let mut d = Device::new(60);
        d.on_connect_started(0, 10_000);
        assert_eq!(d.deadline_ms(), 10_000);
        d.on_connect_sent();
        assert!(d.on_connack(5, 0, None));
        assert_eq!(d.deadline_ms(), 60_005);
        assert_eq!(d.on_timer(60_005, 60_005_000), TimerAction::SendPing);
        assert_eq!(d.deadline_ms(), 120_005);
        assert_eq!(d.on_pingresp(60_005_700), Some(700));
        assert_eq!(d.on_pingresp(60_005_800), None);
        // a PUBACK restarts the timer
        d.on_packet_sent(70_000);
        assert_eq!(d.deadline_ms(), 130_000);
    }

    #[test]
    fn missing_pingresp_times_out() {
        let mut d = Device::new(1);
        d.on_connect_started(0, 1000);
        d.on_connect_sent();
        d.on_connack(0, 0, None);
        assert_eq!(d.on_timer(1000, 1_000_000), TimerAction::SendPing);
        assert_eq!(d.on_timer(2000, 2_000_000), TimerAction::Timeout(TimeoutKind::Ping));
    }

    #[test]
    fn server_keepalive_overrides_and_rejection() {
        let mut d = Device::new(60);
        d.on_connect_started(0, 1000);
        d.on_connect_sent();
        assert!(!d.on_connack(1, 0x89, None));
        assert_eq!(d.on_timer(1000, 0), TimerAction::Timeout(TimeoutKind::Connack));
        let backoff = d.on_closed(1000, 0);
        assert_eq!(backoff, 50);
        assert_eq!(d.phase, Phase::Backoff);
        assert_eq!(d.on_timer(1050, 0), TimerAction::ReadyToConnect);
        assert_eq!(d.phase, Phase::Ready);
        d.on_connect_started(2000, 1000);
        d.on_connect_sent();
        assert!(d.on_connack(2001, 0, Some(300)));
        assert_eq!(d.heartbeat_s(), 300);
        assert_eq!(d.deadline_ms(), 302_001);
        // failures reset after success: next backoff is base again
        assert_eq!(d.on_closed(400_000, 0), 50);
    }

    #[test]
    fn storm_drop_reconnects_without_backoff_then_backs_off() {
        let mut d = Device::new(60);
        d.on_connect_started(0, 1000);
        d.on_connect_sent();
        d.on_connack(1, 0, None);
        d.on_storm_drop();
        assert_eq!(
            (d.phase, d.deadline_ms(), d.storm_pending),
            (Phase::Ready, NEVER_MS, true)
        );
        d.on_connect_started(5, 1000);
        d.on_connect_sent();
        // first failure after the storm: base backoff with jitter
        assert!((50..=100).contains(&d.on_closed(10, 7)));
        assert!(d.storm_pending);
        assert!((100..=200).contains(&d.on_closed(200, 7)));
        d.on_connect_started(400, 1000);
        d.on_connect_sent();
        assert!(d.on_connack(401, 0, None));
        assert!(!d.storm_pending);
    }

    #[test]
    fn keepalive_zero_means_no_pings() {
        let mut d = Device::new(0);
        d.on_connect_started(0, 1000);
        d.on_connect_sent();
        d.on_connack(0, 0, None);
        assert_eq!(d.deadline_ms(), NEVER_MS);
    }

    #[test]
    fn keepalive_config_reinitializes() {
        let mut d = Device::new(60);
        d.on_connect_started(0, 1000);
        d.on_connect_sent();
        d.on_connack(0, 0, None);
        d.on_packet_sent(30_000); // the PUBACK of the configuration message
        d.on_keepalive_config(30_000, 60, 0);
        assert_eq!(d.deadline_ms(), 90_000);
        // A longer announced period does not lengthen the device's own.
        d.on_keepalive_config(40_000, 120, 0);
        assert_eq!((d.heartbeat_s(), d.deadline_ms()), (60, 100_000));
    }

    #[test]
    fn heartbeat_adjustment_is_kept_across_reconnects_and_capped() {
        let mut d = Device::new(10);
        d.on_connect_started(0, 1000);
        d.on_connect_sent();
        d.on_connack(0, 0, None);
        assert_eq!(d.on_heartbeat_adjust(20, u16::MAX), 20);
        assert!(d.adjusted);
        d.on_packet_sent(5_000); // its PUBACK: the new interval counts from here
        assert_eq!(d.deadline_ms(), 25_000);
        d.on_heartbeat_offset(5_000, 3_000); // with an offset, from 3 s later
        assert_eq!(d.deadline_ms(), 28_000);
        assert_eq!(d.on_heartbeat_adjust(40, 30), 30, "capped");
        d.on_closed(6_000, 0);
        assert_eq!(d.heartbeat_s(), 30, "the next CONNECT carries the adjusted interval");
    }
}
