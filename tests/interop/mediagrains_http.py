#!/usr/bin/env python3
"""mediagrains 5.1.0 on both ends of grainstore's HTTP API.

Run with a Python that has mediagrains 5.1.0 installed (GRAINSTORE_PYTHON). The grains
are those of mediagrains_gsf.py (every grain type, one flow each kind).

Subcommands:

  split VERSION OUTDIR
      Writes with mediagrains' own GSFEncoder one GSF file of major version VERSION
      (7, 8 or 9) per flow of the grains, OUTDIR/flow-N.gsf, and prints a JSON manifest:
      a list of {"flow_id", "source_id", "format" (a flow format URN), "file",
      "grains": [{"meta", "data"}, ...]} with the grains as mediagrains decodes them
      from that file (creation_timestamp removed: GSF does not carry it).

  check-gsf GSF_FILE EXPECTED_JSON [GSF_FILE EXPECTED_JSON ...]
      Decodes each GSF_FILE with mediagrains and compares every grain (every header
      field but creation_timestamp, payload bytes) with the list of {"meta", "data"} in
      its EXPECTED_JSON. Exits 1 listing the differences.

  check-ndjson [--with-creation] NDJSON_FILE EXPECTED_JSON [NDJSON_FILE EXPECTED_JSON ...]
      Rebuilds every line of each NDJSON_FILE with GrainFactory(meta, b64decode(data))
      and compares it with its EXPECTED_JSON as check-gsf does; with --with-creation the
      creation timestamps are compared too, and mediagrains' own grain equality must
      hold.
"""

import json
import sys
from pathlib import Path

from mediagrains.gsf import GSFDecoder, GSFEncoder, GrainDataLoadingMode

from mediagrains_gsf import FILE_ID, CREATED, diff, fields, flow, from_json_form, grain_json, make_grains

FORMATS = {
    "video": "urn:x-nmos:format:video",
    "coded_video": "urn:x-nmos:format:video",
    "audio": "urn:x-nmos:format:audio",
    "coded_audio": "urn:x-nmos:format:audio",
    "event": "urn:x-nmos:format:data",
    "empty": "urn:x-nmos:format:data",
}


def decode(path):
    with open(path, "rb") as f:
        with GSFDecoder(file_data=f) as dec:
            return [g for g, _ in dec.grains(loading_mode=GrainDataLoadingMode.LOAD_IMMEDIATELY)]


def cmd_split(version, outdir):
    version = int(version)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    grains = make_grains(version)
    manifest = []
    for local_id in sorted({lid for lid, _ in grains}):
        mine = [g for lid, g in grains if lid == local_id]
        path = out / f"flow-{local_id}.gsf"
        with open(path, "wb") as f:
            enc = GSFEncoder(f, major=version, minor=0, id=FILE_ID, created=CREATED)
            enc.add_segment(local_id=1)
            with enc as open_enc:
                for g in mine:
                    open_enc.add_grain(g, segment_local_id=1)
        manifest.append({
            "flow_id": str(flow(local_id)),
            "source_id": str(mine[0].source_id),
            "format": FORMATS[mine[0].grain_type],
            "file": str(path),
            "grains": [grain_json(g, True) for g in decode(path)],
        })
    print(json.dumps(manifest))
    return 0


def compare(label, rebuilt, expected, with_creation):
    problems = []
    if len(rebuilt) != len(expected):
        problems.append(f"{label}: {len(rebuilt)} grains, expected {len(expected)}")
    for i, (got, want) in enumerate(zip(rebuilt, expected)):
        want = from_json_form(want)
        problems += diff(f"{label} grain {i}", fields(got, with_creation), fields(want, with_creation))
        if with_creation and got != want:
            problems.append(f"{label} grain {i}: mediagrains equality fails: {got.meta!r:.400} vs {want.meta!r:.400}")
    return problems


def pairs(args):
    if not args or len(args) % 2:
        raise SystemExit(__doc__)
    return [(args[i], json.loads(Path(args[i + 1]).read_text())) for i in range(0, len(args), 2)]


def report(problems, count):
    for p in problems:
        print(p, file=sys.stderr)
    print(f"checked {count} files: {'OK' if not problems else 'DIFFERENT'}")
    return 1 if problems else 0


def cmd_check_gsf(*args):
    checks = pairs(args)
    problems = []
    for gsf_file, expected in checks:
        problems += compare(gsf_file, decode(gsf_file), expected, False)
    return report(problems, len(checks))


def cmd_check_ndjson(*args):
    with_creation = bool(args) and args[0] == "--with-creation"
    checks = pairs(args[1:] if with_creation else args)
    problems = []
    for ndjson_file, expected in checks:
        lines = [line for line in Path(ndjson_file).read_text().splitlines() if line.strip()]
        rebuilt = [from_json_form(json.loads(line)) for line in lines]
        problems += compare(ndjson_file, rebuilt, expected, with_creation)
    return report(problems, len(checks))


def main(argv):
    commands = {"split": cmd_split, "check-gsf": cmd_check_gsf, "check-ndjson": cmd_check_ndjson}
    if len(argv) < 2 or argv[1] not in commands or (argv[1] == "split" and len(argv) != 4):
        print(__doc__, file=sys.stderr)
        return 2
    return commands[argv[1]](*argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
