//! Source-address lists and the split of N devices into worker slices.
//!
//! Owns: parsing "a-b", "a/nn", "a", comma lists and "none"; the round-robin
//! mapping from a global device index to a source address; the chunking of N
//! devices into contiguous worker slices of at most `per_process_max`.
//! Must never: bind, connect or otherwise touch the network.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Largest list we expand (a /16 worth of addresses).
const MAX_SOURCES: usize = 65_536;

/// Parses a source list. Empty result = kernel chooses ("none").
pub fn parse_sources(spec: &str) -> Result<Vec<IpAddr>, String> {
    let spec = spec.trim();
    if spec.is_empty() || spec.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a.trim().parse().map_err(|_| format!("bad range start in {part:?}"))?;
            let b: Ipv4Addr = b.trim().parse().map_err(|_| format!("bad range end in {part:?}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a {
                return Err(format!("range {part:?} ends before it starts"));
            }
            if (b - a) as usize >= MAX_SOURCES {
                return Err(format!("range {part:?} is larger than {MAX_SOURCES} addresses"));
            }
            out.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
        } else if let Some((a, bits)) = part.split_once('/') {
            let a: Ipv4Addr = a.trim().parse().map_err(|_| format!("bad CIDR address in {part:?}"))?;
            let bits: u32 = bits
                .trim()
                .parse()
                .map_err(|_| format!("bad CIDR length in {part:?}"))?;
            if !(16..=32).contains(&bits) {
                return Err(format!("CIDR length in {part:?} must be 16..=32"));
            }
            let mask = if bits == 32 { u32::MAX } else { !(u32::MAX >> bits) };
            let net = u32::from(a) & mask;
            let size = 1u64 << (32 - bits);
            if size <= 2 {
                out.extend((0..size as u32).map(|i| IpAddr::V4(Ipv4Addr::from(net + i))));
            } else {
                // skip the network and broadcast addresses
                out.extend((1..size as u32 - 1).map(|i| IpAddr::V4(Ipv4Addr::from(net + i))));
            }
        } else {
            out.push(part.parse::<IpAddr>().map_err(|_| format!("bad address {part:?}"))?);
        }
        if out.len() > MAX_SOURCES {
            return Err(format!("more than {MAX_SOURCES} source addresses"));
        }
    }
    Ok(out)
}

/// The source list to use when the user gave none: spread over 127/8 for IPv4
/// loopback targets (so the ephemeral port range is no limit), else kernel choice.
pub fn default_sources(target: &SocketAddr) -> &'static str {
    match target.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => "127.0.0.2-127.0.0.254",
        _ => "none",
    }
}

/// Checks every source address has the target's family and obeys the loopback rule.
pub fn check_sources(sources: &[IpAddr], target: &SocketAddr, allow_remote: bool) -> Result<(), String> {
    for ip in sources {
        if ip.is_ipv4() != target.is_ipv4() {
            return Err(format!(
                "source {ip} and target {target} are of different address families"
            ));
        }
        if !allow_remote && !ip.is_loopback() {
            return Err(format!("source {ip} is not loopback; pass --allow-remote to use it"));
        }
    }
    Ok(())
}

/// Source address for global device index `index` (round robin).
pub fn source_for(sources: &[IpAddr], index: u64) -> Option<IpAddr> {
    if sources.is_empty() {
        None
    } else {
        Some(sources[(index % sources.len() as u64) as usize])
    }
}

/// A contiguous slice of global device indices handled by one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    pub first_index: u64,
    pub count: u64,
}

/// Splits `total` devices into the fewest workers with at most `per_process_max`
/// each, as evenly as possible (sizes differ by at most one).
pub fn chunk(total: u64, per_process_max: u64) -> Vec<Slice> {
    if total == 0 || per_process_max == 0 {
        return Vec::new();
    }
    let workers = total.div_ceil(per_process_max);
    let base = total / workers;
    let extra = total % workers;
    let mut first = 0;
    (0..workers)
        .map(|w| {
            let count = base + u64::from(w < extra);
            let s = Slice {
                first_index: first,
                count,
            };
            first += count;
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_and_single_and_list() {
        let v = parse_sources("127.0.0.2-127.0.0.254").unwrap();
        assert_eq!(v.len(), 253);
        assert_eq!(v[0], "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(v[252], "127.0.0.254".parse::<IpAddr>().unwrap());
        let v = parse_sources("127.0.0.5, 127.0.1.255-127.0.2.1").unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[2], "127.0.2.0".parse::<IpAddr>().unwrap());
        assert_eq!(parse_sources("::1").unwrap(), vec!["::1".parse::<IpAddr>().unwrap()]);
        assert!(parse_sources("none").unwrap().is_empty());
        assert!(parse_sources("").unwrap().is_empty());
    }

    #[test]
    fn cidr() {
        let v = parse_sources("127.1.0.0/24").unwrap();
        assert_eq!(v.len(), 254);
        assert_eq!(v[0], "127.1.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(parse_sources("127.0.0.9/32").unwrap().len(), 1);
        assert!(parse_sources("127.0.0.0/8").is_err()); // too large
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "127.0.0.9-127.0.0.1",
            "1.2.3",
            "127.0.0.1-",
            "abc",
            "127.0.0.0-127.2.0.0",
            "127.0.0.1/x",
        ] {
            assert!(parse_sources(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn family_and_loopback_checks() {
        let t: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        assert!(check_sources(&parse_sources("127.0.0.2-127.0.0.3").unwrap(), &t, false).is_ok());
        assert!(check_sources(&parse_sources("::1").unwrap(), &t, false).is_err());
        assert!(check_sources(&parse_sources("10.0.0.1").unwrap(), &t, false).is_err());
        assert_eq!(default_sources(&t), "127.0.0.2-127.0.0.254");
        assert_eq!(default_sources(&"[::1]:1".parse().unwrap()), "none");
    }

    #[test]
    fn round_robin() {
        let v = parse_sources("127.0.0.2-127.0.0.4").unwrap();
        let got: Vec<_> = (0..5).map(|i| source_for(&v, i).unwrap().to_string()).collect();
        assert_eq!(got, ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.2", "127.0.0.3"]);
        assert_eq!(source_for(&[], 3), None);
    }

    #[test]
    fn chunking() {
        assert_eq!(
            chunk(200, 18_000),
            vec![Slice {
                first_index: 0,
                count: 200
            }]
        );
        let c = chunk(100_000, 18_000);
        assert_eq!(c.len(), 6);
        assert!(c.iter().all(|s| s.count <= 18_000 && s.count >= 16_666));
        assert_eq!(c.iter().map(|s| s.count).sum::<u64>(), 100_000);
        for w in c.windows(2) {
            assert_eq!(w[0].first_index + w[0].count, w[1].first_index);
        }
        assert_eq!(chunk(36_000, 18_000).len(), 2);
        assert_eq!(chunk(36_001, 18_000).len(), 3);
        assert_eq!(chunk(7, 2).iter().map(|s| s.count).collect::<Vec<_>>(), [2, 2, 2, 1]);
        assert!(chunk(0, 5).is_empty());
    }
}
