//! Where and when a device reconnects after a connection ends (seeds/002 and 004).
//!
//! Owns: the reconnect decision. A "use another server" or "server moved" (0x9C / 0x9D,
//! at CONNACK or DISCONNECT) with a Server Reference is followed at once (a little
//! jitter, a bounded number of redirects in a row); anything else, "server busy" (0x89)
//! included, reconnects to the same server later, with exponential backoff and jitter,
//! bounded by the policy's maximum.
//!
//! Must never: read a clock or a random source (both are passed in), resolve names or
//! open sockets, or return a delay above `BackoffPolicy::max_ms`.

use crate::protocol::mqtt::reason;

/// Exponential backoff bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay cap of the first failure (the actual delay is half fixed, half random).
    pub base_ms: u64,
    /// No delay is ever longer.
    pub max_ms: u64,
}

impl BackoffPolicy {
    /// Field devices: 1 s, doubling up to 5 minutes.
    pub const DEVICE: BackoffPolicy = BackoffPolicy {
        base_ms: 1_000,
        max_ms: 300_000,
    };
    /// The load generator: 100 ms, doubling up to 10 s.
    pub const LOADGEN: BackoffPolicy = BackoffPolicy {
        base_ms: 100,
        max_ms: 10_000,
    };
}

/// Redirects followed in a row without a successful connection; beyond it the device
/// backs off on its current server (two servers referring to each other cannot loop).
pub const REDIRECTS_IN_A_ROW_MAX: u8 = 4;

/// Exponential backoff with "equal jitter": for the `failures`-th consecutive failure
/// (0 = first), a delay in `[cap/2, cap]` where cap = min(base x 2^failures, max).
/// `random` is any u64 from the caller's generator.
pub fn backoff_ms(policy: &BackoffPolicy, failures: u8, random: u64) -> u64 {
    let exp = policy.base_ms.saturating_mul(1u64 << failures.min(30));
    let cap = exp.min(policy.max_ms);
    let half = cap / 2;
    half + random % (half + 1)
}

/// The first entry of a Server Reference ("host:port" or "host", several separated by
/// spaces), with the current server's port when it names none. None if empty.
pub fn reference_target(server_reference: &str, current_server: &str) -> Option<String> {
    let first = server_reference.split_whitespace().next()?.trim_end_matches(':');
    if first.is_empty() {
        return None;
    }
    let has_port = match first.rsplit_once(':') {
        // "[v6]:port" or "host:port"; a bare IPv6 literal has several colons and no port.
        Some((host, port)) => {
            !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        return Some(first.to_string());
    }
    let port = current_server.rsplit_once(':').map(|(_, p)| p).unwrap_or("1883");
    Some(format!("{first}:{port}"))
}

/// How a connection (or attempt) ended, as far as reconnecting is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ending<'a> {
    /// MQTT 5 reason code of the CONNACK or DISCONNECT (None: the transport just closed).
    pub reason: Option<u8>,
    pub server_reference: Option<&'a str>,
}

/// Where and when to reconnect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconnect {
    /// The server to connect to next (the current one unless a reference was followed).
    pub server: String,
    pub delay_ms: u64,
    /// Whether a Server Reference was followed.
    pub redirected: bool,
}

/// A device's reconnect bookkeeping: two counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reconnector {
    failures: u8,
    redirects: u8,
}

impl Reconnector {
    /// CONNACK 0: the next failure starts from the base delay again.
    pub fn on_connected(&mut self) {
        self.failures = 0;
        self.redirects = 0;
    }

    pub fn failures(&self) -> u8 {
        self.failures
    }

    /// The connection (or attempt) to `current_server` ended as `ending`.
    pub fn on_ended(
        &mut self,
        policy: &BackoffPolicy,
        current_server: &str,
        ending: Ending<'_>,
        random: u64,
    ) -> Reconnect {
        let moved = matches!(ending.reason, Some(reason::USE_ANOTHER_SERVER | reason::SERVER_MOVED));
        let target = ending
            .server_reference
            .filter(|_| moved && self.redirects < REDIRECTS_IN_A_ROW_MAX)
            .and_then(|r| reference_target(r, current_server));
        if let Some(target) = target {
            self.redirects += 1;
            return Reconnect {
                server: target,
                // Jitter within one base delay: a whole shed population must not land on
                // the new server in the same millisecond.
                delay_ms: random % (policy.base_ms + 1),
                redirected: true,
            };
        }
        let delay_ms = backoff_ms(policy, self.failures, random);
        self.failures = self.failures.saturating_add(1);
        Reconnect {
            server: current_server.to_string(),
            delay_ms,
            redirected: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: BackoffPolicy = BackoffPolicy::LOADGEN;

    #[test]
    fn backoff_grows_with_jitter_and_stays_bounded() {
        assert!((50..=100).contains(&backoff_ms(&P, 0, 12_345)));
        assert!((100..=200).contains(&backoff_ms(&P, 1, 999)));
        assert_eq!(backoff_ms(&P, 3, 0), 400);
        assert_eq!(backoff_ms(&P, 3, 400), 800);
        // Bounded for every failure count and every random value.
        for failures in [5u8, 7, 30, 31, 64, 200, u8::MAX] {
            for r in [0, 1, 77, 5_000, u64::MAX] {
                let d = backoff_ms(&P, failures, r);
                assert!(d <= P.max_ms, "{failures} {r} -> {d}");
                if failures >= 7 {
                    assert!(d >= P.max_ms / 2, "{failures} {r} -> {d}");
                }
            }
        }
        let d = BackoffPolicy::DEVICE;
        assert!(backoff_ms(&d, u8::MAX, u64::MAX) <= 300_000);
    }

    #[test]
    fn server_busy_backs_off_on_the_same_server() {
        let mut r = Reconnector::default();
        let busy = Ending {
            reason: Some(reason::SERVER_BUSY),
            server_reference: None,
        };
        let a = r.on_ended(&P, "10.0.0.1:1883", busy, 0);
        assert_eq!(
            (a.server.as_str(), a.delay_ms, a.redirected),
            ("10.0.0.1:1883", 50, false)
        );
        let b = r.on_ended(&P, "10.0.0.1:1883", busy, 0);
        assert_eq!(b.delay_ms, 100);
        for _ in 0..20 {
            assert!(r.on_ended(&P, "10.0.0.1:1883", busy, u64::MAX).delay_ms <= P.max_ms);
        }
        r.on_connected();
        assert_eq!(
            r.on_ended(&P, "10.0.0.1:1883", busy, 0).delay_ms,
            50,
            "reset after success"
        );
        // 0x9C without a reference: nothing to follow, back off.
        let no_ref = Ending {
            reason: Some(reason::USE_ANOTHER_SERVER),
            server_reference: None,
        };
        assert!(!r.on_ended(&P, "10.0.0.1:1883", no_ref, 0).redirected);
    }

    #[test]
    fn server_reference_is_followed_a_bounded_number_of_times() {
        let mut r = Reconnector::default();
        let moved = Ending {
            reason: Some(reason::USE_ANOTHER_SERVER),
            server_reference: Some("10.0.0.2:1884 10.0.0.3:1884"),
        };
        let next = r.on_ended(&P, "10.0.0.1:1883", moved, 7);
        assert_eq!(next.server, "10.0.0.2:1884");
        assert!(next.redirected && next.delay_ms <= P.base_ms);
        for _ in 1..REDIRECTS_IN_A_ROW_MAX {
            assert!(r.on_ended(&P, "10.0.0.2:1884", moved, 7).redirected);
        }
        let stuck = r.on_ended(&P, "10.0.0.2:1884", moved, 7);
        assert!(!stuck.redirected, "a redirect loop ends in backoff");
        assert_eq!(stuck.server, "10.0.0.2:1884");
        r.on_connected();
        let moved_perm = Ending {
            reason: Some(reason::SERVER_MOVED),
            server_reference: Some("gw2.example"),
        };
        assert_eq!(
            r.on_ended(&P, "gw1.example:8883", moved_perm, 0).server,
            "gw2.example:8883"
        );
    }

    #[test]
    fn reference_targets() {
        assert_eq!(reference_target("a:1", "b:2").as_deref(), Some("a:1"));
        assert_eq!(reference_target("a", "b:2").as_deref(), Some("a:2"));
        assert_eq!(reference_target("  ", "b:2"), None);
        assert_eq!(reference_target("[::1]:9", "b:2").as_deref(), Some("[::1]:9"));
        assert_eq!(reference_target("[::1]", "b:2").as_deref(), Some("[::1]:2"));
        assert_eq!(reference_target("host:", "b:2").as_deref(), Some("host:2"));
    }
}
