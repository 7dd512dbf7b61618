//! The push service's state machine: every pending message with its tracking
//! state (attempt generation, plan, next action, expiry), the mechanisms and
//! their measurements, the finished messages kept for `GET`, and the owners it
//! composes (`offline`, `collapse`, `callbacks`, `payloads`: a payload shared
//! by a multicast is let go, and its budget and row released, with its last
//! pending message). Each transition (a request,
//! a delivery event, a hand-off or POST result, a timer) changes that state
//! and appends `Effect`s: deliver a push, POST, arm or cancel a timer, write or
//! delete a record. An outcome invalidates an attempt by bumping the message's
//! generation, never by searching; a timer carries its own generation.
//!
//! Owns message state after acceptance. Must never perform I/O, start a
//! thread or read a clock: time is an argument (`Now`), presence is asked
//! through `Presence`, and everything else is an effect for the executor.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;

use super::callbacks::{CallbackOutcome, Callbacks};
use super::collapse::CollapseIndex;
use super::counters::{ServiceCounters, bump};
use super::devices::{DeliverError, Presence};
pub use super::effects::{AttemptRef, Effect, Now};
use super::finished::Finished;
use super::mechanism::{Kind, Mechanism, MechanismConfig, Stats};
use super::message::{Message, State};
use super::offline::OfflineQueue;
use super::payloads::PayloadRefs;
use super::posts::{PostFor, Posts, failure_reason};
use super::service::{Op, ServiceConfig, ServiceError};
use super::tracked::{Next, Tracked};
use super::{DeliveryEvent, HELD_IN_SESSION, Push, format_id, policy};
use crate::limits::{PUSH_SWEEP_DEVICES_MAX, PUSH_WEBHOOK_TIMEOUT_SLACK_MS};
use crate::outbound::PostResult;

enum Started {
    Yes,
    DeviceOffline,
}

pub struct Machine {
    config: ServiceConfig,
    counters: Arc<ServiceCounters>,
    mechanisms: Vec<Mechanism>,
    pending: HashMap<u64, Tracked>,
    finished: Finished,
    offline: OfflineQueue,
    collapse: CollapseIndex,
    callbacks: Callbacks,
    posts: Posts,
    payloads: PayloadRefs,
}

impl Machine {
    pub fn new(config: ServiceConfig, mechanisms: Vec<MechanismConfig>, counters: Arc<ServiceCounters>) -> Machine {
        Machine {
            offline: OfflineQueue::new(config.pending_per_device_max),
            callbacks: Callbacks::new(
                config.callback_attempts_max,
                config.callbacks_pending_max,
                config.callback_budget,
            ),
            finished: Finished::new(config.completed_retention_max, config.completed_retention_bytes_max),
            config,
            counters,
            mechanisms: mechanisms
                .into_iter()
                .map(|config| Mechanism {
                    config,
                    stats: Stats::default(),
                })
                .collect(),
            pending: HashMap::new(),
            collapse: CollapseIndex::new(),
            posts: Posts::new(),
            payloads: PayloadRefs::new(),
        }
    }

    // ----- queries -----

    /// A message, pending or finished.
    pub fn message(&self, id: u64) -> Option<&Message> {
        self.pending.get(&id).map(|t| &t.msg).or_else(|| self.finished.get(id))
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Pending messages held for offline devices.
    pub fn queued_len(&self) -> usize {
        self.offline.len()
    }

    /// Payload bytes held for pending messages, each shared payload once.
    pub fn payload_bytes(&self) -> u64 {
        self.payloads.bytes()
    }

    /// Payloads held for pending messages.
    pub fn payloads_len(&self) -> usize {
        self.payloads.len()
    }

    /// Record bytes of the finished messages kept for `GET`.
    pub fn finished_bytes(&self) -> u64 {
        self.finished.bytes()
    }

    pub fn next_callback_due_ms(&self) -> Option<u64> {
        self.callbacks.next_due_ms()
    }

    fn find(&self, sp: &str, id: u64) -> Result<&Message, ServiceError> {
        match self.message(id) {
            Some(m) if m.sp == sp => Ok(m),
            _ => Err(ServiceError::NotFound),
        }
    }

    pub fn status(&self, sp: &str, id: u64) -> Result<serde_json::Value, ServiceError> {
        self.find(sp, id).map(|m| m.status_json())
    }

    /// Table A for `GET /v1/mechanisms`.
    pub fn mechanisms_json(&self, now: Now) -> serde_json::Value {
        let list: Vec<_> = self.mechanisms.iter().map(|m| m.to_json(now.mono_ms)).collect();
        serde_json::json!({ "mechanisms": list })
    }

    // ----- requests -----

    /// Starts tracking messages the API made durable (their payload is
    /// reserved in the budgets already).
    pub fn submit(&mut self, messages: Vec<Message>, now: Now, devices: &dyn Presence, fx: &mut Vec<Effect>) {
        // Every message of the request references its payload before any can
        // finish: the first to finish must not take the payload with it.
        for m in &messages {
            self.payloads.attach(m.payload.key(m.id), &m.sp, m.payload.len_bytes);
        }
        for m in messages {
            bump(&self.counters.accepted);
            self.track(m, false, now, devices, fx);
        }
    }

    /// Takes over what the store held at start-up.
    pub fn recover(&mut self, messages: Vec<Message>, now: Now, devices: &dyn Presence, fx: &mut Vec<Effect>) {
        for m in messages.iter().filter(|m| !m.state.is_terminal()) {
            if self.payloads.attach(m.payload.key(m.id), &m.sp, m.payload.len_bytes) {
                fx.push(Effect::PayloadHeld {
                    sp: m.sp.clone(),
                    len_bytes: m.payload.len_bytes,
                });
            }
        }
        for mut m in messages {
            if m.state.is_terminal() {
                m.payload.let_go();
                self.retain_completed(m, fx);
            } else {
                self.track(m, true, now, devices, fx);
            }
        }
    }

    pub fn confirm(
        &mut self,
        sp: &str,
        id: u64,
        now: Now,
        fx: &mut Vec<Effect>,
    ) -> Result<serde_json::Value, ServiceError> {
        self.find(sp, id)?;
        if self.pending.contains_key(&id) {
            // Confirmed before our own delivery signal: stop every further attempt.
            self.finish(id, State::Confirmed, "confirmed by the SP", now, fx);
        } else if let Some(m) = self.finished.get_mut(id) {
            match m.state {
                State::Delivered => {
                    m.set_state(State::Confirmed, now.unix_ms, "confirmed by the SP");
                    bump(&self.counters.confirmed);
                    fx.push(Effect::Persist { id });
                    let (sp, url, body) = (m.sp.clone(), m.callback_url.clone(), m.status_json());
                    self.queue_callback(&sp, url, body);
                }
                State::Confirmed => {}
                state => return Err(ServiceError::Conflict { state, op: Op::Confirm }),
            }
        }
        self.status(sp, id)
    }

    pub fn cancel(
        &mut self,
        sp: &str,
        id: u64,
        now: Now,
        fx: &mut Vec<Effect>,
    ) -> Result<serde_json::Value, ServiceError> {
        let state = self.find(sp, id)?.state;
        if state.is_terminal() {
            return Err(ServiceError::Conflict { state, op: Op::Cancel });
        }
        self.finish(id, State::Cancelled, "cancelled by the SP", now, fx);
        self.status(sp, id)
    }

    // ----- tracking -----

    /// Starts tracking a durable, non-terminal message.
    fn track(&mut self, mut msg: Message, recovered: bool, now: Now, devices: &dyn Presence, fx: &mut Vec<Effect>) {
        let id = msg.id;
        if self.pending.contains_key(&id) {
            self.release_payload(&mut msg, fx);
            return;
        }
        if self.pending.len() as u32 >= self.config.pending_messages_max
            && let Some(oldest) = self.offline.oldest()
        {
            // Store and forward is bounded in total: the oldest held message makes room.
            self.finish(oldest, State::Failed, "evicted: gateway-wide queue full", now, fx);
        }
        if self.pending.len() as u32 >= self.config.pending_messages_max {
            // Nothing held to evict (all in flight): the API refuses before this;
            // a recovery beyond the bound fails the excess.
            msg.set_state(State::Failed, now.unix_ms, "pending message limit reached");
            self.release_payload(&mut msg, fx);
            bump(&self.counters.failed);
            fx.push(Effect::Persist { id });
            self.retain_completed(msg, fx);
            return;
        }
        if let Some(key) = &msg.collapse_key
            && let Some(old) = self.collapse.claim(&msg.sp, &msg.device, key, id)
            && let Some(t) = self.pending.get_mut(&old)
        {
            t.msg.collapsed_into = Some(id);
            self.finish(old, State::Collapsed, format!("replaced by {}", format_id(id)), now, fx);
        }
        let expires_mono_ms = now.mono_ms + msg.expires_ms.saturating_sub(now.unix_ms);
        let plan = policy::plan(&msg.profile, &self.mechanisms, now.mono_ms);
        if recovered {
            msg.close_open_attempts("interrupted_by_restart", now.unix_ms);
        }
        let mut tracked = Tracked::new(msg, plan, expires_mono_ms);
        fx.push(tracked.arm());
        self.pending.insert(id, tracked);
        if recovered {
            // Its open attempts were closed; a new message is on disk as it is.
            fx.push(Effect::Persist { id });
        }
        self.start_attempt(id, now, devices, fx);
    }

    /// Sets the message's next action and arms its one timer.
    fn set_next(&mut self, id: u64, next: Next, due_ms: u64, fx: &mut Vec<Effect>) {
        if let Some(t) = self.pending.get_mut(&id) {
            fx.push(t.set_next(next, due_ms));
        }
    }

    fn start_attempt(&mut self, id: u64, now: Now, devices: &dyn Presence, fx: &mut Vec<Effect>) {
        let Some(t) = self.pending.get_mut(&id) else { return };
        if now.mono_ms >= t.expires_mono_ms {
            self.finish(id, State::Expired, "ttl ran out", now, fx);
            return;
        }
        if !t.has_plan() {
            self.finish(id, State::Failed, "no mechanism satisfies the profile", now, fx);
            return;
        }
        if let Some(detail) = t.exhausted(None) {
            self.finish(id, State::Failed, detail, now, fx);
            return;
        }
        let choices = t.new_round();
        let parallel = policy::parallelism(&t.msg.profile).min(choices.len());
        let qos0 = t.msg.qos == 0;
        let mut started = 0;
        let mut offline = false;
        for mechanism in choices {
            if started >= parallel {
                break;
            }
            match self.start_on(id, mechanism, now, devices, fx) {
                Started::Yes => started += 1,
                Started::DeviceOffline => offline = true,
            }
            // A QoS 0 hand-off finishes the message once the shard takes it: no
            // parallel attempt beside it (its failure comes back as a retry).
            if qos0 && started > 0 && self.mechanisms[mechanism].config.kind == Kind::Persistent {
                break;
            }
        }
        if started > 0 {
            return;
        }
        if offline {
            self.queue_for_device(id, now, fx);
        } else {
            self.schedule_retry(id, "could not start any mechanism", now, fx);
        }
    }

    fn start_on(
        &mut self,
        id: u64,
        mechanism: usize,
        now: Now,
        devices: &dyn Presence,
        fx: &mut Vec<Effect>,
    ) -> Started {
        let config = &self.mechanisms[mechanism].config;
        let Some(t) = self.pending.get_mut(&id) else {
            return Started::DeviceOffline;
        };
        let attempt = AttemptRef {
            id,
            generation: t.generation,
            mechanism,
        };
        let timeout_ms = match &config.kind {
            Kind::Persistent => {
                let Some(at) = devices.locate(&t.msg.device) else {
                    return Started::DeviceOffline;
                };
                let push = Push {
                    id,
                    qos: t.msg.qos,
                    payload: t.msg.payload.bytes.clone(),
                    tracked: true,
                    control_topic: None,
                    sent_as: None,
                };
                fx.push(Effect::Deliver { at, push, attempt });
                config.timeout_ms
            }
            Kind::Webhook { url } => {
                let request = self.posts.webhook(attempt, now.mono_ms, &t.msg, url, config.timeout_ms);
                fx.push(Effect::Post(request));
                config.timeout_ms + PUSH_WEBHOOK_TIMEOUT_SLACK_MS
            }
        };
        t.start(&config.name, now.unix_ms);
        bump(&self.counters.attempts);
        self.mechanisms[mechanism].stats.attempts += 1;
        // A crash before this lands restarts the attempt (at least once).
        fx.push(Effect::PersistSoon { id });
        self.set_next(id, Next::AttemptTimeout, now.mono_ms + timeout_ms, fx);
        Started::Yes
    }

    /// Store and forward: wait for the device (or the TTL).
    fn queue_for_device(&mut self, id: u64, now: Now, fx: &mut Vec<Effect>) {
        let Some(t) = self.pending.get_mut(&id) else { return };
        if t.msg.state != State::Queued {
            t.msg.set_state(State::Queued, now.unix_ms, "device offline");
        }
        let expires = t.expires_mono_ms;
        fx.push(Effect::Persist { id });
        let evicted = self.offline.hold(&t.msg.device, id);
        self.set_next(id, Next::Expiry, expires, fx);
        for old in evicted {
            self.finish(old, State::Failed, "evicted: device queue full", now, fx);
        }
    }

    fn schedule_retry(&mut self, id: u64, why: &str, now: Now, fx: &mut Vec<Effect>) {
        let Some(t) = self.pending.get_mut(&id) else { return };
        if let Some(detail) = t.exhausted(Some(why)) {
            self.finish(id, State::Failed, detail, now, fx);
            return;
        }
        t.fail_over();
        let attempts = t.msg.attempts.len() as u32;
        let backoff_ms = t.msg.profile.retry.backoff_ms(attempts + 1);
        bump(&self.counters.retries);
        self.set_next(id, Next::Retry, now.mono_ms + backoff_ms, fx);
    }

    /// An attempt failed (`reason`); its generation says which round it was in.
    fn attempt_failed(&mut self, attempt: AttemptRef, reason: &str, now: Now, fx: &mut Vec<Effect>) {
        let AttemptRef {
            id,
            generation,
            mechanism,
        } = attempt;
        self.mechanisms[mechanism].stats.record_failure(now.mono_ms);
        let name = &self.mechanisms[mechanism].config.name;
        let Some(t) = self.pending.get_mut(&id) else { return };
        t.close(name, reason, None, now.unix_ms);
        fx.push(Effect::Persist { id });
        if generation != t.generation {
            return;
        }
        t.in_flight = t.in_flight.saturating_sub(1);
        if t.in_flight > 0 {
            return; // a parallel attempt (critical) may still succeed
        }
        self.schedule_retry(id, reason, now, fx);
    }

    fn attempt_succeeded(
        &mut self,
        id: u64,
        mechanism: usize,
        latency_ms: u64,
        outcome: &str,
        now: Now,
        fx: &mut Vec<Effect>,
    ) {
        self.mechanisms[mechanism].stats.record_success(latency_ms);
        let name = self.mechanisms[mechanism].config.name.clone();
        let Some(t) = self.pending.get_mut(&id) else { return };
        t.close(&name, outcome, Some(latency_ms), now.unix_ms);
        self.finish(id, State::Delivered, format!("delivered by {name}"), now, fx);
    }

    /// Moves a pending message to a terminal state: stops its attempts (late
    /// outcomes find it gone), cancels its timer, calls back.
    fn finish(&mut self, id: u64, state: State, detail: impl Into<String>, now: Now, fx: &mut Vec<Effect>) {
        let Some(mut t) = self.pending.remove(&id) else { return };
        t.msg.close_open_attempts("cancelled", now.unix_ms);
        t.msg.set_state(state, now.unix_ms, detail);
        fx.push(Effect::CancelTimer { id });
        self.offline.release(id, &t.msg.device);
        if let Some(key) = &t.msg.collapse_key {
            self.collapse.release(&t.msg.sp, &t.msg.device, key, id);
        }
        bump(self.counters.terminal(state));
        self.release_payload(&mut t.msg, fx);
        fx.push(Effect::Persist { id });
        // Most pushes have no callback: their status body is never built.
        if t.msg.callback_url.is_some() {
            self.queue_callback(&t.msg.sp, t.msg.callback_url.clone(), t.msg.status_json());
        }
        self.retain_completed(t.msg, fx);
    }

    /// A message stops referencing its payload (it finished): the bytes go
    /// from it, and with its last message the payload's budget and row.
    fn release_payload(&mut self, msg: &mut Message, fx: &mut Vec<Effect>) {
        if let Some(r) = self.payloads.detach(msg.payload.key(msg.id)) {
            fx.push(Effect::PayloadReleased {
                sp: r.sp,
                len_bytes: r.len_bytes,
                stored_as: msg.payload.stored_as,
            });
        }
        msg.payload.let_go();
    }

    fn retain_completed(&mut self, msg: Message, fx: &mut Vec<Effect>) {
        fx.extend(self.finished.keep(msg).into_iter().map(|id| Effect::Delete { id }));
    }

    // ----- events -----

    fn persistent_index(&self) -> Option<usize> {
        self.mechanisms.iter().position(|m| m.config.kind == Kind::Persistent)
    }

    pub fn on_delivery(&mut self, event: DeliveryEvent, now: Now, devices: &dyn Presence, fx: &mut Vec<Effect>) {
        match event {
            DeliveryEvent::Acked { push_id } => {
                let Some(p) = self.persistent_index() else { return };
                let Some(t) = self.pending.get_mut(&push_id) else {
                    return;
                };
                let started = t.msg.open_attempt("persistent").map(|a| a.started_ms).unwrap_or(0);
                let latency_ms = now.unix_ms.saturating_sub(started);
                self.attempt_succeeded(push_id, p, latency_ms, "puback", now, fx);
            }
            DeliveryEvent::NotDelivered { push_id, reason } if reason == HELD_IN_SESSION => {
                // The device's MQTT session holds it; its PUBACK (after the device
                // resumes the session) decides. Until then only the TTL runs.
                let Some(t) = self.pending.get_mut(&push_id) else {
                    return;
                };
                let expires = t.expires_mono_ms;
                t.msg
                    .set_state(State::Sent, now.unix_ms, "held in the device's MQTT session");
                fx.push(Effect::Persist { id: push_id });
                self.set_next(push_id, Next::Expiry, expires, fx);
            }
            DeliveryEvent::NotDelivered { push_id, reason } => {
                let Some(mechanism) = self.persistent_index() else {
                    return;
                };
                let Some(t) = self.pending.get(&push_id) else { return };
                let attempt = AttemptRef {
                    id: push_id,
                    generation: t.generation,
                    mechanism,
                };
                self.attempt_failed(attempt, reason, now, fx);
            }
            DeliveryEvent::DeviceOnline { client_id } => self.device_online(&client_id, now, devices, fx),
        }
    }

    fn device_online(&mut self, device: &str, now: Now, devices: &dyn Presence, fx: &mut Vec<Effect>) {
        let mut ids = self.offline.take_device(device);
        // Higher priority first, then oldest first.
        ids.sort_by_key(|id| {
            let priority = self.pending.get(id).map(|t| t.msg.profile.priority).unwrap_or(0);
            (Reverse(priority), *id)
        });
        for id in ids {
            self.start_attempt(id, now, devices, fx);
        }
    }

    /// Catches devices whose online event was lost (full channel).
    pub fn sweep(&mut self, now: Now, devices: &dyn Presence, fx: &mut Vec<Effect>) {
        for d in self.offline.devices(PUSH_SWEEP_DEVICES_MAX) {
            if devices.locate(&d).is_some() {
                self.device_online(&d, now, devices, fx);
            }
        }
    }

    /// The executor handed a push to its shard (or could not).
    pub fn on_handoff(
        &mut self,
        attempt: AttemptRef,
        result: Result<(), DeliverError>,
        now: Now,
        fx: &mut Vec<Effect>,
    ) {
        match result {
            Err(e) => self.attempt_failed(attempt, e.reason(), now, fx),
            Ok(()) => {
                let Some(t) = self.pending.get_mut(&attempt.id) else {
                    return;
                };
                if t.msg.qos != 0 || t.generation != attempt.generation {
                    return; // QoS 1 waits for PUBACK
                }
                // QoS 0 has no acknowledgement: handed to the device's connection is all we learn.
                t.close(
                    &self.mechanisms[attempt.mechanism].config.name,
                    "sent_qos0",
                    Some(0),
                    now.unix_ms,
                );
                self.mechanisms[attempt.mechanism].stats.record_success(0);
                self.finish(
                    attempt.id,
                    State::Delivered,
                    "qos 0: handed to the device connection",
                    now,
                    fx,
                );
            }
        }
    }

    /// The outbound pool refused the POST tagged `tag` (its queue is full).
    pub fn on_post_refused(&mut self, tag: u64, now: Now, fx: &mut Vec<Effect>) {
        match self.posts.take(tag) {
            Some(PostFor::Attempt(attempt, _)) => self.attempt_failed(attempt, "relay_queue_full", now, fx),
            Some(PostFor::Callback { job }) => self.callbacks.refused(job, now.mono_ms),
            None => {}
        }
    }

    pub fn on_post_result(&mut self, result: PostResult, now: Now, fx: &mut Vec<Effect>) {
        let ok = result.outcome.is_success();
        match self.posts.take(result.tag) {
            Some(PostFor::Attempt(attempt, started_ms)) if ok => {
                let latency_ms = now.mono_ms.saturating_sub(started_ms);
                self.attempt_succeeded(attempt.id, attempt.mechanism, latency_ms, "http_2xx", now, fx);
            }
            Some(PostFor::Attempt(attempt, _)) => {
                self.attempt_failed(attempt, &failure_reason(&result.outcome), now, fx)
            }
            Some(PostFor::Callback { job }) => match self.callbacks.answered(job, ok, now.mono_ms) {
                CallbackOutcome::Delivered => bump(&self.counters.callbacks_ok),
                CallbackOutcome::GaveUp => bump(&self.counters.callbacks_failed),
                CallbackOutcome::Retrying => {}
            },
            None => {}
        }
    }

    /// The timer of `id` armed with `generation` is due.
    pub fn on_timer(&mut self, id: u64, generation: u32, now: Now, devices: &dyn Presence, fx: &mut Vec<Effect>) {
        let Some(t) = self.pending.get_mut(&id) else { return };
        if t.timer_generation != generation {
            return;
        }
        if now.mono_ms >= t.expires_mono_ms {
            self.finish(id, State::Expired, "ttl ran out", now, fx);
            return;
        }
        if now.mono_ms < t.next_due_ms || t.next == Next::Expiry {
            fx.push(t.arm()); // early: cannot happen with an exact timer, harmless
            return;
        }
        if t.next == Next::Retry {
            self.start_attempt(id, now, devices, fx);
            return;
        }
        // The attempts of this round have had their time.
        let open = t.open_mechanisms(&self.mechanisms);
        if open.is_empty() {
            self.schedule_retry(id, "timeout", now, fx);
            return;
        }
        t.in_flight = open.len() as u32;
        let generation = t.generation;
        for mechanism in open {
            let attempt = AttemptRef {
                id,
                generation,
                mechanism,
            };
            self.attempt_failed(attempt, "timeout", now, fx);
        }
    }

    // ----- callbacks -----

    fn queue_callback(&mut self, sp: &str, url: Option<String>, status: serde_json::Value) {
        let Some(url) = url else { return };
        if !self.callbacks.queue(sp, url, status.to_string().into_bytes()) {
            bump(&self.counters.callbacks_failed);
        }
    }

    /// POSTs every callback due at `now`.
    pub fn fire_callbacks(&mut self, now: Now, fx: &mut Vec<Effect>) {
        while let Some(due) = self.callbacks.pop_due(now.mono_ms) {
            let timeout_ms = self.config.callback_timeout_ms;
            fx.push(Effect::Post(
                self.posts.callback(due.job, due.url, due.body, timeout_ms),
            ));
        }
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
