//! The device's heartbeat interval: the step method of seeds/004.
//!
//! Owns: the current heartbeat interval and its optimal value. The device starts at its
//! minimum interval and adds a step each time the path survives an interval (the PINGREQ
//! sent after a whole idle interval got its PINGRESP, no forced disconnect), up to its
//! maximum. If a connection dies silently at interval I (no PINGRESP: a NAT or firewall
//! dropped the idle mapping), the optimal value is the previous step: the largest interval
//! known to survive, below the path's idle timeout. A heartbeat adjustment from the server
//! (`$pulse/heartbeat`) moves the interval toward the requested value, never beyond the
//! optimal value (or the maximum while the optimal value is still unknown).
//!
//! Must never: read a clock, do I/O, or touch the keep-alive timer (the session applies
//! the interval this returns); never return an interval outside `[min_s, max_s]`.

use serde::{Deserialize, Serialize};

/// The device's preset parameters of the step method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatPolicy {
    /// First interval tried (the step method starts here).
    pub min_s: u16,
    /// Added after each interval the path survives.
    pub step_s: u16,
    /// Never longer than this (also the CONNECT keep-alive while probing).
    pub max_s: u16,
}

/// Why a policy was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyError {
    /// `min_s` is 0 or above `max_s`.
    BadRange { min_s: u16, max_s: u16 },
    /// `min_s < max_s` but `step_s` is 0: probing could never progress.
    ZeroStep,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyError::BadRange { min_s, max_s } => {
                write!(f, "heartbeat minimum {min_s} s must be in 1..=maximum {max_s} s")
            }
            PolicyError::ZeroStep => write!(f, "heartbeat step must be > 0 when minimum < maximum"),
        }
    }
}

impl std::error::Error for PolicyError {}

impl HeartbeatPolicy {
    /// One fixed interval: no probing, the interval is its own optimal value.
    pub const fn fixed(interval_s: u16) -> HeartbeatPolicy {
        HeartbeatPolicy {
            min_s: interval_s,
            step_s: 0,
            max_s: interval_s,
        }
    }

    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.min_s == 0 || self.min_s > self.max_s {
            return Err(PolicyError::BadRange {
                min_s: self.min_s,
                max_s: self.max_s,
            });
        }
        if self.min_s < self.max_s && self.step_s == 0 {
            return Err(PolicyError::ZeroStep);
        }
        Ok(())
    }

    fn clamp(&self, interval_s: u16) -> u16 {
        interval_s.clamp(self.min_s, self.max_s)
    }
}

/// Interval after a heartbeat adjustment asking for `requested_s`: toward the request,
/// never beyond `cap_s` (the optimal value), never shorter than `current_s` (the server
/// only lengthens heartbeats).
pub fn adjusted_interval_s(current_s: u16, requested_s: u16, cap_s: u16) -> u16 {
    current_s.max(requested_s.min(cap_s))
}

/// One device's step-method state: 6 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    current_s: u16,
    /// Largest interval the path is known to survive (0 = none yet).
    last_good_s: u16,
    /// The optimal value once known (0 = still probing).
    optimal_s: u16,
}

impl Heartbeat {
    /// A fresh device: start at the minimum. A fixed policy is optimal from the start.
    pub fn new(policy: &HeartbeatPolicy) -> Heartbeat {
        let fixed = policy.min_s == policy.max_s;
        Heartbeat {
            current_s: policy.min_s,
            last_good_s: 0,
            optimal_s: if fixed { policy.min_s } else { 0 },
        }
    }

    /// Resumes from stored state: `interval_s` with its "optimal" flag. A stored optimal
    /// value is trusted (clamped to the policy); otherwise probing continues from it.
    pub fn resume(policy: &HeartbeatPolicy, interval_s: u16, optimal: bool) -> Heartbeat {
        let current_s = policy.clamp(interval_s);
        let mut hb = Heartbeat::new(policy);
        hb.current_s = current_s;
        if optimal || policy.min_s == policy.max_s {
            hb.optimal_s = current_s;
        }
        hb
    }

    pub fn interval_s(&self) -> u16 {
        self.current_s
    }

    /// The optimal value, once probing found it.
    pub fn optimal_s(&self) -> Option<u16> {
        (self.optimal_s != 0).then_some(self.optimal_s)
    }

    /// Whether the current interval is the optimal value (the stored "optimal" flag).
    pub fn is_optimal(&self) -> bool {
        self.optimal_s != 0 && self.current_s == self.optimal_s
    }

    pub fn is_probing(&self) -> bool {
        self.optimal_s == 0
    }

    /// The CONNECT keep-alive for the next connection: the current interval once the
    /// optimal value is known, the maximum while probing (so that the server's 1.5 x
    /// keep-alive deadline never cuts a longer probe).
    pub fn connect_keepalive_s(&self, policy: &HeartbeatPolicy) -> u16 {
        if self.is_probing() {
            policy.max_s
        } else {
            self.current_s
        }
    }

    /// The path survived one whole idle interval at the current value. While probing, add
    /// a step (the maximum, once survived, is the optimal value). Returns the new interval
    /// when it changed.
    pub fn on_survived(&mut self, policy: &HeartbeatPolicy) -> Option<u16> {
        if !self.is_probing() {
            return None;
        }
        self.last_good_s = self.current_s;
        if self.current_s >= policy.max_s {
            self.optimal_s = self.current_s;
            return None;
        }
        let next = policy.clamp(self.current_s.saturating_add(policy.step_s));
        self.current_s = next;
        Some(next)
    }

    /// The connection died silently at the current interval (no PINGRESP, no DISCONNECT).
    /// While probing, the optimal value is the previous step (the minimum if even the
    /// first interval died). When the optimal value was already known, the path got
    /// stricter (another NAT): lower it by one step. Returns the new interval.
    pub fn on_silent_death(&mut self, policy: &HeartbeatPolicy) -> u16 {
        let optimal = if self.is_probing() {
            policy.clamp(self.last_good_s.min(self.current_s.saturating_sub(1)))
        } else {
            policy.clamp(self.current_s.min(self.optimal_s).saturating_sub(policy.step_s.max(1)))
        };
        self.optimal_s = optimal;
        self.last_good_s = optimal;
        self.current_s = optimal;
        optimal
    }

    /// Heartbeat adjustment message asking for `requested_s`: move toward it, never beyond
    /// the optimal value (the maximum while probing; a longer interval is then a probe and
    /// a silent death there still finds the optimal value). Returns the new interval.
    pub fn on_adjust(&mut self, policy: &HeartbeatPolicy, requested_s: u16) -> u16 {
        let cap_s = self.optimal_s().unwrap_or(policy.max_s);
        self.current_s = policy.clamp(adjusted_interval_s(self.current_s, requested_s, cap_s));
        self.current_s
    }

    /// The server imposed a keep-alive for this connection (MQTT 5 Server Keep Alive): the
    /// device must not exceed it. Returns the interval to use on this connection.
    pub fn connection_interval_s(&self, server_keepalive_s: Option<u16>) -> u16 {
        match server_keepalive_s {
            Some(s) if s > 0 => self.current_s.min(s),
            _ => self.current_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: HeartbeatPolicy = HeartbeatPolicy {
        min_s: 60,
        step_s: 60,
        max_s: 600,
    };

    #[test]
    fn policy_validation() {
        assert!(POLICY.validate().is_ok());
        assert!(HeartbeatPolicy::fixed(30).validate().is_ok());
        assert_eq!(
            HeartbeatPolicy::fixed(0).validate(),
            Err(PolicyError::BadRange { min_s: 0, max_s: 0 })
        );
        let bad = HeartbeatPolicy {
            min_s: 10,
            step_s: 0,
            max_s: 20,
        };
        assert_eq!(bad.validate(), Err(PolicyError::ZeroStep));
        let inverted = HeartbeatPolicy {
            min_s: 30,
            step_s: 1,
            max_s: 20,
        };
        assert!(inverted.validate().is_err());
    }

    #[test]
    fn step_method_adds_a_step_per_survived_interval_up_to_the_maximum() {
        let mut hb = Heartbeat::new(&POLICY);
        assert_eq!(hb.interval_s(), 60);
        assert!(hb.is_probing());
        assert_eq!(
            hb.connect_keepalive_s(&POLICY),
            600,
            "probing connects with the maximum"
        );
        let mut seen = vec![hb.interval_s()];
        while let Some(next) = hb.on_survived(&POLICY) {
            seen.push(next);
        }
        assert_eq!(seen, [60, 120, 180, 240, 300, 360, 420, 480, 540, 600]);
        assert!(hb.is_optimal(), "the maximum survived: it is the optimal value");
        assert_eq!(hb.optimal_s(), Some(600));
        assert_eq!(hb.on_survived(&POLICY), None, "no stepping once optimal");
        assert_eq!(hb.connect_keepalive_s(&POLICY), 600);
    }

    /// Simulated path: a NAT that drops mappings idle for `nat_idle_timeout_s` or more.
    fn probe(policy: &HeartbeatPolicy, nat_idle_timeout_s: u16) -> (Heartbeat, u32) {
        let mut hb = Heartbeat::new(policy);
        let mut intervals = 0;
        while hb.is_probing() {
            intervals += 1;
            assert!(intervals < 1_000, "probing must end");
            if hb.interval_s() < nat_idle_timeout_s {
                hb.on_survived(policy);
            } else {
                hb.on_silent_death(policy);
            }
        }
        (hb, intervals)
    }

    #[test]
    fn probing_finds_the_largest_step_below_the_nat_timeout() {
        // NAT drops after 5 min idle: 240 s survives, 300 s dies -> optimal 240 s.
        let (hb, intervals) = probe(&POLICY, 300);
        assert_eq!(hb.optimal_s(), Some(240));
        assert_eq!(hb.interval_s(), 240);
        assert!(hb.is_optimal());
        assert_eq!(intervals, 5, "60, 120, 180, 240 survive; 300 dies");
        // A timeout between steps: 250 s -> 240 s.
        assert_eq!(probe(&POLICY, 250).0.optimal_s(), Some(240));
        // No NAT timeout within range: the maximum.
        assert_eq!(probe(&POLICY, u16::MAX).0.optimal_s(), Some(600));
        // Even the minimum dies: stay at the minimum.
        assert_eq!(probe(&POLICY, 30).0.optimal_s(), Some(60));
    }

    #[test]
    fn a_stricter_path_after_the_optimal_lowers_it_by_one_step() {
        let (mut hb, _) = probe(&POLICY, 300);
        assert_eq!(hb.on_silent_death(&POLICY), 180);
        assert_eq!(hb.optimal_s(), Some(180));
        assert_eq!(hb.on_silent_death(&POLICY), 120);
        for _ in 0..10 {
            hb.on_silent_death(&POLICY);
        }
        assert_eq!(hb.interval_s(), 60, "never below the minimum");
    }

    #[test]
    fn adjustment_moves_toward_the_request_but_never_beyond_the_optimal() {
        // Optimal known (240 s), running below it after a resume at 120 s.
        let mut hb = Heartbeat::resume(&POLICY, 120, false);
        let (found, _) = probe(&POLICY, 300);
        hb.optimal_s = found.optimal_s;
        assert_eq!(hb.on_adjust(&POLICY, 180), 180, "toward the request");
        assert_eq!(hb.on_adjust(&POLICY, 480), 240, "capped at the optimal value");
        assert!(hb.is_optimal());
        assert_eq!(hb.on_adjust(&POLICY, 100), 240, "an adjustment never shortens");
        // While probing the cap is the maximum, and a silent death there still finds the
        // optimal value (the previous surviving step).
        let mut hb = Heartbeat::new(&POLICY);
        hb.on_survived(&POLICY); // 60 survived -> 120
        hb.on_survived(&POLICY); // 120 survived -> 180
        assert_eq!(hb.on_adjust(&POLICY, 900), 600);
        assert_eq!(hb.on_silent_death(&POLICY), 120);
        assert!(hb.is_optimal());
        // The pure rule the load generator uses.
        assert_eq!(adjusted_interval_s(10, 20, u16::MAX), 20);
        assert_eq!(adjusted_interval_s(10, 20, 15), 15);
        assert_eq!(adjusted_interval_s(10, 5, 15), 10);
    }

    #[test]
    fn resume_and_fixed_policies() {
        let hb = Heartbeat::resume(&POLICY, 240, true);
        assert!(hb.is_optimal());
        assert_eq!(hb.connect_keepalive_s(&POLICY), 240);
        let hb = Heartbeat::resume(&POLICY, 5, false);
        assert_eq!(hb.interval_s(), 60, "clamped to the policy");
        assert!(hb.is_probing());
        let fixed = HeartbeatPolicy::fixed(45);
        let mut hb = Heartbeat::new(&fixed);
        assert!(hb.is_optimal());
        assert_eq!(hb.on_survived(&fixed), None);
        assert_eq!(hb.on_adjust(&fixed, 90), 45);
        assert_eq!(hb.connection_interval_s(Some(30)), 30);
        assert_eq!(hb.connection_interval_s(Some(0)), 45);
        assert_eq!(hb.connection_interval_s(None), 45);
    }
}
