#!/usr/bin/env bash
# A BIMIP cluster on loopback: a 3-node NATS cluster with JetStream and 3 `bimip serve` nodes linked through it.
#
#   scripts/cluster.sh up       start it (prints the nodes' URLs and how to mint a token)
#   scripts/cluster.sh down     stop what `up` started, by PID
#   scripts/cluster.sh status   which of its processes run
#   scripts/cluster.sh restart  stop the bimip nodes gracefully (SIGINT) and start them again; NATS stays
#   scripts/cluster.sh kill     kill -9 the bimip nodes (NATS stays); `start` starts them again
#
# Settings (environment): BIMIP_CLUSTER_DIR (default ./bimip-cluster: logs, data, PIDs), BIMIP_BIN (default: a
# release build, made if missing), NODES (default 3), BASE_PORT (default 7420: node i serves WebSocket on
# BASE_PORT+10i, TCP +1, admin +2, gRPC +3), NATS_PORT (default 4222: NATS node i takes client port NATS_PORT+i,
# route port NATS_PORT+2000+i), BIMIP_CONFIG (a TOML settings file for every node), JWT_ALG, JWT_KEY and
# JWT_SIGNING_KEY (default: one development EdDSA key made in the cluster's directory). NATS is Debian's
# `nats-server` (apt-get install nats-server).
set -euo pipefail

dir="${BIMIP_CLUSTER_DIR:-./bimip-cluster}"
nodes="${NODES:-3}"
base="${BASE_PORT:-7420}"
nats_port="${NATS_PORT:-4222}"

names() { for i in $(seq 0 $((nodes - 1))); do printf 'n%s\n' "$i"; done; }

# Waits until something listens on 127.0.0.1:$1 (at most 30 s: a new NATS cluster elects its JetStream leader
# before the bimip nodes can start).
wait_port() {
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1 after 30 s; see $dir/*.log" >&2
    return 1
}

bimip_bin() {
    if [ -n "${BIMIP_BIN:-}" ]; then
        echo "$BIMIP_BIN"
        return
    fi
    local target="${CARGO_TARGET_DIR:-$(dirname "$0")/../target}"
    if [ ! -x "$target/release/bimip" ]; then
        echo "building bimip (release)..." >&2
        (cd "$(dirname "$0")/.." && cargo build --release --quiet --bin bimip) >&2
    fi
    echo "$target/release/bimip"
}

up() {
    command -v nats-server >/dev/null || {
        echo "nats-server is not installed (Debian: apt-get install nats-server)" >&2
        exit 1
    }
    if [ -s "$dir/nats.pids" ]; then
        echo "$dir/nats.pids exists: a cluster may be running; run '$0 down' first" >&2
        exit 1
    fi
    mkdir -p "$dir"
    : > "$dir/nats.pids"
    local routes="" i
    for i in $(seq 0 $((nodes - 1))); do
        routes="${routes:+$routes,}nats://127.0.0.1:$((nats_port + 2000 + i))"
    done
    for i in $(seq 0 $((nodes - 1))); do
        local clustering=()
        # One NATS node is no cluster: JetStream would wait for peers that never come.
        [ "$nodes" = 1 ] || clustering=(--cluster_name bimip --cluster "nats://127.0.0.1:$((nats_port + 2000 + i))"
            --routes "$routes")
        nats-server -a 127.0.0.1 -p $((nats_port + i)) -n "nats-$i" -js -sd "$dir/nats-$i" "${clustering[@]}" \
            > "$dir/nats-$i.log" 2>&1 &
        echo "$!" >> "$dir/nats.pids"
    done
    for i in $(seq 0 $((nodes - 1))); do
        wait_port $((nats_port + i))
    done
    start_nodes
    local bimip
    bimip="$(bimip_bin)"
    echo "Backend API: any node's gRPC address, with the secret in $dir/admin-secret"
    echo "Mint a token (any node accepts it):"
    if [ -z "${JWT_KEY:-}" ]; then
        echo "  $bimip token --eid alice@example.com --device phone --data-dir $dir/keys"
    else
        echo "  (tokens signed by the key of $JWT_KEY)"
    fi
    echo "Stop: $0 down"
}

nats_urls() {
    local urls="" i
    for i in $(seq 0 $((nodes - 1))); do
        urls="${urls:+$urls,}nats://127.0.0.1:$((nats_port + i))"
    done
    echo "$urls"
}

# Starts the bimip nodes (NATS is up) and waits until each listens.
start_nodes() {
    local bimip urls list i=0 name
    bimip="$(bimip_bin)"
    urls="$(nats_urls)"
    list="$(names | paste -sd, -)"
    local keys=()
    if [ -n "${JWT_KEY:-}" ]; then
        keys=(--jwt-alg "${JWT_ALG:?JWT_ALG goes with JWT_KEY}" --jwt-key "$JWT_KEY")
        [ -z "${JWT_SIGNING_KEY:-}" ] || keys+=(--jwt-signing-key "$JWT_SIGNING_KEY")
    else
        # One key for the whole service: every node verifies every token.
        "$bimip" token --eid setup@example.com --device setup --data-dir "$dir/keys" > /dev/null
        keys=(--jwt-alg EdDSA --jwt-key "$dir/keys/dev-ed25519.pub.pem" --jwt-signing-key "$dir/keys/dev-ed25519.pem")
    fi
    local config=()
    [ -z "${BIMIP_CONFIG:-}" ] || config=(--config "$BIMIP_CONFIG")
    # One admin secret for the whole service: a node forwards a backend call to the user's home node with it.
    if [ ! -s "$dir/admin-secret" ]; then
        (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$dir/admin-secret" && echo >> "$dir/admin-secret")
    fi
    if [ -s "$dir/nodes.pids" ]; then
        local pid
        for pid in $(cat "$dir/nodes.pids"); do
            if ours "$pid"; then
                echo "bimip nodes of $dir are running (PID $pid); '$0 kill' or '$0 down' first" >&2
                exit 1
            fi
        done
    fi
    : > "$dir/nodes.pids"
    for name in $(names); do
        local port=$((base + 10 * i))
        "$bimip" serve "${config[@]}" --node "$name" --cluster "$urls" --cluster-nodes "$list" \
            --ws "127.0.0.1:$port" --tcp "127.0.0.1:$((port + 1))" --admin "127.0.0.1:$((port + 2))" \
            --grpc "127.0.0.1:$((port + 3))" --grpc-secret-file "$dir/admin-secret" --data-dir "$dir/$name" "${keys[@]}" \
            >> "$dir/$name.log" 2>&1 &
        echo "$!" >> "$dir/nodes.pids"
        i=$((i + 1))
    done
    i=0
    echo "BIMIP cluster of $nodes nodes (NATS $urls):"
    for name in $(names); do
        local port=$((base + 10 * i))
        wait_port "$port"
        wait_port $((port + 1))
        echo "  $name  ws://127.0.0.1:$port/ws  tcp://127.0.0.1:$((port + 1))  admin http://127.0.0.1:$((port + 2))"
        i=$((i + 1))
    done
}

# Whether PID $1 is alive and one of ours (nats-server or bimip): a PID file that outlived its processes must not
# make us signal whatever took the number since.
ours() {
    [ -d "/proc/$1" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ] &&
        tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -qE '(^|/)(nats-server|bimip) '
}

# Stops the processes listed in $1 with signal $2, waiting for each to be gone (kill -9 after 5 s).
stop_pids() {
    [ -s "$1" ] || return 0
    local pid
    for pid in $(cat "$1"); do
        if ours "$pid"; then kill "-$2" "$pid" 2>/dev/null || true; fi
    done
    for pid in $(cat "$1"); do
        for _ in $(seq 1 50); do
            ours "$pid" || break
            sleep 0.1
        done
        if ours "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
    done
    rm -f "$1"
}

down() {
    if [ ! -s "$dir/nodes.pids" ] && [ ! -s "$dir/nats.pids" ]; then
        echo "nothing to stop (no PID files in $dir)"
        return 0
    fi
    stop_pids "$dir/nodes.pids" TERM
    stop_pids "$dir/nats.pids" TERM
    echo "stopped"
}

status() {
    local pid
    cat "$dir/nats.pids" "$dir/nodes.pids" 2>/dev/null | while read -r pid; do
        if kill -0 "$pid" 2>/dev/null; then
            echo "$pid running: $(tr '\0' ' ' < "/proc/$pid/cmdline" | cut -c1-80)"
        else
            echo "$pid gone"
        fi
    done
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    restart)
        stop_pids "$dir/nodes.pids" INT
        start_nodes > /dev/null
        ;;
    kill) stop_pids "$dir/nodes.pids" KILL ;;
    start) start_nodes > /dev/null ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
