//! The operating-system boundary: io_uring rings and provided buffers, sockets,
//! CPU affinity, file-descriptor limits, wake-ups.
//!
//! Owns the `unsafe` blocks of the crate (io_uring needs raw buffers shared
//! with the kernel), with one exception: the `Io::send` call in `shard::event_loop` (the
//! send buffer's lifetime is the loop's to guarantee). Must never hold protocol or session logic.

pub mod affinity;
pub mod bufring;
pub mod epoll_io;
pub mod io;
pub mod rlimit;
pub mod sim_faults;
pub mod sim_io;
pub mod socket;
pub mod uring;
pub mod uring_io;
pub mod user_data;
pub mod waker;
