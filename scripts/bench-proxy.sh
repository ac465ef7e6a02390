#!/usr/bin/env bash
# Load benchmark of the proxy as a user runs it: Keyward with no log setting of its own
# (the default, `info`), beside the mock upstream reached directly and through nginx
# (proxy_pass with upstream keepalive), all on 127.0.0.1, in one run.
#
# Each round measures, for direct, nginx and each Keyward build (alternated):
# - req/s at 32 connections (saturation);
# - p50, p99 and the slowest request at a steady 5,000 req/s (oha's latency correction,
#   so a stall counts for every request that should have been sent during it);
# - p50 at one connection;
# - in flight: a mock that answers after 1 s, and one that streams 50 chunks over 2 s,
#   at 5,000 new requests a second: p50/p99, the most requests in flight, Keyward's
#   memory per request in flight and CPU per request, and nothing refused or lost.
# Then the ratios, and a check that each Keyward recorded one key.used per request it
# answered.
#
#   scripts/bench-proxy.sh                         # this tree's build, 1 round
#   scripts/bench-proxy.sh --old OLD_BINARY        # old and new alternated, 3 rounds
#   scripts/bench-proxy.sh --smoke                 # seconds per measurement (CI: works?)
#   BENCH_ROUNDS=3 BENCH_WARN=1 scripts/bench-proxy.sh   # also a KEYWARD_LOG=warn variant
#
# Durations (seconds): BENCH_SECONDS (saturation, one connection; 10), BENCH_RATE_SECONDS
# (the steady rate; 60), BENCH_INFLIGHT_SECONDS (each in-flight scenario; 60). Rates:
# BENCH_RATE (5000), BENCH_INFLIGHT_RATE (5000), BENCH_STREAM_RATE (400: 5,000 streams a
# second of 52 chunks are 260,000 chunks a second to write, forward and read, which the
# mock and oha alone cannot do on 2 cores: direct reached 1,326 streams a second there,
# with a p50 of 19 s, and at 1,000 a second nginx fell behind (p50 5.2 s) with the mock and
# oha using the rest of the machine; it is also lowered to what the open-file limit holds,
# since every stream in flight holds two descriptors in each proxy).
#
# A request that fails, or an answer that is not a 200, is counted and reported (column
# `errors`), never silently dropped from the figures; the script then exits 1 at the end,
# as it does when a Keyward's key.used count differs from the requests it answered.
#
# Needs: cargo, curl, python3; installs nginx (apt-get) and oha (cargo install) if missing.
set -euo pipefail

SMOKE=0 OLD=
while [[ $# -gt 0 ]]; do
    case $1 in
        --smoke) SMOKE=1 ;;
        --old) OLD=$2; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [[ $SMOKE == 1 ]]; then
    S=${BENCH_SECONDS:-2} RS=${BENCH_RATE_SECONDS:-2} IS=${BENCH_INFLIGHT_SECONDS:-3}
    IRATE=${BENCH_INFLIGHT_RATE:-200} SRATE=${BENCH_STREAM_RATE:-200}
else
    S=${BENCH_SECONDS:-10} RS=${BENCH_RATE_SECONDS:-60} IS=${BENCH_INFLIGHT_SECONDS:-60}
    IRATE=${BENCH_INFLIGHT_RATE:-5000} SRATE=${BENCH_STREAM_RATE:-400}
fi
# Streams in flight: rate x ~2.05 s; each holds two descriptors in a proxy, beside a margin.
FITS=$(( ($(ulimit -Hn) - 1024) * 100 / 2 / 205 ))
if [[ $SRATE -gt $FITS ]]; then
    echo "# note: $SRATE streams/s would hold more descriptors than the open-file limit ($(ulimit -Hn)) allows; using $FITS/s" >&2
    SRATE=$FITS
fi
FAILED=0
RATE=${BENCH_RATE:-5000}
CONNS=${BENCH_CONNECTIONS:-32}
ROUNDS=${BENCH_ROUNDS:-$([[ -n $OLD ]] && echo 3 || echo 1)}
PORT0=${BENCH_PORT:-18080}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"

log() { printf '== %s\n' "$*" >&2; }

# ---- tools ----
if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
    log "installing nginx"
    SUDO=; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get install -y nginx >/dev/null || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y nginx >/dev/null; }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v oha >/dev/null; then
    log "installing oha (cargo install oha --locked)"
    cargo install oha --locked
fi
# Every request in flight is a descriptor in oha and two in each proxy.
ulimit -n "$(ulimit -Hn)"

log "building Keyward (release); its mock-provider subcommand is the upstream"
cargo build --release --bin keyward
NEW=$CARGO_TARGET_DIR/release/keyward
declare -A BINS=([new]=$NEW)
BUILDS=(new)
if [[ -n $OLD ]]; then BINS[old]=$OLD; BUILDS=(old new); fi

WORK=$(mktemp -d /tmp/keyward-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [[ -f $WORK/nginx.pid ]] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# ---- the machine ----
# fdatasync latency of one 8 KiB write: pg_test_fsync's figure where PostgreSQL's tools are
# installed (they are on these machines), else the same measurement in Python.
PGTF=$(command -v pg_test_fsync || ls /usr/lib/postgresql/*/bin/pg_test_fsync 2>/dev/null | tail -1 || true)
if [[ -n $PGTF ]]; then
    FSYNC="pg_test_fsync: $(timeout 120 "$PGTF" -s 1 -f "$WORK/fsync.test" 2>/dev/null |
        awk '/one 8kB write/ {f=1} f && !d && $1 == "fdatasync" {print $4 " us per 8 KiB write + fdatasync (" $2 "/s)"; d=1}')"
else
    FSYNC=$(SMOKE=$SMOKE python3 - "$WORK" <<'PY'
import os, sys, time
p = os.path.join(sys.argv[1], "fsync.test")
fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
buf = b"\0" * 8192
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < (0.5 if os.environ.get("SMOKE") == "1" else 2.0):
    os.pwrite(fd, buf, 0); os.fdatasync(fd); n += 1
el = time.perf_counter() - t0
os.close(fd); os.unlink(p)
print(f"python: {el / n * 1e6:.0f} us per 8 KiB write + fdatasync ({n / el:.0f}/s)")
PY
)
fi
echo "# Keyward proxy benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "# machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
echo "# fsync: $FSYNC; open-file limit $(ulimit -n)"
echo "# builds: ${BUILDS[*]}$([[ -n $OLD ]] && echo " (old: $OLD)"); rounds: $ROUNDS; log: default${BENCH_WARN:+, and KEYWARD_LOG=warn}"
echo "# seconds: saturation $S, steady rate $RS, in flight $IS; rates: steady $RATE/s, in flight $IRATE/s (1 s answers), $SRATE/s (streams over 2 s)"

# ---- the mock upstreams: `keyward mock-provider`, the built-in test tool ----
FAST=$PORT0 SLOW=$((PORT0 + 1)) STREAM=$((PORT0 + 2))
"$NEW" mock-provider --listen "127.0.0.1:$FAST" 2>"$WORK/mock-fast.log" & PIDS+=($!)
"$NEW" mock-provider --listen "127.0.0.1:$SLOW" --latency 1s 2>"$WORK/mock-slow.log" & PIDS+=($!)
"$NEW" mock-provider --listen "127.0.0.1:$STREAM" --latency 2s --chunks 50 2>"$WORK/mock-stream.log" & PIDS+=($!)
for p in $FAST $SLOW $STREAM; do wait_http "http://127.0.0.1:$p/healthz"; done

# ---- nginx: one port per mock ----
NG=$((PORT0 + 10))
mkdir -p "$WORK/nginx"
{
    cat <<CONF
worker_processes auto;
worker_rlimit_nofile $(ulimit -n);
pid $WORK/nginx.pid;
error_log $WORK/nginx/error.log warn;
daemon on;
events { worker_connections $(( $(ulimit -n) - 100 )); }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    proxy_buffering off;
CONF
    i=0
    for p in $FAST $SLOW $STREAM; do
        cat <<CONF
    upstream mock$i { server 127.0.0.1:$p; keepalive 64; }
    server {
        listen 127.0.0.1:$((NG + i));
        location / { proxy_pass http://mock$i; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
CONF
        i=$((i + 1))
    done
    echo "}"
} >"$WORK/nginx.conf"
"$NGINX" -c "$WORK/nginx.conf" -p "$WORK/nginx" -e "$WORK/nginx/error.log"
wait_http "http://127.0.0.1:$NG/healthz"

BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'
SBODY='{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hello"}]}'

# run NAME URL AUTH ARGS...: one oha run; writes "rps p50_ms p99_ms slowest_ms answered
# errors" to $WORK/result and keeps the JSON. Fails when oha fails or nothing was answered;
# failed requests and answers that are not 200 are counted in $WORK/errors.
run() {
    local name=$1 url=$2 auth=$3; shift 3
    local body=$BODY
    [[ $name == stream* ]] && body=$SBODY
    if ! oha --no-tui --output-format json --wait-ongoing-requests-after-deadline -t 30s \
        -m POST -T application/json -d "$body" -H "Authorization: Bearer $auth" "$@" \
        "$url" >"$WORK/$name.json"; then
        echo "oha failed ($name)" >&2
        return 1
    fi
    python3 - "$WORK/$name.json" >"$WORK/result" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["summary"]; p = r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
ok = codes.get("200", 0)
answered = sum(codes.values())
errors = sum(r.get("errorDistribution", {}).values()) + (answered - ok)
if errors:
    print(f"non-200 answers or errors: {codes} {r.get('errorDistribution')}", file=sys.stderr)
if answered == 0:
    sys.exit(1)
print(f'{s["requestsPerSec"]:.0f} {p["p50"]*1000:.3f} {p["p99"]*1000:.3f} {s["slowest"]*1000:.3f} {answered} {errors}')
PY
    local errors
    errors=$(awk '{print $6}' "$WORK/result")
    if [[ $errors -gt 0 ]]; then
        echo "$name: $errors requests failed or were not answered 200" >>"$WORK/errors"
        FAILED=1
    fi
}

# proc_ticks PIDS...: user+system CPU ticks of the processes; proc_rss PIDS...: their RSS in KiB.
proc_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
proc_rss() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $t; }
nginx_pids() { pgrep -P "$(cat "$WORK/nginx.pid")" | tr '\n' ' '; }
HZ=$(getconf CLK_TCK)

# settle: waits until the mocks (the first three PIDS) use under 5% of a core, 60 s at most.
settle() {
    local a b
    for _ in $(seq 1 60); do
        a=$(proc_ticks "${PIDS[@]:0:3}"); sleep 1; b=$(proc_ticks "${PIDS[@]:0:3}")
        [[ $((b - a)) -lt $((HZ / 20)) ]] && return 0
    done
}

# inflight NAME URL AUTH RATE SECONDS_OF_ANSWER PIDS...: the in-flight scenario against URL;
# appends "NAME rps p50 p99 slowest answered peak_in_flight kib_per_in_flight cpu_us_per_req"
# to $WORK/inflight.
inflight() {
    local name=$1 url=$2 auth=$3 rate=$4 answer=$5; shift 5
    local pids=("$@") rss0 t0 t1 peak=0 r sampler
    # Connections: every request in flight holds one (HTTP/1.1), and a margin.
    local conns
    conns=$(python3 -c "print(int($rate * $answer * 1.1) + 64)")
    rss0=$(proc_rss "${pids[@]}")
    t0=$(proc_ticks "${pids[@]}")
    ( while :; do proc_rss "${pids[@]}"; sleep 0.5; done ) >"$WORK/rss.$name" 2>/dev/null &
    sampler=$!
    run "$name" "$url" "$auth" -c "$conns" -q "$rate" -z "${IS}s" --latency-correction
    kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
    t1=$(proc_ticks "${pids[@]}")
    # Let answers that oha gave up on finish before the next measurement: wait until the
    # mocks are idle (under 5% of a core for a second), 60 s at most.
    settle
    peak=$(sort -n "$WORK/rss.$name" | tail -1)
    read -r rps p50 p99 slow n _ <"$WORK/result"
    python3 - "$name" "$rps" "$p50" "$p99" "$slow" "$n" "$rate" "$answer" "$rss0" "$peak" "$((t1 - t0))" "$HZ" >>"$WORK/inflight" <<'PY'
import sys
name, rps, p50, p99, slow, n, rate, answer, rss0, peak, ticks, hz = sys.argv[1:]
# Little's law: in flight = arrival rate x time in the system.
in_flight = float(rps) * float(p50) / 1000
kib = (int(peak) - int(rss0)) / max(in_flight, 1)
cpu_us = int(ticks) / int(hz) * 1e6 / int(n)
print(f"{name} {rps} {p50} {p99} {slow} {n} {in_flight:.0f} {kib:.1f} {cpu_us:.0f}")
PY
    echo "$n"
}

# standard LABEL URL AUTH: saturation, steady rate, one connection; appends a line to
# $WORK/std and prints the requests answered.
standard() {
    local label=$1 url=$2 auth=$3 n=0 rps p50 p99 slow p1 k
    run "$label-warm" "$url" "$auth" -c "$CONNS" -z 1s; read -r _ _ _ _ k _ <"$WORK/result"; n=$((n + k))
    run "$label-sat" "$url" "$auth" -c "$CONNS" -z "${S}s"; read -r rps _ _ _ k _ <"$WORK/result"; n=$((n + k))
    run "$label-rate" "$url" "$auth" -c "$CONNS" -q "$RATE" -z "${RS}s" --latency-correction
    read -r _ p50 p99 slow k _ <"$WORK/result"; n=$((n + k))
    run "$label-one" "$url" "$auth" -c 1 -z "${S}s"; read -r _ p1 _ _ k _ <"$WORK/result"; n=$((n + k))
    echo "$label $rps $p50 $p99 $slow $p1" >>"$WORK/std"
    echo "$n"
}

# keyward BUILD LABEL [env...]: a fresh Keyward of BUILD with three providers and keys; the
# standard measurements and the in-flight scenario; then the key.used check.
keyward() {
    local build=$1 label=$2; shift 2
    local bin=${BINS[$build]} data=$WORK/kw-$label port=$((PORT0 + 20)) pid answered=0 k
    rm -rf "$data"
    # No KEYWARD_LOG: the default a user gets, unless the variant sets one.
    env -u KEYWARD_LOG KEYWARD_DATA_DIR="$data" KEYWARD_LISTEN="127.0.0.1:$port" \
        KEYWARD_UPSTREAM_ALLOW=127.0.0.0/8 "$@" "$bin" serve >"$WORK/$label.log" 2>&1 &
    pid=$!
    PIDS+=($pid)
    wait_http "http://127.0.0.1:$port/readyz"
    local fast slow stream url=http://127.0.0.1:$port/v1/chat/completions
    fast=$(bench_key "$port" "$data" "$FAST" fast)
    slow=$(bench_key "$port" "$data" "$SLOW" slow)
    stream=$(bench_key "$port" "$data" "$STREAM" stream)
    k=$(standard "$label" "$url" "$fast"); answered=$((answered + k))
    k=$(inflight "inflight-$label" "$url" "$slow" "$IRATE" 1 "$pid"); answered=$((answered + k))
    k=$(inflight "stream-$label" "$url" "$stream" "$SRATE" 2 "$pid"); answered=$((answered + k))
    kill -TERM "$pid"
    for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then echo "Keyward ($label) did not stop within 60 s" >&2; exit 1; fi
    if ! KEYWARD_DATA_DIR=$data "$bin" audit export --type key.used >"$WORK/used.jsonl" 2>"$WORK/export.err"; then
        echo "keyward audit export failed ($label):" >&2; cat "$WORK/export.err" >&2
        exit 1
    fi
    local used
    used=$(wc -l <"$WORK/used.jsonl")
    echo "$label: key.used events $used, requests answered $answered" >>"$WORK/used"
    if [[ $used -ne $answered ]]; then
        echo "MISMATCH ($label): $used key.used events for $answered requests answered" | tee -a "$WORK/errors" >&2
    fi
    if grep -q "fewer client connections than configured" "$WORK/$label.log"; then
        grep "fewer client connections" "$WORK/$label.log" | head -1 >>"$WORK/used"
    fi
    rm -rf "$data"
}

for r in $(seq 1 "$ROUNDS"); do
    log "round $r: direct"
    standard "direct.$r" "http://127.0.0.1:$FAST/v1/chat/completions" sk-bench >/dev/null
    inflight "inflight-direct.$r" "http://127.0.0.1:$SLOW/v1/chat/completions" sk-bench "$IRATE" 1 "${PIDS[1]}" >/dev/null
    inflight "stream-direct.$r" "http://127.0.0.1:$STREAM/v1/chat/completions" sk-bench "$SRATE" 2 "${PIDS[2]}" >/dev/null
    log "round $r: nginx"
    standard "nginx.$r" "http://127.0.0.1:$NG/v1/chat/completions" sk-bench >/dev/null
    # shellcheck disable=SC2046
    inflight "inflight-nginx.$r" "http://127.0.0.1:$((NG + 1))/v1/chat/completions" sk-bench "$IRATE" 1 $(nginx_pids) >/dev/null
    # shellcheck disable=SC2046
    inflight "stream-nginx.$r" "http://127.0.0.1:$((NG + 2))/v1/chat/completions" sk-bench "$SRATE" 2 $(nginx_pids) >/dev/null
    for b in "${BUILDS[@]}"; do
        log "round $r: keyward ($b)"
        keyward "$b" "$b.$r"
        if [[ -n ${BENCH_WARN:-} ]]; then
            log "round $r: keyward ($b, KEYWARD_LOG=warn)"
            keyward "$b" "$b-warn.$r" KEYWARD_LOG=warn
        fi
    done
done

echo
python3 - "$WORK/std" "$WORK/inflight" "$RATE" "$CONNS" <<'PY'
import sys, collections
std = [l.split() for l in open(sys.argv[1])]
inf = [l.split() for l in open(sys.argv[2])]
rate, conns = sys.argv[3], sys.argv[4]
print(f"{'target':<14} {'req/s @'+conns+'c':>12} {'p50 @'+rate+'/s':>14} {'p99 @'+rate+'/s':>14} {'slowest':>10} {'p50 @1c':>10}")
for label, rps, p50, p99, slow, p1 in std:
    print(f"{label:<14} {rps:>12} {p50:>11} ms {p99:>11} ms {slow:>7} ms {p1:>7} ms")
print()
print(f"{'in flight':<20} {'req/s':>7} {'p50':>10} {'p99':>10} {'slowest':>10} {'answered':>9} {'in flight':>9} {'KiB/req':>8} {'CPU/req':>9}")
for name, rps, p50, p99, slow, n, fl, kib, cpu in inf:
    print(f"{name:<20} {rps:>7} {p50:>7} ms {p99:>7} ms {slow:>7} ms {n:>9} {fl:>9} {kib:>8} {cpu:>6} us")
# Ratios per round, against that round's direct and nginx.
by = {l[0]: l for l in std}
ib = {l[0]: l for l in inf}
print()
for label, rps, p50, p99, slow, p1 in std:
    if label.startswith(("direct.", "nginx.")):
        continue
    r = label.rsplit(".", 1)[1]
    d, n = by[f"direct.{r}"], by[f"nginx.{r}"]
    line = (f"{label:<14} Keyward/nginx {float(rps)/float(n[1]):.2f}x (target >= 0.5x); "
            f"added p99 {(float(p99)-float(d[3]))*1000:+.0f} us (target <= +500); "
            f"slowest {float(slow):.1f} ms (target <= 5); "
            f"added p50 @1c {(float(p1)-float(d[5]))*1000:+.0f} us (target <= +50)")
    for kind in ("inflight", "stream"):
        k, dd = ib.get(f"{kind}-{label}"), ib.get(f"{kind}-direct.{r}")
        if k and dd:
            line += f"; {kind} added p99 {(float(k[3])-float(dd[3])):+.1f} ms (target <= +5)"
    print(line)
PY
echo
cat "$WORK/used"
if [[ -s $WORK/errors ]]; then
    echo
    echo "FAILURES (the figures above include them):"
    cat "$WORK/errors"
    FAILED=1
else
    echo "ok: every request was answered 200, and every answered request is in each Keyward's log"
fi
if [[ $SMOKE == 1 ]]; then
    echo "SMOKE MODE: seconds per measurement on a shared machine. It checks that this script"
    echo "works and that every answered request left one key.used; it does NOT check the"
    echo "targets, which are printed for information only."
fi
exit "$FAILED"
