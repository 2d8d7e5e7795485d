#!/usr/bin/env bash
# Instructions of one verification of a 5-caveat token from text, counted by valgrind's callgrind
# (repeatable whatever else the machine does): the example at N = 0 and N = 1000, difference / 1000;
# then the same through a signature memo.
# Note: valgrind's CPU has no SHA extensions, so SHA-256 runs its portable code here (natively it
# uses SHA-NI where the CPU has it); the script prints SHA-256's share separately.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; } >/dev/null
cargo build --release -q -p tessera-peers --example verify_n
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
count() { valgrind --tool=callgrind --callgrind-out-file="$out/cg.$1${2:-}" target/release/examples/verify_n "$1" ${2:-} 2>&1 | sed -n 's/.*Collected : //p'; }
base=$(count 0)
total=$(count 1000)
sha=$(callgrind_annotate "$out/cg.1000" 2>/dev/null | awk '/sha256.*compress/ {gsub(",","",$1); s+=$1} END {print s+0}')
per=$(( (total - base) / 1000 ))
echo "instructions per verification (5 caveats, from text): $per"
echo "  of which SHA-256 compression (portable code under valgrind): $(( sha / 1000 ))"
echo "  everything else (base64, parsing, caveat checks, bookkeeping): $(( per - sha / 1000 ))"
# The same token presented again to a verifier with a signature memo (no decode, no chain).
mbase=$(count 0 memo)
mtotal=$(count 1000 memo)
echo "instructions per remembered verification (signature memo hit, same token): $(( (mtotal - mbase) / 1000 ))"
