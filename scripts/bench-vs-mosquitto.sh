#!/usr/bin/env bash
# The load of issue 10, against mosquitto (MQTT QoS 1) and the BIMIP reference server, in one run.
#
# Installs mosquitto from the distribution's packages if it is missing, builds `bimip` and the MQTT load
# (examples/mqtt_load.rs, rumqttc) in release mode, pins each server to SERVER_CPU and each load to LOAD_CPU,
# and runs, one after the other: both flat out, both at RATE msgs/s, then `bimip bench --idle`. Every run writes
# its figures as JSON into OUT; the script ends with a markdown table of them (scripts/bench_table.py).
#
# Settings (environment): PAIRS=100 PAYLOAD=100 INFLIGHT=100 WARMUP=3 DURATION=10 RATE=10000 IDLE=10000
# STORE=memory (memory|durable: the reference server's chat store) TRANSPORT=ws (ws|tcp) SERVER_CPU=0
# LOAD_CPU=1 MQTT_PORT=18830 OUT=$CARGO_TARGET_DIR/bench-load/<UTC time> (or target/...).
set -euo pipefail
cd "$(dirname "$0")/.."

PAIRS=${PAIRS:-100}
PAYLOAD=${PAYLOAD:-100}
INFLIGHT=${INFLIGHT:-100}
WARMUP=${WARMUP:-3}
DURATION=${DURATION:-10}
RATE=${RATE:-10000}
IDLE=${IDLE:-10000}
STORE=${STORE:-memory}
TRANSPORT=${TRANSPORT:-ws}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
MQTT_PORT=${MQTT_PORT:-18830}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET/bench-load/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    echo "installing mosquitto from the distribution's packages" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

cargo build --release --locked --bin bimip --example mqtt_load
BIMIP=$TARGET/release/bimip
MQTT=$TARGET/release/examples/mqtt_load

# 10,000 idle connections need as many descriptors in the bench and in the server.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# mosquitto as a plain broker: no persistence (it does not write messages to disk), QoS 1 windows as wide as
# the publishers' (--inflight), no cap on queued messages, so a slow subscriber delays instead of losing.
cat > "$OUT/mosquitto.conf" <<CONF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages $INFLIGHT
max_queued_messages 0
set_tcp_nodelay true
log_dest none
CONF
taskset -c "$SERVER_CPU" "$MOSQUITTO" -c "$OUT/mosquitto.conf" &
MOSQUITTO_PID=$!
trap 'kill "$MOSQUITTO_PID" 2>/dev/null || true' EXIT
sleep 1

{
    echo "date: $(date -u +%FT%TZ)"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) x $(nproc)"
    echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "mosquitto: $("$MOSQUITTO" -h 2>/dev/null | head -1)"
    echo "settings: PAIRS=$PAIRS PAYLOAD=$PAYLOAD INFLIGHT=$INFLIGHT WARMUP=$WARMUP DURATION=$DURATION RATE=$RATE IDLE=$IDLE STORE=$STORE TRANSPORT=$TRANSPORT SERVER_CPU=$SERVER_CPU LOAD_CPU=$LOAD_CPU"
} | tee "$OUT/machine.txt"

common=(--pairs "$PAIRS" --payload "$PAYLOAD" --inflight "$INFLIGHT" --warmup "$WARMUP" --duration "$DURATION")
bimip_bench() {
    taskset -c "$LOAD_CPU" "$BIMIP" bench --server-cpus "$SERVER_CPU" --store "$STORE" --transport "$TRANSPORT" "$@"
}
mqtt_load() {
    taskset -c "$LOAD_CPU" "$MQTT" --port "$MQTT_PORT" --broker-pid "$MOSQUITTO_PID" "$@"
}

echo "== mosquitto QoS 1, flat out" >&2
mqtt_load "${common[@]}" --json "$OUT/mqtt-flat.json"
echo "== bimip chat ($STORE store, $TRANSPORT), flat out" >&2
bimip_bench "${common[@]}" --json "$OUT/bimip-flat.json"
echo "== mosquitto QoS 1, $RATE msgs/s" >&2
mqtt_load "${common[@]}" --rate "$RATE" --json "$OUT/mqtt-rate.json"
echo "== bimip chat ($STORE store, $TRANSPORT), $RATE msgs/s" >&2
bimip_bench "${common[@]}" --rate "$RATE" --json "$OUT/bimip-rate.json"
echo "== bimip idle: $IDLE WebSocket connections" >&2
taskset -c "$LOAD_CPU" "$BIMIP" bench --server-cpus "$SERVER_CPU" --store "$STORE" --idle "$IDLE" \
    --json "$OUT/bimip-idle.json"

echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"
python3 scripts/bench_table.py "$OUT" | tee "$OUT/table.md"
echo "figures in $OUT" >&2
