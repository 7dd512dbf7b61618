"""`Env`: everything one test starts (gateways, mocks, devices), stopped in
reverse order at teardown, with the gateways' exit problems returned so the
fixture can fail the test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from .devices import PahoDevice, RawDevice
from .gateway import Gateway
from .mock_http import MockHttp


class Env:
    """Everything one test starts, stopped in reverse order at teardown. A
    gateway that died, ignored SIGTERM or exited non-zero fails the test."""

    def __init__(self, tmp_path: Path, backend: Optional[str] = None):
        self.tmp_path = Path(tmp_path)
        self.backend = backend
        self._closers: list[Callable[[], None]] = []
        self._gateways: list[Gateway] = []
        self._n = 0

    def gateway(self, config: Optional[dict] = None, extra_args: Iterable[str] = (),
                data_dir: Optional[Path] = None) -> Gateway:
        self._n += 1
        g = Gateway(self.backend, config=config, extra_args=extra_args,
                    data_dir=data_dir or self.tmp_path / f"data{self._n}")
        self._gateways.append(g)
        return g

    def mock(self, default: Any = 200) -> MockHttp:
        m = MockHttp(default)
        self._closers.append(m.close)
        return m

    def paho(self, client_id: str, gw: Gateway, version: str = "v311", clean_session: bool = True) -> PahoDevice:
        d = PahoDevice(client_id, version, clean_session)
        self._closers.append(d.close)
        return d.connect(gw.mqtt_port)

    def raw(self, client_id: str, gw: Gateway) -> RawDevice:
        d = RawDevice(client_id, gw.mqtt_port)
        self._closers.append(d.close)
        return d

    def close(self) -> list[str]:
        """Stops everything; returns the gateways' problems (see Gateway.stop)."""
        for c in reversed(self._closers):
            try:
                c()
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass
        return [p for p in (g.stop() for g in reversed(self._gateways)) if p]
