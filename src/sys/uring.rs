//! io_uring ring set-up and the start-up feature probe.
//!
//! Owns ring construction (flags for a pinned single-issuer thread, the sparse
//! fixed-file table for direct descriptors). Must never submit connection I/O:
//! the shard loop does that.

use io_uring::{IoUring, opcode};

/// Why io_uring cannot be used, with what the operator can do about it.
#[derive(Debug)]
pub struct UringUnavailable {
    pub what: String,
    pub fix: &'static str,
}

impl std::fmt::Display for UringUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (fix: {})", self.what, self.fix)
    }
}

/// A ring built for one shard.
pub struct ShardRing {
    pub ring: IoUring,
    /// Entries in the sparse fixed-file table (0 = plain fds).
    pub fixed_files: u32,
}

/// Submission queue entries per ring.
pub const SQ_ENTRIES: u32 = 4096;
/// Completion queue entries per ring (multishot ops post many CQEs).
pub const CQ_ENTRIES: u32 = 16_384;

/// Builds a ring for a pinned shard thread and registers a sparse fixed-file
/// table of `fixed_files` slots (falls back to 0 = plain fds if refused).
pub fn build_shard_ring(fixed_files: u32) -> Result<ShardRing, UringUnavailable> {
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(CQ_ENTRIES)
        .build(SQ_ENTRIES)
        .or_else(|_| {
            // Older kernels (< 6.1) lack DEFER_TASKRUN; COOP_TASKRUN is the next best.
            IoUring::builder()
                .setup_coop_taskrun()
                .setup_cqsize(CQ_ENTRIES)
                .build(SQ_ENTRIES)
        })
        .map_err(|e| UringUnavailable {
            what: format!("io_uring_setup failed: {e}"),
            fix: "use Linux >= 6.1 with io_uring enabled (sysctl kernel.io_uring_disabled=0; \
                  containers: allow io_uring_setup in the seccomp profile)",
        })?;
    check_features(&ring)?;
    let fixed_files = if fixed_files > 0 && ring.submitter().register_files_sparse(fixed_files).is_ok() {
        fixed_files
    } else {
        0
    };
    Ok(ShardRing { ring, fixed_files })
}

/// The features and opcodes the shard loop relies on.
fn check_features(ring: &IoUring) -> Result<(), UringUnavailable> {
    if !ring.params().is_feature_ext_arg() {
        return Err(UringUnavailable {
            what: "io_uring lacks IORING_FEAT_EXT_ARG (timed waits)".into(),
            fix: "use Linux >= 5.11, or run with --backend epoll",
        });
    }
    if !ring.params().is_feature_nodrop() {
        return Err(UringUnavailable {
            what: "io_uring lacks IORING_FEAT_NODROP".into(),
            fix: "use Linux >= 5.5, or run with --backend epoll",
        });
    }
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| UringUnavailable {
            what: format!("io_uring probe failed: {e}"),
            fix: "use Linux >= 6.1, or run with --backend epoll",
        })?;
    for (code, name) in [
        (opcode::AcceptMulti::CODE, "ACCEPT"),
        (opcode::RecvMulti::CODE, "RECV"),
        (opcode::Send::CODE, "SEND"),
        (opcode::Close::CODE, "CLOSE"),
        (opcode::Read::CODE, "READ"),
        (opcode::Shutdown::CODE, "SHUTDOWN"),
    ] {
        if !probe.is_supported(code) {
            return Err(UringUnavailable {
                what: format!("io_uring opcode {name} unsupported"),
                fix: "use Linux >= 6.1, or run with --backend epoll",
            });
        }
    }
    Ok(())
}

/// Start-up probe: can this process build a shard ring with a provided buffer ring?
pub fn probe() -> Result<(), UringUnavailable> {
    let r = build_shard_ring(16)?;
    // SAFETY-free check: a buffer ring registration proves IORING_REGISTER_PBUF_RING.
    match super::bufring::BufRing::new(&r.ring.submitter(), 16, 256, 0) {
        Ok(b) => {
            let _ = r.ring.submitter().unregister_buf_ring(b.group_id());
            drop(b);
            Ok(())
        }
        Err(e) => Err(UringUnavailable {
            what: format!("provided buffer rings unavailable: {e}"),
            fix: "use Linux >= 5.19 (>= 6.1 recommended), or run with --backend epoll",
        }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_host_has_what_the_uring_backend_needs() {
        // The test hosts run Linux 6.18; if this fails the epoll backend still works,
        // but the io_uring tests would be meaningless, so say it loudly.
        super::probe().expect("io_uring probe");
        let r = super::build_shard_ring(1024).expect("ring");
        assert_eq!(r.fixed_files, 1024);
    }
}
