#!/usr/bin/env bash
# The whole test suite: installs missing test tools, builds, runs the Rust unit
# and integration tests (both backends), lints, and the paho/mosquitto tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/deps.sh
cargo build --release --workspace --all-targets
cargo fmt --all --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo test --release --workspace
python3 -m pytest -q tuning/test_apply.py
PULSEGATE_BIN="$PWD/target/release/pulsegate" python3 -m pytest -q tests/python
