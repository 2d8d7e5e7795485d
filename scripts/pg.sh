# Shell helpers to run a local PostgreSQL for `make cluster` and `make bench-http` (sourced).
# Debian's binaries (installed if missing); when run as root, the server runs as the postgres
# user, which owns the data directory.

pg_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

pg_install() {
  [ -n "$(pg_bin)" ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client; } >/dev/null
}

pg_as() { # run a command as the server's user
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# pg_start DIR PORT: initdb (first time) and start; user tessera, password tessera, loopback only.
pg_start() {
  local dir=$1 port=$2 bin
  pg_install
  bin=$(pg_bin)
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    echo tessera >"$dir/pw" && { [ "$(id -u)" = 0 ] && chown postgres: "$dir/pw" || true; }
    pg_as "$bin/initdb" -D "$dir/data" -U tessera --pwfile="$dir/pw" --auth-local=trust \
      --auth-host=scram-sha-256 -E UTF8 >/dev/null
  fi
  pg_as "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w \
    -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir" start >/dev/null
  PGPASSWORD=tessera "$bin/psql" -h 127.0.0.1 -p "$port" -U tessera -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'tessera'" | grep -q 1 ||
    PGPASSWORD=tessera "$bin/createdb" -h 127.0.0.1 -p "$port" -U tessera tessera
}

pg_stop() { # DIR
  pg_as "$(pg_bin)/pg_ctl" -D "$1/data" -m fast -w stop >/dev/null 2>&1 || true
}
