//! Delivery profiles (seeds/003 Table C), as the push service sees them.
//!
//! The schema, defaults and validation live in `config::profile` (the config
//! file parses them, and config sits below push); this module re-exports them
//! so the push code names `push::profile`. Must never grow logic of its own.

pub use crate::config::profile::{Goal, OnFailure, Profile, RetryStrategy, validate};
