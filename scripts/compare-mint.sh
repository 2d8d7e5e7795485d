#!/usr/bin/env bash
# Durable mint throughput of several builds side by side (issue 22's goal: with the audit entry,
# at least 0.90 of before the trail): section 1 of `make bench-cluster` (`Store::record_token`,
# 1 client: 2,000 records, then 8 clients: 8 x 500), each binary run in turn, the order reversed
# every other round, each run stopped once its rows are printed (the rest of the bench is not run).
# Run it on a quiet host: this is wall-clock, fsync included.
#
#   scripts/compare-mint.sh ROUNDS BIN...      e.g. scripts/compare-mint.sh 3 /tmp/cluster-012f977 \
#                                                   /work/bin/cluster-before /tmp/cluster-head
#
# A BIN is the `cluster` bench binary of a build: in a worktree of the commit,
# `CARGO_TARGET_DIR=... cargo bench -p tessera-store --bench cluster --no-run` names it
# ("Executable benches/cluster.rs (.../release/deps/cluster-<hash>)"); copy it out before the next
# build. PG=1 waits for the PostgreSQL row too (redb's comes first). Prints one line per run (round,
# binary, redb 1 client and 8 clients in records/s[, PostgreSQL's]), then the medians and each
# binary's ratio to the first one.
set -euo pipefail
rounds=${1:?rounds}
shift
[ $# -ge 1 ] || { echo "usage: $0 ROUNDS BIN..." >&2; exit 2; }
cd "$(dirname "$0")/../crates/store"
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
want='^| redb |'
[ "${PG:-0}" = 1 ] && want='^| PostgreSQL |'
# run BIN: the section 1 rows of one run, as "redb1 redb8[ pg1 pg8]".
run() {
    "$1" --bench >"$work/out" 2>"$work/err" &
    pid=$!
    while ! grep -q "$want" "$work/out"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$1 stopped before its rows:" >&2
            cat "$work/err" >&2
            exit 1
        fi
        sleep 0.2
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
    awk -F'|' '/^\| (redb|PostgreSQL) \|/ {gsub(/[^0-9]/, "", $3); gsub(/[^0-9]/, "", $4); printf "%s %s ", $3, $4}' "$work/out"
}
for r in $(seq "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order=("$@"); else order=(); for ((i = $#; i >= 1; i--)); do order+=("${!i}"); done; fi
    for bin in "${order[@]}"; do
        echo "$r $bin $(run "$bin")" | tee -a "$work/all"
    done
done
echo
echo "medians (records/s) and ratio to $1:"
python3 - "$work/all" "$@" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
bins = sys.argv[2:]
med = {b: [statistics.median(float(r[i]) for r in rows if r[1] == b) for i in range(2, len(rows[0]))] for b in bins}
names = ["redb 1 client", "redb 8 clients", "PostgreSQL 1 client", "PostgreSQL 8 clients"]
for b in bins:
    cells = [f"{names[i]} {v:,.0f} ({v / med[bins[0]][i]:.2f})" for i, v in enumerate(med[b])]
    print(f"{b}: " + ", ".join(cells))
PY
