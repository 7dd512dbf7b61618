//! The loadgen's library half: only its MQTT client codec (`mqtt`), so that the fuzz
//! targets under `tests/fuzz` can reach the decoder the binary runs.
//!
//! Owns: nothing but this re-export of a module the binary (`main.rs`) also uses.
//! Must never: grow into the loadgen's API; scenarios, workers and reports stay in the
//! binary.

#[doc(hidden)]
pub mod mqtt;
