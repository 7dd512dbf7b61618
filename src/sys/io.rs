//! The completion-style I/O boundary a shard loop runs on: submit accept
//! (and take an accepted socket's peer address), recv, send, close, cancel
//! and msg-ring (pass a connection's descriptor to another shard), drain
//! completions into the caller's queue, wait with a timeout, read the clock. `shard::event_loop` is generic over it; `SimIo`
//! (`sys::sim_io`) is the seeded, fault-injecting implementation the
//! simulated tests run on.
//!
//! Owns the contract between a shard and its ring: what each submission
//! promises and what its completions look like (io_uring's CQE layout, so a
//! kernel ring implements it without translation). Must never name shard or
//! protocol types: operations are identified by an opaque `user_data` word
//! (`sys::user_data`), descriptors by a `u32` (fixed-file index or fd).

use std::os::fd::OwnedFd;

/// Completion flag: the completion carries a provided buffer (id in the high 16 bits).
pub const CQE_F_BUFFER: u32 = 1 << 0;
/// Completion flag: the multishot operation stays armed (more completions follow).
pub const CQE_F_MORE: u32 = 1 << 1;
/// Completion flag: the provided buffer is only partly used (incremental consumption).
pub const CQE_F_BUF_MORE: u32 = 1 << 4;
/// Where the provided buffer id sits in the flags word.
pub const CQE_BUFFER_SHIFT: u32 = 16;

/// Which of a shard's listeners an accept is armed on. The event loop
/// carries it in the accept's `user_data` key field (`listener as u32`), so
/// a completion says which listener its descriptor came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Listener {
    /// Plain MQTT (`mqtt_listen`).
    Mqtt = 0,
    /// MQTT over TLS (`mqtt_tls_listen`).
    MqttTls = 1,
}

impl Listener {
    pub const ALL: [Listener; 2] = [Listener::Mqtt, Listener::MqttTls];

    /// The listener a user_data key field names, if any.
    pub fn from_key(key: u32) -> Option<Listener> {
        match key {
            0 => Some(Listener::Mqtt),
            1 => Some(Listener::MqttTls),
            _ => None,
        }
    }

    /// Its place in per-listener arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One completed operation, as the kernel reports it: `result` is the byte
/// count, the descriptor, or a negated errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// The multishot operation that produced this is still armed.
    pub fn more(&self) -> bool {
        self.flags & CQE_F_MORE != 0
    }

    /// The provided buffer that holds the received bytes, if any.
    pub fn buffer(&self) -> Option<u16> {
        (self.flags & CQE_F_BUFFER != 0).then_some((self.flags >> CQE_BUFFER_SHIFT) as u16)
    }

    /// The provided buffer has room left and stays with the kernel.
    pub fn buffer_more(&self) -> bool {
        self.flags & CQE_F_BUF_MORE != 0
    }
}

/// A shard's ring: submissions are queued by the methods below and reach the
/// device (kernel or simulation) at the latest in `wait`; completions are
/// collected by `drain`. A submission never fails synchronously: a refusal
/// comes back as a completion with a negated errno, and a full submission
/// queue is the implementation's to flush (its errors named there).
pub trait Io {
    /// The shard clock, in ms since the gateway started (virtual in `SimIo`).
    fn now_ms(&self) -> u64;

    /// Whether this shard has listener `l` (a shard past `listen_shards` has
    /// none; `MqttTls` only when `mqtt_tls_listen` is set).
    fn has_listener(&self, l: Listener) -> bool;

    /// Multishot accept on listener `l`: one completion per connection,
    /// `result` = its descriptor. Nothing is submitted if there is no such listener.
    fn accept(&mut self, user_data: u64, l: Listener);

    /// The peer address of descriptor `io`, which an accept completion just
    /// returned (drained, not yet handled further); taken once: a second
    /// call, or a descriptor that did not come from an accept, gives None.
    fn accepted_peer(&mut self, io: u32) -> Option<std::net::IpAddr>;

    /// One completion when the shard's mailbox is woken.
    fn wake(&mut self, user_data: u64);

    /// Multishot recv into provided buffers on descriptor `io`: completions
    /// with bytes (`buffer()`), 0 at end of stream, or a negated errno; the
    /// last one has `more()` false.
    fn recv(&mut self, user_data: u64, io: u32);

    /// Sends `bytes` on `io`; the completion's `result` is how many were taken
    /// (possibly fewer: the caller sends the rest).
    ///
    /// # Safety
    /// `bytes` must stay allocated and unmodified until the completion for
    /// `user_data` has been drained: the kernel reads them after this returns.
    unsafe fn send(&mut self, user_data: u64, io: u32, bytes: &[u8]);

    /// Whether `send_static` is supported: done once submitted (never parked
    /// waiting for socket room) and posting a completion only when it did not
    /// take every byte. Without it the loop sends such bytes as ordinary output.
    fn sends_static(&self) -> bool {
        false
    }

    /// How many `send_static` calls, counted from the first in call order,
    /// have settled: issued, and the completion they posted (if they did not
    /// go whole) handed out by `drain`. Until its send settles, the loop starts
    /// no other send on that connection, so a short one's rest goes out first.
    fn static_sends_settled(&mut self) -> u64 {
        0
    }

    /// Sends bytes that live as long as the program (a PINGRESP), with no
    /// completion when all of them were taken; otherwise one completion for
    /// `user_data` with the bytes taken (>= 0, fewer than `bytes.len()`) or a
    /// negated errno (-EAGAIN: nothing taken, the socket's buffer is full).
    /// Only called when `sends_static` is true and no other send is in
    /// flight on `io`; the loop starts none until it settled.
    fn send_static(&mut self, user_data: u64, io: u32, bytes: &'static [u8]) {
        // SAFETY: `bytes` is 'static: it outlives any operation.
        unsafe { self.send(user_data, io, bytes) }
    }

    /// Shuts `io` down (ending its recv) then closes it: one completion for
    /// `shutdown_user_data` (ignored by the loop), one for `close_user_data`.
    fn close(&mut self, shutdown_user_data: u64, close_user_data: u64, io: u32);

    /// Closes a descriptor that belongs to no connection (never got a slot,
    /// or was passed to another ring); its completion carries `user_data`.
    fn close_orphan(&mut self, user_data: u64, io: u32);

    /// Cancels the operation submitted with `target` (its completion ends
    /// with -ECANCELED); this request's own completion carries `user_data`.
    fn cancel(&mut self, target: u64, user_data: u64);

    /// Whether descriptors can be passed to another shard's ring (`msg_ring`).
    /// When false, a moving connection's socket travels as a plain fd
    /// (`detach` here, `attach` there).
    fn passes_descriptors(&self) -> bool;

    /// Passes descriptor `io` into shard `to`'s table, posting nothing there.
    /// The completion's `result` is the index it got in that table (this
    /// table keeps its own reference, which the caller closes), or a negated
    /// errno (the descriptor stays here). False when shard `to` has no ring
    /// to pass to (nothing submitted).
    fn msg_ring(&mut self, to: u16, io: u32, user_data: u64) -> bool;

    /// Takes a plain fd out of this shard (it must have nothing in flight).
    fn detach(&mut self, io: u32) -> Option<OwnedFd>;

    /// Takes up a plain fd that arrived with a moved connection; returns its descriptor.
    fn attach(&mut self, fd: OwnedFd) -> u32;

    /// Moves up to `max` completions into `into` (appended, oldest first).
    fn drain(&mut self, into: &mut Vec<Completion>, max: usize);

    /// The bytes a recv completion delivered in provided buffer `buffer`.
    fn received(&self, buffer: u16, len: usize) -> &[u8];

    /// The caller is done with `buffer` (`more`: the kernel keeps filling it).
    fn consumed(&mut self, buffer: u16, len: usize, more: bool);

    /// Returns consumed buffers to the device (once per batch of completions).
    fn publish_buffers(&mut self);

    /// Hands queued submissions to the device and waits until a completion
    /// is ready or `timeout_ms` passed. `keepalives_only`: the last turn did
    /// nothing but answer keep-alives, so a backend that can batch (io_uring's
    /// min_wait) may hold a first completion back for up to its batch window
    /// to take more with it; others ignore it.
    fn wait(&mut self, timeout_ms: u64, keepalives_only: bool);
}
