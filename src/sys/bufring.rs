//! A provided-buffer ring: receive buffers the kernel picks from for multishot
//! recv, so an idle connection owns no read buffer at all.
//!
//! Owns the ring memory shared with the kernel and the buffer memory. Must never
//! hand a buffer back to the kernel while a slice of it is still being read.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;
use io_uring::types::BufRingEntry;

const PAGE_BYTES: usize = 4096;

pub struct BufRing {
    ring: *mut BufRingEntry,
    ring_layout: Layout,
    bufs: Box<[u8]>,
    entries: u16,
    buf_bytes: u32,
    /// Local tail: entries added but maybe not yet published.
    tail: u16,
    group_id: u16,
}

impl BufRing {
    /// Allocates `entries` buffers of `buf_bytes`, registers them as buffer group
    /// `group_id` and hands all of them to the kernel.
    pub fn new(submitter: &Submitter<'_>, entries: u16, buf_bytes: u32, group_id: u16) -> std::io::Result<BufRing> {
        assert!(entries.is_power_of_two(), "config validation guarantees a power of two");
        let ring_bytes = (entries as usize * std::mem::size_of::<BufRingEntry>()).max(PAGE_BYTES);
        let ring_layout =
            Layout::from_size_align(ring_bytes, PAGE_BYTES).map_err(|_| std::io::Error::other("buffer ring layout"))?;
        // SAFETY: the layout has a non-zero size; the memory is zeroed, which is a
        // valid initial state for io_uring_buf entries (tail = 0).
        let ring = unsafe { alloc_zeroed(ring_layout) } as *mut BufRingEntry;
        if ring.is_null() {
            return Err(std::io::Error::other("out of memory for buffer ring"));
        }
        let bufs = vec![0u8; entries as usize * buf_bytes as usize].into_boxed_slice();
        // SAFETY: `ring` points to `entries` zeroed entries, page aligned, and lives
        // until Drop, which unregisters the group before freeing it; the ring
        // (kernel side) is owned by the same shard and outlives no BufRing use.
        let registered = unsafe { submitter.register_buf_ring_with_flags(ring as u64, entries, group_id, 0) };
        if let Err(e) = registered {
            // SAFETY: allocated above with this layout, never registered.
            unsafe { dealloc(ring as *mut u8, ring_layout) };
            return Err(e);
        }
        let mut this = BufRing {
            ring,
            ring_layout,
            bufs,
            entries,
            buf_bytes,
            tail: 0,
            group_id,
        };
        for bid in 0..entries {
            this.push(bid);
        }
        this.publish();
        Ok(this)
    }

    pub fn group_id(&self) -> u16 {
        self.group_id
    }

    /// The first `len` bytes the kernel wrote into buffer `bid`.
    pub fn filled(&self, bid: u16, len: usize) -> &[u8] {
        let start = (bid as usize % self.entries as usize) * self.buf_bytes as usize;
        let len = len.min(self.buf_bytes as usize);
        &self.bufs[start..start + len]
    }

    /// Queues buffer `bid` for return to the kernel (visible after `publish`).
    pub fn push(&mut self, bid: u16) {
        let bid = bid % self.entries;
        let index = (self.tail & (self.entries - 1)) as usize;
        let addr = self.bufs.as_ptr() as u64 + bid as u64 * self.buf_bytes as u64;
        // SAFETY: index < entries, inside the ring allocation; the kernel only reads
        // entries between its head and the published tail, and this one is past it.
        let entry = unsafe { &mut *self.ring.add(index) };
        entry.set_addr(addr);
        entry.set_len(self.buf_bytes);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes pushed buffers to the kernel.
    pub fn publish(&mut self) {
        // SAFETY: `ring` is the first entry of the registered ring; the tail field
        // overlays its `resv` and is only written by us.
        let tail = unsafe { BufRingEntry::tail(self.ring) } as *const AtomicU16;
        // SAFETY: the u16 tail is naturally aligned inside the page-aligned ring.
        unsafe { (*tail).store(self.tail, Ordering::Release) };
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // The ring itself is dropped after us by the owner (or is already gone,
        // which unregisters everything): freeing is safe either way once the
        // kernel no longer reads it. The owner unregisters before dropping us.
        // SAFETY: allocated in `new` with `ring_layout`.
        unsafe { dealloc(self.ring as *mut u8, self.ring_layout) };
    }
}
