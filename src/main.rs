//! The `pulsegate` binary: flags -> Config -> shards and HTTP API -> wait for
//! SIGINT/SIGTERM -> clean shutdown. Nothing else lives here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

use pulsegate::api::{HttpConfig, HttpServer};
use pulsegate::auth::AllowAll;
use pulsegate::config::{BackendChoice, Config, Flags};
use pulsegate::gateway::{BackendInUse, Shared};
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
    let shared = Arc::new(Shared::new(cfg.clone(), Box::new(AllowAll), backend));
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            eprintln!("pulsegate: cannot install signal handler: {e}");
            std::process::exit(1);
        }
    }

    let shards = match shard::start(shared.clone(), backend, nofile.soft, stop.clone()) {
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

    let http_listener = match std::net::TcpListener::bind(cfg.http_listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pulsegate: cannot listen on {}: {e}", cfg.http_listen);
            std::process::exit(1);
        }
    };
    let http_config = HttpConfig {
        max_connections: cfg.http_max_connections,
        max_header_bytes: 16 * 1024,
        max_body_bytes: cfg.http_max_body_bytes,
        idle_timeout_ms: 30_000,
        max_requests_per_connection: 1_000_000,
    };
    let http = match HttpServer::start(http_listener, http_config, shared.clone()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("pulsegate: HTTP API failed to start: {e}");
            std::process::exit(1);
        }
    };
    // One parseable line for scripts and tests: the addresses actually bound.
    println!(
        "pulsegate: ready backend={} shards={} capacity={} mqtt={} http={}",
        backend.label(),
        cfg.shards,
        total,
        shards.mqtt_addr,
        http.local_addr()
    );

    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("pulsegate: stopping");
    shared.shutdown_shards();
    http.shutdown();
    let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_JOIN_MS);
    for t in shards.threads {
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
    eprintln!("pulsegate: stopped");
}
