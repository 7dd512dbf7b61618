//! Sans-IO state machine of one simulated device (one MQTT client).
//!
//! Owns: the connection phase, the keep-alive timer (restarts whenever the device
//! sends a packet, like libmosquitto; a received QoS 1 push therefore restarts it
//! through its PUBACK; a `$pulse/keepalive` control message re-initializes it),
//! PINGREQ on expiry, ping timeout, connect timeout, reconnect backoff with jitter, and
//! the storm drop (reconnect at once, then back off normally).
//! Must never: touch sockets, clocks or randomness sources itself (time and random
//! numbers are passed in), allocate, or grow beyond a few machine words.

/// Reconnect backoff base and cap.
pub const BACKOFF_BASE_MS: u64 = 100;
pub const BACKOFF_MAX_MS: u64 = 10_000;

/// Deadline meaning "no timer".
pub const NEVER_MS: u64 = u64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Never tried yet (waiting for the ramp).
    Fresh,
    /// Waiting out a reconnect backoff; `deadline_ms` is when it may reconnect.
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
    /// Absolute time (ms on the worker clock) of the next timer expiry.
    pub deadline_ms: u64,
    /// Time the outstanding PINGREQ was sent (µs on the worker clock); 0 = none.
    ping_sent_us: u64,
    /// Effective keep-alive (CONNECT value, or the server's Server Keep Alive).
    pub keepalive_s: u16,
    /// Consecutive failed attempts, for backoff.
    failures: u8,
    /// Has this device ever completed a CONNACK 0 (then a later connect is a reconnect).
    pub ever_connected: bool,
    /// Dropped by a storm and not connected again yet.
    pub storm_pending: bool,
}

/// Exponential backoff with "equal jitter": half fixed, half random.
/// `random` is any u64 from the caller's generator.
pub fn backoff_ms(failures: u8, random: u64) -> u64 {
    let exp = BACKOFF_BASE_MS.saturating_mul(1u64 << failures.min(20));
    let cap = exp.min(BACKOFF_MAX_MS);
    let half = cap / 2;
    half + random % (half + 1)
}

impl Device {
    pub fn new(keepalive_s: u16) -> Self {
        Device {
            phase: Phase::Fresh,
            deadline_ms: NEVER_MS,
            ping_sent_us: 0,
            keepalive_s,
            failures: 0,
            ever_connected: false,
            storm_pending: false,
        }
    }

    /// A connect slot was granted and the socket's connect() started.
    pub fn on_connect_started(&mut self, now_ms: u64, connect_timeout_ms: u64) {
        self.phase = Phase::Connecting;
        self.deadline_ms = now_ms + connect_timeout_ms;
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
            self.keepalive_s = k;
        }
        self.phase = Phase::Connected;
        self.failures = 0;
        self.ever_connected = true;
        self.storm_pending = false;
        self.ping_sent_us = 0;
        // The CONNECT was our last sent packet; restarting here is the same within an RTT.
        self.restart_keepalive(now_ms);
        true
    }

    /// The device sent a packet (PUBACK, SUBSCRIBE...): restart the keep-alive timer.
    pub fn on_packet_sent(&mut self, now_ms: u64) {
        if self.phase == Phase::Connected {
            self.restart_keepalive(now_ms);
        }
    }

    /// Keep-alive configuration message: re-initialize the timer now, optionally
    /// with a new period.
    pub fn on_keepalive_config(&mut self, now_ms: u64, new_keepalive_s: Option<u16>) {
        if let Some(k) = new_keepalive_s {
            self.keepalive_s = k;
        }
        if self.phase == Phase::Connected {
            self.restart_keepalive(now_ms);
        }
    }

    /// PINGRESP arrived; returns the round trip in µs if a ping was outstanding.
    pub fn on_pingresp(&mut self, now_us: u64) -> Option<u64> {
        if self.ping_sent_us == 0 {
            return None;
        }
        let rtt = now_us.saturating_sub(self.ping_sent_us);
        self.ping_sent_us = 0;
        Some(rtt)
    }

    pub fn ping_outstanding(&self) -> bool {
        self.ping_sent_us != 0
    }

    fn restart_keepalive(&mut self, now_ms: u64) {
        self.deadline_ms = if self.keepalive_s == 0 {
            NEVER_MS
        } else {
            now_ms + self.keepalive_s as u64 * 1000
        };
    }

    /// The timer fired at `now` (the caller checked `now >= deadline_ms`).
    pub fn on_timer(&mut self, now_ms: u64, now_us: u64) -> TimerAction {
        match self.phase {
            Phase::Connecting => TimerAction::Timeout(TimeoutKind::Connect),
            Phase::AwaitConnack => TimerAction::Timeout(TimeoutKind::Connack),
            Phase::Connected => {
                if self.ping_outstanding() {
                    return TimerAction::Timeout(TimeoutKind::Ping);
                }
                self.ping_sent_us = now_us.max(1);
                self.restart_keepalive(now_ms);
                TimerAction::SendPing
            }
            Phase::Backoff => {
                self.phase = Phase::Ready;
                self.deadline_ms = NEVER_MS;
                TimerAction::ReadyToConnect
            }
            Phase::Fresh | Phase::Ready | Phase::Done => TimerAction::Nothing,
        }
    }

    /// The connection (or attempt) ended. Schedules the reconnect; returns the
    /// backoff chosen in ms.
    pub fn on_closed(&mut self, now_ms: u64, random: u64) -> u64 {
        let delay = backoff_ms(self.failures, random);
        self.failures = self.failures.saturating_add(1);
        self.ping_sent_us = 0;
        self.phase = Phase::Backoff;
        self.deadline_ms = now_ms + delay;
        delay
    }

    /// The device dropped its connection on purpose (storm): it wants to reconnect
    /// at once, without backoff for this first attempt (the I/O layer queues it);
    /// failures after that back off normally, starting from the base.
    pub fn on_storm_drop(&mut self) {
        self.phase = Phase::Ready;
        self.deadline_ms = NEVER_MS;
        self.ping_sent_us = 0;
        self.failures = 0;
        self.storm_pending = true;
    }

    pub fn stop(&mut self) {
        self.phase = Phase::Done;
        self.deadline_ms = NEVER_MS;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_is_small() {
        assert!(std::mem::size_of::<Device>() <= 32);
    }

    #[test]
    fn backoff_grows_and_caps_with_jitter() {
        assert!((50..=100).contains(&backoff_ms(0, 12345)));
        assert!((100..=200).contains(&backoff_ms(1, 999)));
        for r in [0, 1, 77, u64::MAX] {
            let d = backoff_ms(30, r);
            assert!((5_000..=10_000).contains(&d), "{d}");
        }
        assert_eq!(backoff_ms(3, 0), 400);
        assert_eq!(backoff_ms(3, 400), 800);
    }

    #[test]
    fn keepalive_cycle_and_rtt() {
        let mut d = Device::new(60);
        d.on_connect_started(0, 10_000);
        assert_eq!(d.deadline_ms, 10_000);
        d.on_connect_sent();
        assert!(d.on_connack(5, 0, None));
        assert_eq!(d.deadline_ms, 60_005);
        assert_eq!(d.on_timer(60_005, 60_005_000), TimerAction::SendPing);
        assert_eq!(d.deadline_ms, 120_005);
        assert_eq!(d.on_pingresp(60_005_700), Some(700));
        assert_eq!(d.on_pingresp(60_005_800), None);
        // a PUBACK restarts the timer
        d.on_packet_sent(70_000);
        assert_eq!(d.deadline_ms, 130_000);
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
        assert_eq!(d.keepalive_s, 300);
        assert_eq!(d.deadline_ms, 302_001);
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
            (d.phase, d.deadline_ms, d.storm_pending),
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
        assert_eq!(d.deadline_ms, NEVER_MS);
    }

    #[test]
    fn keepalive_config_reinitializes() {
        let mut d = Device::new(60);
        d.on_connect_started(0, 1000);
        d.on_connect_sent();
        d.on_connack(0, 0, None);
        d.on_keepalive_config(30_000, Some(120));
        assert_eq!(d.deadline_ms, 150_000);
    }
}
