"""Device JWTs from a stock client: paho-mqtt 2.x presents tokens minted with
PyJWT (HS256 with a secret file, RS256 and ES256 with a PEM public key file,
as EMQX/HiveMQ users already issue them); the gateway accepts a valid token for
the client id and refuses the rest with CONNACK 0x86 / 0x87 (3.1.1: 4 / 5).
An impersonator of a connected device is refused and the device keeps its
pushes."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from harness import MQTT_TIMEOUT_S

VERSIONS = ("v311", "v5")


def _keys(algorithm: str):
    """(signing key for PyJWT, bytes of the gateway's key file)."""
    if algorithm == "HS256":
        secret = b"python-device-secret-0123456789-abcdef"
        return secret, secret
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048) if algorithm == "RS256" \
        else ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def _token(key, algorithm: str, client_id: str, exp_in_s: int = 600, **extra) -> str:
    now = int(time.time())
    return jwt.encode({"clientid": client_id, "exp": now + exp_in_s, "iat": now, **extra}, key, algorithm=algorithm)


def _jwt_gateway(start_gateway, tmp_path, algorithm: str, key_file_bytes: bytes):
    key_file = tmp_path / f"device-{algorithm}.key"
    key_file.write_bytes(key_file_bytes)
    return start_gateway("--device-auth-kind", "jwt", "--device-auth-algorithm", algorithm,
                         "--device-auth-key-file", str(key_file))


def _connack(dev, port: int, token):
    """CONNECT with `token` as password; the CONNACK reason as paho reports it."""
    dev.client.username_pw_set(dev.client_id, token)
    dev.client.connect("127.0.0.1", port, keepalive=30)
    dev.client.loop_start()
    dev._started = True
    assert dev.connected.wait(MQTT_TIMEOUT_S), f"{dev.client_id}: no CONNACK"
    return dev.connack_reason


@pytest.mark.parametrize("algorithm", ("HS256", "RS256", "ES256"))
@pytest.mark.parametrize("version", VERSIONS)
def test_paho_with_a_valid_token_gets_its_pushes(start_gateway, paho, tmp_path, algorithm, version):
    signing, key_file = _keys(algorithm)
    gw = _jwt_gateway(start_gateway, tmp_path, algorithm, key_file)
    client_id = f"jwt-{algorithm}-{version}"
    dev = paho(client_id, version)
    reason = _connack(dev, gw.mqtt_port, _token(signing, algorithm, client_id))
    assert reason.value == 0, reason
    assert dev.subscribe(f"push/{client_id}", qos=1) == [1]
    gw.push_ok(client_id, "signed in", qos=1)
    assert dev.next_message().payload == b"signed in"
    assert gw.metric("pulsegate_device_auth_accepted_total", kind="jwt") == 1


# (case, v5 reason, 3.1.1 return code as paho names it)
REFUSALS = [
    ("expired", 0x86, "expired"),
    ("other_device", 0x87, "client_id_mismatch"),
    ("forged", 0x86, "bad_signature"),
    ("missing", 0x86, "missing_password"),
]


@pytest.mark.parametrize("version", VERSIONS)
def test_paho_refusals_carry_the_right_code_and_are_counted(start_gateway, paho, tmp_path, version):
    signing, key_file = _keys("ES256")
    gw = _jwt_gateway(start_gateway, tmp_path, "ES256", key_file)
    other_key, _ = _keys("ES256")
    tokens = {
        "expired": _token(signing, "ES256", "victim", exp_in_s=-120),
        "other_device": _token(signing, "ES256", "someone-else"),
        "forged": _token(other_key, "ES256", "victim"),
        "missing": None,
    }
    for case, v5_reason, label in REFUSALS:
        dev = paho("victim", version)
        reason = _connack(dev, gw.mqtt_port, tokens[case])
        # paho maps 3.1.1 return codes 4 and 5 onto the MQTT 5 reasons 0x86 and 0x87.
        assert reason.value == v5_reason, f"{case}: {reason}"
        assert dev.disconnected.wait(MQTT_TIMEOUT_S), f"{case}: the refused connection stays open"
        assert gw.metric("pulsegate_device_auth_refused_total", reason=label) == 1, case


def test_an_impersonator_is_refused_and_the_device_keeps_its_pushes(start_gateway, paho, tmp_path):
    signing, key_file = _keys("HS256")
    gw = _jwt_gateway(start_gateway, tmp_path, "HS256", key_file)
    device = paho("phone-42", "v5")
    assert _connack(device, gw.mqtt_port, _token(signing, "HS256", "phone-42")).value == 0
    assert device.subscribe("push/phone-42", qos=1) == [1]
    attacker = paho("phone-42", "v5")
    assert _connack(attacker, gw.mqtt_port, "not-a-token").value == 0x86
    gw.push_ok("phone-42", "for the real device", qos=1)
    assert device.next_message().payload == b"for the real device"
    assert not device.disconnected.is_set()
    assert attacker.messages.empty()
