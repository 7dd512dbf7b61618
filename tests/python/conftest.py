"""Shared fixtures for the third-party-client tests of pulsegate.

These tests prove that stock MQTT clients (paho-mqtt 2.x for Python, Debian's
mosquitto_sub / mosquitto_pub) work against the gateway unchanged. Every test
runs once per event-loop backend (io_uring and epoll) against its own gateway
process, started on port 0 and bound to 127.0.0.1 only.

The binary comes from $PULSEGATE_BIN, or <repo>/target/release/pulsegate.
Every wait below has a timeout: nothing here may hang the suite.

Run (from the repository root):
    cargo build --release
    pip install -r tests/python/requirements.txt   # mosquitto-clients and curl from Debian
    python3 -m pytest tests/python                 # or PULSEGATE_BIN=/path/to/pulsegate ...
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "target" / "release" / "pulsegate"

BACKENDS = ("uring", "epoll")

READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 5.0
MQTT_TIMEOUT_S = 5.0

READY_RE = re.compile(
    r"^pulsegate: ready backend=(?P<backend>\S+) shards=(?P<shards>\d+) capacity=(?P<capacity>\d+) "
    r"mqtt=(?P<mqtt_host>[^\s:]+):(?P<mqtt_port>\d+) http=(?P<http_host>[^\s:]+):(?P<http_port>\d+)\s*$"
)
SAMPLE_RE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$")
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def pulsegate_bin() -> Path:
    path = Path(os.environ.get("PULSEGATE_BIN", str(DEFAULT_BIN)))
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"pulsegate binary not found or not executable at {path}. Build it with "
            f"`cargo build --release` in {REPO} (or set PULSEGATE_BIN to the binary's path).",
            pytrace=False,
        )
    return path


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05):
    """Polls `predicate` until it returns a truthy value or `timeout` passes.
    Returns the last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


class Gateway:
    """One running pulsegate process."""

    def __init__(self, backend: str, extra_args: tuple[str, ...] = ()):
        self.backend = backend
        self.args = [
            str(pulsegate_bin()),
            "--mqtt-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0",
            "--shards", "2",
            "--backend", backend,
            "--pin-cpus", "false",
            "--data-dir", tempfile.mkdtemp(prefix="pulsegate-test-data-"),
            *extra_args,
        ]
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._stdout: list[str] = []
        threading.Thread(target=self._drain_stdout, daemon=True).start()
        self._wait_ready()

    def _drain_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                stderr = self.stderr_text()
                self.stop()
                pytest.fail(
                    f"pulsegate ({self.backend}) not ready within {READY_TIMEOUT_S} s\n"
                    f"stdout:\n{''.join(self._stdout)}\nstderr:\n{stderr}",
                    pytrace=False,
                )
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
                pytest.fail(
                    f"pulsegate ({self.backend}) exited with {self.proc.returncode} before ready\n"
                    f"command: {' '.join(self.args)}\nstdout:\n{''.join(self._stdout)}\n"
                    f"stderr:\n{self.stderr_text()}",
                    pytrace=False,
                )
            self._stdout.append(line)
            m = READY_RE.match(line.strip())
            if m:
                assert m["backend"] == self.backend, line
                assert m["mqtt_host"] == "127.0.0.1" and m["http_host"] == "127.0.0.1", line
                self.host = "127.0.0.1"
                self.mqtt_port = int(m["mqtt_port"])
                self.http_port = int(m["http_port"])
                self.shards = int(m["shards"])
                return

    def stop(self) -> Optional[str]:
        """SIGTERM, wait, (kill if stuck). Returns a problem description if the
        gateway had died on its own, ignored SIGTERM or exited non-zero."""
        problem = None
        if self.proc.poll() is not None:
            problem = f"pulsegate ({self.backend}) died during the test with exit status {self.proc.returncode}"
        else:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
                if self.proc.returncode != 0:
                    problem = f"pulsegate ({self.backend}) exited {self.proc.returncode} on SIGTERM"
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
                problem = f"pulsegate ({self.backend}) did not stop within {STOP_TIMEOUT_S} s of SIGTERM"
        if problem:
            problem += f"\nstderr:\n{self.stderr_text()}"
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()
        return problem

    # ---- HTTP API -------------------------------------------------------

    def http(self, method: str, path: str, body: Optional[dict] = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://{self.host}:{self.http_port}{path}", data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def push(self, device: str, payload: str, qos: int = 1, profile: Optional[dict] = None) -> tuple[int, dict]:
        """POST /v1/messages; returns (status, decoded JSON body)."""
        body = {"device": device, "payload": payload, "qos": qos}
        if profile is not None:
            body["profile"] = profile
        status, raw = self.http("POST", "/v1/messages", body)
        return status, json.loads(raw) if raw else {}

    def push_ok(self, device: str, payload: str, qos: int = 1) -> str:
        status, body = self.push(device, payload, qos)
        assert status == 201, f"push to {device} answered {status} {body}"
        assert isinstance(body.get("id"), str) and body["id"], body
        return body["id"]

    def push_when_online(self, device: str, payload: str, qos: int = 1, timeout: float = MQTT_TIMEOUT_S) -> str:
        """Pushes once the device is connected (polls the registry through a
        probe push with a non-queueing profile, which answers 404 while the
        device is offline), e.g. while an external client process connects."""
        last: list = []

        def attempt():
            status, body = self.push(device, payload, qos, profile={"queue_if_offline": False})
            last[:] = [status, body]
            return status == 201

        assert wait_until(attempt, timeout, 0.05), f"device {device} never came online: last answer {last}"
        return last[1]["id"]

    # ---- metrics --------------------------------------------------------

    def metrics(self) -> list[tuple[str, dict, float]]:
        status, raw = self.http("GET", "/metrics")
        assert status == 200, status
        samples = []
        for line in raw.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            m = SAMPLE_RE.match(line)
            assert m, f"unparseable metrics line: {line!r}"
            labels = dict(LABEL_RE.findall(m["labels"] or ""))
            samples.append((m["name"], labels, float(m["value"])))
        return samples

    def metric(self, name: str, **labels: str) -> float:
        """Sum of every sample of `name` whose labels include `labels` (so
        per-shard series are summed over shards)."""
        found = [v for n, ls, v in self.metrics() if n == name and all(ls.get(k) == x for k, x in labels.items())]
        assert found, f"metric {name}{labels or ''} not exported"
        return sum(found)

    def wait_metric_at_least(self, name: str, target: float, timeout: float = MQTT_TIMEOUT_S, **labels: str) -> float:
        value = wait_until(lambda: (lambda v: v if v >= target else None)(self.metric(name, **labels)), timeout)
        if value is None:
            value = self.metric(name, **labels)
            pytest.fail(f"{name}{labels or ''} = {value}, expected >= {target} within {timeout} s", pytrace=False)
        return value


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def start_gateway(backend):
    """Factory: start_gateway(*extra_flags) -> Gateway on `backend`; all are stopped after the test."""
    started: list[Gateway] = []

    def start(*extra_args: str) -> Gateway:
        g = Gateway(backend, tuple(extra_args))
        started.append(g)
        return g

    yield start
    problems = [p for p in (g.stop() for g in started) if p]
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def gateway(start_gateway) -> Gateway:
    return start_gateway()


# ---- paho-mqtt ------------------------------------------------------------

PROTOCOLS = {"v311": mqtt.MQTTv311, "v5": mqtt.MQTTv5}


class PahoDevice:
    """A stock paho-mqtt 2.x client (callback API v2) driven by its own network
    thread (loop_start), with every callback recorded for the test to wait on.
    Automatic reconnection is off so a closed connection stays closed."""

    def __init__(self, client_id: str, version: str, clean_session: bool = True):
        self.version = version
        self.protocol = PROTOCOLS[version]
        kwargs = {}
        if self.protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = clean_session
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=self.protocol,
            reconnect_on_failure=False,
            **kwargs,
        )
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack_reason = None
        self.connack_flags = None
        self.connack_properties = None
        self.disconnect_reason = None
        self.disconnect_from_server = None
        self.messages: "queue.Queue[mqtt.MQTTMessage]" = queue.Queue()
        self._subacks: dict[int, list] = {}
        self._suback_cv = threading.Condition()
        self._started = False
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack_flags = flags
        self.connack_reason = reason_code
        self.connack_properties = properties
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnect_reason = reason_code
        self.disconnect_from_server = flags.is_disconnect_packet_from_server
        self.disconnected.set()

    def _on_message(self, client, userdata, message):
        self.messages.put(message)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._suback_cv:
            self._subacks[mid] = list(reason_codes)
            self._suback_cv.notify_all()

    def connect(self, port: int, keepalive: int = 60, clean_start: bool = True, properties=None,
                timeout: float = MQTT_TIMEOUT_S) -> "PahoDevice":
        kwargs = {}
        if self.protocol == mqtt.MQTTv5:
            kwargs["clean_start"] = clean_start
            kwargs["properties"] = properties
        self.client.connect("127.0.0.1", port, keepalive=keepalive, **kwargs)
        self.client.loop_start()
        self._started = True
        assert self.connected.wait(timeout), f"no CONNACK within {timeout} s"
        assert self.connack_reason is not None and self.connack_reason.value == 0, f"CONNACK refused: {self.connack_reason}"
        return self

    def subscribe(self, topic: str, qos: int = 1, timeout: float = MQTT_TIMEOUT_S) -> list[int]:
        """Subscribes and returns the SUBACK reason codes (ints)."""
        rc, mid = self.client.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        with self._suback_cv:
            ok = self._suback_cv.wait_for(lambda: mid in self._subacks, timeout)
            assert ok, f"no SUBACK for {topic} within {timeout} s"
            return [c.value for c in self._subacks[mid]]

    def next_message(self, timeout: float = MQTT_TIMEOUT_S) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no message received within {timeout} s", pytrace=False)

    def disconnect(self, timeout: float = MQTT_TIMEOUT_S) -> None:
        self.client.disconnect()
        assert self.disconnected.wait(timeout), f"on_disconnect not called within {timeout} s"
        self.stop()

    def stop(self) -> None:
        if self._started:
            self._started = False
            self.client.loop_stop()
        # Drops the TCP connection if still open (without an MQTT DISCONNECT).
        sock = self.client.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


@pytest.fixture
def paho():
    """Factory: paho(client_id, version, clean_session=True) -> PahoDevice; all are stopped after the test."""
    made: list[PahoDevice] = []

    def make(client_id: str, version: str, clean_session: bool = True) -> PahoDevice:
        d = PahoDevice(client_id, version, clean_session)
        made.append(d)
        return d

    yield make
    for d in made:
        try:
            d.stop()
        except Exception:  # noqa: BLE001 - cleanup must go on
            pass
