#!/usr/bin/env bash
# The crash harness for long runs: N kill -9 cycles (default 1000).
#   scripts/crash-loop.sh 1000
#   KEYWARD_CRASH_SEED=1234 scripts/crash-loop.sh 50     # replay a run's kill moments
#   KEYWARD_CRASH_PROFILE=debug scripts/crash-loop.sh    # the debug build (no release build)
# Each cycle drives concurrent management writes and proxy traffic against the real
# binary, kills it at a random moment, checks the log offline (no torn row, gap-free,
# `keyward audit verify`, every acknowledged write present), restarts it, and checks that
# the API reports what `keyward audit replay` of the log says. The last line gives the
# totals: cycles, writes acknowledged (none may be lost), and the usage window.
set -euo pipefail
cd "$(dirname "$0")/.."
export KEYWARD_CRASH_CYCLES="${1:-1000}"
profile=(--release)
[ "${KEYWARD_CRASH_PROFILE:-release}" = debug ] && profile=()
exec cargo test "${profile[@]}" --test it crash:: -- --nocapture --test-threads 1
