//! MQTT 5 reason codes (spec 2.4) and the mapping to/from MQTT 3.1.1 CONNACK return codes.
//!
//! Owns: the numeric values only. Must never: decide policy (which code to send when) —
//! that belongs to the gateway.

pub const SUCCESS: u8 = 0x00;
pub const NORMAL_DISCONNECTION: u8 = 0x00;
pub const GRANTED_QOS_0: u8 = 0x00;
pub const GRANTED_QOS_1: u8 = 0x01;
pub const GRANTED_QOS_2: u8 = 0x02;
pub const DISCONNECT_WITH_WILL: u8 = 0x04;
pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
pub const CONTINUE_AUTHENTICATION: u8 = 0x18;
pub const RE_AUTHENTICATE: u8 = 0x19;
pub const UNSPECIFIED_ERROR: u8 = 0x80;
pub const MALFORMED_PACKET: u8 = 0x81;
pub const PROTOCOL_ERROR: u8 = 0x82;
pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
pub const NOT_AUTHORIZED: u8 = 0x87;
pub const SERVER_UNAVAILABLE: u8 = 0x88;
pub const SERVER_BUSY: u8 = 0x89;
pub const BANNED: u8 = 0x8A;
pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
pub const SESSION_TAKEN_OVER: u8 = 0x8E;
pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
pub const TOPIC_NAME_INVALID: u8 = 0x90;
pub const PACKET_IDENTIFIER_IN_USE: u8 = 0x91;
pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
pub const PACKET_TOO_LARGE: u8 = 0x95;
pub const MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
pub const QUOTA_EXCEEDED: u8 = 0x97;
pub const ADMINISTRATIVE_ACTION: u8 = 0x98;
pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
pub const USE_ANOTHER_SERVER: u8 = 0x9C;
pub const SERVER_MOVED: u8 = 0x9D;
pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
pub const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
pub const MAXIMUM_CONNECT_TIME: u8 = 0xA0;
pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;
pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xA2;

/// MQTT 3.1.1 SUBACK failure return code.
pub const SUBACK_FAILURE_V311: u8 = 0x80;

/// Maps a v5 CONNACK reason code to the 3.1.1 CONNACK return code (0..=5).
pub fn connack_return_code_v311(reason: u8) -> u8 {
    match reason {
        SUCCESS => 0,
        UNSUPPORTED_PROTOCOL_VERSION => 1,
        CLIENT_IDENTIFIER_NOT_VALID => 2,
        SERVER_UNAVAILABLE
        | SERVER_BUSY
        | SERVER_SHUTTING_DOWN
        | USE_ANOTHER_SERVER
        | SERVER_MOVED
        | QUOTA_EXCEEDED
        | CONNECTION_RATE_EXCEEDED => 3,
        BAD_USER_NAME_OR_PASSWORD => 4,
        NOT_AUTHORIZED => 5,
        _ => 3,
    }
}

/// Maps a 3.1.1 CONNACK return code back to a v5 reason code (used when decoding a 3.1.1
/// CONNACK). Reserved return codes 6..=255 map to UNSPECIFIED_ERROR.
pub fn connack_reason_from_v311(return_code: u8) -> u8 {
    match return_code {
        0 => SUCCESS,
        1 => UNSUPPORTED_PROTOCOL_VERSION,
        2 => CLIENT_IDENTIFIER_NOT_VALID,
        3 => SERVER_UNAVAILABLE,
        4 => BAD_USER_NAME_OR_PASSWORD,
        5 => NOT_AUTHORIZED,
        _ => UNSPECIFIED_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v311_mapping() {
        assert_eq!(connack_return_code_v311(SUCCESS), 0);
        assert_eq!(connack_return_code_v311(UNSUPPORTED_PROTOCOL_VERSION), 1);
        assert_eq!(connack_return_code_v311(CLIENT_IDENTIFIER_NOT_VALID), 2);
        for r in [0x88, 0x89, 0x8B, 0x9C, 0x9D, 0x97, 0x9F] {
            assert_eq!(connack_return_code_v311(r), 3, "{r:#x}");
        }
        assert_eq!(connack_return_code_v311(BAD_USER_NAME_OR_PASSWORD), 4);
        assert_eq!(connack_return_code_v311(NOT_AUTHORIZED), 5);
        assert_eq!(connack_return_code_v311(UNSPECIFIED_ERROR), 3);
        assert_eq!(connack_return_code_v311(MALFORMED_PACKET), 3);
    }

    #[test]
    fn v311_round_trip() {
        for code in 0..=5u8 {
            assert_eq!(connack_return_code_v311(connack_reason_from_v311(code)), code);
        }
        assert_eq!(connack_reason_from_v311(6), UNSPECIFIED_ERROR);
    }
}
