//! The device authentication hook: CONNECT's client id, username and password
//! go to an `Authenticator`; the embedded default accepts everyone.
//!
//! Owns the hook's interface. Must never block for long: it runs on a shard
//! thread in the middle of a CONNECT.

/// What a device presented in CONNECT.
pub struct AuthRequest<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
}

/// Decides whether a device may connect. `Err` carries the MQTT 5 CONNACK
/// reason code (e.g. 0x86 bad user name or password, 0x87 not authorized).
pub trait Authenticator: Send + Sync {
    fn authenticate(&self, request: &AuthRequest<'_>) -> Result<(), u8>;
}

/// The embedded default: every device is welcome.
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate(&self, _request: &AuthRequest<'_>) -> Result<(), u8> {
        Ok(())
    }
}
