//! `--report DIR`: report.json plus a self-contained report.html, whose charts are
//! inline SVG drawn with plotters (connections over time, keep-alives per second with
//! the analysis windows, latency percentiles).
//! Must never: reference external assets (scripts, styles, fonts, images), run the
//! scenario, or change the report it is given.

use crate::report::{LatencyCurve, Report};
use crate::timeline::Window;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 380;
const SERIES_COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
];

/// Writes `dir/report.json` (the given JSON text) and `dir/report.html`; returns the
/// path of the page.
pub fn write_report_dir(dir: &Path, r: &Report, json_text: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.json"), json_text)?;
    let page = dir.join("report.html");
    std::fs::write(&page, render_page(r, json_text))?;
    Ok(page)
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            _ => o.push(c),
        }
    }
    o
}

fn opt_f(x: Option<f64>, digits: usize) -> String {
    x.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "n/a".into())
}

fn win(w: Option<Window>) -> String {
    w.map(|w| format!("[{}, {}) s", w.start, w.end))
        .unwrap_or_else(|| "n/a".into())
}

/// The whole page as a string.
pub fn render_page(r: &Report, json_text: &str) -> String {
    let mut rows: Vec<(String, String)> = vec![
        ("scenario".into(), r.scenario.clone()),
        ("target".into(), r.target.clone()),
        (
            "devices".into(),
            format!(
                "{} requested, {} peak connected after {:.2} s, {} workers",
                r.connections_requested, r.established, r.established_after_s, r.workers
            ),
        ),
        (
            "MQTT / keep-alive".into(),
            format!(
                "v{} / {} s",
                if r.mqtt_version == 5 { "5" } else { "3.1.1" },
                r.keepalive_s
            ),
        ),
        (
            "keep-alive peak/mean".into(),
            format!(
                "<b>{}</b> over {} (PINGREQs sent per second; 1.0 = perfectly spread)",
                opt_f(r.keepalive_peak_to_mean, 2),
                win(r.keepalive_window_s)
            ),
        ),
        (
            "connect attempts / failed".into(),
            format!("{} / {}", r.connect_attempts, r.failed_total),
        ),
        (
            "ping RTT".into(),
            format!(
                "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (n={})",
                r.ping_rtt_ms.p50, r.ping_rtt_ms.p99, r.ping_rtt_ms.max, r.ping_rtt_ms.count
            ),
        ),
        (
            "hold".into(),
            format!("{:.2} s (+{:.2} s shutdown)", r.duration_s, r.shutdown_s),
        ),
    ];
    if !r.connack_refused.is_empty() {
        let codes: Vec<String> = r
            .connack_refused
            .iter()
            .map(|(k, v)| format!("{}={v}", esc(k)))
            .collect();
        rows.push(("CONNACK refused".into(), codes.join(" ")));
    }
    if let Some(rss) = r.loadgen_rss_bytes {
        rows.push((
            "loadgen RSS".into(),
            format!(
                "{:.1} MiB, {:.0} bytes per connection",
                rss as f64 / 1048576.0,
                r.loadgen_rss_per_conn_bytes.unwrap_or(0.0)
            ),
        ));
    }
    if let Some(t) = &r.tls {
        rows.push((
            "TLS handshakes".into(),
            format!(
                "{} (full {}, <b>resumed {}</b>; TLS 1.3 {}, TLS 1.2 {}); reconnects: full {}, resumed {}; storm: full {}, resumed <b>{}</b>",
                t.handshakes,
                t.handshakes_full,
                t.handshakes_resumed,
                t.handshakes_tls13,
                t.handshakes_tls12,
                t.reconnect_handshakes_full,
                t.reconnect_handshakes_resumed,
                t.storm_handshakes_full,
                t.storm_handshakes_resumed
            ),
        ));
        rows.push((
            "TLS handshakes/s".into(),
            format!(
                "peak {} (full {}, resumed {}), {:.0} per busy second; latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                t.handshakes_per_s_peak,
                t.full_per_s_peak,
                t.resumed_per_s_peak,
                t.handshakes_per_busy_s,
                t.handshake_ms.p50,
                t.handshake_ms.p99,
                t.handshake_ms.max
            ),
        ));
        let errors: Vec<String> = t.errors.iter().map(|(k, v)| format!("{}={v}", esc(k))).collect();
        rows.push((
            "TLS errors".into(),
            format!("{} [{}]", t.errors_total, errors.join(" ")),
        ));
    }
    if let Some(st) = &r.storm {
        rows.push((
            "storm".into(),
            format!(
                "at {} s ({} close): dropped {}, reconnected <b>{}</b>, recovery <b>{}</b> s, reconnect p99 {:.1} ms",
                opt_f(st.storm_started_s, 2),
                esc(&st.storm_close),
                st.storm_dropped,
                st.storm_reconnected,
                opt_f(st.storm_recovery_s, 3),
                st.storm_reconnect_ms.p99
            ),
        ));
        let failed: Vec<String> = st.storm_failed.iter().map(|(k, v)| format!("{}={v}", esc(k))).collect();
        rows.push((
            "storm reconnect failures".into(),
            format!("{} [{}]", st.storm_failed_total, failed.join(" ")),
        ));
    }
    if let Some(rh) = &r.rushhour {
        rows.push((
            "rush hour burst".into(),
            format!(
                "connects spread over {:.1} s; burst {} s -> {} s over {} HTTP connections (pipeline {})",
                rh.spread_s,
                opt_f(rh.burst_started_s, 2),
                opt_f(rh.burst_done_s, 2),
                rh.burst_http_connections,
                rh.burst_pipeline
            ),
        ));
        rows.push((
            "keep-alive peak/mean before / after".into(),
            format!(
                "<b>{}</b> over {} / <b>{}</b> over {}",
                opt_f(rh.keepalive_peak_to_mean_before, 2),
                win(rh.keepalive_window_before_s),
                opt_f(rh.keepalive_peak_to_mean_after, 2),
                win(rh.keepalive_window_after_s)
            ),
        ));
    }
    if let Some(p) = &r.push {
        rows.push((
            "pushes".into(),
            format!(
                "sent {}, accepted {}, delivered {}; end-to-end p50 {:.2} ms p99 {:.2} ms; HTTP p99 {:.2} ms",
                p.pushes_sent,
                p.pushes_accepted,
                p.pushes_delivered,
                p.push_latency_ms.p50,
                p.push_latency_ms.p99,
                p.http_latency_ms.p99
            ),
        ));
    }
    for e in &r.worker_errors {
        rows.push(("worker error".into(), esc(e)));
    }

    let charts = [
        ("Connections over time", connections_chart(r)),
        ("Keep-alives per second", keepalive_chart(r)),
        ("Latency percentiles", latency_chart(&r.latency_curves)),
    ];
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>pulsegate-loadgen {} report</title>\n<style>\
         body{{font-family:sans-serif;margin:24px;color:#222;max-width:1160px}}\
         table{{border-collapse:collapse;margin-bottom:16px}}\
         td{{border-bottom:1px solid #ddd;padding:4px 10px;vertical-align:top}}\
         td:first-child{{color:#555;white-space:nowrap}}\
         h2{{font-size:18px;margin:24px 0 4px}} pre{{background:#f6f6f6;padding:8px;overflow:auto}}\
         .chart{{border:1px solid #ddd}} .err{{color:#b00}}\
         </style></head><body>\n<h1>pulsegate-loadgen: {}</h1>\n<table>\n",
        esc(&r.scenario),
        esc(&r.scenario)
    );
    for (k, v) in &rows {
        let _ = writeln!(h, "<tr><td>{}</td><td>{v}</td></tr>", esc(k));
    }
    h.push_str("</table>\n");
    for (title, svg) in charts {
        let _ = writeln!(h, "<h2>{}</h2>", esc(title));
        match svg {
            Ok(svg) => {
                let _ = writeln!(h, "<div class=\"chart\">{svg}</div>");
            }
            Err(e) => {
                let _ = writeln!(h, "<p class=\"err\">chart failed: {}</p>", esc(&e));
            }
        }
    }
    let _ = write!(
        h,
        "<h2>report.json</h2>\n<details><summary>show</summary><pre>{}</pre></details>\n</body></html>\n",
        esc(json_text)
    );
    h
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn svg_chart(draw: impl FnOnce(&Area) -> Result<(), String>) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&root)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Event markers (storm, burst) as (time, label).
fn events(r: &Report) -> Vec<(f64, String)> {
    let mut v = Vec::new();
    if let Some(t) = r.storm.as_ref().and_then(|s| s.storm_started_s) {
        v.push((t, "storm".to_string()));
    }
    if let Some(rh) = &r.rushhour {
        if let Some(t) = rh.burst_started_s {
            v.push((t, "burst".to_string()));
        }
        if let Some(t) = rh.burst_done_s {
            v.push((t, "burst done".to_string()));
        }
    }
    v
}

fn connections_chart(r: &Report) -> Result<String, String> {
    let tl = &r.timeline;
    let n = tl.connected.len().max(1) as f64;
    let ymax = (tl
        .connected
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(r.connections_requested) as f64
        * 1.08)
        .max(1.0);
    svg_chart(|root| {
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..n, 0f64..ymax)
            .map_err(err)?;
        chart
            .configure_mesh()
            .light_line_style(BLACK.mix(0.04))
            .x_label_formatter(&|x| compact(*x))
            .y_label_formatter(&|y| compact(*y))
            .x_desc("seconds since start")
            .y_desc("devices connected")
            .draw()
            .map_err(err)?;
        let line = |v: &[u64]| -> Vec<(f64, f64)> {
            // slot i ends at i+1 s
            std::iter::once((0.0, 0.0))
                .chain(v.iter().enumerate().map(|(i, &c)| (i as f64 + 1.0, c as f64)))
                .collect()
        };
        let c0 = SERIES_COLORS[0];
        let c1 = SERIES_COLORS[1];
        let dips = dips(&tl.connected, &tl.connected_min);
        chart
            .draw_series(dips.iter().map(|&(i, lo, hi)| {
                PathElement::new(
                    vec![(i as f64 + 0.5, lo as f64), (i as f64 + 0.5, hi as f64)],
                    c1.stroke_width(3),
                )
            }))
            .map_err(err)?
            .label("dip: fewest connected within that second")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c1.stroke_width(3)));
        chart
            .draw_series(LineSeries::new(line(&tl.connected), c0.stroke_width(2)))
            .map_err(err)?
            .label("connected at the end of the second")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c0));
        let target = r.connections_requested as f64;
        chart
            .draw_series(LineSeries::new(vec![(0.0, target), (n, target)], BLACK.mix(0.3)))
            .map_err(err)?
            .label("requested")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.3)));
        draw_event_markers(&mut chart, &events(r), ymax)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(err)
    })
}

/// Seconds in which the connected count fell below both the previous and the current
/// end-of-second value: (slot, lowest, end-of-second).
fn dips(end: &[u64], min: &[u64]) -> Vec<(usize, u64, u64)> {
    let mut prev = 0;
    let mut v = Vec::new();
    for (i, (&e, &m)) in end.iter().zip(min).enumerate() {
        if m < prev.min(e) {
            v.push((i, m, e.max(prev)));
        }
        prev = e;
    }
    v
}

fn draw_event_markers<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    events: &[(f64, String)],
    ymax: f64,
) -> Result<(), String>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let grey = RGBColor(90, 90, 90);
    for (k, (t, label)) in events.iter().enumerate() {
        chart
            .draw_series(LineSeries::new(vec![(*t, 0.0), (*t, ymax)], grey.stroke_width(1)))
            .map_err(err)?;
        // Labels step down so that events close in time stay readable.
        let y = ymax * (0.97 - 0.05 * k as f64);
        chart
            .draw_series(std::iter::once(Text::new(
                format!(" {label} ({t:.1} s)"),
                (*t, y),
                ("sans-serif", 13).into_font().color(&grey),
            )))
            .map_err(err)?;
    }
    Ok(())
}

fn keepalive_chart(r: &Report) -> Result<String, String> {
    let counts = &r.timeline.pingreqs;
    let n = counts.len().max(1) as u64;
    let ymax = (counts.iter().copied().max().unwrap_or(0) as f64 * 1.15).max(1.0) as u64 + 1;
    let mut windows: Vec<(Window, &[u64], String, RGBColor)> = Vec::new();
    if let Some(rh) = &r.rushhour {
        if let Some(w) = rh.keepalive_window_before_s {
            let label = format!("before burst: peak/mean {}", opt_f(rh.keepalive_peak_to_mean_before, 2));
            windows.push((w, &rh.keepalives_per_s_before, label, SERIES_COLORS[2]));
        }
        if let Some(w) = rh.keepalive_window_after_s {
            let label = format!("after burst: peak/mean {}", opt_f(rh.keepalive_peak_to_mean_after, 2));
            windows.push((w, &rh.keepalives_per_s_after, label, SERIES_COLORS[1]));
        }
    } else if let Some(w) = r.keepalive_window_s {
        let label = format!("analysis window: peak/mean {}", opt_f(r.keepalive_peak_to_mean, 2));
        windows.push((w, &r.keepalives_per_s, label, SERIES_COLORS[2]));
    }
    svg_chart(|root| {
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d((0u64..n).into_segmented(), 0u64..ymax)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(BLACK.mix(0.04))
            .x_desc("second since start (PINGREQs sent in [s, s+1))")
            .y_desc("keep-alives per second")
            .x_label_formatter(&|v| match v {
                SegmentValue::Exact(x) | SegmentValue::CenterOf(x) => x.to_string(),
                SegmentValue::Last => String::new(),
            })
            .draw()
            .map_err(err)?;
        for (w, _, _, color) in &windows {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [
                        (SegmentValue::Exact(w.start), ymax),
                        (SegmentValue::Exact(w.end.min(n)), 0),
                    ],
                    color.mix(0.12).filled(),
                )))
                .map_err(err)?;
        }
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .style(SERIES_COLORS[0].filled())
                    .margin(0)
                    .data(counts.iter().enumerate().map(|(i, &c)| (i as u64, c))),
            )
            .map_err(err)?
            .label("PINGREQs sent per second")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], SERIES_COLORS[0].filled()));
        for (w, v, label, color) in &windows {
            if v.is_empty() {
                continue;
            }
            let mean = (v.iter().sum::<u64>() as f64 / v.len() as f64).round() as u64;
            let c = *color;
            chart
                .draw_series(LineSeries::new(
                    vec![
                        (SegmentValue::Exact(w.start), mean),
                        (SegmentValue::Exact(w.end.min(n)), mean),
                    ],
                    c.stroke_width(2),
                ))
                .map_err(err)?
                .label(format!("{label} (line = mean)"))
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], c.mix(0.4).filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(err)
    })
}

/// Axis number without useless decimals: 5000, 2.5, 0.125.
fn compact(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// Quantile axis labels, in the order of `report::curve_ms`.
fn quantile_label(q: f64) -> String {
    let pct = q * 100.0;
    let s = format!("{pct:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("p{s}")
}

fn latency_chart(curves: &[LatencyCurve]) -> Result<String, String> {
    let curves: Vec<&LatencyCurve> = curves.iter().filter(|c| !c.points.is_empty()).collect();
    // x = position in the union of quantiles (they are the same list, truncated).
    let mut qs: Vec<f64> = curves.iter().flat_map(|c| c.points.iter().map(|p| p.0)).collect();
    qs.sort_by(f64::total_cmp);
    qs.dedup();
    let values = curves.iter().flat_map(|c| c.points.iter().map(|p| p.1));
    let ymin = values.clone().fold(f64::INFINITY, f64::min).max(0.001);
    let ymax = values.fold(0.0, f64::max).max(ymin * 10.0);
    let (ymin, ymax) = if curves.is_empty() {
        (0.01, 10.0)
    } else {
        (ymin / 1.5, ymax * 1.5)
    };
    let nx = qs.len().max(1) as f64;
    svg_chart(|root| {
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(-0.3f64..(nx - 0.7), (ymin..ymax).log_scale())
            .map_err(err)?;
        let qs_for_labels = qs.clone();
        let fmt_x = move |x: &f64| {
            let i = x.round();
            if (x - i).abs() > 0.01 || i < 0.0 {
                return String::new();
            }
            qs_for_labels
                .get(i as usize)
                .map(|&q| quantile_label(q))
                .unwrap_or_default()
        };
        chart
            .configure_mesh()
            .x_labels((nx as usize) * 2 + 1)
            .x_label_formatter(&fmt_x)
            .light_line_style(TRANSPARENT)
            .y_label_formatter(&|y| compact(*y))
            .x_desc("percentile")
            .y_desc("latency, ms (log scale)")
            .draw()
            .map_err(err)?;
        if curves.is_empty() {
            chart
                .draw_series(std::iter::once(Text::new(
                    "no latency samples".to_string(),
                    (0.0, 1.0),
                    ("sans-serif", 16).into_font(),
                )))
                .map_err(err)?;
        }
        for (i, c) in curves.iter().enumerate() {
            let color = SERIES_COLORS[i % SERIES_COLORS.len()];
            let pts: Vec<(f64, f64)> = c
                .points
                .iter()
                .filter_map(|&(q, ms)| {
                    let x = qs.iter().position(|&v| v == q)? as f64;
                    Some((x, ms.max(ymin)))
                })
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(c.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(err)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{self, RushhourReport, StormReport};
    use crate::timeline::{SlotCounts, Timeline};

    fn sample_report() -> Report {
        let mut tl = Timeline::default();
        for i in 0..90u64 {
            tl.add(&SlotCounts {
                slot: i,
                pingreqs: if i > 60 && i % 20 == 3 { 900 } else { 50 },
                connected: (i * 100).min(1000),
                connected_min: (i * 100).min(1000).saturating_sub(if i == 40 { 1000 } else { 0 }),
                ..Default::default()
            });
        }
        let mut h = report::new_histogram();
        for v in 1..5000u64 {
            report::record_us(&mut h, v * 13);
        }
        Report {
            scenario: "rushhour <&>".into(),
            connections_requested: 1000,
            keepalive_s: 20,
            keepalive_window_s: Some(Window { start: 30, end: 90 }),
            keepalives_per_s: tl.pingreqs_in(Window { start: 30, end: 90 }),
            keepalive_peak_to_mean: Some(3.2),
            timeline: tl.series(),
            storm: Some(StormReport {
                storm_started_s: Some(40.0),
                storm_close: "rst".into(),
                ..Default::default()
            }),
            rushhour: Some(RushhourReport {
                burst_started_s: Some(60.0),
                burst_done_s: Some(61.5),
                keepalive_window_before_s: Some(Window { start: 20, end: 60 }),
                keepalives_per_s_before: vec![50; 40],
                keepalive_peak_to_mean_before: Some(1.0),
                keepalive_window_after_s: Some(Window { start: 70, end: 90 }),
                keepalives_per_s_after: vec![50; 20],
                keepalive_peak_to_mean_after: Some(9.1),
                ..Default::default()
            }),
            latency_curves: vec![
                report::curve_ms("ping RTT", &h),
                report::curve_ms("empty", &report::new_histogram()),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn writes_self_contained_page_with_charts() {
        let dir = std::env::temp_dir().join(format!("lg-html-test-{}", std::process::id()));
        let r = sample_report();
        let page = write_report_dir(&dir, &r, "{\"scenario\":\"x<y\"}\n").unwrap();
        let html = std::fs::read_to_string(&page).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert_eq!(html.matches("<svg").count(), 3, "three charts");
        assert!(!html.contains("chart failed"), "a chart failed to draw");
        assert!(html.contains("rushhour &lt;&amp;&gt;"), "escaped");
        assert!(html.contains("x&lt;y"));
        assert!(html.contains("9.10") && html.contains("p99.9"));
        for external in ["src=\"http", "href=\"http", "<script", "<link"] {
            assert!(!html.contains(external), "external asset: {external}");
        }
        assert_eq!(
            std::fs::read_to_string(dir.join("report.json")).unwrap(),
            "{\"scenario\":\"x<y\"}\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_report_still_renders() {
        let html = render_page(&Report::default(), "{}");
        assert_eq!(html.matches("<svg").count(), 3);
        assert!(!html.contains("chart failed"), "{html}");
        assert!(html.contains("no latency samples"));
    }

    #[test]
    fn dips_are_seconds_below_both_neighbours() {
        // ramp (no dips), storm in second 3, recovery
        let end = [100, 200, 300, 300, 300];
        let min = [0, 100, 200, 20, 300];
        assert_eq!(dips(&end, &min), vec![(3, 20, 300)]);
    }

    #[test]
    fn compact_numbers() {
        assert_eq!(compact(5000.0), "5000");
        assert_eq!(compact(2.5), "2.5");
        assert_eq!(compact(0.125), "0.125");
        assert_eq!(compact(0.0), "0");
    }

    #[test]
    fn quantile_labels() {
        assert_eq!(quantile_label(0.5), "p50");
        assert_eq!(quantile_label(0.999), "p99.9");
        assert_eq!(quantile_label(0.99999), "p99.999");
    }
}
