//! The device's keep-alive timer (seeds/000 claims 16-17, libmosquitto semantics).
//!
//! Owns: when the next PINGREQ is due and whether one is still unanswered. The timer
//! restarts whenever the device sends a packet (CONNECT, PUBACK, PINGREQ...), as
//! libmosquitto does, so a QoS 1 push restarts it through its PUBACK; a keep-alive
//! configuration message (`$pulse/keepalive`) re-initializes it, and the next PINGREQ
//! goes out when the re-initialized timer expires. A PINGREQ still unanswered when the
//! timer expires again is a ping timeout.
//!
//! Must never: read a clock (time is passed in, in ms on the caller's monotonic clock),
//! do I/O, choose the period by itself (the heartbeat step method and the server do),
//! or grow beyond a few machine words (the load generator keeps one per device).

/// Deadline meaning "no timer".
pub const NEVER_MS: u64 = u64::MAX;

/// What the caller must do after `KeepAlive::poll`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepAliveAction {
    /// Nothing is due yet.
    Idle,
    /// Send a PINGREQ now (the timer has already restarted, as for any sent packet).
    SendPing,
    /// The previous PINGREQ was never answered: the connection is dead; close it.
    Timeout,
}

/// One connection's keep-alive timer: 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepAlive {
    deadline_ms: u64,
    period_s: u16,
    ping_outstanding: bool,
}

const _: () = assert!(std::mem::size_of::<KeepAlive>() <= 16);

impl KeepAlive {
    /// A stopped timer with `period_s` (0 = never send keep-alives).
    pub const fn new(period_s: u16) -> KeepAlive {
        KeepAlive {
            deadline_ms: NEVER_MS,
            period_s,
            ping_outstanding: false,
        }
    }

    pub fn period_s(&self) -> u16 {
        self.period_s
    }

    /// When `poll` has something to do next (`NEVER_MS` when stopped or period 0).
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    pub fn ping_outstanding(&self) -> bool {
        self.ping_outstanding
    }

    pub fn is_running(&self) -> bool {
        self.deadline_ms != NEVER_MS
    }

    /// The connection is up (CONNACK accepted; CONNECT was the last packet sent).
    pub fn start(&mut self, now_ms: u64) {
        self.ping_outstanding = false;
        self.restart(now_ms);
    }

    /// The connection is gone: no more deadlines.
    pub fn stop(&mut self) {
        self.deadline_ms = NEVER_MS;
        self.ping_outstanding = false;
    }

    /// Changes the period; it applies from the next restart (the next packet sent).
    pub fn set_period(&mut self, period_s: u16) {
        self.period_s = period_s;
    }

    /// The device sent a packet: restart the timer (libmosquitto). No effect when stopped.
    pub fn on_packet_sent(&mut self, now_ms: u64) {
        if self.is_running() {
            self.restart(now_ms);
        }
    }

    /// Keep-alive configuration message (claims 16-17): re-initialize the timer now with
    /// `period_s`; the first period starts `offset_ms` after now. Call it after the PUBACK
    /// of the message was accounted with `on_packet_sent`, so that restart does not undo it.
    /// No effect when stopped (the message arrived on a dead connection).
    pub fn reinitialize(&mut self, now_ms: u64, period_s: u16, offset_ms: u64) {
        self.period_s = period_s;
        self.restart_in(now_ms, offset_ms);
    }

    /// Restarts the timer with its current period, the period starting `offset_ms`
    /// from now (a heartbeat adjustment's offset). No effect when stopped.
    pub fn restart_in(&mut self, now_ms: u64, offset_ms: u64) {
        if self.is_running() {
            self.restart(now_ms.saturating_add(offset_ms.min(OFFSET_MS_MAX)));
        }
    }

    /// PINGRESP arrived; returns whether it answered an outstanding PINGREQ.
    pub fn on_pingresp(&mut self) -> bool {
        std::mem::replace(&mut self.ping_outstanding, false)
    }

    /// The timer expired (or not yet, then `Idle`): a PINGREQ is due, or the last one was
    /// never answered within one period.
    pub fn poll(&mut self, now_ms: u64) -> KeepAliveAction {
        if now_ms < self.deadline_ms {
            return KeepAliveAction::Idle;
        }
        if self.ping_outstanding {
            self.stop();
            return KeepAliveAction::Timeout;
        }
        self.ping_outstanding = true;
        self.restart(now_ms);
        KeepAliveAction::SendPing
    }

    fn restart(&mut self, from_ms: u64) {
        self.deadline_ms = if self.period_s == 0 {
            NEVER_MS
        } else {
            from_ms.saturating_add(u64::from(self.period_s) * 1000)
        };
    }
}

/// Largest offset a configuration message may ask for (one maximal keep-alive period).
pub const OFFSET_MS_MAX: u64 = u16::MAX as u64 * 1000;

/// Period a device uses after a keep-alive configuration message announcing `message_s`:
/// the server's period, but never longer than the device's own heartbeat interval
/// (`own_s`, 0 = none), which may be shorter while it probes its path or is capped at
/// its optimal value.
pub fn configured_period_s(message_s: u16, own_s: u16) -> u16 {
    match (message_s, own_s) {
        (0, own) => own,
        (msg, 0) => msg,
        (msg, own) => msg.min(own),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_small() {
        assert_eq!(std::mem::size_of::<KeepAlive>(), 16);
    }

    #[test]
    fn ping_on_expiry_then_timeout_without_pingresp() {
        let mut ka = KeepAlive::new(60);
        assert_eq!(ka.poll(1_000_000), KeepAliveAction::Idle, "stopped timer never fires");
        ka.start(1_000);
        assert_eq!(ka.deadline_ms(), 61_000);
        assert_eq!(ka.poll(60_999), KeepAliveAction::Idle);
        assert_eq!(ka.poll(61_000), KeepAliveAction::SendPing);
        assert!(ka.ping_outstanding());
        assert_eq!(ka.deadline_ms(), 121_000);
        assert!(ka.on_pingresp());
        assert!(!ka.on_pingresp(), "a second PINGRESP answers nothing");
        assert_eq!(ka.poll(121_000), KeepAliveAction::SendPing);
        assert_eq!(ka.poll(181_000), KeepAliveAction::Timeout);
        assert!(!ka.is_running());
    }

    #[test]
    fn timer_restarts_on_every_sent_packet() {
        let mut ka = KeepAlive::new(30);
        ka.start(0);
        // A QoS 1 push arrives at 10 s and 25 s; each PUBACK restarts the timer.
        ka.on_packet_sent(10_000);
        assert_eq!(ka.deadline_ms(), 40_000);
        ka.on_packet_sent(25_000);
        assert_eq!(ka.poll(40_000), KeepAliveAction::Idle, "old deadline is gone");
        assert_eq!(ka.poll(55_000), KeepAliveAction::SendPing);
        // A stopped timer ignores sent packets.
        ka.stop();
        ka.on_packet_sent(60_000);
        assert_eq!(ka.deadline_ms(), NEVER_MS);
    }

    #[test]
    fn configuration_message_reinitializes_and_next_keepalive_follows_the_new_timer() {
        // Simulated clock: synchronized devices all restarted at t = 5 s by a push burst.
        let mut devices = [KeepAlive::new(20); 4];
        for d in &mut devices {
            d.start(0);
            d.on_packet_sent(5_000);
        }
        assert!(devices.iter().all(|d| d.deadline_ms() == 25_000));
        // The server sends the configuration to device n at ((n+1)/N) x T after 6 s.
        for (n, d) in devices.iter_mut().enumerate() {
            let at = 6_000 + (n as u64 + 1) * 20_000 / 4;
            d.on_packet_sent(at); // its PUBACK
            d.reinitialize(at, 20, 0);
            assert_eq!(d.deadline_ms(), at + 20_000);
        }
        let deadlines: Vec<u64> = devices.iter().map(|d| d.deadline_ms()).collect();
        assert_eq!(deadlines, [31_000, 36_000, 41_000, 46_000], "spread over one period");
        // Each sends its next keep-alive when its new timer expires, not before.
        let d = &mut devices[2];
        assert_eq!(d.poll(40_999), KeepAliveAction::Idle);
        assert_eq!(d.poll(41_000), KeepAliveAction::SendPing);
    }

    #[test]
    fn reinitialize_with_offset_and_new_period() {
        let mut ka = KeepAlive::new(60);
        ka.start(0);
        ka.reinitialize(10_000, 30, 2_500);
        assert_eq!((ka.period_s(), ka.deadline_ms()), (30, 42_500));
        // A huge offset is bounded.
        ka.reinitialize(0, 1, u64::MAX);
        assert_eq!(ka.deadline_ms(), OFFSET_MS_MAX + 1_000);
        // On a stopped timer only the period changes.
        let mut stopped = KeepAlive::new(60);
        stopped.reinitialize(5, 10, 0);
        assert_eq!((stopped.period_s(), stopped.deadline_ms()), (10, NEVER_MS));
    }

    #[test]
    fn period_zero_never_pings_and_set_period_applies_on_restart() {
        let mut ka = KeepAlive::new(0);
        ka.start(0);
        assert_eq!(ka.deadline_ms(), NEVER_MS);
        let mut ka = KeepAlive::new(10);
        ka.start(0);
        ka.set_period(20);
        assert_eq!(ka.deadline_ms(), 10_000);
        assert_eq!(ka.poll(10_000), KeepAliveAction::SendPing);
        assert_eq!(ka.deadline_ms(), 30_000);
    }

    #[test]
    fn configured_period_never_exceeds_the_devices_own() {
        assert_eq!(configured_period_s(60, 45), 45);
        assert_eq!(configured_period_s(30, 45), 30);
        assert_eq!(configured_period_s(30, 0), 30);
        assert_eq!(configured_period_s(0, 45), 45);
    }
}
