//! Admission at accept over real sockets, on both backends with 2 shards (SO_REUSEPORT
//! spreads one source's connections over both, so the per-source bucket is one for the
//! host): with a per-source rate, a burst from 127.0.0.2 gets its burst through (CONNACK)
//! and the rest closed at once with no byte written, while 127.0.0.3 is untouched; with a
//! global rate the same holds over every source; under a flood from one source the
//! refusals are counted and another source still connects. The gateway listens on
//! 127.0.0.1; clients bind their source address before connecting (Linux loopback routes
//! all of 127.0.0.0/8).
//!
//! Owns nothing the gateway runs. The flood's refused-per-second figure is printed for the
//! report, never asserted (performance numbers live in the loadgen reports).

mod common;

use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use socket2::{Domain, Socket, Type};

/// Connects attempted in one burst.
const BURST_CONNECTS: usize = 30;
/// How long a refused socket may take to be seen closed.
const CLOSE_SEEN_WITHIN: Duration = Duration::from_secs(2);
/// Length of the flood.
const FLOOD_FOR: Duration = Duration::from_millis(1_500);
/// Connect attempts of the flood, at most (a bound, not the goal: the flood is meant to
/// last `FLOOD_FOR`; its sockets are reset, so they hold no client port in TIME_WAIT).
const FLOOD_CONNECTS_MAX: usize = 200_000;
/// Flooding threads.
const FLOOD_THREADS: usize = 4;

fn source(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// A TCP connection to `to` from address `from` (any port).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::from((from, 0)).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(3))?;
    let s: TcpStream = s.into();
    s.set_nodelay(true).ok();
    Ok(s)
}

/// What the gateway did with a fresh socket it was sent nothing on.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Closed (EOF or reset) with no byte sent.
    Refused,
    /// Still open, waiting for a CONNECT.
    Open,
}

/// Watches sockets the client has sent nothing on: the gateway closes a refused one at
/// accept, and keeps an admitted one open for its CONNECT. Any byte is a failure.
fn fates(sockets: &mut [TcpStream]) -> Vec<Fate> {
    let deadline = Instant::now() + CLOSE_SEEN_WITHIN;
    let mut fates: Vec<Option<Fate>> = sockets.iter().map(|_| None).collect();
    while Instant::now() < deadline && fates.iter().any(|f| f.is_none()) {
        for (s, fate) in sockets.iter_mut().zip(fates.iter_mut()) {
            if fate.is_some() {
                continue;
            }
            s.set_read_timeout(Some(Duration::from_millis(5))).ok();
            let mut byte = [0u8; 1];
            match s.read(&mut byte) {
                Ok(0) => *fate = Some(Fate::Refused),
                Ok(_) => panic!("the gateway wrote to a socket it was sent nothing on"),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => *fate = Some(Fate::Refused),
            }
        }
    }
    fates.into_iter().map(|f| f.unwrap_or(Fate::Open)).collect()
}

/// Opens `n` connections from `from`, returns them with their fates.
fn burst(gw: &Gateway, from: Ipv4Addr, n: usize) -> Vec<(TcpStream, Fate)> {
    let mut sockets: Vec<TcpStream> = (0..n)
        .map(|i| connect_from(from, gw.mqtt).unwrap_or_else(|e| panic!("connect {i} from {from}: {e}")))
        .collect();
    let fates = fates(&mut sockets);
    sockets.into_iter().zip(fates).collect()
}

/// Every open socket completes its MQTT handshake; returns how many did.
fn handshake_open(gw: &Gateway, tag: &str, sockets: Vec<(TcpStream, Fate)>) -> usize {
    let mut n = 0;
    for (i, (s, fate)) in sockets.into_iter().enumerate() {
        if fate == Fate::Open {
            let mut c = Client::new(s, V5);
            let ack = c.handshake(&ConnectOpts::new(V5, &format!("{tag}-{i}")));
            assert_eq!(ack.reason, 0, "{}: CONNACK {ack:?}", gw.backend);
            n += 1;
        }
    }
    n
}

fn refused(gw: &Gateway, reason: &str) -> u64 {
    gw.metric(&format!("pulsegate_accepts_refused_total{{reason=\"{reason}\"}}"))
}

fn count(sockets: &[(TcpStream, Fate)], fate: Fate) -> usize {
    sockets.iter().filter(|(_, f)| *f == fate).count()
}

fn a_source_gets_its_burst_and_the_rest_is_closed_at_accept(backend: &str) {
    let gw = Gateway::start(
        backend,
        &["--accept-per-ip-rate-per-s", "5", "--accept-per-ip-burst", "5"],
    );
    let t0 = Instant::now();
    let from_2 = burst(&gw, source(2), BURST_CONNECTS);
    let took_s = t0.elapsed().as_secs_f64();
    // Five, plus one per 200 ms the burst took (the bucket refills at 5/s).
    let allowed = 5 + (took_s * 5.0) as usize;
    let open = count(&from_2, Fate::Open);
    assert!(
        (5..=allowed).contains(&open),
        "{backend}: {open} of {BURST_CONNECTS} admitted from 127.0.0.2 (burst 5, took {took_s:.2} s)"
    );
    let refused_here = count(&from_2, Fate::Refused);
    assert_eq!(open + refused_here, BURST_CONNECTS);
    assert_eq!(handshake_open(&gw, "src2", from_2), open);
    assert_eq!(refused(&gw, "source_rate"), refused_here as u64, "{backend}");
    assert_eq!(refused(&gw, "global_rate"), 0, "{backend}");
    // Another source has its own bucket.
    let from_3 = burst(&gw, source(3), 5);
    assert_eq!(count(&from_3, Fate::Open), 5, "{backend}: 127.0.0.3 was refused");
    assert_eq!(handshake_open(&gw, "src3", from_3), 5);
    // Refused sockets never reached a shard's connection table.
    assert_eq!(gw.metric_sum("pulsegate_accepts_total"), (open + 5) as u64, "{backend}");
    assert_eq!(refused(&gw, "source_rate"), refused_here as u64, "{backend}");
}

fn the_global_rate_holds_over_every_source(backend: &str) {
    let gw = Gateway::start(backend, &["--accept-rate-per-s", "5"]);
    let t0 = Instant::now();
    let mut all = Vec::new();
    for i in 0..BURST_CONNECTS {
        let from = source(2 + (i % 3) as u8);
        all.push(connect_from(from, gw.mqtt).unwrap_or_else(|e| panic!("connect {i} from {from}: {e}")));
    }
    let fates = fates(&mut all);
    let took_s = t0.elapsed().as_secs_f64();
    let sockets: Vec<_> = all.into_iter().zip(fates).collect();
    let open = count(&sockets, Fate::Open);
    let allowed = 5 + (took_s * 5.0) as usize;
    assert!(
        (5..=allowed).contains(&open),
        "{backend}: {open} of {BURST_CONNECTS} admitted over 3 sources (global 5/s, took {took_s:.2} s)"
    );
    let refused_here = count(&sockets, Fate::Refused);
    assert_eq!(handshake_open(&gw, "global", sockets), open);
    assert_eq!(refused(&gw, "global_rate"), refused_here as u64, "{backend}");
    assert_eq!(refused(&gw, "source_rate"), 0, "{backend}");
    // A second later the bucket has refilled.
    std::thread::sleep(Duration::from_millis(1_100));
    let later = burst(&gw, source(9), 1);
    assert_eq!(
        count(&later, Fate::Open),
        1,
        "{backend}: still refused after the refill"
    );
    assert_eq!(handshake_open(&gw, "later", later), 1);
}

/// One flooding thread: connects from 127.0.0.2 and drops the socket at once (RST, so
/// the client keeps no TIME_WAIT), until `until`. Returns the connects made.
fn flood(to: SocketAddr, until: Instant, max: usize) -> usize {
    let mut made = 0;
    while Instant::now() < until && made < max {
        if let Ok(s) = connect_from(source(2), to) {
            socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).ok();
            made += 1;
        }
    }
    made
}

fn a_flood_from_one_source_is_refused_at_accept_and_others_still_connect(backend: &str) {
    let gw = Gateway::start(
        backend,
        &["--accept-per-ip-rate-per-s", "10", "--accept-per-ip-burst", "10"],
    );
    let t0 = Instant::now();
    let until = t0 + FLOOD_FOR;
    let mqtt = gw.mqtt;
    let flooders: Vec<_> = (0..FLOOD_THREADS)
        .map(|_| std::thread::spawn(move || flood(mqtt, until, FLOOD_CONNECTS_MAX / FLOOD_THREADS)))
        .collect();
    // While it floods, another source connects.
    std::thread::sleep(FLOOD_FOR / 3);
    let (mut c, ack) = {
        let mut c = Client::new(
            connect_from(source(3), gw.mqtt).expect("connect from 127.0.0.3 during the flood"),
            V5,
        );
        let ack = c.handshake(&ConnectOpts::new(V5, "during-flood"));
        (c, ack)
    };
    assert_eq!(ack.reason, 0, "{backend}: {ack:?}");
    let made: usize = flooders.into_iter().map(|t| t.join().expect("flood thread")).sum();
    let flood_s = t0.elapsed().as_secs_f64();
    // Every flood connection the gateway accepted is either refused or admitted, once. (A
    // few never reach accept: under the flood the listen backlog overflows and the kernel
    // drops them, or the client's reset beats the accept.) Wait until the counts settle.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut rejected, mut admitted) = (0, 0);
    while Instant::now() < deadline {
        let seen = (
            refused(&gw, "source_rate"),
            gw.metric_sum("pulsegate_accepts_total").saturating_sub(1),
        );
        if seen == (rejected, admitted) && rejected + admitted > 0 {
            break;
        }
        (rejected, admitted) = seen;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        rejected + admitted <= made as u64,
        "{backend}: {rejected} refused + {admitted} admitted > {made} connects"
    );
    assert!(rejected > 0, "{backend}: nothing refused out of {made}");
    let allowed = 10 + (flood_s * 10.0).ceil() as u64 + 1;
    assert!(
        admitted <= allowed,
        "{backend}: {admitted} flood connections admitted in {flood_s:.2} s (burst 10, 10/s)"
    );
    assert_eq!(refused(&gw, "global_rate"), 0);
    gw.assert_healthy(&mut c);
    println!(
        "{backend}: flood from one source: {made} connects in {flood_s:.2} s, {rejected} refused at accept \
         ({:.0}/s), {admitted} admitted, {} never accepted",
        rejected as f64 / flood_s,
        made as u64 - rejected - admitted
    );
}

both_backends!(
    a_source_gets_its_burst_and_the_rest_is_closed_at_accept,
    the_global_rate_holds_over_every_source,
    a_flood_from_one_source_is_refused_at_accept_and_others_still_connect,
);
