#!/usr/bin/env bash
# The archive's figures (issue 18), in two parts.
#
# 1. `examples/archive_bench.rs run N`: a SQLite log of N `key.used` (default 10,000,000)
#    archived whole, as `keyward audit archive --until-seq` does: events/s written and
#    verified, compressed bytes per key.used, the time to prune, then the verify of the
#    whole history split between the hot store and the segments.
# 2. The proxy's p50/p99 at a fixed rate (default 5,000 req/s, oha with latency correction)
#    on a Keyward whose log holds N old `key.used`, without an archive running, then while
#    `serve --archive-to DIR --retain-usage 1d` archives and prunes them (measured in
#    windows until the archive's log line says it is done), then again after it.
#
#   scripts/bench-archive.sh [N]             # both parts
#   PART=1 scripts/bench-archive.sh [N]      # only the first (PART=2: only the second)
#   BENCH_RATE=5000 BENCH_WINDOW=15 LEVEL=20 MAX_WINDOWS=20 scripts/bench-archive.sh
#
# The archive's work runs at the lowest CPU priority (src/background.rs), so under a load
# that keeps both cores busy it advances slowly: after MAX_WINDOWS loaded windows the load
# stops and the script waits for the archive to finish on the idle machine, and says how
# long each part took. With segments of 2^LEVEL events, only whole segments older than a
# day are archived: N must be at least 2^LEVEL (LEVEL a multiple of 4).
#
# Needs: cargo, curl, python3, oha (scripts/bench-proxy.sh installs it). Scratch space: a
# few GB in ${TMPDIR:-/tmp} at 10M (about 2.5 GB of SQLite, 0.4 GB of segments).
set -euo pipefail

N=${1:-10000000}
PART=${PART:-all}
RATE=${BENCH_RATE:-5000}
WINDOW=${BENCH_WINDOW:-15}
LEVEL=${LEVEL:-20}
MAX_WINDOWS=${MAX_WINDOWS:-20}
MOCK_PORT=18095 KW_PORT=18096
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -q --bin keyward --example archive_bench
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
WORK=$(mktemp -d "${TMPDIR:-/tmp}/keyward-bench-archive.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
log() { printf '== %s\n' "$*" >&2; }

if [[ $PART == all || $PART == 1 ]]; then
    log "part 1: archive_bench run $N (segments of 2^$LEVEL)"
    "$BIN/examples/archive_bench" run "$N" --level "$LEVEL" --dir "$WORK/run"
    rm -rf "$WORK/run"
fi
[[ $PART == all || $PART == 2 ]] || exit 0

command -v oha >/dev/null || { echo "oha is missing: run scripts/bench-proxy.sh once, or cargo install oha --locked" >&2; exit 1; }
BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'
D=$WORK/d
export KEYWARD_DATA_DIR=$D KEYWARD_LISTEN=127.0.0.1:$KW_PORT KEYWARD_LOG=info \
    KEYWARD_UPSTREAM_ALLOW=127.0.0.0/8

"$BIN/keyward" mock-provider --listen "127.0.0.1:$MOCK_PORT" 2>/dev/null &
PIDS+=($!)
wait_http "http://127.0.0.1:$MOCK_PORT/healthz"

start_serve() { # log file, extra args...
    local out=$1
    shift
    "$BIN/keyward" serve "$@" >"$out" 2>&1 &
    KW=$!
    PIDS+=("$KW")
    for _ in $(seq 1 6000); do
        curl -fs -o /dev/null "http://127.0.0.1:$KW_PORT/readyz" && return 0
        kill -0 "$KW" 2>/dev/null || { echo "keyward serve exited:" >&2; tail -3 "$out" >&2; exit 1; }
        sleep 0.1
    done
    echo "keyward serve was not ready within 10 min" >&2
    exit 1
}
stop_serve() {
    kill "$KW" 2>/dev/null || true
    wait "$KW" 2>/dev/null || true
}

# A fresh Keyward with a provider for the mock and a key, then N old key.used appended to
# its log (100 days old, over 1,000 other keys) while it is stopped.
log "part 2: a fresh Keyward, a key, then $N old key.used in its log"
start_serve "$WORK/first.log"
SECRET=$(bench_key "$KW_PORT" "$D" "$MOCK_PORT")
stop_serve
"$BIN/examples/archive_bench" build "$D" "$N" --days-ago 100

summary() {
    python3 -c '
import json, sys
r = json.load(sys.stdin); s = r["summary"]; p = r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
print("%6.0f req/s  p50 %6.0f us  p99 %7.0f us  %s" % (s["requestsPerSec"], p["p50"] * 1e6, p["p99"] * 1e6, codes))'
}
load() { # seconds
    oha --no-tui --output-format json --wait-ongoing-requests-after-deadline -m POST \
        -T application/json -d "$BODY" -H "Authorization: Bearer $SECRET" \
        -c 32 -q "$RATE" --latency-correction -z "${1}s" \
        "http://127.0.0.1:$KW_PORT/v1/chat/completions" | summary
}

log "without an archive running ($RATE req/s, ${WINDOW}s windows)"
t0=$(date +%s)
start_serve "$WORK/base.log"
echo "start (folds the log): $(($(date +%s) - t0)) s"
oha --no-tui -c 8 -z 2s -m POST -T application/json -d "$BODY" -H "Authorization: Bearer $SECRET" \
    "http://127.0.0.1:$KW_PORT/v1/chat/completions" >/dev/null
for i in 1 2 3; do echo "no archive, window $i: $(load "$WINDOW")"; done
stop_serve

log "while serve --archive-to archives and prunes the $N old events"
t0=$(date +%s)
start_serve "$WORK/archive.log" --archive-to "$WORK/archive" --retain-usage 1d \
    --archive-interval 1s --archive-segment-level "$LEVEL"
echo "start (folds the log): $(($(date +%s) - t0)) s"
t0=$(date +%s)
archived() {
    if grep -q "the scheduled archive failed" "$WORK/archive.log"; then
        grep "the scheduled archive failed" "$WORK/archive.log" >&2
        exit 1
    fi
    grep -q "archived and pruned usage events" "$WORK/archive.log"
}
i=0
while ! archived && [[ $i -lt $MAX_WINDOWS ]]; do
    i=$((i + 1))
    echo "archive running, window $i: $(load "$WINDOW")"
done
if ! archived; then
    echo "load stopped after $i windows ($(($(date +%s) - t0)) s); the archive goes on with the machine idle"
    for _ in $(seq 1 7200); do archived && break; sleep 1; done
    archived || { echo "the archive did not finish within 2 h" >&2; exit 1; }
fi
echo "the archive finished after about $(($(date +%s) - t0)) s (windows of ${WINDOW}s):"
grep "archived and pruned usage events" "$WORK/archive.log" | tail -1
echo "segments: $(find "$WORK/archive" -name '*.ndjson.zst' | wc -l), $(du -sb "$WORK/archive" | cut -f1) bytes"
for i in 1 2; do echo "after the archive, window $i: $(load "$WINDOW")"; done
stop_serve
