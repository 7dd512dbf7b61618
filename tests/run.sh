#!/usr/bin/env bash
# The whole test suite: installs missing test tools, builds, runs the Rust unit
# and integration tests (both backends), lints, and the paho/mosquitto tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/deps.sh
cargo build --release --workspace --all-targets
# README command 1: `cargo run --release` must pick the gateway binary and start.
smoke_dir="$(mktemp -d)"; smoke_out="$smoke_dir/out"
cargo run --release -q -- --mqtt-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir "$smoke_dir/data" \
  > "$smoke_out" 2>&1 &
for _ in $(seq 1 150); do grep -q "pulsegate: ready" "$smoke_out" && break; sleep 0.2; done
pkill -TERM -f -- "--data-dir $smoke_dir/data" || true
wait || true
grep -q "pulsegate: ready" "$smoke_out" || { echo "cargo run --release did not start the gateway:"; cat "$smoke_out"; exit 1; }
echo "smoke: cargo run --release starts the gateway"
cargo fmt --all --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo test --release --workspace
# Every fuzz target for 8 s (tests/fuzz/README.md): built once, fails on any crash.
bash tests/fuzz/run.sh 8
python3 -m pytest -q tuning/test_apply.py
PULSEGATE_BIN="$PWD/target/release/pulsegate" python3 -m pytest -q tests/python
