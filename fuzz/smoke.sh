#!/usr/bin/env bash
# Smoke run of every cargo-fuzz target on the stable toolchain (CI runs it from .ci/run).
#
# `-s none` builds without a sanitizer: cargo-fuzz then passes only stable `-C` flags
# (sancov instrumentation, debug assertions, overflow checks), so no nightly or
# RUSTC_BOOTSTRAP is needed. For an AddressSanitizer run by hand:
#   RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET -- -max_total_time=60
#
# Each target starts from its committed seeds in corpus/TARGET (read only: new inputs go to a
# temporary directory) and runs for FUZZ_SECONDS seconds (default 15). A crash or failed
# property stops the script with libFuzzer's report; the input is saved under
# artifacts/TARGET/ (reproduce with `cargo fuzz run -s none TARGET artifacts/TARGET/FILE`).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-15}"
start=$(date +%s)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cargo fuzz build -s none
built=$(date +%s)
echo "fuzz targets built in $((built - start)) s"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
targets=$(cargo fuzz list)
failed=0
for t in $targets; do
  mkdir -p "$work/corpus/$t"
  log="$work/$t.log"
  if cargo fuzz run -s none "$t" "$work/corpus/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -E '^#[0-9]+' "$log" | tail -n 1 | grep -oE 'cov: [0-9]+' || true)
    echo "fuzz $t: ok, ${runs:-?} runs in ${seconds} s, ${cov:-cov: ?}"
  else
    echo "fuzz $t: FAILED" >&2
    tail -n 60 "$log" >&2
    failed=$((failed + 1))
  fi
done
echo "fuzz smoke run took $(($(date +%s) - start)) s"
echo "fuzz: $(($(echo "$targets" | wc -w) - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
