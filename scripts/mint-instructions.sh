#!/usr/bin/env bash
# Instructions of one durable token record on redb (`Store::record_token` with everything it
# writes: the record, its indexes, its audit entry, the commit), counted by valgrind's callgrind,
# which is repeatable whatever else the machine does: the example `mint_n` at N = 0 and
# N = $MINT_N (default 2000), difference / N; from 1 client (one commit per record) and from 8
# (records share commits, as in section 1 of `make bench-cluster`).
#
#   scripts/mint-instructions.sh              this tree
#   scripts/mint-instructions.sh REF...       this tree, then each git REF (e.g. 012f977, the
#                                             commit before the audit trail), each built in a
#                                             temporary worktree with this tree's example copied in
#
# What the count leaves out or distorts, the same for every build:
# - fsync and the kernel's write work are system calls, not counted (one fsync per commit before
#   and after the audit trail; the bytes written per commit are not the same: see BENCHMARKS.md);
# - valgrind's CPU has no SHA extensions, so SHA-256 (the audit links) runs its portable code here,
#   about 3,400 instructions a block, where the machines we run on use SHA-NI: its share is printed;
# - glibc's memset/memcpy are told to use vector loops instead of `rep stosb`/`rep movsb`, which
#   valgrind counts one instruction per byte (a 4 KiB page zeroed would count as 4,096);
# - with 8 clients, how many records share a commit depends on valgrind's thread scheduling:
#   records per commit are printed beside the count.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; } >/dev/null
n=${MINT_N:-2000}
target=${CARGO_TARGET_DIR:-$PWD/target}
export CARGO_TARGET_DIR=$target
out=$(mktemp -d)
worktrees=()
cleanup() {
    for w in "${worktrees[@]}"; do git worktree remove --force "$w" >/dev/null 2>&1 || true; done
    rm -rf "$out"
}
trap cleanup EXIT

# build NAME DIR: the example built in DIR, kept as $out/NAME.
build() {
    (cd "$2" && cargo build --release -q -p tessera-store --example mint_n)
    cp "$target/release/examples/mint_n" "$out/$1"
}

builds=(this)
build this .
for ref in "$@"; do
    w="$out/wt-$ref"
    git worktree add -q --detach "$w" "$ref"
    worktrees+=("$w")
    cp crates/store/examples/mint_n.rs "$w/crates/store/examples/mint_n.rs"
    build "$ref" "$w"
    builds+=("$ref")
done

export GLIBC_TUNABLES=glibc.cpu.x86_rep_stosb_threshold=4294967295:glibc.cpu.x86_rep_movsb_threshold=4294967295
# run BUILD N CLIENTS: instructions collected; the profile kept as $out/cg.BUILD.N.CLIENTS.
run() {
    valgrind --tool=callgrind --callgrind-out-file="$out/cg.$1.$2.$3" "$out/$1" "$2" "$3" 2>&1 |
        sed -n 's/.*Collected : //p'
}
# calls PROFILE PATTERN: how many times functions matching PATTERN were called (from anywhere).
calls() {
    callgrind_annotate --tree=calling "$1" 2>/dev/null |
        awk -v p="$2" 'index($0, ">") && index($0, p) {s=$0; sub(/.*\(/, "", s); sub(/x\).*/, "", s); gsub(",", "", s); t+=s} END {print t+0}'
}
# self PROFILE PATTERN: instructions spent in functions matching PATTERN themselves.
self() {
    callgrind_annotate "$1" 2>/dev/null | awk -v p="$2" 'index($0, p) {x=$1; gsub(",", "", x); s+=x} END {print s+0}'
}

echo "instructions per durable record on redb (N = $n; SHA-256 in portable code under valgrind)"
echo
echo "| build | 1 client | of which SHA-256 | 8 clients | of which SHA-256 | records per commit (8 clients) |"
echo "|---|---|---|---|---|---|"
for b in "${builds[@]}"; do
    row="| $b"
    for c in 1 8; do
        base=$(run "$b" 0 "$c")
        total=$(run "$b" "$n" "$c")
        sha=$(self "$out/cg.$b.$n.$c" "sha256::soft")
        row="$row | $(((total - base) / n)) | $((sha / n))"
    done
    commits=$(($(calls "$out/cg.$b.$n.8" "WriteTransaction::commit_with") - $(calls "$out/cg.$b.0.8" "WriteTransaction::commit_with")))
    if [ "$commits" -gt 0 ]; then
        row="$row | $(awk -v n="$n" -v c="$commits" 'BEGIN {printf "%.1f", n / c}') |"
    else
        row="$row | ? |"
    fi
    echo "$row"
done
