//! The `overload` scenario's report (seeds/004): the heartbeat load the gateway receives
//! per second (PINGREQs the devices sent), the devices asked to lengthen their heartbeat
//! (`$pulse/heartbeat`), those disconnected with 0x89 / 0x9C / 0x9D, connect refusals by
//! reason code, whether a device was disconnected twice in a row, and, with `--http`,
//! the gateway's own per-second view from /metrics.
//!
//! Owns: building that report from the merged timeline and worker counters, and its
//! human table (one row per 10 s). Must never: do I/O or read clocks.

use crate::report::WorkerOverload;
use crate::scrape::ServerSeries;
use crate::timeline::Series;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Rows of the human table.
pub const TABLE_ROW_S: usize = 10;

#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub struct OverloadReport {
    pub waves: u32,
    pub wave_interval_s: f64,
    /// The devices' cap on adjusted heartbeats (0 = none).
    pub heartbeat_max_s: u16,
    /// Heartbeat load as the load generator sees it: PINGREQs sent per second.
    pub heartbeat_load_per_s: Vec<u64>,
    /// Devices that received at least one `$pulse/heartbeat`.
    pub adjusted: u64,
    /// `$pulse/heartbeat` messages received.
    pub heartbeat_adjustments: u64,
    pub adjusted_per_s: Vec<u64>,
    /// Connections ended by DISCONNECT 0x89 / 0x9C / 0x9D.
    pub overload_disconnects: u64,
    pub overload_disconnects_per_s: Vec<u64>,
    /// Connect attempts refused, by CONNACK code ("0x89", "0x9c"; "0x03" for MQTT 3.1.1).
    pub refused_by_reason: BTreeMap<String, u64>,
    pub refused_per_s: Vec<u64>,
    /// Whether some device's two consecutive connections both ended with an overload
    /// disconnect.
    pub disconnected_twice: bool,
    /// How often that happened.
    pub disconnected_twice_count: u64,
    /// `$pulse/...` messages not understood.
    pub control_errors: u64,
    /// The operator step (`--threshold-per-s`): the threshold, when it was set,
    /// and when the offered load (PINGREQ/s, averaged over one keep-alive
    /// period) went under it for good, in seconds and in periods after the step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<ThresholdStep>,
    /// The gateway's /metrics, sampled once per second (with `--http`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerSeries>,
}

/// The operator lowered the threshold during the run.
#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub struct ThresholdStep {
    pub threshold_per_s: f64,
    pub set_at_s: f64,
    /// Seconds each load figure averages (the longest heartbeat interval in play).
    pub window_s: u16,
    /// Offered load (PINGREQ/s over one period) just before the step.
    pub load_before_per_s: f64,
    /// Seconds after the step from which the period-averaged load stayed under the
    /// threshold until the end of the run (None: it never settled).
    pub settled_after_s: Option<f64>,
    pub settled_within_periods: Option<f64>,
    /// Highest period-averaged load from settling to the end.
    pub load_max_after_settling_per_s: Option<f64>,
}

/// Mean of `v[i + 1 - width ..= i]` (fewer at the start).
fn trailing_mean(v: &[u64], i: usize, width: usize) -> f64 {
    let from = (i + 1).saturating_sub(width.max(1));
    v[from..=i].iter().sum::<u64>() as f64 / (i + 1 - from) as f64
}

impl OverloadReport {
    /// Fills `threshold`: when the offered load settled under `per_s` after the step
    /// at `at_s`, judged on averages over `window_s` seconds (the longest heartbeat
    /// interval in play, e.g. 2 x keep-alive once relief doubled it); periods are
    /// counted in `keepalive_s`.
    pub fn settle(&mut self, per_s: f64, at_s: f64, keepalive_s: u16, window_s: u16) {
        let load = &self.heartbeat_load_per_s;
        let width = window_s.max(1) as usize;
        let period_s = keepalive_s.max(1) as f64;
        let step = at_s.floor() as usize;
        // The last whole second is still being counted: leave it out.
        let last = load.len().saturating_sub(2);
        let before = if step > 0 && step <= last + 1 {
            trailing_mean(load, step - 1, width)
        } else {
            0.0
        };
        let mut settled: Option<usize> = None;
        for i in step..=last {
            if trailing_mean(load, i, width) <= per_s {
                settled.get_or_insert(i);
            } else {
                settled = None;
            }
        }
        let max_after = settled.map(|from| (from..=last).map(|i| trailing_mean(load, i, width)).fold(0.0, f64::max));
        let settled_after_s = settled.map(|i| (i + 1) as f64 - at_s);
        self.threshold = Some(ThresholdStep {
            window_s,
            threshold_per_s: per_s,
            set_at_s: at_s,
            load_before_per_s: before,
            settled_after_s,
            settled_within_periods: settled_after_s.map(|s| s / period_s),
            load_max_after_settling_per_s: max_after,
        });
    }

    /// Builds the report from the merged per-second series, the `failed` counts (keys
    /// "connack_0x.."), the workers' overload counters and the sampled metrics.
    pub fn build(
        waves: u32,
        wave_interval_s: f64,
        heartbeat_max_s: u16,
        tl: &Series,
        failed: &BTreeMap<String, u64>,
        w: &WorkerOverload,
        server: Option<ServerSeries>,
    ) -> OverloadReport {
        let refused_by_reason = failed
            .iter()
            .filter_map(|(k, &v)| k.strip_prefix("connack_").map(|code| (code.to_string(), v)))
            .collect();
        OverloadReport {
            waves,
            wave_interval_s,
            heartbeat_max_s,
            heartbeat_load_per_s: tl.pingreqs.clone(),
            adjusted: w.adjusted_devices,
            heartbeat_adjustments: w.heartbeat_adjustments,
            adjusted_per_s: tl.hb_adjusts.clone(),
            overload_disconnects: w.overload_disconnects,
            overload_disconnects_per_s: tl.overload_disconnects.clone(),
            refused_by_reason,
            refused_per_s: tl.refused.clone(),
            disconnected_twice: w.disconnected_twice > 0,
            disconnected_twice_count: w.disconnected_twice,
            control_errors: w.control_errors,
            threshold: None,
            server,
        }
    }

    /// The summary lines and a table with one row per 10 s.
    pub fn human(&self, connected: &[u64]) -> String {
        let mut s = String::new();
        let refused: u64 = self.refused_by_reason.values().sum();
        let _ = writeln!(
            s,
            "overload           adjusted {} devices ({} messages)  overload disconnects {}  refused {} [{}]  disconnected twice in a row: {} ({})",
            self.adjusted,
            self.heartbeat_adjustments,
            self.overload_disconnects,
            refused,
            self.refused_by_reason
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            if self.disconnected_twice { "yes" } else { "no" },
            self.disconnected_twice_count
        );
        if let Some(t) = &self.threshold {
            let _ = writeln!(
                s,
                "threshold step     {:.0}/s at {:.1} s (offered {:.0}/s before); settled under it after {} ({} periods), max {}/s after",
                t.threshold_per_s,
                t.set_at_s,
                t.load_before_per_s,
                t.settled_after_s.map_or("never".into(), |v| format!("{v:.1} s")),
                t.settled_within_periods.map_or("-".into(), |v| format!("{v:.2}")),
                t.load_max_after_settling_per_s.map_or("-".into(), |v| format!("{v:.0}"))
            );
        }
        let _ = writeln!(
            s,
            "  t (s)    connected  PINGREQ/s  adjusted  disconnected  refused | server load/s  admission closed  adjustments  disconnects  refusals"
        );
        let n = self.heartbeat_load_per_s.len();
        for start in (0..n).step_by(TABLE_ROW_S) {
            let end = (start + TABLE_ROW_S).min(n);
            let sum = |v: &[u64]| v.get(start..end).map_or(0, |w| w.iter().sum::<u64>());
            let load = sum(&self.heartbeat_load_per_s) as f64 / (end - start) as f64;
            let conn = connected.get(end - 1).copied().unwrap_or(0);
            let _ = write!(
                s,
                "  {start:>3}-{end:<3} {conn:>10} {load:>10.0} {:>9} {:>13} {:>8} |",
                sum(&self.adjusted_per_s),
                sum(&self.overload_disconnects_per_s),
                sum(&self.refused_per_s)
            );
            match &self.server {
                Some(sv) => {
                    let idx: Vec<usize> = sv.indices_in(start as f64, end as f64).collect();
                    let mean = |v: &[Option<f64>]| {
                        let xs: Vec<f64> = idx.iter().filter_map(|&i| v[i]).collect();
                        (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
                    };
                    let last = |v: &[Option<f64>]| idx.iter().rev().find_map(|&i| v[i]);
                    let any_closed = idx.iter().any(|&i| sv.pulsegate_admission_closed[i] == Some(1.0));
                    let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.0}"));
                    let _ = writeln!(
                        s,
                        " {:>13} {:>17} {:>12} {:>12} {:>9}",
                        f(mean(&sv.pulsegate_heartbeat_load_per_s)),
                        if idx.is_empty() {
                            "-"
                        } else if any_closed {
                            "yes"
                        } else {
                            "no"
                        },
                        f(last(&sv.pulsegate_heartbeat_adjustments_total)),
                        f(last(&sv.pulsegate_overload_disconnects_total)),
                        f(last(&sv.pulsegate_admissions_refused_total)),
                    );
                }
                None => {
                    let _ = writeln!(s, " (no --http)");
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settling_is_judged_on_period_averages_after_the_step() {
        // Period 2 s; threshold 500/s set at 3.2 s; the last second is partial.
        let tl = Series {
            pingreqs: vec![1000, 1000, 1000, 1000, 900, 400, 500, 450, 520, 300, 999],
            ..Default::default()
        };
        let mut r = OverloadReport::build(1, 1.0, 0, &tl, &BTreeMap::new(), &WorkerOverload::default(), None);
        r.settle(500.0, 3.2, 2, 2);
        let t = r.threshold.clone().expect("filled");
        assert_eq!(t.load_before_per_s, 1000.0);
        // Two-second means from second 3: 1000, 950, 650, 450, 475, 485, 410 -> under from second 6.
        assert_eq!(t.settled_after_s.map(|s| (s * 10.0).round() / 10.0), Some(3.8));
        assert_eq!(t.settled_within_periods.map(|p| (p * 10.0).round() / 10.0), Some(1.9));
        assert_eq!(t.load_max_after_settling_per_s, Some(485.0));
        // Never under: None.
        r.settle(100.0, 3.2, 2, 2);
        assert_eq!(r.threshold.expect("filled").settled_after_s, None);
    }

    #[test]
    fn builds_from_series_and_counts() {
        let tl = Series {
            pingreqs: vec![0, 100, 900, 1000, 500],
            hb_adjusts: vec![0, 0, 0, 50, 10],
            overload_disconnects: vec![0, 0, 0, 0, 7],
            refused: vec![0, 0, 20, 5, 0],
            ..Default::default()
        };
        let failed: BTreeMap<String, u64> = [("connack_0x89".to_string(), 25), ("connect_timeout".to_string(), 1)]
            .into_iter()
            .collect();
        let w = WorkerOverload {
            adjusted_devices: 55,
            heartbeat_adjustments: 60,
            overload_disconnects: 7,
            disconnected_twice: 0,
            control_errors: 0,
        };
        let r = OverloadReport::build(10, 2.5, 0, &tl, &failed, &w, None);
        assert_eq!(r.heartbeat_load_per_s, tl.pingreqs);
        assert_eq!(r.refused_by_reason.get("0x89"), Some(&25));
        assert_eq!(r.refused_by_reason.len(), 1);
        assert_eq!(
            (r.adjusted, r.overload_disconnects, r.disconnected_twice),
            (55, 7, false)
        );
        let text = r.human(&[0, 10, 20, 30, 40]);
        assert!(text.contains("disconnected twice in a row: no"), "{text}");
        assert!(text.contains("    0-5"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        for field in [
            "heartbeat_load_per_s",
            "adjusted",
            "overload_disconnects",
            "refused_by_reason",
            "disconnected_twice",
        ] {
            assert!(json.get(field).is_some(), "{field} missing");
        }
    }
}
