#!/usr/bin/env bash
# Runs examples/backend/admin_client.py (Python grpcio) against a `bimip serve` it starts on loopback, then stops
# the server by PID. Usage: scripts/backend_example.sh PYTHON BIMIP_BINARY
set -euo pipefail
python="$1"
bimip="$2"
dir="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
"$bimip" serve --data-dir "$dir/data" --ws 127.0.0.1:0 --tcp 127.0.0.1:0 --no-admin --grpc 127.0.0.1:0 \
    > "$dir/serve.log" 2>&1 &
pid=$!
address=""
for _ in $(seq 1 100); do
    address="$(sed -n 's|^  gRPC       http://\([^ ]*\).*|\1|p' "$dir/serve.log")"
    [ -n "$address" ] && break
    sleep 0.1
done
if [ -z "$address" ]; then
    cat "$dir/serve.log"
    echo "bimip serve did not start its gRPC listener" >&2
    exit 1
fi
"$python" "$(dirname "$0")/../examples/backend/admin_client.py" "$address" "$dir/data/admin-secret"
# Every call is audited in the server's log, refusals included.
for line in 'call="MintToken" eid="alice@example.com" outcome="ok"' 'outcome="unauthenticated"' \
    'call="MintToken" eid="not an eid" outcome="refused"'; do
    if ! grep -qF "$line" "$dir/serve.log"; then
        cat "$dir/serve.log"
        echo "no audit line with: $line" >&2
        exit 1
    fi
done
echo "audit lines: $(grep -c 'bimip::audit' "$dir/serve.log")"
