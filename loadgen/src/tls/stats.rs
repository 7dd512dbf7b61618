//! TLS handshake accounting: what one worker counts (`WorkerTls`, sent in its
//! final report) and the report section merged from every worker (`TlsReport`).
//!
//! Owns: handshakes completed (full vs resumed, from rustls `handshake_kind()`, and
//! by protocol version), those of reconnects and of storm reconnects, handshake
//! latency (TCP connected -> handshake done, µs histogram), TLS errors by kind,
//! the handshakes-per-second figures from the timeline, and the human lines.
//! Must never: do I/O or read clocks (times come in as arguments).

use crate::report::{self, Quantiles};
use crate::timeline::Series;
use rustls::HandshakeKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One worker's TLS counters.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct WorkerTls {
    pub handshakes: u64,
    pub full: u64,
    pub resumed: u64,
    pub tls13: u64,
    pub tls12: u64,
    /// Handshakes of devices that had been connected before (reconnects).
    pub reconnect_full: u64,
    pub reconnect_resumed: u64,
    /// Handshakes of devices dropped by the storm, until they were back.
    pub storm_full: u64,
    pub storm_resumed: u64,
    /// TLS errors by kind ("cert_unknown_issuer", "eof_in_handshake", ...).
    pub errors: BTreeMap<String, u64>,
    /// TCP connected -> handshake done, µs buckets.
    pub handshake_us: Vec<(u64, u64)>,
    /// TLS 1.3 tickets in the worker's session pool at the end.
    pub pool_tickets: u64,
    /// ALPN protocol the server chose (last seen; empty = none).
    pub alpn: String,
}

/// What the I/O layer knows about a completed handshake.
pub struct Done {
    pub kind: Option<HandshakeKind>,
    pub tls13: bool,
    pub reconnect: bool,
    pub storm: bool,
}

impl WorkerTls {
    /// Counts a completed handshake; returns whether it was resumed.
    pub fn on_handshake(&mut self, d: &Done) -> bool {
        let resumed = matches!(d.kind, Some(HandshakeKind::Resumed));
        self.handshakes += 1;
        let (all, re, storm) = if resumed {
            (&mut self.resumed, &mut self.reconnect_resumed, &mut self.storm_resumed)
        } else {
            (&mut self.full, &mut self.reconnect_full, &mut self.storm_full)
        };
        *all += 1;
        if d.reconnect {
            *re += 1;
        }
        if d.storm {
            *storm += 1;
        }
        if d.tls13 {
            self.tls13 += 1;
        } else {
            self.tls12 += 1;
        }
        resumed
    }

    pub fn on_error(&mut self, kind: &str) {
        match self.errors.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                self.errors.insert(kind.to_string(), 1);
            }
        }
    }
}

/// The report's `tls` section.
#[derive(Serialize, Debug, Clone, Default)]
pub struct TlsReport {
    pub server_name: String,
    pub alpn_offered: Vec<String>,
    pub alpn_negotiated: String,
    pub resume: bool,
    pub handshakes: u64,
    pub handshakes_full: u64,
    pub handshakes_resumed: u64,
    pub handshakes_tls13: u64,
    pub handshakes_tls12: u64,
    pub reconnect_handshakes_full: u64,
    pub reconnect_handshakes_resumed: u64,
    /// Handshakes of the storm's reconnects (storm scenario).
    pub storm_handshakes_full: u64,
    pub storm_handshakes_resumed: u64,
    /// Busiest second of the run: all handshakes, full ones, resumed ones.
    pub handshakes_per_s_peak: u64,
    pub full_per_s_peak: u64,
    pub resumed_per_s_peak: u64,
    /// Handshakes over the seconds that had any (a run-wide average rate).
    pub handshakes_per_busy_s: f64,
    /// TCP connected -> handshake done.
    pub handshake_ms: Quantiles,
    pub errors: BTreeMap<String, u64>,
    pub errors_total: u64,
    pub pool_tickets_at_end: u64,
}

/// The run's settings the section repeats.
pub struct Settings<'a> {
    pub server_name: &'a str,
    pub alpn: &'a [Vec<u8>],
    pub resume: bool,
}

/// Merges the workers' counters and the per-second series into the section; also
/// returns the merged latency histogram for the charts.
pub fn merge(settings: Settings, workers: &[&WorkerTls], series: &Series) -> (TlsReport, hdrhistogram::Histogram<u64>) {
    let mut r = TlsReport {
        server_name: settings.server_name.to_string(),
        alpn_offered: settings
            .alpn
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect(),
        resume: settings.resume,
        ..Default::default()
    };
    let mut h = report::new_histogram();
    for w in workers {
        r.handshakes += w.handshakes;
        r.handshakes_full += w.full;
        r.handshakes_resumed += w.resumed;
        r.handshakes_tls13 += w.tls13;
        r.handshakes_tls12 += w.tls12;
        r.reconnect_handshakes_full += w.reconnect_full;
        r.reconnect_handshakes_resumed += w.reconnect_resumed;
        r.storm_handshakes_full += w.storm_full;
        r.storm_handshakes_resumed += w.storm_resumed;
        r.pool_tickets_at_end += w.pool_tickets;
        report::add_counts(&mut r.errors, &w.errors);
        report::import(&mut h, &w.handshake_us);
        if r.alpn_negotiated.is_empty() {
            r.alpn_negotiated = w.alpn.clone();
        }
    }
    r.errors_total = r.errors.values().sum();
    r.handshake_ms = report::quantiles_ms(&h);
    let per_s: Vec<u64> = series
        .tls_full
        .iter()
        .zip(&series.tls_resumed)
        .map(|(f, r)| f + r)
        .collect();
    r.handshakes_per_s_peak = per_s.iter().copied().max().unwrap_or(0);
    r.full_per_s_peak = series.tls_full.iter().copied().max().unwrap_or(0);
    r.resumed_per_s_peak = series.tls_resumed.iter().copied().max().unwrap_or(0);
    let busy: Vec<u64> = per_s.into_iter().filter(|&n| n > 0).collect();
    if !busy.is_empty() {
        r.handshakes_per_busy_s = busy.iter().sum::<u64>() as f64 / busy.len() as f64;
    }
    (r, h)
}

impl TlsReport {
    /// Lines of the human summary.
    pub fn human(&self) -> Vec<String> {
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let q = &self.handshake_ms;
        vec![
            format!(
                "tls handshakes     {} (full {}, resumed {}; TLS1.3 {}, TLS1.2 {})  resume {}  alpn {:?}",
                self.handshakes,
                self.handshakes_full,
                self.handshakes_resumed,
                self.handshakes_tls13,
                self.handshakes_tls12,
                if self.resume { "on" } else { "off" },
                self.alpn_negotiated
            ),
            format!(
                "tls reconnects     full {} resumed {}  (storm: full {} resumed {})",
                self.reconnect_handshakes_full,
                self.reconnect_handshakes_resumed,
                self.storm_handshakes_full,
                self.storm_handshakes_resumed
            ),
            format!(
                "tls handshakes/s   peak {} (full {}, resumed {}), {:.0} per busy second",
                self.handshakes_per_s_peak, self.full_per_s_peak, self.resumed_per_s_peak, self.handshakes_per_busy_s
            ),
            format!(
                "tls handshake      p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  (n={})",
                q.p50, q.p99, q.p999, q.max, q.count
            ),
            format!("tls errors         {} [{errors}]", self.errors_total),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_split_by_kind_and_merge() {
        let mut a = WorkerTls::default();
        let full = Done {
            kind: Some(HandshakeKind::Full),
            tls13: true,
            reconnect: false,
            storm: false,
        };
        let resumed = Done {
            kind: Some(HandshakeKind::Resumed),
            tls13: true,
            reconnect: true,
            storm: true,
        };
        assert!(!a.on_handshake(&full));
        assert!(a.on_handshake(&resumed));
        assert!(a.on_handshake(&resumed));
        a.on_error("cert_unknown_issuer");
        a.on_error("cert_unknown_issuer");
        a.handshake_us = vec![(1000, 3)];
        let mut b = WorkerTls::default();
        b.on_handshake(&Done {
            kind: Some(HandshakeKind::FullWithHelloRetryRequest),
            tls13: false,
            reconnect: true,
            storm: false,
        });
        b.on_error("eof_in_handshake");
        let series = Series {
            tls_full: vec![1, 0, 0],
            tls_resumed: vec![0, 2, 0],
            ..Default::default()
        };
        let settings = Settings {
            server_name: "localhost",
            alpn: &[b"mqtt".to_vec()],
            resume: true,
        };
        let (r, h) = merge(settings, &[&a, &b], &series);
        assert_eq!((r.handshakes, r.handshakes_full, r.handshakes_resumed), (4, 2, 2));
        assert_eq!((r.handshakes_tls13, r.handshakes_tls12), (3, 1));
        assert_eq!((r.reconnect_handshakes_full, r.reconnect_handshakes_resumed), (1, 2));
        assert_eq!((r.storm_handshakes_full, r.storm_handshakes_resumed), (0, 2));
        assert_eq!(r.errors["cert_unknown_issuer"], 2);
        assert_eq!(r.errors_total, 3);
        assert_eq!(
            (r.handshakes_per_s_peak, r.full_per_s_peak, r.resumed_per_s_peak),
            (2, 1, 2)
        );
        assert!((r.handshakes_per_busy_s - 1.5).abs() < 1e-9);
        assert_eq!(h.len(), 3);
        assert!((r.handshake_ms.p50 - 1.0).abs() < 0.01);
        assert_eq!(r.alpn_offered, vec!["mqtt".to_string()]);
        let text = r.human().join("\n");
        assert!(
            text.contains("resumed 2") && text.contains("cert_unknown_issuer=2"),
            "{text}"
        );
    }
}
