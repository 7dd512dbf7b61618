//! The byte transport of one API connection on the event loop: a nonblocking socket, plain or
//! with a rustls `ServerConnection` driven by hand (`read_tls`, `process_new_packets`,
//! `write_tls`), so the same connection code serves HTTP and HTTPS.
//!
//! Owns: moving bytes between the socket and the connection's plaintext buffers, the TLS
//! record layer (handshake records, alerts, close_notify), the half-close.
//! Must never: block (every call returns at `WouldBlock`), buffer beyond the room the caller
//! gives it, interpret the bytes, or panic on network data.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};

/// Plain TCP or TLS over it.
pub(super) enum Transport {
    Plain,
    Tls(Box<ServerConnection>),
}

/// What a `fill` ended on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Filled {
    /// The socket has nothing more for now (the next readiness event brings more).
    Drained,
    /// `buf` reached the room given; the socket may hold more (call again once consumed).
    Full,
    /// The peer closed (FIN, close_notify), reset, or the socket failed.
    Closed,
    /// The peer's TLS was refused (bad record, alert, no common protocol); rustls queued an
    /// alert, which `flush` sends.
    TlsRefused,
}

/// What a `flush` ended on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flushed {
    /// Everything queued is on the socket.
    Done,
    /// The socket is full; the next writable event continues.
    Blocked,
    /// The socket failed: the connection is dead.
    Failed,
}

impl Transport {
    pub(super) fn tls(config: Arc<ServerConfig>) -> Result<Transport, rustls::Error> {
        Ok(Transport::Tls(Box::new(ServerConnection::new(config)?)))
    }

    /// True while a TLS handshake has not completed (never for plain TCP).
    pub(super) fn handshaking(&self) -> bool {
        match self {
            Transport::Plain => false,
            Transport::Tls(t) => t.is_handshaking(),
        }
    }

    /// TLS records (handshake, alerts, close_notify) wait to be written.
    pub(super) fn wants_write(&self) -> bool {
        match self {
            Transport::Plain => false,
            Transport::Tls(t) => t.wants_write(),
        }
    }

    /// Reads plaintext into `buf` until the socket is drained or `buf` holds `room` bytes,
    /// through `scratch` (the loop's one read buffer).
    pub(super) fn fill(&mut self, sock: &mut TcpStream, buf: &mut Vec<u8>, room: usize, scratch: &mut [u8]) -> Filled {
        match self {
            Transport::Plain => fill_plain(sock, buf, room, scratch),
            Transport::Tls(t) => fill_tls(t, sock, buf, room, scratch),
        }
    }

    /// Writes `out[*pos..]` (plaintext), and any TLS records owed (handshake, alerts,
    /// close_notify), until done or the socket is full.
    pub(super) fn flush(&mut self, sock: &mut TcpStream, out: &[u8], pos: &mut usize) -> Flushed {
        match self {
            Transport::Plain => {
                while *pos < out.len() {
                    match sock.write(&out[*pos..]) {
                        Ok(0) => return Flushed::Failed,
                        Ok(n) => *pos += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return Flushed::Blocked,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => return Flushed::Failed,
                    }
                }
                Flushed::Done
            }
            Transport::Tls(t) => loop {
                // rustls takes what fits its send buffer; records go out before taking more.
                if *pos < out.len() && !t.is_handshaking() {
                    match t.writer().write(&out[*pos..]) {
                        Ok(n) => *pos += n,
                        Err(_) => return Flushed::Failed,
                    }
                }
                match write_records(t, sock) {
                    Flushed::Done if *pos < out.len() && !t.is_handshaking() => {}
                    // Plaintext waits for the handshake; the caller sends once it completes.
                    other => return other,
                }
            },
        }
    }

    /// Ends our direction: TLS close_notify (queued; `flush` sends it), at most once.
    pub(super) fn close_notify(&mut self) {
        if let Transport::Tls(t) = self
            && !t.is_handshaking()
        {
            t.send_close_notify();
        }
    }
}

/// The TCP FIN after our last bytes.
pub(super) fn shutdown_write(sock: &TcpStream) {
    // A socket already reset has nothing to half-close; it is closed next anyway.
    let _ = sock.shutdown(Shutdown::Write);
}

/// Reads and discards raw bytes (what the peer still sends after our FIN) until drained or
/// `max_bytes` were read; returns (bytes read, whether the peer closed).
pub(super) fn drain(sock: &mut TcpStream, scratch: &mut [u8], max_bytes: usize) -> (usize, bool) {
    let mut total = 0usize;
    while total < max_bytes {
        match sock.read(scratch) {
            Ok(0) => return (total, true),
            Ok(n) => total = total.saturating_add(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return (total, false),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return (total, true),
        }
    }
    (total, false)
}

fn fill_plain(sock: &mut TcpStream, buf: &mut Vec<u8>, room: usize, scratch: &mut [u8]) -> Filled {
    loop {
        let want = room.saturating_sub(buf.len()).min(scratch.len());
        if want == 0 {
            return Filled::Full;
        }
        match sock.read(&mut scratch[..want]) {
            Ok(0) => return Filled::Closed,
            Ok(n) => buf.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Filled::Drained,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Filled::Closed,
        }
    }
}

fn fill_tls(
    t: &mut ServerConnection,
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
    room: usize,
    scratch: &mut [u8],
) -> Filled {
    let mut eof = false;
    loop {
        // Plaintext already decrypted (e.g. pipelined requests) comes first.
        loop {
            let want = room.saturating_sub(buf.len()).min(scratch.len());
            if want == 0 {
                return Filled::Full;
            }
            match t.reader().read(&mut scratch[..want]) {
                // close_notify received.
                Ok(0) => return Filled::Closed,
                Ok(n) => buf.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // UnexpectedEof: TCP closed without close_notify.
                Err(_) => return Filled::Closed,
            }
        }
        if eof {
            return Filled::Closed;
        }
        match t.read_tls(sock) {
            Ok(0) => eof = true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Filled::Drained,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // Includes rustls refusing more while its buffers are full (cannot happen: the
            // plaintext is drained above before every read).
            Err(_) => return Filled::Closed,
        }
        if t.process_new_packets().is_err() {
            return Filled::TlsRefused;
        }
    }
}

fn write_records(t: &mut ServerConnection, sock: &mut TcpStream) -> Flushed {
    while t.wants_write() {
        match t.write_tls(sock) {
            Ok(0) => return Flushed::Failed,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Flushed::Blocked,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Flushed::Failed,
        }
    }
    Flushed::Done
}
