#!/usr/bin/env bash
# `make cluster`: a local PostgreSQL and three Tessera nodes on loopback, to try a cluster.
#   nodes on http://127.0.0.1:8081, :8082, :8083; PostgreSQL on 127.0.0.1:55432
#   state under ./cluster-data (delete it to start over); Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh

DATA=${CLUSTER_DATA:-$PWD/cluster-data}
PGPORT=${PGPORT:-55432}
cargo build --release -q -p tessera-cli
mkdir -p "$DATA"
# Every node shares the master key: kept in a private file here, passed by environment.
[ -f "$DATA/master.key" ] || (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DATA/master.key")
export TESSERA_MASTER_KEY=$(cat "$DATA/master.key")
export TESSERA_DATABASE_URL="postgres://tessera:tessera@127.0.0.1:$PGPORT/tessera"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pg_stop "$DATA/pg"
}
trap cleanup EXIT INT TERM
pg_start "$DATA/pg" "$PGPORT"
echo "PostgreSQL on 127.0.0.1:$PGPORT (data in $DATA/pg)"

for n in 1 2 3; do
  target/release/tessera serve --listen "127.0.0.1:808$n" --data-dir "$DATA/node$n" \
    --public-url "http://127.0.0.1:808$n" >"$DATA/node$n.out" 2>"$DATA/node$n.log" &
  pids+=($!)
done
for n in 1 2 3; do
  for _ in $(seq 100); do grep -q "listening" "$DATA/node$n.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "listening" "$DATA/node$n.out" || { echo "node $n did not start:"; cat "$DATA/node$n.log"; exit 1; }
  echo "node $n on http://127.0.0.1:808$n (log: $DATA/node$n.log)"
done
if admin=$(grep -h -A1 "admin token" "$DATA"/node*.out | tail -1) && [ -n "$admin" ]; then
  (umask 077 && echo "$admin" >"$DATA/admin.token")
  echo "admin token (first start; also in $DATA/admin.token):"
  echo "$admin"
elif [ -f "$DATA/admin.token" ]; then
  echo "admin token: see $DATA/admin.token"
fi
cat <<TRY

Try: mint on node 1, verify on node 3, revoke on node 2, verify again on node 3:
  A=\$(cat $DATA/admin.token)
  T=\$(curl -s -X POST 127.0.0.1:8081/v1/tokens -H "Authorization: Bearer \$A" -H 'Content-Type: application/json' -d '{"subject":"alice"}')
  curl -s -X POST 127.0.0.1:8083/v1/verify -H 'Content-Type: application/json' -d "{\"token\":\"\$(echo \$T | python3 -c 'import json,sys;print(json.load(sys.stdin)["token"])')\"}"
Ctrl-C stops the nodes and PostgreSQL.
TRY
wait
