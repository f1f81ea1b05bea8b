#!/usr/bin/env bash
# Where the edges a fuzzing campaign found lie in the code.
#
#   fuzz/new-edges.sh FUZZ_BINARY LOG
#
# LOG is the output of FUZZ_BINARY run with `-print_pcs=1` under `setarch -R` (no address
# randomisation, so the executable sits at the kernel's fixed base and the printed
# addresses mean the same in every run). For each `NEW_PC` line, the program counter is
# symbolized with llvm-symbolizer, inlined frames included, and one line is printed:
#
#   ADDRESS | innermost frame | innermost frame in grainstore's src/ (or "none")
#
# The innermost frame says whose code the edge is in (grainstore's, serde_json's, the
# standard library's); the second column says through which of grainstore's functions,
# when one of them inlined it. Set PIE_BASE if the executable was not loaded at
# 0x555555554000 (x86_64 Linux without randomisation).
set -euo pipefail

if (($# != 2)); then
  sed -n '3,16p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
binary=$1
log=$2
base=$((${PIE_BASE:-0x555555554000}))
symbolizer=$(command -v llvm-symbolizer || true)
if [[ -z $symbolizer ]]; then
  echo "new-edges.sh: llvm-symbolizer is not installed (Debian: llvm)" >&2
  exit 1
fi

grep -a 'NEW_PC:' "$log" | awk '{print $2}' | while read -r pc; do
  # libFuzzer prints the address of the instruction after the edge's call.
  offset=$(printf '0x%x' $((pc - base - 1)))
  frames=$("$symbolizer" --obj="$binary" "$offset" | awk 'NF' | paste - - |
    awk '{print $1 " " $NF}' |
    sed -E 's| /rustc/[0-9a-f]+/| |; s| /.*/registry/src/[^/]+/| |; s| /.*/(src/[^ ]+)$| \1|')
  inner=$(head -n1 <<<"$frames")
  ours=$(grep -E ' src/' <<<"$frames" | head -n1 || true)
  echo "$pc | $inner | ${ours:-none}"
done
