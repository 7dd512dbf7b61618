//! Listening sockets: one per shard on the same address with SO_REUSEPORT, so
//! the kernel spreads accepts over shards.
//!
//! Owns listener creation. Must never accept or read: shards do that.

use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Accept backlog per shard listener (the kernel clamps it to somaxconn).
pub const LISTEN_BACKLOG: i32 = 65_535;

/// A listener with SO_REUSEADDR + SO_REUSEPORT, non-blocking if asked.
pub fn reuseport_listener(addr: SocketAddr, nonblocking: bool) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(nonblocking)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_listeners_share_one_port() {
        let a = super::reuseport_listener("127.0.0.1:0".parse().expect("addr"), true).expect("bind a");
        let addr = a.local_addr().expect("addr");
        let b = super::reuseport_listener(addr, true).expect("bind b on the same port");
        assert_eq!(b.local_addr().expect("addr"), addr);
    }
}
