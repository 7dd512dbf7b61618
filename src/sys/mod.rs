//! The operating-system boundary: io_uring rings and provided buffers, sockets,
//! CPU affinity, file-descriptor limits, wake-ups.
//!
//! Owns the `unsafe` blocks of the crate (io_uring needs raw buffers shared
//! with the kernel), with one exception: the SQE push in `shard::uring_loop`. Must never hold protocol or session logic.

pub mod affinity;
pub mod bufring;
pub mod rlimit;
pub mod socket;
pub mod uring;
pub mod user_data;
pub mod waker;
