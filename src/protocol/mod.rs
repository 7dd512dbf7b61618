//! Sans-IO codecs. `mqtt`: MQTT 3.1.1 and 5.0 packets, both directions;
//! `device_id`: the rule a device id (client id, API device) must meet.
//!
//! Owns wire formats. Must never import anything else from the crate, touch a
//! socket, or panic on peer bytes.

pub mod device_id;
pub mod mqtt;
