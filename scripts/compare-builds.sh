#!/usr/bin/env bash
# /v1/verify over HTTP, any number of builds side by side in the same rounds (how issue 22's drop
# was placed between 63bd450 and this tree): every build's release tessera-server serves at once
# (`--rate-limit 0 --workers 2`, each its own data directory and the 5-caveat token of
# compare-verify.sh); each round runs wrk -t2 -c64 -d$DURATION against each in turn, the order
# reversed every other round. Prints every run, then each build's median and its ratio to the
# first build named (per-round ratios' median beside it).
#
#   ROUNDS=6 DURATION=5s scripts/compare-builds.sh old=/tmp/ts-63bd450 a=/tmp/ts-fca58a0 new=target/release/tessera-server
set -euo pipefail
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-5s}
[ $# -ge 2 ] || { echo "usage: $0 name=binary name=binary ... (the first is the base)" >&2; exit 1; }
work=$(mktemp -d)
trap '[ -f "$work/pids" ] && kill $(cat "$work/pids") 2>/dev/null; rm -rf "$work"' EXIT
body='{"subject":"alice","operations":["read"],"resources":["issues/*"],"client_ips":["10.0.0.0/8"],"ttl":"1h"}'
names=()
for nb in "$@"; do
  n=${nb%%=*}; b=${nb#*=}; names+=("$n")
  "$b" --listen 127.0.0.1:0 --data-dir "$work/$n" --rate-limit 0 --workers 2 >"$work/$n.out" 2>/dev/null &
  echo $! >>"$work/pids"
  a=
  for _ in $(seq 100); do
    a=$(sed -n 's/.*listening on \(http:\/\/\)\{0,1\}\([0-9.:]*\).*/\2/p' "$work/$n.out" | head -1)
    [ -n "$a" ] && break; sleep 0.1
  done
  [ -n "$a" ] || { echo "$n ($b) did not start" >&2; exit 1; }
  admin=$(sed -n 2p "$work/$n.out")
  tok=$(curl -sf -X POST "http://$a/v1/tokens" -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
    -d "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  echo "$a" >"$work/$n.addr"
  cat >"$work/$n.lua" <<LUA
wrk.method = "POST"
wrk.body = [[{"token":"$tok","context":{"operation":"read","resource":"issues/42","client_ip":"10.1.2.3"}}]]
wrk.headers["Content-Type"] = "application/json"
done = function(s, l, r) io.write(string.format("RESULT %.0f %d\n", s.requests / (s.duration / 1e6), s.errors.status)) end
LUA
done
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 0 ]; then order=("${names[@]}"); else mapfile -t order < <(printf '%s\n' "${names[@]}" | tac); fi
  for n in "${order[@]}"; do
    res=$(wrk -t2 -c64 -d"$DURATION" -s "$work/$n.lua" "http://$(cat "$work/$n.addr")/v1/verify" | grep RESULT)
    echo "$r $n $res" | tee -a "$work/results"
  done
done
python3 - "$work/results" "${names[0]}" "${names[@]}" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    r, n, _, rate, _errors = line.split()
    runs.setdefault(n, {})[r] = int(rate)
base = runs[sys.argv[2]]
b = statistics.median(base.values())
print("\n| build | median requests/s | / " + sys.argv[2] + " | median of per-round ratios |\n|---|---|---|---|")
for n in sys.argv[3:]:
    m = statistics.median(runs[n].values())
    per = statistics.median(runs[n][r] / base[r] for r in runs[n])
    print(f"| {n} | {m:,.0f} | {m / b:.3f} | {per:.3f} |")
PY
