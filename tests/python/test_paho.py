"""paho-mqtt 2.x (MQTT 3.1.1 and 5) against pulsegate, unchanged: connect,
subscribe, pushes over HTTP, keep-alive, Server Keep Alive, session takeover,
assigned client identifiers, clean disconnect."""

from __future__ import annotations

import time

import pytest

VERSIONS = ("v311", "v5")
# SUBACK "refused": 3.1.1 return code 0x80, MQTT 5 reason 0x87 Not authorized.
REFUSED = {"v311": 0x80, "v5": 0x87}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", (0, 1))
def test_paho_subscribe_and_receive_push(gateway, paho, version, qos):
    client_id = f"dev-paho-{version}-q{qos}"
    dev = paho(client_id, version).connect(gateway.mqtt_port)

    assert dev.subscribe(f"push/{client_id}", qos=1) == [1], "own push topic must be granted (QoS 1)"
    assert dev.subscribe("push/someone-else", qos=1) == [REFUSED[version]], "foreign filter must be refused"
    assert dev.subscribe("$pulse/#", qos=0) == [0], "$pulse/# must be granted"

    acked_before = gateway.metric("pulsegate_pushes_acked_total")
    payload = f"hello {version} qos{qos} \u00e9\u263a"
    gateway.push_ok(client_id, payload, qos=qos)

    msg = dev.next_message()
    assert msg.topic == f"push/{client_id}"
    assert msg.payload.decode("utf-8") == payload
    assert msg.qos == qos
    assert not msg.retain

    if qos == 1:
        # paho acknowledges QoS 1 by itself; the gateway must count that PUBACK.
        gateway.wait_metric_at_least("pulsegate_pushes_acked_total", acked_before + 1, timeout=3)
    else:
        time.sleep(0.2)
        assert gateway.metric("pulsegate_pushes_acked_total") == acked_before
    assert not dev.disconnected.is_set()
    dev.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_paho_keepalive_pings_and_stays_connected(gateway, paho, version):
    client_id = f"dev-ping-{version}"
    before = gateway.metric("pulsegate_keepalives_total")
    dev = paho(client_id, version).connect(gateway.mqtt_port, keepalive=1)

    # With keep-alive 1 s the gateway closes a silent connection after 1.5 s;
    # paho's PINGREQs must keep it open for the whole 4 s.
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        assert not dev.disconnected.is_set(), f"closed after keep-alive pings: {dev.disconnect_reason}"
        time.sleep(0.1)
    assert dev.client.is_connected()
    pings = gateway.metric("pulsegate_keepalives_total") - before
    assert pings >= 2, f"only {pings} PINGREQs counted in 4 s with keepalive=1"

    gateway.push_ok(client_id, "still here", qos=1)
    assert dev.next_message().payload == b"still here"
    dev.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_paho_clean_disconnect(gateway, paho, version):
    client_id = f"dev-bye-{version}"
    closes_before = gateway.metric("pulsegate_closes_total", reason="client_disconnect")
    dev = paho(client_id, version).connect(gateway.mqtt_port)
    gateway.push_ok(client_id, "before bye", qos=0)
    assert dev.next_message().payload == b"before bye"

    dev.disconnect()
    assert dev.disconnect_reason.value == 0, dev.disconnect_reason
    assert not dev.disconnect_from_server

    gateway.wait_metric_at_least("pulsegate_closes_total", closes_before + 1, timeout=3, reason="client_disconnect")
    # Offline now: the push is held (store and forward), not delivered.
    mid = gateway.push_ok(client_id, "after bye", qos=1)
    assert gateway.status(mid)["state"] == "queued"
    # A non-queueing profile is refused while the device is offline.
    r = gateway.post_message({"device": client_id, "payload": "after bye", "qos": 1,
                              "profile": {"queue_if_offline": False}})
    assert r.status == 404, r
    assert r.json.get("error") == "device_offline", r


def test_paho_v5_honours_server_keepalive(start_gateway, paho):
    gateway = start_gateway("--server-keepalive-s", "2")
    client_id = "dev-ska"
    dev = paho(client_id, "v5").connect(gateway.mqtt_port, keepalive=60)

    props = dev.connack_properties
    assert props is not None and getattr(props, "ServerKeepAlive", None) == 2, f"CONNACK properties: {props}"

    # paho must now ping every 2 s, not every 60 s: >= 2 PINGREQs within ~5 s.
    before = gateway.metric("pulsegate_keepalives_total")
    start = time.monotonic()
    grew = gateway.wait_metric_at_least("pulsegate_keepalives_total", before + 2, timeout=6.0)
    elapsed = time.monotonic() - start
    assert grew >= before + 2
    assert elapsed <= 6.0

    # And the gateway (enforcing 1.5 x 2 s) never closed it.
    assert not dev.disconnected.is_set(), f"disconnected: {dev.disconnect_reason}"
    assert dev.client.is_connected()
    gateway.push_ok(client_id, "ska ok", qos=1)
    assert dev.next_message().payload == b"ska ok"
    dev.disconnect()


def test_paho_v5_session_takeover(gateway, paho):
    client_id = "dev-takeover"
    taken_before = gateway.metric("pulsegate_sessions_taken_over_total")
    a = paho(client_id, "v5").connect(gateway.mqtt_port)
    b = paho(client_id, "v5").connect(gateway.mqtt_port)

    assert a.disconnected.wait(5), "the old connection was not closed on takeover"
    assert a.disconnect_from_server, "the old connection got no DISCONNECT packet"
    assert a.disconnect_reason.value == 0x8E, f"reason {a.disconnect_reason!r}, expected 0x8E Session taken over"
    gateway.wait_metric_at_least("pulsegate_sessions_taken_over_total", taken_before + 1, timeout=3)

    gateway.push_ok(client_id, "to the new one", qos=1)
    msg = b.next_message()
    assert msg.payload == b"to the new one"
    assert msg.topic == f"push/{client_id}"
    assert a.messages.empty()
    assert not b.disconnected.is_set()
    b.disconnect()


def test_paho_v311_session_takeover(gateway, paho):
    client_id = "dev-takeover-311"
    a = paho(client_id, "v311").connect(gateway.mqtt_port)
    b = paho(client_id, "v311").connect(gateway.mqtt_port)

    # 3.1.1 has no server DISCONNECT: the old connection is just closed.
    assert a.disconnected.wait(5), "the old connection was not closed on takeover"
    gateway.push_ok(client_id, "311 takeover", qos=1)
    assert b.next_message().payload == b"311 takeover"
    assert not b.disconnected.is_set()
    b.disconnect()


def test_paho_v5_assigned_client_identifier(gateway, paho):
    dev = paho("", "v5").connect(gateway.mqtt_port)
    props = dev.connack_properties
    assigned = getattr(props, "AssignedClientIdentifier", None)
    assert assigned, f"no AssignedClientIdentifier in CONNACK: {props}"

    assert dev.subscribe(f"push/{assigned}", qos=1) == [1]
    gateway.push_ok(assigned, "for the nameless", qos=1)
    msg = dev.next_message()
    assert msg.topic == f"push/{assigned}"
    assert msg.payload == b"for the nameless"
    dev.disconnect()
