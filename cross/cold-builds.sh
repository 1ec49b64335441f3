#!/usr/bin/env bash
# Cold build times of two revisions, measured back to back on this machine.
#
#   cross/cold-builds.sh BEFORE AFTER [armv7|main|both]   (default: both)
#
# For each revision: a fresh clone of this repository in a scratch directory, then, each in a
# target directory of its own (the cargo download cache stays warm, nothing is compiled):
#   armv7  `bash cross/build.sh armv7` (the board build), and the binary's size;
#   main   the README's main command, `cargo build --locked -p moirai-orchestrator
#          -p moirai-agent && target/debug/moirai demo`, and its last line.
# Prints one line per measurement. The machine should be otherwise idle: every build uses
# all cores. Scratch directories are removed at the end, also when a step fails.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: cross/cold-builds.sh BEFORE AFTER [armv7|main|both]" >&2
    exit 2
fi
before=$1
after=$2
what=${3:-both}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/moirai-cold.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export XDG_RUNTIME_DIR="$scratch/xdg"
mkdir -p "$XDG_RUNTIME_DIR"

clone() {
    local rev=$1 dir=$2
    git clone -q "$repo" "$dir"
    git -C "$dir" checkout -q "$rev"
}

now() { date +%s.%N; }

armv7() {
    local rev=$1 dir="$scratch/armv7-$1"
    clone "$rev" "$dir"
    local t0 t1 bin
    t0=$(now)
    if ! bin=$(cd "$dir" && CARGO_TARGET_DIR="$dir/target" bash cross/build.sh armv7 2>"$scratch/armv7-$rev.log" | tail -1); then
        echo "armv7 $rev: build failed, see the log:" >&2
        tail -20 "$scratch/armv7-$rev.log" >&2
        return 1
    fi
    t1=$(now)
    printf 'armv7 %s: %.0f s, binary %s bytes\n' "$rev" "$(echo "$t1 - $t0" | bc)" "$(stat -c %s "$bin")"
    rm -rf "$dir"
}

main_command() {
    local rev=$1 dir="$scratch/main-$1"
    clone "$rev" "$dir"
    local t0 t1 last
    t0=$(now)
    if ! (cd "$dir" && cargo build --locked -p moirai-orchestrator -p moirai-agent && target/debug/moirai demo) >"$scratch/main-$rev.log" 2>&1; then
        echo "main $rev: failed, see the log:" >&2
        tail -20 "$scratch/main-$rev.log" >&2
        return 1
    fi
    t1=$(now)
    last=$(tail -1 "$scratch/main-$rev.log")
    printf 'main %s: %.0f s cold (%s)\n' "$rev" "$(echo "$t1 - $t0" | bc)" "$last"
    rm -rf "$dir"
}

for rev in "$before" "$after"; do
    case "$what" in armv7 | both) armv7 "$rev" ;; esac
done
for rev in "$before" "$after"; do
    case "$what" in main | both) main_command "$rev" ;; esac
done
