"""The device side of the kit: `PahoDevice` (a stock paho-mqtt 2.x client) and
`RawDevice` (MQTT 3.1.1 on a raw socket that never PUBACKs). Devices own no
gateway; every wait has a deadline.
"""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time
from typing import Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .gateway import MQTT_TIMEOUT_S, HarnessError, fail

# ---- devices ------------------------------------------------------------------

PROTOCOLS = {"v311": mqtt.MQTTv311, "v5": mqtt.MQTTv5}


class PahoDevice:
    """A stock paho-mqtt 2.x client (callback API v2) driven by its own network
    thread (loop_start), with every callback recorded for the test to wait on.
    QoS 1 pushes are PUBACKed by paho itself. Automatic reconnection is off so a
    closed connection stays closed. Every PUBLISH received is both queued
    (`next_message`) and recorded as (topic, payload, qos, monotonic time)
    (`wait_messages`, `payloads`)."""

    def __init__(self, client_id: str, version: str = "v311", clean_session: bool = True,
                 ca_certs: Optional[str] = None):
        """`ca_certs`: a CA file; the device then speaks TLS (`tls_set`), verifying the
        gateway's certificate against it."""
        self.client_id = client_id
        self.version = version
        self.protocol = PROTOCOLS[version]
        kwargs = {}
        if self.protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = clean_session
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=self.protocol,
            reconnect_on_failure=False,
            **kwargs,
        )
        if ca_certs is not None:
            self.client.tls_set(ca_certs=ca_certs)
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack_reason = None
        self.connack_flags = None
        self.connack_properties = None
        self.disconnect_reason = None
        self.disconnect_from_server = None
        self.messages: "queue.Queue[mqtt.MQTTMessage]" = queue.Queue()
        self.received: list[tuple[str, bytes, int, float]] = []
        self._received_cv = threading.Condition()
        self._subacks: dict[int, list] = {}
        self._suback_cv = threading.Condition()
        self._started = False
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack_flags = flags
        self.connack_reason = reason_code
        self.connack_properties = properties
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnect_reason = reason_code
        self.disconnect_from_server = flags.is_disconnect_packet_from_server
        self.disconnected.set()

    def _on_message(self, client, userdata, message):
        with self._received_cv:
            self.received.append((message.topic, bytes(message.payload), message.qos, time.monotonic()))
            self._received_cv.notify_all()
        self.messages.put(message)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._suback_cv:
            self._subacks[mid] = list(reason_codes)
            self._suback_cv.notify_all()

    def connect(self, port: int, keepalive: int = 60, clean_start: bool = True, properties=None,
                timeout: float = MQTT_TIMEOUT_S) -> "PahoDevice":
        kwargs = {}
        if self.protocol == mqtt.MQTTv5:
            kwargs["clean_start"] = clean_start
            kwargs["properties"] = properties
        self.client.connect("127.0.0.1", port, keepalive=keepalive, **kwargs)
        self.client.loop_start()
        self._started = True
        if not self.connected.wait(timeout):
            self.stop()
            fail(f"paho device {self.client_id!r} got no CONNACK within {timeout} s")
        assert self.connack_reason is not None and self.connack_reason.value == 0, f"CONNACK refused: {self.connack_reason}"
        return self

    def subscribe(self, topic: str, qos: int = 1, timeout: float = MQTT_TIMEOUT_S) -> list[int]:
        """Subscribes and returns the SUBACK reason codes (ints)."""
        rc, mid = self.client.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        with self._suback_cv:
            ok = self._suback_cv.wait_for(lambda: mid in self._subacks, timeout)
            assert ok, f"no SUBACK for {topic} within {timeout} s"
            return [c.value for c in self._subacks[mid]]

    def next_message(self, timeout: float = MQTT_TIMEOUT_S) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            fail(f"no message received within {timeout} s")

    def payloads(self) -> list[bytes]:
        with self._received_cv:
            return [m[1] for m in self.received]

    def wait_messages(self, n: int, timeout: float = MQTT_TIMEOUT_S) -> list[tuple[str, bytes, int, float]]:
        with self._received_cv:
            if not self._received_cv.wait_for(lambda: len(self.received) >= n, timeout):
                raise HarnessError(f"device {self.client_id}: {len(self.received)} messages within "
                                   f"{timeout} s, expected {n}: {[m[1] for m in self.received]}")
            return list(self.received)

    def disconnect(self, timeout: float = MQTT_TIMEOUT_S) -> None:
        self.client.disconnect()
        assert self.disconnected.wait(timeout), f"on_disconnect not called within {timeout} s"
        self.stop()

    def close(self) -> None:
        """DISCONNECT if still connected (not waited for), then `stop`."""
        try:
            self.client.disconnect()
        except Exception:  # noqa: BLE001 - the connection may be gone already
            pass
        self.stop()

    def stop(self) -> None:
        if self._started:
            self._started = False
            self.client.loop_stop()
        # Drops the TCP connection if still open (without an MQTT DISCONNECT).
        sock = self.client.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


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


