//! Tests of the configuration: precedence, refusals with typed errors, the
//! rendered TOML loading back into the same `Config`, and the README's
//! settings table matching the one generated from the table.
//!
//! Owns nothing at run time. Must never write outside the temp dir, except
//! the ignored `update_readme_settings_table`, which rewrites README.md.

use clap::Parser;

use super::value::{Number, Range};
use super::*;

/// A file of its own per call (tests run in parallel and share tags).
fn temp_file(tag: &str, text: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pg-config-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir is writable");
    let path = dir.join("c.toml");
    std::fs::write(&path, text).expect("temp file is writable");
    path
}

fn load_file(tag: &str, text: &str) -> Result<Config, ConfigError> {
    let path = temp_file(tag, text);
    let flags = Flags::try_parse_from(["pulsegate", "--config", path.to_str().expect("utf-8 path")]).expect("parse");
    Config::from_flags(&flags)
}

fn load_flags(args: &[&str]) -> Result<Config, ConfigError> {
    let flags = Flags::try_parse_from(std::iter::once("pulsegate").chain(args.iter().copied())).expect("flags parse");
    Config::from_flags(&flags)
}

#[test]
fn flags_win_over_file_and_file_over_defaults() {
    let path = temp_file("a", "shards = 3\nmax_inflight = 7\nbackend = \"epoll\"\n");
    let c = load_flags(&["--config", path.to_str().expect("utf-8 path"), "--shards", "5"]).expect("valid");
    assert_eq!(c.shards, 5);
    assert_eq!(c.max_inflight, 7);
    assert_eq!(c.backend, BackendChoice::Epoll);
    assert_eq!(c.connect_timeout_s, 10);
}

#[test]
fn unknown_file_keys_and_out_of_range_values_are_refused() {
    assert!(matches!(
        load_file("b", "shardz = 3\n"),
        Err(ConfigError::FileInvalid { .. })
    ));
    assert!(matches!(
        load_flags(&["--shards", "0"]),
        Err(ConfigError::OutOfRange { setting: "shards", .. })
    ));
    assert!(matches!(
        load_flags(&["--recv-bufs-per-shard", "1000"]),
        Err(ConfigError::OutOfRange {
            setting: "recv_bufs_per_shard",
            value: Number::Int(1000),
            range: Range::PowerOfTwo { .. },
        })
    ));
}

#[test]
fn sessions_settings_are_validated_and_errors_name_setting_value_and_range() {
    let e = load_flags(&["--stored-sessions-max", "200000000"]).expect_err("over 100 M");
    assert!(matches!(
        e,
        ConfigError::OutOfRange {
            setting: "stored_sessions_max",
            value: Number::Int(200_000_000),
            range: Range::Int {
                min: 0,
                max: 100_000_000
            },
        }
    ));
    assert_eq!(
        e.to_string(),
        "stored_sessions_max = 200000000 is out of range (allowed: 0 ..= 100000000)"
    );
    assert!(matches!(
        load_file("s", "session_expiry_max_s = 4000000000\n"),
        Err(ConfigError::OutOfRange {
            setting: "session_expiry_max_s",
            ..
        })
    ));
    let e = load_flags(&["--rebalance-ratio", "1.0"]).expect_err("must be > 1");
    assert_eq!(
        e.to_string(),
        "rebalance_ratio = 1.0 is out of range (allowed: > 1.0, finite)"
    );
    let e = load_flags(&["--dispersal-select-factor", "1.6"]).expect_err("above the threshold");
    assert_eq!(
        e.to_string(),
        "dispersal_select_factor = 1.6 is out of range (allowed: ≥ 1.0, ≤ 1.5)"
    );
    let e = load_flags(&["--store-queue-ops-max", "100", "--store-batch-ops-max", "101"]).expect_err("batch > queue");
    assert!(matches!(
        e,
        ConfigError::OutOfRange {
            setting: "store_batch_ops_max",
            range: Range::Int { min: 1, max: 100 },
            ..
        }
    ));
    let e = load_flags(&["--shards", "2", "--max-connections", "9000000"]).expect_err("over 2 x 4 Mi");
    assert!(matches!(
        e,
        ConfigError::OutOfRange {
            setting: "max_connections",
            ..
        }
    ));
    let e = load_flags(&["--home-network", "46001"]).expect_err("not MCC-MNC");
    assert!(matches!(e, ConfigError::Invalid { ref setting, .. } if setting == "home_network"));
}

#[test]
fn defaults_are_valid() {
    Config::default()
        .validate()
        .expect("the embedded defaults pass their own checks");
    let c = load_flags(&[]).expect("defaults load");
    assert_eq!(c.listen_shards, c.shards, "`all` is resolved to the shard count");
}

/// A configuration with every setting off its default (options set), and
/// every file-only section filled.
fn everything_changed() -> Config {
    let text = r#"
mqtt_listen = "127.0.0.1:2883"
http_listen = "0.0.0.0:9080"
shards = 13
backend = "epoll"
max_connections = 5000
server_keepalive_s = 45
connect_timeout_s = 11
max_packet_bytes = 4096
packet_complete_timeout_s = 7
shard_partial_packet_bytes_max = 8192
max_inflight = 8
pending_pushes_per_device_max = 9
stored_sessions_max = 77
session_expiry_max_s = 600
recv_buf_bytes = 4096
recv_bufs_per_shard = 64
loop_batch_wait_us = 250
pin_cpus = false
http_max_connections = 17
http_max_body_bytes = 9999
http_max_header_bytes = 8192
http_idle_timeout_ms = 1234
http_requests_per_connection_max = 99
http_connections_per_ip_max = 7
http_header_timeout_s = 4
http_body_timeout_s = 5
http_handler_threads = 3
http_handler_queue_max = 33
data_dir = "/tmp/pg \"quoted\" dir"
default_ttl_s = 321
persistent_ack_timeout_ms = 2500
pending_messages_max = 4321
pending_payload_bytes_max = 5000000
sp_pending_payload_bytes_max = 2000000
completed_retention_bytes_max = 3000000
api_requests_queue_max = 1024
store_queue_ops_max = 5000
store_batch_ops_max = 500
store_commit_interval_us = 500
store_retry_ms_min = 20
store_retry_ms_max = 2000
store_compact_free_bytes_min = 1048576
store_compact_free_percent_min = 30
outbound_workers = 3
max_heartbeats_per_s = 123.25
server_reference = "other.example:1883"
heartbeat_max_s = 900
dispersal = false
dispersal_threshold_factor = 2.0
dispersal_select_factor = 1.1
relief_rule = "match_degree"
home_network = "460-01"
home_areas = [10, 20, 30]
rebalance = false
rebalance_ratio = 1.5
rebalance_hold_s = 30
rebalance_moves_per_round_max = 77
listen_shards = 11
mqtt_tls_listen = "127.0.0.1:8883"
tls_cert_file = "/etc/pg/cert.pem"
tls_key_file = "/etc/pg/key.pem"
admin_key_file = "/etc/pg/admin.key"
metrics_key_file = "/etc/pg/metrics.key"
http_tls = true
outbound_ca_file = "/etc/pg/ca.pem"
accept_rate_per_s = 5000
accept_per_ip_rate_per_s = 20
accept_per_ip_burst = 40
outbound_allow = ["127.0.0.0/8", "10.1.2.3:8443", "[fd00::1]:443"]
sp_callbacks_per_s = 7.5
sp_callbacks_burst = 12

[device_auth]
kind = "jwt"
algorithm = "ES256"
key_file = "/etc/pg/jwt.pem"
leeway_s = 5

[[sps]]
name = "acme"
api_key = "acme-secret-key"
default_profile = "urgent"
rate_per_s = 50.5
admin = true

[[sps]]
name = "other"
api_key = "other-secret-key"

[profiles.urgent]
goal = "critical"
priority = 7
max_cost = 2.5
deliver_within_s = 60
queue_if_offline = false

[profiles.urgent.retry]
max_attempts = 3
backoff_base_ms = 200
backoff_max_ms = 5000
on_failure = "same_mechanism"

[profiles.plain]

[[mechanisms]]
name = "sms"
kind = "webhook"
url = "http://127.0.0.1:9/sms"
cost = 3.5
timeout_ms = 2000
expected_latency_ms = 800
"#;
    load_file("all", text).expect("the full example is valid")
}

#[test]
fn every_setting_differs_from_its_default_in_the_round_trip_example() {
    // Else the round trip below would not prove that setting survives. The
    // default shard count is the CPU count: compare with 1 shard (and so 1
    // listening shard), which the example is not.
    let c = everything_changed();
    let d = Config {
        shards: 1,
        ..Config::default()
    };
    let (changed, defaults) = (c.render(), d.render());
    for s in settings() {
        let line = |text: &str| {
            let (set, unset) = (format!("{} = ", s.name), format!("# {} is unset", s.name));
            text.lines()
                .find(|l| l.starts_with(&set) || l.starts_with(&unset))
                .map(str::to_string)
        };
        assert!(line(&changed).is_some(), "{} is not rendered", s.name);
        assert_ne!(
            line(&changed),
            line(&defaults),
            "{} is at its default in everything_changed()",
            s.name
        );
    }
}

#[test]
fn the_rendered_configuration_loads_back_into_the_same_config() {
    let c = everything_changed();
    let text = c.render_toml(Secrets::Shown);
    let back = load_file("rt", &text).unwrap_or_else(|e| panic!("rendered TOML does not load: {e}\n{text}"));
    assert_eq!(back, c, "rendered:\n{text}");

    // The start-up print: complete and loadable as it is when no SP has a key to hide.
    let open = Config {
        sps: Vec::new(),
        profiles: Default::default(),
        ..c.clone()
    };
    let back = load_file("rt2", &open.render()).expect("render() loads");
    assert_eq!(back, open);

    // The defaults too (unset options are comments, `all` shards a count).
    let d = load_flags(&[]).expect("defaults load");
    let text = d.render();
    assert!(text.contains("# server_keepalive_s is unset\n"), "{text}");
    assert_eq!(load_file("rt3", &text).expect("defaults render loads"), d);
}

#[test]
fn the_rendered_configuration_names_every_setting_and_hides_api_keys() {
    let c = everything_changed();
    let text = c.render();
    for s in settings() {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{} = ", s.name))),
            "{} missing from:\n{text}",
            s.name
        );
    }
    assert!(!text.contains("secret-key"), "{text}");
    assert!(text.contains("# api_key is not shown"), "{text}");
    assert!(c.render_toml(Secrets::Shown).contains("acme-secret-key"));
}

#[test]
fn every_setting_has_a_flag_that_means_what_its_file_key_means() {
    // From the rendered file, the same values as flags: `key = v` -> `--key v`.
    let c = everything_changed();
    let mut args = vec!["pulsegate".to_string()];
    for line in c.render().lines() {
        let Some((key, value)) = line.split_once(" = ") else {
            break;
        };
        let value: toml::Value =
            toml::from_str::<toml::Table>(&format!("v = {value}")).expect("a TOML value")["v"].clone();
        let flag_value = match value {
            toml::Value::String(s) => s,
            toml::Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        args.push(format!("--{}", key.replace('_', "-")));
        args.push(flag_value);
    }
    let flags = Flags::try_parse_from(&args).expect("every setting is a flag");
    let from_flags = Config::from_flags(&flags).expect("valid");
    let settings_only = Config {
        sps: Vec::new(),
        profiles: Default::default(),
        mechanisms: Vec::new(),
        ..c
    };
    assert_eq!(from_flags, settings_only);
}

/// The `## Settings` table of README.md.
fn readme_table(readme: &str) -> Option<(usize, usize)> {
    let heading = readme.find("\n## Settings\n")?;
    let start = heading + readme[heading..].find("\n| setting |")? + 1;
    let len: usize = readme[start..]
        .split_inclusive('\n')
        .take_while(|l| l.starts_with('|'))
        .map(str::len)
        .sum();
    Some((start, start + len))
}

fn readme_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md")
}

#[test]
fn readme_settings_table_is_the_generated_one() {
    let readme = std::fs::read_to_string(readme_path()).expect("README.md is readable");
    let (start, end) = readme_table(&readme).expect("README.md has a `## Settings` heading with a `| setting |` table");
    assert!(
        readme[start..end] == settings_markdown(),
        "README.md's settings table differs from the settings table in src/config/table.rs; regenerate it with\n  \
         cargo test --release --lib config::tests::update_readme_settings_table -- --ignored\n\
         generated:\n{}",
        settings_markdown()
    );
}

/// Rewrites README.md's settings table from the table (`-- --ignored`).
#[test]
#[ignore]
fn update_readme_settings_table() {
    let path = readme_path();
    let readme = std::fs::read_to_string(&path).expect("README.md is readable");
    let (start, end) = readme_table(&readme).expect("README.md has a `## Settings` table");
    let updated = format!("{}{}{}", &readme[..start], settings_markdown(), &readme[end..]);
    std::fs::write(&path, updated).expect("README.md is writable");
}

/// Prints the settings table (`-- --ignored --nocapture`).
#[test]
#[ignore]
fn print_settings_table() {
    print!("{}", settings_markdown());
}

#[test]
fn connections_are_split_over_shards() {
    let c = Config {
        shards: 3,
        max_connections: 100,
        ..Config::default()
    };
    assert_eq!(c.connections_per_shard(), 34);
}

#[test]
fn device_auth_section_and_tls_settings_are_checked() {
    let parse = |text: &str| {
        let file = Config::parse_file(text).map_err(|e| e.to_string())?;
        let file = file.fold_device_auth().map_err(|e| e.to_string())?;
        let c = table::merge(&Flags::default(), file).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok::<Config, String>(c)
    };
    let c = parse("[device_auth]\nkind = \"jwt\"\nkey_file = \"k\"\n").unwrap();
    assert_eq!(c.device_auth_kind, Some(DeviceAuthKind::Jwt));
    assert_eq!(c.device_auth_algorithm, JwtAlgorithm::HS256);
    assert_eq!(c.device_auth_leeway_s, 30);
    let err = parse("[device_auth]\nkind = \"jwt\"\n").unwrap_err();
    assert!(err.contains("needs key_file"), "{err}");
    let err = parse("device_auth_leeway_s = 3\n[device_auth]\nleeway_s = 4\n").unwrap_err();
    assert!(
        err.contains("device_auth.leeway_s") && err.contains("keep one"),
        "{err}"
    );
    let err = parse("[device_auth]\nkind = \"ldap\"\n").unwrap_err();
    assert!(err.contains("ldap"), "{err}");
    let err = parse("[device_auth]\nalgorithm = \"none\"\n").unwrap_err();
    assert!(err.contains("none"), "{err}");
    let err = parse("mqtt_tls_listen = \"127.0.0.1:8883\"\n").unwrap_err();
    assert!(
        err.contains("mqtt_tls_listen") && err.contains("tls_cert_file"),
        "{err}"
    );
    let err = parse("http_tls = true\ntls_cert_file = \"c\"\n").unwrap_err();
    assert!(err.contains("http_tls"), "{err}");
}
