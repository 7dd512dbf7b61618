"""Helpers for the end-to-end tests of pulsegate's push API (test_push_api.py,
test_durability.py): a gateway process with its own TOML config and data dir,
an HTTP client for the API, scriptable local HTTP servers standing in for an
external mechanism (webhook relay) and for SP callback endpoints, and two kinds
of devices: a stock paho-mqtt 2.x client and a raw-socket MQTT 3.1.1 client
that reads PUBLISH packets and never acknowledges them.

Self-contained on purpose: it does not import conftest.py or any other test
module. Every wait has a deadline; nothing here may hang the suite.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "target" / "release" / "pulsegate"

READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 10.0
MQTT_TIMEOUT_S = 5.0

READY_RE = re.compile(
    r"^pulsegate: ready backend=(?P<backend>\S+) .*?mqtt=(?P<mqtt_host>[^\s:]+):(?P<mqtt_port>\d+) "
    r"http=(?P<http_host>[^\s:]+):(?P<http_port>\d+)\s*$"
)

ID_RE = re.compile(r"^[0-9a-f]{16}$")
TERMINAL = {"delivered", "confirmed", "failed", "expired", "cancelled", "collapsed"}
PENDING = {"accepted", "queued", "sent"}


class HarnessError(AssertionError):
    pass


def pulsegate_bin() -> Path:
    path = Path(os.environ.get("PULSEGATE_BIN", str(DEFAULT_BIN)))
    if not path.is_file() or not os.access(path, os.X_OK):
        raise HarnessError(
            f"pulsegate binary not found or not executable at {path}: build it with "
            f"`cargo build --release -p pulsegate` in {REPO} or set PULSEGATE_BIN"
        )
    return path


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """Polls `predicate` until it returns a truthy value or `timeout` passes;
    returns the last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# ---- TOML ------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _toml_table(prefix: str, table: dict, out: list[str]) -> None:
    """Scalars of `table` under [prefix], then its sub-tables."""
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    subs = {k: v for k, v in table.items() if isinstance(v, dict)}
    out.append(f"[{prefix}]")
    for k, v in scalars.items():
        out.append(f"{k} = {_toml_value(v)}")
    out.append("")
    for k, v in subs.items():
        _toml_table(f"{prefix}.{k}", v, out)


def toml_dumps(cfg: dict) -> str:
    """The TOML subset the gateway's config file uses: top-level scalars,
    `sps` and `mechanisms` arrays of tables, `profiles` tables."""
    out: list[str] = []
    for k, v in cfg.items():
        if k in ("sps", "mechanisms", "profiles"):
            continue
        out.append(f"{k} = {_toml_value(v)}")
    out.append("")
    for name, profile in cfg.get("profiles", {}).items():
        _toml_table(f"profiles.{name}", profile, out)
    for key in ("sps", "mechanisms"):
        for entry in cfg.get(key, []):
            out.append(f"[[{key}]]")
            for k, v in entry.items():
                out.append(f"{k} = {_toml_value(v)}")
            out.append("")
    return "\n".join(out) + "\n"


# ---- the gateway process ----------------------------------------------------


class GatewayProc:
    """One pulsegate process on 127.0.0.1 port 0 with its own data dir and config."""

    def __init__(self, data_dir: Path, config: Optional[dict] = None, extra_args: Iterable[str] = ()):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config = config or {}
        self.args = [
            str(pulsegate_bin()),
            "--mqtt-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0",
            "--shards", "2",
            "--pin-cpus", "false",
            "--data-dir", str(self.data_dir),
        ]
        if self.config:
            fd, path = tempfile.mkstemp(prefix="pushapi-", suffix=".toml")
            with os.fdopen(fd, "w") as f:
                f.write(toml_dumps(self.config))
            self.config_path: Optional[str] = path
            self.args += ["--config", path]
        else:
            self.config_path = None
        self.args += list(extra_args)
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, text=True
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
                self.kill()
                raise HarnessError(f"pulsegate not ready within {READY_TIMEOUT_S} s\nstderr:\n{self.stderr_text()}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
                cfg = Path(self.config_path).read_text() if self.config_path else ""
                raise HarnessError(
                    f"pulsegate exited with {self.proc.returncode} before ready\ncommand: {' '.join(self.args)}\n"
                    f"config:\n{cfg}\nstdout:\n{''.join(self._stdout)}\nstderr:\n{self.stderr_text()}"
                )
            self._stdout.append(line)
            m = READY_RE.match(line.strip())
            if m:
                self.host = "127.0.0.1"
                self.mqtt_port = int(m["mqtt_port"])
                self.http_port = int(m["http_port"])
                return

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, nothing flushed beyond what is already durable."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.config_path:
            try:
                os.unlink(self.config_path)
            except OSError:
                pass

    # ---- HTTP API ----

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: Optional[str] = None,
        raw: Optional[bytes] = None,
        headers: Optional[dict] = None,
        timeout: float = HTTP_TIMEOUT_S,
    ) -> "ApiResponse":
        """One request on a fresh connection. `body` is sent as JSON, `raw` as is."""
        conn = http.client.HTTPConnection(self.host, self.http_port, timeout=timeout)
        try:
            h = dict(headers or {})
            data: Optional[bytes] = None
            if raw is not None:
                data = raw
            elif body is not None:
                data = json.dumps(body).encode()
            if data is not None:
                h.setdefault("Content-Type", "application/json")
                h["Content-Length"] = str(len(data))
            elif method in ("POST", "PATCH"):
                h["Content-Length"] = "0"
            if token is not None:
                h["Authorization"] = f"Bearer {token}"
            conn.request(method, path, body=data, headers=h)
            resp = conn.getresponse()
            payload = resp.read()
            return ApiResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload)
        finally:
            conn.close()

    def post_message(self, body: dict, token: Optional[str] = None) -> "ApiResponse":
        return self.request("POST", "/v1/messages", body, token=token)

    def push(self, body: dict, token: Optional[str] = None) -> str:
        """POST one message, expecting 201 {"id"}; returns the id."""
        r = self.post_message(body, token)
        assert r.status == 201, f"POST /v1/messages {body} -> {r.status} {r.text}"
        mid = r.json["id"]
        assert ID_RE.match(mid), r.text
        return mid

    def status(self, mid: str, token: Optional[str] = None) -> dict:
        r = self.request("GET", f"/v1/messages/{mid}", token=token)
        assert r.status == 200, f"GET /v1/messages/{mid} -> {r.status} {r.text}"
        return r.json

    def wait_state(
        self, mid: str, states: Iterable[str] | str, timeout: float = 10.0, token: Optional[str] = None
    ) -> dict:
        """Polls GET until the message is in one of `states`; fails with the last status."""
        wanted = {states} if isinstance(states, str) else set(states)
        last: dict = {}

        def check():
            nonlocal last
            last = self.status(mid, token)
            return last["state"] in wanted

        if not wait_until(check, timeout, 0.03):
            raise HarnessError(f"message {mid} not in {sorted(wanted)} within {timeout} s; last status:\n"
                               f"{json.dumps(last, indent=1)}")
        return last

    def mechanisms(self, token: Optional[str] = None) -> dict:
        r = self.request("GET", "/v1/mechanisms", token=token)
        assert r.status == 200, f"GET /v1/mechanisms -> {r.status} {r.text}"
        return {m["name"]: m for m in r.json["mechanisms"]}


class ApiResponse:
    def __init__(self, status: int, headers: dict, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise HarnessError(f"response is not JSON ({e}): {self.status} {self.text[:500]!r}") from None

    def __repr__(self) -> str:
        return f"<{self.status} {self.text[:300]}>"


# ---- scriptable local HTTP servers (webhook relay, SP callbacks) -------------


class MockHttp:
    """An HTTP server on 127.0.0.1:0, in daemon threads, recording every POST.

    Answers are scripted: `script` is a list of actions consumed one per
    request; when it is empty `default` is used. An action is an int status
    (200, 500, ...), or ("hang", seconds, status): wait that long (or until
    `release()`), then answer `status` (None = close without answering)."""

    def __init__(self, default: Any = 200):
        self.default = default
        self.script: list[Any] = []
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._release = threading.Event()
        mock = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                with mock._cond:
                    action = mock.script.pop(0) if mock.script else mock.default
                    mock.requests.append({
                        "at": time.monotonic(),
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "raw": body,
                        "json": parsed,
                        "answer": action,
                    })
                    mock._cond.notify_all()
                status = action
                if isinstance(action, tuple) and action[0] == "hang":
                    mock._release.wait(action[1])
                    status = action[2]
                if status is None:
                    self.close_connection = True
                    return
                out = b'{"ok":true}' if 200 <= status < 300 else b'{"error":"mock"}'
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except OSError:
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def set(self, default: Any = None, script: Optional[list] = None) -> None:
        with self._lock:
            if default is not None:
                self.default = default
            if script is not None:
                self.script = list(script)

    def wait_requests(self, n: int, timeout: float = 10.0, where: Callable[[dict], bool] = lambda r: True) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [r for r in self.requests if where(r)]
                if len(got) >= n:
                    return got
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise HarnessError(f"{self.url}: {len(got)} matching requests within {timeout} s, "
                                       f"expected {n}; all: {[r['json'] for r in self.requests]}")
                self._cond.wait(remaining)

    def matching(self, where: Callable[[dict], bool]) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if where(r)]

    def release(self) -> None:
        self._release.set()

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


# ---- devices ------------------------------------------------------------------


class PahoDevice:
    """A stock paho-mqtt 2.x client; QoS 1 pushes are PUBACKed by paho itself.
    Records every received PUBLISH as (topic, payload, qos, monotonic time)."""

    def __init__(self, client_id: str, port: int, host: str = "127.0.0.1", clean_session: bool = True):
        self.client_id = client_id
        self.messages: list[tuple[str, bytes, int, float]] = []
        self._cond = threading.Condition()
        self.connected = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=clean_session,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a, **k: self.connected.clear()
        self.client.connect(host, port, keepalive=60)
        self.client.loop_start()
        if not self.connected.wait(MQTT_TIMEOUT_S):
            self.close()
            raise HarnessError(f"paho device {client_id} got no CONNACK within {MQTT_TIMEOUT_S} s")

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if not reason_code.is_failure:
            self.connected.set()

    def _on_message(self, client, userdata, msg):
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), msg.qos, time.monotonic()))
            self._cond.notify_all()

    def payloads(self) -> list[bytes]:
        with self._cond:
            return [m[1] for m in self.messages]

    def wait_messages(self, n: int, timeout: float = MQTT_TIMEOUT_S) -> list[tuple[str, bytes, int, float]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise HarnessError(f"device {self.client_id}: {len(self.messages)} messages within "
                                       f"{timeout} s, expected {n}: {[m[1] for m in self.messages]}")
                self._cond.wait(remaining)
            return list(self.messages)

    def close(self) -> None:
        try:
            self.client.disconnect()
        except Exception:
            pass
        self.client.loop_stop()


def _encode_remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mqtt_str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


class RawDevice:
    """An MQTT 3.1.1 client on a raw socket that reads PUBLISH packets and never
    sends PUBACK (so every QoS 1 push it receives times out at the gateway).
    Records (packet_id, qos, topic, payload, monotonic time)."""

    def __init__(self, client_id: str, port: int, host: str = "127.0.0.1"):
        self.client_id = client_id
        self.publishes: list[tuple[Optional[int], int, str, bytes, float]] = []
        self._cond = threading.Condition()
        self.closed = False
        self.sock = socket.create_connection((host, port), timeout=MQTT_TIMEOUT_S)
        variable = _mqtt_str("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0)  # clean session, no keepalive
        payload = _mqtt_str(client_id)
        body = variable + payload
        self.sock.sendall(bytes([0x10]) + _encode_remaining_length(len(body)) + body)
        kind, data = self._read_packet()
        if kind >> 4 != 2 or len(data) != 2 or data[1] != 0:
            raise HarnessError(f"raw device {client_id}: expected CONNACK accepted, got {kind:#x} {data!r}")
        self.sock.settimeout(None)
        self._thread = threading.Thread(target=self._reader, daemon=True)
        self._thread.start()

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return bytes(buf)

    def _read_packet(self) -> tuple[int, bytes]:
        first = self._recv_exact(1)[0]
        mult, length = 1, 0
        while True:
            b = self._recv_exact(1)[0]
            length += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        return first, self._recv_exact(length)

    def _reader(self) -> None:
        try:
            while True:
                first, data = self._read_packet()
                if first >> 4 != 3:
                    continue
                qos = (first >> 1) & 3
                tlen = struct.unpack("!H", data[:2])[0]
                topic = data[2:2 + tlen].decode()
                pos = 2 + tlen
                pid = None
                if qos:
                    pid = struct.unpack("!H", data[pos:pos + 2])[0]
                    pos += 2
                with self._cond:
                    self.publishes.append((pid, qos, topic, data[pos:], time.monotonic()))
                    self._cond.notify_all()
        except (OSError, ConnectionError, struct.error):
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def wait_publishes(self, n: int, timeout: float = MQTT_TIMEOUT_S) -> list:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.publishes) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise HarnessError(f"raw device {self.client_id}: {len(self.publishes)} PUBLISH within "
                                       f"{timeout} s, expected {n}")
                self._cond.wait(remaining)
            return list(self.publishes)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Env:
    """Everything one test starts, stopped in reverse order at teardown."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = Path(tmp_path)
        self._closers: list[Callable[[], None]] = []
        self._n = 0

    def gateway(self, config: Optional[dict] = None, extra_args: Iterable[str] = (),
                data_dir: Optional[Path] = None) -> GatewayProc:
        self._n += 1
        g = GatewayProc(data_dir or self.tmp_path / f"data{self._n}", config, extra_args)
        self._closers.append(g.stop)
        return g

    def mock(self, default: Any = 200) -> MockHttp:
        m = MockHttp(default)
        self._closers.append(m.close)
        return m

    def paho(self, client_id: str, gw: GatewayProc) -> PahoDevice:
        d = PahoDevice(client_id, gw.mqtt_port)
        self._closers.append(d.close)
        return d

    def raw(self, client_id: str, gw: GatewayProc) -> RawDevice:
        d = RawDevice(client_id, gw.mqtt_port)
        self._closers.append(d.close)
        return d

    def close(self) -> None:
        for c in reversed(self._closers):
            try:
                c()
            except Exception:
                pass
