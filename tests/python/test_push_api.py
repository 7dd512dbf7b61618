"""End-to-end tests of pulsegate's SP-facing push API (POST/GET/PATCH/DELETE
/v1/messages, GET /v1/mechanisms) with real HTTP, real MQTT devices (paho-mqtt
2.x, and a raw-socket client that never PUBACKs), a local HTTP server standing
in for an external webhook mechanism, and another for SP callbacks.

Every test starts its own gateway (port 0, its own --data-dir and config file)
and bounds every wait with a deadline: states are polled with GET, never
assumed after a fixed sleep.
"""

from __future__ import annotations

import base64
import time

import pytest

from harness import ID_RE, Gateway, fail, wait_until


def states_of(status: dict) -> list[str]:
    return [e["state"] for e in status["history"]]


def assert_error(r, status: int, code: str):
    assert r.status == status, f"expected {status} {code}, got {r.status} {r.text}"
    body = r.json
    assert body.get("error") == code, body
    assert isinstance(body.get("message"), str) and body["message"], body


def flush(gw: Gateway, dev, device_id: str, token: str = "sentinel") -> list[bytes]:
    """Pushes a sentinel and waits for it: everything the gateway sent the
    device before it has arrived. Returns the device's payloads so far."""
    before = len(dev.payloads())
    mid = gw.push({"device": device_id, "payload": token})
    dev.wait_messages(before + 1)
    wait_until(lambda: token.encode() in dev.payloads(), 5.0)
    gw.wait_state(mid, "delivered")
    return dev.payloads()


def webhook(url: str, name: str = "relay", cost: float = 1.0, timeout_ms: int = 3000) -> dict:
    return {"name": name, "kind": "webhook", "url": url, "cost": cost, "timeout_ms": timeout_ms,
            "expected_latency_ms": 100}


# ---- submission and delivery ------------------------------------------------


def test_unicast_post_is_201_and_delivered_with_history(env):
    gw = env.gateway()
    dev = env.paho("uni-1", gw)
    r = gw.post_message({"device": "uni-1", "payload": "hello"})
    assert r.status == 201, r
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    assert set(r.json) == {"id"}, r.json
    mid = r.json["id"]
    assert ID_RE.match(mid), mid

    topic, payload, qos, _ = dev.wait_messages(1)[0]
    assert (topic, payload, qos) == ("push/uni-1", b"hello", 1)

    st = gw.wait_state(mid, "delivered")
    assert st["id"] == mid and st["device"] == "uni-1" and st["qos"] == 1, st
    assert st["expires_ms"] - st["created_ms"] == 24 * 3600 * 1000, st  # default_ttl_s
    states = states_of(st)
    assert states[0] == "accepted", states
    assert states[-1] == "delivered", states
    assert "sent" in states and states.index("sent") < len(states) - 1, states
    assert [e["at_ms"] for e in st["history"]] == sorted(e["at_ms"] for e in st["history"]), st["history"]
    assert len(st["attempts"]) == 1, st["attempts"]
    a = st["attempts"][0]
    assert a["n"] == 1 and a["mechanism"] == "persistent" and a["outcome"] == "puback", a
    assert isinstance(a["latency_ms"], int) and 0 <= a["latency_ms"] < 5000, a
    assert a["started_ms"] >= st["created_ms"], (a, st["created_ms"])
    assert dev.payloads() == [b"hello"]


def test_multicast_returns_ids_and_base64_payload_arrives_as_bytes(env):
    gw = env.gateway()
    d1, d2 = env.paho("multi-1", gw), env.paho("multi-2", gw)
    raw = bytes([0, 1, 2, 0x7F, 0x80, 0xFE, 0xFF]) + "é".encode()
    r = gw.post_message({
        "devices": ["multi-1", "multi-2"],
        "payload": base64.b64encode(raw).decode(),
        "payload_encoding": "base64",
    })
    assert r.status == 201, r
    assert set(r.json) == {"ids"}, r.json
    ids = r.json["ids"]
    assert len(ids) == 2 and len(set(ids)) == 2 and all(ID_RE.match(i) for i in ids), ids
    for dev, mid, name in ((d1, ids[0], "multi-1"), (d2, ids[1], "multi-2")):
        topic, payload, _, _ = dev.wait_messages(1)[0]
        assert topic == f"push/{name}" and payload == raw, (topic, payload)
        st = gw.wait_state(mid, "delivered")
        assert st["device"] == name, st

    # A one-element "devices" list is still a multicast answer.
    r = gw.post_message({"devices": ["multi-1"], "payload": "one"})
    assert r.status == 201 and set(r.json) == {"ids"} and len(r.json["ids"]) == 1, r
    gw.wait_state(r.json["ids"][0], "delivered")


def test_qos0_push_is_delivered_on_hand_off(env):
    gw = env.gateway()
    dev = env.paho("q0-1", gw)
    mid = gw.push({"device": "q0-1", "payload": "fire and forget", "qos": 0})
    _, payload, qos, _ = dev.wait_messages(1)[0]
    assert (payload, qos) == (b"fire and forget", 0)
    st = gw.wait_state(mid, "delivered")
    assert st["qos"] == 0 and st["attempts"][0]["outcome"] == "sent_qos0", st


# ---- store and forward -------------------------------------------------------


def test_offline_device_is_queued_then_delivered_when_it_connects(env):
    gw = env.gateway()
    mid = gw.push({"device": "sf-1", "payload": "later"})
    st = gw.wait_state(mid, "queued")
    assert st["attempts"] == [], st  # an offline device is not an attempt
    dev = env.paho("sf-1", gw)
    assert dev.wait_messages(1)[0][1] == b"later"
    st = gw.wait_state(mid, "delivered")
    assert states_of(st)[:2] == ["accepted", "queued"] and states_of(st)[-1] == "delivered", st
    assert [(a["mechanism"], a["outcome"]) for a in st["attempts"]] == [("persistent", "puback")], st


def test_ttl_expires_a_message_for_an_offline_device(env):
    gw = env.gateway()
    t0 = time.monotonic()
    mid = gw.push({"device": "ttl-1", "payload": "stale", "ttl_s": 2})
    st = gw.status(mid)
    assert st["expires_ms"] - st["created_ms"] == 2000, st
    assert st["state"] in ("accepted", "queued"), st
    st = gw.wait_state(mid, "expired", timeout=6)
    assert time.monotonic() - t0 >= 1.5, "expired well before its ttl"
    assert st["attempts"] == [], st
    # The device connecting afterwards never gets it.
    dev = env.paho("ttl-1", gw)
    assert flush(gw, dev, "ttl-1") == [b"sentinel"]
    assert gw.status(mid)["state"] == "expired"


def test_device_queue_limit_fails_the_oldest_message(env):
    gw = env.gateway({"pending_pushes_per_device_max": 2})
    ids = [gw.push({"device": "evict-1", "payload": f"m{i}"}) for i in range(3)]
    st = gw.wait_state(ids[0], "failed")
    assert "evicted" in st["history"][-1].get("detail", ""), st["history"]
    for mid in ids[1:]:
        assert gw.status(mid)["state"] == "queued"
    dev = env.paho("evict-1", gw)
    for mid in ids[1:]:
        gw.wait_state(mid, "delivered")
    assert sorted(flush(gw, dev, "evict-1")) == sorted([b"m1", b"m2", b"sentinel"])


def test_collapse_key_replaces_the_queued_message(env):
    gw = env.gateway()
    first = gw.push({"device": "col-1", "payload": "score 1-0", "collapse_key": "score"})
    gw.wait_state(first, "queued")
    other = gw.push({"device": "col-1", "payload": "news", "collapse_key": "news"})
    second = gw.push({"device": "col-1", "payload": "score 2-0", "collapse_key": "score"})
    st = gw.wait_state(first, "collapsed")
    assert st["collapsed_into"] == second, st
    assert st["collapse_key"] == "score", st
    assert gw.status(second)["state"] == "queued"
    assert gw.status(other)["state"] == "queued"  # another key is untouched
    dev = env.paho("col-1", gw)
    gw.wait_state(second, "delivered")
    gw.wait_state(other, "delivered")
    got = flush(gw, dev, "col-1")
    assert sorted(got) == sorted([b"score 2-0", b"news", b"sentinel"]), got
    assert gw.status(first)["state"] == "collapsed"


# ---- cancel and confirm ---------------------------------------------------------


def test_cancel_a_queued_message(env):
    gw = env.gateway()
    mid = gw.push({"device": "can-1", "payload": "never"})
    gw.wait_state(mid, "queued")
    r = gw.request("DELETE", f"/v1/messages/{mid}")
    assert r.status == 200 and r.json["state"] == "cancelled", r
    st = gw.status(mid)
    assert st["state"] == "cancelled" and states_of(st)[-1] == "cancelled", st
    dev = env.paho("can-1", gw)
    assert flush(gw, dev, "can-1") == [b"sentinel"]
    assert gw.status(mid)["state"] == "cancelled"
    assert_error(gw.request("DELETE", f"/v1/messages/{mid}"), 409, "conflict")
    assert_error(gw.request("PATCH", f"/v1/messages/{mid}", {"confirmed": True}), 409, "conflict")


def test_cancel_a_delivered_message_is_409(env):
    gw = env.gateway()
    dev = env.paho("can-2", gw)
    mid = gw.push({"device": "can-2", "payload": "done"})
    dev.wait_messages(1)
    gw.wait_state(mid, "delivered")
    assert_error(gw.request("DELETE", f"/v1/messages/{mid}"), 409, "conflict")
    assert gw.status(mid)["state"] == "delivered"
    assert_error(gw.request("DELETE", "/v1/messages/00000000000000ff"), 404, "not_found")


def test_confirm_after_delivery_and_bad_patch_bodies(env):
    gw = env.gateway()
    dev = env.paho("conf-1", gw)
    mid = gw.push({"device": "conf-1", "payload": "ping"})
    dev.wait_messages(1)
    gw.wait_state(mid, "delivered")
    for bad in (b"not json", b"{}", b'{"confirmed": false}', b'{"confirmed": "yes"}',
                b'{"confirmed": true, "extra": 1}'):
        r = gw.request("PATCH", f"/v1/messages/{mid}", raw=bad)
        assert_error(r, 400, "bad_request")
    assert gw.status(mid)["state"] == "delivered"
    r = gw.request("PATCH", f"/v1/messages/{mid}", {"confirmed": True})
    assert r.status == 200 and r.json["state"] == "confirmed", r
    st = gw.status(mid)
    assert st["state"] == "confirmed" and states_of(st)[-2:] == ["delivered", "confirmed"], st
    r = gw.request("PATCH", f"/v1/messages/{mid}", {"confirmed": True})  # idempotent
    assert r.status == 200 and r.json["state"] == "confirmed", r
    assert_error(gw.request("PATCH", "/v1/messages/00000000000000ff", {"confirmed": True}), 404, "not_found")


def test_patch_body_must_be_a_json_object(env):
    # POST refuses a non-object body ("body must be a JSON object"); PATCH must too:
    # `[true]` is not `{"confirmed": true}` and must not confirm anything.
    gw = env.gateway()
    dev = env.paho("conf-2", gw)
    mid = gw.push({"device": "conf-2", "payload": "ping"})
    dev.wait_messages(1)
    gw.wait_state(mid, "delivered")
    r = gw.request("PATCH", f"/v1/messages/{mid}", raw=b"[true]")
    assert gw.status(mid)["state"] == "delivered", "a JSON array body confirmed the message"
    assert_error(r, 400, "bad_request")


# ---- retries ----------------------------------------------------------------------


def test_retries_with_exponential_backoff_then_failed(env):
    gw = env.gateway({
        "persistent_ack_timeout_ms": 300,
        "profiles": {"retry3": {"retry": {"max_attempts": 3, "backoff_base_ms": 200, "backoff_max_ms": 10000}}},
    })
    dev = env.raw("retry-1", gw)  # reads PUBLISH, never PUBACKs
    mid = gw.push({"device": "retry-1", "payload": "ack me", "profile": "retry3"})
    st = gw.wait_state(mid, "failed", timeout=8)
    attempts = st["attempts"]
    assert [a["n"] for a in attempts] == [1, 2, 3], attempts
    assert all(a["mechanism"] == "persistent" and a["outcome"] == "timeout" for a in attempts), attempts
    assert all(250 <= a["latency_ms"] <= 2000 for a in attempts), attempts
    starts = [a["started_ms"] for a in attempts]
    gap1, gap2 = starts[1] - starts[0], starts[2] - starts[1]
    # ack timeout 300 ms, then backoff 200 ms before attempt 2 and 400 ms before attempt 3.
    assert 450 <= gap1 <= 2500, (gap1, attempts)
    assert 650 <= gap2 <= 3000, (gap2, attempts)
    assert gap2 > gap1 + 100, (gap1, gap2)
    assert states_of(st).count("sent") == 3, st["history"]
    assert "3 attempts failed" in st["history"][-1].get("detail", ""), st["history"]
    pubs = dev.wait_publishes(3)
    assert [p[3] for p in pubs] == [b"ack me"] * 3, pubs
    assert all(p[1] == 1 for p in pubs) and len({p[0] for p in pubs}) == 3, pubs
    assert pubs[2][4] - pubs[1][4] > pubs[1][4] - pubs[0][4], pubs


# ---- mechanisms, failover, critical -------------------------------------------------


def test_webhook_delivers_when_the_device_is_offline(env):
    relay = env.mock(200)
    gw = env.gateway({"mechanisms": [webhook(relay.url)]})
    mid = gw.push({"device": "wh-1", "payload": "via relay"})
    st = gw.wait_state(mid, "delivered")
    req = relay.wait_requests(1)[0]
    assert req["json"] == {"id": mid, "device": "wh-1", "payload": "via relay", "qos": 1}, req
    assert req["headers"].get("x-pulsegate-message-id") == mid, req["headers"]
    assert req["headers"].get("content-type", "").startswith("application/json"), req["headers"]
    assert [(a["mechanism"], a["outcome"]) for a in st["attempts"]] == [("relay", "http_2xx")], st
    assert "relay" in st["history"][-1].get("detail", ""), st["history"]


def test_webhook_500_fails_over_to_persistent_when_the_device_comes_online(env):
    relay = env.mock(500)
    gw = env.gateway({"mechanisms": [webhook(relay.url)]})
    profile = {"retry": {"max_attempts": 10, "backoff_base_ms": 100, "backoff_max_ms": 200,
                         "on_failure": "next_mechanism"}}
    mid = gw.push({"device": "fo-1", "payload": "eventually", "profile": profile})
    relay.wait_requests(1)
    assert wait_until(lambda: any(a["outcome"] == "http_500" for a in gw.status(mid)["attempts"]), 5), \
        gw.status(mid)
    dev = env.paho("fo-1", gw)
    st = gw.wait_state(mid, "delivered", timeout=10)
    outcomes = [(a["mechanism"], a["outcome"]) for a in st["attempts"]]
    assert outcomes[-1] == ("persistent", "puback"), outcomes
    assert ("relay", "http_500") in outcomes, outcomes
    assert all(o == ("relay", "http_500") for o in outcomes[:-1]), outcomes
    assert flush(gw, dev, "fo-1").count(b"eventually") == 1


def test_critical_runs_two_mechanisms_and_cancels_the_slower(env):
    relay = env.mock(("hang", 5.0, 200))  # answers 200, but only after the device has acked
    gw = env.gateway({"mechanisms": [webhook(relay.url, timeout_ms=8000)]})
    dev = env.paho("crit-1", gw)
    mid = gw.push({"device": "crit-1", "payload": "urgent", "profile": {"goal": "critical"}})
    relay.wait_requests(1)  # both mechanisms started
    dev.wait_messages(1)
    st = gw.wait_state(mid, "delivered")
    by_mech = {a["mechanism"]: a for a in st["attempts"]}
    assert len(st["attempts"]) == 2 and set(by_mech) == {"persistent", "relay"}, st["attempts"]
    assert by_mech["persistent"]["outcome"] == "puback", st["attempts"]
    assert by_mech["relay"]["outcome"] == "cancelled", st["attempts"]
    assert states_of(st).count("delivered") == 1, st["history"]
    # The late 2xx from the relay changes nothing.
    relay.release()
    wait_until(lambda: gw.mechanisms()["relay"]["successes"] + gw.mechanisms()["relay"]["failures"] > 0, 3)
    st2 = gw.status(mid)
    assert st2["state"] == "delivered" and st2["attempts"] == st["attempts"], st2
    assert flush(gw, dev, "crit-1").count(b"urgent") == 1


def test_critical_webhook_wins_when_the_device_does_not_ack(env):
    relay = env.mock(200)
    gw = env.gateway({"persistent_ack_timeout_ms": 5000, "mechanisms": [webhook(relay.url)]})
    dev = env.raw("crit-2", gw)
    mid = gw.push({"device": "crit-2", "payload": "urgent", "profile": {"goal": "critical"}})
    st = gw.wait_state(mid, "delivered")
    assert dev.wait_publishes(1)[0][3] == b"urgent"  # the persistent attempt did start
    by_mech = {a["mechanism"]: a for a in st["attempts"]}
    assert set(by_mech) == {"persistent", "relay"}, st["attempts"]
    assert by_mech["relay"]["outcome"] == "http_2xx", st["attempts"]
    assert by_mech["persistent"]["outcome"] == "cancelled", st["attempts"]
    assert len(relay.requests) == 1 and states_of(st).count("delivered") == 1, st


def test_mechanism_table_measures_real_outcomes(env):
    relay = env.mock(200)
    gw = env.gateway({"mechanisms": [webhook(relay.url, timeout_ms=2000)]})
    m = gw.mechanisms()
    assert set(m) == {"persistent", "relay"}, m
    for name in m:
        assert (m[name]["attempts"], m[name]["successes"], m[name]["failures"]) == (0, 0, 0), m[name]
        assert m[name]["mean_latency_ms"] is None and m[name]["status"] == "up", m[name]
    assert m["relay"]["config"]["kind"] == "webhook" and m["relay"]["config"]["url"] == relay.url, m["relay"]
    assert m["persistent"]["config"]["kind"] == "persistent", m["persistent"]

    # One success on persistent.
    dev = env.paho("mech-1", gw)
    gw.wait_state(gw.push({"device": "mech-1", "payload": "a"}), "delivered")
    dev.wait_messages(1)
    m = gw.mechanisms()
    p = m["persistent"]
    assert (p["attempts"], p["successes"], p["failures"]) == (1, 1, 0), p
    assert p["mean_latency_ms"] is not None and p["mean_latency_ms"] >= 0, p
    assert m["relay"]["attempts"] == 0, m["relay"]

    # One slow success on the relay.
    relay.set(default=("hang", 0.2, 200))
    gw.wait_state(gw.push({"device": "mech-off-0", "payload": "b"}), "delivered")
    r = gw.mechanisms()["relay"]
    assert (r["attempts"], r["successes"], r["failures"]) == (1, 1, 0), r
    assert r["mean_latency_ms"] is not None and r["mean_latency_ms"] >= 150, r
    rate_before = r["success_rate"]

    # Five failures in a row: the relay is reported down.
    relay.set(default=500)
    one_shot = {"retry": {"max_attempts": 1}}
    for i in range(1, 6):
        mid = gw.push({"device": f"mech-off-{i}", "payload": "c", "profile": one_shot})
        st = gw.wait_state(mid, "failed")
        assert st["attempts"][-1]["outcome"] == "http_500", st
    r = gw.mechanisms()["relay"]
    assert (r["attempts"], r["successes"], r["failures"]) == (6, 1, 5), r
    assert r["status"] == "down", r
    assert r["success_rate"] < rate_before, (r, rate_before)
    assert gw.mechanisms()["persistent"]["status"] == "up"


# ---- callbacks -----------------------------------------------------------------------


def test_callbacks_report_delivered_and_expired(env):
    cb = env.mock(200)
    gw = env.gateway()
    dev = env.paho("cb-1", gw)
    delivered = gw.push({"device": "cb-1", "payload": "x", "callback_url": cb.url})
    expired = gw.push({"device": "cb-off", "payload": "y", "callback_url": cb.url, "ttl_s": 1})
    dev.wait_messages(1)
    req = cb.wait_requests(1, where=lambda r: (r["json"] or {}).get("id") == delivered)[0]
    body = req["json"]
    assert body["state"] == "delivered" and body["device"] == "cb-1", body
    assert body["attempts"][0]["outcome"] == "puback", body
    assert req["headers"].get("content-type", "").startswith("application/json"), req["headers"]
    req = cb.wait_requests(1, timeout=6, where=lambda r: (r["json"] or {}).get("id") == expired)[0]
    assert req["json"]["state"] == "expired" and req["json"]["device"] == "cb-off", req["json"]
    assert len(cb.matching(lambda r: (r["json"] or {}).get("id") == delivered)) == 1


def test_failing_callback_is_retried(env):
    cb = env.mock(200)
    cb.set(script=[500])  # first POST fails, the rest succeed
    gw = env.gateway()
    dev = env.paho("cb-2", gw)
    mid = gw.push({"device": "cb-2", "payload": "x", "callback_url": cb.url})
    dev.wait_messages(1)
    reqs = cb.wait_requests(2, timeout=8, where=lambda r: (r["json"] or {}).get("id") == mid)
    assert [r["answer"] for r in reqs[:2]] == [500, 200], reqs
    assert reqs[0]["json"] == reqs[1]["json"] and reqs[1]["json"]["state"] == "delivered", reqs
    assert reqs[1]["at"] - reqs[0]["at"] >= 0.3, "the retry should back off"


# ---- authentication and rate limits -----------------------------------------------------

KEY_A, KEY_B, KEY_SLOW = "alpha-key-0001", "bravo-key-0002", "slow-key-0003"
SPS = {"sps": [
    {"name": "alpha", "api_key": KEY_A},
    {"name": "bravo", "api_key": KEY_B},
    {"name": "slow", "api_key": KEY_SLOW, "rate_per_s": 2},
]}


def test_auth_missing_or_unknown_key_is_401(env):
    gw = env.gateway(SPS)
    body = {"device": "auth-1", "payload": "x"}
    r = gw.request("POST", "/v1/messages", body)
    assert_error(r, 401, "unauthorized")
    assert "bearer" in r.headers.get("www-authenticate", "").lower(), r.headers
    assert_error(gw.request("POST", "/v1/messages", body, token="not-a-known-key"), 401, "unauthorized")
    assert_error(gw.request("POST", "/v1/messages", body, headers={"Authorization": f"Basic {KEY_A}"}),
                 401, "unauthorized")
    assert_error(gw.request("GET", "/v1/mechanisms"), 401, "unauthorized")
    assert_error(gw.request("GET", "/v1/messages/00000000000000ff"), 401, "unauthorized")
    assert gw.request("GET", "/healthz").status == 200
    assert gw.post_message(body, token=KEY_A).status == 201
    assert gw.mechanisms(token=KEY_A)["persistent"]


def test_an_sp_cannot_see_or_touch_another_sps_message(env):
    gw = env.gateway(SPS)
    mid = gw.push({"device": "iso-1", "payload": "private"}, token=KEY_A)
    assert gw.status(mid, token=KEY_A)["state"] in ("accepted", "queued")
    assert_error(gw.request("GET", f"/v1/messages/{mid}", token=KEY_B), 404, "not_found")
    assert_error(gw.request("DELETE", f"/v1/messages/{mid}", token=KEY_B), 404, "not_found")
    assert_error(gw.request("PATCH", f"/v1/messages/{mid}", {"confirmed": True}, token=KEY_B), 404, "not_found")
    assert gw.wait_state(mid, "queued", token=KEY_A)["device"] == "iso-1"
    r = gw.request("DELETE", f"/v1/messages/{mid}", token=KEY_A)
    assert r.status == 200 and r.json["state"] == "cancelled", r


def test_rate_limit_answers_429_with_retry_after(env):
    gw = env.gateway(SPS)
    results = [gw.post_message({"device": "rate-1", "payload": str(i)}, token=KEY_SLOW) for i in range(6)]
    codes = [r.status for r in results]
    assert codes[:2] == [201, 201], codes  # a burst of one second's worth
    limited = [r for r in results if r.status == 429]
    assert limited and codes.count(201) <= 3, codes
    for r in limited:
        assert_error(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1, r.headers
    # Other SPs are not limited by it.
    assert gw.post_message({"device": "rate-2", "payload": "a"}, token=KEY_A).status == 201
    # After Retry-After the SP may send again.
    assert wait_until(lambda: gw.post_message({"device": "rate-1", "payload": "z"}, token=KEY_SLOW).status == 201,
                      3.0, 0.25)


# ---- bad requests ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_gw(tmp_path_factory):
    g = Gateway(data_dir=tmp_path_factory.mktemp("pushapi-bad"))
    yield g
    problem = g.stop()
    if problem:
        fail(problem)


BAD_BODIES = {
    "not_json": b"hello",
    "truncated_json": b'{"device": "d", "payload": ',
    "array": b'[{"device": "d", "payload": "x"}]',
    "unknown_field": {"device": "d", "payload": "x", "priority": 3},
    "qos_2": {"device": "d", "payload": "x", "qos": 2},
    "empty_devices": {"devices": [], "payload": "x"},
    "unknown_profile_name": {"device": "d", "payload": "x", "profile": "no-such-profile"},
    "unknown_inline_profile_field": {"device": "d", "payload": "x", "profile": {"gaol": "free"}},
    "priority_out_of_range": {"device": "d", "payload": "x", "profile": {"priority": 10}},
    "device_and_devices": {"device": "d", "devices": ["e"], "payload": "x"},
    "no_device": {"payload": "x"},
    "no_payload": {"device": "d"},
    "empty_device_id": {"device": "", "payload": "x"},
    "bad_base64": {"device": "d", "payload": "!!not base64!!", "payload_encoding": "base64"},
    "unknown_encoding": {"device": "d", "payload": "x", "payload_encoding": "hex"},
    "ttl_0": {"device": "d", "payload": "x", "ttl_s": 0},
    "callback_not_http": {"device": "d", "payload": "x", "callback_url": "ftp://example.com/cb"},
    "collapse_key_empty": {"device": "d", "payload": "x", "collapse_key": ""},
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_request_is_400_with_json_error(shared_gw, case):
    body = BAD_BODIES[case]
    if isinstance(body, bytes):
        r = shared_gw.request("POST", "/v1/messages", raw=body)
    else:
        r = shared_gw.post_message(body)
    assert_error(r, 400, "bad_request")


def test_oversize_payload_is_413_and_the_limit_itself_is_accepted(shared_gw):
    # max_packet_bytes (256 KiB) - 16 - 256 (longest device id): room for PUBLISH header and topic.
    limit = 256 * 1024 - 16 - 256
    r = shared_gw.post_message({"device": "big-1", "payload": "x" * (limit + 1)})
    assert_error(r, 413, "payload_too_large")
    r = shared_gw.post_message({"device": "big-1", "payload": "x" * limit})
    assert r.status == 201, r


def test_unknown_ids_routes_and_methods(shared_gw):
    assert_error(shared_gw.request("GET", "/v1/messages/not-an-id"), 404, "not_found")
    assert_error(shared_gw.request("GET", "/v1/messages/00000000000000ff"), 404, "not_found")
    assert_error(shared_gw.request("GET", "/v1/nothing"), 404, "not_found")
    r = shared_gw.request("PUT", "/v1/messages", {"device": "d", "payload": "x"})
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers.get("allow", ""), r.headers
    assert_error(shared_gw.request("GET", "/v1/messages"), 405, "method_not_allowed")
