//! MQTT over TLS, sans-IO: each TLS connection's rustls state
//! (`UnbufferedServerConnection`), driven by the bytes the ring delivered.
//! Ciphertext in (`Active::tls_in`) -> records processed -> plaintext to
//! the MQTT side (`TlsApp::deliver`); handshake flights, alerts and the
//! MQTT side's plaintext (`Active::out`, sealed once the handshake is done)
//! -> ciphertext out (`Active::tls_out`), which is what the loop sends.
//!
//! Owns the per-connection rustls states (`TlsConns`, by slab key) and the
//! record pump (`TlsConn::drive`). Must never own a byte buffer past a call:
//! the caller lends the ciphertext buffers (from the connection's `Active`,
//! which goes back to the shard's pool when the connection is idle), so an
//! idle TLS connection holds its rustls keys and state and nothing else.
//! Never panics on peer bytes: a bad record, a failed handshake or an alert
//! ends that connection (with the alert rustls produced, if any).

use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncodeTlsData, EncryptError, WriteTraffic};
use rustls::{HandshakeKind, ServerConfig};

/// Ciphertext a connection may hold unprocessed, at most: one handshake
/// message split over records (rustls joins them in place, up to 64 KiB)
/// plus what one receive brings. Past it the peer is refused.
pub const TLS_IN_BYTES_MAX: usize = 96 * 1024;
/// States one `drive` call steps through, at most (each step consumes a
/// record, encodes a flight or stops: a guard, never reached by a peer
/// bounded by `TLS_IN_BYTES_MAX`).
const TLS_STEPS_PER_DRIVE_MAX: usize = 8192;
/// Alert records drained after a failure, at most.
const TLS_ALERT_STEPS_MAX: usize = 8;

/// The MQTT side of one TLS connection, as the pump sees it.
pub trait TlsApp {
    /// Decrypted application bytes, in order.
    fn deliver(&mut self, plaintext: &[u8]);
    /// Lends the plaintext waiting to be sealed (the pump empties it).
    fn with_plaintext(&mut self, seal: &mut dyn FnMut(&mut Vec<u8>));
    /// The connection is closing: a close_notify follows the last record.
    fn closing(&self) -> bool;
}

/// How a `drive` ended.
#[derive(Debug)]
pub enum TlsEnd {
    /// Still open (more bytes may come, output may be waiting).
    Open,
    /// The peer sent close_notify.
    PeerClosed,
    /// The connection is over: a bad record, a failed handshake, an alert
    /// received, input past `TLS_IN_BYTES_MAX`. Any alert to send is in the output.
    Failed(rustls::Error),
}

/// What one `drive` did.
#[derive(Debug)]
pub struct Driven {
    pub end: TlsEnd,
    /// The handshake finished during this call (full or resumed).
    pub handshake_completed: Option<HandshakeKind>,
    /// Whether the handshake had finished before the call (a failure then
    /// is an established connection's, not a handshake's).
    pub was_established: bool,
}

/// One connection's rustls state (keys, sequence numbers, handshake state).
pub struct TlsConn {
    conn: UnbufferedServerConnection,
    handshake_done: bool,
    close_notify_sent: bool,
    /// A drive failed: nothing more is read or sealed (the alert is out).
    failed: bool,
}

impl TlsConn {
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsConn, rustls::Error> {
        Ok(TlsConn {
            conn: UnbufferedServerConnection::new(config)?,
            handshake_done: false,
            close_notify_sent: false,
            failed: false,
        })
    }

    pub fn is_established(&self) -> bool {
        self.handshake_done
    }

    /// The negotiated ALPN protocol, once known.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Processes `incoming` (ciphertext; what is consumed is removed, a
    /// partial record stays), hands plaintext to `app`, and appends to
    /// `outgoing` every record to send: handshake flights, session tickets,
    /// the app's sealed plaintext (once the handshake is done), alerts.
    pub fn drive(&mut self, incoming: &mut Vec<u8>, outgoing: &mut Vec<u8>, app: &mut dyn TlsApp) -> Driven {
        let was_established = self.handshake_done;
        if self.failed {
            // Reported once already; a failed connection only waits for its close.
            incoming.clear();
            return Driven {
                end: TlsEnd::Open,
                handshake_completed: None,
                was_established,
            };
        }
        let mut failed: Option<rustls::Error> = None;
        let mut peer_closed = false;
        if incoming.len() > TLS_IN_BYTES_MAX {
            failed = Some(rustls::Error::General(format!(
                "{} bytes of unprocessed TLS input, more than {TLS_IN_BYTES_MAX}",
                incoming.len()
            )));
        }
        let mut steps = 0;
        while failed.is_none() {
            steps += 1;
            if steps > TLS_STEPS_PER_DRIVE_MAX {
                failed = Some(rustls::Error::General("TLS input took too many steps".into()));
                break;
            }
            let status = self.conn.process_tls_records(&mut incoming[..]);
            let discard = status.discard;
            let mut stop = false;
            match status.state {
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    while let Some(record) = records.next_record() {
                        match record {
                            Ok(record) => app.deliver(record.payload),
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                }
                // Early data is off (max_early_data_size 0): drained, never delivered.
                Ok(ConnectionState::ReadEarlyData(mut records)) => while records.next_record().is_some() {},
                Ok(ConnectionState::EncodeTlsData(mut flight)) => encode(&mut flight, outgoing),
                // Queued in `outgoing`: the loop sends it next.
                Ok(ConnectionState::TransmitTlsData(sent)) => sent.done(),
                Ok(ConnectionState::BlockedHandshake) => stop = true,
                Ok(ConnectionState::WriteTraffic(mut writer)) => {
                    if let Err(e) = seal(&mut writer, outgoing, app, &mut self.close_notify_sent) {
                        failed = Some(e);
                    }
                    stop = true;
                }
                // Edge-triggered, once: the next call reaches WriteTraffic,
                // so what the app still has to say goes out.
                Ok(ConnectionState::PeerClosed) => peer_closed = true,
                Ok(ConnectionState::Closed) => stop = true,
                Ok(_) => stop = true,
                Err(e) => failed = Some(e),
            }
            incoming.drain(..discard.min(incoming.len()));
            if stop {
                break;
            }
        }
        let mut handshake_completed = None;
        if failed.is_none() && !self.handshake_done && !self.conn.is_handshaking() {
            self.handshake_done = true;
            handshake_completed = Some(self.conn.handshake_kind().unwrap_or(HandshakeKind::Full));
        }
        let end = match failed {
            Some(e) => {
                self.failed = true;
                incoming.clear();
                self.drain_alert(outgoing);
                TlsEnd::Failed(e)
            }
            None if peer_closed => TlsEnd::PeerClosed,
            None => TlsEnd::Open,
        };
        Driven {
            end,
            handshake_completed,
            was_established,
        }
    }

    /// After a failure: the fatal alert rustls queued, if any, goes out.
    fn drain_alert(&mut self, outgoing: &mut Vec<u8>) {
        for _ in 0..TLS_ALERT_STEPS_MAX {
            let status = self.conn.process_tls_records(&mut []);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut alert)) => encode(&mut alert, outgoing),
                Ok(ConnectionState::TransmitTlsData(sent)) => sent.done(),
                _ => return,
            }
        }
    }
}

/// Seals the app's plaintext into records (and a close_notify when it is closing).
fn seal(
    writer: &mut WriteTraffic<'_, rustls::server::ServerConnectionData>,
    outgoing: &mut Vec<u8>,
    app: &mut dyn TlsApp,
    close_notify_sent: &mut bool,
) -> Result<(), rustls::Error> {
    let mut result = Ok(());
    app.with_plaintext(&mut |plaintext: &mut Vec<u8>| {
        if plaintext.is_empty() {
            return;
        }
        match encrypt(writer, plaintext, outgoing) {
            Ok(()) => plaintext.clear(),
            Err(e) => result = Err(e),
        }
    });
    result?;
    if app.closing() && !*close_notify_sent {
        *close_notify_sent = true;
        let start = outgoing.len();
        let need = match writer.queue_close_notify(&mut []) {
            Err(EncryptError::InsufficientSize(s)) => s.required_size,
            _ => 0,
        };
        outgoing.resize(start + need, 0);
        let written = writer.queue_close_notify(&mut outgoing[start..]).unwrap_or(0);
        outgoing.truncate(start + written);
    }
    Ok(())
}

/// Appends one handshake record (or alert) to `outgoing`.
fn encode(flight: &mut EncodeTlsData<'_, rustls::server::ServerConnectionData>, outgoing: &mut Vec<u8>) {
    let start = outgoing.len();
    let need = match flight.encode(&mut []) {
        Err(EncodeError::InsufficientSize(s)) => s.required_size,
        _ => return,
    };
    outgoing.resize(start + need, 0);
    let written = flight.encode(&mut outgoing[start..]).unwrap_or(0);
    outgoing.truncate(start + written);
}

/// Appends `plaintext`, sealed into application-data records, to `outgoing`.
fn encrypt(
    writer: &mut WriteTraffic<'_, rustls::server::ServerConnectionData>,
    plaintext: &[u8],
    outgoing: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    let start = outgoing.len();
    let need = match writer.encrypt(plaintext, &mut []) {
        Ok(_) => return Ok(()),
        Err(EncryptError::InsufficientSize(s)) => s.required_size,
        Err(e) => return Err(rustls::Error::General(format!("cannot encrypt: {e}"))),
    };
    outgoing.resize(start + need, 0);
    match writer.encrypt(plaintext, &mut outgoing[start..]) {
        Ok(written) => {
            outgoing.truncate(start + written);
            Ok(())
        }
        Err(e) => {
            outgoing.truncate(start);
            Err(rustls::Error::General(format!("cannot encrypt: {e}")))
        }
    }
}

/// The shard's TLS connections, by slab key (an entry only for a TLS one).
#[derive(Default)]
pub struct TlsConns {
    // Boxed: a key without TLS costs one pointer, a TLS one its state.
    #[allow(clippy::vec_box)]
    by_key: Vec<Option<Box<TlsConn>>>,
    len: usize,
}

impl TlsConns {
    /// Gives `key` a fresh TLS state (replacing any left over).
    pub fn start(&mut self, key: u32, config: Arc<ServerConfig>) -> Result<(), rustls::Error> {
        let conn = Box::new(TlsConn::new(config)?);
        let i = key as usize;
        if self.by_key.len() <= i {
            self.by_key.resize_with(i + 1, || None);
        }
        if self.by_key[i].replace(conn).is_none() {
            self.len += 1;
        }
        Ok(())
    }

    pub fn get_mut(&mut self, key: u32) -> Option<&mut TlsConn> {
        self.by_key.get_mut(key as usize).and_then(|c| c.as_deref_mut())
    }

    /// Drops `key`'s TLS state (its slot was freed).
    pub fn remove(&mut self, key: u32) {
        if let Some(slot) = self.by_key.get_mut(key as usize)
            && slot.take().is_some()
        {
            self.len -= 1;
        }
    }

    /// TLS connections held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
#[path = "tls_conn_tests.rs"]
mod tests;
