#!/usr/bin/env bash
# Installs what the test suite needs when it is missing: Debian's mosquitto
# clients (and broker, for the loadgen's peer tests), curl, openssl (test certificates),
# paho-mqtt/pytest/PyJWT, and cargo-fuzz (tests/fuzz/run.sh --asan; ~45 s to build here).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
missing=()
command -v mosquitto_sub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)  # side_by_side.py --tls makes its certificates with it
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
fi
if ! python3 -c 'import paho.mqtt, pytest, jwt, cryptography' >/dev/null 2>&1; then
  python3 -m pip install -q -r "$here/python/requirements.txt"
fi
# Pinned: tests/fuzz/README.md documents its flags. --locked: its own Cargo.lock.
if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz 0.13.2"; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
