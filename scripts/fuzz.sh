#!/usr/bin/env bash
# Coverage-guided fuzzing of every target (cargo-fuzz + libFuzzer on the stable toolchain:
# `-s none`, no sanitizer). Runs each target for FUZZ_SECONDS (default 60) over the committed
# corpus, JOBS targets at a time (default: one per core), then merges what was new into
# fuzz/corpus/<target> (cargo fuzz cmin keeps it minimal). Logs and the executions per target go
# to target/fuzz-logs/; a crash leaves its input under fuzz/artifacts/<target>/ and fails.
#   FUZZ_SECONDS=600 scripts/fuzz.sh            # every target, ten minutes each
#   scripts/fuzz.sh caveat envelope              # some targets
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${FUZZ_SECONDS:-60}
JOBS=${JOBS:-$(nproc)}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    mapfile -t TARGETS < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^tessera-fuzz-targets$')
fi
LOGS=target/fuzz-logs
mkdir -p "$LOGS"
cargo fuzz build -s none -O

run_one() {
    local t=$1 scratch=target/fuzz-scratch/$1
    rm -rf "$scratch" && mkdir -p "$scratch"
    # New inputs go to the scratch directory; the committed corpus is only read.
    if cargo fuzz run -s none -O "$t" "$scratch" "fuzz/corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -print_final_stats=1 >"$LOGS/$t.log" 2>&1; then
        echo "$t: $(grep -E '^Done [0-9]+ runs' "$LOGS/$t.log" | tail -1)"
    else
        echo "$t: FAILED (see $LOGS/$t.log and fuzz/artifacts/$t/)"
        return 1
    fi
}

status=0
pids=()
for t in "${TARGETS[@]}"; do
    run_one "$t" &
    pids+=($!)
    if [ ${#pids[@]} -ge "$JOBS" ]; then
        wait "${pids[0]}" || status=1
        pids=("${pids[@]:1}")
    fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done

# Merge the new inputs into the committed corpus, minimised.
for t in "${TARGETS[@]}"; do
    cp -n target/fuzz-scratch/"$t"/* "fuzz/corpus/$t/" 2>/dev/null || true
    cargo fuzz cmin -s none -O "$t" "fuzz/corpus/$t" >"$LOGS/$t.cmin.log" 2>&1 || status=1
    echo "$t: corpus $(ls "fuzz/corpus/$t" | wc -l) inputs"
done
exit $status
