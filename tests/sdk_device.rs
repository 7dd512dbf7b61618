//! End-to-end test of the `pulsegate-device` example program (the device SDK) against the
//! real gateway binary (the test kit's `Gateway`): the device connects, one push sent over
//! HTTP (`POST /v1/messages`, QoS 1 -> 201) is printed by the device, SIGTERM stops it
//! cleanly and its heartbeat state file names the server.
//!
//! Both binaries are built by cargo for this test, so neither can be missing. Bounded: every
//! wait has a deadline, and both processes are killed when the test ends.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Gateway, Spawn, accepted};

const DEVICE_BIN: &str = env!("CARGO_BIN_EXE_pulsegate-device");
const LINE_WAIT: Duration = Duration::from_secs(15);

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a child's stdout, read on a thread.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits (bounded) for a line starting with `prefix`; returns it.
fn expect_line(rx: &mpsc::Receiver<String>, prefix: &str, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + LINE_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if line.starts_with(prefix) {
                    return line;
                }
            }
            Err(_) => panic!("no line starting with {prefix:?} within {LINE_WAIT:?}; saw {seen:?}"),
        }
    }
}

#[test]
fn device_receives_a_push_and_stops_on_sigterm() {
    let gw: Gateway = Spawn::new("uring").shards(1).start();
    let mqtt = gw.mqtt.to_string();
    let state = gw.data_dir.with_file_name("device.json");
    let mut dev = Command::new(DEVICE_BIN)
        .args(["--server", &mqtt, "--client-id", "sdk-e2e-1", "--keepalive-s", "5"])
        .args(["--state-file", state.to_str().expect("utf-8 temp dir")])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start pulsegate-device");
    let dev_lines = lines(&mut dev);
    let pid = rustix::process::Pid::from_child(&dev);
    let mut dev = KillOnDrop(dev);
    let mut seen = Vec::new();
    let connected = expect_line(&dev_lines, "connected", &mut seen);
    assert!(connected.contains(&format!("server={mqtt}")), "{connected}");

    // The default profile: QoS 1, stored and forwarded.
    let (status, body) = gw.http_conn().post_message(&serde_json::json!({
        "device": "sdk-e2e-1", "payload": "hello from the SP", "qos": 1,
    }));
    assert!(accepted(status), "{status} {body}");
    let push = expect_line(&dev_lines, "push ", &mut seen);
    assert_eq!(push, "push topic=push/sdk-e2e-1 qos=1 payload=hello from the SP");

    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM the device");
    expect_line(&dev_lines, "stopped", &mut seen);
    let deadline = Instant::now() + LINE_WAIT;
    let status = loop {
        if let Some(s) = dev.0.try_wait().expect("try_wait on the device") {
            break s;
        }
        assert!(Instant::now() < deadline, "pulsegate-device did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&state).expect("the device wrote its state file");
    let stored = pulsegate::sdk::StoredState::from_json(&text).expect("state file is valid JSON");
    assert_eq!(
        (stored.server.as_str(), stored.heartbeat_s, stored.optimal),
        (mqtt.as_str(), 5, true)
    );
}
