//! The connection registry: client id -> owning (shard, slot, generation), and
//! the offline sessions of devices that connected with clean start false.
//!
//! Owns the process-wide map, striped over mutexes so shards and the HTTP API
//! rarely contend. Must never block on I/O or hold a stripe lock while calling
//! out of this module; it never talks to shards itself (callers post commands).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::delivery::{Location, Push};

/// What `claim` found.
#[derive(Debug, Default)]
pub struct Claim {
    /// The connection that held the id before (to be taken over).
    pub previous: Option<Location>,
    /// Undelivered pushes of the stored session, when the new connection resumes it.
    pub resumed: Option<Vec<Push>>,
    /// Pushes of a stored session the new connection did not resume (clean
    /// start, or expired): the caller hands tracked ones back to their owner.
    pub discarded: Vec<Push>,
}

/// What `release` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Release {
    /// The id was ours and is now offline (its session stored if persistent).
    Removed {
        session_stored: bool,
        pushes_dropped: usize,
    },
    /// Another connection took the id over; the caller forwards its pushes there
    /// when it is persistent.
    Replaced(Location),
    /// Nothing registered under that id.
    Absent,
}

struct StoredSession {
    pushes: Vec<Push>,
    expires_at: Instant,
}

#[derive(Default)]
struct Stripe {
    online: HashMap<Arc<str>, Location>,
    sessions: HashMap<Arc<str>, StoredSession>,
}

/// Client ids whose last connection was ended by load relief (seeds/004): such
/// a device is never relieved by disconnection again on its next connection.
/// An id is forgotten when a later connection of it ends for another reason.
pub struct ReliefMemory {
    ids: Mutex<std::collections::HashSet<Arc<str>>>,
    len: std::sync::atomic::AtomicUsize,
    ids_max: usize,
}

impl ReliefMemory {
    pub fn new(ids_max: usize) -> ReliefMemory {
        ReliefMemory {
            ids: Mutex::new(Default::default()),
            len: Default::default(),
            ids_max,
        }
    }

    fn lock(&self) -> MutexGuard<'_, std::collections::HashSet<Arc<str>>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a relief disconnection; false when the memory is full.
    pub fn remember(&self, client_id: &Arc<str>) -> bool {
        let mut ids = self.lock();
        if ids.len() >= self.ids_max {
            return false;
        }
        ids.insert(client_id.clone());
        self.len.store(ids.len(), std::sync::atomic::Ordering::Relaxed);
        true
    }

    pub fn contains(&self, client_id: &str) -> bool {
        self.len.load(std::sync::atomic::Ordering::Relaxed) > 0 && self.lock().contains(client_id)
    }

    /// A connection of `client_id` ended for a reason other than relief.
    pub fn forget(&self, client_id: &str) {
        if self.len.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return;
        }
        let mut ids = self.lock();
        ids.remove(client_id);
        self.len.store(ids.len(), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.len.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Number of mutex stripes (power of two).
const STRIPES: usize = 64;

pub struct Registry {
    stripes: Box<[Mutex<Stripe>]>,
    hasher: std::collections::hash_map::RandomState,
    stored_sessions_max: u32,
    stored_sessions: std::sync::atomic::AtomicU32,
}

impl Registry {
    pub fn new(stored_sessions_max: u32) -> Registry {
        Registry {
            stripes: (0..STRIPES).map(|_| Mutex::new(Stripe::default())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            stored_sessions_max,
            stored_sessions: std::sync::atomic::AtomicU32::new(0),
        }
    }

    fn stripe(&self, client_id: &str) -> MutexGuard<'_, Stripe> {
        let index = (self.hasher.hash_one(client_id) as usize) & (STRIPES - 1);
        // A poisoned stripe means a thread panicked while holding it; the map is
        // still structurally sound (no invariant spans an await point), so keep going.
        match self.stripes[index].lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Registers `client_id` at `location`. With `resume`, the stored session
    /// (if any, and not expired) is handed back; without it, it is discarded.
    pub fn claim(&self, client_id: &Arc<str>, location: Location, resume: bool, now: Instant) -> Claim {
        let mut stripe = self.stripe(client_id);
        let previous = stripe.online.insert(client_id.clone(), location);
        let stored = stripe.sessions.remove(&**client_id);
        if stored.is_some() {
            self.stored_sessions.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        let (resumed, discarded) = match stored {
            Some(s) if resume && s.expires_at > now => (Some(s.pushes), Vec::new()),
            Some(s) => (None, s.pushes),
            None => (None, Vec::new()),
        };
        Claim {
            previous,
            resumed,
            discarded,
        }
    }

    /// Unregisters the connection at `location`. If it still owns the id and
    /// `keep_until` is set, its undelivered `pushes` are stored as its session.
    pub fn release(
        &self,
        client_id: &str,
        location: Location,
        pushes: Vec<Push>,
        keep_until: Option<Instant>,
    ) -> Release {
        if keep_until.is_some()
            && self.stored_sessions.load(std::sync::atomic::Ordering::Relaxed) >= self.stored_sessions_max
        {
            self.purge_expired(Instant::now());
        }
        let mut stripe = self.stripe(client_id);
        let Some((key, current)) = stripe.online.get_key_value(client_id).map(|(k, v)| (k.clone(), *v)) else {
            return Release::Absent;
        };
        // The same connection, even if its persistence changed since (MQTT 5
        // DISCONNECT may set the session expiry to 0).
        if (current.shard, current.key, current.generation) != (location.shard, location.key, location.generation) {
            return Release::Replaced(current);
        }
        stripe.online.remove(client_id);
        let Some(expires_at) = keep_until else {
            return Release::Removed {
                session_stored: false,
                pushes_dropped: pushes.len(),
            };
        };
        let count = self.stored_sessions.load(std::sync::atomic::Ordering::Relaxed);
        if count >= self.stored_sessions_max {
            return Release::Removed {
                session_stored: false,
                pushes_dropped: pushes.len(),
            };
        }
        self.stored_sessions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stripe.sessions.insert(key, StoredSession { pushes, expires_at });
        Release::Removed {
            session_stored: true,
            pushes_dropped: 0,
        }
    }

    /// Drops expired stored sessions everywhere (one stripe locked at a time;
    /// only when the session bound is reached, so its cost is rare).
    fn purge_expired(&self, now: Instant) {
        for stripe in self.stripes.iter() {
            let mut stripe = stripe.lock().unwrap_or_else(|p| p.into_inner());
            let before = stripe.sessions.len();
            stripe.sessions.retain(|_, s| s.expires_at > now);
            let purged = (before - stripe.sessions.len()) as u32;
            self.stored_sessions
                .fetch_sub(purged, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Points `client_id` at `to` if it is still registered at `from` (a
    /// connection moved between shards); false if another connection claimed
    /// it meanwhile (the mover then closes as taken over).
    pub fn relocate(&self, client_id: &str, from: Location, to: Location) -> bool {
        let mut stripe = self.stripe(client_id);
        match stripe.online.get_mut(client_id) {
            Some(current)
                if (current.shard, current.key, current.generation) == (from.shard, from.key, from.generation) =>
            {
                *current = to;
                true
            }
            _ => false,
        }
    }

    /// The owner of `client_id`, if connected.
    pub fn lookup(&self, client_id: &str) -> Option<Location> {
        self.stripe(client_id).online.get(client_id).copied()
    }

    /// Offline sessions currently stored.
    pub fn stored_sessions(&self) -> u32 {
        self.stored_sessions.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn relief_memory_is_bounded_and_forgets_on_a_normal_end() {
        let m = ReliefMemory::new(2);
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"), Arc::from("c"));
        assert!(!m.contains("a"));
        assert!(m.remember(&a) && m.remember(&b));
        assert!(!m.remember(&c), "full: refused, not grown");
        assert!(m.contains("a") && m.contains("b") && !m.contains("c"));
        m.forget("a");
        assert!(!m.contains("a"));
        assert_eq!(m.len(), 1);
        assert!(m.remember(&c));
    }

    #[test]
    fn relocate_moves_only_the_connection_that_still_owns_the_id() {
        let r = Registry::new(10);
        let id: Arc<str> = Arc::from("dev-1");
        let now = Instant::now();
        r.claim(&id, loc(0, 5, false), false, now);
        assert!(r.relocate(&id, loc(0, 5, false), loc(2, 9, false)));
        assert_eq!(r.lookup(&id), Some(loc(2, 9, false)));
        // A stale mover (the id moved on, or was claimed anew) changes nothing.
        assert!(!r.relocate(&id, loc(0, 5, false), loc(3, 1, false)));
        r.claim(&id, loc(1, 7, false), false, now);
        assert!(!r.relocate(&id, loc(2, 9, false), loc(3, 1, false)));
        assert_eq!(r.lookup(&id), Some(loc(1, 7, false)));
        assert!(!r.relocate("nobody", loc(0, 5, false), loc(3, 1, false)));
    }

    fn loc(shard: u16, key: u32, persistent: bool) -> Location {
        Location {
            shard,
            key,
            generation: 1,
            persistent,
        }
    }

    fn push(id: u64) -> Push {
        Push {
            id,
            qos: 1,
            payload: Bytes::from_static(b"x"),
            tracked: false,
            control_topic: None,
            sent_as: None,
        }
    }

    #[test]
    fn claim_then_takeover_reports_previous_owner() {
        let r = Registry::new(10);
        let id: Arc<str> = Arc::from("dev-1");
        let now = Instant::now();
        assert!(r.claim(&id, loc(0, 1, false), false, now).previous.is_none());
        let c = r.claim(&id, loc(1, 7, false), false, now);
        assert_eq!(c.previous, Some(loc(0, 1, false)));
        assert_eq!(r.lookup("dev-1"), Some(loc(1, 7, false)));
        // The old owner releasing must not remove the new one.
        assert_eq!(
            r.release("dev-1", loc(0, 1, false), vec![], None),
            Release::Replaced(loc(1, 7, false))
        );
        assert_eq!(r.lookup("dev-1"), Some(loc(1, 7, false)));
    }

    #[test]
    fn persistent_session_is_stored_and_resumed_once() {
        let r = Registry::new(10);
        let id: Arc<str> = Arc::from("dev-2");
        let now = Instant::now();
        r.claim(&id, loc(0, 1, true), true, now);
        let until = now + std::time::Duration::from_secs(60);
        let rel = r.release("dev-2", loc(0, 1, true), vec![push(1), push(2)], Some(until));
        assert_eq!(
            rel,
            Release::Removed {
                session_stored: true,
                pushes_dropped: 0
            }
        );
        assert!(r.lookup("dev-2").is_none());
        let c = r.claim(&id, loc(1, 2, true), true, now);
        assert_eq!(
            c.resumed.map(|p| p.iter().map(|p| p.id).collect::<Vec<_>>()),
            Some(vec![1, 2])
        );
        assert_eq!(r.stored_sessions(), 0);
    }

    #[test]
    fn clean_start_discards_and_expiry_and_bound_are_honoured() {
        let r = Registry::new(1);
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(60);
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"), Arc::from("c"));
        r.claim(&a, loc(0, 1, true), true, now);
        r.claim(&b, loc(0, 2, true), true, now);
        r.claim(&c, loc(0, 3, true), true, now);
        r.release("a", loc(0, 1, true), vec![push(1)], Some(later));
        // The bound: a second live session is not stored.
        let rel = r.release("b", loc(0, 2, true), vec![push(2)], Some(later));
        assert_eq!(
            rel,
            Release::Removed {
                session_stored: false,
                pushes_dropped: 1
            }
        );
        // Clean start discards a's session and hands its pushes back.
        let claim = r.claim(&a, loc(0, 4, true), false, now);
        assert!(claim.resumed.is_none());
        assert_eq!(claim.discarded.len(), 1);
        assert_eq!(r.stored_sessions(), 0);
        // An expired session does not hold the bound: it is purged to make room.
        r.release("a", loc(0, 4, true), vec![push(3)], Some(now));
        let rel = r.release("c", loc(0, 3, true), vec![push(4)], Some(later));
        assert_eq!(
            rel,
            Release::Removed {
                session_stored: true,
                pushes_dropped: 0
            }
        );
        // Expired (expires_at == now is not > now): nothing resumed.
        assert!(r.claim(&a, loc(0, 5, true), true, now).resumed.is_none());
    }
}
