//! `EpollIo`: `sys::io::Io` emulated on readiness (mio, edge-triggered), for
//! where io_uring is unavailable, as TigerBeetle's darwin IO does on kqueue:
//! an armed operation is performed when its socket is ready and reported as
//! a completion. Reads go until WouldBlock (edge-triggered: a FIN behind the
//! data would never be seen otherwise) within a per-event budget; a send is
//! written at once and, if the socket is full, finished when it turns
//! writable.
//!
//! Owns the shard's mio Poll, its listener and its sockets. Must never be
//! chosen when io_uring works unless the operator asks (`--backend epoll`),
//! and never hand out a received chunk after `publish_buffers` reused it.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use super::io::{CQE_BUFFER_SHIFT, CQE_F_BUFFER, CQE_F_MORE, Completion, Io, Listener};

const LISTENER: Token = Token(0);
pub const WAKER: Token = Token(1);
const LISTENER_TLS: Token = Token(2);
const FIRST_FD_TOKEN: usize = 3;
/// Reads per readable event before yielding to other connections.
const READS_PER_EVENT_MAX: usize = 16;
/// Accepts per listener event before yielding.
const ACCEPTS_PER_EVENT_MAX: usize = 1024;
/// Bytes read per turn, at most, in reads: the chunks live in an arena of
/// this many reads until the loop has consumed them (twice one event's budget).
const ARENA_READS: usize = 2 * READS_PER_EVENT_MAX;

/// A send that met a full socket: finished when it turns writable.
struct PendingSend {
    user_data: u64,
    ptr: *const u8,
    len: usize,
    written: usize,
}

/// One socket and the operations armed on it.
struct Slot {
    stream: TcpStream,
    recv: Option<u64>,
    send: Option<PendingSend>,
    /// The address accept returned, until the loop takes it.
    peer: Option<IpAddr>,
}

pub struct EpollIo {
    poll: Poll,
    events: Events,
    /// By `Listener::index`: plain MQTT, MQTT over TLS. None on a shard that
    /// gets connections only by rebalancing (and for TLS when it is off).
    listeners: [Option<TcpListener>; 2],
    /// By fd.
    slots: Vec<Option<Slot>>,
    epoch: Instant,
    /// The armed accept's user_data, by `Listener::index`.
    accept: [Option<u64>; 2],
    wake: Option<u64>,
    /// The waker fired while no wake read was armed.
    woken: bool,
    ready: Vec<Completion>,
    /// Received bytes of this turn; `chunks[id]` = (start, len).
    arena: Box<[u8]>,
    arena_used: usize,
    chunks: Vec<(usize, usize)>,
    /// Sockets to read again (budget spent, or a recv just armed).
    read_again: Vec<u32>,
    /// Bytes one read asks for.
    read_bytes_max: usize,
    read_scratch: Vec<u32>,
    /// Armed recv -> its fd (for cancellation).
    recv_fds: HashMap<u64, u32>,
}

fn errno(e: &std::io::Error) -> i32 {
    -e.raw_os_error().unwrap_or(libc::EIO)
}

impl EpollIo {
    /// `read_bytes_max`: bytes one read asks for; `events_per_wait_max`:
    /// readiness events taken per wait.
    pub fn new(
        poll: Poll,
        listener: Option<std::net::TcpListener>,
        epoch: Instant,
        read_bytes_max: usize,
        events_per_wait_max: usize,
    ) -> std::io::Result<EpollIo> {
        let mut listener = listener.map(TcpListener::from_std);
        if let Some(l) = listener.as_mut() {
            poll.registry().register(l, LISTENER, Interest::READABLE)?;
        }
        Ok(EpollIo {
            poll,
            events: Events::with_capacity(events_per_wait_max),
            listeners: [listener, None],
            slots: Vec::new(),
            epoch,
            accept: [None, None],
            wake: None,
            woken: false,
            ready: Vec::with_capacity(events_per_wait_max),
            arena: vec![0u8; ARENA_READS * read_bytes_max].into_boxed_slice(),
            arena_used: 0,
            chunks: Vec::with_capacity(events_per_wait_max),
            read_again: Vec::new(),
            read_bytes_max,
            read_scratch: Vec::new(),
            recv_fds: HashMap::new(),
        })
    }

    /// Adds the MQTT-over-TLS listener (accepts on it are `Listener::MqttTls`).
    pub fn with_tls_listener(mut self, tls_listener: Option<std::net::TcpListener>) -> std::io::Result<EpollIo> {
        if let Some(l) = tls_listener {
            let mut l = TcpListener::from_std(l);
            self.poll
                .registry()
                .register(&mut l, LISTENER_TLS, Interest::READABLE)?;
            self.listeners[Listener::MqttTls.index()] = Some(l);
        }
        Ok(self)
    }

    fn complete(&mut self, user_data: u64, result: i32, flags: u32) {
        self.ready.push(Completion {
            user_data,
            result,
            flags,
        });
    }

    fn slot(&mut self, fd: u32) -> Option<&mut Slot> {
        self.slots.get_mut(fd as usize).and_then(|s| s.as_mut())
    }

    /// Registers a socket (accepted, or moved here); its fd names it.
    fn take_up(&mut self, mut stream: TcpStream, peer: Option<IpAddr>) -> Option<u32> {
        let fd = stream.as_raw_fd() as u32;
        let token = Token(fd as usize + FIRST_FD_TOKEN);
        self.poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
            .ok()?;
        let i = fd as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        self.slots[i] = Some(Slot {
            stream,
            recv: None,
            send: None,
            peer,
        });
        Some(fd)
    }

    fn accept_all(&mut self, l: Listener) {
        for _ in 0..ACCEPTS_PER_EVENT_MAX {
            let (Some(ud), Some(listener)) = (self.accept[l.index()], self.listeners[l.index()].as_ref()) else {
                return;
            };
            match listener.accept() {
                // A socket that cannot be registered is dropped (closed).
                Ok((stream, addr)) => {
                    if let Some(fd) = self.take_up(stream, Some(addr.ip())) {
                        self.complete(ud, fd as i32, CQE_F_MORE);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // EMFILE/ENFILE and friends: reported; the backlog waits for the next edge.
                Err(e) => {
                    self.complete(ud, errno(&e), CQE_F_MORE);
                    return;
                }
            }
        }
    }

    /// Reads until WouldBlock, within the budget and the arena.
    fn read(&mut self, fd: u32) {
        for _ in 0..READS_PER_EVENT_MAX {
            let read_bytes_max = self.read_bytes_max;
            if self.arena.len() - self.arena_used < read_bytes_max || self.chunks.len() >= u16::MAX as usize {
                break;
            }
            let start = self.arena_used;
            let Some(slot) = self.slots.get_mut(fd as usize).and_then(|s| s.as_mut()) else {
                return;
            };
            let Some(ud) = slot.recv else { return };
            match slot.stream.read(&mut self.arena[start..start + read_bytes_max]) {
                Ok(0) => {
                    slot.recv = None;
                    self.recv_fds.remove(&ud);
                    self.complete(ud, 0, 0);
                    return;
                }
                Ok(n) => {
                    self.arena_used += n;
                    let id = self.chunks.len() as u32;
                    self.chunks.push((start, n));
                    self.complete(ud, n as i32, CQE_F_MORE | CQE_F_BUFFER | (id << CQE_BUFFER_SHIFT));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    slot.recv = None;
                    self.recv_fds.remove(&ud);
                    self.complete(ud, errno(&e), 0);
                    return;
                }
            }
        }
        // Budget spent with data left: no new edge will come, so finish next turn.
        self.read_again.push(fd);
    }

    /// Writes a pending send as far as the socket takes it.
    fn write(&mut self, fd: u32) {
        let Some(slot) = self.slots.get_mut(fd as usize).and_then(|s| s.as_mut()) else {
            return;
        };
        let Some(p) = slot.send.as_mut() else { return };
        let result = loop {
            if p.written == p.len {
                break p.written as i32;
            }
            // SAFETY: the loop keeps these bytes valid and unmodified until
            // this send's completion is drained (`Io::send`'s contract).
            let rest = unsafe { std::slice::from_raw_parts(p.ptr.add(p.written), p.len - p.written) };
            match slot.stream.write(rest) {
                Ok(n) => p.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let token = Token(fd as usize + FIRST_FD_TOKEN);
                    let _ = self.poll.registry().reregister(
                        &mut slot.stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // Part went out: report it; the loop's next send meets the error.
                Err(_) if p.written > 0 => break p.written as i32,
                Err(e) => break errno(&e),
            }
        };
        let ud = p.user_data;
        slot.send = None;
        let token = Token(fd as usize + FIRST_FD_TOKEN);
        let _ = self
            .poll
            .registry()
            .reregister(&mut slot.stream, token, Interest::READABLE);
        self.complete(ud, result, 0);
    }

    /// Drops the socket; every operation armed on it completes.
    fn drop_slot(&mut self, fd: u32) -> Option<Slot> {
        let mut slot = self.slots.get_mut(fd as usize)?.take()?;
        let _ = self.poll.registry().deregister(&mut slot.stream);
        if let Some(ud) = slot.recv.take() {
            self.recv_fds.remove(&ud);
            self.complete(ud, 0, 0);
        }
        if let Some(p) = slot.send.take() {
            self.complete(p.user_data, -libc::ECANCELED, 0);
        }
        Some(slot)
    }
}

impl Io for EpollIo {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn has_listener(&self, l: Listener) -> bool {
        self.listeners[l.index()].is_some()
    }

    fn accept(&mut self, user_data: u64, l: Listener) {
        if self.listeners[l.index()].is_none() {
            return;
        }
        self.accept[l.index()] = Some(user_data);
        // The backlog may have filled while no accept was armed.
        self.accept_all(l);
    }

    fn accepted_peer(&mut self, io: u32) -> Option<IpAddr> {
        self.slot(io)?.peer.take()
    }

    fn wake(&mut self, user_data: u64) {
        if std::mem::take(&mut self.woken) {
            self.complete(user_data, 8, 0);
        } else {
            self.wake = Some(user_data);
        }
    }

    fn recv(&mut self, user_data: u64, io: u32) {
        match self.slot(io) {
            Some(slot) => {
                slot.recv = Some(user_data);
                self.recv_fds.insert(user_data, io);
                // Bytes may already wait (no new edge will come for them).
                self.read_again.push(io);
            }
            None => self.complete(user_data, -libc::EBADF, 0),
        }
    }

    unsafe fn send(&mut self, user_data: u64, io: u32, bytes: &[u8]) {
        let Some(slot) = self.slot(io) else {
            return self.complete(user_data, -libc::EBADF, 0);
        };
        slot.send = Some(PendingSend {
            user_data,
            ptr: bytes.as_ptr(),
            len: bytes.len(),
            written: 0,
        });
        self.write(io);
    }

    fn close(&mut self, shutdown_user_data: u64, close_user_data: u64, io: u32) {
        let closed = self.drop_slot(io).is_some();
        self.complete(shutdown_user_data, 0, 0);
        self.complete(close_user_data, if closed { 0 } else { -libc::EBADF }, 0);
    }

    fn close_orphan(&mut self, user_data: u64, io: u32) {
        let closed = self.drop_slot(io).is_some();
        self.complete(user_data, if closed { 0 } else { -libc::EBADF }, 0);
    }

    fn cancel(&mut self, target: u64, user_data: u64) {
        let armed = self.recv_fds.remove(&target);
        match armed.and_then(|fd| self.slot(fd)) {
            Some(slot) => {
                slot.recv = None;
                self.complete(target, -libc::ECANCELED, 0);
                self.complete(user_data, 0, 0);
            }
            None => self.complete(user_data, -libc::ENOENT, 0),
        }
    }

    fn passes_descriptors(&self) -> bool {
        false
    }

    fn msg_ring(&mut self, _to: u16, _io: u32, _user_data: u64) -> bool {
        false
    }

    fn detach(&mut self, io: u32) -> Option<OwnedFd> {
        let mut slot = self.slots.get_mut(io as usize)?.take()?;
        let _ = self.poll.registry().deregister(&mut slot.stream);
        if let Some(ud) = slot.recv.take() {
            self.recv_fds.remove(&ud);
        }
        Some(OwnedFd::from(slot.stream))
    }

    fn attach(&mut self, fd: OwnedFd) -> u32 {
        // On failure the fd is dropped (closed) and the connection gets a
        // descriptor that names nothing: its recv meets EBADF and it closes.
        self.take_up(TcpStream::from(fd), None).unwrap_or(u32::MAX)
    }

    fn drain(&mut self, into: &mut Vec<Completion>, _max: usize) {
        // All of them: a chunk's bytes are reused once the loop publishes.
        into.append(&mut self.ready);
    }

    fn received(&self, buffer: u16, len: usize) -> &[u8] {
        let (start, n) = self.chunks.get(buffer as usize).copied().unwrap_or((0, 0));
        &self.arena[start..start + n.min(len)]
    }

    fn consumed(&mut self, _buffer: u16, _len: usize, _more: bool) {}

    fn publish_buffers(&mut self) {
        if self.ready.is_empty() {
            self.arena_used = 0;
            self.chunks.clear();
        }
    }

    fn wait(&mut self, timeout_ms: u64, _keepalives_only: bool) {
        let timeout_ms = if self.ready.is_empty() && self.read_again.is_empty() {
            timeout_ms
        } else {
            0
        };
        if let Err(e) = self
            .poll
            .poll(&mut self.events, Some(Duration::from_millis(timeout_ms)))
            && e.kind() != ErrorKind::Interrupted
        {
            eprintln!("epoll_wait failed: {e}");
        }
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept_all(Listener::Mqtt),
                LISTENER_TLS => self.accept_all(Listener::MqttTls),
                WAKER => match self.wake.take() {
                    Some(ud) => self.complete(ud, 8, 0),
                    None => self.woken = true,
                },
                Token(t) => {
                    let fd = (t - FIRST_FD_TOKEN) as u32;
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.read(fd);
                    }
                    if event.is_writable() {
                        self.write(fd);
                    }
                }
            }
        }
        self.events = events;
        let mut again = std::mem::take(&mut self.read_scratch);
        std::mem::swap(&mut again, &mut self.read_again);
        for &fd in &again {
            self.read(fd);
        }
        again.clear();
        self.read_scratch = again;
    }
}
