//! Pure policy functions: from counters, a census and a clock to decisions.
//! Keep-alive dispersal, heartbeat-load
//! admission and relief, cross-shard rebalancing. Shards and the coordinator
//! both call them; nothing here knows either.
//!
//! Owns the arithmetic of every decision. Must never touch a thread, a clock,
//! a socket or a channel: inputs in, decisions out, tested without any of them.

pub mod dispersal;
pub mod load;
pub mod rebalance;
pub mod relief;
