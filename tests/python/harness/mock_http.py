"""`MockHttp`: a scriptable HTTP server on 127.0.0.1:0 standing in for an
external mechanism (webhook relay) or an SP callback endpoint. It never
reaches beyond the loopback address; every wait has a deadline.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

from .gateway import HarnessError

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


