# Tessera task entry points. CI runs `.ci/run`, which calls `make lint test`.
CARGO ?= cargo
VENV  ?= target/venv
PY     = $(VENV)/bin/python

.PHONY: bench-writes bench-instructions bench-requests browser node-peers all run test lint fmt check audit bench bench-core bench-store bench-sessions-size bench-http bench-authz crash venv clean fuzz fuzz-seeds postgres cluster bench-cluster bench-grow proxies

all: test

## run: release build, then serve on 127.0.0.1:8080 with the embedded database under ./data
run:
	$(CARGO) build --release -p tessera-cli
	target/release/tessera serve --data-dir ./data

## test: the whole suite (unit, integration, vectors, property, interop, PostgreSQL and cluster tests)
test: venv postgres node-peers browser proxies
	TESSERA_PYTHON=$(abspath $(PY)) $(CARGO) test --workspace --all-targets --exclude tessera-peers
	$(CARGO) test --workspace --doc --exclude tessera-peers

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

check:
	$(CARGO) check --workspace --all-targets

## bench: criterion benchmarks (core)
bench: bench-core bench-store bench-cluster

bench-core:
	$(CARGO) bench -p tessera-peers --bench verify

## bench-store: store throughput and 1M revocations through the API; then the revocation set
## (issue 25 goal 2): peak RSS per revoked id and open time with 1M and 10M revocations on redb
## and PostgreSQL (the redb stores are built once into target/bench-stores/), and verify with
## the previous HashSet against RevokedSet in the same run; then a refresh at a session's 1st and
## 10,000th rotation on both backends (goal 3, the ratio printed first); then the bytes per live
## session (bench-sessions-size)
bench-store: postgres
	$(CARGO) bench -p tessera-store --bench store
	$(CARGO) bench -p tessera-store --bench revoked
	$(CARGO) bench -p tessera-store --bench sessions
	$(CARGO) run --release -q -p tessera-store --example sessions_size -- $(SESSIONS)

## bench-sessions-size: SESSIONS (default 1,000,000) live sessions created through the store's
## API on redb and on PostgreSQL (fsync=on, three nodes), then the bytes per session on disk,
## measured at SESSIONS/2 and SESSIONS (issue 25 goal 3)
SESSIONS ?= 1000000
bench-sessions-size: postgres
	$(CARGO) run --release -q -p tessera-store --example sessions_size -- $(SESSIONS)

## bench-grow: timings for docs/DEPLOY.md (issue 24): a redb store with 100,000 revoked tokens
## (GROW_REVOKED to change it) moved to a throwaway PostgreSQL (fsync on) and back, backed up
## while open and restored, each timed once (release)
bench-grow: postgres
	$(CARGO) run --release -p tessera-store --example grow_timings

## audit: cargo-audit against the offline advisory snapshot (installs cargo-audit if missing)
ADVISORY_DB ?= ../shared/advisory-db
audit:
	@command -v cargo-audit >/dev/null || $(CARGO) install cargo-audit --locked
	$(CARGO) audit --db $(ADVISORY_DB) --no-fetch

## postgres: Debian's PostgreSQL server binaries, for the tests' throwaway servers (installed if
## missing; the tests start their own servers, never a system one)
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client; }

## proxies: Debian's nginx (auth_request; nginx-light where it exists) and Caddy (forward_auth)
## for the forward-auth tests (installed if missing). The packages may start their system
## services; the tests never use them: they run their own instances, with their own
## configuration, temporary directories and free ports.
proxies:
	@test -x /usr/sbin/nginx || { apt-get update -qq && \
		if apt-cache show nginx-light >/dev/null 2>&1; then pkg=nginx-light; else pkg=nginx; fi && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkg; }
	@test -x /usr/bin/caddy || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq caddy; }

## browser: Debian's Chromium for the token page's browser test (driven by npm playwright-core,
## which downloads no browser); installed if missing
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

## node-peers: the npm `jose` verifier for the JWKS interop test (npm ci from the lock file)
node-peers: tests/interop/js/node_modules/.ok
tests/interop/js/node_modules/.ok: tests/interop/js/package-lock.json
	@command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	cd tests/interop/js && npm ci --silent --no-audit --no-fund
	touch $@

## venv: Python peers for interop tests (pymacaroons, PyJWT), from PyPI
venv: $(VENV)/.ok
$(VENV)/.ok: tests/interop/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
	touch $@

clean:
	$(CARGO) clean

## bench-http: wrk load test of verify and mint against a constant actix endpoint (release build)
bench-http:
	scripts/bench-http.sh

## bench-authz: requests through nginx with Tessera forward auth against nginx alone in front of
## the same upstream, same run (wrk; goal >= 0.6, issue 23), and the same configuration asking a
## stub in Tessera's place (the bound); requests/s and CPU time per request of each process;
## nginx reaches the authorizers over Unix sockets (SOCKET=0: loopback TCP)
bench-authz: proxies
	scripts/bench-authz.sh

## bench-instructions: instructions of one verification (valgrind callgrind; repeatable)
bench-instructions:
	scripts/instructions.sh

## bench-requests: instructions per POST /v1/verify over HTTP (valgrind callgrind on the release
## tessera-server, N = 200 and 2200 requests over one connection; repeatable whatever the load),
## with the access line on and off, and the functions that cost most per request.
## CONFIGS="on authz" compares with GET /v1/authz/nginx (forward auth as nginx asks it).
## BIN=<another tessera-server> to count another build (CONFIGS=plain for one before --log-level).
bench-requests:
	scripts/bench-requests.sh

## fuzz: coverage-guided fuzzing of every target, FUZZ_SECONDS each (default 60; cargo-fuzz on
## stable, installed if missing); new inputs are merged into fuzz/corpus. `make test` replays it.
fuzz:
	FUZZ_SECONDS=$(or $(FUZZ_SECONDS),60) scripts/fuzz.sh

## fuzz-seeds: (re)write the seed inputs of every target into fuzz/corpus
fuzz-seeds:
	$(CARGO) run -q -p tessera-fuzz --bin fuzz-seeds fuzz/corpus

## cluster: a local PostgreSQL and three nodes on 127.0.0.1:8081-8083 to try (docs/CLUSTER.md)
cluster:
	scripts/cluster.sh

## bench-cluster: mint throughput on PostgreSQL and redb; the cluster's measured point (3 nodes
## x 8 clients on one PostgreSQL: records/s, p50/p99 per write, ratio to redb's 8 clients);
## revocation propagation across three nodes, verify on a cluster node beside a redb node,
## memory with 1M revocations
bench-cluster: postgres
	$(CARGO) bench -p tessera-store --bench cluster

## bench-writes: issue 25 goal 1 - section 1 of bench-cluster, this tree against the build before
## the one-round-trip write path (BEFORE=<bench binary built at 8313543>), alternately, ROUNDS=3
bench-writes: postgres
	scripts/compare-writes.sh

## crash: SIGKILL soak of the store (300 kills instead of the 20 in make test)
crash:
	CRASH_ROUNDS=300 $(CARGO) test -p tessera-store --test crash
