# Shared by the benchmark scripts (sourced, not run): waiting for a server, and a
# provider pointing at the mock upstream with a key for it on a fresh Keyward.

# wait_http URL [tries]: until URL answers 2xx, 0.1 s between tries (default 300: 30 s).
wait_http() {
    for _ in $(seq 1 "${2:-300}"); do
        curl -fs -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "$1 did not come up" >&2
    return 1
}

# bench_key KEYWARD_PORT DATA_DIR MOCK_PORT [NAME]: creates, with the bootstrap admin key
# in DATA_DIR, a provider NAME (default `mock`) for the mock on MOCK_PORT (`verify: false`)
# and a chat key bound to it; prints the key's secret.
bench_key() {
    local api=http://127.0.0.1:$1/api/v1 admin provider
    admin=$(cat "$2/initial-admin-key")
    provider=$(curl -fsS "$api/providers" -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
        -d "{\"name\":\"${4:-mock}\",\"kind\":\"openai\",\"base_url\":\"http://127.0.0.1:$3/v1\",\"api_key\":\"sk-bench\",\"verify\":false}" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    curl -fsS "$api/keys" -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
        -d "{\"name\":\"${4:-bench}\",\"provider_id\":\"$provider\",\"expires_in\":\"1d\",\"scopes\":[\"chat\"]}" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])'
}
