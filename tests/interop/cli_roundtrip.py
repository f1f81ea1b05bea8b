#!/usr/bin/env python3
"""Checks for the command line round trip (cli_roundtrip.sh), with mediagrains 5.1.0.

Subcommands:

  raw OUTFILE FRAMES FRAME_BYTES
      Writes FRAMES frames of FRAME_BYTES bytes of a deterministic pattern, the raw
      input of mediagrains' wrap_video_in_gsf.

  same EXPECTED.gsf GOT.gsf [--flow ID] [--as-flow ID] [--range START END]
      Decodes both files with mediagrains and checks that GOT holds exactly the grains
      of EXPECTED (only those of flow ID with --flow; only origin timestamps in
      [START, END) with --range), in time order, equal in every header field but
      creation_timestamp (GSF does not carry it) and in payload bytes. With --as-flow,
      EXPECTED's grains are taken as moved to flow ID (their flow_id rewritten).

  flows FILE.gsf
      Prints the flow ids of FILE's grains, one per line.

  probe GSF_PROBE.json OURS.json
      Compares gsf_probe's output with `grainstore probe`'s: file id and tags, and per
      segment id, count, tags, timerange and first grain (creation timestamp aside).
"""

import json
import sys
import warnings
from uuid import UUID

from mediagrains.gsf import GSFDecoder
from mediatimestamp.immutable import Timestamp

# mediagrains deprecates the decoder methods gsf_probe itself still uses.
warnings.filterwarnings("ignore", category=DeprecationWarning)


def decode(path):
    with open(path, "rb") as f:
        decoder = GSFDecoder(file_data=f)
        decoder.decode_file_headers()
        return [grain for grain, _local_id in decoder.grains()]


def key(grain):
    return (str(grain.flow_id), grain.origin_timestamp)


def header(grain, as_flow=None):
    meta = json.loads(json.dumps(grain.meta, default=str))["grain"]
    meta.pop("creation_timestamp", None)
    if as_flow is not None:
        meta["flow_id"] = str(as_flow)
    return meta


def cmd_raw(path, frames, frame_bytes):
    with open(path, "wb") as f:
        for n in range(int(frames)):
            f.write(bytes((i * 13 + n * 7) % 251 for i in range(int(frame_bytes))))


def cmd_same(expected_path, got_path, args):
    flow = as_flow = start = end = None
    it = iter(args)
    for arg in it:
        if arg == "--flow":
            flow = UUID(next(it))
        elif arg == "--as-flow":
            as_flow = UUID(next(it))
        elif arg == "--range":
            start = Timestamp.from_sec_nsec(next(it))
            end = Timestamp.from_sec_nsec(next(it))
        else:
            sys.exit(f"unknown option {arg}")
    expected = [g for g in decode(expected_path) if flow is None or g.flow_id == flow]
    if start is not None:
        expected = [g for g in expected if start <= g.origin_timestamp < end]
    expected.sort(key=key)
    got = sorted(decode(got_path), key=key)
    problems = []
    if len(expected) != len(got):
        problems.append(f"{len(got)} grains, expected {len(expected)}")
    for e, g in zip(expected, got):
        ts = e.origin_timestamp.to_sec_nsec()
        if header(e, as_flow) != header(g):
            problems.append(f"grain {ts}: header {header(g)} != {header(e, as_flow)}")
        if bytes(e.data or b"") != bytes(g.data or b""):
            problems.append(f"grain {ts}: payloads differ")
    if problems:
        print(f"{got_path} differs from {expected_path}:", *problems[:20], sep="\n  ")
        sys.exit(1)
    print(f"{got_path}: {len(got)} grains equal to {expected_path}'s")


def cmd_flows(path):
    for flow in sorted({str(g.flow_id) for g in decode(path)}):
        print(flow)


def cmd_probe(theirs_path, ours_path):
    theirs = json.load(open(theirs_path))
    ours = json.load(open(ours_path))
    problems = []

    def check(what, a, b):
        if a != b:
            problems.append(f"{what}: gsf_probe {a!r}, grainstore {b!r}")

    check("id", theirs["id"], ours["id"])
    check("tags", theirs["tags"], ours["tags"])
    check("segments", sorted(theirs["segments"]), sorted(ours["segments"]))
    for local_id, seg in theirs["segments"].items():
        mine = ours["segments"].get(local_id, {})
        for field in ("id", "count", "tags", "timerange"):
            check(f"segment {local_id} {field}", seg.get(field), mine.get(field))
        first = dict(seg.get("grain_data") or {})
        first.pop("creation_timestamp", None)
        check(f"segment {local_id} grain_data", first, mine.get("grain_data"))
    if problems:
        print("probe outputs differ:", *problems, sep="\n  ")
        sys.exit(1)
    print(f"probe: {len(theirs['segments'])} segments as gsf_probe shows them")


def main():
    cmd, *args = sys.argv[1:]
    if cmd == "raw":
        cmd_raw(*args)
    elif cmd == "same":
        cmd_same(args[0], args[1], args[2:])
    elif cmd == "flows":
        cmd_flows(*args)
    elif cmd == "probe":
        cmd_probe(*args)
    else:
        sys.exit(f"unknown subcommand {cmd}")


if __name__ == "__main__":
    main()
