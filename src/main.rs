//! The `pulsegate` binary: flags -> Config -> shards and HTTP API -> wait for
//! SIGINT/SIGTERM -> clean shutdown. Nothing else lives here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

use pulsegate::api::{HttpConfig, HttpServer};
use pulsegate::config::{BackendChoice, Config, Flags};
use pulsegate::front::{ApiFront, ServiceHandle};
use pulsegate::gateway::Owners;
use pulsegate::outbound::url_policy::{Refused, UrlPolicy};
use pulsegate::push::budget::PayloadBudget;
use pulsegate::push::mechanism;
use pulsegate::push::recovery::{self, Recovered};
use pulsegate::push::service::{CallbackBudget, PushService, ServiceConfig, ServiceCounters, ServiceParts, unix_ms};
use pulsegate::shard::env::BackendInUse;
use pulsegate::store::{CompactPolicy, GroupCommitConfig, GroupCommitter, RedbStore, Store, StoreOp};
use pulsegate::tls::{ServerTls, ServerTlsFiles};
use pulsegate::{shard, sys};

/// Longest the process waits for shard threads after asking them to stop.
const SHUTDOWN_JOIN_MS: u64 = 5_000;

fn main() {
    let flags = Flags::parse();
    let cfg = match Config::from_flags(&flags) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("pulsegate: {e}");
            std::process::exit(2);
        }
    };
    let nofile = sys::rlimit::raise_nofile();
    eprintln!("pulsegate: RLIMIT_NOFILE soft={} hard={}", nofile.soft, nofile.hard);

    let backend = match cfg.backend {
        BackendChoice::Epoll => BackendInUse::Epoll,
        BackendChoice::Uring => match sys::uring::probe() {
            Ok(()) => BackendInUse::Uring,
            Err(e) => {
                eprintln!("pulsegate: --backend uring, but {e}");
                std::process::exit(1);
            }
        },
        BackendChoice::Auto => match sys::uring::probe() {
            Ok(()) => BackendInUse::Uring,
            Err(e) => {
                eprintln!("pulsegate: io_uring unavailable, falling back to epoll: {e}");
                BackendInUse::Epoll
            }
        },
    };

    println!("# pulsegate effective configuration\n{}", cfg.render());
    let auth = match pulsegate::auth::from_config(&cfg) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pulsegate: device authentication: {e}");
            std::process::exit(1);
        }
    };
    if cfg.device_auth_kind.is_none() {
        eprintln!(
            "pulsegate: WARNING: no [device_auth] configured: any MQTT client may connect as any client id \
             and take that device's session over; set [device_auth] kind = \"jwt\" (or kind = \"none\" to accept this)"
        );
    } else {
        eprintln!("pulsegate: device authentication: {}", auth.kind());
    }
    let owners = match Owners::new(cfg.clone(), auth.clone(), backend) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("pulsegate: {e}");
            std::process::exit(1);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    // SIGHUP re-reads keys and certificates (see `Reloads`); caught from here on.
    let hangup = Arc::new(AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, hangup.clone()) {
        eprintln!("pulsegate: cannot install the SIGHUP handler (key reloads): {e}");
        std::process::exit(1);
    }
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            eprintln!("pulsegate: cannot install signal handler: {e}");
            std::process::exit(1);
        }
    }

    let shards = match shard::start(owners.shard_env(), backend, nofile.soft, stop.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pulsegate: {e}");
            std::process::exit(1);
        }
    };
    let total = shards.capacity_per_shard as u64 * cfg.shards as u64;
    if total < cfg.max_connections {
        eprintln!(
            "pulsegate: holding at most {total} connections ({} per shard x {} shards), below max_connections={}: \
             the per-shard limit is RLIMIT_NOFILE; raise it, or add shards (io_uring: each shard has its own table)",
            shards.capacity_per_shard, cfg.shards, cfg.max_connections
        );
    }

    let coordinator_thread = match pulsegate::coordinator::spawn(owners.coordinator_env(), stop.clone()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("pulsegate: cannot start the coordinator: {e}");
            std::process::exit(1);
        }
    };
    let (service_thread, service) = match start_push_service(&owners, &stop) {
        Ok(started) => started,
        Err(e) => {
            eprintln!("pulsegate: {e}");
            stop.store(true, Ordering::Relaxed);
            std::process::exit(1);
        }
    };
    let url_policy = service.url_policy.clone();
    let front = match ApiFront::new(owners.front_env(service)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("pulsegate: {e}");
            stop.store(true, Ordering::Relaxed);
            std::process::exit(1);
        }
    };
    if !front.admin_reachable() {
        eprintln!(
            "pulsegate: admin endpoints (/v1/admin/...) are closed: no admin_key_file and no [[sps]] entry with admin = true"
        );
    }
    if front.is_open() {
        eprintln!(
            "pulsegate: WARNING: no [[sps]] API keys configured: the HTTP API is open to every caller \
             (all messages belong to SP {:?})",
            pulsegate::front::OPEN_SP
        );
    }

    let http_listener = match pulsegate::api::bind(cfg.http_listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pulsegate: cannot listen on {}: {e}", cfg.http_listen);
            std::process::exit(1);
        }
    };
    let http_config = HttpConfig {
        max_connections: cfg.http_max_connections,
        connections_per_ip_max: cfg.http_connections_per_ip_max,
        max_header_bytes: cfg.http_max_header_bytes,
        max_body_bytes: cfg.http_max_body_bytes,
        header_timeout_ms: u64::from(cfg.http_header_timeout_s) * 1000,
        body_timeout_ms: u64::from(cfg.http_body_timeout_s) * 1000,
        idle_timeout_ms: cfg.http_idle_timeout_ms,
        max_requests_per_connection: cfg.http_requests_per_connection_max,
        handler_threads: cfg.http_handler_threads,
        handler_queue_max: cfg.http_handler_queue_max,
    };
    // HTTPS: its own rustls config (ALPN http/1.1); `http_tls.reload()` re-reads the files
    // for connections accepted after it.
    let http_tls = match http_server_tls(&cfg) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("pulsegate: HTTP API TLS: {e}");
            std::process::exit(1);
        }
    };
    let http = match HttpServer::start(
        http_listener,
        http_config,
        Arc::new(front),
        http_tls.clone(),
        owners.http.clone(),
    ) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("pulsegate: HTTP API failed to start: {e}");
            std::process::exit(1);
        }
    };
    let mut listeners = vec![shards.mqtt_addr, http.local_addr()];
    listeners.extend(shards.mqtt_tls_addr);
    url_policy.set_listeners(listeners);
    if let Err(e) = check_webhooks(&cfg, &url_policy) {
        eprintln!("pulsegate: {e}");
        stop.store(true, Ordering::Relaxed);
        std::process::exit(1);
    }
    // One parseable line for scripts and tests: the addresses actually bound.
    println!(
        "pulsegate: ready backend={} shards={} capacity={} mqtt={} http={}{}",
        backend.label(),
        cfg.shards,
        total,
        shards.mqtt_addr,
        http.local_addr(),
        shards
            .mqtt_tls_addr
            .map(|a| format!(" mqtt_tls={a}"))
            .unwrap_or_default()
    );
    if let Some(path) = &flags.ready_file {
        let ready = serde_json::json!({
            "pid": std::process::id(),
            "backend": backend.label(),
            "shards": cfg.shards,
            "capacity": total,
            "mqtt": shards.mqtt_addr.to_string(),
            "http": http.local_addr().to_string(),
            "mqtt_tls": shards.mqtt_tls_addr.map(|a| a.to_string()),
        });
        if let Err(e) = write_ready_file(path, &ready.to_string()) {
            eprintln!("pulsegate: cannot write --ready-file {}: {e}", path.display());
            stop.store(true, Ordering::Relaxed);
        }
    }

    let mut reloads = Reloads::default();
    let auth_for_reload = auth.clone();
    reloads.add("device auth", move || auth_for_reload.reload());
    reloads.add_certificate("MQTT TLS certificate", owners.mqtt_tls());
    reloads.add_certificate("HTTPS certificate", http_tls.clone());
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if hangup.swap(false, Ordering::Relaxed) {
            reloads.run();
        }
    }
    eprintln!("pulsegate: stopping");
    owners.shard.peers.shutdown_all();
    http.shutdown();
    let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_JOIN_MS);
    for t in shards.threads.into_iter().chain([service_thread, coordinator_thread]) {
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
    eprintln!("pulsegate: stopped");
}

/// What SIGHUP re-reads (keys and certificates; never the settings), each
/// on its own: one that fails keeps its previous material and says why.
#[derive(Default)]
struct Reloads {
    items: Vec<(&'static str, Reload)>,
}

/// Re-reads one set of keys: what was loaded, or why not.
type Reload = Box<dyn Fn() -> Result<String, String>>;

impl Reloads {
    fn add(&mut self, what: &'static str, reload: impl Fn() -> Result<String, String> + 'static) {
        self.items.push((what, Box::new(reload)));
    }

    /// A TLS identity, when that listener has one.
    fn add_certificate(&mut self, what: &'static str, tls: Option<Arc<ServerTls>>) {
        if let Some(tls) = tls {
            self.add(what, move || {
                tls.reload()
                    .map(|()| format!("reloaded {}", tls.files().cert_file.display()))
            });
        }
    }

    fn run(&self) {
        for (what, reload) in &self.items {
            match reload() {
                Ok(done) => eprintln!("pulsegate: SIGHUP: {what}: {done}"),
                Err(e) => eprintln!("pulsegate: SIGHUP: {what}: reload failed, keeping the previous keys: {e}"),
            }
        }
    }
}

/// The HTTP API's TLS identity when `http_tls` is set (validation made sure the files are named).
fn http_server_tls(cfg: &Config) -> Result<Option<Arc<ServerTls>>, String> {
    let (true, Some(cert_file), Some(key_file)) = (cfg.http_tls, &cfg.tls_cert_file, &cfg.tls_key_file) else {
        return Ok(None);
    };
    let files = ServerTlsFiles {
        cert_file: cert_file.clone(),
        key_file: key_file.clone(),
        alpn: vec![b"http/1.1".to_vec()],
    };
    ServerTls::load(files).map(|t| Some(Arc::new(t)))
}

/// Writes `text` to `path` so a reader never sees it half-written (write a
/// sibling, then rename over).
fn write_ready_file(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Every webhook URL against the outbound policy: an inward address (not in
/// `outbound_allow`) or one of our listeners stops the start; a name that does
/// not resolve now is only a warning (each send checks it again).
fn check_webhooks(cfg: &pulsegate::config::Config, policy: &UrlPolicy) -> Result<(), String> {
    for m in &cfg.mechanisms {
        let pulsegate::config::mechanism::Kind::Webhook { url } = &m.kind else {
            continue;
        };
        match policy.check(url) {
            Ok(_) => {}
            Err(why @ Refused::Unresolvable { .. }) => {
                eprintln!(
                    "pulsegate: WARNING: mechanisms.{}.url: {why}; checked again at each send",
                    m.name
                );
            }
            Err(why) => return Err(format!("mechanisms.{}.url: {why}", m.name)),
        }
    }
    Ok(())
}

/// Opens the store, recovers pending messages and starts the push service thread.
fn start_push_service(
    owners: &Owners,
    stop: &Arc<AtomicBool>,
) -> Result<(std::thread::JoinHandle<()>, ServiceHandle), String> {
    let cfg = owners.cfg();
    let retry_ms = (cfg.store_retry_ms_min, cfg.store_retry_ms_max);
    let (store, open_error) = RedbStore::open_at_start(&cfg.data_dir, retry_ms, stop)
        .map_err(|e| format!("cannot open the store in {}: {e}", cfg.data_dir.display()))?;
    // Degraded at start (see open_at_start): nothing on disk yet to recover.
    let (records, payloads) = match open_error {
        Some(_) => (Vec::new(), Vec::new()),
        None => (
            store.load_all().map_err(|e| format!("cannot read the store: {e}"))?,
            store
                .load_payloads()
                .map_err(|e| format!("cannot read the store's payloads: {e}"))?,
        ),
    };
    let Recovered {
        messages: recovered,
        unreadable,
        orphan_payloads,
        missing_payloads,
        payload_bytes,
    } = recovery::relink(records, payloads, unix_ms());
    for m in &recovered {
        owners.push_ids.advance_past(m.id);
        if let Some(row) = m.payload.stored_as {
            owners.push_ids.advance_past(row);
        }
    }
    // Rows whose last message finished before their delete landed.
    let orphans: Vec<StoreOp> = orphan_payloads
        .iter()
        .map(|&id| StoreOp::DeletePayload { id })
        .collect();
    // Not fatal: on a full disk the rows wait for the next start.
    if !orphans.is_empty()
        && let Err(e) = store.commit(&orphans)
    {
        eprintln!(
            "pulsegate: cannot delete {} unreferenced payloads yet: {e}",
            orphans.len()
        );
    }
    let pending = recovered.iter().filter(|m| !m.state.is_terminal()).count();
    eprintln!(
        "pulsegate: store {}: {} messages recovered ({pending} pending, {payload_bytes} payload bytes), {unreadable} unreadable, \
         {} unreferenced payloads deleted, {missing_payloads} failed for a missing payload",
        cfg.data_dir.display(),
        recovered.len(),
        orphans.len()
    );
    let store: Arc<dyn Store> = Arc::new(store);
    let commit_cfg = GroupCommitConfig {
        queue_ops_max: cfg.store_queue_ops_max,
        batch_ops_max: cfg.store_batch_ops_max,
        batch_wait_us: 0,
        commit_interval_us: cfg.store_commit_interval_us,
        retry_ms_min: cfg.store_retry_ms_min,
        retry_ms_max: cfg.store_retry_ms_max,
        compact: CompactPolicy {
            free_bytes_min: cfg.store_compact_free_bytes_min,
            free_percent_min: cfg.store_compact_free_percent_min,
            ..CompactPolicy::default()
        },
    };
    let committer = Arc::new(match open_error {
        None => GroupCommitter::start(store, commit_cfg),
        Some(e) => GroupCommitter::start_degraded(store, commit_cfg, e),
    });
    let (requests_tx, requests_rx) = crossbeam_channel::bounded(cfg.api_requests_queue_max);
    let counters = Arc::new(ServiceCounters::default());
    let budget = Arc::new(PayloadBudget::new(
        cfg.pending_payload_bytes_max,
        cfg.sp_pending_payload_bytes_max,
    ));
    // Its listeners are set once bound (`check_webhooks`).
    let url_policy = Arc::new(UrlPolicy::new(cfg.outbound_allow.clone()));
    let handle = ServiceHandle {
        requests: requests_tx,
        committer: committer.clone(),
        counters: counters.clone(),
        budget: budget.clone(),
        url_policy: url_policy.clone(),
    };
    let deliveries = owners.take_delivery_events().ok_or("delivery events already taken")?;
    // Read once here, so a bad outbound_ca_file stops the start naming the file.
    let outbound_roots = pulsegate::tls::client_root_certs(cfg.outbound_ca_file.as_deref())
        .map_err(|e| format!("outbound_ca_file: {e}"))?;
    if outbound_roots.is_empty() {
        eprintln!(
            "pulsegate: WARNING: no system CA certificates found and no outbound_ca_file: https:// webhooks and callbacks will fail"
        );
    }
    let mut mechanisms = vec![mechanism::persistent(cfg.persistent_ack_timeout_ms)];
    mechanisms.extend(cfg.mechanisms.iter().cloned());
    let parts = ServiceParts {
        devices: Arc::new(owners.device_routes()),
        committer,
        requests: requests_rx,
        deliveries,
        mechanisms,
        config: ServiceConfig {
            pending_messages_max: cfg.pending_messages_max,
            pending_per_device_max: cfg.pending_pushes_per_device_max,
            completed_retention_bytes_max: cfg.completed_retention_bytes_max,
            callback_budget: CallbackBudget {
                per_s: cfg.sp_callbacks_per_s,
                burst: cfg.sp_callbacks_burst,
            },
            ..ServiceConfig::default()
        },
        counters,
        budget,
        outbound_workers: cfg.outbound_workers,
        outbound_roots,
        url_policy,
    };
    let stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("push-service".into())
        .spawn(move || PushService::new(parts, recovered).run(&stop))
        .map_err(|e| format!("cannot start the push service: {e}"))?;
    Ok((thread, handle))
}
