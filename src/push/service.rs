//! The push service thread: owns every pending message, starts attempts on the
//! mechanisms the policy chose, tracks each attempt with a timeout on its own
//! timer wheel (an outcome invalidates it by bumping the message's generation,
//! never by searching the wheel), retries with backoff or fails over, holds
//! messages for offline devices (store and forward), collapses, expires,
//! persists every state change, and posts callbacks to SPs.
//!
//! Owns message state after acceptance. Must never block on a device or a
//! relay: attempts go out through shard mailboxes and the outbound pool, and
//! outcomes come back as events.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use slab::Slab;

use super::mechanism::{Kind, Mechanism, MechanismConfig, Stats};
use super::message::{Attempt, Message, State};
use super::{DeliveryEvent, Push, policy};
use crate::outbound::{OutboundPool, PostOutcome, PostRequest, PostResult};
use crate::registry::Registry;
use crate::shard::mailbox::Command;
use crate::shard::peers::Peers;
use crate::shard::wheel::TimerWheel;
use crate::store::{GroupCommitter, StoreOp};

/// Limits of the service.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Messages not yet in a terminal state, in total.
    pub pending_messages_max: u32,
    /// Messages held for one offline device; beyond it the oldest fails.
    pub pending_per_device_max: u32,
    /// Terminal messages kept for `GET` before they are deleted.
    pub completed_retention_max: usize,
    /// Callback POSTs tried per terminal state.
    pub callback_attempts_max: u32,
    pub callback_timeout_ms: u64,
    /// Callbacks waiting (queued or backing off) in total.
    pub callbacks_pending_max: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            pending_messages_max: 1_000_000,
            pending_per_device_max: 64,
            completed_retention_max: 100_000,
            callback_attempts_max: 5,
            callback_timeout_ms: 5_000,
            callbacks_pending_max: 100_000,
        }
    }
}

/// Why an API call on a message failed.
#[derive(Debug, PartialEq, Eq)]
pub enum ServiceError {
    NotFound,
    Conflict(String),
}

pub type Reply<T> = Sender<Result<T, ServiceError>>;

/// Calls from the API threads.
pub enum Request {
    /// Already durable: start tracking.
    Submit(Vec<Message>),
    Status {
        sp: String,
        id: u64,
        reply: Reply<serde_json::Value>,
    },
    Confirm {
        sp: String,
        id: u64,
        reply: Reply<serde_json::Value>,
    },
    Cancel {
        sp: String,
        id: u64,
        reply: Reply<serde_json::Value>,
    },
    Mechanisms {
        reply: Sender<serde_json::Value>,
    },
}

/// Counters read by /metrics.
#[derive(Default)]
pub struct ServiceCounters {
    pub pending: AtomicU64,
    /// Pending messages held for offline devices (evictable).
    pub queued: AtomicU64,
    pub accepted: AtomicU64,
    pub delivered: AtomicU64,
    pub confirmed: AtomicU64,
    pub failed: AtomicU64,
    pub expired: AtomicU64,
    pub cancelled: AtomicU64,
    pub collapsed: AtomicU64,
    pub attempts: AtomicU64,
    pub retries: AtomicU64,
    pub callbacks_ok: AtomicU64,
    pub callbacks_failed: AtomicU64,
    pub store_errors: AtomicU64,
}

/// What a message's timer means when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Only the TTL.
    Expiry,
    /// The attempt of this generation has had its time.
    AttemptTimeout,
    /// Start the next attempt.
    Retry,
}

struct Tracked {
    msg: Message,
    /// Bumped on every attempt start and terminal state; outcomes and timers
    /// carrying an older generation are stale.
    generation: u32,
    plan: Vec<usize>,
    plan_pos: usize,
    timer: u32,
    next: Next,
    next_due_ms: u64,
    expires_mono_ms: u64,
    in_flight: u32,
}

/// An outbound POST in flight.
enum OutboundTag {
    Attempt {
        id: u64,
        generation: u32,
        mechanism: usize,
        started_ms: u64,
    },
    Callback {
        job: u64,
    },
}

struct CallbackJob {
    url: String,
    body: Vec<u8>,
    attempts: u32,
}

pub struct PushService {
    registry: Arc<Registry>,
    peers: Arc<Peers>,
    committer: Arc<GroupCommitter>,
    outbound: OutboundPool,
    outbound_rx: Receiver<PostResult>,
    requests: Receiver<Request>,
    deliveries: Receiver<DeliveryEvent>,
    config: ServiceConfig,
    counters: Arc<ServiceCounters>,
    mechanisms: Vec<Mechanism>,
    pending: HashMap<u64, Tracked>,
    completed: HashMap<u64, Message>,
    completed_order: VecDeque<u64>,
    timers: Slab<u64>,
    wheel: TimerWheel,
    expired: Vec<u32>,
    queued_by_device: HashMap<String, Vec<u64>>,
    queued_ids: BTreeSet<u64>,
    collapse_index: HashMap<(String, String, String), u64>,
    outbound_tags: HashMap<u64, OutboundTag>,
    next_tag: u64,
    callback_jobs: HashMap<u64, CallbackJob>,
    callback_due: BinaryHeap<Reverse<(u64, u64)>>,
    dirty: BTreeSet<u64>,
    deleted: Vec<u64>,
    epoch: Instant,
    last_sweep_ms: u64,
}

/// Events handled per channel per loop turn.
const EVENTS_PER_TURN_MAX: usize = 4_096;
/// How often queued devices are checked against the registry (lost online events).
const SWEEP_EVERY_MS: u64 = 1_000;
/// Devices checked per sweep.
const SWEEP_DEVICES_MAX: usize = 10_000;
/// Slack on top of a webhook's own timeout before the service gives up on it.
const WEBHOOK_TIMEOUT_SLACK_MS: u64 = 1_000;

/// Wall-clock milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub struct ServiceParts {
    pub registry: Arc<Registry>,
    pub peers: Arc<Peers>,
    pub committer: Arc<GroupCommitter>,
    pub requests: Receiver<Request>,
    pub deliveries: Receiver<DeliveryEvent>,
    pub mechanisms: Vec<MechanismConfig>,
    pub config: ServiceConfig,
    pub counters: Arc<ServiceCounters>,
    pub outbound_workers: usize,
}

impl PushService {
    pub fn new(parts: ServiceParts, recovered: Vec<Message>) -> PushService {
        let (outbound, outbound_rx) = OutboundPool::start(parts.outbound_workers, 65_536);
        let capacity = parts.config.pending_messages_max;
        let mut s = PushService {
            registry: parts.registry,
            peers: parts.peers,
            committer: parts.committer,
            outbound,
            outbound_rx,
            requests: parts.requests,
            deliveries: parts.deliveries,
            counters: parts.counters,
            mechanisms: parts
                .mechanisms
                .into_iter()
                .map(|config| Mechanism {
                    config,
                    stats: Stats::default(),
                })
                .collect(),
            pending: HashMap::new(),
            completed: HashMap::new(),
            completed_order: VecDeque::new(),
            timers: Slab::new(),
            wheel: TimerWheel::new(capacity, 0),
            expired: Vec::with_capacity(EVENTS_PER_TURN_MAX),
            queued_by_device: HashMap::new(),
            queued_ids: BTreeSet::new(),
            collapse_index: HashMap::new(),
            outbound_tags: HashMap::new(),
            next_tag: 1,
            callback_jobs: HashMap::new(),
            callback_due: BinaryHeap::new(),
            dirty: BTreeSet::new(),
            deleted: Vec::new(),
            config: parts.config,
            epoch: Instant::now(),
            last_sweep_ms: 0,
        };
        for msg in recovered {
            if msg.state.is_terminal() {
                s.retain_completed(msg);
            } else {
                s.track(msg, true);
            }
        }
        s.persist();
        s
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Runs until `stop` is set.
    pub fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let wait_ms = self.sleep_ms();
            crossbeam_channel::select! {
                recv(self.requests) -> r => if let Ok(r) = r { self.on_request(r) },
                recv(self.deliveries) -> d => if let Ok(d) = d { self.on_delivery(d) },
                recv(self.outbound_rx) -> p => if let Ok(p) = p { self.on_post_result(p) },
                default(Duration::from_millis(wait_ms)) => {},
            }
            self.turn();
        }
        self.persist();
        self.outbound.shutdown();
    }

    /// One loop turn after a wake-up: drain, fire timers, sweep, persist.
    pub fn turn(&mut self) {
        for _ in 0..EVENTS_PER_TURN_MAX {
            match self.requests.try_recv() {
                Ok(r) => self.on_request(r),
                Err(_) => break,
            }
        }
        for _ in 0..EVENTS_PER_TURN_MAX {
            match self.deliveries.try_recv() {
                Ok(d) => self.on_delivery(d),
                Err(_) => break,
            }
        }
        for _ in 0..EVENTS_PER_TURN_MAX {
            match self.outbound_rx.try_recv() {
                Ok(p) => self.on_post_result(p),
                Err(_) => break,
            }
        }
        self.fire_timers();
        self.fire_callbacks();
        let now = self.now_ms();
        if now >= self.last_sweep_ms + SWEEP_EVERY_MS {
            self.last_sweep_ms = now;
            self.sweep_queued();
        }
        self.persist();
        self.counters
            .pending
            .store(self.pending.len() as u64, Ordering::Relaxed);
        self.counters
            .queued
            .store(self.queued_ids.len() as u64, Ordering::Relaxed);
    }

    fn sleep_ms(&self) -> u64 {
        let now = self.now_ms();
        let mut ms = 250;
        if let Some(t) = self.wheel.next_expiry_ms() {
            ms = ms.min(t.saturating_sub(now));
        }
        if let Some(Reverse((due, _))) = self.callback_due.peek() {
            ms = ms.min(due.saturating_sub(now));
        }
        ms.max(1)
    }

    // ----- requests from the API -----

    fn on_request(&mut self, request: Request) {
        match request {
            Request::Submit(messages) => {
                for m in messages {
                    self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                    self.track(m, false);
                }
            }
            Request::Status { sp, id, reply } => {
                let r = self.find(&sp, id).map(|m| m.status_json());
                let _ = reply.send(r);
            }
            Request::Confirm { sp, id, reply } => {
                let _ = reply.send(self.confirm(&sp, id));
            }
            Request::Cancel { sp, id, reply } => {
                let _ = reply.send(self.cancel(&sp, id));
            }
            Request::Mechanisms { reply } => {
                let now = self.now_ms();
                let list: Vec<_> = self.mechanisms.iter().map(|m| m.to_json(now)).collect();
                let _ = reply.send(serde_json::json!({ "mechanisms": list }));
            }
        }
    }

    fn find(&self, sp: &str, id: u64) -> Result<&Message, ServiceError> {
        let m = self
            .pending
            .get(&id)
            .map(|t| &t.msg)
            .or_else(|| self.completed.get(&id));
        match m {
            Some(m) if m.sp == sp => Ok(m),
            _ => Err(ServiceError::NotFound),
        }
    }

    fn confirm(&mut self, sp: &str, id: u64) -> Result<serde_json::Value, ServiceError> {
        self.find(sp, id)?;
        let now_unix = unix_ms();
        if self.pending.contains_key(&id) {
            // Confirmed before our own delivery signal: stop every further attempt.
            self.finish(id, State::Confirmed, "confirmed by the SP");
        } else if let Some(m) = self.completed.get_mut(&id) {
            match m.state {
                State::Delivered => {
                    m.set_state(State::Confirmed, now_unix, "confirmed by the SP");
                    self.counters.confirmed.fetch_add(1, Ordering::Relaxed);
                    self.dirty.insert(id);
                    let m = m.clone();
                    self.queue_callback(&m);
                }
                State::Confirmed => {}
                other => return Err(ServiceError::Conflict(format!("message is {other:?}, not delivered"))),
            }
        }
        self.find(sp, id).map(|m| m.status_json())
    }

    fn cancel(&mut self, sp: &str, id: u64) -> Result<serde_json::Value, ServiceError> {
        let state = self.find(sp, id)?.state;
        if state.is_terminal() {
            return Err(ServiceError::Conflict(format!("message is already {state:?}")));
        }
        self.finish(id, State::Cancelled, "cancelled by the SP");
        self.find(sp, id).map(|m| m.status_json())
    }

    // ----- tracking -----

    /// Starts tracking a durable, non-terminal message.
    fn track(&mut self, mut msg: Message, recovered: bool) {
        let id = msg.id;
        if self.pending.contains_key(&id) {
            return;
        }
        if self.pending.len() as u32 >= self.config.pending_messages_max
            && let Some(&oldest) = self.queued_ids.first()
        {
            // Store and forward is bounded in total: the oldest held message makes room.
            self.finish(oldest, State::Failed, "evicted: gateway-wide queue full");
        }
        if self.pending.len() as u32 >= self.config.pending_messages_max {
            // Nothing held to evict (all in flight): the API refuses before this;
            // a recovery beyond the bound fails the excess.
            msg.set_state(State::Failed, unix_ms(), "pending message limit reached");
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            self.dirty.insert(id);
            self.retain_completed(msg);
            return;
        }
        if let Some(key) = msg.collapse_key.clone() {
            let k = (msg.sp.clone(), msg.device.clone(), key);
            if let Some(old) = self.collapse_index.insert(k, id)
                && old != id
                && self.pending.contains_key(&old)
            {
                if let Some(t) = self.pending.get_mut(&old) {
                    t.msg.collapsed_into = Some(id);
                }
                self.finish(old, State::Collapsed, format!("replaced by {}", super::format_id(id)));
            }
        }
        let now = self.now_ms();
        let now_unix = unix_ms();
        let expires_mono_ms = now + msg.expires_ms.saturating_sub(now_unix);
        let plan = policy::plan(&msg.profile, &self.mechanisms, now);
        let timer = self.timers.insert(id) as u32;
        if recovered {
            msg.close_open_attempts("interrupted_by_restart", now_unix);
        }
        self.pending.insert(
            id,
            Tracked {
                msg,
                generation: 0,
                plan,
                plan_pos: 0,
                timer,
                next: Next::Expiry,
                next_due_ms: expires_mono_ms,
                expires_mono_ms,
                in_flight: 0,
            },
        );
        self.arm(id);
        self.dirty.insert(id);
        self.start_attempt(id);
    }

    /// Arms the message's single timer at min(next action, expiry).
    fn arm(&mut self, id: u64) {
        if let Some(t) = self.pending.get(&id) {
            let due = t.next_due_ms.min(t.expires_mono_ms);
            self.wheel.insert(t.timer, due);
        }
    }

    fn set_next(&mut self, id: u64, next: Next, due_ms: u64) {
        if let Some(t) = self.pending.get_mut(&id) {
            t.next = next;
            t.next_due_ms = due_ms;
        }
        self.arm(id);
    }

    fn start_attempt(&mut self, id: u64) {
        let now = self.now_ms();
        let now_unix = unix_ms();
        let Some(t) = self.pending.get_mut(&id) else { return };
        if now >= t.expires_mono_ms {
            self.finish(id, State::Expired, "ttl ran out");
            return;
        }
        if t.plan.is_empty() {
            self.finish(id, State::Failed, "no mechanism satisfies the profile");
            return;
        }
        let attempts_done = t.msg.attempts.len() as u32;
        if attempts_done >= t.msg.profile.retry.max_attempts {
            let last = t
                .msg
                .attempts
                .last()
                .and_then(|a| a.outcome.clone())
                .unwrap_or_default();
            self.finish(
                id,
                State::Failed,
                format!("{attempts_done} attempts failed, last: {last}"),
            );
            return;
        }
        t.generation = t.generation.wrapping_add(1);
        t.in_flight = 0;
        let parallel = policy::parallelism(&t.msg.profile).min(t.plan.len());
        let choices: Vec<usize> = (0..t.plan.len())
            .map(|k| t.plan[(t.plan_pos + k) % t.plan.len()])
            .collect();
        let mut started = 0;
        let mut offline = false;
        for mechanism in choices {
            // A QoS 0 hand-off finishes the message inside `start_on`.
            if started >= parallel || !self.pending.contains_key(&id) {
                break;
            }
            match self.start_on(id, mechanism, now, now_unix) {
                Started::Yes => started += 1,
                Started::DeviceOffline => offline = true,
                Started::Failed(reason) => {
                    self.mechanisms[mechanism].stats.record_failure(now);
                    if let Some(t) = self.pending.get_mut(&id) {
                        t.msg.close_open_attempts(reason, now_unix);
                    }
                }
            }
        }
        if started > 0 {
            return;
        }
        if offline {
            self.queue_for_device(id);
        } else {
            self.schedule_retry(id, "could not start any mechanism");
        }
    }

    fn start_on(&mut self, id: u64, mechanism: usize, now: u64, now_unix: u64) -> Started {
        let config = self.mechanisms[mechanism].config.clone();
        let Some(t) = self.pending.get_mut(&id) else {
            return Started::Failed("gone");
        };
        let generation = t.generation;
        let n = t.msg.attempts.len() as u32 + 1;
        match &config.kind {
            Kind::Persistent => {
                let Some(owner) = self.registry.lookup(&t.msg.device) else {
                    return Started::DeviceOffline;
                };
                let push = Push {
                    id,
                    qos: t.msg.qos,
                    payload: Bytes::from(t.msg.payload.clone()),
                    tracked: true,
                    control_topic: None,
                    sent_as: None,
                };
                let qos = t.msg.qos;
                t.msg.attempts.push(Attempt {
                    n,
                    mechanism: config.name.clone(),
                    started_ms: now_unix,
                    outcome: None,
                    latency_ms: None,
                });
                let command = Command::Push {
                    key: owner.key,
                    generation: owner.generation,
                    push,
                };
                if self.peers.post(owner.shard, command).is_err() {
                    return Started::Failed("shard_mailbox_full");
                }
                self.counters.attempts.fetch_add(1, Ordering::Relaxed);
                self.mechanisms[mechanism].stats.attempts += 1;
                if qos == 0 {
                    // QoS 0 has no acknowledgement: handed to the device's connection is all we learn.
                    self.mechanisms[mechanism].stats.record_success(0);
                    if let Some(t) = self.pending.get_mut(&id)
                        && let Some(a) = t.msg.open_attempt(&config.name)
                    {
                        a.outcome = Some("sent_qos0".into());
                        a.latency_ms = Some(0);
                    }
                    self.finish(id, State::Delivered, "qos 0: handed to the device connection");
                    return Started::Yes;
                }
            }
            Kind::Webhook { url } => {
                let body = serde_json::json!({
                    "id": super::format_id(id),
                    "device": t.msg.device,
                    "payload": String::from_utf8_lossy(&t.msg.payload),
                    "qos": t.msg.qos,
                });
                t.msg.attempts.push(Attempt {
                    n,
                    mechanism: config.name.clone(),
                    started_ms: now_unix,
                    outcome: None,
                    latency_ms: None,
                });
                let tag = self.next_tag;
                self.next_tag += 1;
                let request = PostRequest {
                    tag,
                    url: url.clone(),
                    body: body.to_string().into_bytes(),
                    content_type: "application/json",
                    headers: vec![("X-Pulsegate-Message-Id".into(), super::format_id(id))],
                    timeout_ms: config.timeout_ms,
                };
                if self.outbound.post(request).is_err() {
                    return Started::Failed("relay_queue_full");
                }
                self.outbound_tags.insert(
                    tag,
                    OutboundTag::Attempt {
                        id,
                        generation,
                        mechanism,
                        started_ms: now,
                    },
                );
                self.counters.attempts.fetch_add(1, Ordering::Relaxed);
                self.mechanisms[mechanism].stats.attempts += 1;
            }
        }
        let timeout_ms = match config.kind {
            Kind::Persistent => config.timeout_ms,
            Kind::Webhook { .. } => config.timeout_ms + WEBHOOK_TIMEOUT_SLACK_MS,
        };
        if let Some(t) = self.pending.get_mut(&id) {
            t.in_flight += 1;
            let detail = format!("attempt {n} on {}", config.name);
            t.msg.set_state(State::Sent, now_unix, detail);
        }
        self.dirty.insert(id);
        self.set_next(id, Next::AttemptTimeout, now + timeout_ms);
        Started::Yes
    }

    /// Store and forward: wait for the device (or the TTL).
    fn queue_for_device(&mut self, id: u64) {
        let Some(t) = self.pending.get_mut(&id) else { return };
        if t.msg.state != State::Queued {
            t.msg.set_state(State::Queued, unix_ms(), "device offline");
        }
        let device = t.msg.device.clone();
        let expires = t.expires_mono_ms;
        self.dirty.insert(id);
        let list = self.queued_by_device.entry(device).or_default();
        if !list.contains(&id) {
            list.push(id);
            self.queued_ids.insert(id);
        }
        let over = list.len().saturating_sub(self.config.pending_per_device_max as usize);
        let evicted: Vec<u64> = list.iter().copied().take(over).collect();
        self.set_next(id, Next::Expiry, expires);
        for old in evicted {
            self.finish(old, State::Failed, "evicted: device queue full");
        }
    }

    fn unqueue(&mut self, id: u64, device: &str) {
        if self.queued_ids.remove(&id)
            && let Some(list) = self.queued_by_device.get_mut(device)
        {
            list.retain(|&x| x != id);
            if list.is_empty() {
                self.queued_by_device.remove(device);
            }
        }
    }

    fn schedule_retry(&mut self, id: u64, why: &str) {
        let now = self.now_ms();
        let Some(t) = self.pending.get_mut(&id) else { return };
        let attempts = t.msg.attempts.len() as u32;
        if attempts >= t.msg.profile.retry.max_attempts {
            let detail = format!("{attempts} attempts failed, last: {why}");
            self.finish(id, State::Failed, detail);
            return;
        }
        if t.msg.profile.retry.on_failure == super::profile::OnFailure::NextMechanism && !t.plan.is_empty() {
            t.plan_pos = (t.plan_pos + 1) % t.plan.len();
        }
        let backoff = t.msg.profile.retry.backoff_ms(attempts + 1);
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        self.set_next(id, Next::Retry, now + backoff);
    }

    /// An attempt failed (`reason`); `generation` says which round it was in.
    fn attempt_failed(&mut self, id: u64, generation: u32, mechanism: usize, reason: &str) {
        let now = self.now_ms();
        let now_unix = unix_ms();
        self.mechanisms[mechanism].stats.record_failure(now);
        let name = self.mechanisms[mechanism].config.name.clone();
        let Some(t) = self.pending.get_mut(&id) else { return };
        if let Some(a) = t.msg.open_attempt(&name) {
            a.outcome = Some(reason.to_string());
            a.latency_ms = Some(now_unix.saturating_sub(a.started_ms));
        }
        self.dirty.insert(id);
        if generation != t.generation {
            return;
        }
        t.in_flight = t.in_flight.saturating_sub(1);
        if t.in_flight > 0 {
            return; // a parallel attempt (critical) may still succeed
        }
        self.schedule_retry(id, reason);
    }

    fn attempt_succeeded(&mut self, id: u64, mechanism: usize, latency_ms: u64, outcome: &str) {
        self.mechanisms[mechanism].stats.record_success(latency_ms);
        let name = self.mechanisms[mechanism].config.name.clone();
        let Some(t) = self.pending.get_mut(&id) else { return };
        if let Some(a) = t.msg.open_attempt(&name) {
            a.outcome = Some(outcome.to_string());
            a.latency_ms = Some(latency_ms);
        }
        self.finish(id, State::Delivered, format!("delivered by {name}"));
    }

    /// Moves a pending message to a terminal state: stops its attempts (the
    /// generation bump makes late outcomes stale), frees its timer, calls back.
    fn finish(&mut self, id: u64, state: State, detail: impl Into<String>) {
        let Some(mut t) = self.pending.remove(&id) else { return };
        let now_unix = unix_ms();
        t.msg.close_open_attempts("cancelled", now_unix);
        t.msg.set_state(state, now_unix, detail);
        self.wheel.cancel(t.timer);
        self.timers.try_remove(t.timer as usize);
        let device = t.msg.device.clone();
        self.unqueue(id, &device);
        if let Some(key) = &t.msg.collapse_key {
            let k = (t.msg.sp.clone(), t.msg.device.clone(), key.clone());
            if self.collapse_index.get(&k) == Some(&id) {
                self.collapse_index.remove(&k);
            }
        }
        let counter = match state {
            State::Delivered => &self.counters.delivered,
            State::Confirmed => &self.counters.confirmed,
            State::Failed => &self.counters.failed,
            State::Expired => &self.counters.expired,
            State::Cancelled => &self.counters.cancelled,
            State::Collapsed => &self.counters.collapsed,
            State::Accepted | State::Queued | State::Sent => &self.counters.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.dirty.insert(id);
        self.queue_callback(&t.msg);
        self.retain_completed(t.msg);
    }

    fn retain_completed(&mut self, msg: Message) {
        let id = msg.id;
        if self.completed.insert(id, msg).is_none() {
            self.completed_order.push_back(id);
        }
        while self.completed_order.len() > self.config.completed_retention_max {
            if let Some(old) = self.completed_order.pop_front() {
                self.completed.remove(&old);
                self.dirty.remove(&old);
                self.deleted.push(old);
            }
        }
    }

    // ----- events -----

    fn persistent_index(&self) -> Option<usize> {
        self.mechanisms.iter().position(|m| m.config.kind == Kind::Persistent)
    }

    fn on_delivery(&mut self, event: DeliveryEvent) {
        match event {
            DeliveryEvent::Acked { push_id } => {
                let Some(p) = self.persistent_index() else { return };
                let Some(t) = self.pending.get_mut(&push_id) else {
                    return;
                };
                let started = t.msg.open_attempt("persistent").map(|a| a.started_ms).unwrap_or(0);
                let latency = unix_ms().saturating_sub(started);
                self.attempt_succeeded(push_id, p, latency, "puback");
            }
            DeliveryEvent::NotDelivered { push_id, reason } if reason == super::HELD_IN_SESSION => {
                // The device's MQTT session holds it; its PUBACK (after the device
                // resumes the session) decides. Until then only the TTL runs.
                let Some(t) = self.pending.get_mut(&push_id) else {
                    return;
                };
                let expires = t.expires_mono_ms;
                t.msg
                    .set_state(State::Sent, unix_ms(), "held in the device's MQTT session");
                self.dirty.insert(push_id);
                self.set_next(push_id, Next::Expiry, expires);
            }
            DeliveryEvent::NotDelivered { push_id, reason } => {
                let Some(p) = self.persistent_index() else { return };
                let Some(t) = self.pending.get(&push_id) else { return };
                let generation = t.generation;
                self.attempt_failed(push_id, generation, p, reason);
            }
            DeliveryEvent::DeviceOnline { client_id } => self.device_online(&client_id),
        }
    }

    fn device_online(&mut self, device: &str) {
        let Some(mut ids) = self.queued_by_device.remove(device) else {
            return;
        };
        for id in &ids {
            self.queued_ids.remove(id);
        }
        // Higher priority first, then oldest first.
        ids.sort_by_key(|id| {
            (
                Reverse(self.pending.get(id).map(|t| t.msg.profile.priority).unwrap_or(0)),
                *id,
            )
        });
        for id in ids {
            self.start_attempt(id);
        }
    }

    /// Catches devices whose online event was lost (full channel).
    fn sweep_queued(&mut self) {
        let online: Vec<String> = self
            .queued_by_device
            .keys()
            .take(SWEEP_DEVICES_MAX)
            .filter(|d| self.registry.lookup(d).is_some())
            .cloned()
            .collect();
        for d in online {
            self.device_online(&d);
        }
    }

    fn on_post_result(&mut self, result: PostResult) {
        let Some(tag) = self.outbound_tags.remove(&result.tag) else {
            return;
        };
        match tag {
            OutboundTag::Attempt {
                id,
                generation,
                mechanism,
                started_ms,
            } => {
                let latency = self.now_ms().saturating_sub(started_ms);
                if result.outcome.is_success() {
                    self.attempt_succeeded(id, mechanism, latency, "http_2xx");
                } else {
                    let reason = match &result.outcome {
                        PostOutcome::Status(code) => format!("http_{code}"),
                        PostOutcome::Timeout => "timeout".into(),
                        PostOutcome::ConnectFailed(_) => "connect_failed".into(),
                        PostOutcome::BadUrl(_) => "bad_url".into(),
                        PostOutcome::Other(_) => "relay_error".into(),
                    };
                    self.attempt_failed(id, generation, mechanism, &reason);
                }
            }
            OutboundTag::Callback { job } => {
                if result.outcome.is_success() {
                    self.callback_jobs.remove(&job);
                    self.counters.callbacks_ok.fetch_add(1, Ordering::Relaxed);
                } else if let Some(j) = self.callback_jobs.get(&job) {
                    if j.attempts >= self.config.callback_attempts_max {
                        self.callback_jobs.remove(&job);
                        self.counters.callbacks_failed.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let backoff = 500u64 << j.attempts.min(10);
                        self.callback_due.push(Reverse((self.now_ms() + backoff, job)));
                    }
                }
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = self.now_ms();
        let mut expired = std::mem::take(&mut self.expired);
        expired.clear();
        self.wheel.advance(now, EVENTS_PER_TURN_MAX, &mut expired);
        for &timer in &expired {
            let Some(&id) = self.timers.get(timer as usize) else {
                continue;
            };
            let Some(t) = self.pending.get(&id) else { continue };
            if now >= t.expires_mono_ms {
                self.finish(id, State::Expired, "ttl ran out");
                continue;
            }
            match t.next {
                Next::Expiry => self.arm(id),
                Next::AttemptTimeout => {
                    let generation = t.generation;
                    let open: Vec<usize> = t
                        .msg
                        .attempts
                        .iter()
                        .filter(|a| a.outcome.is_none())
                        .filter_map(|a| self.mechanisms.iter().position(|m| m.config.name == a.mechanism))
                        .collect();
                    if open.is_empty() {
                        self.schedule_retry(id, "timeout");
                        continue;
                    }
                    if let Some(t) = self.pending.get_mut(&id) {
                        t.in_flight = open.len() as u32;
                    }
                    for m in open {
                        self.attempt_failed(id, generation, m, "timeout");
                    }
                }
                Next::Retry => self.start_attempt(id),
            }
        }
        self.expired = expired;
    }

    // ----- callbacks -----

    fn queue_callback(&mut self, msg: &Message) {
        let Some(url) = msg.callback_url.clone() else { return };
        if self.callback_jobs.len() >= self.config.callbacks_pending_max {
            self.counters.callbacks_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let job = self.next_tag;
        self.next_tag += 1;
        self.callback_jobs.insert(
            job,
            CallbackJob {
                url,
                body: msg.status_json().to_string().into_bytes(),
                attempts: 0,
            },
        );
        self.callback_due.push(Reverse((0, job)));
    }

    fn fire_callbacks(&mut self) {
        let now = self.now_ms();
        while let Some(Reverse((due, job))) = self.callback_due.peek().copied() {
            if due > now {
                break;
            }
            self.callback_due.pop();
            let Some(j) = self.callback_jobs.get_mut(&job) else {
                continue;
            };
            j.attempts += 1;
            let tag = self.next_tag;
            self.next_tag += 1;
            let request = PostRequest {
                tag,
                url: j.url.clone(),
                body: j.body.clone(),
                content_type: "application/json",
                headers: vec![],
                timeout_ms: self.config.callback_timeout_ms,
            };
            if self.outbound.post(request).is_ok() {
                self.outbound_tags.insert(tag, OutboundTag::Callback { job });
            } else {
                self.callback_due.push(Reverse((now + 1_000, job)));
                break;
            }
        }
    }

    // ----- durability -----

    /// Writes every changed message (one group commit per turn).
    fn persist(&mut self) {
        if self.dirty.is_empty() && self.deleted.is_empty() {
            return;
        }
        let mut ops = Vec::with_capacity(self.dirty.len() + self.deleted.len());
        for id in std::mem::take(&mut self.dirty) {
            let m = self
                .pending
                .get(&id)
                .map(|t| &t.msg)
                .or_else(|| self.completed.get(&id));
            if let Some(m) = m
                && let Ok(value) = serde_json::to_vec(m)
            {
                ops.push(StoreOp::Put { id, value });
            }
        }
        for id in std::mem::take(&mut self.deleted) {
            ops.push(StoreOp::Delete { id });
        }
        if self.committer.commit(ops).is_err() {
            self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

enum Started {
    Yes,
    DeviceOffline,
    Failed(&'static str),
}
