//! The device's stored heartbeat state (seeds/004): current interval, server address,
//! "optimal" flag, location and network (MCC-MNC), as JSON, reused on the next connection.
//!
//! Owns: the stored shape, its bounds, and the reuse rule: the stored server is tried
//! first; the stored interval is reused when the device is still on the same network and
//! location (the same NAT), and probing starts over from the minimum when it moved.
//!
//! Must never: touch the file system (the caller reads and writes the text), or accept a
//! state larger than `STATE_BYTES_MAX` or with an empty server address.

use serde::{Deserialize, Serialize};

use super::heartbeat::{Heartbeat, HeartbeatPolicy};

/// Largest stored state accepted.
pub const STATE_BYTES_MAX: usize = 4096;
/// Longest server address stored (a host name of 253 bytes, a colon and a port).
pub const SERVER_BYTES_MAX: usize = 260;
/// Longest location or MCC-MNC string stored.
pub const LABEL_BYTES_MAX: usize = 256;

/// What a device keeps between connections.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredState {
    /// Current heartbeat interval.
    pub heartbeat_s: u16,
    /// Whether `heartbeat_s` is the optimal value (found by probing).
    pub optimal: bool,
    /// The server last connected to ("host:port").
    pub server: String,
    /// Where the device is (free text, e.g. a cell or area id; "" = unknown).
    #[serde(default)]
    pub location: String,
    /// Mobile network, "MCC-MNC" ("" = unknown).
    #[serde(default)]
    pub mcc_mnc: String,
}

/// Why a stored state was refused.
#[derive(Debug)]
pub enum StateError {
    TooLarge { bytes: usize },
    Invalid(serde_json::Error),
    EmptyServer,
    FieldTooLong { field: &'static str, bytes: usize },
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::TooLarge { bytes } => write!(f, "stored state of {bytes} bytes exceeds {STATE_BYTES_MAX}"),
            StateError::Invalid(e) => write!(f, "stored state is not valid JSON: {e}"),
            StateError::EmptyServer => write!(f, "stored state has an empty server address"),
            StateError::FieldTooLong { field, bytes } => write!(f, "stored {field} is {bytes} bytes long"),
        }
    }
}

impl std::error::Error for StateError {}

/// Two labels differ only when both are known.
fn differs(stored: &str, now: &str) -> bool {
    !stored.is_empty() && !now.is_empty() && stored != now
}

impl StoredState {
    pub fn to_json(&self) -> String {
        // A struct of strings, integers and a bool always serializes.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    pub fn from_json(text: &str) -> Result<StoredState, StateError> {
        if text.len() > STATE_BYTES_MAX {
            return Err(StateError::TooLarge { bytes: text.len() });
        }
        let s: StoredState = serde_json::from_str(text).map_err(StateError::Invalid)?;
        if s.server.trim().is_empty() {
            return Err(StateError::EmptyServer);
        }
        for (field, v, max) in [
            ("server", &s.server, SERVER_BYTES_MAX),
            ("location", &s.location, LABEL_BYTES_MAX),
            ("mcc_mnc", &s.mcc_mnc, LABEL_BYTES_MAX),
        ] {
            if v.len() > max {
                return Err(StateError::FieldTooLong { field, bytes: v.len() });
            }
        }
        Ok(s)
    }

    /// Whether the device is still behind the same network path as when it stored this.
    pub fn same_network(&self, mcc_mnc: &str, location: &str) -> bool {
        !differs(&self.mcc_mnc, mcc_mnc) && !differs(&self.location, location)
    }

    /// The heartbeat to start the next connection with.
    pub fn heartbeat(&self, policy: &HeartbeatPolicy, mcc_mnc: &str, location: &str) -> Heartbeat {
        if self.same_network(mcc_mnc, location) {
            Heartbeat::resume(policy, self.heartbeat_s, self.optimal)
        } else {
            Heartbeat::new(policy)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoredState {
        StoredState {
            heartbeat_s: 240,
            optimal: true,
            server: "10.1.2.3:1883".into(),
            location: "cell-4711".into(),
            mcc_mnc: "460-01".into(),
        }
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let text = s.to_json();
        assert!(text.contains("\"heartbeat_s\": 240") && text.contains("\"optimal\": true"));
        assert_eq!(StoredState::from_json(&text).unwrap(), s);
        // Older or hand-written files may lack the labels.
        let minimal = r#"{"heartbeat_s":60,"optimal":false,"server":"gw:1883"}"#;
        let m = StoredState::from_json(minimal).unwrap();
        assert_eq!((m.location.as_str(), m.mcc_mnc.as_str()), ("", ""));
    }

    #[test]
    fn refuses_bad_states() {
        assert!(matches!(StoredState::from_json("{"), Err(StateError::Invalid(_))));
        assert!(matches!(
            StoredState::from_json(r#"{"heartbeat_s":60,"optimal":false,"server":" "}"#),
            Err(StateError::EmptyServer)
        ));
        let long = format!(
            r#"{{"heartbeat_s":60,"optimal":false,"server":"a:1","location":"{}"}}"#,
            "x".repeat(300)
        );
        assert!(matches!(
            StoredState::from_json(&long),
            Err(StateError::FieldTooLong { field: "location", .. })
        ));
        let huge = " ".repeat(STATE_BYTES_MAX + 1);
        assert!(matches!(
            StoredState::from_json(&huge),
            Err(StateError::TooLarge { .. })
        ));
    }

    #[test]
    fn reuse_rule() {
        let policy = HeartbeatPolicy {
            min_s: 60,
            step_s: 60,
            max_s: 600,
        };
        let s = sample();
        let same = s.heartbeat(&policy, "460-01", "cell-4711");
        assert_eq!((same.interval_s(), same.is_optimal()), (240, true));
        let unknown_now = s.heartbeat(&policy, "", "");
        assert!(unknown_now.is_optimal(), "unknown labels do not discard the state");
        let moved = s.heartbeat(&policy, "460-01", "cell-9");
        assert_eq!((moved.interval_s(), moved.is_probing()), (60, true), "probe again");
        let other_net = s.heartbeat(&policy, "310-260", "cell-4711");
        assert!(other_net.is_probing());
    }
}
