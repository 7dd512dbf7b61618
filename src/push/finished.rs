//! Finished messages kept for `GET /v1/messages/{id}` and late confirmations:
//! at most `completed_retention_max`, the oldest deleted first.
//!
//! Owns the retention window. Must never change a message it keeps (the
//! machine does, through `get_mut`) or write the store: it names the ids that
//! fall out, the machine turns them into deletes.

use std::collections::{HashMap, VecDeque};

use super::message::Message;

pub struct Finished {
    by_id: HashMap<u64, Message>,
    /// Oldest first.
    order: VecDeque<u64>,
    retention_max: usize,
}

impl Finished {
    pub fn new(retention_max: usize) -> Finished {
        Finished {
            by_id: HashMap::new(),
            order: VecDeque::new(),
            retention_max,
        }
    }

    /// Keeps `msg`; returns the ids pushed out of the window.
    pub fn keep(&mut self, msg: Message) -> Vec<u64> {
        let id = msg.id;
        if self.by_id.insert(id, msg).is_none() {
            self.order.push_back(id);
        }
        let mut gone = Vec::new();
        while self.order.len() > self.retention_max {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
                gone.push(old);
            }
        }
        gone
    }

    pub fn get(&self, id: u64) -> Option<&Message> {
        self.by_id.get(&id)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Message> {
        self.by_id.get_mut(&id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}
