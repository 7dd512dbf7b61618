"""The gateway side of the kit: the prerequisite rule (`require_tool`), the
one spawner (`Gateway`, addresses from `--ready-file`), and the one HTTP helper
(`Gateway.request` -> `ApiResponse`) with the push, status and metrics helpers
on it. It never parses the human ready line and never waits without a deadline.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "target" / "release" / "pulsegate"

BACKENDS = ("uring", "epoll")

READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 10.0
MQTT_TIMEOUT_S = 5.0

ID_RE = re.compile(r"^[0-9a-f]{16}$")
TERMINAL = {"delivered", "confirmed", "failed", "expired", "cancelled", "collapsed"}
PENDING = {"accepted", "queued", "sent"}

SAMPLE_RE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$")
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class HarnessError(AssertionError):
    pass


def fail(message: str) -> None:
    pytest.fail(message, pytrace=False)


# ---- prerequisites -------------------------------------------------------------


def in_ci() -> bool:
    """CI sets CI=true: there a missing prerequisite fails the test."""
    return os.environ.get("CI", "").lower() in ("true", "1")


def require_tool(tool: str, fix: str) -> str:
    """The path of `tool` on PATH. Missing: fails under CI=true, else skips
    with the reason (a test never passes without running)."""
    path = shutil.which(tool)
    if path is None:
        if in_ci():
            fail(f"prerequisite missing under CI=true: {tool} ({fix}); a test must not pass without running")
        pytest.skip(f"{tool} is missing ({fix}); under CI=true this fails")
    return path


def pulsegate_bin() -> Path:
    path = Path(os.environ.get("PULSEGATE_BIN", str(DEFAULT_BIN)))
    if not path.is_file() or not os.access(path, os.X_OK):
        fail(f"pulsegate binary not found or not executable at {path}: build it with "
             f"`cargo build --release` in {REPO} or set PULSEGATE_BIN")
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


# ---- the gateway process ----------------------------------------------------------


class Gateway:
    """One pulsegate process on 127.0.0.1 port 0. `backend` None leaves the
    gateway's default; `data_dir` None uses one inside the scratch dir."""

    def __init__(self, backend: Optional[str] = None, *, config: Optional[dict] = None,
                 extra_args: Iterable[str] = (), data_dir: Optional[Path] = None, shards: int = 2):
        self.backend_wanted = backend
        self.shards_wanted = shards
        self.scratch = Path(tempfile.mkdtemp(prefix="pulsegate-test-"))
        self.data_dir = Path(data_dir) if data_dir is not None else self.scratch / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config = config or {}
        self.config_path: Optional[Path] = None
        self.host = "127.0.0.1"
        self.args = [
            str(pulsegate_bin()),
            "--mqtt-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0",
            "--shards", str(shards),
            "--pin-cpus", "false",
            "--data-dir", str(self.data_dir),
        ]
        if backend is not None:
            self.args += ["--backend", backend]
        if self.config:
            self.config_path = self.scratch / "config.toml"
            self.config_path.write_text(toml_dumps(self.config))
            self.args += ["--config", str(self.config_path)]
        extra_args = list(extra_args)
        # The mock relays and callback receivers live on loopback, which the
        # outbound URL policy refuses unless allowed (a test may set its own).
        if "outbound_allow" not in self.config and "--outbound-allow" not in extra_args:
            self.args += ["--outbound-allow", "127.0.0.0/8,::1/128"]
        self.args += extra_args
        self.runs = 0
        self._killed = False
        self._launch()

    def _launch(self) -> None:
        self.runs += 1
        self.ready_path = self.scratch / f"ready-{self.runs}.json"
        self._stdout = open(self.scratch / f"stdout-{self.runs}.txt", "w+b")
        self._stderr = open(self.scratch / f"stderr-{self.runs}.txt", "w+b")
        self.proc = subprocess.Popen(
            self.args + ["--ready-file", str(self.ready_path)],
            stdin=subprocess.DEVNULL, stdout=self._stdout, stderr=self._stderr,
        )
        self._killed = False
        ready = self._wait_ready()
        self.pid = ready["pid"]
        self.backend = ready["backend"]
        self.shards = ready["shards"]
        self.capacity = ready["capacity"]
        mqtt_host, mqtt_port = ready["mqtt"].rsplit(":", 1)
        http_host, http_port = ready["http"].rsplit(":", 1)
        self.mqtt_port = int(mqtt_port)
        self.http_port = int(http_port)
        # Only when the gateway listens for MQTT over TLS (--mqtt-tls-listen).
        tls = ready.get("mqtt_tls")
        self.mqtt_tls_port = int(tls.rsplit(":", 1)[1]) if tls else None
        problems = [what for ok, what in (
            (self.pid == self.proc.pid, f"pid {self.proc.pid}"),
            (self.backend_wanted in (None, self.backend), f"backend {self.backend_wanted}"),
            (self.shards == self.shards_wanted, f"{self.shards_wanted} shards"),
            (mqtt_host == self.host and http_host == self.host, f"addresses on {self.host}"),
        ) if not ok]
        if problems:
            self.kill()
            fail(f"ready file {ready} does not show {', '.join(problems)}")

    def _wait_ready(self) -> dict:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            # The gateway writes a sibling and renames it over: a file that exists is whole.
            if self.ready_path.exists():
                text = self.ready_path.read_text()
                try:
                    return json.loads(text)
                except ValueError as e:
                    self.kill()
                    fail(f"ready file is not JSON ({e}): {text!r}")
            if self.proc.poll() is not None:
                fail(f"pulsegate exited with {self.proc.returncode} before it was ready\n{self.describe()}")
            if time.monotonic() >= deadline:
                self.kill()
                fail(f"pulsegate wrote no ready file within {READY_TIMEOUT_S} s\n{self.describe()}")
            time.sleep(0.01)

    def _text(self, f) -> str:
        f.flush()
        f.seek(0)
        return f.read().decode("utf-8", "replace")

    def stdout_text(self) -> str:
        return self._text(self._stdout)

    def stderr_text(self) -> str:
        return self._text(self._stderr)

    def describe(self) -> str:
        """Command, config, stdout and stderr of the current run: for failure messages."""
        cfg = self.config_path.read_text() if self.config_path else "(none)"
        return (f"command: {' '.join(self.args)}\nconfig:\n{cfg}\n"
                f"stdout:\n{self.stdout_text()}\nstderr:\n{self.stderr_text()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, nothing flushed beyond what is already durable."""
        self._killed = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass

    def restart(self) -> None:
        """Starts the same command again over the same data dir, after the
        process is gone (kill() or stop()). The ports are new."""
        assert self.proc.poll() is not None, "restart needs the previous process gone: kill() or stop() first"
        self._stdout.close()
        self._stderr.close()
        self._launch()

    def stop(self) -> Optional[str]:
        """SIGTERM, wait, (SIGKILL if stuck), remove the scratch dir. Returns a
        problem description if the gateway had died on its own, ignored SIGTERM
        or exited non-zero; None after a clean exit or a deliberate kill()."""
        problem = None
        if self.proc.poll() is not None:
            if not self._killed:
                problem = f"pulsegate ({self.backend}) died during the test with exit status {self.proc.returncode}"
        else:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
                if self.proc.returncode != 0:
                    problem = f"pulsegate ({self.backend}) exited {self.proc.returncode} on SIGTERM"
            except subprocess.TimeoutExpired:
                self.kill()
                problem = f"pulsegate ({self.backend}) did not stop within {STOP_TIMEOUT_S} s of SIGTERM"
        if problem:
            problem += f"\nstderr:\n{self.stderr_text()}"
        self._stdout.close()
        self._stderr.close()
        shutil.rmtree(self.scratch, ignore_errors=True)
        return problem

    # ---- HTTP API: the one helper and what is built on it ----

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

    def push_ok(self, device: str, payload: str, qos: int = 1) -> str:
        """A push with the default profile that must be accepted (201); returns the id."""
        return self.push({"device": device, "payload": payload, "qos": qos})

    def push_when_online(self, device: str, payload: str, qos: int = 1, timeout: float = MQTT_TIMEOUT_S) -> str:
        """Pushes once the device is connected (a non-queueing profile answers
        404 while the device is offline), e.g. while an external client connects."""
        last: list = []

        def attempt():
            r = self.post_message({"device": device, "payload": payload, "qos": qos,
                                   "profile": {"queue_if_offline": False}})
            last[:] = [r]
            return r.status == 201

        assert wait_until(attempt, timeout, 0.05), f"device {device} never came online: last answer {last}"
        return last[0].json["id"]

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

    # ---- metrics ----

    def metrics(self) -> list[tuple[str, dict, float]]:
        r = self.request("GET", "/metrics")
        assert r.status == 200, r
        samples = []
        for line in r.text.splitlines():
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
            fail(f"{name}{labels or ''} = {value}, expected >= {target} within {timeout} s")
        return value


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


