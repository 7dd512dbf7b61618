//! CONNECT (spec 3.1.1 §3.1, 5.0 §3.1): protocol name/level, connect flags, keep alive,
//! CONNECT properties, will (properties validated and skipped), username, password.
//!
//! Owns: CONNECT wire format and its structural rules. Must never: decide whether a client id,
//! credentials or keep alive are acceptable (gateway policy), or reply to the client.

use super::fixed_header::write_frame;
use super::properties::{self as p, PropValue, read_properties, write_empty, write_properties};
use super::wire::{Reader, has_wildcard, write_binary, write_u16, write_utf8};
use super::{DecodeError, MalformedKind, ProtocolVersion};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connect<'a> {
    /// Decoded from the protocol level. On encode the `version` argument wins.
    pub protocol_version: ProtocolVersion,
    pub clean_start: bool,
    pub keepalive_s: u16,
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub will: Option<Will<'a>>,
    pub properties: ConnectProperties,
}

/// Will message. Will properties (v5) are validated and skipped on decode, encoded empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Will<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
}

/// CONNECT properties the gateway uses. User properties and authentication data are
/// validated and skipped; `has_authentication_method` records that an Authentication Method
/// was present (enhanced auth requested). `has_authentication_method` is never encoded.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectProperties {
    pub session_expiry_interval_s: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_packet_size_bytes: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    pub request_response_information: Option<u8>,
    pub request_problem_information: Option<u8>,
    pub has_authentication_method: bool,
    /// Where the device is (pulsegate user properties `pulse-network` =
    /// "MCC-MNC" and `pulse-area` = location/tracking area code); other user
    /// properties are skipped, and a malformed report is ignored.
    pub network: Option<NetworkReport>,
}

/// A device's network and location, as it reports them in CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkReport {
    pub mcc: u16,
    pub mnc: u16,
    /// Location area / tracking area code, when reported.
    pub area: Option<u32>,
}

/// User property naming the device's network: "MCC-MNC", e.g. "460-01".
pub const NETWORK_PROPERTY: &str = "pulse-network";
/// User property naming the device's location area code (decimal).
pub const AREA_PROPERTY: &str = "pulse-area";

impl NetworkReport {
    /// Parses "MCC-MNC" (3 digits, then 2 or 3).
    pub fn parse_network(s: &str) -> Option<(u16, u16)> {
        let (mcc, mnc) = s.split_once('-')?;
        let digits = |t: &str, lens: &[usize]| lens.contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(mcc, &[3]) || !digits(mnc, &[2, 3]) {
            return None;
        }
        Some((mcc.parse().ok()?, mnc.parse().ok()?))
    }
}

const ALLOWED: &[u8] = &[
    p::SESSION_EXPIRY_INTERVAL,
    p::RECEIVE_MAXIMUM,
    p::MAXIMUM_PACKET_SIZE,
    p::TOPIC_ALIAS_MAXIMUM,
    p::REQUEST_RESPONSE_INFORMATION,
    p::REQUEST_PROBLEM_INFORMATION,
    p::USER_PROPERTY,
    p::AUTHENTICATION_METHOD,
    p::AUTHENTICATION_DATA,
];

const WILL_ALLOWED: &[u8] = &[
    p::WILL_DELAY_INTERVAL,
    p::PAYLOAD_FORMAT_INDICATOR,
    p::MESSAGE_EXPIRY_INTERVAL,
    p::CONTENT_TYPE,
    p::RESPONSE_TOPIC,
    p::CORRELATION_DATA,
    p::USER_PROPERTY,
];

const FLAG_RESERVED: u8 = 0x01;
const FLAG_CLEAN: u8 = 0x02;
const FLAG_WILL: u8 = 0x04;
const FLAG_WILL_RETAIN: u8 = 0x20;
const FLAG_PASSWORD: u8 = 0x40;
const FLAG_USERNAME: u8 = 0x80;

fn malformed(kind: MalformedKind) -> DecodeError {
    DecodeError::Malformed(kind)
}

/// Decodes a CONNECT body (after the fixed header). The version comes from the packet itself.
pub fn decode(body: &[u8]) -> Result<Connect<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let name = r.binary()?;
    let level = r.u8()?;
    let version = match (name, level) {
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQTT", _) | (b"MQIsdp", _) => {
            return Err(DecodeError::UnsupportedProtocolVersion { level });
        }
        _ => return Err(malformed(MalformedKind::BadProtocolName)),
    };
    let v5 = version == ProtocolVersion::V5;
    let flags = r.u8()?;
    let will_flag = flags & FLAG_WILL != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & FLAG_WILL_RETAIN != 0;
    let has_user = flags & FLAG_USERNAME != 0;
    let has_pass = flags & FLAG_PASSWORD != 0;
    if flags & FLAG_RESERVED != 0
        || will_qos == 3
        || (!will_flag && (will_qos != 0 || will_retain))
        || (!v5 && has_pass && !has_user)
    {
        return Err(malformed(MalformedKind::BadConnectFlags));
    }
    let keepalive_s = r.u16()?;

    let mut properties = ConnectProperties::default();
    if v5 {
        let mut has_auth_data = false;
        let mut network: Option<(u16, u16)> = None;
        let mut area: Option<u32> = None;
        read_properties(&mut r, ALLOWED, &[], |id, v| {
            let n = v.num();
            match id {
                p::SESSION_EXPIRY_INTERVAL => properties.session_expiry_interval_s = Some(n),
                p::RECEIVE_MAXIMUM => properties.receive_maximum = Some(n as u16),
                p::MAXIMUM_PACKET_SIZE => properties.maximum_packet_size_bytes = Some(n),
                p::TOPIC_ALIAS_MAXIMUM => properties.topic_alias_maximum = Some(n as u16),
                p::REQUEST_RESPONSE_INFORMATION => properties.request_response_information = Some(n as u8),
                p::REQUEST_PROBLEM_INFORMATION => properties.request_problem_information = Some(n as u8),
                p::AUTHENTICATION_METHOD => properties.has_authentication_method = true,
                p::AUTHENTICATION_DATA => has_auth_data = true,
                p::USER_PROPERTY => match v {
                    PropValue::Pair(NETWORK_PROPERTY, value) => network = NetworkReport::parse_network(value),
                    PropValue::Pair(AREA_PROPERTY, value) => area = value.parse().ok(),
                    _ => {}
                },
                _ => {}
            }
            Ok(())
        })?;
        properties.network = network.map(|(mcc, mnc)| NetworkReport { mcc, mnc, area });
        // Authentication Data without Authentication Method is a protocol error.
        if has_auth_data && !properties.has_authentication_method {
            return Err(malformed(MalformedKind::BadProperty));
        }
    }

    let client_id = r.utf8()?;
    let will = if will_flag {
        if v5 {
            read_properties(&mut r, WILL_ALLOWED, &[], |id, v| match (id, v) {
                (p::RESPONSE_TOPIC, p::PropValue::Str(t)) if has_wildcard(t) || t.is_empty() => {
                    Err(malformed(MalformedKind::BadProperty))
                }
                _ => Ok(()),
            })?;
        }
        let topic = r.utf8()?;
        if topic.is_empty() {
            return Err(malformed(MalformedKind::EmptyTopic));
        }
        if has_wildcard(topic) {
            return Err(malformed(MalformedKind::WildcardInTopicName));
        }
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
        })
    } else {
        None
    };
    let username = if has_user { Some(r.utf8()?) } else { None };
    let password = if has_pass { Some(r.binary()?) } else { None };
    r.finish()?;
    Ok(Connect {
        protocol_version: version,
        clean_start: flags & FLAG_CLEAN != 0,
        keepalive_s,
        client_id,
        username,
        password,
        will,
        properties,
    })
}

impl Connect<'_> {
    /// Appends the whole CONNECT packet for `version`; returns bytes appended.
    /// v3.1.1 drops properties (a password without a username is a caller bug there).
    pub fn encode(&self, version: ProtocolVersion, out: &mut Vec<u8>) -> usize {
        let v5 = version == ProtocolVersion::V5;
        write_frame(out, 0x10, |o| {
            write_utf8(o, "MQTT");
            o.push(version.level());
            let mut flags = 0u8;
            if self.clean_start {
                flags |= FLAG_CLEAN;
            }
            if let Some(w) = &self.will {
                flags |= FLAG_WILL | ((w.qos & 0x03) << 3);
                if w.retain {
                    flags |= FLAG_WILL_RETAIN;
                }
            }
            if self.username.is_some() {
                flags |= FLAG_USERNAME;
            }
            if self.password.is_some() {
                flags |= FLAG_PASSWORD;
            }
            o.push(flags);
            write_u16(o, self.keepalive_s);
            if v5 {
                let pr = &self.properties;
                write_properties(o, |o| {
                    p::put_u32(o, p::SESSION_EXPIRY_INTERVAL, pr.session_expiry_interval_s);
                    p::put_u16(o, p::RECEIVE_MAXIMUM, pr.receive_maximum);
                    p::put_u32(o, p::MAXIMUM_PACKET_SIZE, pr.maximum_packet_size_bytes);
                    p::put_u16(o, p::TOPIC_ALIAS_MAXIMUM, pr.topic_alias_maximum);
                    p::put_byte(o, p::REQUEST_RESPONSE_INFORMATION, pr.request_response_information);
                    p::put_byte(o, p::REQUEST_PROBLEM_INFORMATION, pr.request_problem_information);
                    if let Some(n) = pr.network {
                        p::put_pair(
                            o,
                            p::USER_PROPERTY,
                            NETWORK_PROPERTY,
                            &format!("{:03}-{:02}", n.mcc, n.mnc),
                        );
                        if let Some(area) = n.area {
                            p::put_pair(o, p::USER_PROPERTY, AREA_PROPERTY, &area.to_string());
                        }
                    }
                });
            }
            write_utf8(o, self.client_id);
            if let Some(w) = &self.will {
                if v5 {
                    write_empty(o);
                }
                write_utf8(o, w.topic);
                write_binary(o, w.payload);
            }
            if let Some(u) = self.username {
                write_utf8(o, u);
            }
            if let Some(pw) = self.password {
                write_binary(o, pw);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Packet, decode_packet};
    use super::*;
    use MalformedKind::*;

    const V311: ProtocolVersion = ProtocolVersion::V311;
    const V5: ProtocolVersion = ProtocolVersion::V5;

    fn sample(version: ProtocolVersion, props: ConnectProperties) -> Connect<'static> {
        Connect {
            protocol_version: version,
            clean_start: true,
            keepalive_s: 60,
            client_id: "dev-1",
            username: Some("user"),
            password: Some(b"secret"),
            will: Some(Will {
                topic: "dev/1/status",
                payload: b"offline",
                qos: 1,
                retain: true,
            }),
            properties: props,
        }
    }

    fn round_trip(c: &Connect<'_>, version: ProtocolVersion) {
        let mut out = Vec::new();
        let n = c.encode(version, &mut out);
        assert_eq!(n, out.len());
        assert_eq!(decode_packet(&out, V311), Ok(Packet::Connect(*c)));
    }

    #[test]
    fn network_report_is_parsed_and_a_bad_one_ignored() {
        assert_eq!(NetworkReport::parse_network("460-01"), Some((460, 1)));
        assert_eq!(NetworkReport::parse_network("310-410"), Some((310, 410)));
        for bad in ["46-01", "460-1", "460-0001", "460_01", "abc-de", "", "460-"] {
            assert_eq!(NetworkReport::parse_network(bad), None, "{bad}");
        }
        // CONNECT v5 with user properties: another key, a bad network, a bad area.
        let mut props = Vec::new();
        p::put_pair(&mut props, p::USER_PROPERTY, "colour", "blue");
        p::put_pair(&mut props, p::USER_PROPERTY, NETWORK_PROPERTY, "46x-01");
        p::put_pair(&mut props, p::USER_PROPERTY, AREA_PROPERTY, "12");
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30, props.len() as u8];
        body.extend_from_slice(&props);
        body.extend_from_slice(&[0, 1, b'c']);
        let mut frame = vec![0x10, body.len() as u8];
        frame.extend_from_slice(&body);
        let Ok(super::super::Packet::Connect(c)) = super::super::decode_packet(&frame, V5) else {
            panic!("CONNECT with user properties decodes");
        };
        assert_eq!(
            c.properties.network, None,
            "an area without a valid network is no report"
        );
    }

    #[test]
    fn round_trips() {
        round_trip(&sample(V311, ConnectProperties::default()), V311);
        round_trip(&sample(V5, ConnectProperties::default()), V5);
        let props = ConnectProperties {
            session_expiry_interval_s: Some(3600),
            receive_maximum: Some(20),
            maximum_packet_size_bytes: Some(1 << 20),
            topic_alias_maximum: Some(10),
            request_response_information: Some(1),
            request_problem_information: Some(0),
            has_authentication_method: false,
            network: Some(NetworkReport {
                mcc: 460,
                mnc: 1,
                area: Some(4_321),
            }),
        };
        round_trip(&sample(V5, props), V5);
        let no_area = ConnectProperties {
            network: Some(NetworkReport {
                mcc: 310,
                mnc: 410,
                area: None,
            }),
            ..props
        };
        round_trip(&sample(V5, no_area), V5);
        let bare = Connect {
            client_id: "",
            username: None,
            password: None,
            will: None,
            ..sample(V5, props)
        };
        round_trip(&bare, V5);
        // v5 allows a password without a username
        round_trip(&Connect { username: None, ..bare }, V5);
    }

    #[test]
    fn known_v311_bytes() {
        // mosquitto_pub -V mqttv311 -i mosq-test -k 60 (clean session)
        let frame = [
            0x10, 0x15, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x09, b'm', b'o', b's', b'q',
            b'-', b't', b'e', b's', b't',
        ];
        let c = Connect {
            protocol_version: V311,
            clean_start: true,
            keepalive_s: 60,
            client_id: "mosq-test",
            username: None,
            password: None,
            will: None,
            properties: ConnectProperties::default(),
        };
        assert_eq!(decode_packet(&frame, V311), Ok(Packet::Connect(c)));
        let mut out = Vec::new();
        c.encode(V311, &mut out);
        assert_eq!(out, frame);
    }

    fn v5_frame(flags: u8, props: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, flags, 0, 10];
        body.push(props.len() as u8);
        body.extend_from_slice(props);
        body.extend_from_slice(payload);
        let mut f = vec![0x10, body.len() as u8];
        f.extend_from_slice(&body);
        f
    }

    fn mal(kind: MalformedKind) -> DecodeError {
        DecodeError::Malformed(kind)
    }

    fn check(cases: &[(Vec<u8>, DecodeError, &str)]) {
        for (frame, want, what) in cases {
            assert_eq!(decode_packet(frame, V311).as_ref().err(), Some(want), "{what}");
        }
    }

    // Byte tables below are kept one case per line.
    #[rustfmt::skip]
    #[test]
    fn auth_method_and_skipped_properties() {
        let props = [0x15, 0, 3, b'S', b'C', b'R', 0x16, 0, 1, 9, 0x26, 0, 1, b'k', 0, 1, b'v'];
        let f = v5_frame(0x02, &props, &[0, 1, b'c']);
        let Ok(Packet::Connect(c)) = decode_packet(&f, V311) else { panic!("decode failed") };
        assert!(c.properties.has_authentication_method);
        let c = [0, 1, b'c'];
        check(&[
            (v5_frame(0x02, &[0x16, 0, 1, 9], &c), mal(BadProperty), "auth data w/o method"),
            (v5_frame(0x02, &[0x23, 0, 1], &c), mal(BadProperty), "PUBLISH-only property"),
            (v5_frame(0x02, &[0x21, 0, 0], &c), mal(BadProperty), "receive maximum 0"),
            (v5_frame(0x02, &[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2], &c), mal(DuplicateProperty), "dup"),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn will_properties_validated_and_skipped() {
        // will props: delay 5 + user property k=""; topic "t"; payload "x"
        let payload = [0, 1, b'c', 11, 0x18, 0, 0, 0, 5, 0x26, 0, 1, b'k', 0, 0, 0, 1, b't', 0, 1, b'x'];
        let f = v5_frame(0x04, &[], &payload);
        let Ok(Packet::Connect(c)) = decode_packet(&f, V311) else { panic!("decode failed") };
        let will = Will { topic: "t", payload: b"x", qos: 0, retain: false };
        assert_eq!(c.will, Some(will));
        // Session Expiry is not a will property
        let payload = [0, 1, b'c', 5, 0x11, 0, 0, 0, 5, 0, 1, b't', 0, 1, b'x'];
        check(&[(v5_frame(0x04, &[], &payload), mal(BadProperty), "session expiry in will")]);
    }

    #[rustfmt::skip]
    #[test]
    fn protocol_name_and_level() {
        let level = |l: u8| {
            let mut f = v5_frame(0x02, &[], &[0, 1, b'c']);
            f[8] = l;
            f
        };
        let mut bad_name = level(5);
        bad_name[4] = b'm';
        let mqisdp = vec![0x10, 0x0F, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 10, 0, 1, b'c'];
        check(&[
            (level(3), DecodeError::UnsupportedProtocolVersion { level: 3 }, "level 3"),
            (level(6), DecodeError::UnsupportedProtocolVersion { level: 6 }, "level 6"),
            (mqisdp, DecodeError::UnsupportedProtocolVersion { level: 3 }, "MQIsdp"),
            (bad_name, mal(BadProtocolName), "name"),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn connect_flags() {
        let c = [0, 1, b'c'];
        // v3.1.1: password without username
        let v311_pw = vec![0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x40, 0, 10, 0, 1, b'c', 0, 1, b'p'];
        check(&[
            (v5_frame(0x03, &[], &c), mal(BadConnectFlags), "reserved bit"),
            (v5_frame(0x08, &[], &c), mal(BadConnectFlags), "will qos without will"),
            (v5_frame(0x20, &[], &c), mal(BadConnectFlags), "will retain without will"),
            (v5_frame(0x1C, &[], &c), mal(BadConnectFlags), "will qos 3"),
            (v311_pw, mal(BadConnectFlags), "3.1.1 password without username"),
        ]);
        // same in v5 is fine
        let f = v5_frame(0x40, &[], &[0, 1, b'c', 0, 1, b'p']);
        assert!(decode_packet(&f, V311).is_ok());
    }

    #[rustfmt::skip]
    #[test]
    fn payload_rules() {
        check(&[
            (v5_frame(0x04, &[], &[0, 1, b'c', 0, 0, 1, b'#', 0, 0]), mal(WildcardInTopicName), "will topic"),
            (v5_frame(0x04, &[], &[0, 1, b'c', 0, 0, 0, 0, 0]), mal(EmptyTopic), "empty will topic"),
            (v5_frame(0x00, &[], &[0, 1, 0xFF]), mal(BadUtf8), "client id"),
            (v5_frame(0x00, &[], &[0, 1, b'c', 7]), mal(TrailingBytes), "trailing"),
            (v5_frame(0x80, &[], &[0, 1, b'c']), mal(Truncated), "missing username"),
        ]);
    }
}
