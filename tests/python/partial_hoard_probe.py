#!/usr/bin/env python3
"""Probe (issue 14, partial packets): N devices CONNECT with keep-alive 0, then send a
PUBLISH announcing 262,000 bytes and all but its last byte. Prints the gateway's RSS
growth per hoarder and how many hoarders are still held after HOLD_S seconds.
Usage: partial_hoard_probe.py BINARY N HOLD_S [extra gateway flags...]"""
import json, os, socket, subprocess, sys, tempfile, time

binary, n, hold_s, extra = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
tmp = tempfile.mkdtemp(prefix="pg-probe-")
ready = os.path.join(tmp, "ready.json")
gw = subprocess.Popen([binary, "--ready-file", ready, "--mqtt-listen", "127.0.0.1:0",
                       "--http-listen", "127.0.0.1:0", "--data-dir", os.path.join(tmp, "data"),
                       "--shards", "2", "--pin-cpus", "false", *extra],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(300):
    if os.path.exists(ready):
        break
    time.sleep(0.05)
info = json.load(open(ready))
host, port = info["mqtt"].rsplit(":", 1)

def rss_kb():
    for line in open(f"/proc/{gw.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def varint(n):
    out = bytearray()
    while True:
        b = n % 128; n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)

def connect_packet(cid):
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid
    return b"\x10" + varint(len(body)) + body

TOTAL = 262_000
topic = b"t"
rem = TOTAL - 1 - 3  # the whole packet is TOTAL bytes: header byte + 3-byte varint + rem
hdr = b"\x30" + varint(rem) + len(topic).to_bytes(2, "big") + topic
publish_all_but_one = hdr + b"x" * (TOTAL - len(hdr) - 1)

base = rss_kb()
socks = []
for i in range(n):
    s = socket.create_connection((host, int(port)))
    s.sendall(connect_packet(f"hoard{i}".encode()))
    s.settimeout(3)
    s.recv(4)  # CONNACK
    s.sendall(publish_all_but_one)
    socks.append(s)
time.sleep(1.0)
peak = rss_kb()
t0 = time.time()
while time.time() - t0 < hold_s:
    time.sleep(0.5)
open_count = 0
for s in socks:
    s.setblocking(False)
    try:
        d = s.recv(1 << 16)
        if d == b"":
            continue
        open_count += 1
    except BlockingIOError:
        open_count += 1
    except OSError:
        pass
end = rss_kb()
print(f"hoarders={n} rss_base_kb={base} rss_after_send_kb={peak} "
      f"growth_per_hoarder_kb={(peak - base) / n:.1f} still_open_after_{hold_s:.0f}s={open_count} rss_end_kb={end}")
gw.terminate()
gw.wait(10)
