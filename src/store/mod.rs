//! Durable message storage for pulsegate: the `Store` trait, its op and error
//! types, and the two implementations (`RedbStore` on disk, `MemStore` for
//! tests) plus the `GroupCommitter` that batches many callers into one fsync.
//!
//! Owns: the on-disk format of pending messages (id -> opaque bytes, and
//! payload rows: id -> opaque bytes, which message records may reference) and the
//! promise that a successful `commit` is on stable storage. Must never: encode
//! or interpret message payloads, talk to the network or to other gateway
//! modules (only `super::` paths are used so it can be dropped into any crate),
//! or acknowledge an op before the fsync covering it has returned.
//!
//! # Why redb (and not fjall)
//! redb is a single-file, copy-on-write B-tree with ACID transactions: a
//! `WriteTransaction::commit` with `Durability::Immediate` returns only after
//! its pages and the checksummed header that points at them are fsync'd, so
//! "201 only after it is on disk" maps onto exactly one call, recovery after
//! SIGKILL is "open the file" (the last committed root wins, nothing to
//! replay), and it has no background threads. fjall is an LSM tree (journal +
//! memtables + background flush/compaction): it is faster for sustained
//! write-heavy ingest, but durability is a journal-persist mode you must
//! remember to request per write, it owns a directory of many files and
//! compaction threads, and its strengths (huge data sets, write amplification
//! trade-offs) do not matter for a queue of pending pushes that stays small
//! because messages are deleted once delivered. Throughput is bounded by
//! fsync either way; group commit (one fsync for many messages) is what
//! recovers it, and that is storage-agnostic (see `group_commit`).
//!
//! # Failure and recovery
//! A redb `Database` whose write failed (a full disk) refuses everything after
//! (`PreviousIo`) until it is reopened. `RedbStore` therefore reopens itself in
//! `probe`, which the committer's writer calls with backoff while it is
//! degraded; a probe that commits a record the size of the failed batch ends
//! the degraded state, with no restart. The file only grows under redb (freed
//! pages are reused, never returned), so the writer also asks the store to
//! `compact` when free space passes `CompactPolicy`.

#![forbid(unsafe_code)]

pub mod group_commit;
pub mod mem_store;
mod pacing;
mod queue;
pub mod redb_store;

pub use group_commit::{GroupCommitConfig, GroupCommitStats, GroupCommitter, Ticket};
pub use mem_store::MemStore;
pub use redb_store::RedbStore;

use std::fmt;

/// One mutation. Ops of one `commit` call are applied in slice order.
/// `PutPayload`/`DeletePayload` write the payloads table (a payload shared by
/// the records of one multicast).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    Put { id: u64, value: Vec<u8> },
    Delete { id: u64 },
    PutPayload { id: u64, value: Vec<u8> },
    DeletePayload { id: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The storage layer failed (I/O error, lock held by another process...).
    Io(String),
    /// The on-disk data is inconsistent.
    Corrupt(String),
    /// The disk (or quota) is full: retried until space comes back.
    NoSpace(String),
    /// Back-pressure: the group-commit queue already holds this many ops.
    Full { queued_ops: usize },
    /// The writer is gone (shut down or died).
    Closed,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io(m) => write!(f, "store I/O error: {m}"),
            StoreError::Corrupt(m) => write!(f, "store corrupt: {m}"),
            StoreError::NoSpace(m) => write!(f, "store out of disk space: {m}"),
            StoreError::Full { queued_ops } => {
                write!(f, "store queue full ({queued_ops} ops waiting)")
            }
            StoreError::Closed => write!(f, "store closed"),
        }
    }
}

impl std::error::Error for StoreError {}

pub trait Store: Send + Sync + 'static {
    /// Applies every op atomically and durably (fsync'd) before returning.
    fn commit(&self, ops: &[StoreOp]) -> Result<(), StoreError>;
    /// Every record, in id order (recovery at start-up).
    fn load_all(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    fn len(&self) -> Result<u64, StoreError>;
    /// Every payload row, in id order (recovery re-links them to their
    /// records). A store that never takes payload rows has none.
    fn load_payloads(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        Ok(Vec::new())
    }
    fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
    /// Makes the store usable again after a failure if it can (reopen), then
    /// proves it can durably commit about `bytes` (written, then removed, in
    /// two commits; nothing of it stays). Called by the writer while degraded.
    fn probe(&self, _bytes: usize) -> Result<(), StoreError> {
        Ok(())
    }
    /// Compacts the file if `policy` says its free space is worth returning;
    /// the caller guarantees no commit runs meanwhile. None: nothing done.
    fn compact(&self, _policy: &CompactPolicy) -> Result<Option<Compaction>, StoreError> {
        Ok(None)
    }
    /// The size of the backing file, if there is one.
    fn file_bytes(&self) -> Option<u64> {
        None
    }
}

/// When the store file is compacted: both bounds must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactPolicy {
    /// Free bytes in the file (its size minus the bytes in allocated pages) at
    /// least this (0 = never compact)...
    pub free_bytes_min: u64,
    /// ...and the live bytes at least this many percent below their peak since
    /// the last compaction (a burst is gone; not mere growth slack).
    pub free_percent_min: u32,
    /// Free space is measured at most this often, and only after commits.
    pub check_ms: u64,
}

impl Default for CompactPolicy {
    fn default() -> Self {
        CompactPolicy {
            free_bytes_min: 16 << 20,
            free_percent_min: 50,
            check_ms: 1_000,
        }
    }
}

/// One compaction that ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    pub file_bytes_before: u64,
    pub file_bytes_after: u64,
    /// Bytes in allocated pages when it started, and their peak before.
    pub live_bytes: u64,
    pub live_peak_bytes: u64,
    pub duration_ms: u64,
}
