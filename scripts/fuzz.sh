#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a while each.
#
#   scripts/fuzz.sh [seconds per target, default 60] [target ...]
#   KEYWARD_FUZZ_DEV=1 scripts/fuzz.sh 8     # CI's smoke run
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`). Each
# target starts from its committed seeds (fuzz/seeds/<target>) and keeps what it learns in
# fuzz/corpus/<target> (not committed). A crash stops the script with the target's name;
# libFuzzer writes the input to fuzz/artifacts/<target>/ and prints how to replay it:
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
#
# Debug assertions are on, so an integer overflow is a crash as it would be in a debug
# build. No sanitizer: the code under test is safe Rust, and the build stays quick.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

flags=(--sanitizer none --debug-assertions)
# KEYWARD_FUZZ_DEV=1 (CI's smoke run): an unoptimised build, which compiles several times
# faster and runs slower; a few seconds of it still replays every seed and mutates them.
if [ "${KEYWARD_FUZZ_DEV:-0}" = 1 ]; then
  flags+=(--dev)
fi
echo "== build ${#targets[@]} fuzz targets"
cargo +nightly fuzz build "${flags[@]}"

summary=()
for t in "${targets[@]}"; do
  echo "== $t for ${seconds}s"
  mkdir -p "corpus/$t"
  log="$(mktemp)"
  # -rss_limit_mb: a parser's memory must stay bounded by its input; 2 GB is generous.
  status=0
  cargo +nightly fuzz run "${flags[@]}" "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    echo "== $t FAILED (exit $status); the input is in fuzz/artifacts/$t/" >&2
    grep -E -A3 'panicked at|ERROR:|SUMMARY' "$log" | head -n 40 >&2
    rm -f "$log"
    exit 1
  fi
  execs="$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | awk '{print $2}' | tail -n1)"
  summary+=("$t: ${execs:-?} executions in ${seconds}s, no crash")
  rm -f "$log"
done

echo "== fuzz summary"
printf '  %s\n' "${summary[@]}"
