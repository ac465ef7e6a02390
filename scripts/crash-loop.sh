#!/usr/bin/env bash
# The crash harness for long runs: N kill -9 cycles (default 1000) of a release build.
#   scripts/crash-loop.sh 1000
#   KEYWARD_CRASH_SEED=1234 scripts/crash-loop.sh 50     # replay a failing run
# Each cycle drives concurrent management writes and proxy traffic against the real
# binary, kills it at a random moment, checks the log offline (no torn row, gap-free,
# `keyward audit verify`, every acknowledged write present), restarts it, and checks that
# the API reports what `keyward audit replay` of the log says. The last lines give the
# totals: cycles, writes acknowledged (none may be lost), and the usage window.
set -euo pipefail
cd "$(dirname "$0")/.."
cycles="${1:-1000}"
export KEYWARD_CRASH_CYCLES="$cycles"
exec cargo test --release --test it crash:: -- --nocapture --test-threads 1
