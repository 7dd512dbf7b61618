//! The test kit's own contract, over the real binary: the `--ready-file` JSON names the
//! process and the addresses it bound (and agrees with the human ready line on stdout);
//! a message answered 201 survives `kill9` and is delivered after `restart` over the same
//! data dir; a clean `stop` exits 0; a gateway that cannot start fails with its stderr;
//! and the prerequisite rule (skip outside CI, fail under CI=true) decides as documented.

mod common;

use common::*;

fn ready_file_names_the_process_and_its_ports(backend: &str) {
    let mut gw = Spawn::new(backend).shards(3).start();
    assert_eq!((gw.backend.as_str(), gw.shards), (backend, 3));
    // The ports in the file are the ones serving: both answer.
    gw.assert_ports_serve();
    let line = format!(
        "pulsegate: ready backend={backend} shards=3 capacity={} mqtt={} http={}",
        gw.capacity, gw.mqtt, gw.http
    );
    assert!(
        gw.stdout().lines().any(|l| l == line),
        "stdout has the human ready line {line:?}:\n{}",
        gw.stdout()
    );
    let pid = gw.pid();
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the ready file's pid {pid} is alive"
    );
    let status = gw.stop();
    assert!(status.success(), "clean stop: {status:?}\n{}", gw.stderr());
}

fn accepted_message_survives_kill9_and_restart(backend: &str) {
    let mut gw = Gateway::start(backend, &[]);
    // Offline device, default profile: stored and forwarded.
    let (status, body) = gw.http_conn().post_message(&serde_json::json!({
        "device": "kit-restart", "payload": "kept on disk", "qos": 1,
    }));
    assert_eq!(status, 201, "{body}");
    let first = (gw.pid(), gw.mqtt, gw.http);
    let status = gw.kill9();
    assert!(!status.success(), "SIGKILL is not a clean exit: {status:?}");
    gw.restart();
    assert_ne!(gw.pid(), first.0, "restart runs a new process");
    gw.assert_ports_serve();
    let mut dev = gw.connect_id(V311, "kit-restart");
    let p = dev.expect_publish(WAIT);
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("push/kit-restart", &b"kept on disk"[..])
    );
    dev.puback(p.qos1_packet_id());
    let status = gw.stop();
    assert!(status.success(), "{status:?}\n{}", gw.stderr());
}

/// A gateway that cannot start fails the test with its exit status and its stderr.
fn failed_start_reports_the_gateway_stderr(backend: &str) {
    let panic = std::panic::catch_unwind(|| Spawn::new(backend).args(&["--no-such-flag"]).start())
        .err()
        .expect("a gateway with an unknown flag does not start");
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_else(|| format!("{panic:?}"));
    assert!(message.contains("exited with"), "{message}");
    // clap's complaint, which only the gateway's stderr carries.
    assert!(
        message.contains("unexpected argument '--no-such-flag'"),
        "stderr is in the message: {message}"
    );
}

both_backends!(
    ready_file_names_the_process_and_its_ports,
    accepted_message_survives_kill9_and_restart,
    failed_start_reports_the_gateway_stderr
);

#[test]
fn prerequisite_rule_skips_outside_ci_and_fails_under_ci() {
    assert_eq!(
        verdict("mosquitto_sub", true, "apt-get install mosquitto-clients", true),
        Verdict::Run
    );
    assert_eq!(
        verdict("mosquitto_sub", true, "apt-get install mosquitto-clients", false),
        Verdict::Run
    );
    assert!(matches!(
        verdict("mosquitto_sub", false, "apt-get install mosquitto-clients", true),
        Verdict::Fail(m) if m.contains("mosquitto_sub") && m.contains("CI=true")
    ));
    assert!(matches!(
        verdict("mosquitto_sub", false, "apt-get install mosquitto-clients", false),
        Verdict::Skip(m) if m.contains("mosquitto_sub") && m.contains("apt-get install")
    ));
}

#[test]
fn only_201_is_accepted() {
    assert!(accepted(201));
    for status in [200, 202, 204, 400, 404, 409, 503] {
        assert!(!accepted(status), "{status}");
    }
}
