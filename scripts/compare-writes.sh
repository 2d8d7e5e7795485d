#!/usr/bin/env bash
# Durable writes on PostgreSQL, two builds of the cluster bench side by side (issue 25 goal 1):
# BEFORE (default /work/bin/cluster-before: the bench binary built at 8313543, before the
# one-round-trip write path) and AFTER (default: this tree's, built here). Each runs section 1 of
# `make bench-cluster` only (token records: redb and PostgreSQL with 1 and 8 clients on one node,
# then 3 nodes x 8 clients on one PostgreSQL), alternately, ROUNDS times (default 3), the order
# reversed every other round. Prints every run's rows, then the medians and the goal's ratios:
# AFTER's 24 clients on 3 nodes against BEFORE's 8 clients on one node (goal: at least 5x), and
# against redb's 8 clients of the same run (goal: at least 0.8).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
BEFORE=${BEFORE:-/work/bin/cluster-before}
if [ -z "${AFTER:-}" ]; then
  AFTER=$(cargo bench -p tessera-store --bench cluster --no-run 2>&1 | sed -n 's/.*Executable.*(\(.*\)).*/\1/p' | tail -1)
fi
[ -x "$BEFORE" ] || { echo "no BEFORE binary at $BEFORE (build the bench at 8313543 and copy it there)" >&2; exit 1; }
out=$(mktemp)
run() { # name binary
  # The BEFORE build knows no CLUSTER_WRITES_ONLY: stop it once section 1 is printed.
  (cd crates/store && CLUSTER_WRITES_ONLY=1 timeout 600 "$2" --bench 2>&1 | sed -n '1,/redb 8 clients:/p' | tee /dev/stderr |
    awk -v n="$1" -F'|' '
      /^\| PostgreSQL \| [0-9]+ records/ { gsub(/[^0-9]/, "", $4); print n, "pg8", $4 }
      /^\| redb \| [0-9]+ records/ { gsub(/[^0-9]/, "", $4); print n, "redb8", $4 }
      /3 nodes x 8 clients/ { gsub(/[^0-9]/, "", $4); print n, "pg24", $4, $5, $6 }
      /PostgreSQL, 1 node \| 1 / { print n, "pg1", $4, $5, $6 }') >>"$out" || true
  pkill -f "$(basename "$2")" 2>/dev/null || true
}
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then run before "$BEFORE"; run after "$AFTER"; else run after "$AFTER"; run before "$BEFORE"; fi
done
echo
cat "$out"
python3 - "$out" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
def med(build, what):
    v = [float(r[2]) for r in rows if r[0] == build and r[1] == what]
    return statistics.median(v) if v else float('nan')
for b in ("before", "after"):
    print(f"{b}: medians records/s - redb 8 clients {med(b,'redb8'):.0f}, PostgreSQL 1 client {med(b,'pg1'):.0f}, "
          f"8 clients {med(b,'pg8'):.0f}, 3 nodes x 8 clients {med(b,'pg24'):.0f}")
print(f"goal 1: after 24 clients / before 8 clients (one node) = {med('after','pg24')/med('before','pg8'):.2f} (at least 5)")
print(f"goal 1: after 24 clients / redb 8 clients, medians of the same runs = {med('after','pg24')/med('after','redb8'):.2f} (at least 0.8)")
PY
