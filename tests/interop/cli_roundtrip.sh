#!/usr/bin/env bash
# The command line end to end against a running server, checked with mediagrains 5.1.0:
#
#   GRAINSTORE_PYTHON=~/.cache/grainstore/venv/bin/python \
#       tests/interop/cli_roundtrip.sh path/to/grainstore http://127.0.0.1:PORT
#
# 1. A GSF file made by mediagrains' wrap_video_in_gsf: `grainstore probe` shows what
#    gsf_probe shows; `grainstore import` stores it (creating its flow); `grainstore
#    export` gives back the same grains (decoded by mediagrains, compared field by field
#    and byte by byte); a re-import changes nothing; `--flow` remaps it into another flow;
#    `--timerange` exports a part.
# 2. mediagrains' multi-flow fixture (every grain type, one segment per flow): imported
#    whole, every flow exported and compared.
# 3. Exit codes scripts rely on: 3 for an unknown flow, 6 for a malformed file.
set -euo pipefail

bin=${1:?usage: cli_roundtrip.sh GRAINSTORE_BIN URL}
export GRAINSTORE_URL=${2:?usage: cli_roundtrip.sh GRAINSTORE_BIN URL}
python=${GRAINSTORE_PYTHON:?set GRAINSTORE_PYTHON to a python with mediagrains 5.1.0}
tools=$(dirname "$python")
here=$(cd "$(dirname "$0")" && pwd)
check() { "$python" "$here/cli_roundtrip.py" "$@"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "-- a wrap_video_in_gsf file: probe, import, export"
flow=1720b676-aab6-4a00-b11f-adf55bc13943
source=67771692-dd5f-4d53-a42e-78c3fdc0131a
# 25 frames of 10-bit 4:2:2 64x32 (8192 bytes each), from 1420102800:0 at 25 fps.
check raw "$work/video.raw" 25 8192
"$tools/wrap_video_in_gsf" "$work/video.raw" "$work/video.gsf" --size 64x32 --rate 25 \
  --start-ts 1420102800:0 --flow-id "$flow" --source-id "$source" 2>/dev/null
"$tools/gsf_probe" "$work/video.gsf" >"$work/probe.theirs.json"
"$bin" probe "$work/video.gsf" >"$work/probe.ours.json"
check probe "$work/probe.theirs.json" "$work/probe.ours.json"

"$bin" import "$work/video.gsf" | tee "$work/import.txt"
grep -q "flow $flow: 25 grains written, 0 unchanged" "$work/import.txt"
# Into a file, not a pipe: `grep -q` stops reading at the first match, and the writer
# would then fail on a closed pipe (under pipefail) if it had more to write.
"$bin" flows show "$flow" >"$work/show.json"
grep -q '"format": "urn:x-nmos:format:video"' "$work/show.json"
"$bin" export --flow "$flow" >"$work/export.gsf"
check same "$work/video.gsf" "$work/export.gsf"
# What export writes, gsf_probe reads.
"$tools/gsf_probe" "$work/export.gsf" >/dev/null

"$bin" import "$work/video.gsf" | tee "$work/reimport.txt"
grep -q "flow $flow: 0 grains written, 25 unchanged" "$work/reimport.txt"

echo "-- --flow remaps a single-flow file; --timerange exports a part"
other=0b5e7c1a-3f2d-4e6b-9a8c-7d6e5f4a3b2c
"$bin" import "$work/video.gsf" --flow "$other" --quiet
"$bin" export --flow "$other" -o "$work/remapped.gsf"
check same "$work/video.gsf" "$work/remapped.gsf" --as-flow "$other"
"$bin" export --flow "$flow" --timerange '[1420102800:200000000_1420102800:600000000)' >"$work/part.gsf"
check same "$work/video.gsf" "$work/part.gsf" --range 1420102800:200000000 1420102800:600000000

echo "-- mediagrains' multi-flow fixture: every grain type"
"$python" "$here/mediagrains_gsf.py" make "$work/fixtures" >/dev/null
"$bin" import "$work/fixtures/mediagrains_v9.gsf" --quiet
for f in $(check flows "$work/fixtures/mediagrains_v9.gsf"); do
  "$bin" export --flow "$f" --quiet >"$work/fixture-$f.gsf"
  check same "$work/fixtures/mediagrains_v9.gsf" "$work/fixture-$f.gsf" --flow "$f"
done
"$bin" flows ls >"$work/flows.txt"
grep -q "$other" "$work/flows.txt"

echo "-- exit codes"
status=0
"$bin" export --flow 00000000-0000-4000-8000-000000000000 >"$work/none.gsf" 2>"$work/err.txt" || status=$?
[[ $status -eq 3 ]] || { echo "unknown flow: exit $status, expected 3"; cat "$work/err.txt"; exit 1; }
head -c 100 "$work/video.gsf" >"$work/truncated.gsf"
status=0
"$bin" import "$work/truncated.gsf" 2>"$work/err.txt" || status=$?
[[ $status -eq 6 ]] || { echo "truncated file: exit $status, expected 6"; cat "$work/err.txt"; exit 1; }
[[ $(wc -l <"$work/err.txt") -eq 1 ]] || { echo "expected one line of error:"; cat "$work/err.txt"; exit 1; }

echo "command line round trip: ok"
