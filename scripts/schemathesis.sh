#!/usr/bin/env bash
# Schemathesis against the committed openapi/keyward.json and a live `keyward serve`.
#
#   scripts/schemathesis.sh [max examples per operation, default 40]
#
# Builds the binary, starts it on a temporary data dir and a free loopback port, reads the
# bootstrap admin key from the data dir, and runs schemathesis with that key. Fails on any
# 5xx, any response that breaks its documented schema, status code or content type.
#
# The server cannot reach the network: every outbound request (provider checks, webhooks)
# goes through HTTP(S)_PROXY, which points at a closed loopback port, so a random base_url
# the generator invents fails at once instead of resolving or hanging.
set -euo pipefail
cd "$(dirname "$0")/.."

examples="${1:-40}"
version=4.32.5
venv=.venv-st

if [ ! -x "$venv/bin/schemathesis" ] || [ "$("$venv/bin/schemathesis" --version 2>/dev/null | awk '{print $NF}')" != "$version" ]; then
  echo "== schemathesis $version into $venv (once)"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$version"
fi

# KEYWARD_BIN: a binary already built (skips the build).
bin="${KEYWARD_BIN:-}"
if [ -z "$bin" ]; then
  echo "== build keyward"
  cargo build --quiet --bin keyward
  bin="${CARGO_TARGET_DIR:-target}/debug/keyward"
fi

data="$(mktemp -d)"
log="$data/server.log"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# A port nothing listens on: the closed proxy.
dead="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$data"
}
trap cleanup EXIT

echo "== keyward serve on 127.0.0.1:$port, data in $data"
env -u NO_PROXY -u no_proxy \
  HTTP_PROXY="http://127.0.0.1:$dead" HTTPS_PROXY="http://127.0.0.1:$dead" \
  ALL_PROXY="http://127.0.0.1:$dead" \
  http_proxy="http://127.0.0.1:$dead" https_proxy="http://127.0.0.1:$dead" \
  all_proxy="http://127.0.0.1:$dead" \
  KEYWARD_LOG=warn \
  "$bin" --data-dir "$data" serve --listen "127.0.0.1:$port" >"$log" 2>&1 &
pid=$!

for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
    break
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "keyward exited during start:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || { echo "keyward did not become ready" >&2; cat "$log" >&2; exit 1; }

key="$(head -n1 "$data/initial-admin-key")"
me="$(curl -fsS -H "Authorization: Bearer $key" "http://127.0.0.1:$port/api/v1/me")"
# The hooks keep the run from expiring its own key or disabling its own user.
export KEYWARD_ST_KEY_ID="$(printf '%s' "$me" | python3 -c 'import json, sys; print(json.load(sys.stdin)["key_id"])')"
export KEYWARD_ST_USER_ID="$(printf '%s' "$me" | python3 -c 'import json, sys; print(json.load(sys.stdin)["user_id"])')"

# Objects for the hooks to point ids at: providers (never verified: nothing is reachable),
# users, and keys on them.
api() {
  curl -fsS -X "$1" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    "http://127.0.0.1:$port/api/v1/$2" ${3:+--data "$3"}
}
field() { python3 -c 'import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[k]
print(v)' "$1"; }
providers=() users=() keys=()
for i in 1 2 3; do
  providers+=("$(api POST providers "{\"name\":\"st-p$i\",\"kind\":\"openai\",\"base_url\":\"https://api.openai.com/v1\",\"api_key\":\"sk-schemathesis-$i\",\"models\":[\"gpt-4o-mini\"],\"verify\":false}" | field id)")
  users+=("$(api POST users "{\"username\":\"st-user-$i\",\"role\":\"user\"}" | field id)")
done
for i in 1 2 3 4 5 6; do
  owner="${users[$((i % 3))]}"
  provider="${providers[$((i % 3))]}"
  keys+=("$(api POST keys "{\"name\":\"st-key-$i\",\"provider_id\":\"$provider\",\"owner_id\":\"$owner\",\"expires_in\":\"30d\",\"scopes\":[\"chat\",\"full\"]}" | field key.id)")
done
export KEYWARD_ST_PROVIDERS="${providers[*]}" KEYWARD_ST_USERS="${users[*]}" KEYWARD_ST_KEYS="${keys[*]}"
echo "== seeded ${#providers[@]} providers, ${#users[@]} users, ${#keys[@]} keys"

export SCHEMATHESIS_HOOKS=schemathesis_hooks
export PYTHONPATH="$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}"

echo "== schemathesis: $examples examples per operation"
set +e
"$venv/bin/schemathesis" --config-file scripts/schemathesis.toml run openapi/keyward.json \
  --url "http://127.0.0.1:$port" \
  --header "Authorization: Bearer $key" \
  --checks "${KEYWARD_ST_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance}" \
  --max-examples "$examples" \
  --seed 7 \
  --request-timeout 20 \
  --workers 1 \
  --no-color \
  --generation-database none \
  --report junit --report-dir "$data/report"
rc=$?
set -e

if [ -f "$data/report/junit.xml" ]; then
  python3 - "$data/report/junit.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
tests = sum(int(s.get("tests", 0)) for s in suites)
failures = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
print(f"== operations tested: {tests}, failing: {failures}")
EOF
fi
if [ "$rc" -ne 0 ]; then
  echo "== schemathesis found problems (exit $rc); the server log:" >&2
  tail -n 50 "$log" >&2
fi
exit "$rc"
