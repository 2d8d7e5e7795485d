#!/usr/bin/env bash
# Instructions per `POST /v1/verify` (and per `GET /v1/authz/nginx`, forward auth as nginx's
# `auth_request` asks it) over HTTP, counted by valgrind's callgrind: independent of the
# machine's load, so small differences show (wrk on a shared host cannot see 3%).
#
# The release `tessera-server` (`--workers 1 --rate-limit 0`, redb) runs under callgrind while
# curl sends N identical verify requests (the 5-caveat token of scripts/bench-http.sh) over one
# keep-alive connection, then the server is stopped (SIGTERM). Two runs, N = LOW and N = HIGH,
# from copies of the same data directory; (I_HIGH - I_LOW) / (HIGH - LOW) is the cost of one
# request, start-up and shutdown cancelled out. Every thread of the process is counted (the log
# writer's included).
#
#   scripts/bench-requests.sh                          (make bench-requests: this tree, access line on and off)
#   BIN=/path/to/tessera-server scripts/bench-requests.sh        (another build)
#   CONFIGS="on" LOW=200 HIGH=2200 TOP=25 scripts/bench-requests.sh
#
# CONFIGS: `on` (default logging: the access line), `off` (`--log-level info,tessera::access=off`),
# `plain` (no logging flag at all, for builds older than --log-level), `authz` (access line on,
# `--authz-policy` covering `/issues`, `--trusted-proxy 127.0.0.1/32`: `GET /v1/authz/nginx` with
# the headers docs/proxies/nginx.conf sets, the same token, operation, resource and client address
# as the verify body; `make bench-requests CONFIGS="on authz"` compares). For each it prints the
# instructions per request and the TOP functions by their own instructions per request.
# A binary built with CARGO_PROFILE_RELEASE_DEBUG=line-tables-only names the functions better.
set -euo pipefail
cd "$(dirname "$0")/.."

LOW=${LOW:-200}
HIGH=${HIGH:-2200}
TOP=${TOP:-20}
CONFIGS=${CONFIGS:-on off}
KEEP=${KEEP:-}   # a directory to keep the callgrind files in (cg.<config>.<N>)

command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; } >/dev/null
if [ -z "${BIN:-}" ]; then
  CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release -q -p tessera-server --bin tessera-server
  BIN=${CARGO_TARGET_DIR:-target}/release/tessera-server
fi

work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

wait_addr() { # file -> address printed after "listening on "
  for _ in $(seq 600); do
    addr=$(sed -n 's/.*listening on \(http:\/\/\)\{0,1\}\([0-9.:]*\).*/\2/p' "$1" | head -1)
    [ -n "$addr" ] && { echo "$addr"; return; }
    sleep 0.1
  done
  echo "server did not start: $(cat "$1")" >&2
  exit 1
}

# The store, its admin token and a 5-caveat token, made once without valgrind.
"$BIN" --listen 127.0.0.1:0 --data-dir "$work/data" --rate-limit 0 --workers 1 >"$work/first.out" 2>"$work/first.err" &
pid=$!
addr=$(wait_addr "$work/first.out")
admin=$(sed -n '2p' "$work/first.out")
mint_body='{"subject":"alice","operations":["read"],"resources":["issues/*"],"client_ips":["10.0.0.0/8"],"ttl":"2h"}'
token=$(curl -sf -X POST "http://$addr/v1/tokens" -H "Authorization: Bearer $admin" \
  -H 'Content-Type: application/json' -d "$mint_body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
printf '{"token":"%s","context":{"operation":"read","resource":"issues/42","client_ip":"10.1.2.3"}}' "$token" >"$work/body"
# The same question as nginx asks it (docs/proxies/nginx.conf's subrequest headers).
printf '[[rule]]\nhost = "*"\nprefix = "/issues"\n' >"$work/policy.toml"
authz_headers=(-H 'Host: app.example' -H 'X-Original-Method: GET' -H 'X-Original-URI: /issues/42'
  -H 'X-Forwarded-For: 10.1.2.3' -H "Authorization: Bearer $token")
kill -TERM "$pid"
wait "$pid" || true
pid=

count() { # config n -> instructions of the whole run (prints them)
  local config=$1 n=$2 flags=() run="$work/$1.$2"
  case $config in
    on) flags=(--log-level info) ;;
    off) flags=(--log-level info,tessera::access=off) ;;
    plain) flags=() ;;
    authz) flags=(--log-level info --authz-policy "$work/policy.toml" --trusted-proxy 127.0.0.1/32) ;;
    *) echo "unknown config $config" >&2; exit 1 ;;
  esac
  cp -r "$work/data" "$run"
  valgrind --tool=callgrind --log-file="$run.vg" --callgrind-out-file="$work/cg.$config.$n" \
    "$BIN" --listen 127.0.0.1:0 --data-dir "$run" --rate-limit 0 --workers 1 ${flags[@]+"${flags[@]}"} \
    >"$run.out" 2>"$run.err" &
  pid=$!
  local a
  a=$(wait_addr "$run.out")
  # One connection (curl reuses it for every URL), N identical requests.
  local urls=()
  for _ in $(seq "$n"); do urls+=("http://$a/v1/verify"); done
  local ok
  if [ "$config" = authz ]; then
    for i in "${!urls[@]}"; do urls[i]="http://$a/v1/authz/nginx"; done
    curl -s -o /dev/null -w '%{http_code}\n' "${authz_headers[@]}" "${urls[@]}" >"$run.answers"
    ok=$(grep -c '^200$' "$run.answers" || true)
  else
    curl -s -X POST -H 'Content-Type: application/json' -H 'Expect:' --data-binary @"$work/body" "${urls[@]}" \
      >"$run.answers"
    ok=$(grep -o '"valid":true' "$run.answers" | wc -l)
  fi
  [ "$ok" -eq "$n" ] || { echo "$config N=$n: $ok of $n verified: $(head -c 300 "$run.answers")" >&2; exit 1; }
  kill -TERM "$pid"
  wait "$pid" || true
  pid=
  [ -n "$KEEP" ] && mkdir -p "$KEEP" && cp "$work/cg.$config.$n" "$KEEP/"
  sed -n 's/.*Collected : //p' "$run.vg"
}

# Own instructions per function, per request: (HIGH run - LOW run) / (HIGH - LOW).
by_function() { # low-file high-file
  python3 - "$1" "$2" "$((HIGH - LOW))" "$TOP" <<'PY'
import re, subprocess, sys
def own(path):
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=no", "--auto=no", path],
                         capture_output=True, text=True).stdout
    costs = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*)$", line)
        if not m or ":" not in m.group(2):
            continue
        name = re.sub(r"::h[0-9a-f]{16}", "", m.group(2).split(":", 1)[1].strip())
        name = re.sub(r"\s*\[[^]]*\]$", "", name)
        costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs
low, high, n, top = own(sys.argv[1]), own(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
diff = {k: (high.get(k, 0) - low.get(k, 0)) / n for k in set(low) | set(high)}
for name, per in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:top]:
    print(f"  {per:10.1f}  {name[:150]}")
PY
}

echo "instructions per request (POST /v1/verify; authz: GET /v1/authz/nginx) (callgrind, N = $LOW and $HIGH over one connection, $BIN)"
for config in $CONFIGS; do
  lo=$(count "$config" "$LOW" | tr -d ,)
  hi=$(count "$config" "$HIGH" | tr -d ,)
  echo
  echo "$config: $(( (hi - lo) / (HIGH - LOW) )) instructions per request (runs: $lo at N=$LOW, $hi at N=$HIGH)"
  if [ "$TOP" -gt 0 ]; then
    echo "  own instructions per request, by function (top $TOP):"
    by_function "$work/cg.$config.$LOW" "$work/cg.$config.$HIGH"
  fi
done
