#!/usr/bin/env python3
"""Keep-alive CPU as idle connections grow: does holding more devices make each keep-alive dearer?

For each idle count in `--idle` (default 0,100000,1000000) and each pulsegate binary (this build,
and `--pulsegate-before-bin OLD` if given), one fresh gateway with the same fixed shard count:

1. an *idle* loadgen `hold` connects that many devices with a keep-alive too long to fire during
   the run (`--idle-keepalive-s`, default 3,600 s), and the script waits until the gateway's
   `pulsegate_connections` gauge shows them all;
2. for `--idle-window-s` the script reads the gateway's CPU (utime + stime of every thread from
   /proc) and voluntary context switches (wake-ups): the cost of holding the idle devices;
3. an *active* loadgen `hold` then connects `--active` devices pinging every `--keepalive-s`
   (default 20,000 at 2 s, about 10,000 keep-alives/s) with `--server-pid`, and its report gives
   the server CPU per million keep-alives over its steady window, split user/system.

The shard count is the same at every point (default ceil((active + largest idle) / 19,000), what
the largest point needs under a 20,000-descriptor ring table), so the curve isolates the number
of idle connections. Prints one table and writes every figure to JSON
(target/bench-results/keepalive-scale-<unix>.json).

    python3 benches/keepalive_scale.py --idle 0,100000,1000000 --pulsegate-before-bin /tmp/pulsegate-old

Servers bind to 127.0.0.1 only; the idle loadgen uses source addresses 127.0.0.2-127.0.0.254 and
the active one 127.0.1.2-127.0.1.254. Everything it starts is killed on exit.
"""

import argparse
import atexit
import copy
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import side_by_side as sbs  # noqa: E402  (the shared server/loadgen drivers)

SHARD_CONNECTIONS = sbs.SHARD_CONNECTIONS


def connections_gauge(http_port):
    """The gateway's `pulsegate_connections` (sum over its label sets), or None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
            text = r.read().decode("utf-8", "replace")
    except OSError:
        return None
    total = 0
    seen = False
    for line in text.splitlines():
        if line.startswith("pulsegate_connections ") or line.startswith("pulsegate_connections{"):
            try:
                total += int(float(line.rsplit(" ", 1)[1]))
                seen = True
            except ValueError:
                pass
    return total if seen else None


def proc_sample(pid):
    """(cpu_s, voluntary context switches, rss_bytes) of the whole process, summed over threads."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu = 0
    vcs = 0
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (t / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            cpu += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
            for line in (t / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    vcs += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just exited
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return cpu / tick, vcs, rss


def wait_connected(server, want, deadline_s, idle_started):
    """Waits until the gauge reaches `want`; returns (reached, seconds taken)."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < deadline_s:
        n = connections_gauge(server.http_port)
        if n is not None and n >= want:
            return True, time.monotonic() - t0
        if idle_started and idle_started["proc"].poll() is not None:
            sbs.log(f"  ! idle loadgen exited early ({idle_started['proc'].returncode}) at {n} connections")
            return False, time.monotonic() - t0
        if n is not None:
            last = n
        time.sleep(1.0)
    sbs.log(f"  ! only {last} of {want:,} idle connections after {deadline_s:.0f} s")
    return False, time.monotonic() - t0


def one_point(args, bins, workdir, binary, label, idle_n, shards):
    point = {"binary": label, "idle_connections": idle_n, "shards": shards}
    # The gateway's own max_connections (1,000,000 by default) must not be what refuses devices.
    srv_args = copy.copy(args)
    if not any(a.startswith("--max-connections") for a in args.pulsegate_arg):
        srv_args.pulsegate_arg = ["--max-connections", str(args.active + idle_n + 1000)] + args.pulsegate_arg
    srv = sbs.start_server("pulsegate", srv_args, bins, workdir, args.active + idle_n, shards=shards, binary=binary)
    idle_started = None
    try:
        _, _, rss0 = proc_sample(srv.pid)
        if idle_n:
            idle_args = copy.copy(args)
            idle_args.keepalive_s = args.idle_keepalive_s
            idle_args.loadgen_arg = ["--source-ips", "127.0.0.2-127.0.0.254"]
            ramp_s = idle_n / args.ramp_per_s
            hold_s = ramp_s * 3 + 120 + args.idle_window_s + args.duration_s + 60
            idle_started = sbs.start_loadgen(idle_args, bins, workdir, "hold", srv, idle_n, hold_s,
                                             tag=f"-idle-{label}", client_id_prefix="idle-")
            ok, took = wait_connected(srv, idle_n, ramp_s * 3 + 120, idle_started)
            point["idle_connected"] = ok
            point["idle_ramp_s"] = round(took, 1)
            sbs.log(f"  idle: {idle_n:,} connected={ok} in {took:.0f} s")
            time.sleep(5.0)  # let the ramp's retries and dispersal settle
        cpu_a, vcs_a, _ = proc_sample(srv.pid)
        t_a = time.monotonic()
        time.sleep(args.idle_window_s)
        cpu_b, vcs_b, rss_idle = proc_sample(srv.pid)
        win = time.monotonic() - t_a
        point["idle_cpu_ms_per_s"] = round((cpu_b - cpu_a) / win * 1000.0, 2)
        point["idle_wakeups_per_s"] = round((vcs_b - vcs_a) / win, 1)
        point["idle_rss_bytes_per_conn"] = round((rss_idle - rss0) / idle_n, 1) if idle_n else None
        sbs.log(f"  idle window {win:.0f} s: {point['idle_cpu_ms_per_s']} CPU ms/s, "
                f"{point['idle_wakeups_per_s']} wake-ups/s")

        act_args = copy.copy(args)
        act_args.loadgen_arg = ["--source-ips", "127.0.1.2-127.0.1.254"]
        run = sbs.finish_loadgen(sbs.start_loadgen(act_args, bins, workdir, "hold", srv, args.active,
                                                   args.duration_s, tag=f"-active-{label}-{idle_n}",
                                                   client_id_prefix="act-"))
        rep = run.get("report") or {}
        m = sbs.ka_run_metrics(rep)
        point.update({k: m.get(k) for k in ("cpu_s_per_million", "user_s_per_million", "system_s_per_million",
                                             "keepalives", "keepalives_per_s", "ping_rtt_p99_ms", "steady_s",
                                             "control_messages", "established")})
        point["active_exit_code"] = run.get("exit_code")
        point["connections_at_end"] = connections_gauge(srv.http_port)
        if m.get("cpu_s_per_million") is not None:
            sbs.log(f"  active: {m['cpu_s_per_million']:.2f} CPU s per 1M keep-alives (user "
                    f"{m['user_s_per_million']:.2f}, system {m['system_s_per_million']:.2f}), "
                    f"{m['keepalives']:,} keep-alives")
    finally:
        if idle_started:
            sbs._kill_child(idle_started["proc"], "loadgen", grace_s=5.0)
            sbs._forget(idle_started["proc"])
        point["server"] = {k: v for k, v in sbs.stop_server(srv).items() if k in ("exited_during_run", "exit_code_during_run")}
    return point


def fmt(v, digits=2):
    return "-" if v is None else (f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}")


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--idle", default="0,100000,1000000", help="comma list of idle connection counts")
    ap.add_argument("--idle-keepalive-s", type=int, default=3600, help="the idle devices' keep-alive")
    ap.add_argument("--idle-window-s", type=float, default=20.0, help="how long the idle cost is sampled")
    ap.add_argument("--active", type=int, default=20_000, help="devices that ping")
    ap.add_argument("--keepalive-s", type=int, default=2, help="the active devices' keep-alive")
    ap.add_argument("--duration-s", type=float, default=60.0, help="the active hold")
    ap.add_argument("--shards", type=int, default=0,
                    help="pulsegate shards at every point (0: ceil((active + largest idle) / 19,000))")
    ap.add_argument("--ramp-per-s", type=float, default=20_000.0)
    ap.add_argument("--mqtt-version", type=int, choices=[4, 5], default=4)
    ap.add_argument("--pulsegate-before-bin", default=None, help="an older pulsegate, run at every point too")
    ap.add_argument("--pulsegate-arg", action="append", default=[], help="extra gateway argument (repeatable)")
    ap.add_argument("--target-dir", default=None)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--server-start-timeout-s", type=float, default=60.0)
    ap.add_argument("--output", default=None)
    args = ap.parse_args(argv)
    # What the shared drivers read from their own argument set.
    args.tls = False
    args.subscribe = False
    args.push_qos = 1
    args.loadgen_arg = []
    args.mosquitto = sbs.MOSQUITTO_DEFAULT

    atexit.register(sbs.cleanup)
    signal.signal(signal.SIGTERM, sbs._on_sigterm)
    sbs.raise_nofile()
    idle_list = [int(x) for x in args.idle.split(",") if x.strip()]
    shards = args.shards or max(1, math.ceil((args.active + max(idle_list)) / SHARD_CONNECTIONS))
    target = Path(args.target_dir or os.environ.get("CARGO_TARGET_DIR") or sbs.REPO / "target")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--workspace"], cwd=sbs.REPO, check=True, timeout=1800,
                       env=dict(os.environ, CARGO_TARGET_DIR=str(target)))
    bins = {"pulsegate": target / "release" / "pulsegate", "loadgen": target / "release" / "pulsegate-loadgen"}
    binaries = [("now", None)]
    if args.pulsegate_before_bin:
        binaries.append(("before", Path(args.pulsegate_before_bin).resolve()))
    for b in list(bins.values()) + [b for _, b in binaries if b]:
        if not b.exists():
            sys.exit(f"keepalive_scale: {b} not found")
    unix = int(time.time())
    out = Path(args.output) if args.output else target / "bench-results" / f"keepalive-scale-{unix}.json"
    workdir = Path(tempfile.mkdtemp(prefix="pulsegate-ka-scale-"))
    load_before = sbs.uptime_text()
    points = []
    try:
        for idle_n in idle_list:
            for label, binary in binaries:
                sbs.log(f"\n== {label}: {idle_n:,} idle + {args.active:,} active, {shards} shards")
                points.append(one_point(args, bins, workdir, binary, label, idle_n, shards))
    except KeyboardInterrupt:
        sbs.log("interrupted; partial results")
    finally:
        sbs.cleanup()

    print(f"\nkeep-alive CPU vs idle connections: {args.active:,} active devices at {args.keepalive_s} s, "
          f"idle devices at {args.idle_keepalive_s} s, {shards} shards at every point")
    hdr = ("idle conns", "binary", "idle CPU ms/s", "idle wake-ups/s", "idle RSS B/conn",
           "CPU s/1M ka", "user", "system", "ka/s", "ping p99 ms", "$pulse msgs")
    print(" | ".join(hdr))
    print(" | ".join("---" for _ in hdr))
    for p in points:
        print(" | ".join([fmt(p["idle_connections"]), p["binary"], fmt(p.get("idle_cpu_ms_per_s")),
                          fmt(p.get("idle_wakeups_per_s"), 1), fmt(p.get("idle_rss_bytes_per_conn"), 0),
                          fmt(p.get("cpu_s_per_million")), fmt(p.get("user_s_per_million")),
                          fmt(p.get("system_s_per_million")), fmt(p.get("keepalives_per_s"), 0),
                          fmt(p.get("ping_rtt_p99_ms"), 1), fmt(p.get("control_messages"))]))
    problems = [f"{p['binary']} @ {p['idle_connections']:,}: idle devices not all connected"
                for p in points if p["idle_connections"] and not p.get("idle_connected")]
    problems += [f"{p['binary']} @ {p['idle_connections']:,}: gateway exited during the run"
                 for p in points if p["server"].get("exited_during_run")]
    load_after = sbs.uptime_text()
    print(f"\nuptime before: {load_before}\nuptime after:  {load_after}")
    for x in problems:
        print(f"  ! {x}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"bench": "keepalive-scale", "unix_time_s": unix, "commit": sbs.read_commit(),
                               "config": {k: str(v) for k, v in vars(args).items()}, "shards": shards,
                               "uptime_before": load_before, "uptime_after": load_after,
                               "points": points, "problems": problems}, indent=2, default=str) + "\n")
    print(f"\nresults: {out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
