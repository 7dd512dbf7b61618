//! The machine driven directly: a virtual clock, a map for presence, the
//! service's own `Timers` for the schedule, and the effects read back. No
//! thread, no socket, no store.

use std::collections::HashMap;

use super::*;
use crate::delivery::Location;
use crate::outbound::{PostOutcome, PostRequest};
use crate::push::message::{Attempt, Event};
use crate::push::profile::{Goal, Profile};
use crate::push::timers::Timers;

const UNIX_BASE_MS: u64 = 1_700_000_000_000;
const ACK_TIMEOUT_MS: u64 = 10_000;

#[derive(Default)]
struct Map(HashMap<String, Location>);

impl Presence for Map {
    fn locate(&self, client_id: &str) -> Option<Location> {
        self.0.get(client_id).copied()
    }
}

fn at(shard: u16) -> Location {
    Location {
        shard,
        key: 7,
        generation: 1,
        persistent: false,
    }
}

/// A machine with what an executor would keep around it, minus the I/O.
struct Sim {
    m: Machine,
    online: Map,
    timers: Timers,
    now_ms: u64,
    counters: Arc<ServiceCounters>,
    /// Every effect so far, in order.
    log: Vec<Effect>,
}

impl Sim {
    fn new(mechanisms: Vec<MechanismConfig>, config: ServiceConfig) -> Sim {
        let counters = Arc::new(ServiceCounters::default());
        Sim {
            m: Machine::new(config, mechanisms, counters.clone()),
            online: Map::default(),
            timers: Timers::new(),
            now_ms: 0,
            counters,
            log: Vec::new(),
        }
    }

    fn persistent_only() -> Sim {
        Sim::new(
            vec![crate::push::mechanism::persistent(ACK_TIMEOUT_MS)],
            ServiceConfig::default(),
        )
    }

    fn now(&self) -> Now {
        Now {
            mono_ms: self.now_ms,
            unix_ms: UNIX_BASE_MS + self.now_ms,
        }
    }

    /// Takes the effects of one transition: timers go on the heap, the rest
    /// are returned for the test to look at.
    fn take(&mut self, fx: Vec<Effect>) -> Vec<Effect> {
        for e in &fx {
            match e {
                Effect::Schedule { id, generation, due_ms } => self.timers.schedule(*id, *generation, *due_ms),
                Effect::CancelTimer { id } => self.timers.cancel(*id),
                _ => {}
            }
        }
        self.log.extend(fx.iter().cloned());
        fx
    }

    fn submit(&mut self, msg: Message) -> Vec<Effect> {
        let mut fx = Vec::new();
        let now = self.now();
        self.m.submit(vec![msg], now, &self.online, &mut fx);
        self.take(fx)
    }

    fn event(&mut self, event: DeliveryEvent) -> Vec<Effect> {
        let mut fx = Vec::new();
        let now = self.now();
        self.m.on_delivery(event, now, &self.online, &mut fx);
        self.take(fx)
    }

    fn handoff(&mut self, attempt: AttemptRef, result: Result<(), DeliverError>) -> Vec<Effect> {
        let mut fx = Vec::new();
        let now = self.now();
        self.m.on_handoff(attempt, result, now, &mut fx);
        self.take(fx)
    }

    /// Moves the clock to `to_ms`, firing every timer due on the way, in order.
    fn advance(&mut self, to_ms: u64) -> Vec<Effect> {
        let mut all = Vec::new();
        while let Some(due) = self.timers.next_due_ms().filter(|&d| d <= to_ms) {
            self.now_ms = self.now_ms.max(due);
            let mut expired = Vec::new();
            self.timers.expired(self.now_ms, usize::MAX, &mut expired);
            for (id, generation) in expired {
                let mut fx = Vec::new();
                let now = self.now();
                self.m.on_timer(id, generation, now, &self.online, &mut fx);
                all.extend(self.take(fx));
            }
        }
        self.now_ms = to_ms;
        all
    }

    fn state(&self, id: u64) -> State {
        self.m.message(id).expect("message known").state
    }
}

fn message(id: u64, device: &str, qos: u8, ttl_ms: u64) -> Message {
    Message {
        id,
        sp: "acme".into(),
        device: device.into(),
        payload: crate::push::payload::Payload::inline(&b"hello"[..]),
        qos,
        created_ms: UNIX_BASE_MS,
        expires_ms: UNIX_BASE_MS + ttl_ms,
        collapse_key: None,
        callback_url: None,
        profile: Profile::default(),
        state: State::Accepted,
        collapsed_into: None,
        history: vec![Event {
            at_ms: UNIX_BASE_MS,
            state: State::Accepted,
            detail: String::new(),
        }],
        attempts: vec![],
    }
}

fn delivers(fx: &[Effect]) -> Vec<(Location, u64, AttemptRef)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Deliver { at, push, attempt } => Some((*at, push.id, *attempt)),
            _ => None,
        })
        .collect()
}

fn posts(fx: &[Effect]) -> Vec<PostRequest> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Post(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn persisted(fx: &[Effect], id: u64) -> bool {
    fx.iter().any(|e| *e == Effect::Persist { id })
}

#[test]
fn an_online_device_gets_the_push_and_its_puback_delivers_it() {
    let mut s = Sim::persistent_only();
    s.online.0.insert("d1".into(), at(3));
    let fx = s.submit(message(1, "d1", 1, 60_000));
    let d = delivers(&fx);
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].0, d[0].1), (at(3), 1));
    assert!(
        !persisted(&fx, 1) && fx.contains(&Effect::PersistSoon { id: 1 }),
        "the attempt's start is written lazily (a crash restarts it): {fx:?}"
    );
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Schedule { id: 1, due_ms, .. } if *due_ms == ACK_TIMEOUT_MS)),
        "the attempt's timeout is armed: {fx:?}"
    );
    assert_eq!(s.state(1), State::Sent);
    assert!(s.handoff(d[0].2, Ok(())).is_empty(), "QoS 1 waits for its PUBACK");
    s.now_ms = 40;
    let fx = s.event(DeliveryEvent::Acked { push_id: 1 });
    assert_eq!(s.state(1), State::Delivered);
    assert!(fx.contains(&Effect::CancelTimer { id: 1 }) && persisted(&fx, 1));
    let m = s.m.message(1).expect("retained");
    assert_eq!(m.attempts[0].outcome.as_deref(), Some("puback"));
    assert_eq!(m.attempts[0].latency_ms, Some(40));
    assert_eq!(s.counters.delivered.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(s.m.pending_len(), 0);
}

#[test]
fn qos0_is_delivered_when_the_shard_takes_it_and_a_refusal_is_retried() {
    let mut s = Sim::persistent_only();
    s.online.0.insert("d1".into(), at(0));
    let fx = s.submit(message(1, "d1", 0, 60_000));
    let d = delivers(&fx);
    // The shard's mailbox is full: the attempt fails and a retry is due after the backoff.
    let fx = s.handoff(d[0].2, Err(DeliverError::Full));
    assert_eq!(s.state(1), State::Sent);
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Schedule {
            id: 1,
            due_ms: 1_000,
            ..
        }
    )));
    assert_eq!(
        s.m.message(1).expect("known").attempts[0].outcome.as_deref(),
        Some("shard_mailbox_full")
    );
    let fx = s.advance(1_000);
    let d2 = delivers(&fx);
    assert_eq!(d2.len(), 1, "retried at the backoff: {fx:?}");
    assert_ne!(d2[0].2.generation, d[0].2.generation);
    s.handoff(d2[0].2, Ok(()));
    assert_eq!(s.state(1), State::Delivered);
    assert_eq!(
        s.m.message(1).expect("known").attempts[1].outcome.as_deref(),
        Some("sent_qos0")
    );
}

#[test]
fn an_unanswered_attempt_times_out_retries_with_backoff_and_fails_after_the_last() {
    let mut s = Sim::persistent_only();
    s.online.0.insert("d1".into(), at(0));
    let mut msg = message(1, "d1", 1, 3_600_000);
    msg.profile.retry.max_attempts = 3;
    s.submit(msg);
    // Attempt 1 times out at 10 s; retry 1 s later (attempt 2), times out at 21 s;
    // retry 2 s later (attempt 3) at 23 s, times out at 33 s: failed.
    let fx = s.advance(11_000);
    assert_eq!(delivers(&fx).len(), 1, "second attempt at 11 s");
    let fx = s.advance(22_999);
    assert!(delivers(&fx).is_empty(), "backoff doubled: nothing before 23 s");
    let fx = s.advance(23_000);
    assert_eq!(delivers(&fx).len(), 1, "third attempt at 23 s");
    s.advance(33_000);
    assert_eq!(s.state(1), State::Failed);
    let m = s.m.message(1).expect("retained");
    assert_eq!(m.attempts.len(), 3);
    assert!(m.attempts.iter().all(|a| a.outcome.as_deref() == Some("timeout")));
    assert_eq!(
        m.history.last().map(|e| e.detail.as_str()),
        Some("3 attempts failed, last: timeout")
    );
    assert!(s.timers.is_empty(), "nothing left armed");
}

#[test]
fn a_late_outcome_of_an_old_attempt_does_not_disturb_the_current_one() {
    let mut s = Sim::persistent_only();
    s.online.0.insert("d1".into(), at(0));
    let first = delivers(&s.submit(message(1, "d1", 1, 3_600_000)))[0].2;
    let second = delivers(&s.advance(11_000))[0].2;
    // The first attempt's hand-off failure arrives late: recorded, no new retry.
    let fx = s.handoff(first, Err(DeliverError::Closed));
    assert!(!fx.iter().any(|e| matches!(e, Effect::Schedule { .. })), "{fx:?}");
    assert_eq!(s.state(1), State::Sent);
    s.handoff(second, Ok(()));
    s.event(DeliveryEvent::Acked { push_id: 1 });
    assert_eq!(s.state(1), State::Delivered);
}

#[test]
fn an_offline_device_is_held_until_it_comes_online_or_the_ttl_runs_out() {
    let mut s = Sim::persistent_only();
    let fx = s.submit(message(1, "d1", 1, 60_000));
    assert!(delivers(&fx).is_empty());
    assert_eq!(s.state(1), State::Queued);
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Schedule {
            id: 1,
            due_ms: 60_000,
            ..
        }
    )));
    assert_eq!(s.m.queued_len(), 1);
    s.submit(message(2, "d2", 1, 5_000));
    s.now_ms = 1_000;
    s.online.0.insert("d1".into(), at(1));
    let fx = s.event(DeliveryEvent::DeviceOnline { client_id: "d1".into() });
    assert_eq!(delivers(&fx).len(), 1);
    assert_eq!(s.m.queued_len(), 1, "d2 still held");
    s.advance(5_000);
    assert_eq!(s.state(2), State::Expired);
    assert_eq!(s.m.queued_len(), 0);
}

#[test]
fn the_sweep_finds_a_device_whose_online_event_was_lost() {
    let mut s = Sim::persistent_only();
    s.submit(message(1, "d1", 1, 60_000));
    s.online.0.insert("d1".into(), at(2));
    let mut fx = Vec::new();
    let now = s.now();
    s.m.sweep(now, &s.online, &mut fx);
    assert_eq!(delivers(&fx).len(), 1);
}

#[test]
fn a_full_device_queue_fails_its_oldest_and_priority_goes_first() {
    let config = ServiceConfig {
        pending_per_device_max: 2,
        ..ServiceConfig::default()
    };
    let mut s = Sim::new(vec![crate::push::mechanism::persistent(ACK_TIMEOUT_MS)], config);
    for id in 1..=3 {
        let mut m = message(id, "d1", 1, 60_000);
        m.profile.priority = id as u8;
        s.submit(m);
    }
    assert_eq!(s.state(1), State::Failed);
    assert_eq!(s.m.queued_len(), 2);
    s.online.0.insert("d1".into(), at(0));
    let fx = s.event(DeliveryEvent::DeviceOnline { client_id: "d1".into() });
    let order: Vec<u64> = delivers(&fx).iter().map(|d| d.1).collect();
    assert_eq!(order, vec![3, 2], "higher priority first");
}

#[test]
fn a_newer_message_with_the_same_collapse_key_replaces_the_older() {
    let mut s = Sim::persistent_only();
    let mut a = message(1, "d1", 1, 60_000);
    a.collapse_key = Some("score".into());
    let mut b = message(2, "d1", 1, 60_000);
    b.collapse_key = Some("score".into());
    s.submit(a);
    s.submit(b);
    assert_eq!(s.state(1), State::Collapsed);
    assert_eq!(s.m.message(1).expect("kept").collapsed_into, Some(2));
    assert_eq!(s.state(2), State::Queued);
}

#[test]
fn requests_answer_with_typed_errors() {
    let mut s = Sim::persistent_only();
    s.online.0.insert("d1".into(), at(0));
    let mut fx = Vec::new();
    s.submit(message(1, "d1", 1, 60_000));
    assert_eq!(s.m.status("other-sp", 1), Err(ServiceError::NotFound));
    assert_eq!(s.m.status("acme", 99), Err(ServiceError::NotFound));
    s.event(DeliveryEvent::Acked { push_id: 1 });
    let now = s.now();
    assert_eq!(
        s.m.cancel("acme", 1, now, &mut fx),
        Err(ServiceError::Conflict {
            state: State::Delivered,
            op: Op::Cancel
        })
    );
    let v =
        s.m.confirm("acme", 1, now, &mut fx)
            .expect("delivered can be confirmed");
    assert_eq!(v["state"], "confirmed");
    assert!(fx.contains(&Effect::Persist { id: 1 }));
    s.submit(message(2, "d2", 1, 60_000));
    s.m.cancel("acme", 2, now, &mut fx).expect("pending can be cancelled");
    let e =
        s.m.confirm("acme", 2, now, &mut fx)
            .expect_err("cancelled cannot be confirmed");
    assert_eq!(
        e,
        ServiceError::Conflict {
            state: State::Cancelled,
            op: Op::Confirm
        }
    );
    assert_eq!(e.to_string(), "message is Cancelled, not delivered");
}

#[test]
fn a_finished_message_calls_back_with_backoff() {
    let mut s = Sim::persistent_only();
    let mut m = message(1, "d1", 1, 60_000);
    m.callback_url = Some("http://sp.example/cb".into());
    s.submit(m);
    let mut fx = Vec::new();
    let now = s.now();
    s.m.cancel("acme", 1, now, &mut fx).expect("cancel");
    s.m.fire_callbacks(now, &mut fx);
    let p = posts(&fx);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].url, "http://sp.example/cb");
    let body: serde_json::Value = serde_json::from_slice(&p[0].body).expect("json");
    assert_eq!(body["state"], "cancelled");
    let failed = PostResult {
        tag: p[0].tag,
        outcome: PostOutcome::Status(503),
        latency_us: 0,
    };
    s.m.on_post_result(failed, now, &mut fx);
    assert_eq!(s.m.next_callback_due_ms(), Some(now.mono_ms + 1_000));
    let mut fx = Vec::new();
    let later = Now {
        mono_ms: 1_000,
        unix_ms: UNIX_BASE_MS + 1_000,
    };
    s.m.fire_callbacks(later, &mut fx);
    let p = posts(&fx);
    assert_eq!(p.len(), 1, "second try");
    let ok = PostResult {
        tag: p[0].tag,
        outcome: PostOutcome::Status(200),
        latency_us: 0,
    };
    s.m.on_post_result(ok, later, &mut fx);
    assert_eq!(s.counters.callbacks_ok.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(s.m.next_callback_due_ms(), None);
}

#[test]
fn a_webhook_takes_over_when_the_device_is_offline_and_its_refusal_is_an_attempt() {
    let webhook = MechanismConfig {
        name: "sms".into(),
        kind: Kind::Webhook {
            url: "http://relay.example/sms".into(),
        },
        cost: 1.0,
        timeout_ms: 2_000,
        expected_latency_ms: 100,
    };
    let mechanisms = vec![crate::push::mechanism::persistent(ACK_TIMEOUT_MS), webhook];
    let mut s = Sim::new(mechanisms, ServiceConfig::default());
    let mut m = message(1, "d1", 1, 60_000);
    m.profile.goal = Goal::Critical; // both in parallel
    let fx = s.submit(m);
    let p = posts(&fx);
    assert_eq!(p.len(), 1, "the device is offline, the relay is tried: {fx:?}");
    assert_eq!(p[0].headers[0].1, format_id(1));
    // The relay's queue is full: a failed attempt, retried after the backoff.
    let mut fx = Vec::new();
    let now = s.now();
    s.m.on_post_refused(p[0].tag, now, &mut fx);
    let fx = s.take(fx);
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Schedule {
            id: 1,
            due_ms: 1_000,
            ..
        }
    )));
    let fx = s.advance(1_000);
    let p = posts(&fx);
    assert_eq!(p.len(), 1);
    let mut fx = Vec::new();
    let now = s.now();
    let ok = PostResult {
        tag: p[0].tag,
        outcome: PostOutcome::Status(202),
        latency_us: 0,
    };
    s.m.on_post_result(ok, now, &mut fx);
    assert_eq!(s.state(1), State::Delivered);
    let m = s.m.message(1).expect("kept");
    assert_eq!(m.attempts[0].outcome.as_deref(), Some("relay_queue_full"));
    assert_eq!(m.attempts[1].outcome.as_deref(), Some("http_2xx"));
}

#[test]
fn recovery_closes_interrupted_attempts_and_retention_deletes_the_oldest() {
    let config = ServiceConfig {
        completed_retention_max: 1,
        ..ServiceConfig::default()
    };
    let mut s = Sim::new(vec![crate::push::mechanism::persistent(ACK_TIMEOUT_MS)], config);
    let mut sent = message(1, "d1", 1, 60_000);
    sent.state = State::Sent;
    sent.attempts.push(Attempt {
        n: 1,
        mechanism: "persistent".into(),
        started_ms: UNIX_BASE_MS,
        outcome: None,
        latency_ms: None,
    });
    let mut done = message(2, "d1", 1, 60_000);
    done.state = State::Delivered;
    let mut fx = Vec::new();
    let now = s.now();
    s.m.recover(vec![sent, done], now, &s.online, &mut fx);
    let m = s.m.message(1).expect("pending");
    assert_eq!(m.attempts[0].outcome.as_deref(), Some("interrupted_by_restart"));
    assert_eq!(m.state, State::Queued);
    s.m.cancel("acme", 1, now, &mut fx).expect("cancel");
    assert!(
        fx.contains(&Effect::Delete { id: 2 }),
        "retention 1: the older finished one goes"
    );
    assert!(s.m.message(2).is_none());
}

fn released(fx: &[Effect]) -> Vec<Option<u64>> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::PayloadReleased { stored_as, .. } => Some(*stored_as),
            _ => None,
        })
        .collect()
}

#[test]
fn a_shared_payload_is_released_once_with_its_last_pending_message() {
    let mut s = Sim::persistent_only();
    let shared = crate::push::payload::Payload::shared(100, bytes::Bytes::from_static(b"four"));
    let batch: Vec<Message> = (1..=3)
        .map(|id| Message {
            payload: shared.clone(),
            ..message(id, &format!("d{id}"), 1, 60_000)
        })
        .collect();
    let mut fx = Vec::new();
    let now = s.now();
    s.m.submit(batch.clone(), now, &s.online, &mut fx);
    let fx = s.take(fx);
    assert!(released(&fx).is_empty(), "held for offline devices");
    assert_eq!((s.m.payload_bytes(), s.m.payloads_len()), (4, 1), "counted once");
    let mut fx = Vec::new();
    s.m.cancel("acme", 1, s.now(), &mut fx).expect("cancel");
    s.m.cancel("acme", 2, s.now(), &mut fx).expect("cancel");
    assert!(released(&fx).is_empty(), "message 3 still holds it");
    assert_eq!(s.m.payload_bytes(), 4);
    assert!(
        s.m.message(2).expect("retained").payload.bytes.is_empty(),
        "a finished one lets go"
    );
    s.online.0.insert("d3".into(), at(1));
    let fx = s.event(DeliveryEvent::DeviceOnline { client_id: "d3".into() });
    assert_eq!(delivers(&fx).len(), 1);
    let fx = s.event(DeliveryEvent::Acked { push_id: 3 });
    assert_eq!(released(&fx), vec![Some(100)], "the last one releases it, with its row");
    assert_eq!((s.m.payload_bytes(), s.m.payloads_len()), (0, 0));

    // Recovery charges a reloaded payload once, however many records share it.
    let mut r = Sim::persistent_only();
    let mut fx = Vec::new();
    let now = r.now();
    r.m.recover(batch, now, &r.online, &mut fx);
    let held: Vec<_> = fx.iter().filter(|e| matches!(e, Effect::PayloadHeld { .. })).collect();
    assert_eq!(
        held,
        vec![&Effect::PayloadHeld {
            sp: "acme".into(),
            len_bytes: 4
        }]
    );
}
