//! The shard's free list of `Active` boxes: a connection that becomes busy
//! (a PINGREQ to answer, a push in flight, a packet straddling receive
//! buffers) borrows one, and gives it back, emptied, when it is idle again.
//!
//! Owns the recycled boxes and the figures of how often it had one to give.
//! Must never hold more than `ACTIVE_POOL_MAX` boxes, nor keep a buffer larger
//! than `ACTIVE_BUF_KEEP_BYTES_MAX` (one huge packet must not pin memory).

use super::conn::Active;

/// Recycled `Active` boxes kept per shard, at most (beyond this they are freed).
pub const ACTIVE_POOL_MAX: usize = 1024;
/// Boxes allocated at start-up, so the first busy connections do not allocate.
pub const ACTIVE_POOL_PREALLOC: usize = 64;
/// A recycled buffer keeps its capacity up to this many bytes; a larger one is
/// freed (worst case pinned per shard: 5 buffers (partial, out, sending,
/// inflight, queued) x this x `ACTIVE_POOL_MAX` = 20 MiB; typically the
/// PINGRESP-sized output buffers only).
pub const ACTIVE_BUF_KEEP_BYTES_MAX: usize = 4096;
/// Output and partial-packet capacity given to each preallocated box (fits a
/// CONNACK, PINGRESP, PUBACK, or the start of a small packet split across receives).
pub const ACTIVE_BUF_PREALLOC_BYTES: usize = 256;

const _: () = assert!(ACTIVE_POOL_PREALLOC <= ACTIVE_POOL_MAX);
const _: () = assert!(ACTIVE_BUF_PREALLOC_BYTES <= ACTIVE_BUF_KEEP_BYTES_MAX);

/// A bounded stack of emptied `Active` boxes.
pub struct ActivePool {
    // Boxed on purpose: a connection holds `Option<Box<Active>>` (8 bytes in
    // its slot), and the box itself moves between it and the pool.
    #[allow(clippy::vec_box)]
    free: Vec<Box<Active>>,
    /// Boxes handed out from the free list.
    hits: u64,
    /// Boxes that had to be allocated (the free list was empty).
    misses: u64,
}

impl ActivePool {
    /// A pool holding `prealloc` ready boxes (at most `ACTIVE_POOL_MAX`).
    pub fn new(prealloc: usize) -> ActivePool {
        let prealloc = prealloc.min(ACTIVE_POOL_MAX);
        let mut free = Vec::with_capacity(ACTIVE_POOL_MAX);
        for _ in 0..prealloc {
            let mut a = Box::<Active>::default();
            a.out.reserve(ACTIVE_BUF_PREALLOC_BYTES);
            a.sending.reserve(ACTIVE_BUF_PREALLOC_BYTES);
            // A PINGREQ split across two provided buffers lands here.
            a.partial.reserve(ACTIVE_BUF_PREALLOC_BYTES);
            free.push(a);
        }
        ActivePool {
            free,
            hits: 0,
            misses: 0,
        }
    }

    /// An empty box: recycled when one is free, else newly allocated.
    pub fn take(&mut self) -> Box<Active> {
        match self.free.pop() {
            Some(a) => {
                self.hits += 1;
                debug_assert!(a.is_idle());
                a
            }
            None => {
                self.misses += 1;
                Box::default()
            }
        }
    }

    /// Takes back a box no connection uses any more: emptied (its pushes, if
    /// any were left, are dropped: the close path has drained them), its
    /// oversized buffers freed; the box itself freed when the pool is full.
    pub fn give(&mut self, mut a: Box<Active>) {
        if self.free.len() >= ACTIVE_POOL_MAX {
            return;
        }
        a.recycle(ACTIVE_BUF_KEEP_BYTES_MAX);
        self.free.push(a);
    }

    /// Boxes ready to hand out.
    pub fn free_len(&self) -> usize {
        self.free.len()
    }

    /// (handed out from the free list, allocated because it was empty).
    pub fn hits_misses(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_given_back_is_handed_out_again_emptied() {
        let mut pool = ActivePool::new(1);
        let mut a = pool.take();
        a.out.extend_from_slice(&[0xD0, 0]);
        let ptr: *const Active = &*a;
        pool.give(a);
        let b = pool.take();
        assert!(std::ptr::eq(ptr, &*b), "the same box");
        assert!(b.is_idle() && b.out.capacity() >= 2);
        assert_eq!(pool.hits_misses(), (2, 0));
        let _c = pool.take();
        assert_eq!(pool.hits_misses(), (2, 1), "empty: allocated");
    }

    #[test]
    fn the_pool_never_grows_past_its_limit() {
        let mut pool = ActivePool::new(ACTIVE_POOL_MAX + 10);
        assert_eq!(pool.free_len(), ACTIVE_POOL_MAX);
        pool.give(Box::default());
        assert_eq!(pool.free_len(), ACTIVE_POOL_MAX);
    }
}
