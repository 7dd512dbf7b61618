#!/usr/bin/env python3
"""Server CPU per million durable QoS 1 pushes (HTTP POST /v1/messages accepted -> device PUBACK).

    python3 benches/push_cpu.py --bin target/release/pulsegate \
        --before-bin /tmp/pulsegate-push-before --rates 2000,10000,max

For each rate and each binary (before first, then after, interleaved per rate so both see the
same host load), a fresh pulsegate on free loopback ports with a fresh --data-dir, then
`pulsegate-loadgen push` (--connections devices subscribed to push/{id} at QoS 1, pushing from
--push-start-s until --duration-s) with --server-pid. "max" offers --max-offered-per-s and
reports what was accepted. CPU is the loadgen's server_cpu_user_s_steady /
server_cpu_system_s_steady (/proc/PID/stat, from all devices connected to the end), divided
by pushes accepted (the idle keep-alive cost of the devices is included; it is small at
keep-alive 60 s). Prints: rate offered | binary | accepted/s | CPU-s per 1M pushes (user,
system, total) | p99 e2e push latency | p99 HTTP latency | after/before CPU ratio.
Raw reports go to <workdir>/push-cpu-<unix time>.json. Python 3 standard library only; every
child is killed by pid at the end.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import side_by_side as sbs  # noqa: E402  (free ports and child shutdown, shared)

CHILDREN = []


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def kill(proc):
    sbs._kill_child(proc, "server", grace_s=10.0)


def start_pulsegate(binary, workdir, extra):
    mqtt_port, http_port = sbs.free_port(), sbs.free_port()
    data_dir = workdir / f"data-{mqtt_port}"
    ready = workdir / f"ready-{mqtt_port}.json"
    log_path = workdir / f"pulsegate-{mqtt_port}.log"
    cmd = [str(binary), "--mqtt-listen", f"127.0.0.1:{mqtt_port}", "--http-listen", f"127.0.0.1:{http_port}",
           "--data-dir", str(data_dir), "--ready-file", str(ready)] + extra
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    CHILDREN.append(proc)
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            kill(proc)
            raise SystemExit(f"pulsegate did not start: {cmd}\n{log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    return proc, mqtt_port, http_port


def run_one(args, binary, rate, workdir):
    proc, mqtt_port, http_port = start_pulsegate(binary, workdir, args.pulsegate_arg)
    offered = args.max_offered_per_s if rate == "max" else int(rate)
    json_path = workdir / f"loadgen-{mqtt_port}.json"
    cmd = [str(args.loadgen), "push", "--target", f"127.0.0.1:{mqtt_port}", "--http", f"127.0.0.1:{http_port}",
           "--connections", str(args.connections), "--duration-s", str(args.duration_s),
           "--push-start-s", str(args.push_start_s), "--rate-per-s", str(offered), "--qos", "1",
           "--subscribe", "push/{id}", "--subscribe-qos", "1", "--keepalive-s", "60",
           "--http-connections", str(args.http_connections), "--server-pid", str(proc.pid),
           "--json", str(json_path)]
    log(f"  $ {' '.join(cmd)}")
    try:
        subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=args.duration_s + 180,
                       start_new_session=True)
    finally:
        kill(proc)
    rep = json.loads(json_path.read_text()) if json_path.exists() else {}
    accepted = rep.get("pushes_accepted") or 0
    push_s = max(1e-9, args.duration_s - args.push_start_s)
    user = rep.get("server_cpu_user_s_steady")
    system = rep.get("server_cpu_system_s_steady")
    per_m = (lambda v: v / accepted * 1e6 if (v is not None and accepted) else None)
    return {
        "binary": str(binary), "rate": rate, "offered_per_s": offered, "accepted_per_s": accepted / push_s,
        "pushes_accepted": accepted, "pushes_delivered": rep.get("pushes_delivered"),
        "http_errors": rep.get("http_errors"),
        "cpu_user_s_per_m": per_m(user), "cpu_system_s_per_m": per_m(system),
        "cpu_s_per_m": per_m((user or 0) + (system or 0)) if user is not None else None,
        "p99_e2e_ms": (rep.get("push_latency_ms") or {}).get("p99"),
        "p99_http_ms": (rep.get("http_latency_ms") or {}).get("p99"),
        "report": rep,
    }


def fmt(v, d=1):
    return "-" if v is None else f"{v:.{d}f}"


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=str(REPO / "target/release/pulsegate"))
    p.add_argument("--before-bin", help="older pulsegate binary run in the same command for comparison")
    p.add_argument("--loadgen", default=str(REPO / "target/release/pulsegate-loadgen"))
    p.add_argument("--rates", default="2000,10000,max", help="comma list of pushes/s offered, or max")
    p.add_argument("--max-offered-per-s", type=int, default=40000)
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--http-connections", type=int, default=8)
    p.add_argument("--duration-s", type=int, default=25)
    p.add_argument("--push-start-s", type=int, default=5)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--pulsegate-arg", action="append", default=[], help="extra pulsegate argument (repeatable)")
    p.add_argument("--workdir")
    args = p.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="push-cpu-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bins = [("before", args.before_bin), ("after", args.bin)] if args.before_bin else [("bin", args.bin)]
    rows = []
    try:
        for rate in args.rates.split(","):
            for _ in range(args.repeat):
                for name, b in bins:
                    log(f"{name} {b} at {rate}/s")
                    r = run_one(args, b, rate.strip(), workdir)
                    r["name"] = name
                    rows.append(r)
    finally:
        for c in CHILDREN:
            kill(c)
    out = workdir / f"push-cpu-{int(time.time())}.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"{'offered':>8} {'bin':>6} {'acc/s':>8} {'CPU-s/M user':>12} {'sys':>8} {'total':>8} "
          f"{'p99 e2e ms':>10} {'p99 http ms':>11} {'after/before':>12}")
    for r in rows:
        ratio = ""
        if r["name"] == "after" and args.before_bin:
            befores = [b for b in rows if b["name"] == "before" and b["rate"] == r["rate"] and b["cpu_s_per_m"]]
            if befores and r["cpu_s_per_m"]:
                ratio = fmt(r["cpu_s_per_m"] / befores[-1]["cpu_s_per_m"], 2)
        print(f"{r['rate']:>8} {r['name']:>6} {fmt(r['accepted_per_s'], 0):>8} {fmt(r['cpu_user_s_per_m']):>12} "
              f"{fmt(r['cpu_system_s_per_m']):>8} {fmt(r['cpu_s_per_m']):>8} {fmt(r['p99_e2e_ms']):>10} "
              f"{fmt(r['p99_http_ms']):>11} {ratio:>12}")
    print(f"raw: {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
