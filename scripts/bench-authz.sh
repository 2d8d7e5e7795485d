#!/usr/bin/env bash
# Forward-auth cost: requests through nginx with Tessera forward auth (docs/proxies/nginx.conf,
# the configuration the tests run) against nginx alone, in front of the same upstream (an nginx
# server block answering a constant), same load tool, same run, same machine. Goal (issue 23):
# forward auth >= 0.6 of nginx alone. Installs wrk from Debian packages if missing.
#
# Two more fronts run the same documented configuration with a stub in Tessera's place (an nginx
# server block answering 200 with the identity headers, on kept-alive connections): the bound,
# what `auth_request` costs when the authorizer answers for next to nothing; once inside the
# front nginx itself (no other process to wake: the most favourable case), once in an nginx of
# its own (a separate authorizer process, as Tessera is). Rounds alternate the four. Besides
# requests/s (which depend on what else runs on the machine) the table gives the CPU time each
# process spent per request (user + system, from /proc: wrk, the front nginx, the authorizer:
# tessera-server or the separate stub), which moves much less with the load; the CPU ratio is
# what the throughput ratio would be if the processes had the cores to themselves.
#
# nginx reaches every authorizer (Tessera and both stubs) over a Unix socket by default, as the
# documented configuration recommends on one host (`--listen unix:PATH --trusted-proxy unix`);
# SOCKET=0 runs all three over loopback TCP instead (the figures before the socket).
#
#   scripts/bench-authz.sh           (make bench-authz)
#   SOCKET=0 scripts/bench-authz.sh  (authorizers over loopback TCP)
#   DURATION=10s CONNECTIONS=64 THREADS=2 ROUNDS=3 scripts/bench-authz.sh
#   NO_BUILD=1 BIN=/path/to/tessera-server scripts/bench-authz.sh     (another build)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-2}   # nginx worker_processes
# The authorizer (Tessera, and the stub in an nginx of its own) runs one worker by default: on a
# 2-core machine nginx's two workers and wrk already fill the cores, and a second Tessera worker
# only adds threads contending for them (one worker: 12.8 us of Tessera CPU per request, two:
# 19.1; docs/BENCHMARKS.md). Deployments sharing a small host with their proxy do the same
# (docs/PROXIES.md).
TESSERA_WORKERS=${TESSERA_WORKERS:-1}
ROUNDS=${ROUNDS:-3}   # interleaved rounds; the table shows the median of each column
SOCKET=${SOCKET:-1}   # 1: authorizers over Unix sockets; 0: over loopback TCP

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; } >/dev/null
test -x /usr/sbin/nginx || { echo "nginx missing: make proxies" >&2; exit 1; }
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p tessera-server --bin tessera-server
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/tessera-server}

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
# The API (minting the token below) on loopback TCP; forward auth on the socket when SOCKET=1.
if [ "$SOCKET" = 1 ]; then
  link=(--listen "unix:$work/tessera.sock" --trusted-proxy unix); over="Unix sockets"
else
  link=(--trusted-proxy 127.0.0.1/32); over="loopback TCP"
fi
"$BIN" --listen 127.0.0.1:0 "${link[@]}" --data-dir "$work/data" --rate-limit 0 \
  --workers "$TESSERA_WORKERS" --authz-policy "$work/policy.toml" \
  >"$work/tessera.out" 2>"$work/tessera.err" &
pids+=($!)
for _ in $(seq 100); do
  tessera=$(sed -n 's/.*listening on http:\/\/\([0-9.:]*\).*/\1/p' "$work/tessera.out" | head -1)
  [ -n "$tessera" ] && { [ "$SOCKET" != 1 ] || grep -q 'listening on unix:' "$work/tessera.out"; } && break
  sleep 0.1
done
[ -n "$tessera" ] || { cat "$work/tessera.err" >&2; exit 1; }
admin=$(sed -n '/Tessera admin token/{n;p}' "$work/tessera.out" | head -1)
token=$(curl -sf -X POST "http://$tessera/v1/tokens" -H "Authorization: Bearer $admin" \
  -H 'Content-Type: application/json' -d '{"subject":"bench","operations":["read"],"resources":["files/*"]}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

up=127.0.0.1:$(port); authz=127.0.0.1:$(port); plain=127.0.0.1:$(port)
bound=127.0.0.1:$(port); sep=127.0.0.1:$(port)
# Where the authorizers listen: nginx's `listen` and `server` both take unix:PATH.
if [ "$SOCKET" = 1 ]; then
  authorizer="unix:$work/tessera.sock"; stub="unix:$work/stub.sock"; sepstub="unix:$work/sepstub.sock"
else
  authorizer=$tessera; stub=127.0.0.1:$(port); sepstub=127.0.0.1:$(port)
fi
sed -e "s|TESSERA_ADDR|$authorizer|" -e "s/UPSTREAM_ADDR/$up/" -e "s/LISTEN_ADDR/$authz/" \
  docs/proxies/nginx.conf >"$work/site.conf"
# The same site with the stub in Tessera's place (its own upstream name).
sed -e "s|TESSERA_ADDR|$stub|" -e "s/UPSTREAM_ADDR/$up/" -e "s/LISTEN_ADDR/$bound/" \
  -e 's/upstream tessera /upstream tessera_stub /' -e 's#http://tessera/#http://tessera_stub/#' \
  -e 's/upstream protected_app /upstream protected_app_stub /' -e 's#http://protected_app;#http://protected_app_stub;#' \
  docs/proxies/nginx.conf >"$work/stub-site.conf"
sed -e "s|TESSERA_ADDR|$sepstub|" -e "s/UPSTREAM_ADDR/$up/" -e "s/LISTEN_ADDR/$sep/" \
  -e 's/upstream tessera /upstream tessera_sep /' -e 's#http://tessera/#http://tessera_sep/#' \
  -e 's/upstream protected_app /upstream protected_app_sep /' -e 's#http://protected_app;#http://protected_app_sep;#' \
  docs/proxies/nginx.conf >"$work/sep-site.conf"
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
  # nginx alone in front of it, kept alive as the documented configuration keeps its upstream.
  upstream plain_upstream { server $up; keepalive 64; }
  server { listen $plain; location / { proxy_pass http://plain_upstream; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  # nginx with forward auth (the documented configuration).
  include $work/site.conf;
  # The stub authorizer: 200 with the identity headers, for nothing.
  server { listen $stub; location / { add_header X-Tessera-Subject bench; add_header X-Tessera-Tid 1; return 200; } }
  # The documented configuration again, asking the stub.
  include $work/stub-site.conf;
  # And again, asking the stub in an nginx of its own.
  include $work/sep-site.conf;
}
NGINX
mkdir -p "$work/sep"
cat >"$work/sep/nginx.conf" <<NGINX
$user
daemon off;
worker_processes $TESSERA_WORKERS;
pid $work/sep/nginx.pid;
error_log $work/sep/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/sep/body; proxy_temp_path $work/sep/proxy; fastcgi_temp_path $work/sep/fcgi;
  uwsgi_temp_path $work/sep/uwsgi; scgi_temp_path $work/sep/scgi;
  server { listen $sepstub; location / { add_header X-Tessera-Subject bench; add_header X-Tessera-Tid 1; return 200; } }
}
NGINX
/usr/sbin/nginx -p "$work" -c "$work/nginx.conf" &
pids+=($!)
/usr/sbin/nginx -p "$work/sep" -c "$work/sep/nginx.conf" &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://$plain/" && break; sleep 0.1; done
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://$authz/files/a")
[ "$code" = 200 ] || { echo "forward auth answered $code" >&2; cat "$work/error.log" >&2; exit 1; }
for front in "$bound" "$sep"; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://$front/files/a" && break; sleep 0.1; done
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://$front/files/a")
  [ "$code" = 200 ] || { echo "the stub front $front answered $code" >&2; cat "$work/error.log" >&2; exit 1; }
done
tessera_pid=${pids[0]}; nginx_pid=${pids[1]}; sep_pid=${pids[2]}

# CPU ticks (user + system) of a process and its children so far: /proc/PID/stat fields 14-17.
ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"; }
nginx_ticks() { # master -> the master and its workers
  local t; t=$(ticks "$1")
  for w in $(cat /proc/"$1"/task/*/children); do t=$((t + $(ticks "$w"))); done
  echo "$t"
}
# The authorizers' ticks: tessera-server and the separate stub (one of them is idle).
authorizer_ticks() { echo $(( $(ticks "$tessera_pid") + $(nginx_ticks "$sep_pid") )); }
# One wrk run: "requests/s requests wrk-ticks nginx-ticks authorizer-ticks load".
run() { # url [header]
  local n0 t0 out
  n0=$(nginx_ticks "$nginx_pid"); t0=$(authorizer_ticks)
  out=$(python3 - "$THREADS" "$CONNECTIONS" "$DURATION" "$1" "${2:-}" <<'PY'
import os, re, resource, subprocess, sys
t, c, d, url, header = sys.argv[1:]
cmd = ["wrk", f"-t{t}", f"-c{c}", f"-d{d}"] + (["-H", header] if header else []) + [url]
out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
rps = re.search(r"Requests/sec:\s*([\d.]+)", out).group(1)
n = re.search(r"(\d+) requests in", out).group(1)
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
if bad:
    sys.exit(f"{url}: {bad.group(1)} answers were not 2xx")
hz = os.sysconf("SC_CLK_TCK")
print(rps, n, round((ru.ru_utime + ru.ru_stime) * hz), f"{os.getloadavg()[0]:.2f}")
PY
)
  set -- $out
  echo "$1 $2 $3 $(( $(nginx_ticks "$nginx_pid") - n0 )) $(( $(authorizer_ticks) - t0 )) $4"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
alone=(); auth=(); stubbed=(); separate=(); rows=()
for _ in $(seq "$ROUNDS"); do
  r=$(run "http://$plain/files/a"); alone+=("${r%% *}"); rows+=("alone $r")
  r=$(run "http://$authz/files/a" "Authorization: Bearer $token"); auth+=("${r%% *}"); rows+=("authz $r")
  r=$(run "http://$bound/files/a" "Authorization: Bearer $token"); stubbed+=("${r%% *}"); rows+=("stub $r")
  r=$(run "http://$sep/files/a" "Authorization: Bearer $token"); separate+=("${r%% *}"); rows+=("sep $r")
done
a=$(printf '%s\n' "${alone[@]}" | median); f=$(printf '%s\n' "${auth[@]}" | median)
s=$(printf '%s\n' "${stubbed[@]}" | median); p=$(printf '%s\n' "${separate[@]}" | median)
# CPU microseconds per request, summed over the rounds of each configuration.
printf '%s\n' "${rows[@]}" | python3 -c '
import os, sys
hz = os.sysconf("SC_CLK_TCK"); acc = {}
for line in sys.stdin:
    name, rps, n, w, ng, te, load = line.split()
    a = acc.setdefault(name, [0, 0, 0, 0, []])
    a[0] += int(n); a[1] += int(w); a[2] += int(ng); a[3] += int(te); a[4].append(load)
us = lambda ticks, n: ticks * 1e6 / hz / n
rows = {}
for name, (n, w, ng, te, loads) in acc.items():
    rows[name] = (us(w, n), us(ng, n), us(te, n))
base = sum(rows["alone"])
print("| CPU µs per request (all rounds) | wrk | nginx | authorizer | total | CPU ratio |")
print("|---|---|---|---|---|---|")
for name, label in (("alone", "nginx alone"), ("authz", "nginx + Tessera forward auth"),
                    ("stub", "nginx + auth_request to a stub inside the same nginx"),
                    ("sep", "nginx + auth_request to a stub in an nginx of its own")):
    w, ng, te = rows[name]
    print(f"| {label} | {w:.1f} | {ng:.1f} | {te:.1f} | {w + ng + te:.1f} | {base / (w + ng + te):.2f} |")
print("(the stub inside the front nginx is in the nginx column; the authorizer column is tessera-server or the stub nginx)")
print("load average (1 min) after each run: " + "; ".join(k + " " + " ".join(v[4]) for k, v in acc.items()))
' >"$work/cpu.md"
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
echo "| path | requests/s (median of $ROUNDS) | ratio |"
echo "|---|---|---|"
echo "| nginx alone → upstream | $a | 1.00 |"
echo "| nginx + Tessera forward auth → upstream | $f | $(ratio "$f" "$a") |"
echo "| nginx + auth_request to a stub inside the same nginx → upstream | $s | $(ratio "$s" "$a") |"
echo "| nginx + auth_request to a stub in an nginx of its own → upstream | $p | $(ratio "$p" "$a") |"
echo "(authorizers over $over; wrk -t$THREADS -c$CONNECTIONS -d$DURATION, tessera --workers $TESSERA_WORKERS, nginx worker_processes $WORKERS; every round: ${alone[*]} / ${auth[*]} / ${stubbed[*]} / ${separate[*]})"
echo
cat "$work/cpu.md"
