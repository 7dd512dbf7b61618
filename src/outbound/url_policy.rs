//! The outbound URL policy: which callback and webhook URLs the gateway may
//! POST to. A URL is parsed with a WHATWG parser (the `url` crate, which
//! turns `0x7f000001`, `2130706433` and `127.1` into `127.0.0.1`), must be
//! http or https, carry no credentials and no control characters, and be at
//! most `URL_BYTES_MAX` bytes; then its host is resolved and EVERY address
//! checked: loopback, private, link-local, CGNAT, multicast, broadcast,
//! unspecified, reserved and documentation ranges (and IPv6 forms embedding
//! one: mapped, compatible, NAT64, 6to4) are refused unless an
//! `outbound_allow` rule names them; the gateway's own listeners are refused
//! always.
//!
//! Owns that decision. Must never send anything, and never let a URL through
//! on an address it did not check: the pool connects only to the addresses
//! [`UrlPolicy::check_addrs`] passed (its resolver is this policy).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::str::FromStr;
use std::sync::RwLock;

/// Longest callback or webhook URL, in bytes.
pub const URL_BYTES_MAX: usize = 2_048;
/// Most `outbound_allow` rules.
pub const ALLOW_RULES_MAX: usize = 256;

/// One `outbound_allow` entry: an address or CIDR block, optionally one port.
/// Written `10.0.0.0/8`, `10.1.2.3`, `10.1.2.3:8443`, `fd00::/8`,
/// `[fd00::1]:8443`. Hostnames are not rules: the check is on resolved
/// addresses, so a name cannot be re-pointed past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllowRule {
    net: IpAddr,
    prefix_bits: u8,
    port: Option<u16>,
}

impl AllowRule {
    fn matches(&self, addr: SocketAddr) -> bool {
        if self.port.is_some_and(|p| p != addr.port()) {
            return false;
        }
        match (self.net, canonical(addr.ip())) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u32::from(net).into(), u32::from(ip).into(), 32, self.prefix_bits)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(u128::from(net), u128::from(ip), 128, self.prefix_bits),
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, width: u8, prefix_bits: u8) -> bool {
    if prefix_bits == 0 {
        return true;
    }
    let shift = u32::from(width - prefix_bits);
    (a >> shift) == (b >> shift)
}

impl FromStr for AllowRule {
    type Err = String;

    fn from_str(s: &str) -> Result<AllowRule, String> {
        let bad = || format!("{s:?} is not an address, CIDR block or address:port (e.g. 10.0.0.0/8, 10.1.2.3:8443)");
        if let Ok(sa) = s.parse::<SocketAddr>() {
            let net = canonical(sa.ip());
            let prefix_bits = if net.is_ipv4() { 32 } else { 128 };
            return Ok(AllowRule {
                net,
                prefix_bits,
                port: Some(sa.port()),
            });
        }
        let (ip, bits) = match s.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (s, None),
        };
        let net: IpAddr = ip.parse().map_err(|_| bad())?;
        let width = if net.is_ipv4() { 32 } else { 128 };
        let prefix_bits = match bits {
            None => width,
            Some(b) => b.parse::<u8>().ok().filter(|b| *b <= width).ok_or_else(bad)?,
        };
        Ok(AllowRule {
            net,
            prefix_bits,
            port: None,
        })
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.net) {
            (Some(port), net) => write!(f, "{}", SocketAddr::new(net, port)),
            (None, net) => write!(f, "{net}/{}", self.prefix_bits),
        }
    }
}

/// Why a URL was refused; the text is what the SP or operator reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    TooLong {
        bytes: usize,
        max_bytes: usize,
    },
    ControlCharacter,
    Invalid(String),
    Scheme(String),
    Credentials,
    NoHost,
    Unresolvable {
        host: String,
        why: String,
    },
    /// `class` names the range (`loopback`, `private`, ...).
    Address {
        addr: SocketAddr,
        class: &'static str,
    },
    OwnListener(SocketAddr),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::TooLong { bytes, max_bytes } => write!(f, "URL is {bytes} bytes, at most {max_bytes}"),
            Refused::ControlCharacter => write!(f, "URL contains a control character (CR, LF, NUL, ...)"),
            Refused::Invalid(why) => write!(f, "not a valid URL: {why}"),
            Refused::Scheme(s) => write!(f, "scheme {s:?} is not allowed (only http and https)"),
            Refused::Credentials => write!(f, "URL carries credentials (user:password@); they are refused"),
            Refused::NoHost => write!(f, "URL has no host"),
            Refused::Unresolvable { host, why } => write!(f, "host {host} does not resolve: {why}"),
            Refused::Address { addr, class } => write!(
                f,
                "{addr} is a {class} address (refused unless outbound_allow names it)"
            ),
            Refused::OwnListener(addr) => write!(f, "{addr} is one of the gateway's own listeners"),
        }
    }
}

impl std::error::Error for Refused {}

/// A URL that passed the syntax checks, with the `host:port` to resolve.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: url::Url,
    /// The host as the parser normalized it (IPv6 in brackets) and the port
    /// (explicit or the scheme's default).
    pub host: String,
    pub port: u16,
}

/// Syntax only, no I/O: length, control characters, WHATWG parse, scheme,
/// credentials, host.
pub fn parse(url: &str) -> Result<Target, Refused> {
    if url.len() > URL_BYTES_MAX {
        return Err(Refused::TooLong {
            bytes: url.len(),
            max_bytes: URL_BYTES_MAX,
        });
    }
    // The WHATWG parser silently strips tabs and newlines: refuse them first.
    if url.chars().any(char::is_control) {
        return Err(Refused::ControlCharacter);
    }
    let parsed = url::Url::parse(url).map_err(|e| Refused::Invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Refused::Scheme(parsed.scheme().to_string()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Refused::Credentials);
    }
    let host = match parsed.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
        _ => return Err(Refused::NoHost),
    };
    let port = parsed.port_or_known_default().ok_or(Refused::NoHost)?;
    Ok(Target {
        url: parsed,
        host,
        port,
    })
}

/// The policy: the allow rules and the gateway's own listeners.
#[derive(Debug, Default)]
pub struct UrlPolicy {
    allow: Vec<AllowRule>,
    /// Set once the listeners are bound (their ports may have been 0).
    listeners: RwLock<Vec<SocketAddr>>,
}

impl UrlPolicy {
    pub fn new(allow: Vec<AllowRule>) -> UrlPolicy {
        assert!(
            allow.len() <= ALLOW_RULES_MAX,
            "outbound_allow holds at most {ALLOW_RULES_MAX} rules"
        );
        UrlPolicy {
            allow,
            listeners: RwLock::new(Vec::new()),
        }
    }

    /// The addresses the gateway listens on (as bound); a URL reaching one is refused.
    pub fn set_listeners(&self, addrs: Vec<SocketAddr>) {
        // A poisoned lock only means a writer panicked mid-assignment of a Vec: take it over.
        *self.listeners.write().unwrap_or_else(|e| e.into_inner()) = addrs;
    }

    /// Syntax, then DNS (blocking, std's resolver), then every address; the
    /// checked addresses on success.
    pub fn check(&self, url: &str) -> Result<Vec<SocketAddr>, Refused> {
        let target = parse(url)?;
        let addrs = resolve(&target.host, target.port)?;
        self.check_addrs(&addrs)?;
        Ok(addrs)
    }

    /// Every address must pass (one bad answer refuses the name: a resolver
    /// that mixes a public and an inward address is not to be trusted).
    pub fn check_addrs(&self, addrs: &[SocketAddr]) -> Result<(), Refused> {
        addrs.iter().try_for_each(|a| self.check_addr(*a))
    }

    pub fn check_addr(&self, addr: SocketAddr) -> Result<(), Refused> {
        let addr = SocketAddr::new(canonical(addr.ip()), addr.port());
        if self.is_own_listener(addr) {
            return Err(Refused::OwnListener(addr));
        }
        match inward_class(addr.ip()) {
            Some(class) if !self.allow.iter().any(|r| r.matches(addr)) => Err(Refused::Address { addr, class }),
            _ => Ok(()),
        }
    }

    fn is_own_listener(&self, addr: SocketAddr) -> bool {
        let listeners = self.listeners.read().unwrap_or_else(|e| e.into_inner());
        listeners.iter().any(|l| {
            let l_ip = canonical(l.ip());
            if l.port() != addr.port() {
                return false;
            }
            if l_ip.is_unspecified() {
                // Listening on every interface: any local address with that port is us.
                is_local(addr.ip())
            } else {
                l_ip == addr.ip()
            }
        })
    }
}

/// `host:port` through the system resolver.
pub fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
    let unresolvable = |why: String| Refused::Unresolvable {
        host: host.to_string(),
        why,
    };
    let ip_host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = ip_host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| unresolvable(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(unresolvable("no addresses".into()));
    }
    Ok(addrs)
}

/// An address of this host: binding a UDP socket to it succeeds only then.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// IPv4-mapped and -compatible IPv6 as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) if is_mapped_or_compat(v6) => IpAddr::V4(v4),
            _ => ip,
        },
        v4 => v4,
    }
}

fn is_mapped_or_compat(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    s[..5] == [0; 5] && (s[5] == 0xffff || (s[5] == 0 && u128::from(v6) > 1))
}

/// The IPv4 address an IPv6 form carries: mapped `::ffff:a.b.c.d`,
/// compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4 `2002:aabb:ccdd::`.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let low = Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
    if is_mapped_or_compat(v6) || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2])));
    }
    None
}

/// The inward (non-public) range an address lies in, if any.
pub fn inward_class(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_broadcast() => "broadcast",
        (0, _, _) => "unspecified",
        (127, _, _) => "loopback",
        (10, _, _) => "private",
        (172, 16..=31, _) => "private",
        (192, 168, _) => "private",
        (169, 254, _) => "link-local",
        (100, 64..=127, _) => "carrier-grade NAT",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved",
        (192, 0, 0) => "IETF protocol",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        _ => return None,
    })
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = embedded_v4(ip) {
        // NAT64 / 6to4 of an inward IPv4 address reach it too.
        if let Some(class) = v4_class(v4) {
            return Some(class);
        }
    }
    let s0 = ip.segments()[0];
    Some(match s0 {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        0xfc00..=0xfdff => "private",
        0xfe80..=0xfebf => "link-local",
        0xfec0..=0xfeff => "site-local",
        0xff00..=0xffff => "multicast",
        0x2001 if ip.segments()[1] == 0x0db8 => "documentation",
        _ => return None,
    })
}

#[cfg(test)]
#[path = "url_policy_tests.rs"]
mod tests;
