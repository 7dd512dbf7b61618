//! Low-level socket and process-limit helpers built on libc.
//!
//! Owns: opening a non-blocking TCP socket bound to a chosen source address with
//! IP_BIND_ADDRESS_NO_PORT (port picked at connect time), abortive close (SO_LINGER 0),
//! raising RLIMIT_NOFILE, naming errno values for reports, and Unix time.
//! Must never: read or write MQTT bytes, keep state, or retry anything.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::FromRawFd;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Short stable name of an I/O error for report keys ("refused", "errno_99"...).
pub fn errno_name(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused",
        Some(libc::ECONNRESET) => "reset",
        Some(libc::ETIMEDOUT) => "timedout",
        Some(libc::EADDRNOTAVAIL) => "eaddrnotavail",
        Some(libc::EADDRINUSE) => "eaddrinuse",
        Some(libc::EMFILE) => "emfile",
        Some(libc::ENFILE) => "enfile",
        Some(libc::ENOBUFS) => "enobufs",
        Some(libc::EPIPE) => "pipe",
        Some(libc::ENETUNREACH) => "netunreach",
        Some(libc::EHOSTUNREACH) => "hostunreach",
        Some(libc::EACCES) | Some(libc::EPERM) => "eperm",
        Some(n) => return format!("errno_{n}"),
        None => return format!("{:?}", e.kind()).to_lowercase(),
    };
    name.to_string()
}

fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Sets SO_LINGER {on, 0 s}: the next close() aborts the connection with RST.
pub fn set_linger_zero(fd: std::os::fd::RawFd) -> io::Result<()> {
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads a correctly sized linger struct we own.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &lg as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    check(ret).map(|_| ())
}

/// Error from `connect_from`, saying which step failed.
pub struct ConnectError {
    pub step: &'static str,
    pub error: io::Error,
}

/// Opens a non-blocking TCP socket, binds it to `source` (port 0, port chosen at
/// connect time) when given, and starts connecting to `target`.
pub fn connect_from(target: &SocketAddr, source: Option<IpAddr>) -> Result<mio::net::TcpStream, ConnectError> {
    let domain = if target.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let err = |step| move |error| ConnectError { step, error };
    // SAFETY: plain socket syscalls on a descriptor we own; on any error the
    // descriptor is closed before returning.
    unsafe {
        let fd = check(libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        ))
        .map_err(err("socket"))?;
        let close_with = |step: &'static str, e: io::Error| {
            libc::close(fd);
            ConnectError { step, error: e }
        };
        let one: libc::c_int = 1;
        let one_ptr = &one as *const libc::c_int as *const libc::c_void;
        let one_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if let Some(src) = source {
            // Best effort: without it bind() would reserve a port per source address.
            libc::setsockopt(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, one_ptr, one_len);
            let (sa, len) = to_sockaddr(&SocketAddr::new(src, 0));
            if let Err(e) = check(libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len)) {
                return Err(close_with("bind", e));
            }
        }
        libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, one_ptr, one_len);
        let (sa, len) = to_sockaddr(target);
        if libc::connect(fd, &sa as *const _ as *const libc::sockaddr, len) != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(close_with("connect", e));
            }
        }
        Ok(mio::net::TcpStream::from_raw_fd(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(&io::Error::from_raw_os_error(libc::ECONNREFUSED)), "refused");
        assert_eq!(errno_name(&io::Error::from_raw_os_error(9999)), "errno_9999");
    }

    #[test]
    fn connect_from_bound_source_to_local_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let stream = connect_from(&target, Some("127.0.0.3".parse().unwrap())).ok().unwrap();
        let (_conn, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.3");
        drop(stream);
    }

    #[test]
    fn linger_zero_closes_with_reset() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server_side, _) = listener.accept().unwrap();
        set_linger_zero(client.as_raw_fd()).unwrap();
        drop(client);
        let mut b = [0u8; 4];
        let e = server_side.read(&mut b).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNRESET));
    }

    #[test]
    fn nofile_can_be_raised() {
        assert!(raise_nofile_limit().unwrap() >= 1024);
    }
}
