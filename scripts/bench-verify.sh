#!/usr/bin/env bash
# The offline verifier's throughput and peak memory: generates a valid chained export of
# N events (default 10,000,000; about 770 bytes a line, ~7.7 GB at 10M) with a signed
# checkpoint of its head, then runs `keyward-verify` on it under /usr/bin/time -v and
# prints events/s and peak RSS. The export is deleted afterwards (KEEP=1 keeps it).
#
#   scripts/bench-verify.sh [N] [DIR]
set -euo pipefail

N=${1:-10000000}
DIR=${2:-$(mktemp -d "${TMPDIR:-/tmp}/keyward-bench-verify.XXXXXX")}
mkdir -p "$DIR"
cd "$(dirname "$0")/.."

cargo build --release -q -p keyward-events --bin keyward-verify --example gen_export
BIN=${CARGO_TARGET_DIR:-target}/release

cleanup() { [ "${KEEP:-0}" = 1 ] || rm -f "$DIR/export.ndjson"; }
trap cleanup EXIT

echo "generating $N events in $DIR ..." >&2
gen_start=$(date +%s.%N)
"$BIN/examples/gen_export" "$N" "$DIR/export.ndjson" "$DIR/checkpoint" "$DIR/key.pub"
gen_end=$(date +%s.%N)
bytes=$(stat -c %s "$DIR/export.ndjson")

# Read the file once first so that the figure is the verifier's, not the disk's (when it
# fits in the page cache).
cat "$DIR/export.ndjson" >/dev/null

/usr/bin/time -v "$BIN/keyward-verify" --export "$DIR/export.ndjson" \
    --checkpoint "$DIR/checkpoint" --public-key "$DIR/key.pub" --complete \
    >"$DIR/verify.out" 2>"$DIR/time.out"
cat "$DIR/verify.out"

wall=$(grep 'Elapsed (wall clock)' "$DIR/time.out" | awk '{print $NF}')
rss_kb=$(grep 'Maximum resident set size' "$DIR/time.out" | awk '{print $NF}')
user=$(grep 'User time' "$DIR/time.out" | awk '{print $NF}')
sys=$(grep 'System time' "$DIR/time.out" | awk '{print $NF}')
secs=$(python3 -c "
p='$wall'.split(':'); s=0
for x in p: s=s*60+float(x)
print(s)")
python3 - <<PY
n=$N; secs=$secs; rss=$rss_kb; b=$bytes; gen=$gen_end-$gen_start; cpu=$user+$sys
print(f"events:        {n:,}")
print(f"export size:   {b/1e9:.2f} GB ({b/n:.0f} bytes/event)")
print(f"generate:      {gen:.1f} s")
print(f"verify:        {secs:.1f} s  = {n/secs:,.0f} events/s, {b/secs/1e6:.0f} MB/s")
print(f"CPU time:      {cpu:.1f} s  = {n/cpu:,.0f} events per CPU-second (one core)")
print(f"peak RSS:      {rss/1024:.1f} MiB")
PY
