//! Device authentication: CONNECT's client id, username and password go to
//! an `Authenticator`, which accepts or refuses with a `Refusal` (the MQTT 5
//! CONNACK reason and a counter label). `AllowAll` accepts everyone (`kind =
//! "none"`, or no `[device_auth]` at all, which start-up warns about); `jwt`
//! checks a JSON Web Token in the password (`jwt.rs`). `from_config` builds
//! the one the settings ask for; SIGHUP calls `reload` to re-read key files.
//!
//! Owns the interface, the refusal reasons and their counters. Must never
//! block a shard: `authenticate` runs on a shard thread in the middle of a
//! CONNECT and does no I/O (keys are read at start and on `reload` only).

mod jwt;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{Config, DeviceAuthKind};
use crate::protocol::mqtt::reason;

pub use jwt::{JwtAuthenticator, JwtKeys};

/// What a device presented in CONNECT.
pub struct AuthRequest<'a> {
    /// The client id as sent (empty when the client asked the server to assign one).
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
}

/// Why a CONNECT was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No password, where a token was required.
    MissingPassword,
    /// The password is not a well-formed token of the configured algorithm
    /// (too long, bad encoding, wrong `alg`, a required claim missing).
    MalformedToken,
    /// The signature does not verify against the configured key.
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// The token is valid but names another client id.
    ClientIdMismatch,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::MissingPassword,
        Refusal::MalformedToken,
        Refusal::BadSignature,
        Refusal::Expired,
        Refusal::NotYetValid,
        Refusal::ClientIdMismatch,
    ];

    /// The MQTT 5 CONNACK reason code (3.1.1 return codes 4 and 5 follow
    /// from it in the encoder).
    pub fn reason_code(self) -> u8 {
        match self {
            Refusal::ClientIdMismatch => reason::NOT_AUTHORIZED,
            _ => reason::BAD_USER_NAME_OR_PASSWORD,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Refusal::MissingPassword => "missing_password",
            Refusal::MalformedToken => "malformed_token",
            Refusal::BadSignature => "bad_signature",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::ClientIdMismatch => "client_id_mismatch",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Accepted and refused CONNECTs, by reason (shared by every shard).
#[derive(Default)]
pub struct AuthCounters {
    accepted: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

impl AuthCounters {
    fn count(&self, outcome: Result<(), Refusal>) -> Result<(), Refusal> {
        match outcome {
            Ok(()) => self.accepted.fetch_add(1, Ordering::Relaxed),
            Err(r) => self.refused[r.index()].fetch_add(1, Ordering::Relaxed),
        };
        outcome
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn refused(&self, r: Refusal) -> u64 {
        self.refused[r.index()].load(Ordering::Relaxed)
    }

    /// Key reloads that succeeded and that failed (the old key stayed).
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
        )
    }

    fn count_reload(&self, ok: bool) {
        let c = if ok { &self.reloads_ok } else { &self.reloads_failed };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Decides whether a device may connect.
pub trait Authenticator: Send + Sync {
    /// Accepts or refuses; counts the outcome in `counters()`.
    fn authenticate(&self, request: &AuthRequest<'_>) -> Result<(), Refusal>;

    /// Re-reads key material (SIGHUP); on error the previous keys stay and
    /// connections already up are never touched. Returns what was loaded.
    fn reload(&self) -> Result<String, String>;

    fn counters(&self) -> &AuthCounters;

    /// The `kind` label for metrics and the start-up line.
    fn kind(&self) -> &'static str;
}

/// Every device is welcome.
#[derive(Default)]
pub struct AllowAll {
    counters: AuthCounters,
}

impl Authenticator for AllowAll {
    fn authenticate(&self, _request: &AuthRequest<'_>) -> Result<(), Refusal> {
        self.counters.count(Ok(()))
    }

    fn reload(&self) -> Result<String, String> {
        Ok("no device keys (device_auth kind none)".into())
    }

    fn counters(&self) -> &AuthCounters {
        &self.counters
    }

    fn kind(&self) -> &'static str {
        "none"
    }
}

/// The authenticator the settings ask for; an error names the key file and
/// what is wrong with it.
pub fn from_config(cfg: &Config) -> Result<Arc<dyn Authenticator>, String> {
    match cfg.device_auth_kind {
        None | Some(DeviceAuthKind::None) => Ok(Arc::new(AllowAll::default())),
        Some(DeviceAuthKind::Jwt) => {
            let Some(key_file) = cfg.device_auth_key_file.clone() else {
                return Err("device_auth kind jwt needs key_file".into());
            };
            let auth = JwtAuthenticator::load(cfg.device_auth_algorithm, key_file, cfg.device_auth_leeway_s)?;
            Ok(Arc::new(auth))
        }
    }
}
