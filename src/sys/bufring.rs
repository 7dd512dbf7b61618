//! A provided-buffer ring: receive buffers the kernel picks from for multishot
//! recv, so an idle connection owns no read buffer at all.
//!
//! With incremental consumption (`IOU_PBUF_RING_INC`, Linux 6.12+) many small
//! receives (a PINGREQ is 2 bytes) share one buffer: the kernel keeps a buffer
//! while it has room (`IORING_CQE_F_BUF_MORE`) and we track the read offset.
//!
//! Owns the ring memory shared with the kernel and the buffer memory. Must never
//! hand a buffer back to the kernel while a slice of it is still being read,
//! nor while the kernel still owns it (BUF_MORE).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;
use io_uring::types::BufRingEntry;

const PAGE_BYTES: usize = 4096;
/// Kernel uapi `IOU_PBUF_RING_INC`: incremental buffer consumption.
const IOU_PBUF_RING_INC: u16 = 2;

pub struct BufRing {
    ring: *mut BufRingEntry,
    ring_layout: Layout,
    bufs: Box<[u8]>,
    entries: u16,
    buf_bytes: u32,
    /// Local tail: entries added but maybe not yet published.
    tail: u16,
    group_id: u16,
    /// Incremental mode: read offset into each buffer the kernel still holds.
    offsets: Option<Box<[u32]>>,
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
        let mut incremental = true;
        let mut registered =
            unsafe { submitter.register_buf_ring_with_flags(ring as u64, entries, group_id, IOU_PBUF_RING_INC) };
        if registered.is_err() {
            // Kernels before 6.12 refuse the flag: one receive per buffer then.
            incremental = false;
            // SAFETY: as above.
            registered = unsafe { submitter.register_buf_ring_with_flags(ring as u64, entries, group_id, 0) };
        }
        if let Err(e) = registered {
            // SAFETY: allocated above with this layout, never registered.
            unsafe { dealloc(ring as *mut u8, ring_layout) };
            return Err(e);
        }
        let offsets = incremental.then(|| vec![0u32; entries as usize].into_boxed_slice());
        let mut this = BufRing {
            ring,
            ring_layout,
            bufs,
            entries,
            buf_bytes,
            tail: 0,
            group_id,
            offsets,
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

    pub fn is_incremental(&self) -> bool {
        self.offsets.is_some()
    }

    /// The `len` bytes the kernel just wrote into buffer `bid`.
    pub fn filled(&self, bid: u16, len: usize) -> &[u8] {
        let bid = bid % self.entries;
        let offset = self.offsets.as_ref().map_or(0, |o| o[bid as usize] as usize);
        let start = bid as usize * self.buf_bytes as usize + offset.min(self.buf_bytes as usize);
        let end = (start + len).min((bid as usize + 1) * self.buf_bytes as usize);
        &self.bufs[start..end]
    }

    /// Done reading the `len` bytes of a completion that used buffer `bid`.
    /// `kernel_keeps` is the CQE's BUF_MORE flag: the kernel will write more
    /// into this buffer, so it is not ours to return yet.
    pub fn consumed(&mut self, bid: u16, len: usize, kernel_keeps: bool) {
        let bid = bid % self.entries;
        match self.offsets.as_mut() {
            Some(offsets) if kernel_keeps => offsets[bid as usize] += len as u32,
            Some(offsets) => {
                offsets[bid as usize] = 0;
                self.push(bid);
            }
            None => self.push(bid),
        }
    }

    /// Queues buffer `bid` for return to the kernel (visible after `publish`).
    fn push(&mut self, bid: u16) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::{IoUring, cqueue, opcode, types};
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn small_receives_share_one_buffer_in_incremental_mode() {
        let mut ring = IoUring::new(8).expect("ring");
        let mut bufs = BufRing::new(&ring.submitter(), 4, 256, 7).expect("buffer ring");
        assert!(bufs.is_incremental(), "Linux >= 6.12 supports IOU_PBUF_RING_INC");
        let (mut tx, rx) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let recv = opcode::RecvMulti::new(types::Fd(rx.as_raw_fd()), 7)
            .build()
            .user_data(1);
        // SAFETY: `rx` and `bufs` outlive the operation: it ends with the EOF
        // completion awaited below, before either is dropped.
        unsafe { ring.submission().push(&recv).expect("sq room") };
        let mut got = Vec::new();
        let mut bids = Vec::new();
        for chunk in [&b"ab"[..], b"cd", b"ef"] {
            tx.write_all(chunk).expect("write");
            ring.submit_and_wait(1).expect("wait");
            for cqe in ring.completion() {
                let bid = cqueue::buffer_select(cqe.flags()).expect("a provided buffer");
                let len = cqe.result() as usize;
                got.extend_from_slice(bufs.filled(bid, len));
                bids.push(bid);
                bufs.consumed(bid, len, cqueue::buffer_more(cqe.flags()));
            }
        }
        bufs.publish();
        assert_eq!(got, b"abcdef");
        assert!(
            bids.windows(2).all(|w| w[0] == w[1]),
            "one buffer served all three: {bids:?}"
        );
        drop(tx);
        ring.submit_and_wait(1).expect("eof completion");
        let _ = ring.submitter().unregister_buf_ring(7);
    }
}
