#!/usr/bin/env bash
# Compares two Keyward binaries on the proxy path, alternating them so that both see the
# same machine: for each round and each binary, a fresh data dir, a provider pointing at
# the mock upstream and a key, then req/s and p50/p99 at 1 and at 32 connections.
#
#   scripts/bench-ab.sh OLD_BINARY NEW_BINARY [rounds] [seconds]
#
# Build the old one from another worktree, e.g.
#   git worktree add ../old <commit> && (cd ../old && cargo build --release --bin keyward)
# Needs: oha, curl, python3 (scripts/bench-proxy.sh installs oha).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
OLD=$1 NEW=$2 ROUNDS=${3:-3} S=${4:-4}
export PATH="$HOME/.cargo/bin:$PATH"
# The upstream is this tree's `keyward mock-provider` (a test tool), whichever binaries are measured.
(cd "$ROOT" && cargo build --release --bin keyward >/dev/null)
MOCK=${CARGO_TARGET_DIR:-$ROOT/target}/release/keyward
MOCK_PORT=18090 KW_PORT=18092
BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'

summary() {
    python3 -c '
import json, sys
r = json.load(sys.stdin); s = r["summary"]; p = r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
print("%6.0f req/s  p50 %5.0f us  p99 %6.0f us  %s" % (s["requestsPerSec"], p["p50"] * 1e6, p["p99"] * 1e6, codes))'
}

one() { # label binary
    local w mock kw secret
    w=$(mktemp -d /tmp/keyward-ab.XXXXXX)
    "$MOCK" mock-provider --listen "127.0.0.1:$MOCK_PORT" 2>/dev/null &
    mock=$!
    wait_http "http://127.0.0.1:$MOCK_PORT/healthz"
    KEYWARD_DATA_DIR=$w/d KEYWARD_LISTEN=127.0.0.1:$KW_PORT KEYWARD_LOG=warn \
        KEYWARD_UPSTREAM_ALLOW=127.0.0.0/8 "$2" serve >"$w/keyward.log" 2>&1 &
    kw=$!
    wait_http "http://127.0.0.1:$KW_PORT/readyz"
    secret=$(bench_key "$KW_PORT" "$w/d" "$MOCK_PORT")
    run() {
        oha --no-tui --output-format json -m POST -T application/json -d "$BODY" \
            -H "Authorization: Bearer $secret" "$@" "http://127.0.0.1:$KW_PORT/v1/chat/completions"
    }
    run -c 8 -z 1s >/dev/null
    echo "$1  1c: $(run -c 1 -z "${S}s" | summary)"
    echo "$1 32c: $(run -c 32 -z "${S}s" | summary)"
    kill "$kw" "$mock" 2>/dev/null || true
    wait "$kw" "$mock" 2>/dev/null || true
    rm -rf "$w"
}

for r in $(seq 1 "$ROUNDS"); do
    one "old (round $r)" "$OLD"
    one "new (round $r)" "$NEW"
done
