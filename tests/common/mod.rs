//! The Rust test kit of pulsegate, shared by every integration test under tests/:
//! - `gateway`: the one gateway harness (`Gateway`, `Spawn`): the real binary on
//!   127.0.0.1 port 0, addresses from its `--ready-file`, stop / kill -9 / restart over the
//!   same data dir, stderr kept for failure messages;
//! - `http`: the one HTTP client (`HttpConn`) and the Prometheus text readers;
//! - `mqtt`: a small blocking MQTT client built on the gateway's own codec;
//! - `tls`: a test CA and server identities (rcgen), rustls client configs, the kit's
//!   MQTT client over rustls, and a tiny HTTPS receiver;
//! - here: the `both_backends!` macro, `accepted`, the prerequisite rule, and small
//!   helpers (a PRNG for garbage bytes, `raise_nofile`).
//!
//! A test whose prerequisite is missing fails when `CI=true` (see `prerequisite`); it never
//! passes silently. Every read here has a timeout; every wait has a deadline.
#![allow(dead_code, reason = "each test binary uses its own subset of the kit")]
#![allow(unused_imports, reason = "each test binary uses its own subset of the kit")]

pub mod gateway;
pub mod http;
pub mod mqtt;
pub mod tls;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use gateway::{Gateway, Spawn};
pub use http::{HttpConn, metric_sum, metric_value};
pub use mqtt::{Client, ConnAckInfo, ConnectOpts, Pub, RecvError, Rx, read_available, take_frame};
pub use pulsegate::protocol::mqtt::ProtocolVersion::{V5, V311};

/// Both event-loop backends; every behaviour test runs once per entry.
pub const BACKENDS: [&str; 2] = ["uring", "epoll"];

/// Generates `mod uring { #[test] fn name() }` and `mod epoll { ... }` calling `name(backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $( #[test] fn $name() { super::$name("uring"); } )*
        }
        mod epoll {
            $( #[test] fn $name() { super::$name("epoll"); } )*
        }
    };
}

/// Whether an HTTP status means "push accepted": 201, the message is a durable resource.
pub fn accepted(status: u16) -> bool {
    status == 201
}

/// Default time to wait for a packet the test expects.
pub const WAIT: Duration = Duration::from_secs(3);
/// How long "nothing arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// Prerequisites
// ---------------------------------------------------------------------------------------------

/// Whether this run is CI (`CI=true`, as CI sets it): there a missing prerequisite fails.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// What a test does about a prerequisite that is present or not.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Run,
    /// Outside CI: skip, after printing why.
    Skip(String),
    /// Under CI=true: fail with this message.
    Fail(String),
}

/// The rule as a pure function: present -> run; missing -> fail under CI, else skip.
pub fn verdict(what: &str, present: bool, fix: &str, ci: bool) -> Verdict {
    match (present, ci) {
        (true, _) => Verdict::Run,
        (false, true) => Verdict::Fail(format!(
            "prerequisite missing under CI=true: {what} ({fix}); a test must not pass without running"
        )),
        (false, false) => Verdict::Skip(format!("skipped: {what} is missing ({fix}); under CI=true this fails")),
    }
}

/// For a test that needs `what`: true to go on. When it is missing, panics under CI=true,
/// and elsewhere prints the reason and returns false (the caller returns: a skip).
pub fn prerequisite(what: &str, present: bool, fix: &str) -> bool {
    match verdict(what, present, fix, in_ci()) {
        Verdict::Run => true,
        Verdict::Skip(why) => {
            eprintln!("{why}");
            false
        }
        Verdict::Fail(why) => panic!("{why}"),
    }
}

/// `name` found in a directory of PATH (an executable file).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// Whether `p` is a file with an execute bit.
pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

// ---------------------------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------------------------

/// Tiny deterministic PRNG (xorshift64*) for garbage bytes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Raises this process's soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    if cur.maximum != cur.current {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: cur.maximum,
                maximum: cur.maximum,
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}
