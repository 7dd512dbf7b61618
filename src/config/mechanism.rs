//! Mechanism configuration (`[[mechanisms]]` in the config file): how a
//! configured mechanism reaches the device, its cost and timeouts.
//!
//! Owns the plain, parsed form only; `push::mechanism` re-exports it and adds
//! the measurements. Must never perform I/O or name the push service.

use serde::{Deserialize, Serialize};

/// How a mechanism reaches the device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Kind {
    /// pulsegate's own MQTT connections; delivered on PUBACK (QoS 1).
    Persistent,
    /// HTTP POST to an external relay (SMS gateway, APNs/FCM relay); success on 2xx.
    Webhook { url: String },
}

/// A configured mechanism (`[[mechanisms]]` in the config file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawMechanismConfig")]
pub struct MechanismConfig {
    pub name: String,
    #[serde(flatten)]
    pub kind: Kind,
    /// Cost units per message (0 = free).
    #[serde(default)]
    pub cost: f64,
    /// An attempt with no outcome after this long has failed.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Latency assumed before anything is measured.
    #[serde(default = "default_expected_latency_ms")]
    pub expected_latency_ms: u64,
}

/// The file form: flat, with unknown fields refused (serde's `flatten` cannot
/// refuse them, so the enum is built here).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMechanismConfig {
    name: String,
    kind: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    cost: f64,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_expected_latency_ms")]
    expected_latency_ms: u64,
}

impl TryFrom<RawMechanismConfig> for MechanismConfig {
    type Error = String;

    fn try_from(r: RawMechanismConfig) -> Result<Self, String> {
        let kind = match (r.kind.as_str(), r.url) {
            ("webhook", Some(url)) => Kind::Webhook { url },
            ("webhook", None) => return Err(format!("mechanism {}: a webhook needs a url", r.name)),
            ("persistent", _) => return Err("the persistent mechanism is built in".into()),
            (other, _) => return Err(format!("mechanism {}: unknown kind {other:?} (known: webhook)", r.name)),
        };
        Ok(MechanismConfig {
            name: r.name,
            kind,
            cost: r.cost,
            timeout_ms: r.timeout_ms,
            expected_latency_ms: r.expected_latency_ms,
        })
    }
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_expected_latency_ms() -> u64 {
    500
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_config_parses_from_toml_shape() {
        let c: MechanismConfig =
            serde_json::from_str(r#"{"name":"sms","kind":"webhook","url":"http://127.0.0.1:9/x","cost":3.5}"#)
                .expect("valid");
        assert_eq!(
            c.kind,
            Kind::Webhook {
                url: "http://127.0.0.1:9/x".into()
            }
        );
        assert_eq!(c.timeout_ms, 10_000);
        assert!(
            serde_json::from_str::<MechanismConfig>(r#"{"name":"x","kind":"webhook","url":"http://a/","colour":1}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<MechanismConfig>(r#"{"name":"x","kind":"carrier-pigeon"}"#).is_err());
    }
}
