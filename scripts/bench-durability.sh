#!/usr/bin/env bash
# `--usage-durability async` and `durable` side by side (issue 24), in one run, the two
# modes alternated measurement by measurement so that both see the same machine.
#
# Two Keywards run at once, each on its own data dir (the embedded SQLite default) and
# otherwise in the configuration a user gets by default (no log setting of their own),
# except `--max-connections` raised for the in-flight scenario. Three mock providers:
# one that answers at once, one whose chat completions take 1 s, one that spreads a
# stream's chunks over 2 s. Per mode and round:
#   - req/s at 32 connections, p50/p99 at a fixed 5,000 req/s (oha's latency correction),
#     p50 at one connection, against the immediate mock;
#   - in flight: INFLIGHT_RATE new requests a second (default 5,000) for INFLIGHT_SECONDS
#     (default 60) against the 1 s mock (about 5,000 in flight), then streamed against
#     the 2 s mock (about 10,000 in flight): p50/p99 and what they add to the mock's
#     latency, peak RSS over idle per request in flight, CPU time per request, and every
#     answer a 200.
# At the end each Keyward is stopped (SIGTERM, drained) and its log must hold one key.used
# per request it answered.
#
#   scripts/bench-durability.sh
#   BENCH_ROUNDS=3 BENCH_SECONDS=10 BENCH_INFLIGHT_SECONDS=60 INFLIGHT_RATE=5000 scripts/bench-durability.sh
#
# Needs: cargo, curl, python3, oha (scripts/bench-proxy.sh installs it).
set -euo pipefail
ROUNDS=${BENCH_ROUNDS:-3}
S=${BENCH_SECONDS:-10}
RATE=${BENCH_RATE:-5000}
INFLIGHT_RATE=${INFLIGHT_RATE:-5000}
INFLIGHT_S=${BENCH_INFLIGHT_SECONDS:-60}
INFLIGHT_ROUNDS=${BENCH_INFLIGHT_ROUNDS:-$ROUNDS}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
export PATH="$HOME/.cargo/bin:$PATH"
command -v oha >/dev/null || { echo "oha is missing: run scripts/bench-proxy.sh once, or cargo install oha --locked" >&2; exit 1; }
cargo build --release -q --bin keyward
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/keyward
# 10,000 client connections and as many to the provider, per side.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/keyward-bench-durability.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
log() { printf '== %s\n' "$*" >&2; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
FSYNC=$(ls /usr/lib/postgresql/*/bin/pg_test_fsync 2>/dev/null | head -1 || true)
if [[ -n $FSYNC ]]; then
    (cd "$WORK" && "$FSYNC" -s 2 2>/dev/null | grep -m2 -E 'fdatasync|fsync ' | sed 's/^ */fsync latency (pg_test_fsync): /') || true
fi

M0=18100 M1=18101 M2=18102
"$BIN" mock-provider --listen "127.0.0.1:$M0" 2>/dev/null &
PIDS+=($!)
"$BIN" mock-provider --listen "127.0.0.1:$M1" --latency 1s 2>/dev/null &
PIDS+=($!)
"$BIN" mock-provider --listen "127.0.0.1:$M2" --latency 2s 2>/dev/null &
PIDS+=($!)
for m in $M0 $M1 $M2; do wait_http "http://127.0.0.1:$m/healthz"; done

declare -A PORT=([async]=18110 [durable]=18111) PID S0 S1 S2 ANSWERED
for mode in async durable; do
    d=$WORK/$mode
    KEYWARD_DATA_DIR=$d KEYWARD_LISTEN=127.0.0.1:${PORT[$mode]} KEYWARD_UPSTREAM_ALLOW=127.0.0.0/8 \
        KEYWARD_USAGE_DURABILITY=$mode KEYWARD_MAX_CONNECTIONS=30000 \
        "$BIN" serve >"$WORK/$mode.log" 2>&1 &
    PID[$mode]=$!
    PIDS+=($!)
    wait_http "http://127.0.0.1:${PORT[$mode]}/readyz"
    S0[$mode]=$(bench_key "${PORT[$mode]}" "$d" "$M0" mock0)
    S1[$mode]=$(bench_key "${PORT[$mode]}" "$d" "$M1" mock1)
    S2[$mode]=$(bench_key "${PORT[$mode]}" "$d" "$M2" mock2)
    ANSWERED[$mode]=0
done

# oha MODE SECRET STREAM ARGS...: one run; prints "rps p50_ms p99_ms answered" and fails
# unless every answer is a 200.
run() {
    local mode=$1 secret=$2 stream=$3; shift 3
    local body="{\"model\":\"gpt-4o-mini\",\"stream\":$stream,\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}"
    oha --no-tui --output-format json --wait-ongoing-requests-after-deadline -m POST \
        -T application/json -d "$body" -H "Authorization: Bearer $secret" "$@" \
        "http://127.0.0.1:${PORT[$mode]}/v1/chat/completions" >"$WORK/oha.json"
    python3 - "$WORK/oha.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["summary"]; p = r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
ok = codes.get("200", 0); answered = sum(codes.values())
if ok != answered or answered == 0 or r.get("errorDistribution"):
    print(f"non-200 answers or errors: {codes} {r.get('errorDistribution')}", file=sys.stderr)
    sys.exit(1)
print(f'{s["requestsPerSec"]:.0f} {p["p50"]*1000:.3f} {p["p99"]*1000:.3f} {answered}')
PY
}

# CPU ticks (user + system) of a process.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

printf '\n%-8s %5s %12s %14s %14s %14s\n' mode round "req/s @32c" "p50 @${RATE}/s" "p99 @${RATE}/s" "p50 @1c"
for round in $(seq 1 "$ROUNDS"); do
    for mode in async durable; do
        # Warm-up: connections, the key's first lookup.
        out=$(run "$mode" "${S0[$mode]}" false -c 32 -z 1s)
        read -r _ _ _ n0 <<<"$out"
        out=$(run "$mode" "${S0[$mode]}" false -c 32 -z "${S}s")
        read -r rps _ _ n1 <<<"$out"
        out=$(run "$mode" "${S0[$mode]}" false -c 32 -q "$RATE" --latency-correction -z "${S}s")
        read -r _ p50 p99 n2 <<<"$out"
        out=$(run "$mode" "${S0[$mode]}" false -c 1 -z "${S}s")
        read -r _ p501 _ n3 <<<"$out"
        ANSWERED[$mode]=$((ANSWERED[$mode] + n0 + n1 + n2 + n3))
        printf '%-8s %5s %12s %11s ms %11s ms %11s ms\n' "$mode" "$round" "$rps" "$p50" "$p99" "$p501"
    done
done

# in flight: RATE new requests a second for INFLIGHT_S seconds against a slow mock.
inflight() { # mode secret stream latency_ms
    local mode=$1 secret=$2 stream=$3 lat=$4 pid=${PID[$1]}
    local in_flight=$((INFLIGHT_RATE * lat / 1000))
    local idle t0 peak=0 out sampler
    idle=$(rss_kb "$pid")
    t0=$(ticks "$pid")
    # Peak RSS, sampled while the load runs.
    (while kill -0 "$pid" 2>/dev/null; do rss_kb "$pid"; sleep 0.5; done) >"$WORK/rss" &
    sampler=$!
    out=$(run "$mode" "$secret" "$stream" -c $((in_flight * 3 / 2)) -q "$INFLIGHT_RATE" --latency-correction -z "${INFLIGHT_S}s")
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    peak=$(sort -n "$WORK/rss" | tail -1)
    read -r rps p50 p99 n <<<"$out"
    ANSWERED[$mode]=$((ANSWERED[$mode] + n))
    local cpu_ms
    cpu_ms=$(python3 -c "print(($(ticks "$pid") - $t0) * 1000 / $(getconf CLK_TCK))")
    python3 - "$mode" "$stream" "$lat" "$rps" "$p50" "$p99" "$n" "$idle" "$peak" "$in_flight" "$cpu_ms" <<'PY'
import sys
mode, stream, lat, rps, p50, p99, n, idle, peak, inflight, cpu = sys.argv[1:]
lat, rps, p50, p99, n, idle, peak, inflight, cpu = float(lat), float(rps), float(p50), float(p99), int(n), int(idle), int(peak), int(inflight), float(cpu)
kind = "stream 2s" if stream == "true" else "whole 1s"
print(f"{mode:<8} {kind:<10} {rps:7.0f} req/s  p50 {p50:8.1f} ms (+{p50-lat:5.1f})  p99 {p99:8.1f} ms (+{p99-lat:5.1f})  "
      f"{(peak-idle)/max(inflight,1):6.1f} KB/req in flight (~{inflight})  {cpu*1000/max(n,1):5.0f} us CPU/req  {n} answered, all 200")
PY
}

echo
echo "in flight: $INFLIGHT_RATE new requests/s for ${INFLIGHT_S}s; added = over the mock's latency"
for round in $(seq 1 "$INFLIGHT_ROUNDS"); do
    for mode in async durable; do inflight "$mode" "${S1[$mode]}" false 1000; done
    for mode in async durable; do inflight "$mode" "${S2[$mode]}" true 2000; done
done

# Nothing dropped: one key.used per answered request, in each mode.
echo
for mode in async durable; do
    kill -TERM "${PID[$mode]}"
    for _ in $(seq 1 600); do kill -0 "${PID[$mode]}" 2>/dev/null || break; sleep 0.1; done
    KEYWARD_DATA_DIR=$WORK/$mode "$BIN" audit export --type key.used >"$WORK/used.jsonl"
    used=$(wc -l <"$WORK/used.jsonl")
    echo "$mode: key.used events $used; requests answered $((ANSWERED[$mode]))"
    [[ $used -eq ${ANSWERED[$mode]} ]] || { echo "MISMATCH in $mode" >&2; exit 1; }
done
echo "ok: every answered request is in the log, in both modes"
