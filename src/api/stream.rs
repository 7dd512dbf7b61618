//! The byte stream of one API connection: plain TCP, or TLS (rustls) over TCP. Both read
//! and write like a socket, so the connection loop in `server` is the same for HTTP and
//! HTTPS.
//!
//! Owns the TLS record layer of a connection: feeding socket bytes to rustls, writing its
//! records out, close_notify. Must never loop on the socket on its own: one `read` makes at
//! most one socket read (during the handshake, or mid-record, a read that yields no
//! plaintext returns `WouldBlock`), so the caller's idle and slowloris deadlines bound the
//! handshake and every record exactly as they bound plain requests. Never panics on
//! network data.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;

use rustls::{ServerConfig, ServerConnection};

/// A connection's stream.
pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

/// rustls' server state with its socket.
pub(super) struct TlsStream {
    conn: ServerConnection,
    sock: TcpStream,
    /// close_notify sent.
    closed: bool,
}

impl Stream {
    /// A TLS stream over `sock` with `config` (the handshake happens as the stream is read).
    pub(super) fn tls(sock: TcpStream, config: Arc<ServerConfig>) -> Result<Stream, rustls::Error> {
        let conn = ServerConnection::new(config)?;
        Ok(Stream::Tls(Box::new(TlsStream {
            conn,
            sock,
            closed: false,
        })))
    }

    /// The socket, for timeouts.
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.sock,
        }
    }

    /// True while a TLS handshake has not completed (never for plain TCP).
    pub(super) fn handshaking(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.conn.is_handshaking(),
        }
    }

    /// Writes all of `bytes` and pushes them to the socket.
    pub(super) fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes)?;
        self.flush()
    }

    /// Ends our direction: a TLS close_notify (best effort), then the TCP FIN. What the
    /// peer still sends may be drained from `tcp()` afterwards (as raw bytes).
    pub(super) fn close_write(&mut self) -> io::Result<()> {
        self.close_notify();
        self.tcp().shutdown(Shutdown::Write)
    }

    /// TLS: tells the peer we are done (a close without a word, e.g. on the idle timeout),
    /// best effort and at most once; plain TCP: nothing.
    pub(super) fn close_notify(&mut self) {
        if let Stream::Tls(t) = self
            && !t.conn.is_handshaking()
            && !t.closed
        {
            t.closed = true;
            t.conn.send_close_notify();
            // A peer that stopped reading must not keep us from closing.
            let _ = t.flush_records();
        }
    }
}

impl TlsStream {
    /// Writes every pending TLS record (each socket write bounded by the write timeout).
    fn flush_records(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.sock)? == 0 {
                return Err(ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    fn read_plaintext(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Decrypted bytes already waiting (e.g. pipelined requests) come first.
        match self.conn.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        // Handshake answers or session tickets owed to the peer go out before we wait.
        self.flush_records()?;
        // One socket read (bounded by the socket's read timeout).
        self.conn.read_tls(&mut self.sock)?;
        if let Err(e) = self.conn.process_new_packets() {
            // rustls queued an alert saying why; send it if the peer still listens.
            let _ = self.flush_records();
            return Err(io::Error::new(ErrorKind::InvalidData, e));
        }
        self.flush_records()?;
        // Ok(0) after close_notify, UnexpectedEof after a bare FIN, WouldBlock when these
        // bytes completed no record (or only the handshake): the caller checks its deadline.
        self.conn.reader().read(buf)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read_plaintext(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => {
                // rustls takes what fits its send buffer; push it out before taking more.
                let n = t.conn.writer().write(buf)?;
                t.flush_records()?;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => {
                t.conn.writer().flush()?;
                t.flush_records()
            }
        }
    }
}
