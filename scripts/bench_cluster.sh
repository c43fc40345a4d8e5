#!/usr/bin/env bash
# BENCHMARKS.md, "Cluster, part 2": `bimip bench` against a cluster of NODES nodes on loopback (scripts/cluster.sh,
# durable store: chats in JetStream), flat out and at 2,000 msgs/s, every connection to node 0; then stops it.
#
# Usage: NODES=3 scripts/bench_cluster.sh   (BIMIP_BIN: default the release build in the cargo target directory)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
export BIMIP_BIN="${BIMIP_BIN:-$target/release/bimip}"
[ -x "$BIMIP_BIN" ] || cargo build --release --bin bimip --manifest-path "$repo/Cargo.toml"
export NODES="${NODES:-3}" BASE_PORT="${BASE_PORT:-37420}" NATS_PORT="${NATS_PORT:-34222}"
BIMIP_CLUSTER_DIR="$(mktemp -d)"
export BIMIP_CLUSTER_DIR
printf '[limits]\nrate_per_sec = 1000000\nrate_burst = 1000000\n' > "$BIMIP_CLUSTER_DIR/bimip.toml"
export BIMIP_CONFIG="$BIMIP_CLUSTER_DIR/bimip.toml"
trap '"$repo/scripts/cluster.sh" down >/dev/null; rm -rf "$BIMIP_CLUSTER_DIR"' EXIT
"$repo/scripts/cluster.sh" up > "$BIMIP_CLUSTER_DIR/up.log"
for rate in "" "--rate 2000"; do
    # shellcheck disable=SC2086
    "$BIMIP_BIN" bench --url "ws://127.0.0.1:$BASE_PORT/ws" --pairs 100 --duration 10 --warmup 3 $rate \
        --data-dir "$BIMIP_CLUSTER_DIR/keys" 2>&1 | grep -A7 '^chat:'
done
