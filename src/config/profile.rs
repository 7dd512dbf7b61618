//! Delivery profiles (seeds/003 Table C): what an SP asks of one message's
//! delivery — the goal, deadlines, cost ceiling, priority and retry strategy.
//!
//! Owns the profile schema, its defaults and validation (`[profiles.NAME]` in
//! the config file, and a request's inline profile); `push::profile`
//! re-exports it. Must never choose a mechanism itself (`push::policy` does
//! that from a profile and measured stats) and never name the push service.

use serde::{Deserialize, Serialize};

/// What the delivery optimizes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// Cheapest mechanism first.
    #[default]
    MinimizeCost,
    /// Fastest measured mechanism first.
    MinimizeLatency,
    /// Most reliable measured mechanism first.
    MaximizeReliability,
    /// Two mechanisms in parallel; the others are cancelled on the first success.
    Critical,
    /// Only mechanisms that cost nothing.
    Free,
}

/// After a failed attempt: the same mechanism again, or the next one in the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    SameMechanism,
    #[default]
    NextMechanism,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryStrategy {
    /// Attempts in total, over all mechanisms (≥ 1).
    pub max_attempts: u32,
    /// First backoff; doubles per attempt.
    pub backoff_base_ms: u64,
    /// Backoff ceiling.
    pub backoff_max_ms: u64,
    pub on_failure: OnFailure,
}

impl Default for RetryStrategy {
    fn default() -> Self {
        RetryStrategy {
            max_attempts: 5,
            backoff_base_ms: 1_000,
            backoff_max_ms: 60_000,
            on_failure: OnFailure::NextMechanism,
        }
    }
}

impl RetryStrategy {
    /// Backoff before attempt `next_attempt` (2 = the first retry).
    pub fn backoff_ms(&self, next_attempt: u32) -> u64 {
        let exp = next_attempt.saturating_sub(2).min(30);
        self.backoff_base_ms
            .saturating_mul(1u64 << exp)
            .min(self.backoff_max_ms)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Profile {
    pub goal: Goal,
    /// The message is worthless after this many seconds (caps ttl_s; excludes
    /// mechanisms whose mean latency exceeds it).
    pub deliver_within_s: Option<u32>,
    /// 0 (lowest) to 9; higher goes first when a device's queue drains.
    pub priority: u8,
    /// Mechanisms costing more than this are never used.
    pub max_cost: Option<f64>,
    pub retry: RetryStrategy,
    /// Hold the message while the device is offline (store and forward). When
    /// false, a push to a device that is not connected is refused with 404.
    pub queue_if_offline: bool,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            goal: Goal::default(),
            deliver_within_s: None,
            priority: 0,
            max_cost: None,
            retry: RetryStrategy::default(),
            queue_if_offline: true,
        }
    }
}

/// Why a profile was refused.
pub fn validate(p: &Profile) -> Result<(), String> {
    if p.priority > 9 {
        return Err(format!("profile.priority must be 0..9, got {}", p.priority));
    }
    if p.retry.max_attempts == 0 || p.retry.max_attempts > 100 {
        return Err(format!(
            "profile.retry.max_attempts must be 1..100, got {}",
            p.retry.max_attempts
        ));
    }
    if p.retry.backoff_base_ms == 0 || p.retry.backoff_base_ms > p.retry.backoff_max_ms {
        return Err("profile.retry.backoff_base_ms must be > 0 and ≤ backoff_max_ms".into());
    }
    if p.retry.backoff_max_ms > 24 * 3600 * 1000 {
        return Err("profile.retry.backoff_max_ms must be ≤ 24 h".into());
    }
    if let Some(c) = p.max_cost
        && !(c >= 0.0 && c.is_finite())
    {
        return Err("profile.max_cost must be a non-negative number".into());
    }
    if p.deliver_within_s == Some(0) {
        return Err("profile.deliver_within_s must be > 0".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let r = RetryStrategy {
            backoff_base_ms: 100,
            backoff_max_ms: 1_000,
            ..Default::default()
        };
        assert_eq!(r.backoff_ms(2), 100);
        assert_eq!(r.backoff_ms(3), 200);
        assert_eq!(r.backoff_ms(4), 400);
        assert_eq!(r.backoff_ms(6), 1_000);
        assert_eq!(r.backoff_ms(60), 1_000);
    }

    #[test]
    fn profiles_parse_with_defaults_and_reject_nonsense() {
        let p: Profile = serde_json::from_str(r#"{"goal":"critical","retry":{"max_attempts":3}}"#).expect("valid");
        assert_eq!(p.goal, Goal::Critical);
        assert_eq!(p.retry.max_attempts, 3);
        assert_eq!(p.retry.backoff_base_ms, 1_000);
        assert!(validate(&p).is_ok());
        assert!(serde_json::from_str::<Profile>(r#"{"gaol":"free"}"#).is_err());
        assert!(
            validate(&Profile {
                priority: 10,
                ..Default::default()
            })
            .is_err()
        );
        let bad = Profile {
            retry: RetryStrategy {
                max_attempts: 0,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(validate(&bad).is_err());
    }
}
