//! Prometheus text exposition (format 0.0.4) of every owner's counters:
//! shards, the coordinator, admission, the push service and its store.
//!
//! Owns metric names and help texts. Must never write a counter: it only reads.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use crate::api::HttpCounters;
use crate::auth::{Authenticator, Refusal};
use crate::coordinator::CoordinatorGauges;
use crate::delivery::Reporter;
use crate::push::service::ServiceCounters;
use crate::registry::{Registry, ReliefMemory};
use crate::shard::accept_gate::AcceptRefusal;
use crate::shard::admission::Admission;
use crate::shard::counters::{CloseReason, ProtocolErrorKind, ShardCounters};
use crate::shard::env::{BackendInUse, RELIEVED_IDS_MAX};
use crate::shard::peers::Peers;
use crate::store::GroupCommitter;

/// Everything the exposition reads.
#[derive(Clone)]
pub struct MetricsSources {
    pub backend: BackendInUse,
    pub epoch: Instant,
    pub peers: Arc<Peers>,
    pub registry: Arc<Registry>,
    pub reports: Arc<Reporter>,
    pub relieved: Arc<ReliefMemory>,
    pub admission: Arc<Admission>,
    /// The device authenticator (accepted and refused CONNECTs, key reloads).
    pub auth: Arc<dyn Authenticator>,
    pub gauges: Arc<CoordinatorGauges>,
    /// The HTTP API server's own counters.
    pub http: Arc<HttpCounters>,
    /// The push service's counters and its store's committer, once it runs.
    pub service: Option<(Arc<ServiceCounters>, Arc<GroupCommitter>)>,
}

fn per_shard(out: &mut String, peers: &Peers, name: &str, kind: &str, help: &str, get: impl Fn(&ShardCounters) -> u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (i, h) in peers.all().iter().enumerate() {
        let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", get(&h.counters));
    }
}

fn total(out: &mut String, peers: &Peers, name: &str, help: &str, get: impl Fn(&ShardCounters) -> u64) {
    let sum: u64 = peers.all().iter().map(|h| get(&h.counters)).sum();
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {sum}");
}

fn device_auth(out: &mut String, auth: &dyn Authenticator) {
    let c = auth.counters();
    let _ = writeln!(
        out,
        "# HELP pulsegate_device_auth_accepted_total CONNECTs the device authenticator accepted.\n\
         # TYPE pulsegate_device_auth_accepted_total counter\n\
         pulsegate_device_auth_accepted_total{{kind=\"{}\"}} {}",
        auth.kind(),
        c.accepted()
    );
    let _ = writeln!(
        out,
        "# HELP pulsegate_device_auth_refused_total CONNECTs refused by the device authenticator, by reason \
         (CONNACK 0x86 / 3.1.1 code 4; client_id_mismatch: 0x87 / 5).\n\
         # TYPE pulsegate_device_auth_refused_total counter"
    );
    for r in Refusal::ALL {
        let _ = writeln!(
            out,
            "pulsegate_device_auth_refused_total{{reason=\"{}\"}} {}",
            r.label(),
            c.refused(r)
        );
    }
    let (ok, failed) = c.reloads();
    let _ = writeln!(
        out,
        "# HELP pulsegate_device_auth_key_reloads_total Device key reloads (SIGHUP), by result.\n\
         # TYPE pulsegate_device_auth_key_reloads_total counter\n\
         pulsegate_device_auth_key_reloads_total{{result=\"ok\"}} {ok}\n\
         pulsegate_device_auth_key_reloads_total{{result=\"failed\"}} {failed}"
    );
}

pub fn render(src: &MetricsSources) -> String {
    let mut out = String::with_capacity(8192);
    let _ = writeln!(
        out,
        "# HELP pulsegate_backend Event-loop backend in use (1 = this one).\n# TYPE pulsegate_backend gauge\npulsegate_backend{{backend=\"{}\"}} 1",
        src.backend.label()
    );
    let _ = writeln!(
        out,
        "# HELP pulsegate_uptime_seconds Seconds since start.\n# TYPE pulsegate_uptime_seconds gauge\npulsegate_uptime_seconds {}",
        src.epoch.elapsed().as_secs()
    );
    per_shard(
        &mut out,
        &src.peers,
        "pulsegate_connections",
        "gauge",
        "Open connections per shard.",
        |c| c.connections_open.load(Relaxed),
    );
    per_shard(
        &mut out,
        &src.peers,
        "pulsegate_partial_packet_bytes",
        "gauge",
        "Bytes held in started, incomplete MQTT packets per shard (bounded by shard_partial_packet_bytes_max).",
        |c| c.partial_packet_bytes.load(Relaxed),
    );
    per_shard(
        &mut out,
        &src.peers,
        "pulsegate_accepts_total",
        "counter",
        "Sockets accepted per shard.",
        |c| c.accepts.load(Relaxed),
    );
    per_shard(
        &mut out,
        &src.peers,
        "pulsegate_keepalives_total",
        "counter",
        "PINGREQs served per shard.",
        |c| c.keepalives.load(Relaxed),
    );
    total(
        &mut out,
        &src.peers,
        "pulsegate_accept_errors_total",
        "Accept failures (fd table full, ...).",
        |c| c.accept_errors.load(Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP pulsegate_accepts_refused_total Connections closed at accept by the accept rates, before any byte was read (not in pulsegate_accepts_total).\n# TYPE pulsegate_accepts_refused_total counter"
    );
    for reason in AcceptRefusal::ALL {
        let n: u64 = src
            .peers
            .all()
            .iter()
            .map(|h| h.counters.accepts_refused[reason.index()].load(Relaxed))
            .sum();
        let _ = writeln!(
            out,
            "pulsegate_accepts_refused_total{{reason=\"{}\"}} {n}",
            reason.label()
        );
    }
    let _ = writeln!(
        out,
        "# HELP pulsegate_connects_total Accepted CONNECTs by protocol version.\n# TYPE pulsegate_connects_total counter"
    );
    let v311: u64 = src
        .peers
        .all()
        .iter()
        .map(|h| h.counters.connects_v311.load(Relaxed))
        .sum();
    let v5: u64 = src
        .peers
        .all()
        .iter()
        .map(|h| h.counters.connects_v5.load(Relaxed))
        .sum();
    let _ = writeln!(
        out,
        "pulsegate_connects_total{{version=\"3.1.1\"}} {v311}\npulsegate_connects_total{{version=\"5\"}} {v5}"
    );
    total(
        &mut out,
        &src.peers,
        "pulsegate_pushes_sent_total",
        "PUBLISHes sent to devices.",
        |c| c.pushes_sent.load(Relaxed),
    );
    total(
        &mut out,
        &src.peers,
        "pulsegate_pushes_acked_total",
        "PUBACKs received for QoS 1 pushes.",
        |c| c.pushes_acked.load(Relaxed),
    );
    total(
        &mut out,
        &src.peers,
        "pulsegate_pushes_dropped_total",
        "Pushes dropped (device gone, queue full, too large).",
        |c| c.pushes_dropped.load(Relaxed),
    );
    total(
        &mut out,
        &src.peers,
        "pulsegate_pushes_redelivered_total",
        "Pushes redelivered from a resumed session.",
        |c| c.pushes_redelivered.load(Relaxed),
    );
    total(
        &mut out,
        &src.peers,
        "pulsegate_publishes_received_total",
        "PUBLISHes received from devices.",
        |c| c.publishes_received.load(Relaxed),
    );
    total(
        &mut out,
        &src.peers,
        "pulsegate_sessions_taken_over_total",
        "Connections replaced by a newer CONNECT with the same client id.",
        |c| c.sessions_taken_over.load(Relaxed),
    );
    total(
        &mut out,
        &src.peers,
        "pulsegate_sessions_resumed_total",
        "Stored sessions resumed on reconnect.",
        |c| c.sessions_resumed.load(Relaxed),
    );
    total(
        &mut out,
        &src.peers,
        "pulsegate_recv_buffer_exhausted_total",
        "Receives re-armed because the provided buffer ring ran dry.",
        |c| c.recv_buffer_exhausted.load(Relaxed),
    );
    total(
        &mut out,
        &src.peers,
        "pulsegate_static_send_retries_total",
        "PINGRESPs the zero-copy static send could not send whole (socket buffer full), sent again as ordinary output.",
        |c| c.static_send_retries.load(Relaxed),
    );
    total(
        &mut out,
        &src.peers,
        "pulsegate_received_bytes_total",
        "Bytes received from devices.",
        |c| c.bytes_received.load(Relaxed),
    );
    total(
        &mut out,
        &src.peers,
        "pulsegate_sent_bytes_total",
        "Bytes sent to devices.",
        |c| c.bytes_sent.load(Relaxed),
    );
    device_auth(&mut out, src.auth.as_ref());
    let _ = writeln!(
        out,
        "# HELP pulsegate_closes_total Connections closed, by reason.\n# TYPE pulsegate_closes_total counter"
    );
    for r in CloseReason::ALL {
        let n: u64 = src.peers.all().iter().map(|h| h.counters.get_close(r)).sum();
        let _ = writeln!(out, "pulsegate_closes_total{{reason=\"{}\"}} {n}", r.label());
    }
    let sum = |get: fn(&ShardCounters) -> u64| -> u64 { src.peers.all().iter().map(|h| get(&h.counters)).sum() };
    let _ = writeln!(
        out,
        "# HELP pulsegate_tls_handshakes_total MQTT-over-TLS handshakes completed, by kind (full, or resumed from a ticket or session id).\n# TYPE pulsegate_tls_handshakes_total counter\npulsegate_tls_handshakes_total{{kind=\"full\"}} {}\npulsegate_tls_handshakes_total{{kind=\"resumed\"}} {}",
        sum(|c| c.tls_handshakes_full.load(Relaxed)),
        sum(|c| c.tls_handshakes_resumed.load(Relaxed)),
    );
    total(
        &mut out,
        &src.peers,
        "pulsegate_tls_handshake_failures_total",
        "MQTT-over-TLS handshakes that failed (not TLS, no common parameters, certificate refused by the client).",
        |c| c.tls_handshake_failures.load(Relaxed),
    );
    total(
        &mut out,
        &src.peers,
        "pulsegate_tls_errors_total",
        "Established MQTT-over-TLS connections ended by a bad record or an alert.",
        |c| c.tls_errors.load(Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP pulsegate_protocol_errors_total Bad device input, by kind.\n# TYPE pulsegate_protocol_errors_total counter"
    );
    for (i, k) in ProtocolErrorKind::ALL.iter().enumerate() {
        let n: u64 = src
            .peers
            .all()
            .iter()
            .map(|h| h.counters.protocol_errors[i].load(Relaxed))
            .sum();
        let _ = writeln!(out, "pulsegate_protocol_errors_total{{kind=\"{}\"}} {n}", k.label());
    }
    if let Some((c, committer)) = &src.service {
        let _ = writeln!(
            out,
            "# HELP pulsegate_messages_pending Messages not yet in a terminal state.\n# TYPE pulsegate_messages_pending gauge\npulsegate_messages_pending {}",
            c.pending.load(Relaxed)
        );
        for (name, help, v) in [
            (
                "pulsegate_pending_payload_bytes",
                "Payload bytes held for pending messages, each stored payload once (pending_payload_bytes_max).",
                &c.pending_payload_bytes,
            ),
            (
                "pulsegate_pending_payloads",
                "Stored payloads referenced by pending messages (a multicast is one).",
                &c.pending_payloads,
            ),
            (
                "pulsegate_completed_retention_bytes",
                "Record bytes of the finished messages kept for GET (completed_retention_bytes_max).",
                &c.completed_retention_bytes,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP pulsegate_payload_budget_refusals_total Push requests refused by a payload byte budget, by budget.\n\
             # TYPE pulsegate_payload_budget_refusals_total counter\n\
             pulsegate_payload_budget_refusals_total{{budget=\"pending_payload_bytes_max\"}} {}\n\
             pulsegate_payload_budget_refusals_total{{budget=\"sp_pending_payload_bytes_max\"}} {}",
            c.payload_budget_refusals.load(Relaxed),
            c.sp_payload_budget_refusals.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP pulsegate_messages_total Messages by outcome.\n# TYPE pulsegate_messages_total counter"
        );
        for (label, v) in [
            ("accepted", &c.accepted),
            ("delivered", &c.delivered),
            ("confirmed", &c.confirmed),
            ("failed", &c.failed),
            ("expired", &c.expired),
            ("cancelled", &c.cancelled),
            ("collapsed", &c.collapsed),
        ] {
            let _ = writeln!(
                out,
                "pulsegate_messages_total{{outcome=\"{label}\"}} {}",
                v.load(Relaxed)
            );
        }
        for (name, help, v) in [
            ("pulsegate_attempts_total", "Delivery attempts started.", &c.attempts),
            ("pulsegate_retries_total", "Retries scheduled.", &c.retries),
            (
                "pulsegate_callbacks_ok_total",
                "Callbacks the SP answered with 2xx.",
                &c.callbacks_ok,
            ),
            (
                "pulsegate_callbacks_failed_total",
                "Callbacks given up after their retries.",
                &c.callbacks_failed,
            ),
            (
                "pulsegate_outbound_tls_failures_total",
                "Webhook and callback POSTs whose TLS handshake failed (unknown CA, name mismatch, alert); retried as other failures.",
                &c.outbound_tls_failures,
            ),
            (
                "pulsegate_outbound_refused_total",
                "Webhook and callback POSTs the outbound URL policy refused at send time (an inward address); failed attempts.",
                &c.outbound_refused,
            ),
            (
                "pulsegate_store_deletes_dropped_total",
                "Store deletes given up while the store kept failing (the record is deleted again at recovery).",
                &c.store_deletes_dropped,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let stats = committer.stats();
        let _ = writeln!(
            out,
            "# HELP pulsegate_store_commits_total Group commits (fsyncs) of the message store.\n# TYPE pulsegate_store_commits_total counter\npulsegate_store_commits_total {}\n\
             # HELP pulsegate_store_ops_total Records written or deleted.\n# TYPE pulsegate_store_ops_total counter\npulsegate_store_ops_total {}",
            stats.commits, stats.ops
        );
        // Store recovery and compaction (issue 14).
        let _ = writeln!(
            out,
            "# HELP pulsegate_store_errors_total Store errors by path: api = pushes answered 503, state = state-change commits failed or refused (kept and retried), commit = group commits the store failed, probe = recovery probes that failed, open = start-up opens that failed, compact = compactions that failed.\n# TYPE pulsegate_store_errors_total counter"
        );
        for (path, n) in [
            ("api", c.store_errors_api.load(Relaxed)),
            ("state", c.store_errors.load(Relaxed)),
            ("commit", stats.failed_commits),
            ("probe", stats.failed_probes),
            ("open", stats.failed_opens),
            ("compact", stats.failed_compactions),
        ] {
            let _ = writeln!(out, "pulsegate_store_errors_total{{path=\"{path}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP pulsegate_store_degraded 1 while the store cannot commit (pushes get 503, /healthz is degraded).\n# TYPE pulsegate_store_degraded gauge\npulsegate_store_degraded {}\n\
             # HELP pulsegate_store_compactions_total Compactions that shrank the store file.\n# TYPE pulsegate_store_compactions_total counter\npulsegate_store_compactions_total {}\n\
             # HELP pulsegate_store_file_bytes Size of the store file at its last measurement.\n# TYPE pulsegate_store_file_bytes gauge\npulsegate_store_file_bytes {}",
            u8::from(committer.is_failed()),
            stats.compactions,
            stats.file_bytes
        );
    }
    let g = &src.gauges;
    let _ = writeln!(
        out,
        "# HELP pulsegate_heartbeat_load_per_s Heartbeat load estimate (HB1 + HB2) / T.\n# TYPE pulsegate_heartbeat_load_per_s gauge\npulsegate_heartbeat_load_per_s {:.3}\n\
         # HELP pulsegate_keepalive_peak_to_mean Keep-alive arrivals per second over the last period: peak / mean.\n# TYPE pulsegate_keepalive_peak_to_mean gauge\npulsegate_keepalive_peak_to_mean {:.3}\n\
         # HELP pulsegate_keepalive_period_seconds The keep-alive most devices use.\n# TYPE pulsegate_keepalive_period_seconds gauge\npulsegate_keepalive_period_seconds {}\n\
         # HELP pulsegate_admission_closed 1 while new devices are refused (over the heartbeat-load threshold).\n# TYPE pulsegate_admission_closed gauge\npulsegate_admission_closed {}\n\
         # HELP pulsegate_dispersals_total Dispersal rounds the coordinator started.\n# TYPE pulsegate_dispersals_total counter\npulsegate_dispersals_total {}\n\
         # HELP pulsegate_reliefs_total Load relief rounds the coordinator started.\n# TYPE pulsegate_reliefs_total counter\npulsegate_reliefs_total {}",
        g.load_milli_per_s.load(Relaxed) as f64 / 1000.0,
        g.peak_to_mean_milli.load(Relaxed) as f64 / 1000.0,
        g.period_s.load(Relaxed),
        src.admission.closed.load(Relaxed) as u8,
        g.dispersals.load(Relaxed),
        g.reliefs.load(Relaxed),
    );
    total(
        &mut out,
        &src.peers,
        "pulsegate_control_messages_sent_total",
        "Keep-alive configuration and heartbeat adjustment messages sent.",
        |c| c.control_messages_sent.load(Relaxed),
    );
    total(
        &mut out,
        &src.peers,
        "pulsegate_heartbeat_adjustments_total",
        "Devices asked to lengthen their heartbeat.",
        |c| c.heartbeat_adjustments.load(Relaxed),
    );
    total(
        &mut out,
        &src.peers,
        "pulsegate_overload_disconnects_total",
        "Devices disconnected to relieve heartbeat load.",
        |c| c.overload_disconnects.load(Relaxed),
    );
    per_shard(
        &mut out,
        &src.peers,
        "pulsegate_connections_moved_in_total",
        "counter",
        "Connections adopted from another shard (rebalancing).",
        |c| c.connections_moved_in.load(Relaxed),
    );
    per_shard(
        &mut out,
        &src.peers,
        "pulsegate_connections_moved_out_total",
        "counter",
        "Connections handed to another shard (rebalancing).",
        |c| c.connections_moved_out.load(Relaxed),
    );
    total(
        &mut out,
        &src.peers,
        "pulsegate_move_failures_total",
        "Moves abandoned; the connection stayed on its shard.",
        |c| c.move_failures.load(Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP pulsegate_rebalance_rounds_total Rebalancing rounds the coordinator started.\n# TYPE pulsegate_rebalance_rounds_total counter\npulsegate_rebalance_rounds_total {}\n\
         # HELP pulsegate_rebalance_moves_requested_total Connections the coordinator asked shards to move.\n# TYPE pulsegate_rebalance_moves_requested_total counter\npulsegate_rebalance_moves_requested_total {}",
        g.rebalance_rounds.load(Relaxed),
        g.rebalance_moves_requested.load(Relaxed),
    );
    total(
        &mut out,
        &src.peers,
        "pulsegate_admissions_refused_total",
        "CONNECTs refused over the heartbeat-load threshold.",
        |c| c.admissions_refused.load(Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP pulsegate_delivery_events_lost_total Shard events the push service's full channel refused.\n# TYPE pulsegate_delivery_events_lost_total counter\npulsegate_delivery_events_lost_total {}",
        src.reports.lost()
    );
    let _ = writeln!(
        out,
        "# HELP pulsegate_http_tls_handshake_failures_total HTTPS connections that ended before their TLS handshake completed (bad or plaintext ClientHello, alert, no handshake within the idle timeout).\n# TYPE pulsegate_http_tls_handshake_failures_total counter\npulsegate_http_tls_handshake_failures_total {}",
        src.http.tls_handshake_failures.load(Relaxed)
    );
    let h = &src.http;
    let _ = writeln!(
        out,
        "# HELP pulsegate_http_connections HTTP API connections open.\n# TYPE pulsegate_http_connections gauge\npulsegate_http_connections {}\n\
         # HELP pulsegate_http_connections_refused_total HTTP API connections answered at accept and closed: 503 over http_max_connections, 429 over http_connections_per_ip_max.\n# TYPE pulsegate_http_connections_refused_total counter\n\
         pulsegate_http_connections_refused_total{{reason=\"connections_max\"}} {}\npulsegate_http_connections_refused_total{{reason=\"per_ip\"}} {}\n\
         # HELP pulsegate_http_requests_refused_total HTTP requests answered 503 because every handler thread was busy and the queue full.\n# TYPE pulsegate_http_requests_refused_total counter\npulsegate_http_requests_refused_total{{reason=\"handlers_busy\"}} {}\n\
         # HELP pulsegate_http_request_timeouts_total HTTP requests cut with 408: the head not whole within http_header_timeout_s of its first byte, or the body within http_body_timeout_s.\n# TYPE pulsegate_http_request_timeouts_total counter\n\
         pulsegate_http_request_timeouts_total{{phase=\"header\"}} {}\npulsegate_http_request_timeouts_total{{phase=\"body\"}} {}",
        h.connections_open.load(Relaxed),
        h.connections_refused_max.load(Relaxed),
        h.connections_refused_per_ip.load(Relaxed),
        h.requests_refused_busy.load(Relaxed),
        h.header_timeouts.load(Relaxed),
        h.body_timeouts.load(Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP pulsegate_stored_sessions Offline persistent sessions held.\n# TYPE pulsegate_stored_sessions gauge\npulsegate_stored_sessions {}",
        src.registry.stored_sessions()
    );
    let _ = writeln!(
        out,
        "# HELP pulsegate_relieved_devices Devices whose last connection load relief ended (never relieved so twice in a row; at most {}).\n# TYPE pulsegate_relieved_devices gauge\npulsegate_relieved_devices {}",
        RELIEVED_IDS_MAX,
        src.relieved.len()
    );
    out
}
