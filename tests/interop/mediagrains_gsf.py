#!/usr/bin/env python3
"""Interoperability fixtures and checks against BBC's mediagrains 5.1.0.

Run with a Python that has mediagrains 5.1.0 installed (GRAINSTORE_PYTHON).

Subcommands:

  make OUTDIR
      Writes, with mediagrains' own GSFEncoder, mediagrains_v7.gsf, mediagrains_v8.gsf
      and mediagrains_v9.gsf (mediagrains writes any major version: 7 drops the
      timestamp sign byte and adds 16 reserved bytes to each gbhd, 8 has the 9 layout),
      each with every grain type, planar and packed video, aspect ratios, time labels,
      coded grains with unit offsets, several segments (one per flow), a flow block and
      tags. Beside each, NAME.json holds what mediagrains decodes from it: the head and
      every grain in the JSON form {"meta", "data"} (creation_timestamp removed, since
      GSF does not carry it and mediagrains fills in the current time).

      Versions 7 and 8 cannot say "unknown" for a coded frame's key-frame flag or
      temporal offset (a reader takes the stored bytes as values), so their coded video
      grains give both; only the v9 file has a grain with both unknown. Version 7 has no
      timestamp sign, so only the v8 and v9 files have a negative timestamp.

  check GSF_FILE EXPECTED_JSON
      Decodes GSF_FILE with mediagrains and compares the head (id, created, tags,
      segments and their ids and tags) and every grain (every header field, payload
      bytes) with EXPECTED_JSON, in the format `make` writes. Segment counts are
      compared unless the file says -1 (streamed). Exits 1 listing the differences.

  probe GSF_FILE
      Runs mediagrains' gsf_probe tool on GSF_FILE and checks that it succeeds and
      reports every segment of the file.

  json-make OUTFILE
      Writes the grains `make` uses (with their creation timestamps) as NDJSON lines
      of the JSON form, meta being mediagrains' own grain.meta.

  json-check NDJSON_FILE
      Rebuilds every line with GrainFactory(meta, b64decode(data)) and checks that it
      equals the corresponding grain of `json-make`, creation timestamp included, both
      field by field and with mediagrains' own grain equality (meta dict and data).
"""

import base64
import copy
import json
import subprocess
import sys
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from uuid import UUID

from mediagrains import GrainFactory
from mediagrains.cogenums import CogAudioFormat, CogFrameFormat, CogFrameLayout
from mediagrains.grains import AudioGrain, CodedAudioGrain, CodedVideoGrain, EventGrain, VideoGrain
from mediagrains.gsf import GSFDecoder, GSFEncoder, GrainDataLoadingMode
from mediatimestamp.immutable import Timestamp

FILE_ID = UUID("c0ffee00-0000-4000-8000-000000000001")
CREATED = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
SOURCE = UUID("5ca1ab1e-0000-4000-8000-000000000001")


def flow(n):
    return UUID(f"f1000000-0000-4000-8000-{n:012x}")


def segment_id(n):
    return UUID(f"5e900000-0000-4000-8000-{n:012x}")


def pattern(n, seed):
    return bytes((i * 7 + seed) % 251 for i in range(n))


def ts(sec, ns, sign=1):
    return Timestamp(sec, ns, sign)


def make_grains(version):
    """(local_id, grain) pairs; one segment (local id) per flow."""
    grains = []
    base = dict(src_id=SOURCE, creation_timestamp=ts(1700000000, 123))

    # Planar 8-bit 4:2:0 video with aspect ratios and time labels.
    for i in range(2):
        g = VideoGrain(flow_id=flow(1), origin_timestamp=ts(1420102800, 40000000 * i),
                       rate=Fraction(25, 1), duration=Fraction(1, 25),
                       cog_frame_format=CogFrameFormat.U8_420, width=16, height=8,
                       cog_frame_layout=CogFrameLayout.FULL_FRAME, **base)
        g.data = bytearray(pattern(len(g.data), i))
        g.source_aspect_ratio = Fraction(16, 9)
        g.pixel_aspect_ratio = Fraction(1, 1)
        g.add_timelabel("tc", 90000 + i, Fraction(25, 1))
        g.add_timelabel("tc_drop", 1234 + i, Fraction(30000, 1001), drop_frame=True)
        grains.append((1, g))

    # Packed video: UYVY and v210, interlaced layout, no aspect ratios.
    g = VideoGrain(flow_id=flow(2), origin_timestamp=ts(1420102800, 0),
                   rate=Fraction(50, 1), duration=Fraction(1, 50),
                   cog_frame_format=CogFrameFormat.UYVY, width=16, height=4,
                   cog_frame_layout=CogFrameLayout.SEPARATE_FIELDS, **base)
    g.data = bytearray(pattern(len(g.data), 3))
    grains.append((2, g))
    g = VideoGrain(flow_id=flow(2), origin_timestamp=ts(1420102800, 20000000),
                   rate=Fraction(50, 1), duration=Fraction(1, 50),
                   cog_frame_format=CogFrameFormat.v210, width=48, height=2,
                   cog_frame_layout=CogFrameLayout.FULL_FRAME, **base)
    g.data = bytearray(pattern(len(g.data), 4))
    grains.append((2, g))

    # Raw audio.
    g = AudioGrain(flow_id=flow(3), origin_timestamp=ts(1420102800, 0),
                   rate=Fraction(48000, 1), duration=Fraction(32, 48000),
                   cog_audio_format=CogAudioFormat.S16_INTERLEAVED, samples=32, channels=2,
                   sample_rate=48000, **base)
    g.data = bytearray(pattern(len(g.data), 5))
    grains.append((3, g))

    # Coded video: a key frame with unit offsets, a non-key frame with a negative
    # temporal offset, and (v9 only) one with both unknown.
    g = CodedVideoGrain(flow_id=flow(4), origin_timestamp=ts(1420102800, 0),
                        rate=Fraction(25, 1), duration=Fraction(1, 25),
                        cog_frame_format=CogFrameFormat.H264, origin_width=1920,
                        origin_height=1080, coded_width=1920, coded_height=1088,
                        is_key_frame=True, temporal_offset=2,
                        cog_frame_layout=CogFrameLayout.FULL_FRAME,
                        unit_offsets=[0, 10, 25], data=pattern(40, 6), **base)
    grains.append((4, g))
    g = CodedVideoGrain(flow_id=flow(4), origin_timestamp=ts(1420102800, 40000000),
                        rate=Fraction(25, 1), duration=Fraction(1, 25),
                        cog_frame_format=CogFrameFormat.H264, origin_width=1920,
                        origin_height=1080, is_key_frame=False, temporal_offset=-1,
                        cog_frame_layout=CogFrameLayout.FULL_FRAME, data=pattern(17, 7), **base)
    grains.append((4, g))
    if version >= 9:
        g = CodedVideoGrain(flow_id=flow(4), origin_timestamp=ts(1420102800, 80000000),
                            rate=Fraction(25, 1), duration=Fraction(1, 25),
                            cog_frame_format=CogFrameFormat.UNKNOWN, origin_width=1280,
                            origin_height=720, cog_frame_layout=CogFrameLayout.UNKNOWN,
                            unit_offsets=[3], data=pattern(9, 8), **base)
        grains.append((4, g))

    # Coded audio with priming and remainder; a raw format value unknown to the enum.
    g = CodedAudioGrain(flow_id=flow(5), origin_timestamp=ts(1420102800, 0),
                        rate=Fraction(48000, 1024), duration=Fraction(1024, 48000),
                        cog_audio_format=CogAudioFormat.AAC, samples=1024, channels=2,
                        priming=1024, remainder=5, sample_rate=48000, data=pattern(300, 9),
                        **base)
    grains.append((5, g))

    # Events.
    g = EventGrain(flow_id=flow(6), origin_timestamp=ts(1420102800, 0),
                   event_type="urn:x-ipstudio:format:event.query", topic="/dummy", **base)
    g.append("/a", pre=1, post=2)
    g.append("/b", post="x\u00e9")
    g.append("/c", pre={"k": [1.5, None, True]})
    grains.append((6, g))
    g = EventGrain(flow_id=flow(6), origin_timestamp=ts(1420102801, 0),
                   event_type="urn:x-ipstudio:format:event.query", topic="/dummy", **base)
    grains.append((6, g))

    # An empty grain; in v8/v9 with a negative sync timestamp.
    sync = ts(5, 3, -1) if version >= 8 else ts(5, 3)
    g = GrainFactory(src_id=SOURCE, flow_id=flow(7), origin_timestamp=ts(1420102800, 0),
                     sync_timestamp=sync, creation_timestamp=ts(1700000000, 123),
                     rate=Fraction(0), duration=Fraction(0))
    grains.append((7, g))
    return grains


def write_gsf(path, version):
    grains = make_grains(version)
    with open(path, "wb") as f:
        enc = GSFEncoder(f, major=version, minor=0, id=FILE_ID, created=CREATED,
                         tags=[("title", "grainstore interop"), ("note", "v%d" % version)])
        for local_id in sorted({lid for lid, _ in grains}):
            seg = enc.add_segment(id=segment_id(local_id), local_id=local_id,
                                  tags=[("flow", str(flow(local_id)))] if local_id % 2 else None)
            if local_id == 1:
                seg.add_flow(SOURCE, flow(1), "urn:x-nmos:format:video", '{"label": "interop"}')
        with enc as open_enc:
            for local_id, g in grains:
                open_enc.add_grain(g, segment_local_id=local_id)


def grain_json(g, drop_creation):
    meta = copy.deepcopy(g.meta)
    if drop_creation:
        meta["grain"].pop("creation_timestamp", None)
    data = bytes(g.data) if g.data is not None else b""
    return {"meta": json.loads(json.dumps(meta, default=str)), "data": base64.b64encode(data).decode("ascii")}


def decode_gsf(path):
    with open(path, "rb") as f:
        with GSFDecoder(file_data=f) as dec:
            head = dec.file_headers
            grains = []
            for g, local_id in dec.grains(loading_mode=GrainDataLoadingMode.LOAD_IMMEDIATELY):
                grains.append((local_id, g))
    return head, grains


def head_json(head):
    return {
        "id": str(head["id"]),
        "created": head["created"].strftime("%Y-%m-%dT%H:%M:%S"),
        "tags": [list(t) for t in head["tags"]],
        "segments": [
            {
                "local_id": s["local_id"],
                "id": str(s["id"]),
                "count": s["count"],
                "tags": [list(t) for t in s["tags"]],
                **({"flow": {"source_id": str(s["flow"]["source_id"]),
                             "flow_id": str(s["flow"]["flow_id"]),
                             "format": s["flow"]["format"],
                             "data": s["flow"]["data"]}} if "flow" in s else {}),
            }
            for s in head["segments"]
        ],
    }


def cmd_make(outdir):
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    for version in (7, 8, 9):
        path = out / f"mediagrains_v{version}.gsf"
        write_gsf(path, version)
        head, grains = decode_gsf(path)
        expected = {
            "major": version,
            "minor": 0,
            "head": head_json(head),
            "grains": [{"local_id": lid, **grain_json(g, True)} for lid, g in grains],
        }
        (out / f"mediagrains_v{version}.json").write_text(json.dumps(expected, indent=1) + "\n")
    return 0


def fields(g, with_creation):
    """Every header field of a grain, through mediagrains' accessors, and its payload."""
    f = {
        "grain_type": g.grain_type,
        "source_id": g.source_id,
        "flow_id": g.flow_id,
        "origin_timestamp": g.origin_timestamp,
        "sync_timestamp": g.sync_timestamp,
        "rate": g.rate,
        "duration": g.duration,
        "timelabels": [(tl.tag, tl.count, tl.rate, tl.drop_frame) for tl in g.timelabels],
    }
    if with_creation:
        f["creation_timestamp"] = g.creation_timestamp
    if g.grain_type == "video":
        f.update(format=int(g.cog_frame_format), layout=int(g.cog_frame_layout), width=g.width,
                 height=g.height, extension=g.extension, source_aspect_ratio=g.source_aspect_ratio,
                 pixel_aspect_ratio=g.pixel_aspect_ratio,
                 components=[(c.stride, c.offset, c.width, c.height, c.length) for c in g.components])
    elif g.grain_type == "coded_video":
        f.update(format=int(g.cog_frame_format), layout=int(g.cog_frame_layout),
                 origin_width=g.origin_width, origin_height=g.origin_height,
                 coded_width=g.coded_width, coded_height=g.coded_height,
                 is_key_frame=g.is_key_frame, temporal_offset=g.temporal_offset,
                 unit_offsets=list(g.unit_offsets))
    elif g.grain_type == "audio":
        f.update(format=int(g.cog_audio_format), channels=g.channels, samples=g.samples,
                 sample_rate=g.sample_rate)
    elif g.grain_type == "coded_audio":
        f.update(format=int(g.cog_audio_format), channels=g.channels, samples=g.samples,
                 priming=g.priming, remainder=g.remainder, sample_rate=g.sample_rate)
    elif g.grain_type == "event":
        f.update(event_type=g.event_type, topic=g.topic,
                 event_data=[dict(d) for d in g.event_data])
    f["payload"] = bytes(g.data) if g.data is not None else b""
    return f


def diff(label, a, b):
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            out.append(f"{label}: {key}: got {a.get(key)!r:.200}, expected {b.get(key)!r:.200}")
    return out


def from_json_form(obj):
    data = obj.get("data")
    # An empty payload is no payload: mediagrains keeps None for grains without data.
    return GrainFactory(obj["meta"], base64.b64decode(data) if data else None)


def cmd_check(gsf_file, expected_file):
    expected = json.loads(Path(expected_file).read_text())
    head, grains = decode_gsf(gsf_file)
    problems = []
    got_head = head_json(head)
    want_head = expected["head"]
    for key in ("id", "created", "tags"):
        if got_head[key] != want_head[key]:
            problems.append(f"head {key}: got {got_head[key]!r}, expected {want_head[key]!r}")
    if len(got_head["segments"]) != len(want_head["segments"]):
        problems.append(f"head: {len(got_head['segments'])} segments, expected {len(want_head['segments'])}")
    for got, want in zip(got_head["segments"], want_head["segments"]):
        for key in ("local_id", "id", "tags", "flow"):
            if got.get(key) != want.get(key):
                problems.append(f"segment {want['local_id']} {key}: got {got.get(key)!r}, expected {want.get(key)!r}")
        if got["count"] != -1 and got["count"] != want["count"]:
            problems.append(f"segment {want['local_id']} count: got {got['count']}, expected {want['count']}")
    want_grains = expected["grains"]
    if len(grains) != len(want_grains):
        problems.append(f"{len(grains)} grains, expected {len(want_grains)}")
    for i, ((local_id, g), want) in enumerate(zip(grains, want_grains)):
        if local_id != want["local_id"]:
            problems.append(f"grain {i}: local_id {local_id}, expected {want['local_id']}")
        problems += diff(f"grain {i}", fields(g, False), fields(from_json_form(want), False))
    for p in problems:
        print(p, file=sys.stderr)
    print(f"checked {len(grains)} grains in {gsf_file}: {'OK' if not problems else 'DIFFERENT'}")
    return 1 if problems else 0


def cmd_probe(gsf_file):
    probe = Path(sys.executable).parent / "gsf_probe"
    result = subprocess.run([str(probe), "--all-grains", str(gsf_file)], capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        print(f"gsf_probe failed with status {result.returncode}", file=sys.stderr)
        return 1
    report = json.loads(result.stdout)
    head, grains = decode_gsf(gsf_file)
    want = {str(s["local_id"]) for s in head["segments"]}
    got = set(report["segments"].keys())
    if got != want:
        print(f"gsf_probe reports segments {sorted(got)}, expected {sorted(want)}", file=sys.stderr)
        return 1
    probed = sum(len(s.get("grain_data", [])) for s in report["segments"].values())
    if probed != len(grains):
        print(f"gsf_probe reports {probed} grains, expected {len(grains)}", file=sys.stderr)
        return 1
    print(f"gsf_probe OK: {len(got)} segments, {probed} grains")
    return 0


def cmd_json_make(outfile):
    with open(outfile, "w") as f:
        for _, g in make_grains(9):
            f.write(json.dumps(grain_json(g, False)) + "\n")
    return 0


def cmd_json_check(ndjson_file):
    lines = [line for line in Path(ndjson_file).read_text().splitlines() if line.strip()]
    originals = [g for _, g in make_grains(9)]
    problems = []
    if len(lines) != len(originals):
        problems.append(f"{len(lines)} lines, expected {len(originals)}")
    for i, (line, original) in enumerate(zip(lines, originals)):
        rebuilt = from_json_form(json.loads(line))
        problems += diff(f"line {i}", fields(rebuilt, True), fields(original, True))
        if rebuilt != original:
            problems.append(f"line {i}: mediagrains equality fails: meta {rebuilt.meta!r:.400} vs {original.meta!r:.400}")
    for p in problems:
        print(p, file=sys.stderr)
    print(f"checked {len(lines)} JSON grains: {'OK' if not problems else 'DIFFERENT'}")
    return 1 if problems else 0


def main(argv):
    commands = {
        "make": (cmd_make, 1),
        "check": (cmd_check, 2),
        "probe": (cmd_probe, 1),
        "json-make": (cmd_json_make, 1),
        "json-check": (cmd_json_check, 1),
    }
    if len(argv) < 2 or argv[1] not in commands or len(argv) - 2 != commands[argv[1]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    func, _ = commands[argv[1]]
    return func(*argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
