#!/usr/bin/env bash
# RUSTC_WRAPPER of tests/fuzz/run.sh's quick build: adds libFuzzer's coverage
# instrumentation (the flags cargo-fuzz sets, less the sanitizer) to the crates being
# fuzzed and to nothing else, so every other dependency is the root release build's own
# artifact, reused as it is. Owns nothing but this flag list; must never change what an
# uninstrumented crate is compiled with (the root build shares those artifacts).
set -euo pipefail
rustc="$1"
shift
crate=""
prev=""
for arg in "$@"; do
  [ "$prev" = "--crate-name" ] && crate="$arg"
  prev="$arg"
done
case "$crate" in
  # The crates run.sh gives debug assertions (so their artifacts are not the root's),
  # and the fuzz targets themselves.
  pulsegate | pulsegate_loadgen | httparse | serde_json | pulsegate_fuzz | mqtt_frame | http_head | api_json | sdk_session | loadgen_mqtt)
    exec "$rustc" "$@" \
      -Cpasses=sancov-module \
      -Cllvm-args=-sanitizer-coverage-level=4 \
      -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
      -Cllvm-args=-sanitizer-coverage-pc-table \
      -Cllvm-args=-sanitizer-coverage-trace-compares \
      -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
      --cfg fuzzing
    ;;
  *) exec "$rustc" "$@" ;;
esac
