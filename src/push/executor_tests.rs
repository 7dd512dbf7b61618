//! The executor wired to fakes: a device side that records what it is handed,
//! the real group committer over a `MemStore`, the real channels. Proves the
//! effects reach the device side and the store, and answers come back.

use std::collections::HashMap;
use std::sync::Mutex;

use super::*;
use crate::delivery::{Location, Push};
use crate::push::devices::{DeliverError, Presence};
use crate::push::mechanism::persistent;
use crate::push::message::{Event, State};
use crate::push::profile::Profile;
use crate::push::service::ServiceConfig;
use crate::store::{GroupCommitConfig, GroupCommitter, MemStore, Store};

#[derive(Default)]
struct FakeDevices {
    online: Mutex<HashMap<String, Location>>,
    handed: Mutex<Vec<(Location, Push)>>,
}

impl Presence for FakeDevices {
    fn locate(&self, client_id: &str) -> Option<Location> {
        self.online.lock().expect("online lock").get(client_id).copied()
    }
}

impl Devices for FakeDevices {
    fn deliver(&self, at: Location, push: Push) -> Result<(), DeliverError> {
        self.handed.lock().expect("handed lock").push((at, push));
        Ok(())
    }
}

fn message(id: u64, device: &str) -> Message {
    let now = unix_ms();
    Message {
        id,
        sp: "acme".into(),
        device: device.into(),
        payload: crate::push::payload::Payload::inline(&b"hi"[..]),
        qos: 1,
        created_ms: now,
        expires_ms: now + 60_000,
        collapse_key: None,
        callback_url: None,
        profile: Profile::default(),
        state: State::Accepted,
        collapsed_into: None,
        history: vec![Event {
            at_ms: now,
            state: State::Accepted,
            detail: String::new(),
        }],
        attempts: vec![],
    }
}

/// Turns until `done` holds (the store writer and outbound pool are threads).
fn turn_until(s: &mut PushService, mut done: impl FnMut() -> bool) {
    for _ in 0..5_000 {
        s.turn();
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("condition never held");
}

fn stored_state(store: &MemStore, id: u64) -> Option<State> {
    let rows = store.load_all().expect("load");
    let (_, bytes) = rows.into_iter().find(|(k, _)| *k == id)?;
    serde_json::from_slice::<Message>(&bytes).ok().map(|m| m.state)
}

#[test]
fn a_submitted_message_reaches_its_device_and_its_puback_reaches_the_store() {
    let store = Arc::new(MemStore::new());
    let committer = Arc::new(GroupCommitter::start(store.clone(), GroupCommitConfig::default()));
    let devices = Arc::new(FakeDevices::default());
    let at = Location {
        shard: 1,
        key: 5,
        generation: 2,
        persistent: false,
    };
    devices.online.lock().expect("online lock").insert("d1".into(), at);
    let (requests_tx, requests) = crossbeam_channel::bounded(16);
    let (events_tx, deliveries) = crossbeam_channel::bounded(16);
    let parts = ServiceParts {
        devices: devices.clone(),
        committer,
        requests,
        deliveries,
        mechanisms: vec![persistent(10_000)],
        config: ServiceConfig::default(),
        counters: Arc::new(ServiceCounters::default()),
        budget: Arc::new(crate::push::budget::PayloadBudget::unlimited()),
        outbound_workers: 1,
        outbound_roots: Vec::new(),
        url_policy: Arc::new(crate::outbound::url_policy::UrlPolicy::new(vec![])),
    };
    let mut s = PushService::new(parts, vec![]);
    requests_tx
        .send(Request::Submit(vec![message(42, "d1")]))
        .expect("send");
    turn_until(&mut s, || !devices.handed.lock().expect("handed lock").is_empty());
    let (to, push) = devices.handed.lock().expect("handed lock")[0].clone();
    assert_eq!((to, push.id, push.tracked), (at, 42, true));
    turn_until(&mut s, || stored_state(&store, 42) == Some(State::Sent));

    events_tx.send(DeliveryEvent::Acked { push_id: 42 }).expect("send");
    turn_until(&mut s, || stored_state(&store, 42) == Some(State::Delivered));
    let (reply, answer) = crossbeam_channel::bounded(1);
    requests_tx
        .send(Request::Status {
            sp: "acme".into(),
            id: 42,
            reply,
        })
        .expect("send");
    s.turn();
    let status = answer.recv_timeout(Duration::from_secs(5)).expect("answered");
    assert_eq!(status.expect("found")["state"], "delivered");
    assert_eq!(s.counters.pending.load(Ordering::Relaxed), 0);
}
