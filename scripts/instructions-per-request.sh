#!/usr/bin/env bash
# Instructions Keyward executes per proxied request, counted by callgrind: a figure that
# does not depend on what else the machine is doing, for comparing builds.
#
#   scripts/instructions-per-request.sh [keyward binary] [requests]
#
# The binary defaults to target/release/keyward. Keyward runs under
# `valgrind --tool=callgrind --instr-atstart=no`; after 200 warm-up requests the
# instrumentation is switched on for N requests (default 2,000) at 4 connections, then
# off. Every thread of the process is counted (server, upstream client, appender,
# SQLite); the kernel is not. Keyward runs with the log a user gets (`info`) unless
# KEYWARD_LOG says otherwise; KEEP_CALLGRIND=FILE keeps the profile for callgrind_annotate.
# Needs valgrind, oha, curl, python3.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
BIN=${1:-${CARGO_TARGET_DIR:-$ROOT/target}/release/keyward}
N=${2:-2000}
export PATH="$HOME/.cargo/bin:$PATH"
# The upstream is this tree's `keyward mock-provider` (a test tool), whichever binaries are measured.
(cd "$ROOT" && cargo build --release --bin keyward >/dev/null)
MOCK=${CARGO_TARGET_DIR:-$ROOT/target}/release/keyward
MOCK_PORT=18095 KW_PORT=18096
W=$(mktemp -d /tmp/keyward-instr.XXXXXX)
"$MOCK" mock-provider --listen "127.0.0.1:$MOCK_PORT" 2>/dev/null &
MOCK_PID=$!
trap 'kill $MOCK_PID 2>/dev/null; wait 2>/dev/null; [[ -n ${KEEP_CALLGRIND:-} ]] && cp "$W/callgrind.out" "$KEEP_CALLGRIND"; rm -rf "$W"' EXIT
wait_http "http://127.0.0.1:$MOCK_PORT/healthz"
KEYWARD_DATA_DIR=$W/d KEYWARD_LISTEN=127.0.0.1:$KW_PORT KEYWARD_LOG=${KEYWARD_LOG:-info} \
    KEYWARD_UPSTREAM_ALLOW=127.0.0.0/8 valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$W/callgrind.out" "$BIN" serve >"$W/keyward.log" 2>&1 &
KW=$!
wait_http "http://127.0.0.1:$KW_PORT/readyz" 1200  # slow under valgrind: 2 minutes
SECRET=$(bench_key "$KW_PORT" "$W/d" "$MOCK_PORT")
BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'
load() {
    oha --no-tui -n "$1" -c 4 -m POST -T application/json -d "$BODY" \
        -H "Authorization: Bearer $SECRET" "http://127.0.0.1:$KW_PORT/v1/chat/completions" >/dev/null
}
load 200
callgrind_control -i on "$KW" >/dev/null 2>&1
load "$N"
callgrind_control -i off "$KW" >/dev/null 2>&1
kill -TERM "$KW"
wait "$KW" 2>/dev/null || true
TOTAL=$(callgrind_annotate "$W/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "$TOTAL instructions for $N requests: $((TOTAL / N)) per request"
