//! Unit tests of the URL policy: syntax refusals, every inward spelling and
//! range, allow rules, the gateway's own listeners.

use super::*;

fn refused(policy: &UrlPolicy, url: &str) -> Refused {
    match policy.check(url) {
        Err(r) => r,
        Ok(addrs) => panic!("{url} should be refused, passed as {addrs:?}"),
    }
}

#[test]
fn every_loopback_spelling_is_refused() {
    let p = UrlPolicy::new(vec![]);
    for url in [
        "http://127.0.0.1:9/x",
        "http://0x7f000001:9/x",
        "http://2130706433:9/x",
        "http://127.1:9/x",
        "http://0177.0.0.1:9/x",
        "http://127.000.000.001:9/x",
        "http://[::1]:9/x",
        "http://[::ffff:127.0.0.1]:9/x",
        "http://[::ffff:7f00:1]:9/x",
        "http://[64:ff9b::7f00:1]:9/x",
        "http://[2002:7f00:1::]:9/x",
        "http://localhost:9/x",
        "HTTP://LOCALHOST:9/x",
    ] {
        match refused(&p, url) {
            Refused::Address { class: "loopback", .. } => {}
            other => panic!("{url}: {other}"),
        }
    }
}

#[test]
fn inward_ranges_are_refused_with_their_class() {
    let p = UrlPolicy::new(vec![]);
    for (url, class) in [
        ("http://10.1.2.3/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://100.64.0.1/", "carrier-grade NAT"),
        ("http://224.0.0.1/", "multicast"),
        ("http://255.255.255.255/", "broadcast"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://192.0.2.1/", "documentation"),
        ("http://[fd00::1]/", "private"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[ff02::1]/", "multicast"),
        ("http://[::]/", "unspecified"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://[2001:db8::1]/", "documentation"),
    ] {
        assert_eq!(
            refused(&p, url),
            Refused::Address {
                addr: policy_addr(url),
                class
            },
            "{url}"
        );
    }
    assert!(
        p.check("http://93.184.215.14:8080/cb").is_ok(),
        "a public address passes"
    );
    assert!(
        p.check("http://[2606:4700::1111]/cb").is_ok(),
        "a public IPv6 address passes"
    );
}

fn policy_addr(url: &str) -> SocketAddr {
    let t = parse(url).expect("parses");
    let addr = resolve(&t.host, t.port).expect("literal")[0];
    SocketAddr::new(canonical(addr.ip()), addr.port())
}

#[test]
fn syntax_refusals_name_the_reason() {
    let p = UrlPolicy::new(vec![]);
    assert_eq!(refused(&p, "http://user:pass@93.184.215.14/"), Refused::Credentials);
    assert_eq!(refused(&p, "http://user@93.184.215.14/"), Refused::Credentials);
    assert_eq!(
        refused(&p, "http://93.184.215.14/a\r\nX-Injected: 1"),
        Refused::ControlCharacter
    );
    assert_eq!(refused(&p, "http://93.184.215.14/\0"), Refused::ControlCharacter);
    assert_eq!(refused(&p, "ftp://93.184.215.14/"), Refused::Scheme("ftp".into()));
    assert_eq!(refused(&p, "file:///etc/passwd"), Refused::Scheme("file".into()));
    assert!(matches!(refused(&p, "not a url"), Refused::Invalid(_)));
    let long = format!("http://93.184.215.14/{}", "a".repeat(URL_BYTES_MAX));
    assert!(matches!(refused(&p, &long), Refused::TooLong { .. }));
    assert!(matches!(
        refused(&p, "http://no-such-host.invalid/"),
        Refused::Unresolvable { .. }
    ));
}

#[test]
fn allow_rules_open_exactly_what_they_name() {
    let p = UrlPolicy::new(vec!["127.0.0.0/8".parse().unwrap(), "10.9.9.9:8443".parse().unwrap()]);
    assert!(p.check("http://127.0.0.1:9/x").is_ok());
    assert!(p.check("http://127.1:9/x").is_ok(), "normalized before matching");
    assert!(
        p.check("http://[::ffff:127.0.0.1]:9/x").is_ok(),
        "mapped form matches the IPv4 rule"
    );
    assert!(p.check("https://10.9.9.9:8443/x").is_ok());
    assert!(p.check("https://10.9.9.9:8444/x").is_err(), "another port");
    assert!(p.check("http://10.9.9.8:8443/x").is_err(), "another address");
    assert!(p.check("http://[::1]:9/x").is_err(), "IPv6 loopback not named");
    for bad in ["", "10.0.0.0/33", "example.com", "10.0.0.0/x", "::/129"] {
        assert!(bad.parse::<AllowRule>().is_err(), "{bad:?} should not parse");
    }
    for (text, shown) in [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.1.2.3", "10.1.2.3/32"),
        ("[fd00::1]:443", "[fd00::1]:443"),
        ("fd00::/8", "fd00::/8"),
    ] {
        assert_eq!(text.parse::<AllowRule>().unwrap().to_string(), shown);
    }
}

#[test]
fn own_listeners_are_refused_even_when_allowed() {
    let p = UrlPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
    p.set_listeners(vec!["127.0.0.1:8080".parse().unwrap(), "0.0.0.0:1883".parse().unwrap()]);
    assert_eq!(
        refused(&p, "http://127.0.0.1:8080/v1/messages"),
        Refused::OwnListener("127.0.0.1:8080".parse().unwrap())
    );
    assert!(p.check("http://127.0.0.2:8080/").is_ok(), "another address, same port");
    assert!(matches!(refused(&p, "http://127.0.0.5:1883/"), Refused::OwnListener(_)));
    assert!(matches!(
        refused(&p, "http://[::ffff:127.0.0.1]:8080/"),
        Refused::OwnListener(_)
    ));
}
