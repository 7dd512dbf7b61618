"""Fixtures of the Python tests of pulsegate, all built on the one kit in
harness/ (read its docstring): stock MQTT clients (paho-mqtt 2.x, Debian's
mosquitto_sub / mosquitto_pub) and the push API against the real gateway.

* `backend`: every test that takes it runs once per event-loop backend.
* `env`: an `Env` on that backend's default (the gateway picks it); gateways,
  mocks and devices it starts are stopped after the test, and a gateway that
  died or did not exit cleanly on SIGTERM fails the test.
* `start_gateway(*flags)`, `gateway`: gateways on `backend`, through the same `Env`.
* `paho(client_id, version, clean_session=True)`: unconnected `PahoDevice`s,
  stopped after the test.

The binary comes from $PULSEGATE_BIN, or <repo>/target/release/pulsegate.
"""

from __future__ import annotations

import pytest

from harness import BACKENDS, Env, Gateway, PahoDevice, fail


def _env(tmp_path, backend):
    e = Env(tmp_path, backend)
    yield e
    problems = e.close()
    if problems:
        fail("\n\n".join(problems))


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def env(tmp_path):
    """Gateways on the gateway's default backend."""
    yield from _env(tmp_path, None)


@pytest.fixture
def backend_env(tmp_path, backend):
    yield from _env(tmp_path, backend)


@pytest.fixture
def start_gateway(backend_env):
    """Factory: start_gateway(*extra_flags) -> Gateway on `backend`."""

    def start(*extra_args: str) -> Gateway:
        return backend_env.gateway(extra_args=extra_args)

    return start


@pytest.fixture
def gateway(start_gateway) -> Gateway:
    return start_gateway()


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
