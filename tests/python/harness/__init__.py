"""The one Python test kit of pulsegate, used by every test under tests/python:

* `Gateway`: the one spawner. The real binary on 127.0.0.1 port 0 with its own
  scratch dir (data dir, TOML config, ready files); the ports, pid, backend,
  shards and capacity come from the JSON of `--ready-file`, never from stdout.
  `stop()` (SIGTERM, bounded wait, returns a problem or None), `kill()`
  (SIGKILL), `restart()` over the same data dir (new ports), stdout and stderr
  kept in files for failure messages.
* `Gateway.request()`: the one HTTP helper (one request per connection), with
  the push, status and metrics helpers built on it.
* `require_tool()`: the prerequisite rule. A missing tool fails the test when
  CI=true and skips it, with the reason, elsewhere; never a silent pass.
* Devices (`PahoDevice`, a stock paho-mqtt 2.x client; `RawDevice`, a raw
  socket that never PUBACKs), `MockHttp` (a scriptable local HTTP server), and
  `Env` (everything one test starts, stopped at teardown).

conftest.py turns these into fixtures. Every wait has a deadline; nothing here
may hang the suite or leave a process running.

Run (from the repository root):
    cargo build --release
    bash tests/deps.sh                 # mosquitto-clients, paho-mqtt, pytest
    python3 -m pytest tests/python     # or PULSEGATE_BIN=/path/to/pulsegate ...
"""

from .devices import PahoDevice, RawDevice
from .env import Env
from .gateway import (
    BACKENDS, ID_RE, MQTT_TIMEOUT_S, PENDING, REPO, TERMINAL, ApiResponse, Gateway, HarnessError, fail, in_ci,
    pulsegate_bin, require_tool, toml_dumps, wait_until,
)
from .mock_http import MockHttp

__all__ = [
    "BACKENDS", "ID_RE", "MQTT_TIMEOUT_S", "PENDING", "REPO", "TERMINAL", "ApiResponse", "Env", "Gateway",
    "HarnessError", "MockHttp", "PahoDevice", "RawDevice", "fail", "in_ci", "pulsegate_bin", "require_tool",
    "toml_dumps", "wait_until",
]
