#!/usr/bin/env python3
"""Side-by-side benchmark: pulsegate vs Mosquitto (and rumqttd when `rumqttd` is on PATH).

    python3 benches/side_by_side.py --connections 18000 --duration-s 60 --keepalive-s 10 \
        --pulsegate-connections 100000

Builds (`cargo build --release --workspace`, skip with --no-build; honours CARGO_TARGET_DIR),
then for each server, on a free 127.0.0.1 port, with a fresh server process per run:
  1. `pulsegate-loadgen hold` (N devices, --server-pid, --json): connections held, connect
     rate, server RSS per connection, server CPU per million keep-alives, ping RTT p99;
  2. `pulsegate-loadgen push` (same N devices): end-to-end push latency p99. pulsegate is
     pushed to through its HTTP API. A broker has no HTTP API, so the loadgen's push requests
     go to a small HTTP->MQTT bridge run by this script (`_bridge` mode below), which
     PUBLISHes to `push/{device}` over one MQTT connection; devices subscribe to `push/{id}`
     (`--subscribe`, used for every server so the client traffic is identical). By default
     the bridge re-stamps `lgts=` in the payload at the moment it writes the PUBLISH
     (--bridge-stamp publish), so a broker's latency excludes the HTTP hop that pulsegate's
     includes (conservative for pulsegate); --bridge-stamp request keeps the loadgen's stamp.
Optionally (--pulsegate-connections M) a pulsegate-only `hold` with M devices and
ceil(M / 19000) shards: connections that Mosquitto cannot reach (fd limit).

--tls: the devices connect over TLS. A CA and a server certificate for localhost are made
with `openssl` in the work dir; Mosquitto gets a TLS listener (`listener PORT 127.0.0.1`,
`certfile`, `keyfile`; plus its plain listener for the push bridge), pulsegate gets
`--mqtt-tls-listen 127.0.0.1:PORT --tls-cert-file --tls-key-file`, and the loadgen
`--tls --tls-ca-file`. The hold run's "server RSS per connection" is then the RSS per idle
TLS connection of each server, from the same run, with the ratio; TLS handshake rows follow.

Above 19,000 connections one Mosquitto process runs out of descriptors (RLIMIT_NOFILE
20,000), so the Mosquitto hold runs ceil(N / 19,000) Mosquitto processes on their own
ports (--mosquitto-instances overrides), each loaded by its own loadgen with an equal
share of N at the same time; RSS, CPU, connections and keep-alives are summed over the
instances (RSS per connection = summed RSS growth / summed connections), ping RTT p99 is
the worst instance's. The report says how many instances ran (`mosquitto_instances`).
The push run needs one instance (the bridge talks to one broker) and is skipped above it.

Prints a table (metric | pulsegate | peers | ratio, >1 = pulsegate better) and writes every
raw loadgen report, the bridge stats, server log tails and the table as one JSON file:
`<target>/bench-results/side-by-side-<unix time>.json` ($BENCH_RESULTS_DIR overrides the dir).

--runs keepalive (alone): keep-alive CPU against the floor. The same loadgen `hold` (defaults
8,000 devices, --keepalive-s 2, --duration-s 40, no SUBSCRIBE) against, each on a fresh
process and port: the floor (`keepalive_floor --listen`, a minimal io_uring MQTT responder,
built with `cargo build --release --bench keepalive_floor --message-format=json`, or
--no-build --floor-bin PATH), pulsegate --shards 1, pulsegate with its default shards, with
--pulsegate-before-bin PATH the same two with an older binary, and Mosquitto. --repeat K
(default 2) runs the whole set K times interleaved. Table: server | CPU s per 1M keep-alives
(server_cpu_s_steady / keepalives x 1e6, min-max over repeats) | user | system | ratio to
floor | ratio to Mosquitto | keep-alives/s | ping RTT p99. Above 19,000 connections the floor
(one fixed-file table) and pulsegate --shards 1 are skipped with a note; Mosquitto runs as
several processes. JSON: <target>/bench-results/side-by-side-keepalive-<unix time>.json.

Every child runs in its own session and is killed at the end, on Ctrl-C, SIGTERM or any
exception; every run has a deadline. Python 3 standard library only.
"""

import argparse
import atexit
import json
import math
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MOSQUITTO_DEFAULT = "/usr/sbin/mosquitto"
SHARD_CONNECTIONS = 19_000  # connections per pulsegate shard (fd table of ~20,000 - 64)
MOSQUITTO_CONNECTIONS = 19_000  # connections per Mosquitto process (RLIMIT_NOFILE 20,000 less margin)

# --------------------------------------------------------------------------------------
# child process bookkeeping: everything we start is registered and killed by pid
# --------------------------------------------------------------------------------------

_CHILDREN = {}  # pid -> (Popen, kind)


def _register(proc, kind):
    _CHILDREN[proc.pid] = (proc, kind)
    return proc


def _forget(proc):
    _CHILDREN.pop(proc.pid, None)


def _group_members(pgid):
    """Pids whose process group is `pgid` (from /proc/*/stat)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid:
                pids.append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    return pids


def _kill_child(proc, kind, grace_s=5.0):
    """Stops one child we started: SIGINT (loadgen: lets it report) or SIGTERM; after the
    grace, SIGKILL to its own process group (started with start_new_session: pgid == pid,
    which holds the loadgen's workers too). The group is signalled only while the leader is
    unreaped or members remain, so the id cannot have been reused."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGINT if kind == "loadgen" else signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None or _group_members(proc.pid):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    _forget(proc)


def cleanup():
    for pid, (proc, kind) in list(_CHILDREN.items()):
        _kill_child(proc, kind, grace_s=20.0 if kind == "loadgen" else 5.0)


def _on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------


def log(msg):
    print(msg, flush=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_connect(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path, lines=25):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])
    except OSError:
        return ""


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def read_commit():
    git = REPO / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        pass
    return None


def proc_limit_nofile(pid):
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                parts = line.split()
                return {"soft": int(parts[3]), "hard": int(parts[4])}
    except (OSError, ValueError, IndexError):
        pass
    return None


# --------------------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------------------


class Server:
    def __init__(self, name, proc, mqtt_port, http_port, log_path, info, tls_port=None):
        self.name = name
        self.proc = proc
        self.mqtt_port = mqtt_port
        self.http_port = http_port
        self.log_path = log_path
        self.info = info
        self.tls_port = tls_port

    @property
    def target_port(self):
        """Where the devices connect: the TLS listener with --tls, else the plain one."""
        return self.tls_port or self.mqtt_port

    @property
    def pid(self):
        return self.proc.pid


def make_pki(workdir):
    """A CA and a server certificate for localhost / 127.0.0.1 signed by it (EC P-256),
    made with openssl: {"ca", "cert", "key"} paths."""
    openssl = shutil.which("openssl")
    if not openssl:
        sys.exit("side_by_side: --tls needs openssl (apt-get install openssl)")
    d = workdir / "pki"
    d.mkdir(exist_ok=True)
    paths = {"ca": d / "ca.pem", "ca_key": d / "ca.key", "cert": d / "server.pem", "key": d / "server.key"}
    ext = d / "server.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    steps = [
        [openssl, "req", "-x509", *ec, "-keyout", paths["ca_key"], "-out", paths["ca"], "-days", "3",
         "-subj", "/CN=side-by-side test CA"],
        [openssl, "req", *ec, "-keyout", paths["key"], "-out", d / "server.csr", "-subj", "/CN=localhost"],
        [openssl, "x509", "-req", "-in", d / "server.csr", "-CA", paths["ca"], "-CAkey", paths["ca_key"],
         "-CAcreateserial", "-out", paths["cert"], "-days", "3", "-extfile", ext],
    ]
    for cmd in steps:
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True, timeout=60)
    return paths


def start_server(name, args, bins, workdir, connections, shards=None, binary=None, shards_flag=True):
    """Starts one server on free loopback port(s) and waits until it is ready: pulsegate's
    --ready-file, the floor's `keepalive_floor: ready` line, else until it accepts TCP.
    pulsegate only: `binary` replaces bins["pulsegate"] (an older build); shards_flag=False
    passes no --shards (the gateway's own default)."""
    mqtt_port = free_port()
    tls_port = free_port() if args.tls else None
    http_port = None
    log_path = workdir / f"{name}-{mqtt_port}.log"
    info = {}
    preexec = None
    ready_path = None
    ready_line = None
    if name == "floor":
        cmd = [str(bins["floor"]), "--listen", f"127.0.0.1:{mqtt_port}"] + args.floor_arg
        ready_line = "keepalive_floor: ready "
    elif name == "pulsegate":
        http_port = free_port()
        shards = shards or args.shards or max(1, math.ceil(connections / SHARD_CONNECTIONS))
        # A fresh message store per run: a shared one would carry pending pushes (and their
        # retries, RSS and CPU) from one run into the next.
        data_dir = workdir / f"pulsegate-data-{mqtt_port}"
        # Written (atomically) once both listeners are up: JSON with pid, backend, shards,
        # capacity and the bound addresses.
        ready_path = workdir / f"pulsegate-ready-{mqtt_port}.json"
        cmd = [
            str(binary or bins["pulsegate"]),
            "--mqtt-listen", f"127.0.0.1:{mqtt_port}",
            "--http-listen", f"127.0.0.1:{http_port}",
            *(["--shards", str(shards)] if shards_flag else []),
            "--data-dir", str(data_dir),
            "--ready-file", str(ready_path),
        ]
        if tls_port:
            cmd += [
                "--mqtt-tls-listen", f"127.0.0.1:{tls_port}",
                "--tls-cert-file", str(args.pki["cert"]),
                "--tls-key-file", str(args.pki["key"]),
            ]
        cmd += args.pulsegate_arg
        info["shards"] = shards if shards_flag else "default"
    elif name == "mosquitto":
        conf = workdir / f"mosquitto-{mqtt_port}.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listener {mqtt_port} 127.0.0.1",
                    "allow_anonymous true",
                    "max_connections -1",
                    "max_keepalive 65535",
                    "persistence false",
                    # one log line per connect would cost CPU that is not broker work
                    "connection_messages false",
                    "log_type error",
                    "log_type warning",
                    "log_dest stderr",
                ]
                + (
                    # Run as root, Mosquitto would switch to an account that cannot read
                    # the key in this private temp dir.
                    (["user root"] if os.geteuid() == 0 else [])
                    + [f"listener {tls_port} 127.0.0.1", f"certfile {args.pki['cert']}", f"keyfile {args.pki['key']}"]
                    if tls_port else []
                )
            )
            + "\n"
        )
        cmd = [args.mosquitto, "-c", str(conf)]
        preexec = raise_nofile  # mosquitto uses the soft limit it is given
        info["config"] = conf.read_text()
    elif name == "rumqttd":
        # Untested here (rumqttd is not installed on the reference machine); config format of
        # rumqttd >= 0.19 (router + v4/v5 listener tables).
        conf = workdir / f"rumqttd-{mqtt_port}.toml"
        listener = "v5" if args.mqtt_version == 5 else "v4"
        conf.write_text(
            f"""id = 0

[router]
id = 0
max_connections = {connections + 1000}
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[{listener}.1]
name = "{listener}-1"
listen = "127.0.0.1:{mqtt_port}"
next_connection_delay_ms = 0
    [{listener}.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 262144
    max_inflight_count = 100
    dynamic_filters = true
"""
        )
        cmd = [shutil.which("rumqttd") or "rumqttd", "--config", str(conf)]
        preexec = raise_nofile
        info["config"] = conf.read_text()
    else:
        raise ValueError(name)
    info["command"] = cmd
    logf = open(log_path, "wb")
    proc = _register(
        subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
            cwd=workdir,  # whatever a server writes relative to its cwd stays in the temp dir
        ),
        "server",
    )
    logf.close()
    deadline = time.monotonic() + args.server_start_timeout_s
    ports = [p for p in (mqtt_port, http_port, tls_port) if p]
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before listening:\n{tail(log_path)}")
        if ready_line:
            line = next((ln for ln in tail(log_path, 50).splitlines() if ln.startswith(ready_line)), None)
            if line:
                info["ready"] = line
                break
        elif ready_path.exists() if ready_path else all(can_connect(p) for p in ports):
            break
        if time.monotonic() > deadline:
            _kill_child(proc, "server")
            raise RuntimeError(f"{name} did not listen on {ports} within {args.server_start_timeout_s} s:\n{tail(log_path)}")
        time.sleep(0.1)
    if ready_path:
        info["ready"] = json.loads(ready_path.read_text())
    info["nofile"] = proc_limit_nofile(proc.pid)
    return Server(name, proc, mqtt_port, http_port, log_path, info, tls_port)


def stop_server(server):
    """Returns a dict: did it die during the run (a crash), its exit code, log tail."""
    early = server.proc.poll()
    _kill_child(server.proc, "server", grace_s=10.0)
    return {
        "exited_during_run": early is not None,
        "exit_code_during_run": early,
        "log_tail": tail(server.log_path),
        **server.info,
    }


# --------------------------------------------------------------------------------------
# loadgen
# --------------------------------------------------------------------------------------


def run_loadgen(args, bins, workdir, scenario, server, connections, duration_s, http_addr=None, push_start_s=None):
    return finish_loadgen(start_loadgen(args, bins, workdir, scenario, server, connections, duration_s,
                                        http_addr, push_start_s))


def start_loadgen(args, bins, workdir, scenario, server, connections, duration_s, http_addr=None, push_start_s=None,
                  tag="", client_id_prefix=None):
    stem = f"loadgen-{server.name}{tag}-{scenario}-{connections}"
    json_path = workdir / f"{stem}.json"
    out_path = workdir / f"{stem}.out"
    err_path = workdir / f"{stem}.err"
    max_duration_s = duration_s + 60
    cmd = [
        str(bins["loadgen"]), scenario,
        "--target", f"127.0.0.1:{server.target_port}",
        "--connections", str(connections),
        "--duration-s", str(duration_s),
        "--max-duration-s", str(max_duration_s),
        "--keepalive-s", str(args.keepalive_s),
        "--mqtt-version", str(args.mqtt_version),
        "--ramp-per-s", str(args.ramp_per_s),
        "--server-pid", str(server.pid),
        "--json", str(json_path),
    ]
    if args.subscribe:
        cmd += ["--subscribe", "push/{id}", "--subscribe-qos", str(args.push_qos)]
    if scenario == "push":
        cmd += [
            "--http", http_addr,
            "--rate-per-s", str(args.push_rate),
            "--qos", str(args.push_qos),
        ]
        if push_start_s is not None:
            cmd += ["--push-start-s", str(push_start_s)]
    if args.tls:
        cmd += ["--tls", "--tls-ca-file", str(args.pki["ca"]), "--tls-server-name", "localhost"]
    if client_id_prefix:
        cmd += ["--client-id-prefix", client_id_prefix]
    cmd += args.loadgen_arg
    # The loadgen's own stop grace is 15 s + N/5000 s; add margin for report writing.
    deadline_s = max_duration_s + 15 + connections / 5000 + 30
    log(f"  $ {' '.join(cmd)}")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = _register(
            subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True),
            "loadgen",
        )
    return {"proc": proc, "cmd": cmd, "deadline": time.monotonic() + deadline_s, "json_path": json_path,
            "out_path": out_path, "err_path": err_path}


def finish_loadgen(started):
    proc, cmd, json_path = started["proc"], started["cmd"], started["json_path"]
    out_path, err_path = started["out_path"], started["err_path"]
    timed_out = False
    try:
        rc = proc.wait(timeout=max(1.0, started["deadline"] - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_child(proc, "loadgen", grace_s=30.0)
        rc = proc.returncode
    _forget(proc)
    report = None
    if json_path.exists():
        try:
            report = json.loads(json_path.read_text())
        except ValueError as e:
            report = None
            log(f"  ! cannot parse {json_path}: {e}")
    summary = Path(out_path).read_text(errors="replace") if out_path.exists() else ""
    for line in summary.splitlines():
        log(f"    {line}")
    return {
        "command": cmd,
        "exit_code": rc,
        "timed_out": timed_out,
        "report": report,
        "stderr_tail": tail(err_path, 15),
    }


# --------------------------------------------------------------------------------------
# HTTP -> MQTT bridge (hidden `_bridge` mode; a separate process so it has its own GIL)
# --------------------------------------------------------------------------------------


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _mqtt_str(s):
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def _mqtt_frame(first, body):
    return bytes([first]) + _varint(len(body)) + body


def _mqtt_take_frame(buf):
    """(first byte, body) of the first complete frame in buf, consumed; None if incomplete."""
    if len(buf) < 2:
        return None
    n, mult, i = 0, 1, 1
    while True:
        if i >= len(buf):
            return None
        b = buf[i]
        n += (b & 0x7F) * mult
        mult *= 128
        i += 1
        if not b & 0x80:
            break
        if i > 4:
            raise ValueError("bad remaining length")
    if len(buf) < i + n:
        return None
    first, body = buf[0], bytes(buf[i : i + n])
    del buf[: i + n]
    return first, body


_TS = re.compile(rb"lgts=\d+")


def bridge_main(argv):
    ap = argparse.ArgumentParser(prog="side_by_side.py _bridge")
    ap.add_argument("--mqtt-port", type=int, required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--stats", required=True)
    ap.add_argument("--stamp", choices=["publish", "request"], default="publish")
    ap.add_argument("--max-s", type=float, required=True, help="exit by itself after this long")
    a = ap.parse_args(argv)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("now", True))
    signal.signal(signal.SIGINT, lambda *_: stop.__setitem__("now", True))
    started = time.monotonic()
    st = {
        "http_requests": 0, "http_bad_requests": 0, "published": 0, "pubacks": 0,
        "mqtt_other_packets": 0, "errors": [], "stamp": a.stamp,
    }

    mq = socket.create_connection(("127.0.0.1", a.mqtt_port), timeout=10)
    mq.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    keepalive_s = 60
    body = _mqtt_str("MQTT") + bytes([4, 0x02]) + keepalive_s.to_bytes(2, "big") + _mqtt_str(f"sbs-bridge-{os.getpid()}")
    mq.sendall(_mqtt_frame(0x10, body))
    mq_in = bytearray()
    while True:
        chunk = mq.recv(4096)
        if not chunk:
            raise SystemExit("bridge: broker closed before CONNACK")
        mq_in += chunk
        fr = _mqtt_take_frame(mq_in)
        if fr:
            if fr[0] >> 4 != 2 or len(fr[1]) < 2 or fr[1][1] != 0:
                raise SystemExit(f"bridge: CONNACK refused: {fr!r}")
            break
    mq.setblocking(False)
    mq_out = bytearray()

    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", a.http_port))
    lsock.listen(128)
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, "listen")
    sel.register(mq, selectors.EVENT_READ, "mqtt")
    conns = {}  # fd -> {"sock", "inb", "outb"}
    packet_id = 0
    next_ping = time.monotonic() + keepalive_s / 2

    def flush_mqtt():
        while mq_out:
            try:
                n = mq.send(mq_out)
            except BlockingIOError:
                break
            del mq_out[:n]
        sel.modify(mq, selectors.EVENT_READ | (selectors.EVENT_WRITE if mq_out else 0), "mqtt")

    def publish(device, payload, qos):
        nonlocal packet_id
        if a.stamp == "publish":
            payload = _TS.sub(b"lgts=%d" % (time.time_ns() // 1000), payload, count=1)
        body = _mqtt_str("push/" + device)
        if qos:
            packet_id = packet_id % 65535 + 1
            body += packet_id.to_bytes(2, "big")
        mq_out.extend(_mqtt_frame(0x30 | (qos << 1), body + payload))
        st["published"] += 1
        flush_mqtt()

    def handle_http(c):
        inb = c["inb"]
        while True:
            end = inb.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(inb[:end]).decode("latin-1").split("\r\n")
            clen = 0
            for h in head[1:]:
                k, _, v = h.partition(":")
                if k.strip().lower() == "content-length":
                    clen = int(v.strip())
            total = end + 4 + clen
            if len(inb) < total:
                return
            raw = bytes(inb[end + 4 : total])
            del inb[:total]
            st["http_requests"] += 1
            try:
                req = json.loads(raw)
                publish(str(req["device"]), str(req["payload"]).encode(), int(req.get("qos", 1)))
                resp_body = b'{"id":"%d"}' % st["published"]
                status = b"202 Accepted"
            except (ValueError, KeyError, TypeError) as e:
                st["http_bad_requests"] += 1
                resp_body = json.dumps({"error": str(e)}).encode()
                status = b"400 Bad Request"
            c["outb"] += b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(resp_body) + resp_body

    def close_conn(c):
        sel.unregister(c["sock"])
        c["sock"].close()
        conns.pop(c["fd"], None)

    def flush_conn(c):
        while c["outb"]:
            try:
                n = c["sock"].send(c["outb"])
            except BlockingIOError:
                break
            except OSError:
                close_conn(c)
                return
            del c["outb"][:n]
        sel.modify(c["sock"], selectors.EVENT_READ | (selectors.EVENT_WRITE if c["outb"] else 0), c)

    try:
        while not stop["now"] and time.monotonic() - started < a.max_s:
            for key, mask in sel.select(timeout=0.25):
                tag = key.data
                if tag == "listen":
                    try:
                        s, _ = lsock.accept()
                    except BlockingIOError:
                        continue
                    s.setblocking(False)
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    c = {"sock": s, "fd": s.fileno(), "inb": bytearray(), "outb": bytearray()}
                    conns[c["fd"]] = c
                    sel.register(s, selectors.EVENT_READ, c)
                elif tag == "mqtt":
                    if mask & selectors.EVENT_READ:
                        try:
                            chunk = mq.recv(65536)
                        except BlockingIOError:
                            chunk = None
                        if chunk == b"":
                            st["errors"].append("broker closed the bridge connection")
                            stop["now"] = True
                            break
                        if chunk:
                            mq_in += chunk
                            while (fr := _mqtt_take_frame(mq_in)) is not None:
                                if fr[0] >> 4 == 4:
                                    st["pubacks"] += 1
                                elif fr[0] >> 4 != 13:
                                    st["mqtt_other_packets"] += 1
                    if mask & selectors.EVENT_WRITE:
                        flush_mqtt()
                else:
                    c = tag
                    if mask & selectors.EVENT_READ:
                        try:
                            chunk = c["sock"].recv(65536)
                        except BlockingIOError:
                            chunk = None
                        except OSError:
                            chunk = b""
                        if chunk == b"":
                            close_conn(c)
                            continue
                        if chunk:
                            c["inb"] += chunk
                            handle_http(c)
                    if c["fd"] in conns:
                        flush_conn(c)
            if time.monotonic() >= next_ping:
                next_ping = time.monotonic() + keepalive_s / 2
                mq_out.extend(b"\xc0\x00")
                flush_mqtt()
    except Exception as e:  # noqa: BLE001 - reported in the stats file
        st["errors"].append(f"{type(e).__name__}: {e}")
    finally:
        st["ran_s"] = round(time.monotonic() - started, 3)
        Path(a.stats).write_text(json.dumps(st, indent=2) + "\n")
    return 0


def start_bridge(args, workdir, server, max_s):
    http_port = free_port()
    stats = workdir / f"bridge-{server.name}-{http_port}.json"
    log_path = workdir / f"bridge-{server.name}-{http_port}.log"
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "_bridge",
        "--mqtt-port", str(server.mqtt_port), "--http-port", str(http_port),
        "--stats", str(stats), "--stamp", args.bridge_stamp, "--max-s", str(max_s),
    ]
    logf = open(log_path, "wb")
    proc = _register(
        subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True),
        "bridge",
    )
    logf.close()
    deadline = time.monotonic() + 15
    while not can_connect(http_port):
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill_child(proc, "bridge")
            raise RuntimeError(f"bridge did not start:\n{tail(log_path)}")
        time.sleep(0.05)
    return proc, http_port, stats, log_path


def hold_instances(args, bins, workdir, name, n, instances, tag=""):
    """The hold run over several server processes at once: one loadgen per instance
    with an equal share of the devices (distinct client ids), started together."""
    shares = [n // instances + (1 if i < n % instances else 0) for i in range(instances)]
    servers, started, run = [], [], {}
    try:
        for share in shares:
            servers.append(start_server(name, args, bins, workdir, share))
        for i, (srv, share) in enumerate(zip(servers, shares)):
            started.append(start_loadgen(args, bins, workdir, "hold", srv, share, args.duration_s,
                                         tag=f"{tag}-{i}", client_id_prefix=f"lg{i}-"))
        runs = [finish_loadgen(st) for st in started]
    finally:
        run["servers"] = [stop_server(srv) for srv in servers]
    run["instances"] = runs
    run["report"] = combine_reports([r.get("report") for r in runs])
    run["exit_code"] = next((r["exit_code"] for r in runs if r["exit_code"] not in (0, None)), 0)
    run["timed_out"] = any(r["timed_out"] for r in runs)
    run["stderr_tail"] = "\n".join(r["stderr_tail"] for r in runs)
    return run


def stop_bridge(proc, stats, log_path):
    _kill_child(proc, "bridge", grace_s=5.0)
    try:
        st = json.loads(Path(stats).read_text())
    except (OSError, ValueError):
        st = {"errors": ["no stats file"]}
    st["log_tail"] = tail(log_path, 10)
    return st


# --------------------------------------------------------------------------------------
# metrics and table
# --------------------------------------------------------------------------------------


def g(d, *path):
    for k in path:
        if not isinstance(d, dict) or k not in d or d[k] is None:
            return None
        d = d[k]
    return d


def combine_reports(reports):
    """One hold report from several loadgens run at once against several server
    instances: counts and server RSS/CPU summed, RSS per connection = summed RSS growth /
    summed connections, connect rate = summed connections / the slowest instance's time,
    ping RTT p99 and keep-alive peak/mean = the worst instance's."""
    reps = [r for r in reports if r]
    if not reps:
        return None
    if len(reps) == 1 and len(reports) == 1:
        return reps[0]

    def total(key):
        vals = [r.get(key) for r in reps]
        return sum(v for v in vals if v is not None) if any(v is not None for v in vals) else None

    def worst(*path):
        vals = [g(r, *path) for r in reps]
        vals = [v for v in vals if v is not None]
        return max(vals) if vals else None

    out = {k: total(k) for k in ["established", "connections_requested", "connect_attempts", "failed_total",
                                 "reconnects", "pings_sent", "keepalives", "control_messages", "server_cpu_s",
                                 "server_cpu_s_steady", "server_cpu_user_s", "server_cpu_system_s",
                                 "server_cpu_user_s_steady", "server_cpu_system_s_steady", "server_rss_bytes",
                                 "server_rss_bytes_before", "loadgen_rss_bytes"]}
    out["duration_s"] = worst("duration_s")
    out["scenario"] = reps[0].get("scenario")
    out["instances"] = len(reports)
    out["instances_reported"] = len(reps)
    after = worst("established_after_s")
    out["established_after_s"] = after
    out["connect_rate_per_s"] = out["established"] / after if after and out["established"] else None
    out["steady_s"] = min((r["steady_s"] for r in reps if r.get("steady_s") is not None), default=None)
    if out["server_rss_bytes"] is not None and out["server_rss_bytes_before"] is not None and out["established"]:
        out["server_rss_per_conn_bytes"] = (out["server_rss_bytes"] - out["server_rss_bytes_before"]) / out["established"]
    if out["loadgen_rss_bytes"] and out["established"]:
        out["loadgen_rss_per_conn_bytes"] = out["loadgen_rss_bytes"] / out["established"]
    out["ping_rtt_ms"] = {"p99": worst("ping_rtt_ms", "p99")}
    out["keepalive_peak_to_mean"] = worst("keepalive_peak_to_mean")
    for key in ["failed", "closed"]:
        merged = {}
        for r in reps:
            for k, v in (r.get(key) or {}).items():
                merged[k] = merged.get(k, 0) + v
        out[key] = merged
    out["worker_errors"] = [e for r in reps for e in (r.get("worker_errors") or [])]
    tls = [r["tls"] for r in reps if r.get("tls")]
    if tls:
        t = {k: sum(x.get(k) or 0 for x in tls) for k in [
            "handshakes", "handshakes_full", "handshakes_resumed", "errors_total", "full_per_s_peak",
            "resumed_per_s_peak", "handshakes_per_s_peak"]}
        t["handshake_ms"] = {"p99": max((g(x, "handshake_ms", "p99") or 0) for x in tls),
                             "p50": max((g(x, "handshake_ms", "p50") or 0) for x in tls)}
        t["peaks_note"] = "per-second peaks summed over instances run at the same time"
        out["tls"] = t
    return out


def hold_metrics(rep):
    if not rep:
        return {}
    ka = rep.get("keepalives") or 0
    cpu = rep.get("server_cpu_s_steady")
    tls = rep.get("tls") or {}
    return {
        "instances": rep.get("instances", 1),
        "loadgen_rss_per_conn_bytes": rep.get("loadgen_rss_per_conn_bytes"),
        "tls_handshakes": tls.get("handshakes"),
        "tls_full_per_s_peak": tls.get("full_per_s_peak"),
        "tls_handshake_p99_ms": g(tls, "handshake_ms", "p99") if tls else None,
        "tls_errors_total": tls.get("errors_total"),
        "established": rep.get("established"),
        "connections_requested": rep.get("connections_requested"),
        "connect_rate_per_s": rep.get("connect_rate_per_s"),
        "rss_per_conn_bytes": rep.get("server_rss_per_conn_bytes"),
        "cpu_s_per_million_keepalives": (cpu / ka * 1e6) if (cpu is not None and ka > 0) else None,
        "server_cpu_s_steady": cpu,
        "steady_s": rep.get("steady_s"),
        "keepalives": ka,
        "ping_rtt_p99_ms": g(rep, "ping_rtt_ms", "p99"),
        "cpu_pct_of_core_steady": (100 * cpu / rep["steady_s"]) if (cpu is not None and rep.get("steady_s")) else None,
        "control_messages": rep.get("control_messages"),
        "keepalive_peak_to_mean": rep.get("keepalive_peak_to_mean"),
    }


def push_metrics(rep):
    if not rep:
        return {}
    return {
        "push_latency_p99_ms": g(rep, "push_latency_ms", "p99") if g(rep, "push_latency_ms", "count") else None,
        "push_latency_p50_ms": g(rep, "push_latency_ms", "p50") if g(rep, "push_latency_ms", "count") else None,
        "pushes_sent": rep.get("pushes_sent"),
        "pushes_accepted": rep.get("pushes_accepted"),
        "pushes_delivered": rep.get("pushes_delivered"),
    }


# (key, label, unit, higher_is_better, source)
METRICS = [
    ("established", "connections held (peak established)", "", True, "hold"),
    ("connect_rate_per_s", "connect rate", "conn/s", True, "hold"),
    ("rss_per_conn_bytes", "server RSS per connection", "bytes", False, "hold"),
    ("cpu_s_per_million_keepalives", "server CPU per 1M keep-alives", "s", False, "hold"),
    ("ping_rtt_p99_ms", "ping RTT p99", "ms", False, "hold"),
    ("push_latency_p99_ms", "push latency p99", "ms", False, "push"),
]


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 100):
        s = f"{int(v):,}"
    elif abs(v) >= 100:
        s = f"{v:,.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.3f}"
    return f"{s} {unit}".strip()


def ratio(pg, peer, higher_better):
    if not isinstance(pg, (int, float)) or not isinstance(peer, (int, float)) or pg <= 0 or peer <= 0:
        return None
    return pg / peer if higher_better else peer / pg


TLS_METRICS = [
    ("tls_full_per_s_peak", "TLS full handshakes in the busiest second (ramp)", "/s", True, "hold"),
    ("tls_handshake_p99_ms", "TLS handshake p99 (TCP connected -> done)", "ms", False, "hold"),
]


def build_table(results, peers, big, tls=False):
    rows = []
    for key, label, unit, hib, src in METRICS + (TLS_METRICS if tls else []):
        if tls and key == "rss_per_conn_bytes":
            label = "server RSS per idle TLS connection"
        row = {"metric": label, "unit": unit, "better": "higher" if hib else "lower", "values": {}, "ratios": {}}
        for name in ["pulsegate"] + peers:
            m = results.get(name, {}).get(f"{src}_metrics", {})
            row["values"][name] = m.get(key)
        for p in peers:
            row["ratios"][p] = ratio(row["values"]["pulsegate"], row["values"][p], hib)
        row["ratio_definition"] = "pulsegate/peer" if hib else "peer/pulsegate"
        rows.append(row)
    # informational rows (no ratio)
    for key, label, unit, src in [
        ("cpu_pct_of_core_steady", "server CPU after all connected", "% of a core", "hold"),
        ("control_messages", "$pulse control msgs to devices (hold)", "", "hold"),
        ("keepalive_peak_to_mean", "keep-alive peak/mean per second (1 = spread)", "", "hold"),
        ("instances", "server processes in the hold run (RSS/CPU summed)", "", "hold"),
        ("loadgen_rss_per_conn_bytes", "loadgen RSS per connection (its own memory)", "bytes", "hold"),
    ] + ([("tls_handshakes", "TLS handshakes completed (hold)", "", "hold"),
          ("tls_errors_total", "TLS errors (hold)", "", "hold")] if tls else []):
        row = {"metric": label, "unit": unit, "better": None, "values": {}, "ratios": {}}
        for name in ["pulsegate"] + peers:
            row["values"][name] = results.get(name, {}).get(f"{src}_metrics", {}).get(key)
        rows.append(row)
    row = {"metric": "pushes delivered / accepted", "unit": "", "better": None, "values": {}, "ratios": {}}
    for name in ["pulsegate"] + peers:
        m = results.get(name, {}).get("push_metrics", {})
        d, acc = m.get("pushes_delivered"), m.get("pushes_accepted")
        row["values"][name] = f"{d:,} / {acc:,}" if d is not None and acc is not None else None
    rows.append(row)
    if big:
        hm = big.get("hold_metrics", {})
        req = big.get("connections")
        est = hm.get("established")
        row = {
            "metric": f"max connections held, pulsegate-only run at {req:,} ({big.get('shards')} shards)",
            "unit": "", "better": "higher", "values": {"pulsegate": est}, "ratios": {},
            "ratio_definition": "pulsegate held / peer's RLIMIT_NOFILE hard limit (an upper bound for the peer)",
        }
        for p in peers:
            cap = big.get("peer_nofile_hard")
            row["values"][p] = f"< {cap:,} (fd limit)" if cap else None
            row["ratios"][p] = (est / cap) if (est and cap) else None
        rows.append(row)
        for key, label, unit in [
            ("connect_rate_per_s", "connect rate", "conn/s"),
            ("rss_per_conn_bytes", "server RSS per connection", "bytes"),
            ("cpu_s_per_million_keepalives", "server CPU per 1M keep-alives", "s"),
            ("ping_rtt_p99_ms", "ping RTT p99", "ms"),
        ]:
            rows.append({
                "metric": f"  at {req:,}: {label}", "unit": unit, "better": None,
                "values": {"pulsegate": hm.get(key), **{p: None for p in peers}}, "ratios": {},
            })
    return rows


def print_table(rows, peers, n):
    headers = ["metric", "pulsegate"] + peers + [f"ratio vs {p}" for p in peers]
    lines = []
    for r in rows:
        cells = [r["metric"] + (f" [{r['unit']}]" if r["unit"] else "")]
        for name in ["pulsegate"] + peers:
            v = r["values"].get(name)
            cells.append(fmt(v) if v is not None else ("-" if r["better"] is None and name != "pulsegate" else "n/a"))
        for p in peers:
            rv = r["ratios"].get(p)
            if rv is None:
                cells.append("-" if r["better"] is None else "n/a")
            else:
                cells.append((">= " if "upper bound" in r.get("ratio_definition", "") else "") + f"{rv:.2f}x")
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headers)]
    out = []
    out.append(" | ".join(h.ljust(widths[i]) for i, h in enumerate(headers)))
    out.append("-|-".join("-" * w for w in widths))
    for c in lines:
        out.append(" | ".join(c[i].ljust(widths[i]) if i == 0 else c[i].rjust(widths[i]) for i in range(len(c))))
    print(f"\nside by side at {n:,} connections (ratio > 1 = pulsegate better: higher-is-better metrics are "
          "pulsegate/peer, lower-is-better ones peer/pulsegate)")
    print("\n".join(out))
    return "\n".join(out)


def check_run(problems, who, run, expect_n, keepalive_s):
    """Records anything suspicious about one loadgen run."""
    rep = run.get("report")
    if run.get("timed_out"):
        problems.append(f"{who}: loadgen timed out and was killed")
    if not rep:
        problems.append(f"{who}: no loadgen report (exit {run.get('exit_code')}): {run.get('stderr_tail', '')[-400:]}")
        return
    if run.get("exit_code") not in (0, None):
        problems.append(f"{who}: loadgen exit code {run.get('exit_code')}")
    if rep.get("established", 0) < expect_n:
        problems.append(f"{who}: established {rep.get('established')} of {expect_n}")
    if rep.get("failed_total"):
        problems.append(f"{who}: {rep['failed_total']} failed connect attempts {rep.get('failed')}")
    if rep.get("closed"):
        problems.append(f"{who}: established connections lost {rep['closed']} (reconnects {rep.get('reconnects')})")
    if rep.get("worker_errors"):
        problems.append(f"{who}: worker errors {rep['worker_errors']}")
    if (rep.get("tls") or {}).get("errors_total"):
        problems.append(f"{who}: TLS errors {rep['tls'].get('errors')}")
    if rep.get("pings_sent", 0) > rep.get("keepalives", 0) + rep.get("established", 0) * 0.01 + 10:
        problems.append(f"{who}: {rep['pings_sent'] - rep['keepalives']} PINGREQs without PINGRESP")
    steady = rep.get("steady_s") or 0
    # (push runs: a QoS 1 push's PUBACK restarts a device's keep-alive timer, so fewer pings)
    if rep.get("scenario") == "hold" and keepalive_s and steady > 2 * keepalive_s and rep.get("established"):
        expected = rep["established"] * (steady / keepalive_s)
        if rep.get("keepalives", 0) < 0.7 * expected:
            problems.append(f"{who}: only {rep.get('keepalives')} keep-alives, ~{expected:.0f} expected")
    if rep.get("control_messages"):
        problems.append(
            f"{who}: the server sent {rep['control_messages']} $pulse control messages (keep-alive dispersal); each is "
            "a QoS 1 PUBLISH + PUBACK that also restarts the device's keep-alive timer (fewer PINGREQs), so CPU per "
            "keep-alive includes that work"
        )
    if rep.get("scenario") == "push":
        acc, dlv = rep.get("pushes_accepted", 0), rep.get("pushes_delivered", 0)
        if rep.get("pushes_sent", 0) == 0:
            problems.append(f"{who}: no pushes were sent")
        elif dlv < acc * 0.99:
            problems.append(f"{who}: {acc - dlv} of {acc} accepted pushes not delivered")
        elif dlv > acc:
            problems.append(f"{who}: {dlv} pushes delivered for {acc} accepted (duplicates?)")
        if rep.get("http_errors"):
            problems.append(f"{who}: HTTP errors {rep['http_errors']}")


# --------------------------------------------------------------------------------------
# --runs keepalive: keep-alive CPU against the floor
# --------------------------------------------------------------------------------------

FLOOR_CONNECTIONS = 19_000  # one fixed-file table (20,000 slots, capped at RLIMIT_NOFILE) less margin


def build_floor(target):
    """cargo build --release --bench keepalive_floor --message-format=json: the executable
    path from the compiler-artifact line of the keepalive_floor bench target."""
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    cmd = ["cargo", "build", "--release", "--bench", "keepalive_floor", "--message-format=json"]
    log(f"building: {' '.join(cmd)}")
    out = subprocess.run(cmd, cwd=REPO, env=env, check=True, timeout=1800, stdout=subprocess.PIPE, text=True).stdout
    exe = None
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "keepalive_floor" \
                and msg.get("executable"):
            exe = msg["executable"]
    if not exe:
        sys.exit("side_by_side: cargo reported no keepalive_floor executable")
    return Path(exe)


def floor_counters(log_tail):
    """The floor's exit line (`keepalive_floor: stopping; k=v ...`) as a dict of ints."""
    for line in reversed(log_tail.splitlines()):
        if line.startswith("keepalive_floor: stopping;"):
            return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
    return None


def ka_run_metrics(rep):
    """One hold report's keep-alive figures: CPU per 1M keep-alives (total, user, system)
    = server_cpu_*_steady / keepalives x 1e6, keep-alives/s = keepalives / hold duration."""
    if not rep:
        return {}
    ka = rep.get("keepalives") or 0

    def per_m(key):
        v = rep.get(key)
        return v / ka * 1e6 if (v is not None and ka > 0) else None

    dur = rep.get("duration_s")
    return {
        "established": rep.get("established"),
        "keepalives": ka,
        "pings_sent": rep.get("pings_sent"),
        "control_messages": rep.get("control_messages"),
        "steady_s": rep.get("steady_s"),
        "server_cpu_s_steady": rep.get("server_cpu_s_steady"),
        "server_cpu_user_s_steady": rep.get("server_cpu_user_s_steady"),
        "server_cpu_system_s_steady": rep.get("server_cpu_system_s_steady"),
        "cpu_s_per_million": per_m("server_cpu_s_steady"),
        "user_s_per_million": per_m("server_cpu_user_s_steady"),
        "system_s_per_million": per_m("server_cpu_system_s_steady"),
        "keepalives_per_s": ka / dur if (dur and ka) else None,
        "ping_rtt_p99_ms": g(rep, "ping_rtt_ms", "p99"),
    }


def _spread(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {"min": min(vals), "max": max(vals), "mean": sum(vals) / len(vals), "n": len(vals)}


def ka_summary(runs):
    """Per server over its repeats: CPU columns as min / max / mean, keep-alives/s mean,
    ping p99 the worst repeat's."""
    ms = [r["metrics"] for r in runs if r.get("metrics")]
    out = {k: _spread([m.get(k) for m in ms]) for k in
           ["cpu_s_per_million", "user_s_per_million", "system_s_per_million", "keepalives_per_s",
            "ping_rtt_p99_ms", "keepalives", "control_messages"]}
    return out


def _mm(sp, digits=2):
    if not sp:
        return "n/a"
    if sp["n"] == 1 or round(sp["min"], digits) == round(sp["max"], digits):
        return f"{sp['min']:.{digits}f}"
    return f"{sp['min']:.{digits}f}-{sp['max']:.{digits}f}"


def ka_table(variants, summaries):
    """Rows: server | CPU s per 1M keep-alives (min-max) | user | system | ratio to floor |
    ratio to Mosquitto | keep-alives/s | ping RTT p99. Ratios are of the means (> 1 = more CPU
    than the floor / than Mosquitto)."""
    mean = lambda key: (summaries.get(key, {}).get("cpu_s_per_million") or {}).get("mean")  # noqa: E731
    floor, mosq = mean("floor"), mean("mosquitto")
    headers = ["server", "CPU s per 1M keep-alives", "user", "system", "ratio to floor", "ratio to Mosquitto",
               "keep-alives/s", "ping RTT p99 ms"]
    rows = []
    for v in variants:
        sm = summaries.get(v["key"])
        if sm is None:
            rows.append({"key": v["key"], "cells": [v["label"], "skipped"] + ["-"] * 6})
            continue
        m = (sm.get("cpu_s_per_million") or {}).get("mean")
        rf = m / floor if (m and floor) else None
        rm = m / mosq if (m and mosq) else None
        kps = (sm.get("keepalives_per_s") or {}).get("mean")
        p99 = (sm.get("ping_rtt_p99_ms") or {}).get("max")
        rows.append({
            "key": v["key"],
            "cpu_s_per_million_mean": m,
            "ratio_to_floor": rf,
            "ratio_to_mosquitto": rm,
            "cells": [v["label"], _mm(sm.get("cpu_s_per_million")), _mm(sm.get("user_s_per_million")),
                      _mm(sm.get("system_s_per_million")), f"{rf:.2f}x" if rf else "n/a",
                      f"{rm:.2f}x" if rm else "n/a", f"{kps:,.0f}" if kps else "n/a",
                      f"{p99:.2f}" if p99 is not None else "n/a"],
        })
    widths = [max(len(h), *(len(r["cells"][i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [" | ".join(h.ljust(widths[i]) for i, h in enumerate(headers)), "-|-".join("-" * w for w in widths)]
    for r in rows:
        lines.append(" | ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r["cells"])))
    return rows, "\n".join(lines)


def uptime_text():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"loadavg {os.getloadavg()}"


def keepalive_main(args):
    """--runs keepalive: the same loadgen hold against each server, each on a fresh process
    and port, the whole set `--repeat` times interleaved; one table of keep-alive CPU."""
    unix = int(time.time())
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, _on_sigterm)
    raise_nofile()
    if args.tls:
        sys.exit("side_by_side: --runs keepalive is plain TCP (the floor has no TLS)")
    if args.repeat < 1:
        sys.exit("side_by_side: --repeat must be at least 1")
    target = Path(args.target_dir or os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not target.is_absolute():
        target = REPO / target
    results_dir = Path(os.environ.get("BENCH_RESULTS_DIR") or target / "bench-results")
    out_path = Path(args.output) if args.output else results_dir / f"side-by-side-keepalive-{unix}.json"
    n = args.connections
    load_before = uptime_text()
    log(f"uptime before: {load_before}")

    # Absolute: servers run with cwd = the temp dir.
    floor_bin = Path(args.floor_bin).resolve() if args.floor_bin else None
    if not args.no_build:
        env = dict(os.environ, CARGO_TARGET_DIR=str(target))
        log(f"building: cargo build --release --workspace (CARGO_TARGET_DIR={target})")
        subprocess.run(["cargo", "build", "--release", "--workspace"], cwd=REPO, env=env, check=True, timeout=1800)
        if not floor_bin:
            floor_bin = build_floor(target)
    elif not floor_bin:
        sys.exit("side_by_side: --no-build needs --floor-bin PATH (the keepalive_floor executable)")
    bins = {"pulsegate": target / "release" / "pulsegate", "loadgen": target / "release" / "pulsegate-loadgen",
            "floor": floor_bin}
    before = Path(args.pulsegate_before_bin).resolve() if args.pulsegate_before_bin else None
    for b in list(bins.values()) + ([before] if before else []):
        if not b.exists():
            sys.exit(f"side_by_side: {b} not found (build first or drop --no-build)")
    args.pki = None

    problems = []
    notes = []
    cores = os.cpu_count() or 1
    variants = [
        {"key": "floor", "label": "floor (keepalive_floor)", "server": "floor"},
        {"key": "pg1", "label": "pulsegate, 1 shard", "server": "pulsegate", "shards": 1},
        {"key": "pgdef", "label": "pulsegate, default shards", "server": "pulsegate", "shards": None},
    ]
    if before:
        variants += [
            {"key": "pg1_before", "label": "pulsegate before, 1 shard", "server": "pulsegate", "shards": 1,
             "binary": before},
            {"key": "pgdef_before", "label": "pulsegate before, default shards", "server": "pulsegate",
             "shards": None, "binary": before},
        ]
    if Path(args.mosquitto).exists():
        variants.append({"key": "mosquitto", "label": "Mosquitto", "server": "mosquitto"})
    else:
        notes.append(f"Mosquitto not found at {args.mosquitto}: skipped (apt-get install -y mosquitto)")
    mosq_instances = args.mosquitto_instances or max(1, math.ceil(n / MOSQUITTO_CONNECTIONS))
    runnable = []
    for v in variants:
        if v["key"] == "floor" and n > FLOOR_CONNECTIONS:
            notes.append(f"floor skipped: {n:,} connections > {FLOOR_CONNECTIONS:,} (one fixed-file table; the floor "
                         "is one ring and is not run as several processes)")
        elif v.get("shards") == 1 and n > SHARD_CONNECTIONS:
            notes.append(f"{v['label']} skipped: {n:,} connections > one shard's {SHARD_CONNECTIONS:,}")
        elif v["server"] == "pulsegate" and v.get("shards") is None and n > cores * SHARD_CONNECTIONS:
            notes.append(f"{v['label']} skipped: {n:,} connections > {cores} default shards x {SHARD_CONNECTIONS:,}")
        else:
            runnable.append(v)
    if any(v["key"] == "mosquitto" for v in runnable) and mosq_instances > 1:
        notes.append(f"Mosquitto runs as {mosq_instances} processes ({n:,} connections > {MOSQUITTO_CONNECTIONS:,} "
                     "per process, its fd limit); CPU and keep-alives are summed over them")
    est_s = len(runnable) * args.repeat * (args.duration_s + 15 + n / 5000 + args.cooldown_s)
    log(f"keepalive: {', '.join(v['label'] for v in runnable)}; x{args.repeat} interleaved; {n:,} connections, "
        f"keep-alive {args.keepalive_s} s, hold {args.duration_s:g} s, subscribe {args.subscribe}; "
        f"roughly {est_s / 60:.0f} min")

    workdir = Path(tempfile.mkdtemp(prefix="pulsegate-sbs-ka-"))
    runs = {v["key"]: [] for v in runnable}
    try:
        for rep in range(args.repeat):
            for v in runnable:
                tag = f"-{v['key']}-r{rep}"
                log(f"\n== [{rep + 1}/{args.repeat}] {v['label']}: hold {n:,} connections for {args.duration_s:g} s")
                run = {"repeat": rep}
                if v["server"] == "mosquitto" and mosq_instances > 1:
                    run.update(hold_instances(args, bins, workdir, "mosquitto", n, mosq_instances, tag=tag))
                    servers_info = run["servers"]
                else:
                    srv = start_server(v["server"], args, bins, workdir, n, shards=v.get("shards"),
                                       binary=v.get("binary"), shards_flag=v.get("shards") is not None)
                    try:
                        run.update(finish_loadgen(start_loadgen(args, bins, workdir, "hold", srv, n,
                                                                args.duration_s, tag=tag)))
                    finally:
                        run["server"] = stop_server(srv)
                    servers_info = [run["server"]]
                for i, sv in enumerate(servers_info):
                    if sv["exited_during_run"]:
                        problems.append(f"{v['label']} #{rep + 1}: server{f' {i}' if len(servers_info) > 1 else ''} "
                                        f"exited during the run (code {sv['exit_code_during_run']})")
                check_run(problems, f"{v['label']} #{rep + 1}", run, n, args.keepalive_s)
                run["metrics"] = ka_run_metrics(run.get("report"))
                if v["server"] == "floor":
                    run["floor_counters"] = floor_counters(run["server"].get("log_tail", ""))
                if v["server"] == "pulsegate":
                    ready = run["server"].get("ready") or {}
                    run["shards_running"] = ready.get("shards")
                m = run["metrics"]
                if m.get("cpu_s_per_million") is not None:
                    log(f"  -> {m['cpu_s_per_million']:.3f} CPU s per 1M keep-alives (user "
                        f"{m['user_s_per_million'] or 0:.3f}, system {m['system_s_per_million'] or 0:.3f}); "
                        f"{m['keepalives']:,} keep-alives, {m.get('control_messages') or 0:,} $pulse messages")
                runs[v["key"]].append(run)
                time.sleep(args.cooldown_s)
    except KeyboardInterrupt:
        problems.append("interrupted (Ctrl-C); partial results")
        log("\ninterrupted; stopping every child process")
    finally:
        cleanup()

    summaries = {k: ka_summary(rs) for k, rs in runs.items() if rs}
    rows, text = ka_table(variants, summaries)
    load_after = uptime_text()
    print(f"\nkeep-alive CPU at {n:,} connections, keep-alive {args.keepalive_s} s, hold {args.duration_s:g} s, "
          f"{args.repeat} repeat(s) interleaved (CPU: min-max over repeats of server_cpu_s_steady / keepalives "
          "x 1e6; ratios of the means, > 1 = more CPU per keep-alive; ping p99: worst repeat)")
    print(text)
    # What the counts say: the same client should give every server the same keep-alives.
    for v in runnable:
        for r in runs.get(v["key"], []):
            m = r.get("metrics") or {}
            extra = ""
            fc = r.get("floor_counters")
            if fc:
                extra = f"; floor counted {fc.get('pingreqs', 0):,} PINGREQs, split_dropped {fc.get('split_dropped', 0)}"
            if r.get("shards_running") is not None:
                extra += f"; shards {r['shards_running']}"
            notes.append(f"{v['label']} #{r['repeat'] + 1}: {m.get('keepalives') or 0:,} keep-alives answered of "
                         f"{m.get('pings_sent') or 0:,} PINGREQs sent, {m.get('control_messages') or 0:,} $pulse "
                         f"messages, established {m.get('established') or 0:,}, steady {m.get('steady_s') or 0:.1f} s"
                         + extra)
    print(f"\nuptime before: {load_before}\nuptime after:  {load_after}")
    if notes:
        print("\nnotes:")
        for x in notes:
            print(f"  - {x}")
    if problems:
        print("\nproblems / warnings:")
        for x in problems:
            print(f"  - {x}")
    report = {
        "bench": "side-by-side-keepalive",
        "unix_time_s": unix,
        "commit": read_commit(),
        "host": {"cpus": cores, "kernel": os.uname().release, "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
                 "uptime_before": load_before, "uptime_after": load_after},
        "config": {k: v for k, v in vars(args).items()},
        "binaries": {k: str(v) for k, v in bins.items()} | ({"pulsegate_before": str(before)} if before else {}),
        "metric_definitions": {
            "cpu_s_per_million": "loadgen server_cpu_s_steady / keepalives * 1e6 (server utime+stime from all "
                                 "connected to the end of the hold, per million answered PINGREQs)",
            "user_s_per_million": "server_cpu_user_s_steady / keepalives * 1e6 (utime)",
            "system_s_per_million": "server_cpu_system_s_steady / keepalives * 1e6 (stime)",
            "keepalives_per_s": "keepalives / duration_s (the whole hold, ramp included)",
            "ping_rtt_p99_ms": "loadgen ping_rtt_ms.p99; the table shows the worst repeat",
            "ratio_to_floor": "mean cpu_s_per_million / the floor's mean",
            "ratio_to_mosquitto": "mean cpu_s_per_million / Mosquitto's mean",
        },
        "variants": [{k: (str(x) if isinstance(x, Path) else x) for k, x in v.items()} for v in variants],
        "table": [{k: x for k, x in r.items() if k != "cells"} | {"cells": r["cells"]} for r in rows],
        "table_text": text,
        "summaries": summaries,
        "runs": runs,
        "notes": notes,
        "problems": problems,
        "workdir": str(workdir) if args.keep_logs else None,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nresults: {out_path}")
    if not args.keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs: {workdir}")
    return 0


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="pulsegate vs Mosquitto (and rumqttd) side by side, driven by pulsegate-loadgen.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--connections", type=int, default=None,
                    help="devices per server (default 18,000; --runs keepalive: 8,000); above 19,000 Mosquitto "
                         "runs as several processes")
    ap.add_argument("--duration-s", type=float, default=None,
                    help="length of each hold run, ramp included (default 60; --runs keepalive: 40)")
    ap.add_argument("--keepalive-s", type=int, default=None,
                    help="MQTT keep-alive of the devices (default 10; --runs keepalive: 2)")
    ap.add_argument("--mqtt-version", type=int, choices=[4, 5], default=4)
    ap.add_argument("--ramp-per-s", type=float, default=20_000.0, help="loadgen connect attempts per second")
    ap.add_argument("--push-rate", type=float, default=200.0, help="pushes per second in the push run")
    ap.add_argument("--push-qos", type=int, choices=[0, 1], default=1)
    ap.add_argument("--push-duration-s", type=float, default=None, help="length of each push run (default: min(duration, 30))")
    ap.add_argument("--pulsegate-connections", type=int, default=0, help="also a pulsegate-only hold at this many devices (0 = skip)")
    ap.add_argument("--shards", type=int, default=0, help="pulsegate shards (default ceil(N / 19000) per run)")
    ap.add_argument("--servers", default="auto", help="comma list of pulsegate,mosquitto,rumqttd (auto: those present)")
    ap.add_argument("--runs", default="hold,push",
                    help="which runs per server: hold, push or both; or keepalive alone (the floor, pulsegate with "
                         "1 and default shards, Mosquitto: keep-alive CPU against the floor)")
    ap.add_argument("--no-subscribe", dest="subscribe", action="store_false", default=None,
                    help="devices do not SUBSCRIBE (implies no broker push); the default but for --runs keepalive")
    ap.add_argument("--subscribe", dest="subscribe", action="store_true", default=None,
                    help="devices SUBSCRIBE to push/{id} (the default but for --runs keepalive)")
    ap.add_argument("--repeat", type=int, default=2,
                    help="--runs keepalive: run the whole set of servers this many times, interleaved")
    ap.add_argument("--floor-bin", default=None,
                    help="--runs keepalive: the keepalive_floor executable (needed with --no-build)")
    ap.add_argument("--floor-arg", action="append", default=[],
                    help="--runs keepalive: extra keepalive_floor argument (repeatable), e.g. --floor-arg=--cqe-skip "
                         "--floor-arg=false")
    ap.add_argument("--pulsegate-before-bin", default=None,
                    help="--runs keepalive: an older pulsegate binary, run as two more rows (1 shard, default "
                         "shards) with the same client in the same command")
    ap.add_argument("--bridge-stamp", choices=["publish", "request"], default="publish",
                    help="broker push latency from the bridge's PUBLISH (publish) or from the loadgen's HTTP request (request)")
    ap.add_argument("--mosquitto", default=MOSQUITTO_DEFAULT)
    ap.add_argument("--mosquitto-instances", type=int, default=0,
                    help=f"Mosquitto processes for the hold run (0 = ceil(N / {MOSQUITTO_CONNECTIONS:,}): one holds "
                         "< 20,000 fds); RSS/CPU are summed over them")
    ap.add_argument("--tls", action="store_true", help="devices connect over TLS (certificates made with openssl)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--target-dir", default=None, help="cargo target dir (default $CARGO_TARGET_DIR or ./target)")
    ap.add_argument("--cooldown-s", type=float, default=3.0, help="pause between runs")
    ap.add_argument("--server-start-timeout-s", type=float, default=20.0)
    ap.add_argument("--pulsegate-arg", action="append", default=[], help="extra pulsegate argument (repeatable)")
    ap.add_argument("--loadgen-arg", action="append", default=[], help="extra loadgen argument (repeatable)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the temp dir with server/loadgen logs")
    ap.add_argument("--output", default=None, help="JSON path (default <target>/bench-results/side-by-side-<unix>.json)")
    args = ap.parse_args(argv)
    keepalive = "keepalive" in {r.strip() for r in args.runs.split(",")}
    for key, dflt, ka_dflt in [("connections", 18_000, 8_000), ("duration_s", 60.0, 40.0), ("keepalive_s", 10, 2),
                               ("subscribe", True, False)]:
        if getattr(args, key) is None:
            setattr(args, key, ka_dflt if keepalive else dflt)
    return args


def main(argv):
    args = parse_args(argv)
    if {r.strip() for r in args.runs.split(",") if r.strip()} == {"keepalive"}:
        return keepalive_main(args)
    unix = int(time.time())
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, _on_sigterm)
    raise_nofile()
    target = Path(args.target_dir or os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not target.is_absolute():
        target = REPO / target
    results_dir = Path(os.environ.get("BENCH_RESULTS_DIR") or target / "bench-results")
    out_path = Path(args.output) if args.output else results_dir / f"side-by-side-{unix}.json"
    push_duration_s = args.push_duration_s or min(args.duration_s, 30.0)
    n = args.connections

    if not args.no_build:
        env = dict(os.environ, CARGO_TARGET_DIR=str(target))
        log(f"building: cargo build --release --workspace (CARGO_TARGET_DIR={target})")
        subprocess.run(["cargo", "build", "--release", "--workspace"], cwd=REPO, env=env, check=True, timeout=1800)
    bins = {"pulsegate": target / "release" / "pulsegate", "loadgen": target / "release" / "pulsegate-loadgen"}
    for k, b in bins.items():
        if not b.exists():
            sys.exit(f"side_by_side: {b} not found (build first or drop --no-build)")

    problems = []
    if args.servers == "auto":
        servers = ["pulsegate"]
        if Path(args.mosquitto).exists():
            servers.append("mosquitto")
        else:
            problems.append(f"mosquitto not found at {args.mosquitto}; skipped")
        if shutil.which("rumqttd"):
            servers.append("rumqttd")
    else:
        servers = [s.strip() for s in args.servers.split(",") if s.strip()]
        # An explicit list without pulsegate runs the peers alone (its column is n/a).
    peers = [s for s in servers if s != "pulsegate"]

    runs = {r.strip() for r in args.runs.split(",") if r.strip()}
    if not runs <= {"hold", "push"}:
        sys.exit("side_by_side: --runs takes hold, push or hold,push, or keepalive alone")
    runs_per = len(runs)
    est_s = len(servers) * runs_per * (max(args.duration_s, push_duration_s) + 15 + n / 5000 + args.cooldown_s)
    if args.pulsegate_connections:
        est_s += args.duration_s + 15 + args.pulsegate_connections / 5000
    log(f"servers: {', '.join(servers)}; {n:,} connections, keep-alive {args.keepalive_s} s, "
        f"hold {args.duration_s:g} s, push {push_duration_s:g} s at {args.push_rate:g}/s; roughly {est_s / 60:.0f} min")

    workdir = Path(tempfile.mkdtemp(prefix="pulsegate-sbs-"))
    args.pki = make_pki(workdir) if args.tls else None
    mosq_instances = args.mosquitto_instances or max(1, math.ceil(n / MOSQUITTO_CONNECTIONS))
    results = {}
    big = None
    nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    try:
        for name in servers:
            res = results.setdefault(name, {})
            version = None
            if name == "mosquitto":
                version = subprocess.run([args.mosquitto, "-h"], capture_output=True, text=True, timeout=10).stdout.splitlines()[:1]
            res["version"] = version[0] if version else None
            # 1. hold
            if "hold" in runs and name == "mosquitto" and mosq_instances > 1:
                log(f"\n== {name}: hold {n:,} connections over {mosq_instances} Mosquitto processes for "
                    f"{args.duration_s:g} s{' (TLS)' if args.tls else ''}")
                run = hold_instances(args, bins, workdir, name, n, mosq_instances)
                for i, sv in enumerate(run["servers"]):
                    if sv["exited_during_run"]:
                        problems.append(f"{name}#{i}: server exited during the hold run (code {sv['exit_code_during_run']})")
                check_run(problems, f"{name} hold", run, n, args.keepalive_s)
                res["hold"] = run
                res["hold_metrics"] = hold_metrics(run.get("report"))
                time.sleep(args.cooldown_s)
            elif "hold" in runs:
                log(f"\n== {name}: hold {n:,} connections for {args.duration_s:g} s{' (TLS)' if args.tls else ''}")
                srv = start_server(name, args, bins, workdir, n)
                run = {}
                try:
                    run.update(run_loadgen(args, bins, workdir, "hold", srv, n, args.duration_s))
                finally:
                    run["server"] = stop_server(srv)
                if run["server"]["exited_during_run"]:
                    problems.append(f"{name}: server exited during the hold run (code {run['server']['exit_code_during_run']})")
                check_run(problems, f"{name} hold", run, n, args.keepalive_s)
                res["hold"] = run
                res["hold_metrics"] = hold_metrics(run.get("report"))
                time.sleep(args.cooldown_s)
            # 2. push
            if "push" not in runs:
                continue
            if name != "pulsegate" and not args.subscribe:
                res["push_metrics"] = {}
                continue
            if name == "mosquitto" and mosq_instances > 1:
                problems.append(f"mosquitto: push run skipped ({mosq_instances} instances; the bridge talks to one broker)")
                res["push_metrics"] = {}
                continue
            log(f"\n== {name}: push at {args.push_rate:g}/s to {n:,} connections for {push_duration_s:g} s")
            srv = start_server(name, args, bins, workdir, n)
            bridge = None
            run = {}
            try:
                if name == "pulsegate":
                    http_addr = f"127.0.0.1:{srv.http_port}"
                else:
                    bridge = start_bridge(args, workdir, srv, push_duration_s + 200)
                    http_addr = f"127.0.0.1:{bridge[1]}"
                # Push from a fixed time (ramp + margin) even if a few devices never connect.
                push_start = min(push_duration_s / 2, n / args.ramp_per_s + 5)
                run.update(run_loadgen(args, bins, workdir, "push", srv, n, push_duration_s, http_addr, push_start))
            finally:
                if bridge:
                    res["bridge"] = stop_bridge(bridge[0], bridge[2], bridge[3])
                run_srv = stop_server(srv)
            run["server"] = run_srv
            if run_srv["exited_during_run"]:
                problems.append(f"{name}: server exited during the push run (code {run_srv['exit_code_during_run']})")
            if res.get("bridge", {}).get("errors"):
                problems.append(f"{name}: bridge errors {res['bridge']['errors']}")
            check_run(problems, f"{name} push", run, n, args.keepalive_s)
            res["push"] = run
            res["push_metrics"] = push_metrics(run.get("report"))
            time.sleep(args.cooldown_s)

        if args.pulsegate_connections:
            m = args.pulsegate_connections
            shards = args.shards or max(1, math.ceil(m / SHARD_CONNECTIONS))
            log(f"\n== pulsegate alone: hold {m:,} connections ({shards} shards) for {args.duration_s:g} s")
            srv = start_server("pulsegate", args, bins, workdir, m, shards=shards)
            run = {}
            try:
                run.update(run_loadgen(args, bins, workdir, "hold", srv, m, args.duration_s))
            finally:
                run["server"] = stop_server(srv)
            if run["server"]["exited_during_run"]:
                problems.append(f"pulsegate@{m}: server exited during the run (code {run['server']['exit_code_during_run']})")
            check_run(problems, f"pulsegate hold {m:,}", run, m, args.keepalive_s)
            big = {
                "connections": m, "shards": shards, "hold": run, "hold_metrics": hold_metrics(run.get("report")),
                "peer_nofile_hard": nofile_hard,
            }
    except KeyboardInterrupt:
        problems.append("interrupted (Ctrl-C); partial results")
        log("\ninterrupted; stopping every child process")
    finally:
        cleanup()

    rows = build_table(results, peers, big, tls=args.tls)
    text = print_table(rows, peers, n)
    if problems:
        print("\nproblems / warnings:")
        for p in problems:
            print(f"  - {p}")
    report = {
        "bench": "side-by-side",
        "unix_time_s": unix,
        "commit": read_commit(),
        "host": {"cpus": os.cpu_count(), "kernel": os.uname().release, "nofile_hard": nofile_hard,
                 "loadavg_at_end": os.getloadavg()},
        "config": {k: v for k, v in vars(args).items()} | {"push_duration_s": push_duration_s},
        "metric_definitions": {
            "established": "loadgen `established`: peak devices connected at once (hold run)",
            "connect_rate_per_s": "loadgen `connect_rate_per_s` = established / established_after_s",
            "rss_per_conn_bytes": "loadgen `server_rss_per_conn_bytes` = (VmRSS at end of hold - VmRSS before) / established; "
                                  "with --tls the connections are TLS (idle but for keep-alives); with several Mosquitto "
                                  "processes: summed VmRSS growth / summed established",
            "mosquitto_instances": f"{mosq_instances} Mosquitto process(es) in the hold run"
                                   + (" (RSS, CPU, connections and keep-alives summed; ping p99 = worst instance)"
                                      if mosq_instances > 1 else ""),
            "tls": "--tls: devices use TLS (rustls client, resumption on; first connects are full handshakes)"
                   if args.tls else "plain TCP",
            "cpu_s_per_million_keepalives": "loadgen server_cpu_s_steady / keepalives * 1e6 (server utime+stime from all-connected to end of hold)",
            "ping_rtt_p99_ms": "loadgen ping_rtt_ms.p99 (PINGREQ -> PINGRESP, hold run)",
            "push_latency_p99_ms": "loadgen push_latency_ms.p99 (push run; device receive time - lgts stamp)",
        },
        "table": rows,
        "table_text": text,
        "results": results,
        "pulsegate_max": big,
        "mosquitto_instances": mosq_instances,
        "problems": problems,
        "workdir": str(workdir) if args.keep_logs else None,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nresults: {out_path}")
    if not args.keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs: {workdir}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_bridge":
        sys.exit(bridge_main(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
