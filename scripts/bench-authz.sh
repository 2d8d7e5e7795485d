#!/usr/bin/env bash
# Forward-auth cost: requests through nginx with Tessera forward auth (docs/proxies/nginx.conf,
# the configuration the tests run) against nginx alone, in front of the same upstream (an nginx
# server block answering a constant), same load tool, same run, same machine. Goal (issue 23):
# forward auth >= 0.6 of nginx alone. Installs wrk from Debian packages if missing.
#
#   scripts/bench-authz.sh           (make bench-authz)
#   DURATION=10s CONNECTIONS=64 THREADS=2 ROUNDS=3 scripts/bench-authz.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-2}
ROUNDS=${ROUNDS:-3}   # interleaved rounds; the table shows the median of each column

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; } >/dev/null
test -x /usr/sbin/nginx || { echo "nginx missing: make proxies" >&2; exit 1; }
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p tessera-server --bin tessera-server

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cat >"$work/policy.toml" <<'TOML'
[[rule]]
host = "*"
prefix = "/files"
TOML
target/release/tessera-server --listen 127.0.0.1:0 --data-dir "$work/data" --rate-limit 0 \
  --workers "$WORKERS" --authz-policy "$work/policy.toml" --trusted-proxy 127.0.0.1/32 \
  >"$work/tessera.out" 2>"$work/tessera.err" &
pids+=($!)
for _ in $(seq 100); do
  tessera=$(sed -n 's/.*listening on http:\/\/\([0-9.:]*\).*/\1/p' "$work/tessera.out" | head -1)
  [ -n "$tessera" ] && break; sleep 0.1
done
[ -n "$tessera" ] || { cat "$work/tessera.err" >&2; exit 1; }
admin=$(sed -n '/Tessera admin token/{n;p}' "$work/tessera.out" | head -1)
token=$(curl -sf -X POST "http://$tessera/v1/tokens" -H "Authorization: Bearer $admin" \
  -H 'Content-Type: application/json' -d '{"subject":"bench","operations":["read"],"resources":["files/*"]}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

up=127.0.0.1:$(port); authz=127.0.0.1:$(port); plain=127.0.0.1:$(port)
sed -e "s/TESSERA_ADDR/$tessera/" -e "s/UPSTREAM_ADDR/$up/" -e "s/LISTEN_ADDR/$authz/" \
  docs/proxies/nginx.conf >"$work/site.conf"
user=""; [ "$(id -u)" = 0 ] && user="user root;"
cat >"$work/nginx.conf" <<NGINX
$user
daemon off;
worker_processes $WORKERS;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/body; proxy_temp_path $work/proxy; fastcgi_temp_path $work/fcgi;
  uwsgi_temp_path $work/uwsgi; scgi_temp_path $work/scgi;
  # The upstream both fronts share: a constant answer.
  server { listen $up; location / { return 200 "ok\n"; } }
  # nginx alone in front of it.
  upstream plain_upstream { server $up; keepalive 32; }
  server { listen $plain; location / { proxy_pass http://plain_upstream; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  # nginx with forward auth (the documented configuration).
  include $work/site.conf;
}
NGINX
/usr/sbin/nginx -p "$work" -c "$work/nginx.conf" &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://$plain/" && break; sleep 0.1; done
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://$authz/files/a")
[ "$code" = 200 ] || { echo "forward auth answered $code" >&2; cat "$work/error.log" >&2; exit 1; }

rps() { # url [header] -> requests/s
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" ${2:+-H "$2"} "$1" | awk '/Requests\/sec/ {print $2}'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
alone=(); auth=()
for _ in $(seq "$ROUNDS"); do
  alone+=("$(rps "http://$plain/files/a")")
  auth+=("$(rps "http://$authz/files/a" "Authorization: Bearer $token")")
done
a=$(printf '%s\n' "${alone[@]}" | median); f=$(printf '%s\n' "${auth[@]}" | median)
echo "| path | requests/s (median of $ROUNDS) | ratio |"
echo "|---|---|---|"
echo "| nginx alone → upstream | $a | 1.00 |"
echo "| nginx + Tessera forward auth → upstream | $f | $(python3 -c "print(f'{$f/$a:.2f}')") |"
echo "(wrk -t$THREADS -c$CONNECTIONS -d$DURATION, tessera --workers $WORKERS, nginx worker_processes $WORKERS; every round: ${alone[*]} / ${auth[*]})"
