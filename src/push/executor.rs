//! The push service thread: waits on its inputs (API requests, delivery
//! events from the shards, outbound POST results, the store's commit answer,
//! its own timers), feeds each to the `Machine` with the time, and performs
//! the effects the machine returns: pushes to devices' shards (`Devices`),
//! POSTs on the outbound pool, timers on its heap, writes through the
//! `Persister`. A hand-off or POST the device side refuses goes straight back
//! to the machine as an event; effects are drained from a queue, never by
//! recursion.
//!
//! Owns the I/O of the service. Must never decide anything about a message
//! (the machine does) and never block on a device, a relay or the store: the
//! one wait is for the next input or timer, bounded by `PUSH_LOOP_SLEEP_MS_MAX`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select};

use super::DeliveryEvent;
use super::budget::PayloadBudget;
use super::counters::{ServiceCounters, bump, set};
use super::devices::Devices;
use super::machine::{Effect, Machine, Now};
use super::message::Message;
use super::persist::Persister;
use super::service::{Request, ServiceParts, unix_ms};
use super::timers::Timers;
use crate::limits::{
    PUSH_EVENTS_PER_TURN_MAX, PUSH_LOOP_SLEEP_MS_MAX, PUSH_OUTBOUND_QUEUE_MAX, PUSH_SHUTDOWN_FLUSH_MS,
    PUSH_SWEEP_EVERY_MS,
};
use crate::outbound::{OutboundPool, PostOutcome, PostResult};

pub struct PushService {
    machine: Machine,
    devices: Arc<dyn Devices>,
    outbound: OutboundPool,
    outbound_rx: Receiver<PostResult>,
    requests: Receiver<Request>,
    deliveries: Receiver<DeliveryEvent>,
    timers: Timers,
    persister: Persister,
    counters: Arc<ServiceCounters>,
    budget: Arc<PayloadBudget>,
    /// Effects not yet performed (reused between turns).
    effects: Vec<Effect>,
    batch: Vec<Effect>,
    expired: Vec<(u64, u32)>,
    epoch: Instant,
    last_sweep_ms: u64,
    /// When a TLS failure was last logged.
    last_tls_log_ms: Option<u64>,
}

impl PushService {
    pub fn new(parts: ServiceParts, recovered: Vec<Message>) -> PushService {
        let (outbound, outbound_rx) = OutboundPool::start(
            parts.outbound_workers,
            PUSH_OUTBOUND_QUEUE_MAX,
            &parts.outbound_roots,
            parts.url_policy.clone(),
        );
        let mut s = PushService {
            machine: Machine::new(parts.config, parts.mechanisms, parts.counters.clone()),
            devices: parts.devices,
            outbound,
            outbound_rx,
            requests: parts.requests,
            deliveries: parts.deliveries,
            timers: Timers::new(),
            persister: Persister::new(parts.committer, parts.counters.clone()),
            counters: parts.counters,
            budget: parts.budget,
            effects: Vec::new(),
            batch: Vec::new(),
            expired: Vec::with_capacity(PUSH_EVENTS_PER_TURN_MAX),
            epoch: Instant::now(),
            last_sweep_ms: 0,
            last_tls_log_ms: None,
        };
        let now = s.now();
        s.machine.recover(recovered, now, &*s.devices, &mut s.effects);
        s.perform(now);
        s
    }

    fn now(&self) -> Now {
        Now {
            mono_ms: self.epoch.elapsed().as_millis() as u64,
            unix_ms: unix_ms(),
        }
    }

    /// Runs until `stop` is set, then commits what is left (bounded wait).
    pub fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            self.wait();
            self.turn();
        }
        let machine = &self.machine;
        let flushed = self
            .persister
            .shutdown(Duration::from_millis(PUSH_SHUTDOWN_FLUSH_MS), |id| read(machine, id));
        if !flushed {
            eprintln!(
                "pulsegate: push service stopped with {} state changes not committed (recovery resumes from the last commit)",
                self.persister.dirty_len()
            );
        }
        self.outbound.shutdown();
    }

    /// Sleeps until an input is ready or the next timer is due.
    fn wait(&self) {
        let mut sel = Select::new();
        sel.recv(&self.requests);
        sel.recv(&self.deliveries);
        sel.recv(&self.outbound_rx);
        if let Some(ticket) = self.persister.waiting_on() {
            sel.recv(ticket.receiver());
        }
        let _ = sel.ready_timeout(Duration::from_millis(self.sleep_ms()));
    }

    fn sleep_ms(&self) -> u64 {
        let now = self.now().mono_ms;
        let due = [
            self.timers.next_due_ms(),
            self.machine.next_callback_due_ms(),
            self.persister.next_due_ms(),
        ];
        let ms = due
            .into_iter()
            .flatten()
            .map(|t| t.saturating_sub(now))
            .fold(PUSH_LOOP_SLEEP_MS_MAX, u64::min);
        ms.max(1)
    }

    /// One loop turn after a wake-up: drain inputs, fire timers and callbacks,
    /// sweep, commit, publish the gauges.
    pub fn turn(&mut self) {
        let now = self.now();
        for _ in 0..PUSH_EVENTS_PER_TURN_MAX {
            let Ok(r) = self.requests.try_recv() else { break };
            self.on_request(r, now);
            self.perform(now);
        }
        for _ in 0..PUSH_EVENTS_PER_TURN_MAX {
            let Ok(d) = self.deliveries.try_recv() else { break };
            self.machine.on_delivery(d, now, &*self.devices, &mut self.effects);
            self.perform(now);
        }
        for _ in 0..PUSH_EVENTS_PER_TURN_MAX {
            let Ok(p) = self.outbound_rx.try_recv() else { break };
            match &p.outcome {
                PostOutcome::Tls(why) => self.tls_failed(why, now),
                PostOutcome::Refused(_) => bump(&self.counters.outbound_refused),
                _ => {}
            }
            self.machine.on_post_result(p, now, &mut self.effects);
            self.perform(now);
        }
        let mut expired = std::mem::take(&mut self.expired);
        expired.clear();
        self.timers.expired(now.mono_ms, PUSH_EVENTS_PER_TURN_MAX, &mut expired);
        for &(id, generation) in &expired {
            self.machine
                .on_timer(id, generation, now, &*self.devices, &mut self.effects);
            self.perform(now);
        }
        self.expired = expired;
        self.machine.fire_callbacks(now, &mut self.effects);
        self.perform(now);
        if now.mono_ms >= self.last_sweep_ms + PUSH_SWEEP_EVERY_MS {
            self.last_sweep_ms = now.mono_ms;
            self.machine.sweep(now, &*self.devices, &mut self.effects);
            self.perform(now);
        }
        let machine = &self.machine;
        self.persister.turn(now.mono_ms, |id| read(machine, id));
        set(&self.counters.pending, self.machine.pending_len() as u64);
        set(&self.counters.queued, self.machine.queued_len() as u64);
        set(&self.counters.pending_payload_bytes, self.machine.payload_bytes());
        set(&self.counters.pending_payloads, self.machine.payloads_len() as u64);
        set(&self.counters.completed_retention_bytes, self.machine.finished_bytes());
    }

    /// Counts a POST whose TLS handshake failed and says why on stderr, at most once per
    /// `TLS_FAILURE_LOG_EVERY_MS` (a misconfigured receiver fails every retry the same way).
    fn tls_failed(&mut self, why: &str, now: Now) {
        bump(&self.counters.outbound_tls_failures);
        if self
            .last_tls_log_ms
            .is_some_and(|at| now.mono_ms < at + TLS_FAILURE_LOG_EVERY_MS)
        {
            return;
        }
        self.last_tls_log_ms = Some(now.mono_ms);
        eprintln!(
            "pulsegate: outbound POST failed its TLS handshake with {why} ({} TLS failures so far; retried like any failed POST)",
            self.counters.outbound_tls_failures.load(Ordering::Relaxed)
        );
    }

    fn on_request(&mut self, request: Request, now: Now) {
        match request {
            Request::Submit(messages) => self.machine.submit(messages, now, &*self.devices, &mut self.effects),
            Request::Status { sp, id, reply } => {
                let _ = reply.send(self.machine.status(&sp, id));
            }
            Request::Confirm { sp, id, reply } => {
                let _ = reply.send(self.machine.confirm(&sp, id, now, &mut self.effects));
            }
            Request::Cancel { sp, id, reply } => {
                let _ = reply.send(self.machine.cancel(&sp, id, now, &mut self.effects));
            }
            Request::Mechanisms { reply } => {
                let _ = reply.send(self.machine.mechanisms_json(now));
            }
        }
    }

    /// Performs queued effects, and those their outcomes cause, in order.
    fn perform(&mut self, now: Now) {
        let mut batch = std::mem::take(&mut self.batch);
        while !self.effects.is_empty() {
            std::mem::swap(&mut batch, &mut self.effects);
            for effect in batch.drain(..) {
                self.apply(effect, now);
            }
        }
        self.batch = batch;
    }

    fn apply(&mut self, effect: Effect, now: Now) {
        match effect {
            Effect::Deliver { at, push, attempt } => {
                let result = self.devices.deliver(at, push);
                self.machine.on_handoff(attempt, result, now, &mut self.effects);
            }
            Effect::Post(request) => {
                let tag = request.tag;
                if self.outbound.post(request).is_err() {
                    self.machine.on_post_refused(tag, now, &mut self.effects);
                }
            }
            Effect::Schedule { id, generation, due_ms } => self.timers.schedule(id, generation, due_ms),
            Effect::CancelTimer { id } => self.timers.cancel(id),
            Effect::Persist { id } => self.persister.mark(id),
            Effect::PersistSoon { id } => self.persister.mark_soon(id, now.mono_ms),
            Effect::Delete { id } => self.persister.forget(id),
            Effect::PayloadHeld { sp, len_bytes } => self.budget.charge(&sp, len_bytes),
            Effect::PayloadReleased {
                sp,
                len_bytes,
                stored_as,
            } => {
                self.budget.release(&sp, len_bytes);
                if let Some(row) = stored_as {
                    self.persister.forget_payload(row);
                }
            }
        }
    }
}

/// Least time between two stderr lines about outbound TLS failures.
const TLS_FAILURE_LOG_EVERY_MS: u64 = 10_000;

/// A message's bytes for the store (None: gone, or not serializable).
fn read(machine: &Machine, id: u64) -> Option<Vec<u8>> {
    machine.message(id).and_then(|m| serde_json::to_vec(m).ok())
}

#[cfg(test)]
#[path = "executor_tests.rs"]
mod tests;
