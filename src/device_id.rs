//! The one rule for a device id, wherever it enters: the MQTT client id of a
//! CONNECT and the `device`/`devices` of a push request. A device id becomes
//! the topic `push/{id}`, so it must be one plain topic level.
//!
//! Owns the rule and its limit. Must never allocate or panic on any input,
//! and never accept a byte that would change what `push/{id}` means (MQTT
//! wildcards, level separators, NUL and other control characters).

use std::fmt;

/// Longest device id, in bytes of UTF-8 (what the API and the shards have
/// accepted so far; MQTT itself allows 65,535).
pub const DEVICE_ID_BYTES_MAX: usize = 256;

/// Why a device id is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceIdError {
    Empty,
    TooLong {
        bytes: usize,
        max_bytes: usize,
    },
    /// `+`, `#` (MQTT wildcards) or `/` (topic level separator) at byte `at`.
    TopicCharacter {
        ch: char,
        at: usize,
    },
    /// A control character (C0 including NUL, DEL, C1) at byte `at`.
    ControlCharacter {
        code: u32,
        at: usize,
    },
}

impl fmt::Display for DeviceIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DeviceIdError::Empty => write!(f, "device id is empty"),
            DeviceIdError::TooLong { bytes, max_bytes } => {
                write!(f, "device id is {bytes} bytes, at most {max_bytes} allowed")
            }
            DeviceIdError::TopicCharacter { ch, at } => write!(
                f,
                "device id has '{ch}' at byte {at}; '+', '#' and '/' are not allowed (it is one topic level)"
            ),
            DeviceIdError::ControlCharacter { code, at } => {
                write!(f, "device id has control character U+{code:04X} at byte {at}")
            }
        }
    }
}

impl std::error::Error for DeviceIdError {}

/// Checks `id` against the rule; the first fault found is reported.
pub fn validate(id: &str) -> Result<(), DeviceIdError> {
    if id.is_empty() {
        return Err(DeviceIdError::Empty);
    }
    if id.len() > DEVICE_ID_BYTES_MAX {
        return Err(DeviceIdError::TooLong {
            bytes: id.len(),
            max_bytes: DEVICE_ID_BYTES_MAX,
        });
    }
    for (at, ch) in id.char_indices() {
        if matches!(ch, '+' | '#' | '/') {
            return Err(DeviceIdError::TopicCharacter { ch, at });
        }
        // char::is_control is exactly C0, DEL and C1 (general category Cc).
        if ch.is_control() {
            return Err(DeviceIdError::ControlCharacter { code: ch as u32, at });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_pass() {
        for id in [
            "d1",
            "device-42",
            "a.b_c:d",
            "Ünïcødé-日本",
            "x@example.com",
            &"a".repeat(256),
        ] {
            assert_eq!(validate(id), Ok(()), "{id:?}");
        }
    }

    #[test]
    fn bad_ids_are_refused_with_the_reason() {
        assert_eq!(validate(""), Err(DeviceIdError::Empty));
        assert_eq!(
            validate(&"a".repeat(257)),
            Err(DeviceIdError::TooLong {
                bytes: 257,
                max_bytes: 256
            })
        );
        assert_eq!(validate("a/#"), Err(DeviceIdError::TopicCharacter { ch: '/', at: 1 }));
        assert_eq!(validate("+"), Err(DeviceIdError::TopicCharacter { ch: '+', at: 0 }));
        assert_eq!(validate("ab#"), Err(DeviceIdError::TopicCharacter { ch: '#', at: 2 }));
        assert_eq!(
            validate("a\r\nb"),
            Err(DeviceIdError::ControlCharacter { code: 0x0D, at: 1 })
        );
        assert_eq!(validate("a\0"), Err(DeviceIdError::ControlCharacter { code: 0, at: 1 }));
        assert_eq!(
            validate("a\x7f"),
            Err(DeviceIdError::ControlCharacter { code: 0x7F, at: 1 })
        );
        assert_eq!(
            validate("a\u{85}"),
            Err(DeviceIdError::ControlCharacter { code: 0x85, at: 1 })
        );
    }

    #[test]
    fn the_reason_reads_clearly() {
        let e = validate("a/#").unwrap_err().to_string();
        assert!(e.contains("'/'") && e.contains("not allowed"), "{e}");
        let e = validate(&"a".repeat(300)).unwrap_err().to_string();
        assert!(e.contains("300 bytes") && e.contains("256"), "{e}");
    }
}
