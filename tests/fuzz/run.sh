#!/usr/bin/env bash
# Builds every fuzz target once, then runs each for TIME_S seconds (default 60) from the
# committed seeds (corpus/TARGET/) plus what earlier runs here found (target/corpus/TARGET/,
# not committed), single job, RSS bounded; prints the executions per target and fails on
# any crash, panic, timeout or out-of-memory (the input is kept in target/artifacts/TARGET/).
#
#   bash tests/fuzz/run.sh [TIME_S] [--asan] [TARGET...]
#
# The quick build (default; tests/run.sh uses it with 8 s): instruments only the fuzzed
# crates (rustc-sancov.sh) and builds into the root target/, reusing the root release
# build's artifacts for everything else; stable toolchain, no sanitizer (the decoders are
# safe Rust: their bugs are panics and failed assertions). --asan: cargo-fuzz's own build
# (every crate instrumented, AddressSanitizer) in tests/fuzz/target/, on the stable
# toolchain through RUSTC_BOOTSTRAP=1; about 12 minutes from cold here.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
fuzz_dir="tests/fuzz"
time_s=60
asan=0
targets=()
for arg in "$@"; do
  case "$arg" in
    --asan) asan=1 ;;
    '' | *[!0-9]*) targets+=("$arg") ;;
    *) time_s="$arg" ;;
  esac
done
all_targets=(mqtt_frame http_head api_json sdk_session loadgen_mqtt)
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")
# Longest input per target: a few packets, a 16 KiB head, a body with a 1,000-device list.
declare -A max_len_bytes=([mqtt_frame]=4096 [http_head]=17000 [api_json]=16384 [sdk_session]=4096 [loadgen_mqtt]=4096)

build_start_s=$SECONDS
if [ "$asan" = 1 ]; then
  command -v cargo-fuzz >/dev/null 2>&1 || { echo "fuzz: cargo-fuzz is missing (bash tests/deps.sh installs it)"; exit 1; }
  RUSTC_BOOTSTRAP=1 cargo fuzz build --fuzz-dir "$fuzz_dir" -s address
  bin_dir="$fuzz_dir/target/x86_64-unknown-linux-gnu/release"
  export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0"
else
  # Debug assertions and overflow checks in the instrumented crates; the override also
  # gives their artifacts their own hash, so the root build's copies stay as they are.
  overrides=()
  for p in pulsegate pulsegate-loadgen pulsegate-fuzz httparse serde_json; do
    overrides+=(--config "profile.release.package.\"$p\".debug-assertions=true"
                --config "profile.release.package.\"$p\".overflow-checks=true")
  done
  RUSTC_WRAPPER="$root/$fuzz_dir/rustc-sancov.sh" CARGO_TARGET_DIR="$root/target" \
    cargo build --release --locked --manifest-path "$fuzz_dir/Cargo.toml" --bins "${overrides[@]}"
  bin_dir="target/release"
fi
echo "fuzz: built ${#all_targets[@]} targets in $((SECONDS - build_start_s)) s"

failed=()
for t in "${targets[@]}"; do
  work="$fuzz_dir/target/corpus/$t"
  artifacts="$fuzz_dir/target/artifacts/$t"
  log="$fuzz_dir/target/logs/$t.log"
  mkdir -p "$work" "$artifacts" "$(dirname "$log")"
  dict=()
  [ -f "$fuzz_dir/dict/$t.dict" ] && dict=(-dict="$fuzz_dir/dict/$t.dict")
  rc=0
  "$bin_dir/$t" "$work" "$fuzz_dir/corpus/$t" "${dict[@]}" \
    -max_total_time="$time_s" -timeout=10 -rss_limit_mb=2048 -max_len="${max_len_bytes[$t]}" \
    -print_final_stats=1 -artifact_prefix="$artifacts/" > "$log" 2>&1 || rc=$?
  stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
  execs="$(stat number_of_executed_units)"
  echo "fuzz: $t: ${execs:-?} executions in ${time_s} s ($(stat average_exec_per_sec) /s)," \
    "peak RSS $(stat peak_rss_mb) MB, corpus $(find "$work" -type f | wc -l) files, exit $rc"
  if [ "$rc" != 0 ] || [ -z "$execs" ]; then
    failed+=("$t")
    echo "fuzz: $t FAILED; the end of $log:"
    tail -40 "$log"
    ls -l "$artifacts" || true
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} of ${#targets[@]} targets failed: ${failed[*]}"
  exit 1
fi
echo "fuzz: ${#targets[@]} targets ran ${time_s} s each with no crash"
