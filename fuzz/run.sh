#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20) on stable Rust (no
# sanitizer: `-s none`), seeding the decoder's corpus from vectors/. A finding
# fails the run; copy it to fuzz/regressions/<target>/ once fixed.
#   fuzz/run.sh            # CI: short, bounded
#   fuzz/run.sh 600        # a longer session per target
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/bimip/fuzz-target}"

# Seed corpus: every vector's bytes, one file each.
mkdir -p corpus/decode_stanza
python3 - <<'PY'
import glob, hashlib, re
for path in glob.glob("../vectors/*.yaml"):
    for hexstr in re.findall(r'^\s*hex:\s*"?([0-9a-fA-F]*)"?\s*$', open(path).read(), re.M):
        data = bytes.fromhex(hexstr)
        open("corpus/decode_stanza/" + hashlib.sha1(data).hexdigest(), "wb").write(data)
PY

for target in decode_stanza tcp_frames engine; do
    mkdir -p "corpus/$target"
    echo "== fuzz $target for ${seconds}s"
    log="$(mktemp)"
    if ! cargo fuzz run -s none "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "fuzz $target found a failure (input in fuzz/artifacts/$target/)"
        exit 1
    fi
    grep -E "^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)|^#[0-9]+ +DONE" "$log" || true
    rm -f "$log"
done
