//! Unit tests of the scenarios through the `Scenario` trait alone: option checks,
//! worker arguments the hidden `worker` subcommand accepts, and the storm's timing
//! against a recording `WorkerControl` (no processes, no sockets).

use super::*;
use crate::cli::{Cli, Command};
use clap::Parser;

fn parse(args: &[&str]) -> Command {
    Cli::try_parse_from(std::iter::once("pulsegate-loadgen").chain(args.iter().copied()))
        .unwrap()
        .command
}

fn base<'a>(scenario: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        scenario,
        "--target",
        "127.0.0.1:1883",
        "--connections",
        "1000",
        "--duration-s",
        "30",
        "--keepalive-s",
        "10",
    ];
    v.extend_from_slice(extra);
    v
}

/// Every scenario built from its subcommand, with its `ConnArgs`.
fn scenario(args: &[&str]) -> (ConnArgs, Box<dyn Scenario>) {
    match parse(args) {
        Command::Hold(h) => (h.conn, Box::new(Hold)),
        Command::Push(p) => (p.conn.clone(), Box::new(Push::new(p))),
        Command::Storm(s) => (s.conn.clone(), Box::new(Storm::new(s))),
        Command::Rushhour(r) => (r.conn.clone(), Box::new(Rushhour::new(r))),
        Command::Overload(o) => (o.conn.clone(), Box::new(Overload::new(o))),
        Command::Worker(_) => panic!("not a scenario"),
    }
}

fn http() -> Option<SocketAddr> {
    Some("127.0.0.1:8080".parse().unwrap())
}

/// The hidden worker command line with a scenario's extra arguments.
fn worker_with(extra: &[String]) -> crate::cli::WorkerArgs {
    let mut v: Vec<&str> = vec![
        "worker",
        "--target-addr",
        "127.0.0.1:1883",
        "--first-index",
        "0",
        "--count",
        "10",
        "--ramp-per-s",
        "100",
        "--max-inflight",
        "8",
        "--keepalive-s",
        "10",
        "--mqtt-version",
        "4",
        "--source-ips",
        "none",
        "--client-id-prefix",
        "lg-",
        "--connect-timeout-ms",
        "1000",
        "--hard-stop-s",
        "60",
        "--epoch-unix-ms",
        "1",
    ];
    v.extend(extra.iter().map(String::as_str));
    match parse(&v) {
        Command::Worker(w) => w,
        _ => panic!("not worker"),
    }
}

#[derive(Default)]
struct Recorder {
    lines: Vec<String>,
}

impl WorkerControl for Recorder {
    fn broadcast(&mut self, line: &str) {
        self.lines.push(line.to_string());
    }
}

#[test]
fn names_and_http_options() {
    let cases: [(&[&str], &str, Option<&str>); 5] = [
        (&[], "hold", None),
        (&["--http", "127.0.0.1:8080"], "push", Some("127.0.0.1:8080")),
        (&[], "storm", None),
        (&["--http", "127.0.0.1:8081"], "rushhour", Some("127.0.0.1:8081")),
        (&[], "overload", None),
    ];
    for (extra, name, http) in cases {
        let (_, s) = scenario(&base(name, extra));
        assert_eq!((s.name(), s.http()), (name, http));
        assert_eq!(s.samples_metrics(), name == "overload", "{name}");
    }
}

#[test]
fn worker_arguments_are_accepted_by_the_worker() {
    for (name, extra) in [
        ("hold", vec![]),
        ("push", vec!["--http", "127.0.0.1:8080"]),
        (
            "storm",
            vec![
                "--storm-close",
                "fin",
                "--storm-ramp-per-s",
                "900",
                "--storm-max-inflight",
                "7",
            ],
        ),
        ("rushhour", vec!["--http", "127.0.0.1:8080"]),
        ("overload", vec!["--waves", "4"]),
    ] {
        let (conn, mut s) = scenario(&base(name, &extra));
        s.validate(&conn, http()).unwrap();
        let w = worker_with(&s.worker_args(3));
        match name {
            "storm" => {
                assert_eq!(w.storm_close, crate::cli::StormClose::Fin);
                assert_eq!((w.storm_ramp_per_s, w.storm_max_inflight), (300.0, 7));
            }
            // Default interval: a quarter of the 10 s keep-alive.
            "overload" => assert_eq!((w.waves, w.wave_interval_ms), (4, 2500)),
            _ => {
                assert!(s.worker_args(3).is_empty(), "{name}");
                assert_eq!((w.waves, w.storm_ramp_per_s), (1, 0.0));
            }
        }
    }
}

#[test]
fn event_times_must_fall_inside_the_hold() {
    let (conn, mut s) = scenario(&base("storm", &["--storm-at-s", "30"]));
    assert_eq!(
        s.validate(&conn, None).unwrap_err(),
        "--storm-at-s must be in [0, --duration-s)"
    );
    let (conn, mut s) = scenario(&base("rushhour", &["--http", "127.0.0.1:1", "--burst-at-s=-1"]));
    assert_eq!(
        s.validate(&conn, http()).unwrap_err(),
        "--burst-at-s must be in [0, --duration-s)"
    );
    let (conn, mut s) = scenario(&base("storm", &["--storm-ramp-per-s", "NaN"]));
    assert_eq!(s.validate(&conn, None).unwrap_err(), "--storm-ramp-per-s must be >= 0");
    let (conn, mut s) = scenario(&base("overload", &["--waves", "3", "--wave-interval-s", "0"]));
    assert_eq!(s.validate(&conn, None).unwrap_err(), "--wave-interval-s must be > 0");
    // One wave needs no interval.
    let (conn, mut s) = scenario(&base("overload", &["--waves", "1", "--wave-interval-s", "0"]));
    assert!(s.validate(&conn, None).is_ok());
}

#[test]
fn rushhour_spreads_the_connects_over_a_period() {
    // 1000 devices over the default spread (the 10 s keep-alive): at most 100/s.
    let (conn, mut s) = scenario(&base("rushhour", &["--http", "127.0.0.1:1"]));
    s.validate(&conn, http()).unwrap();
    assert_eq!(s.ramp_per_s(&conn), 100.0);
    // No spread: the ramp stays as given.
    let (conn, mut s) = scenario(&base("rushhour", &["--http", "127.0.0.1:1", "--spread-s", "0"]));
    s.validate(&conn, http()).unwrap();
    assert_eq!(s.ramp_per_s(&conn), 20_000.0);
    // Other scenarios keep --ramp-per-s.
    let (conn, mut s) = scenario(&base("hold", &["--ramp-per-s", "123"]));
    s.validate(&conn, None).unwrap();
    assert_eq!(s.ramp_per_s(&conn), 123.0);
}

fn tick(s: &mut dyn Scenario, conn: &ConnArgs, rec: &mut Recorder, t: f64, connected: u64) {
    s.tick(&mut Tick {
        conn,
        start: Instant::now(),
        t,
        connected,
        workers: rec,
    });
}

#[test]
fn storm_waits_for_everyone_but_not_past_halfway() {
    // At 10 s, or at the latest halfway to the end of the 30 s hold: 20 s.
    let (conn, mut s) = scenario(&base("storm", &["--storm-at-s", "10"]));
    s.validate(&conn, None).unwrap();
    let mut rec = Recorder::default();
    tick(s.as_mut(), &conn, &mut rec, 9.9, 1000);
    assert!(rec.lines.is_empty(), "fired before --storm-at-s");
    assert_eq!(s.status(4.0, 1000), "  storm in 6s");
    tick(s.as_mut(), &conn, &mut rec, 10.0, 999);
    tick(s.as_mut(), &conn, &mut rec, 19.9, 999);
    assert!(rec.lines.is_empty(), "fired before all were connected");
    tick(s.as_mut(), &conn, &mut rec, 20.0, 999);
    assert_eq!(rec.lines, ["storm"]);
    assert!(s.status(21.0, 1000).starts_with("  storm at "));
    tick(s.as_mut(), &conn, &mut rec, 21.0, 1000);
    assert_eq!(rec.lines.len(), 1, "a storm fires once");

    let (conn, mut s) = scenario(&base("storm", &["--storm-at-s", "10"]));
    s.validate(&conn, None).unwrap();
    let mut rec = Recorder::default();
    tick(s.as_mut(), &conn, &mut rec, 10.0, 1000);
    assert_eq!(rec.lines, ["storm"], "all connected at --storm-at-s: fire at once");
}

#[test]
fn rushhour_status_before_the_burst() {
    let (conn, mut s) = scenario(&base("rushhour", &["--http", "127.0.0.1:1", "--burst-at-s", "12"]));
    s.validate(&conn, http()).unwrap();
    assert_eq!(s.status(2.0, 1000), "  burst in 10s");
    assert!(s.end_hold().is_none(), "no burst, no push report");
    let (_, s) = scenario(&base("hold", &[]));
    assert_eq!(s.status(2.0, 1000), "");
}
