//! Runtime configuration: command-line flags over a TOML file over embedded
//! defaults, parsed and validated once at start-up.
//!
//! Every setting is declared once, in `table.rs`; `macros.rs` derives the
//! flags, the file schema, `Config`, the merge, the range checks, the printed
//! configuration (`render.rs`) and the README's settings table from it.
//! Checks between settings and of the file-only sections (`[[sps]]`,
//! `[profiles.NAME]`, `[[mechanisms]]`) are `validate.rs`; the profile and
//! mechanism schemas are `profile.rs` and `mechanism.rs`.
//!
//! Owns `Config` and its validation. Must never be re-read or mutated after
//! start-up (every other module receives an `Arc<Config>`), and never name a
//! module above it in `lib.rs`'s layers.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::limits;

mod macros;
pub mod mechanism;
pub mod profile;
mod render;
mod table;
#[cfg(test)]
mod tests;
mod validate;
pub mod value;

pub use render::{Secrets, settings_markdown};
pub use table::{Config, Flags, settings};
use value::{Number, Range};

/// Which event-loop backend the shards run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// io_uring, falling back to epoll when the kernel refuses the ring.
    Auto,
    /// io_uring only; start-up fails if it is unavailable.
    Uring,
    /// mio/epoll.
    Epoll,
}

/// Which connections heartbeat-load relief picks first (seeds/004's preset rule).
#[derive(clap::ValueEnum, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum ReliefRule {
    /// The most recent connections.
    Newest,
    /// The lowest match degree (network and location vs this host), newest among equals.
    MatchDegree,
}

/// How devices prove who they are in CONNECT (`[device_auth] kind`).
#[derive(clap::ValueEnum, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lowercase")]
pub enum DeviceAuthKind {
    /// Everyone is welcome (must be chosen explicitly to silence the start-up warning).
    None,
    /// The CONNECT password is a JWT whose `clientid` claim is the client id.
    Jwt,
}

/// The JWT signature algorithm (`[device_auth] algorithm`).
#[derive(clap::ValueEnum, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret (the key file's raw bytes).
    #[value(name = "HS256")]
    HS256,
    /// RSA PKCS#1 v1.5 SHA-256 (the key file is the PEM public key).
    #[value(name = "RS256")]
    RS256,
    /// ECDSA P-256 SHA-256 (the key file is the PEM public key).
    #[value(name = "ES256")]
    ES256,
}

/// The `[device_auth]` section: the same settings as the `device_auth_*` flags.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceAuthSection {
    kind: Option<DeviceAuthKind>,
    algorithm: Option<JwtAlgorithm>,
    key_file: Option<PathBuf>,
    leeway_s: Option<u32>,
}

/// An application server allowed to push (`[[sps]]` in the config file).
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpConfig {
    pub name: String,
    /// Bearer token for the HTTP API.
    pub api_key: String,
    /// Name of a `[profiles.NAME]` used when a request names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_profile: Option<String>,
    /// Messages accepted per second (token bucket, burst = one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_s: Option<f64>,
    /// May call the operator endpoints (`/v1/admin/...`).
    #[serde(default)]
    pub admin: bool,
}

/// One row of the settings table, as the README shows it.
#[derive(Clone, Debug)]
pub struct SettingInfo {
    /// The TOML key; the flag is `--` + the key with dashes.
    pub name: &'static str,
    pub type_doc: String,
    /// The default as TOML (`None`: unset).
    pub default_toml: Option<String>,
    /// What the README says instead, for a computed default ("CPUs").
    pub default_note: Option<&'static str>,
    pub range: Range,
    /// Empty when the setting has none.
    pub unit: &'static str,
    pub doc: &'static str,
}

/// Why a configuration was refused.
#[derive(Debug)]
pub enum ConfigError {
    FileUnreadable {
        path: PathBuf,
        error: std::io::Error,
    },
    FileInvalid {
        path: PathBuf,
        error: String,
    },
    /// A setting outside its range (the range may depend on another setting:
    /// `max_connections` on `shards`).
    OutOfRange {
        setting: &'static str,
        value: Number,
        range: Range,
    },
    /// A value of the right type that still makes no sense.
    Invalid {
        setting: String,
        why: String,
    },
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::FileUnreadable { path, error } => {
                write!(f, "cannot read config file {}: {error}", path.display())
            }
            ConfigError::FileInvalid { path, error } => {
                write!(f, "invalid config file {}: {error}", path.display())
            }
            ConfigError::OutOfRange { setting, value, range } => {
                write!(f, "{setting} = {value} is out of range (allowed: {range})")
            }
            ConfigError::Invalid { setting, why } => write!(f, "{setting}: {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Flags over file over defaults, then validation.
    pub fn from_flags(flags: &Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            None => table::FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| ConfigError::FileUnreadable {
                    path: path.clone(),
                    error,
                })?;
                Self::parse_file(&text).map_err(|error| ConfigError::FileInvalid {
                    path: path.clone(),
                    error,
                })?
            }
        };
        let file = file.fold_device_auth()?;
        let mut config = table::merge(flags, file)?;
        config.validate()?;
        config.listen_shards = config.listen_shards.min(config.shards);
        Ok(config)
    }

    fn parse_file(text: &str) -> Result<table::FileConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Connection slots each shard owns.
    pub fn connections_per_shard(&self) -> u32 {
        let per = self.max_connections.div_ceil(self.shards as u64);
        per.min(limits::CONNECTIONS_PER_SHARD_MAX as u64) as u32
    }
}
