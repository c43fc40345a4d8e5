#!/usr/bin/env bash
# Runs fuzz targets for SECONDS each (default 20) on stable Rust (no sanitizer:
# `-s none`), one after the other, from seed corpora that are regenerated from
# the repository (vectors/, a real queue store: bimip::fuzz::seeds). A finding
# fails the run; once fixed, copy it to fuzz/regressions/<target>/.
#   fuzz/run.sh                      # CI: every target, short and bounded
#   fuzz/run.sh 600 queue_recovery   # a longer session of one target
# Environment: FUZZ_TARGET_DIR (the fuzz build, default ~/.cache/bimip/fuzz-target),
# CARGO_TARGET_DIR (the main crate's build, used to write the seeds; default
# ~/.cache/bimip/target), FUZZ_CORPUS_DIR (default fuzz/corpus), FUZZ_LOG_DIR
# (keep each target's libFuzzer log there).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decode_stanza tcp_frames engine queue_recovery)
corpus="${FUZZ_CORPUS_DIR:-$PWD/corpus}"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet

# Seeds, written by the test that also checks each one passes its driver.
(cd .. && BIMIP_WRITE_SEEDS="$corpus" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bimip/target}" \
    cargo test --locked --quiet --test fuzz_regressions seed_corpora_pass_their_drivers >/dev/null)

export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/bimip/fuzz-target}"
cargo fuzz build -s none

for target in "${targets[@]}"; do
    mkdir -p "$corpus/$target"
    echo "== fuzz $target for ${seconds}s"
    log="$(mktemp)"
    if ! cargo fuzz run -s none "$target" "$corpus/$target" -- \
        -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "fuzz $target found a failure (input in fuzz/artifacts/$target/)"
        exit 1
    fi
    # The last status line has libFuzzer's coverage (cov: edges, ft: features).
    grep -E "^#[0-9]+[[:space:]]+DONE" "$log" | tail -n 1 || true
    grep -E "^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)" "$log" || true
    if [ -n "${FUZZ_LOG_DIR:-}" ]; then mkdir -p "$FUZZ_LOG_DIR" && cp "$log" "$FUZZ_LOG_DIR/$target.log"; fi
    rm -f "$log"
done
