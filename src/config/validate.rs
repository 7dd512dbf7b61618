//! Validation beyond one setting's own range: ranges that depend on another
//! setting, and the file-only sections (`[[sps]]`, `[profiles.NAME]`,
//! `[[mechanisms]]`).
//!
//! Owns those rules. Must never change a value: a configuration is accepted
//! as it is or refused with the setting, the value and what is allowed.

use super::mechanism::Kind;
use super::value::{Number, Range};
use super::{Config, ConfigError, table};
use crate::limits;

impl Config {
    /// Every rule of the configuration; the first broken one is the error.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        table::check_ranges(self)?;
        self.check_between_settings()?;
        self.check_file_sections()
    }

    fn check_between_settings(&self) -> Result<(), ConfigError> {
        let per_shard = Range::Int {
            min: 1,
            max: limits::CONNECTIONS_PER_SHARD_MAX as u64 * self.shards as u64,
        };
        if !per_shard.contains(Number::Int(self.max_connections)) {
            return Err(ConfigError::OutOfRange {
                setting: "max_connections",
                value: Number::Int(self.max_connections),
                range: per_shard,
            });
        }
        let select = Range::Float {
            min: 1.0,
            inclusive: true,
            max: self.dispersal_threshold_factor,
        };
        if !select.contains(Number::Float(self.dispersal_select_factor)) {
            return Err(ConfigError::OutOfRange {
                setting: "dispersal_select_factor",
                value: Number::Float(self.dispersal_select_factor),
                range: select,
            });
        }
        let batch = Range::Int {
            min: 1,
            max: self.store_queue_ops_max as u64,
        };
        if !batch.contains(Number::Int(self.store_batch_ops_max as u64)) {
            return Err(ConfigError::OutOfRange {
                setting: "store_batch_ops_max",
                value: Number::Int(self.store_batch_ops_max as u64),
                range: batch,
            });
        }
        if self.store_retry_ms_min > self.store_retry_ms_max {
            return Err(ConfigError::OutOfRange {
                setting: "store_retry_ms_min",
                value: Number::Int(self.store_retry_ms_min),
                range: Range::Int {
                    min: 1,
                    max: self.store_retry_ms_max,
                },
            });
        }
        let tls_wanted = if self.mqtt_tls_listen.is_some() {
            Some("mqtt_tls_listen")
        } else if self.http_tls {
            Some("http_tls")
        } else {
            None
        };
        if let Some(setting) = tls_wanted
            && (self.tls_cert_file.is_none() || self.tls_key_file.is_none())
        {
            return Err(ConfigError::Invalid {
                setting: setting.into(),
                why: "needs tls_cert_file and tls_key_file (PEM certificate chain and private key)".into(),
            });
        }
        if self.device_auth_kind == Some(super::DeviceAuthKind::Jwt) && self.device_auth_key_file.is_none() {
            return Err(ConfigError::Invalid {
                setting: "device_auth.kind".into(),
                why: "jwt needs key_file (the HS256 secret or the RS256/ES256 PEM public key)".into(),
            });
        }
        Ok(())
    }

    fn check_file_sections(&self) -> Result<(), ConfigError> {
        let invalid = |setting: String, why: String| Err(ConfigError::Invalid { setting, why });
        for (name, p) in &self.profiles {
            if let Err(why) = super::profile::validate(p) {
                return invalid(format!("profiles.{name}"), why);
            }
        }
        let mut keys = std::collections::HashSet::new();
        for sp in &self.sps {
            if sp.api_key.len() < 8 {
                return invalid(
                    format!("sps.{}.api_key", sp.name),
                    "must be at least 8 characters".into(),
                );
            }
            if !keys.insert(sp.api_key.as_str()) {
                return invalid(format!("sps.{}.api_key", sp.name), "is used by another SP".into());
            }
            if let Some(p) = &sp.default_profile
                && !self.profiles.contains_key(p)
            {
                return invalid(format!("sps.{}.default_profile", sp.name), format!("no [profiles.{p}]"));
            }
            if sp.rate_per_s.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                return invalid(
                    format!("sps.{}.rate_per_s", sp.name),
                    "must be a positive number".into(),
                );
            }
        }
        let mut names = std::collections::HashSet::from(["persistent"]);
        for m in &self.mechanisms {
            if !names.insert(m.name.as_str()) {
                return invalid(format!("mechanisms.{}", m.name), "duplicate mechanism name".into());
            }
            // Syntax here; the addresses are checked at start-up once the listeners are bound.
            if let Kind::Webhook { url } = &m.kind
                && let Err(why) = crate::outbound::url_policy::parse(url)
            {
                return invalid(format!("mechanisms.{}.url", m.name), why.to_string());
            }
        }
        Ok(())
    }
}
