//! Shards: one pinned thread each, owning its listeners (MQTT, and MQTT over
//! TLS when `mqtt_tls_listen` is set; both SO_REUSEPORT), its connections,
//! its timer wheel and its event loop (io_uring, or epoll as the fallback).
//!
//! Owns shard start-up. Must never share a connection between threads: other
//! threads reach a shard only through its mailbox and read its counters.

pub mod accept_gate;
pub mod active_pool;
pub mod admission;
mod close;
pub mod conn;
mod connections;
mod control;
pub mod core;
#[cfg(test)]
mod core_tests;
#[cfg(test)]
mod core_tls_tests;
pub mod counters;
mod ctx;
mod deliver;
pub mod env;
mod holders;
// `Io::send` is unsafe (the ring reads the buffer after the call returns);
// its one use carries its SAFETY note in that file.
#[allow(unsafe_code)]
pub mod event_loop;
pub mod mailbox;
pub mod migrate;
mod packets;
mod partial;
pub mod peers;
#[cfg(test)]
mod sim_tests;
pub mod tls_conn;
mod tls_path;
pub mod wheel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;

use crate::limits;
use crate::sys;
use env::{BackendInUse, ShardEnv};
use peers::ShardHandle;

// A batching wait returns before more completions wait than one turn drains.
const _: () = assert!(sys::uring_io::BATCH_WANT_COMPLETIONS <= limits::COMPLETIONS_PER_TURN_MAX);

/// Fixed-file slots kept free beyond a shard's connection capacity.
const FIXED_FILES_SPARE: u32 = 64;
/// The kernel's limit on one ring's fixed-file table.
const IORING_MAX_FIXED_FILES: u64 = 1 << 20;
/// Process fds kept for everything that is not a connection (epoll backend).
const PROCESS_FDS_RESERVED: u64 = 256;

/// Started shards.
pub struct Shards {
    pub threads: Vec<JoinHandle<()>>,
    /// The MQTT address actually bound (port resolved when 0 was asked).
    pub mqtt_addr: SocketAddr,
    /// The MQTT-over-TLS address actually bound, when `mqtt_tls_listen` is set.
    pub mqtt_tls_addr: Option<SocketAddr>,
    /// Connections each shard will hold.
    pub capacity_per_shard: u32,
}

/// Why shards could not start.
#[derive(Debug)]
pub enum StartError {
    Bind { addr: SocketAddr, error: std::io::Error },
    Setup { shard: usize, error: String },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            StartError::Setup { shard, error } => write!(f, "shard {shard} failed to start: {error}"),
        }
    }
}

/// Connections one shard can hold given the fd limit and the backend.
pub fn capacity_per_shard(cfg: &crate::config::Config, backend: BackendInUse, nofile_soft: u64) -> u32 {
    let wanted = cfg.connections_per_shard();
    let shards = cfg.shards as u64;
    let cap = match backend {
        // Each ring's fixed-file table is capped by RLIMIT_NOFILE, per ring, and
        // by the kernel's IORING_MAX_FIXED_FILES (1 << 20).
        BackendInUse::Uring => nofile_soft
            .min(IORING_MAX_FIXED_FILES)
            .saturating_sub(FIXED_FILES_SPARE as u64),
        // Plain fds share the process table.
        BackendInUse::Epoll => nofile_soft.saturating_sub(PROCESS_FDS_RESERVED) / shards,
    };
    (wanted as u64)
        .min(cap)
        .min(limits::CONNECTIONS_PER_SHARD_MAX as u64)
        .max(1) as u32
}

/// Binds every shard's listener, builds mailboxes, installs the shard handles
/// in `env.peers`, then starts the threads and waits until each one is running.
pub fn start(
    env: ShardEnv,
    backend: BackendInUse,
    nofile_soft: u64,
    stop: Arc<AtomicBool>,
) -> Result<Shards, StartError> {
    let cfg = env.cfg.clone();
    let capacity = capacity_per_shard(&cfg, backend, nofile_soft);
    let mut addr = cfg.mqtt_listen;
    let mut tls_addr = cfg.mqtt_tls_listen;
    let mut handles = Vec::new();
    let mut parts = Vec::new();
    for i in 0..cfg.shards {
        // A shard past `listen_shards` has no listener: it gets connections only
        // by rebalancing (a bound but idle SO_REUSEPORT socket would strand some).
        let listener = if i < cfg.listen_shards {
            let l = sys::socket::reuseport_listener(addr, true).map_err(|error| StartError::Bind { addr, error })?;
            if i == 0 {
                addr = l.local_addr().map_err(|error| StartError::Bind { addr, error })?;
            }
            Some(l)
        } else {
            None
        };
        // The TLS listener, on the same shards (SO_REUSEPORT spreads its accepts too).
        let tls_listener = match tls_addr {
            Some(a) if i < cfg.listen_shards => {
                let l =
                    sys::socket::reuseport_listener(a, true).map_err(|error| StartError::Bind { addr: a, error })?;
                if i == 0 {
                    tls_addr = Some(l.local_addr().map_err(|error| StartError::Bind { addr: a, error })?);
                }
                Some(l)
            }
            _ => None,
        };
        let counters = Arc::new(counters::ShardCounters::default());
        let part = match backend {
            BackendInUse::Uring => {
                let waker = Arc::new(sys::waker::EventFdWaker::new().map_err(|e| StartError::Setup {
                    shard: i,
                    error: e.to_string(),
                })?);
                let (tx, rx) = mailbox::mailbox(limits::MAILBOX_COMMANDS_MAX, waker.clone());
                handles.push(ShardHandle {
                    mailbox: tx,
                    counters: counters.clone(),
                    ring_fd: std::sync::atomic::AtomicI32::new(-1),
                });
                Part::Uring { waker, rx }
            }
            BackendInUse::Epoll => {
                let poll = mio::Poll::new().map_err(|e| StartError::Setup {
                    shard: i,
                    error: e.to_string(),
                })?;
                let waker = mio::Waker::new(poll.registry(), sys::epoll_io::WAKER).map_err(|e| StartError::Setup {
                    shard: i,
                    error: e.to_string(),
                })?;
                let (tx, rx) = mailbox::mailbox(limits::MAILBOX_COMMANDS_MAX, Arc::new(sys::waker::MioWaker(waker)));
                handles.push(ShardHandle {
                    mailbox: tx,
                    counters: counters.clone(),
                    ring_fd: std::sync::atomic::AtomicI32::new(-1),
                });
                Part::Epoll { poll, rx }
            }
        };
        parts.push((listener, tls_listener, counters, part));
    }
    env.peers.install(handles);

    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<(usize, Result<(), String>)>(cfg.shards);
    let mut threads = Vec::new();
    for (i, (listener, tls_listener, counters, part)) in parts.into_iter().enumerate() {
        let env = env.clone();
        let stop = stop.clone();
        let ready = ready_tx.clone();
        let pin = cfg.pin_cpus;
        let (recv_bufs, recv_buf_bytes) = (cfg.recv_bufs_per_shard, cfg.recv_buf_bytes);
        let batch_wait_us = cfg.loop_batch_wait_us;
        let thread = std::thread::Builder::new()
            .name(format!("shard-{i}"))
            .spawn(move || {
                if pin {
                    sys::affinity::pin_current_thread(i);
                }
                let core = core::Core::new(i as u16, env.clone(), counters, capacity);
                match part {
                    Part::Uring { waker, rx } => {
                        let table = capacity + FIXED_FILES_SPARE;
                        let peers = env.peers.clone();
                        let ring_fd_of: sys::uring_io::RingFdOf = Box::new(move |to| {
                            peers
                                .all()
                                .get(to as usize)
                                .map_or(-1, |h| h.ring_fd.load(std::sync::atomic::Ordering::Acquire))
                        });
                        let io = sys::uring::build_shard_ring(table)
                            .map_err(|e| e.to_string())
                            .and_then(|ring| {
                                sys::uring_io::UringIo::new(
                                    ring,
                                    listener,
                                    waker,
                                    recv_bufs,
                                    recv_buf_bytes,
                                    ring_fd_of,
                                    env.epoch,
                                )
                                .map(|io| io.with_tls_listener(tls_listener).with_batch_wait_us(batch_wait_us))
                                .map_err(|e| format!("provided buffer ring: {e}"))
                            });
                        match io {
                            Ok(io) => {
                                env.peers.all()[i]
                                    .ring_fd
                                    .store(io.ring_fd(), std::sync::atomic::Ordering::Release);
                                let _ = ready.send((i, Ok(())));
                                event_loop::EventLoop::new(io, core, rx, env.accept_gate.clone()).run(&stop);
                            }
                            Err(e) => {
                                let _ = ready.send((i, Err(e)));
                            }
                        }
                    }
                    Part::Epoll { poll, rx } => match sys::epoll_io::EpollIo::new(
                        poll,
                        listener,
                        env.epoch,
                        limits::EPOLL_READ_BUF_BYTES,
                        limits::COMPLETIONS_PER_TURN_MAX,
                    )
                    .and_then(|io| io.with_tls_listener(tls_listener))
                    {
                        Ok(io) => {
                            let _ = ready.send((i, Ok(())));
                            event_loop::EventLoop::new(io, core, rx, env.accept_gate.clone()).run(&stop);
                        }
                        Err(e) => {
                            let _ = ready.send((i, Err(e.to_string())));
                        }
                    },
                }
            })
            .map_err(|e| StartError::Setup {
                shard: i,
                error: e.to_string(),
            })?;
        threads.push(thread);
    }
    drop(ready_tx);
    for _ in 0..cfg.shards {
        match ready_rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((shard, Err(error))) => {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                return Err(StartError::Setup { shard, error });
            }
            Err(_) => {
                return Err(StartError::Setup {
                    shard: usize::MAX,
                    error: "a shard thread exited during start-up".into(),
                });
            }
        }
    }
    Ok(Shards {
        threads,
        mqtt_addr: addr,
        mqtt_tls_addr: tls_addr,
        capacity_per_shard: capacity,
    })
}

enum Part {
    Uring {
        waker: Arc<sys::waker::EventFdWaker>,
        rx: mailbox::MailboxReceiver,
    },
    Epoll {
        poll: mio::Poll,
        rx: mailbox::MailboxReceiver,
    },
}
