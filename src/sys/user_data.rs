//! The io_uring `user_data` codec: operation kind, connection slab key and a
//! 24-bit generation, so a completion for a reused slot is recognised as stale.
//!
//! Owns the bit layout. Must never encode a pointer.

/// What an io_uring operation was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Close = 4,
    Wake = 5,
    Shutdown = 6,
    Cancel = 7,
    /// IORING_OP_MSG_RING passing a connection's direct descriptor to another shard's ring.
    MsgRing = 8,
    /// A PINGRESP sent from a static buffer (`Io::send_static`): completes
    /// only when it did not go out whole.
    PingResp = 9,
}

pub const GENERATION_MASK: u32 = 0x00FF_FFFF;

/// Packs (op, key, generation) into a user_data word.
pub fn pack(op: Op, key: u32, generation: u32) -> u64 {
    ((op as u64) << 56) | (((generation & GENERATION_MASK) as u64) << 32) | key as u64
}

/// Unpacks a user_data word; None for an op byte we never issued.
pub fn unpack(user_data: u64) -> Option<(Op, u32, u32)> {
    let op = match (user_data >> 56) as u8 {
        1 => Op::Accept,
        2 => Op::Recv,
        3 => Op::Send,
        4 => Op::Close,
        5 => Op::Wake,
        6 => Op::Shutdown,
        7 => Op::Cancel,
        8 => Op::MsgRing,
        9 => Op::PingResp,
        _ => return None,
    };
    Some((op, user_data as u32, ((user_data >> 32) as u32) & GENERATION_MASK))
}

/// Whether a connection's generation matches the 24 bits carried in user_data.
pub fn generation_matches(full: u32, carried: u32) -> bool {
    full & GENERATION_MASK == carried
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_truncates_generation() {
        for op in [
            Op::Accept,
            Op::Recv,
            Op::Send,
            Op::Close,
            Op::Wake,
            Op::Shutdown,
            Op::Cancel,
            Op::MsgRing,
            Op::PingResp,
        ] {
            let u = pack(op, 0xDEAD_BEEF, 0x1234_5678);
            let (o, k, g) = unpack(u).expect("valid op");
            assert_eq!((o, k), (op, 0xDEAD_BEEF));
            assert!(generation_matches(0x1234_5678, g));
            assert!(!generation_matches(0x1234_5679, g));
        }
        assert!(unpack(0).is_none());
    }
}
