//! End-to-end test of the `pulsegate-device` example program (the device SDK) against the
//! real gateway binary: the device connects, one push sent over HTTP
//! (`POST /v1/messages`, QoS 1 -> 201) is printed by the device, SIGTERM stops it cleanly
//! and its heartbeat state file names the server.
//!
//! The gateway comes from PULSEGATE_BIN, else this workspace's own `pulsegate` binary;
//! without one the test prints a note and passes. Bounded: every wait has a deadline, and
//! both processes are killed by pid when the test ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEVICE_BIN: &str = env!("CARGO_BIN_EXE_pulsegate-device");
const WAIT: Duration = Duration::from_secs(15);

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn gateway_bin() -> Option<PathBuf> {
    let p = std::env::var_os("PULSEGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pulsegate")));
    p.is_file().then_some(p)
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
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if line.starts_with(prefix) {
                    return line;
                }
            }
            Err(_) => panic!("no line starting with {prefix:?} within {WAIT:?}; saw {seen:?}"),
        }
    }
}

fn post_push(http: &str, device: &str, payload: &str) -> u16 {
    let body = serde_json::json!({ "device": device, "payload": payload, "qos": 1 }).to_string();
    let mut s = TcpStream::connect(http).expect("connect to the HTTP API");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST /v1/messages HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("HTTP status line");
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

#[test]
fn device_receives_a_push_and_stops_on_sigterm() {
    let Some(bin) = gateway_bin() else {
        eprintln!("note: no pulsegate binary (PULSEGATE_BIN or the workspace's); skipping");
        return;
    };
    let dir = std::env::temp_dir().join(format!("pulsegate-sdk-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut gw = Command::new(&bin)
        .current_dir(&dir)
        .args(["--data-dir", dir.join("data").to_str().unwrap()])
        .args(["--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--shards", "1", "--pin-cpus", "false"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pulsegate");
    let gw_lines = lines(&mut gw);
    let _gw = KillOnDrop(gw);
    let ready = expect_line(&gw_lines, "pulsegate: ready", &mut Vec::new());
    let field = |name: &str| {
        ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {ready:?}"))
            .to_string()
    };
    let (mqtt, http) = (field("mqtt"), field("http"));

    let state = dir.join("device.json");
    let mut dev = Command::new(DEVICE_BIN)
        .args(["--server", &mqtt, "--client-id", "sdk-e2e-1", "--keepalive-s", "5"])
        .args(["--state-file", state.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start pulsegate-device");
    let dev_lines = lines(&mut dev);
    let pid = dev.id() as i32;
    let mut dev = KillOnDrop(dev);
    let mut seen = Vec::new();
    let connected = expect_line(&dev_lines, "connected", &mut seen);
    assert!(connected.contains(&format!("server={mqtt}")), "{connected}");

    assert_eq!(post_push(&http, "sdk-e2e-1", "hello from the SP"), 201);
    let push = expect_line(&dev_lines, "push ", &mut seen);
    assert_eq!(push, "push topic=push/sdk-e2e-1 qos=1 payload=hello from the SP");

    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    expect_line(&dev_lines, "stopped", &mut seen);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = dev.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "pulsegate-device did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let stored = pulsegate::sdk::StoredState::from_json(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(
        (stored.server.as_str(), stored.heartbeat_s, stored.optimal),
        (mqtt.as_str(), 5, true)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
