#!/usr/bin/env bash
# The whole conformance suite against a cluster on loopback: scripts/cluster.sh starts 3 NATS nodes and 3
# `bimip serve` nodes, bimip-conform gets every node as a target (each case's devices are placed round-robin
# over them) and restarts or kills the nodes for the restart cases; the cluster is stopped by PID at the end.
#
# Usage: scripts/conform_cluster.sh BIMIP_BINARY BIMIP_CONFORM_BINARY [bimip-conform options...]
# (e.g. --junit cluster.xml). Ports: BASE_PORT (default 27420), NATS_PORT (default 24222).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
export BIMIP_BIN="$1"
conform="$2"
shift 2
nodes="${NODES:-3}"
export NODES="$nodes"
export BASE_PORT="${BASE_PORT:-27420}" NATS_PORT="${NATS_PORT:-24222}"
BIMIP_CLUSTER_DIR="$(mktemp -d)"
export BIMIP_CLUSTER_DIR
# The limits the suite's built-in server runs with (conformance/builtin.rs): timers short enough for real time
# and a queue limit one can reach.
cat > "$BIMIP_CLUSTER_DIR/bimip.toml" <<'EOF'
[limits]
ping_interval_ms = 1000
auth_deadline_ms = 2000
queue_max_items = 20

# Restarts compact a shard's chat stream once it holds 50 operations past its snapshot: the suite's restart and kill
# cases then read state back from snapshots.
[cluster]
compact_after_ops = 50
EOF
export BIMIP_CONFIG="$BIMIP_CLUSTER_DIR/bimip.toml"
export JWT_ALG=RS256 JWT_KEY="$repo/tests/fixtures/keys/rs256-test.pub.pem" \
    JWT_SIGNING_KEY="$repo/tests/fixtures/keys/rs256-test.pem"
cluster="$repo/scripts/cluster.sh"
trap '"$cluster" down >/dev/null; rm -rf "$BIMIP_CLUSTER_DIR"' EXIT
"$cluster" up
targets=()
for i in $(seq 0 $((nodes - 1))); do
    port=$((BASE_PORT + 10 * i))
    targets+=(--target "ws://127.0.0.1:$port/ws" --target "tcp://127.0.0.1:$((port + 1))")
done
status=0
"$conform" "${targets[@]}" --jwt-key "$JWT_SIGNING_KEY" --jwt-alg RS256 --auth-deadline 2 --queue-limit 20 \
    --restart-cmd "$cluster restart" --kill-cmd "$cluster kill" --start-cmd "$cluster start" "$@" || status=$?
if [ "$status" != 0 ]; then
    for log in "$BIMIP_CLUSTER_DIR"/n*.log; do
        echo "== $log (last 40 lines)"
        tail -n 40 "$log"
    done
fi
exit "$status"
