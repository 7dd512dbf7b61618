//! The device id rule, the same on both sides: an MQTT client id in CONNECT and a
//! `device`/`devices` entry in `POST /v1/messages`. A device id becomes the topic
//! `push/{id}`, so it must be a valid topic name: no `+` or `#` wildcards, no control
//! characters (C0, DEL, C1; NUL among them), not empty, at most `DEVICE_ID_BYTES_MAX`.
//!
//! Owns the rule and its error text. Must never allocate or know where the id came from.

use std::fmt;

/// Longest device id, in bytes (UTF-8).
pub const DEVICE_ID_BYTES_MAX: usize = 256;

/// Why a device id is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceIdError {
    Empty,
    TooLong {
        len_bytes: usize,
    },
    /// `+` or `#`: a wildcard in the topic `push/{id}`.
    Wildcard(char),
    /// A control character (C0, DEL or C1), shown as its code point.
    Control(u32),
}

impl fmt::Display for DeviceIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceIdError::Empty => write!(f, "a device id must not be empty"),
            DeviceIdError::TooLong { len_bytes } => {
                write!(f, "a device id is at most {DEVICE_ID_BYTES_MAX} bytes, got {len_bytes}")
            }
            DeviceIdError::Wildcard(c) => {
                write!(
                    f,
                    "a device id must not contain the MQTT wildcard {c:?} (it names the topic push/<id>)"
                )
            }
            DeviceIdError::Control(c) => write!(f, "a device id must not contain control character U+{c:04X}"),
        }
    }
}

/// Checks `id` against the rule.
pub fn validate(id: &str) -> Result<(), DeviceIdError> {
    if id.is_empty() {
        return Err(DeviceIdError::Empty);
    }
    if id.len() > DEVICE_ID_BYTES_MAX {
        return Err(DeviceIdError::TooLong { len_bytes: id.len() });
    }
    for c in id.chars() {
        match c {
            '+' | '#' => return Err(DeviceIdError::Wildcard(c)),
            c if c.is_control() => return Err(DeviceIdError::Control(c as u32)),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_ids_pass() {
        for id in [
            "phone-42",
            "a",
            "imei:356938035643809",
            "tenant/device-1",
            "ü-日本",
            &"x".repeat(256),
        ] {
            assert_eq!(validate(id), Ok(()), "{id:?}");
        }
    }

    #[test]
    fn wildcards_controls_empty_and_long_ids_are_refused() {
        assert_eq!(validate(""), Err(DeviceIdError::Empty));
        assert_eq!(validate("a/#"), Err(DeviceIdError::Wildcard('#')));
        assert_eq!(validate("+"), Err(DeviceIdError::Wildcard('+')));
        assert_eq!(validate("a/+/b"), Err(DeviceIdError::Wildcard('+')));
        assert_eq!(validate("a\r\nb"), Err(DeviceIdError::Control(0x0D)));
        assert_eq!(validate("a\0"), Err(DeviceIdError::Control(0)));
        assert_eq!(validate("a\u{7f}"), Err(DeviceIdError::Control(0x7F)));
        assert_eq!(validate("a\u{85}"), Err(DeviceIdError::Control(0x85)));
        assert_eq!(
            validate(&"x".repeat(257)),
            Err(DeviceIdError::TooLong { len_bytes: 257 })
        );
        assert!(validate("a/#").unwrap_err().to_string().contains("wildcard"));
    }
}
