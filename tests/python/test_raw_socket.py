"""Hand-made MQTT over a stdlib socket, where a stock client would not do what
the test needs: stay silent past its keep-alive, or take a QoS 1 push and never
acknowledge it. The persistent-session test then resumes with stock paho."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

SOCKET_TIMEOUT_S = 5.0


# ---- a minimal MQTT codec -------------------------------------------------

def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("!H", len(b)) + b


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


def connect_packet(version: str, client_id: str, keepalive_s: int, clean: bool = True,
                   session_expiry_s: int | None = None) -> bytes:
    flags = 0x02 if clean else 0x00
    if version == "v311":
        body = utf8("MQTT") + b"\x04" + bytes([flags]) + struct.pack("!H", keepalive_s) + utf8(client_id)
    else:
        props = b"" if session_expiry_s is None else b"\x11" + struct.pack("!I", session_expiry_s)
        body = (utf8("MQTT") + b"\x05" + bytes([flags]) + struct.pack("!H", keepalive_s)
                + varint(len(props)) + props + utf8(client_id))
    return packet(0x10, body)


def recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes | None:
    """n bytes, or None if the peer closed first. Fails at the deadline."""
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail("timed out reading from the gateway", pytrace=False)
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(n - len(buf))
        except socket.timeout:
            pytest.fail("timed out reading from the gateway", pytrace=False)
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_packet(sock: socket.socket, timeout: float = SOCKET_TIMEOUT_S) -> tuple[int, bytes] | None:
    """(first byte, body) of the next packet, or None on EOF."""
    deadline = time.monotonic() + timeout
    first = recv_exact(sock, 1, deadline)
    if first is None:
        return None
    length, shift = 0, 0
    while True:
        b = recv_exact(sock, 1, deadline)
        if b is None:
            return None
        length |= (b[0] & 0x7F) << shift
        shift += 7
        if not b[0] & 0x80:
            break
    body = recv_exact(sock, length, deadline) if length else b""
    if body is None:
        return None
    return first[0], body


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def parse_publish(version: str, first: int, body: bytes) -> dict:
    assert first >> 4 == 3, f"expected PUBLISH, got packet type {first >> 4}"
    qos = (first >> 1) & 3
    (tlen,) = struct.unpack_from("!H", body, 0)
    topic = body[2:2 + tlen].decode()
    pos = 2 + tlen
    packet_id = None
    if qos:
        (packet_id,) = struct.unpack_from("!H", body, pos)
        pos += 2
    if version == "v5":
        plen, pos = read_varint(body, pos)
        pos += plen
    return {"qos": qos, "dup": bool(first & 0x08), "topic": topic, "packet_id": packet_id, "payload": body[pos:]}


def raw_connect(gateway, version: str, client_id: str, keepalive_s: int, clean: bool = True,
                session_expiry_s: int | None = None) -> tuple[socket.socket, int, float]:
    """Connects, sends CONNECT, checks CONNACK success; returns (socket, session
    present flag, monotonic time just before CONNECT was sent)."""
    sock = socket.create_connection((gateway.host, gateway.mqtt_port), timeout=SOCKET_TIMEOUT_S)
    sent_at = time.monotonic()
    sock.sendall(connect_packet(version, client_id, keepalive_s, clean, session_expiry_s))
    p = read_packet(sock)
    assert p is not None, "connection closed instead of CONNACK"
    first, body = p
    assert first == 0x20, f"expected CONNACK, got first byte {first:#x}"
    assert body[1] == 0, f"CONNACK refused with {body[1]:#x}"
    return sock, body[0] & 1, sent_at


def wait_closed(sock: socket.socket, version: str, start: float, timeout: float) -> tuple[float, int | None]:
    """Reads until the server closes, at most until `start` + `timeout`.
    Returns (seconds from `start` to the close, MQTT 5 DISCONNECT reason or None)."""
    reason = None
    while True:
        p = read_packet(sock, timeout=max(0.01, start + timeout - time.monotonic()))
        if p is None:
            return time.monotonic() - start, reason
        first, body = p
        assert first == 0xE0 and version == "v5", f"unexpected packet {first:#x} {body!r}"
        reason = body[0] if body else 0


# ---- keep-alive and connect timeout ---------------------------------------

@pytest.mark.parametrize("version", ("v311", "v5"))
def test_silent_client_closed_after_keepalive(gateway, version):
    before = gateway.metric("pulsegate_closes_total", reason="keepalive_timeout")
    sock, _, sent_at = raw_connect(gateway, version, f"dev-silent-{version}", keepalive_s=1)
    try:
        # Silent from now on: the gateway must close 1.5 x 1 s after CONNECT
        # (measured from before CONNECT was sent, so never less than 1.5 s).
        elapsed, reason = wait_closed(sock, version, sent_at, timeout=4.0)
    finally:
        sock.close()
    assert 1.45 <= elapsed <= 3.0, f"closed {elapsed:.2f} s after CONNECT, expected ~1.5 s (keep-alive 1 s)"
    if version == "v5":
        assert reason == 0x8D, f"DISCONNECT reason {reason}, expected 0x8D Keep alive timeout"
    gateway.wait_metric_at_least("pulsegate_closes_total", before + 1, timeout=2, reason="keepalive_timeout")


def test_connect_timeout_closes_mute_socket(start_gateway):
    gateway = start_gateway("--connect-timeout-s", "1")
    before = gateway.metric("pulsegate_closes_total", reason="connect_timeout")
    start = time.monotonic()
    sock = socket.create_connection((gateway.host, gateway.mqtt_port), timeout=SOCKET_TIMEOUT_S)
    try:
        elapsed, _ = wait_closed(sock, "v311", start, timeout=4.0)
    finally:
        sock.close()
    assert 0.95 <= elapsed <= 3.0, f"closed after {elapsed:.2f} s, expected ~1 s (connect timeout 1 s)"
    gateway.wait_metric_at_least("pulsegate_closes_total", before + 1, timeout=2, reason="connect_timeout")


# ---- persistent session: unacknowledged QoS 1 push redelivered to paho ----

def leave_unacked_push(gateway, version: str, client_id: str, payload: str) -> None:
    """A raw persistent-session device receives a QoS 1 push and drops the
    connection without PUBACK; returns once the gateway stored the session."""
    stored_before = gateway.metric("pulsegate_stored_sessions")
    sock, present, _ = raw_connect(gateway, version, client_id, keepalive_s=30, clean=False,
                                session_expiry_s=300 if version == "v5" else None)
    try:
        assert present == 0, "fresh gateway: no session may be present"
        gateway.push_ok(client_id, payload, qos=1)
        p = read_packet(sock)
        assert p is not None, "closed instead of delivering the push"
        pub = parse_publish(version, *p)
        assert pub["qos"] == 1 and pub["topic"] == f"push/{client_id}" and pub["payload"] == payload.encode()
    finally:
        sock.close()  # no PUBACK
    gateway.wait_metric_at_least("pulsegate_stored_sessions", stored_before + 1, timeout=3)


def resume_with_paho(gateway, paho, version: str, client_id: str):
    dev = paho(client_id, version, clean_session=False)
    props = None
    if version == "v5":
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
    dev.connect(gateway.mqtt_port, keepalive=30, clean_start=False, properties=props)
    return dev


@pytest.mark.parametrize("version", ("v311", "v5"))
def test_persistent_session_redelivers_unacked_push_to_paho(gateway, paho, version):
    client_id = f"dev-persist-{version}"
    payload = f"survive the reconnect ({version})"
    leave_unacked_push(gateway, version, client_id, payload)
    resumed_before = gateway.metric("pulsegate_sessions_resumed_total")
    redelivered_before = gateway.metric("pulsegate_pushes_redelivered_total")
    acked_before = gateway.metric("pulsegate_pushes_acked_total")

    dev = resume_with_paho(gateway, paho, version, client_id)
    assert dev.connack_flags.session_present, "CONNACK must report the stored session as present"

    msg = dev.next_message()
    assert msg.topic == f"push/{client_id}"
    assert msg.payload.decode() == payload
    assert msg.qos == 1
    gateway.wait_metric_at_least("pulsegate_sessions_resumed_total", resumed_before + 1, timeout=3)
    gateway.wait_metric_at_least("pulsegate_pushes_redelivered_total", redelivered_before + 1, timeout=3)
    # paho's PUBACK for the redelivered push is counted.
    gateway.wait_metric_at_least("pulsegate_pushes_acked_total", acked_before + 1, timeout=3)
    assert dev.messages.empty(), "the push must be redelivered exactly once"

    # New pushes still flow on the resumed session.
    gateway.push_ok(client_id, "after resume", qos=1)
    assert dev.next_message().payload == b"after resume"
    dev.disconnect()


@pytest.mark.parametrize("version", ("v311", "v5"))
def test_persistent_session_redelivery_sets_dup_flag(gateway, paho, version):
    """MQTT 3.1.1 [MQTT-3.3.1-1] / MQTT 5 3.3.1.1: a re-delivered PUBLISH carries DUP=1."""
    client_id = f"dev-dup-{version}"
    leave_unacked_push(gateway, version, client_id, "dup?")
    dev = resume_with_paho(gateway, paho, version, client_id)
    msg = dev.next_message()
    assert msg.payload == b"dup?"
    assert msg.dup, "redelivered QoS 1 PUBLISH was sent with DUP=0"
    dev.disconnect()
