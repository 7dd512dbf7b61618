//! Finished messages kept for `GET /v1/messages/{id}` and late confirmations:
//! at most `completed_retention_max` of them and at most
//! `completed_retention_bytes_max` bytes of their records (a finished message
//! holds no payload), the oldest deleted first.
//!
//! Owns the retention window. Must never change a message it keeps (the
//! machine does, through `get_mut`; a confirmation adds one event, which the
//! byte count, taken at `keep`, does not follow) or write the store: it names
//! the ids that fall out, the machine turns them into deletes.

use std::collections::{HashMap, VecDeque};

use super::message::Message;

pub struct Finished {
    /// Each message with its record bytes when kept.
    by_id: HashMap<u64, (Message, u64)>,
    /// Oldest first.
    order: VecDeque<u64>,
    retention_max: usize,
    retention_bytes_max: u64,
    /// Sum of the record bytes in `by_id`.
    bytes: u64,
}

impl Finished {
    pub fn new(retention_max: usize, retention_bytes_max: u64) -> Finished {
        Finished {
            by_id: HashMap::new(),
            order: VecDeque::new(),
            retention_max,
            retention_bytes_max,
            bytes: 0,
        }
    }

    /// Keeps `msg`; returns the ids pushed out of the window.
    pub fn keep(&mut self, msg: Message) -> Vec<u64> {
        let id = msg.id;
        let record_bytes = msg.record_bytes();
        self.bytes += record_bytes;
        match self.by_id.insert(id, (msg, record_bytes)) {
            Some((_, old_bytes)) => self.bytes -= old_bytes,
            None => self.order.push_back(id),
        }
        let mut gone = Vec::new();
        while self.order.len() > self.retention_max || self.bytes > self.retention_bytes_max {
            let Some(old) = self.order.pop_front() else { break };
            if let Some((_, old_bytes)) = self.by_id.remove(&old) {
                self.bytes -= old_bytes;
            }
            gone.push(old);
        }
        gone
    }

    pub fn get(&self, id: u64) -> Option<&Message> {
        self.by_id.get(&id).map(|(m, _)| m)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Message> {
        self.by_id.get_mut(&id).map(|(m, _)| m)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Record bytes kept.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::message::State;
    use crate::push::payload::Payload;
    use crate::push::profile::Profile;

    fn finished(id: u64, detail_bytes: usize) -> Message {
        let mut m = Message {
            id,
            sp: "acme".into(),
            device: "d".into(),
            payload: Payload::default(),
            qos: 1,
            created_ms: 0,
            expires_ms: 1,
            collapse_key: None,
            callback_url: None,
            profile: Profile::default(),
            state: State::Accepted,
            collapsed_into: None,
            history: vec![],
            attempts: vec![],
        };
        m.set_state(State::Delivered, 1, "x".repeat(detail_bytes));
        m
    }

    #[test]
    fn retention_is_bounded_in_bytes_as_well_as_in_count() {
        let one = finished(0, 1_000).record_bytes();
        let mut f = Finished::new(100, 3 * one);
        for id in 1..=3 {
            assert!(f.keep(finished(id, 1_000)).is_empty());
        }
        assert_eq!(f.bytes(), 3 * one);
        assert_eq!(f.keep(finished(4, 1_000)), vec![1], "the oldest goes for the bytes");
        assert_eq!(f.keep(finished(5, 1_800)), vec![2, 3], "a larger one pushes out two");
        assert!(f.bytes() <= 3 * one && f.get(1).is_none() && f.get(5).is_some());
        let mut by_count = Finished::new(2, u64::MAX);
        for id in 1..=3 {
            by_count.keep(finished(id, 10));
        }
        assert_eq!(by_count.len(), 2);
    }
}
