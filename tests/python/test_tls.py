"""MQTT over TLS with stock clients, on both backends: paho-mqtt (`tls_set(ca_certs=...)`)
and Debian's mosquitto_sub (`--cafile`) connect to the gateway's TLS listener, whose
certificate a throw-away CA (made with openssl) signed, and receive a push sent through
the HTTP API; a paho client trusting another CA refuses the handshake and the gateway
counts it and keeps serving. Without openssl or the mosquitto clients these tests skip
(with the reason), and fail under CI=true."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from harness import PahoDevice, require_tool

PROCESS_TIMEOUT_S = 10


def make_pki(openssl: str, d: Path, server: bool = True) -> dict:
    """A CA and (if `server`) a server certificate it signs for localhost / 127.0.0.1."""
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        out = subprocess.run([openssl, *args], cwd=d, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)
        assert out.returncode == 0, f"openssl {' '.join(args)}: {out.stderr}"

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=pulsegate test CA")
    files = {"ca": str(d / "ca.pem")}
    if server:
        (d / "ext.cnf").write_text(
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
        run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
        run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
        files.update(cert=str(d / "server.pem"), key=str(d / "server.key"))
    return files


@pytest.fixture
def openssl() -> str:
    return require_tool("openssl", "Debian: apt-get install openssl")


@pytest.fixture
def pki(openssl, tmp_path) -> dict:
    return make_pki(openssl, tmp_path / "pki")


@pytest.fixture
def tls_gateway(start_gateway, pki):
    gw = start_gateway("--mqtt-tls-listen", "127.0.0.1:0", "--tls-cert-file", pki["cert"],
                       "--tls-key-file", pki["key"])
    assert gw.mqtt_tls_port is not None, "the ready file reports mqtt_tls"
    return gw


@pytest.mark.parametrize("version", ("v311", "v5"))
def test_paho_over_tls_receives_a_push(tls_gateway, pki, version):
    gw = tls_gateway
    dev = PahoDevice(f"tls-paho-{version}", version, ca_certs=pki["ca"])
    try:
        dev.connect(gw.mqtt_tls_port)
        assert dev.client.socket().version() in ("TLSv1.3", "TLSv1.2")
        gw.push_ok(dev.client_id, f"over tls {version}", qos=1)
        msg = dev.next_message()
        assert msg.topic == f"push/{dev.client_id}"
        assert msg.payload == f"over tls {version}".encode()
        gw.wait_metric_at_least("pulsegate_pushes_acked_total", 1, timeout=5)
    finally:
        dev.close()
    assert gw.metric("pulsegate_tls_handshakes_total", kind="full") + \
        gw.metric("pulsegate_tls_handshakes_total", kind="resumed") >= 1
    assert gw.metric("pulsegate_tls_handshake_failures_total") == 0


def test_paho_trusting_another_ca_refuses_and_the_gateway_stays_up(tls_gateway, pki, openssl, tmp_path):
    gw = tls_gateway
    other = make_pki(openssl, tmp_path / "other", server=False)
    stranger = PahoDevice("tls-stranger", "v311", ca_certs=other["ca"])
    with pytest.raises(ssl.SSLCertVerificationError):
        stranger.client.connect("127.0.0.1", gw.mqtt_tls_port, keepalive=30)
    stranger.stop()
    gw.wait_metric_at_least("pulsegate_tls_handshake_failures_total", 1, timeout=5)
    good = PahoDevice("tls-good", "v311", ca_certs=pki["ca"])
    try:
        good.connect(gw.mqtt_tls_port)
        gw.push_ok(good.client_id, "still serving", qos=0)
        assert good.next_message().payload == b"still serving"
    finally:
        good.close()


@pytest.mark.parametrize("version", ("v311", "v5"))
def test_mosquitto_sub_over_tls_receives_a_push(tls_gateway, pki, version):
    mosquitto_sub = require_tool("mosquitto_sub", "Debian: apt-get install mosquitto-clients, or bash tests/deps.sh")
    gw = tls_gateway
    client_id = f"tls-ms-{version}"
    label = {"v311": "3.1.1", "v5": "5"}[version]
    before = gw.metric("pulsegate_connects_total", version=label)
    sub = subprocess.Popen(
        [mosquitto_sub, "-h", "127.0.0.1", "-p", str(gw.mqtt_tls_port), "--cafile", pki["ca"],
         "-V", {"v311": "mqttv311", "v5": "mqttv5"}[version], "-i", client_id, "-t", f"push/{client_id}",
         "-q", "1", "-C", "1", "-W", str(PROCESS_TIMEOUT_S)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        gw.wait_metric_at_least("pulsegate_connects_total", before + 1, timeout=5, version=label)
        payload = f"tls push for mosquitto {version}"
        gw.push_ok(client_id, payload, qos=1)
        stdout, stderr = sub.communicate(timeout=PROCESS_TIMEOUT_S)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.communicate(timeout=PROCESS_TIMEOUT_S)
    assert sub.returncode == 0, f"mosquitto_sub exited {sub.returncode}: {stderr}"
    assert stdout == payload + "\n", repr(stdout)
    assert gw.metric("pulsegate_tls_handshakes_total", kind="full") >= 1
