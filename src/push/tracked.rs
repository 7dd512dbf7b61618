//! One pending message's tracking record: the message, its attempt round
//! (generation), its plan of mechanisms and where it stands in it, its single
//! timer (what it means, when, and the timer's own generation), its expiry on
//! the monotonic clock, and how many attempts of the round are in flight.
//!
//! Owns the bookkeeping of one message. Must never decide what happens next
//! (the machine does) or reach another message; what it returns (a timer to
//! arm, the round's mechanisms) the machine turns into effects.

use super::effects::Effect;
use super::mechanism::Mechanism;
use super::message::{Attempt, Message, State};
use super::profile::OnFailure;

/// What a message's timer means when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Only the TTL.
    Expiry,
    /// The attempt of this generation has had its time.
    AttemptTimeout,
    /// Start the next attempt.
    Retry,
}

pub struct Tracked {
    pub msg: Message,
    /// Bumped on every attempt round; outcomes of an older one are stale.
    pub generation: u32,
    plan: Vec<usize>,
    plan_pos: usize,
    /// Bumped on every arm; a timer of an older one is stale.
    pub timer_generation: u32,
    pub next: Next,
    pub next_due_ms: u64,
    pub expires_mono_ms: u64,
    pub in_flight: u32,
}

impl Tracked {
    pub fn new(msg: Message, plan: Vec<usize>, expires_mono_ms: u64) -> Tracked {
        Tracked {
            msg,
            generation: 0,
            plan,
            plan_pos: 0,
            timer_generation: 0,
            next: Next::Expiry,
            next_due_ms: expires_mono_ms,
            expires_mono_ms,
            in_flight: 0,
        }
    }

    /// Sets the next action and arms the one timer at min(next, expiry).
    pub fn set_next(&mut self, next: Next, due_ms: u64) -> Effect {
        self.next = next;
        self.next_due_ms = due_ms;
        self.arm()
    }

    /// Re-arms the timer (a new generation) at min(next action, expiry).
    pub fn arm(&mut self) -> Effect {
        self.timer_generation = self.timer_generation.wrapping_add(1);
        Effect::Schedule {
            id: self.msg.id,
            generation: self.timer_generation,
            due_ms: self.next_due_ms.min(self.expires_mono_ms),
        }
    }

    pub fn has_plan(&self) -> bool {
        !self.plan.is_empty()
    }

    /// Why no further attempt may start (all attempts used), with `last` as the
    /// last outcome (or the recorded one).
    pub fn exhausted(&self, last: Option<&str>) -> Option<String> {
        let done = self.msg.attempts.len() as u32;
        if done < self.msg.profile.retry.max_attempts {
            return None;
        }
        let recorded = self
            .msg
            .attempts
            .last()
            .and_then(|a| a.outcome.clone())
            .unwrap_or_default();
        Some(format!("{done} attempts failed, last: {}", last.unwrap_or(&recorded)))
    }

    /// Starts a new round: the mechanisms to try, in plan order from the current position.
    pub fn new_round(&mut self) -> Vec<usize> {
        self.generation = self.generation.wrapping_add(1);
        self.in_flight = 0;
        let n = self.plan.len();
        (0..n).map(|k| self.plan[(self.plan_pos + k) % n]).collect()
    }

    /// After a failed round: fail over to the next mechanism, if the profile says so.
    pub fn fail_over(&mut self) {
        if self.msg.profile.retry.on_failure == OnFailure::NextMechanism && !self.plan.is_empty() {
            self.plan_pos = (self.plan_pos + 1) % self.plan.len();
        }
    }

    /// Records an attempt started on `mechanism` (state Sent); returns its number.
    pub fn start(&mut self, mechanism: &str, now_unix_ms: u64) -> u32 {
        let n = self.msg.attempts.len() as u32 + 1;
        self.msg.attempts.push(Attempt {
            n,
            mechanism: mechanism.to_string(),
            started_ms: now_unix_ms,
            outcome: None,
            latency_ms: None,
        });
        self.in_flight += 1;
        self.msg
            .set_state(State::Sent, now_unix_ms, format!("attempt {n} on {mechanism}"));
        n
    }

    /// Closes the open attempt on `mechanism` with `outcome`; the latency is
    /// given, or measured from its start.
    pub fn close(&mut self, mechanism: &str, outcome: &str, latency_ms: Option<u64>, now_unix_ms: u64) {
        if let Some(a) = self.msg.open_attempt(mechanism) {
            a.outcome = Some(outcome.to_string());
            a.latency_ms = Some(latency_ms.unwrap_or(now_unix_ms.saturating_sub(a.started_ms)));
        }
    }

    /// The mechanisms with an attempt still open.
    pub fn open_mechanisms(&self, mechanisms: &[Mechanism]) -> Vec<usize> {
        self.msg
            .attempts
            .iter()
            .filter(|a| a.outcome.is_none())
            .filter_map(|a| mechanisms.iter().position(|m| m.config.name == a.mechanism))
            .collect()
    }
}
