#!/usr/bin/env bash
# Bytes on disk per event, split into the table, each index and the WAL: builds a log of
# lifecycle events and N `key.used` events as the proxy writes them through the real store
# (examples/log_bytes.rs), on a fresh SQLite file and, with a URL, on a scratch PostgreSQL
# database (created and dropped).
#
#   scripts/log-bytes.sh [N] [KEYS] [BATCH]                 # SQLite
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/test scripts/log-bytes.sh [N] [KEYS] [BATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --example log_bytes
BIN=${CARGO_TARGET_DIR:-target}/release/examples/log_bytes
"$BIN" "${1:-100000}" "${2:-1000}" "${3:-256}"
if [ -n "${DATABASE_URL:-}" ]; then
    "$BIN" "${1:-100000}" "${2:-1000}" "${3:-256}" --database-url "$DATABASE_URL"
fi
