//! CPU pinning of shard threads.
//!
//! Owns the round-robin mapping shard -> core. Must never fail start-up: a host
//! that refuses pinning runs unpinned and says so.

/// Pins the calling thread to core `index % cores`. Returns the core id pinned
/// to, or None if the host refused or reports no cores.
pub fn pin_current_thread(index: usize) -> Option<usize> {
    let cores = core_affinity::get_core_ids()?;
    if cores.is_empty() {
        return None;
    }
    let core = cores[index % cores.len()];
    if core_affinity::set_for_current(core) {
        Some(core.id)
    } else {
        None
    }
}
