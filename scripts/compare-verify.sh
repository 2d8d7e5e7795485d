#!/usr/bin/env bash
# /v1/verify over HTTP, two builds side by side (issue 22's cost goal): ${OLD:-/tmp/ts-old} (e.g. a
# release tessera-server built at 63bd450, before the logging work) against ${NEW:-/tmp/ts-new} (this
# tree), the latter also with the access line off; rounds interleaved, the order reversed every
# other round; wrk -t2 -c64 -d6s. Prints one line per run: round, build (o, n, f = new with the
# access line off), requests/s, non-2xx.
set -euo pipefail
work=$(mktemp -d)
start() { # bin dir -> addr,admin
  "$1" --listen 127.0.0.1:0 --data-dir "$work/$2" --rate-limit 0 --workers 2 ${3:-} >"$work/$2.out" 2>/dev/null &
  echo $! >>"$work/pids"
  for _ in $(seq 100); do
    a=$(sed -n 's/.*listening on \(http:\/\/\)\{0,1\}\([0-9.:]*\).*/\2/p' "$work/$2.out" | head -1)
    [ -n "$a" ] && break; sleep 0.1
  done
  echo "$a $(sed -n '2p' "$work/$2.out")"
}
read oa oadmin <<<"$(start ${OLD:-/tmp/ts-old} old)"
read na nadmin <<<"$(start ${NEW:-/tmp/ts-new} new)"
read fa fadmin <<<"$(start ${NEW:-/tmp/ts-new} newoff '--log-level info,tessera::access=off')"
body='{"subject":"alice","operations":["read"],"resources":["issues/*"],"client_ips":["10.0.0.0/8"],"ttl":"1h"}'
lua() { cat <<LUA
wrk.method = "POST"
wrk.body = [[{"token":"$1","context":{"operation":"read","resource":"issues/42","client_ip":"10.1.2.3"}}]]
wrk.headers["Content-Type"] = "application/json"
done = function(s, l, r) io.write(string.format("RESULT %.0f %d\n", s.requests / (s.duration / 1e6), s.errors.status)) end
LUA
}
for x in o n f; do
  addr_var=${x}a; admin_var=${x}admin
  case $x in o) addr=$oa; admin=$oadmin;; n) addr=$na; admin=$nadmin;; f) addr=$fa; admin=$fadmin;; esac
  tok=$(curl -sf -X POST "http://$addr/v1/tokens" -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' -d "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  lua "$tok" >"$work/$x.lua"
done
for r in 1 2 3 4 5 6; do
  if [ $((r % 2)) = 0 ]; then order="o n f"; else order="f n o"; fi
  for x in $order; do
    case $x in o) addr=$oa;; n) addr=$na;; f) addr=$fa;; esac
    res=$(wrk -t2 -c64 -d6s -s "$work/$x.lua" "http://$addr/v1/verify" | grep RESULT)
    echo "$r $x $res"
  done
done
kill $(cat "$work/pids"); rm -rf "$work"
