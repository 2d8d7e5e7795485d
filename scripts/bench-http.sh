#!/usr/bin/env bash
# HTTP load benchmark: Tessera's verify and mint endpoints against an actix-web endpoint that
# returns a constant (and one that only parses the same JSON body), same load tool, same run,
# same machine. Installs wrk from Debian packages if missing. Prints a Markdown table.
#
#   scripts/bench-http.sh            (make bench-http)
#   DURATION=10s CONNECTIONS=64 THREADS=2 scripts/bench-http.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-2}
ROUNDS=${ROUNDS:-3}   # interleaved rounds; the table shows the median of each column

if ! command -v wrk >/dev/null; then
  echo "installing wrk (Debian package)" >&2
  { apt-get update -qq && apt-get install -y -qq wrk; } >/dev/null
fi
cargo build --release -q -p tessera-server --bin tessera-server --example constant_server

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  [ -n "${pgwork:-}" ] && { pg_stop "$pgwork/pg"; rm -rf "$pgwork"; }
  rm -rf "$work"
}
trap cleanup EXIT

wait_addr() { # file -> address printed after "listening on "
  for _ in $(seq 100); do
    addr=$(sed -n 's/.*listening on \(http:\/\/\)\{0,1\}\([0-9.:]*\).*/\2/p' "$1" | head -1)
    [ -n "$addr" ] && { echo "$addr"; return; }
    sleep 0.1
  done
  echo "server did not start: $(cat "$1")" >&2; exit 1
}

target/release/examples/constant_server 127.0.0.1:0 "$WORKERS" >"$work/constant.out" 2>&1 &
pids+=($!)
target/release/tessera-server --listen 127.0.0.1:0 --data-dir "$work/data" --rate-limit 0 \
  --workers "$WORKERS" >"$work/tessera.out" 2>"$work/tessera.err" &
pids+=($!)
# The same without the signature memo: every request computes the chain (the cold path).
target/release/tessera-server --listen 127.0.0.1:0 --data-dir "$work/cold" --rate-limit 0 \
  --workers "$WORKERS" --verify-memo 0 >"$work/cold.out" 2>"$work/cold.err" &
pids+=($!)
# A cluster node (PostgreSQL backend) beside the redb node: verification is from memory on both.
pgport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pgwork=$(mktemp -d) && chmod 755 "$pgwork"   # the postgres user must reach its data directory
pg_start "$pgwork/pg" "$pgport"
TESSERA_MASTER_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n') \
  target/release/tessera-server --listen 127.0.0.1:0 --data-dir "$work/cluster" --rate-limit 0 \
  --workers "$WORKERS" --database "postgres://tessera:tessera@127.0.0.1:$pgport/tessera" \
  >"$work/cluster.out" 2>"$work/cluster.err" &
pids+=($!)
const_addr=$(wait_addr "$work/constant.out")
tess_addr=$(wait_addr "$work/tessera.out")
admin=$(sed -n '2p' "$work/tessera.out")
cold_addr=$(wait_addr "$work/cold.out")
cold_admin=$(sed -n '2p' "$work/cold.out")
cluster_addr=$(wait_addr "$work/cluster.out")
cluster_admin=$(sed -n '2p' "$work/cluster.out")

# A 5-caveat token for alice, minted through the API.
mint_body='{"subject":"alice","operations":["read"],"resources":["issues/*"],"client_ips":["10.0.0.0/8"],"ttl":"1h"}'
token=$(curl -sf -X POST "http://$tess_addr/v1/tokens" -H "Authorization: Bearer $admin" \
  -H 'Content-Type: application/json' -d "$mint_body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
verify_body=$(printf '{"token":"%s","context":{"operation":"read","resource":"issues/42","client_ip":"10.1.2.3"}}' "$token")
# The same with a budget (far above what wrk can spend): every verification counts it and answers
# the RateLimit fields.
rltoken=$(curl -sf -X POST "http://$tess_addr/v1/tokens" -H "Authorization: Bearer $admin" \
  -H 'Content-Type: application/json' -d "${mint_body%\}},\"rate_limit\":\"1000000000/1h\"}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
rlverify_body=$(printf '{"token":"%s","context":{"operation":"read","resource":"issues/42","client_ip":"10.1.2.3"}}' "$rltoken")
curl -sf -D - -o /dev/null -X POST "http://$tess_addr/v1/verify" -H 'Content-Type: application/json' -d "$rlverify_body" \
  | grep -qi '^ratelimit-remaining' || { echo "the budgeted token got no RateLimit fields" >&2; exit 1; }
curl -sf -X POST "http://$tess_addr/v1/verify" -H 'Content-Type: application/json' -d "$verify_body" >/dev/null
ctoken=$(curl -sf -X POST "http://$cluster_addr/v1/tokens" -H "Authorization: Bearer $cluster_admin" \
  -H 'Content-Type: application/json' -d "$mint_body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
coldtoken=$(curl -sf -X POST "http://$cold_addr/v1/tokens" -H "Authorization: Bearer $cold_admin" \
  -H 'Content-Type: application/json' -d "$mint_body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
coldverify_body=$(printf '{"token":"%s","context":{"operation":"read","resource":"issues/42","client_ip":"10.1.2.3"}}' "$coldtoken")
cverify_body=$(printf '{"token":"%s","context":{"operation":"read","resource":"issues/42","client_ip":"10.1.2.3"}}' "$ctoken")
curl -sf -X POST "http://$cluster_addr/v1/verify" -H 'Content-Type: application/json' -d "$cverify_body" >/dev/null

lua() { # method body [auth] -> wrk script
  local auth_line=""
  if [ -n "${3:-}" ]; then auth_line="wrk.headers[\"Authorization\"] = \"Bearer $3\""; fi
  cat <<LUA
wrk.method = "$1"
wrk.body = [[$2]]
wrk.headers["Content-Type"] = "application/json"
$auth_line
done = function(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format("RESULT %.0f %.3f %.3f %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, non2xx,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
}
lua GET "" >"$work/get.lua"
lua POST "$verify_body" >"$work/parse.lua"
lua POST "$verify_body" >"$work/verify.lua"
lua POST "$cverify_body" >"$work/cverify.lua"
lua POST "$coldverify_body" >"$work/coldverify.lua"
lua POST "$rlverify_body" >"$work/rlverify.lua"
lua POST "{\"token\":\"$token\",\"alg\":\"HS256\"}" >"$work/jwt-hs256.lua"
lua POST "{\"token\":\"$token\",\"alg\":\"ES256\"}" >"$work/jwt-es256.lua"
lua POST '{"subject":"alice","operations":["read"],"ttl":"1h"}' "$admin" >"$work/mint.lua"

run() { # name url script
  local out
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s "$3" "$2" | grep '^RESULT')
  read -r _ rps p50 p99 non2xx sockerr <<<"$out"
  printf '%s %s %s %s %s %s\n' "$1" "$rps" "$p50" "$p99" "$non2xx" "$sockerr"
}
for round in $(seq "$ROUNDS"); do
  run constant-get "http://$const_addr/constant" "$work/get.lua"
  run constant-post-parse "http://$const_addr/parse" "$work/parse.lua"
  run tessera-verify "http://$tess_addr/v1/verify" "$work/verify.lua"
  run verify-budgeted-token "http://$tess_addr/v1/verify" "$work/rlverify.lua"
  run verify-no-memo "http://$cold_addr/v1/verify" "$work/coldverify.lua"
  run cluster-node-verify "http://$cluster_addr/v1/verify" "$work/cverify.lua"
  run tessera-mint "http://$tess_addr/v1/tokens" "$work/mint.lua"
  run jwt-hs256 "http://$tess_addr/v1/jwt" "$work/jwt-hs256.lua"
  run jwt-es256 "http://$tess_addr/v1/jwt" "$work/jwt-es256.lua"
done >"$work/results"

echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS interleaved rounds (medians), $WORKERS server workers, $(nproc) cores,"
echo "token ${#token} chars (4 caveats: allow, resource, client-ip, time-before), verify body ${#verify_body} bytes"
echo
echo "| endpoint | requests/s | p50 ms | p99 ms | non-2xx (all rounds) | socket errors (all rounds) |"
echo "|---|---|---|---|---|---|"
python3 - "$work/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, *vals = line.split()
    rows.setdefault(name, []).append([float(v) for v in vals])
med = {}
for name, rs in rows.items():
    cols = list(zip(*rs))
    med[name] = [statistics.median(c) for c in cols[:3]]
    print(f"| {name} | {med[name][0]:.0f} | {med[name][1]:.3f} | {med[name][2]:.3f} | {sum(cols[3]):.0f} | {sum(cols[4]):.0f} |")
ratios = [r[2][0] / r[0][0] for r in zip(rows["constant-get"], rows["constant-post-parse"], rows["tessera-verify"])]
print()
print("per-round verify / constant GET: " + ", ".join(f"{x:.2f}" for x in ratios))
print(f"median verify / constant GET = {med['tessera-verify'][0] / med['constant-get'][0]:.2f}; "
      f"verify / constant POST+parse = {med['tessera-verify'][0] / med['constant-post-parse'][0]:.2f}")
print(f"a token with a rate-limit budget / one without = {med['verify-budgeted-token'][0] / med['tessera-verify'][0]:.2f}")
print(f"without the signature memo (--verify-memo 0): verify / constant GET = {med['verify-no-memo'][0] / med['constant-get'][0]:.2f}; "
      f"verify / constant POST+parse = {med['verify-no-memo'][0] / med['constant-post-parse'][0]:.2f}")
print(f"verify on a cluster node (PostgreSQL) / on the redb node = {med['cluster-node-verify'][0] / med['tessera-verify'][0]:.2f}")
print(f"/v1/jwt ES256 / HS256 = {med['jwt-es256'][0] / med['jwt-hs256'][0]:.2f}; ES256 / constant POST+parse = {med['jwt-es256'][0] / med['constant-post-parse'][0]:.2f}")
PY
