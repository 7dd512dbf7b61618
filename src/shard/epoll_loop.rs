//! The epoll (mio) shard loop: the fallback where io_uring is unavailable.
//! Same `Core`, same behaviour; readiness instead of completions.
//!
//! Owns the shard's mio Poll and its sockets. Must never be chosen when
//! io_uring works unless the operator asks (`--backend epoll`).

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use super::conn::IO_WANT_WRITE;
use super::core::Core;
use super::counters::{CloseReason, bump};
use super::mailbox::MailboxReceiver;
use super::migrate::{MoveOut, MoveStep};
use crate::limits;

const LISTENER: Token = Token(0);
pub const WAKER: Token = Token(1);
const FIRST_CONN_TOKEN: usize = 2;
/// Reads per readable event before yielding to other connections.
const READS_PER_EVENT_MAX: usize = 16;
/// Accepts per listener event before yielding.
const ACCEPTS_PER_EVENT_MAX: usize = 1024;
const SHUTDOWN_GRACE_MS: u64 = 3_000;

pub struct EpollShard {
    poll: Poll,
    /// None on a shard that gets connections only by rebalancing.
    listener: Option<TcpListener>,
    mailbox: MailboxReceiver,
    core: Core,
    streams: Vec<Option<TcpStream>>,
    read_buf: Box<[u8]>,
    keys: Vec<u32>,
    /// Connections whose read budget ran out before WouldBlock.
    read_again: Vec<u32>,
}

impl EpollShard {
    pub fn new(
        poll: Poll,
        listener: Option<std::net::TcpListener>,
        mailbox: MailboxReceiver,
        core: Core,
    ) -> std::io::Result<EpollShard> {
        let mut listener = listener.map(TcpListener::from_std);
        if let Some(l) = listener.as_mut() {
            poll.registry().register(l, LISTENER, Interest::READABLE)?;
        }
        Ok(EpollShard {
            poll,
            listener,
            mailbox,
            core,
            streams: Vec::new(),
            read_buf: vec![0u8; limits::EPOLL_READ_BUF_BYTES].into_boxed_slice(),
            keys: Vec::with_capacity(1024),
            read_again: Vec::new(),
        })
    }

    fn accept_all(&mut self) {
        for _ in 0..ACCEPTS_PER_EVENT_MAX {
            let Some(listener) = self.listener.as_ref() else { return };
            match listener.accept() {
                Ok((stream, _)) => {
                    let Some((key, _)) = self.core.accept(stream.as_raw_fd() as u32) else {
                        continue; // dropped: closed
                    };
                    self.take_up(key, stream);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    // EMFILE/ENFILE and friends: count and let the backlog wait.
                    bump(&self.core.counters().accept_errors, 1);
                    return;
                }
            }
        }
    }

    /// Registers a connection's socket (accepted, or moved here) under its key.
    fn take_up(&mut self, key: u32, mut stream: TcpStream) -> bool {
        let token = Token(key as usize + FIRST_CONN_TOKEN);
        if self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
            .is_err()
        {
            self.core.peer_closed(key, CloseReason::IoError);
            self.core.release(key);
            return false;
        }
        let i = key as usize;
        if self.streams.len() <= i {
            self.streams.resize_with(i + 1, || None);
        }
        self.streams[i] = Some(stream);
        true
    }

    /// Takes up connections that moved here, and hands off those leaving
    /// (epoll has nothing in flight, so a chosen connection leaves at once).
    fn advance_moves(&mut self) {
        for (key, fd) in self.core.take_arrivals() {
            let Some(fd) = fd else { continue };
            let stream = TcpStream::from(fd);
            if let Some(c) = self.core.conn_mut(key) {
                c.io = stream.as_raw_fd() as u32;
            }
            if self.take_up(key, stream) {
                // Bytes may already wait in the socket: read them now.
                self.read_again.push(key);
            }
        }
        for m in self.core.take_moves() {
            if self.core.move_step(&m) == MoveStep::Ready {
                self.hand_off(m);
            }
        }
        self.core.post_outbox();
    }

    fn hand_off(&mut self, m: MoveOut) {
        let Some(mut stream) = self.streams.get_mut(m.key as usize).and_then(|s| s.take()) else {
            self.core.abandon_move(&m);
            return;
        };
        let _ = self.poll.registry().deregister(&mut stream);
        self.set_want_write_flag_cleared(m.key);
        let fd = OwnedFd::from(stream);
        let moving = self.core.hand_off(&m, Some(fd));
        self.core.send_moving(m.to, moving);
    }

    /// A socket leaving this poll forgets its WRITABLE registration.
    fn set_want_write_flag_cleared(&mut self, key: u32) {
        if let Some(c) = self.core.conn_mut(key) {
            c.io_flags &= !IO_WANT_WRITE;
        }
    }

    fn read(&mut self, key: u32) {
        for _ in 0..READS_PER_EVENT_MAX {
            let Some(stream) = self.streams.get_mut(key as usize).and_then(|s| s.as_mut()) else {
                return;
            };
            match stream.read(&mut self.read_buf) {
                Ok(0) => {
                    self.core.peer_closed(key, CloseReason::PeerClosed);
                    return;
                }
                // Edge-triggered: read until WouldBlock, or a FIN that came with the
                // data would never be seen.
                Ok(n) => self.core.receive(key, &self.read_buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.core.peer_closed(key, CloseReason::IoError);
                    return;
                }
            }
        }
        // Read budget spent with data left: no new edge will come, so finish next turn.
        self.read_again.push(key);
    }

    fn send(&mut self, key: u32) {
        loop {
            let Some(stream) = self.streams.get_mut(key as usize).and_then(|s| s.as_mut()) else {
                return;
            };
            let Some(bytes) = self.core.next_send(key) else { break };
            match stream.write(bytes) {
                Ok(n) => {
                    if !self.core.send_done(key, n) {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.core.send_stopped(key);
                    self.set_want_write(key, true);
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => self.core.send_stopped(key),
                Err(_) => {
                    self.core.send_stopped(key);
                    self.core.peer_closed(key, CloseReason::IoError);
                    return;
                }
            }
        }
        self.set_want_write(key, false);
    }

    fn set_want_write(&mut self, key: u32, want: bool) {
        let Some(conn) = self.core.conn_mut(key) else { return };
        if (conn.io_flags & IO_WANT_WRITE != 0) == want {
            return;
        }
        conn.io_flags ^= IO_WANT_WRITE;
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if let Some(stream) = self.streams.get_mut(key as usize).and_then(|s| s.as_mut()) {
            let token = Token(key as usize + FIRST_CONN_TOKEN);
            let _ = self.poll.registry().reregister(stream, token, interest);
        }
    }

    fn close(&mut self, key: u32) {
        if let Some(mut stream) = self.streams.get_mut(key as usize).and_then(|s| s.take()) {
            let _ = self.poll.registry().deregister(&mut stream);
            drop(stream);
        }
        self.core.release(key);
    }

    fn flush(&mut self) {
        self.advance_moves();
        let mut keys = std::mem::take(&mut self.keys);
        self.core.take_dirty(&mut keys);
        for &key in &keys {
            self.send(key);
        }
        self.core.take_closing(&mut keys);
        for &key in &keys {
            if self.core.close_ready(key) {
                self.close(key);
            }
        }
        self.keys = keys;
    }

    pub fn run(mut self, stop: &AtomicBool) {
        let mut events = Events::with_capacity(limits::COMPLETIONS_PER_TURN_MAX);
        let mut stop_deadline_ms: Option<u64> = None;
        loop {
            self.core.tick();
            if stop.load(Ordering::Relaxed) && !self.core.is_shutting_down() {
                self.core.shutdown();
                if let Some(l) = self.listener.as_mut() {
                    let _ = self.poll.registry().deregister(l);
                }
            }
            if self.core.is_shutting_down() {
                let deadline = *stop_deadline_ms.get_or_insert(self.core.now_ms() + SHUTDOWN_GRACE_MS);
                if self.core.connections() == 0 || self.core.now_ms() >= deadline {
                    break;
                }
            }
            self.flush();
            let sleep_ms = if !self.read_again.is_empty() {
                0
            } else if self.core.is_shutting_down() {
                10
            } else {
                self.core.sleep_ms()
            };
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_millis(sleep_ms)))
                && e.kind() != ErrorKind::Interrupted
            {
                eprintln!("shard {}: epoll_wait failed: {e}", self.core.shard_id);
            }
            self.core.tick();
            for event in events.iter() {
                match event.token() {
                    LISTENER => {
                        if !self.core.is_shutting_down() {
                            self.accept_all();
                        }
                    }
                    WAKER => {
                        self.mailbox.rearm();
                        while let Some(command) = self.mailbox.try_recv() {
                            self.core.command(command);
                        }
                    }
                    Token(t) => {
                        let key = (t - FIRST_CONN_TOKEN) as u32;
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(key);
                        }
                        if event.is_writable() {
                            self.send(key);
                        }
                        if self.core.close_ready(key) {
                            self.close(key);
                        }
                    }
                }
            }
            for key in std::mem::take(&mut self.read_again) {
                self.read(key);
                if self.core.close_ready(key) {
                    self.close(key);
                }
            }
            self.core.run_timers();
            self.flush();
            bump(&self.core.counters().loop_turns, 1);
        }
        let keys: Vec<u32> = (0..self.streams.len() as u32).collect();
        for key in keys {
            if self.streams[key as usize].is_some() {
                self.close(key);
            }
        }
    }
}
