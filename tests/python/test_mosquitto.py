"""Debian's mosquitto_sub / mosquitto_pub (libmosquitto) against pulsegate,
MQTT 3.1.1 and 5, pushes sent with the kit's HTTP helper. Without the
mosquitto clients these tests skip (with the reason), and fail under CI=true."""

from __future__ import annotations

import subprocess

import pytest

from harness import require_tool

MOSQUITTO_VERSIONS = {"v311": "mqttv311", "v5": "mqttv5"}
CONNECTS_LABEL = {"v311": "3.1.1", "v5": "5"}
PROCESS_TIMEOUT_S = 10


def need(tool: str) -> str:
    return require_tool(tool, "Debian: apt-get install mosquitto-clients, or bash tests/deps.sh")


# Requested before `gateway`, so a missing tool is reported before a gateway starts.
@pytest.fixture
def mosquitto_sub() -> str:
    return need("mosquitto_sub")


@pytest.fixture
def mosquitto_pub() -> str:
    return need("mosquitto_pub")


@pytest.mark.parametrize("version", ("v311", "v5"))
def test_mosquitto_sub_receives_push(mosquitto_sub, gateway, version):
    client_id = f"dev-ms-{version}"
    connects_before = gateway.metric("pulsegate_connects_total", version=CONNECTS_LABEL[version])
    sub = subprocess.Popen(
        [mosquitto_sub, "-h", gateway.host, "-p", str(gateway.mqtt_port), "-V", MOSQUITTO_VERSIONS[version],
         "-i", client_id, "-t", f"push/{client_id}", "-q", "1", "-C", "1", "-W", str(PROCESS_TIMEOUT_S)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # Wait until mosquitto_sub's CONNECT was accepted, then push.
        gateway.wait_metric_at_least("pulsegate_connects_total", connects_before + 1, timeout=5,
                                     version=CONNECTS_LABEL[version])
        payload = f"push for mosquitto {version}"
        gateway.push_ok(client_id, payload, qos=1)
        stdout, stderr = sub.communicate(timeout=PROCESS_TIMEOUT_S)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.communicate(timeout=PROCESS_TIMEOUT_S)
    assert sub.returncode == 0, f"mosquitto_sub exited {sub.returncode}: {stderr}"
    assert stdout == payload + "\n", repr(stdout)


@pytest.mark.parametrize("version", ("v311", "v5"))
def test_mosquitto_pub_qos1_publish_is_acked(mosquitto_pub, gateway, version):
    before = gateway.metric("pulsegate_publishes_received_total")
    client_id = f"dev-pub-{version}"
    out = subprocess.run(
        [mosquitto_pub, "-h", gateway.host, "-p", str(gateway.mqtt_port), "-V", MOSQUITTO_VERSIONS[version],
         "-i", client_id, "-t", f"up/{client_id}", "-m", "hello from the device", "-q", "1"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S,
    )
    # mosquitto_pub only exits 0 once its QoS 1 PUBLISH was acknowledged (PUBACK).
    assert out.returncode == 0, f"mosquitto_pub exited {out.returncode}: {out.stderr}"
    assert gateway.metric("pulsegate_publishes_received_total") == before + 1
