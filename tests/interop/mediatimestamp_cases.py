#!/usr/bin/env python3
"""Writes tests/data/mediatimestamp_cases.json, the table of expected results that
tests/time_mediatimestamp.rs checks grainstore::time against.

Every expected value is computed here by the real `mediatimestamp` library; nothing
is re-derived by hand. Where grainstore deliberately refuses text that
mediatimestamp accepts (its parsers are strict), the case says `"ours": "reject"`
and gives the reason, and mediatimestamp's lenient reading is still recorded.
Where mediatimestamp silently clamps a result to its range, the case says
`"clamped": true` and grainstore must report an error instead.

Regenerate (from the crate root) with:

    ~/.cache/grainstore/venv/bin/python tests/interop/mediatimestamp_cases.py

The output is deterministic (fixed random seed), so a regenerated table only differs
when the library or this script does.
"""

import json
import pathlib
import random
from fractions import Fraction

import mediatimestamp
from mediatimestamp.constants import UTC_LEAP
from mediatimestamp.immutable import Timestamp, TimeRange

OUT = pathlib.Path(__file__).resolve().parent.parent / "data" / "mediatimestamp_cases.json"
LIMIT = Timestamp.MAX_SECONDS * Timestamp.MAX_NANOSEC - 1  # largest |nanoseconds|
NS = Timestamp.MAX_NANOSEC
MAX = Timestamp(ns=LIMIT)
MIN = Timestamp(ns=-LIMIT)
rng = random.Random(20261125)


def attempt(fn):
    """fn()'s result, or None when mediatimestamp raises."""
    try:
        return fn()
    except Exception:  # noqa: BLE001 - any refusal counts as an error
        return None


def ts_str(ns):
    return Timestamp(ns=ns).to_sec_nsec()


ROUNDINGS = {
    "nearest": Timestamp.ROUND_NEAREST,
    "up": Timestamp.ROUND_UP,
    "down": Timestamp.ROUND_DOWN,
}
RANGE_ROUNDINGS = {
    "nearest": TimeRange.ROUND_NEAREST,
    "up": TimeRange.ROUND_UP,
    "down": TimeRange.ROUND_DOWN,
    "in": TimeRange.ROUND_IN,
    "out": TimeRange.ROUND_OUT,
    "start": TimeRange.ROUND_START,
    "end": TimeRange.ROUND_END,
}
RATES = [(25, 1), (30000, 1001), (48000, 1), (50, 1), (60000, 1001), (24000, 1001),
         (44100, 1), (1, 1), (3, 7), (1000000000, 1), (3000000000, 1)]
BAD_RATES = [(0, 1), (-25, 1), (25, -1), (25, 0)]

cases = {}

# --- Timestamp text -------------------------------------------------------------

TIMESTAMP_ACCEPTED = [
    "0:0", "1:0", "1:500000000", "-1:500000000", "-0:5", "-0:0", "0:999999999",
    "1420102800:40000000", "1795600837:500000000", "281474976710655:999999999",
    "-281474976710655:999999999", "01:050", "1:000000001", "00000:0",
    "-1420102800:0", "4:5",
]
TIMESTAMP_STRICT = {
    "1:1000000000": "nanoseconds must be below 10^9 (mediatimestamp carries into seconds)",
    "1:9999999999": "nanoseconds must be below 10^9",
    "281474976710656:0": "seconds above 2^48-1 (mediatimestamp clamps)",
    "-281474976710656:0": "seconds above 2^48-1 (mediatimestamp clamps)",
    "99999999999999999999:0": "seconds above 2^48-1 (mediatimestamp clamps)",
    "1": "seconds without ':nanoseconds'",
    "-7": "seconds without ':nanoseconds'",
    "1.5": "sec.frac is not the sec:nsec form",
    "-1.25": "sec.frac is not the sec:nsec form",
    " 1:0": "surrounding space",
    "1:0 ": "surrounding space",
    "+1:0": "'+' sign",
    "1:+5": "'+' sign",
    "1:-5": "negative nanoseconds",
    "1_000:0": "digit separators",
    "1:1_0": "digit separators",
    "2026-11-25T10:00:00Z": "ISO 8601 is a separate parser (Timestamp::from_iso8601)",
    "１:0": "non-ASCII digits",
}
TIMESTAMP_REFUSED_BY_BOTH = ["", ":", "1:", ":5", "1:0:0", "abc", "--1:0", "1:x", "x:1", "-", "1::0"]

rows = []
for text in TIMESTAMP_ACCEPTED:
    python = attempt(lambda: Timestamp.from_str(text).to_sec_nsec())
    assert python is not None, text
    rows.append({"input": text, "python": python, "ours": "accept"})
for text, why in TIMESTAMP_STRICT.items():
    python = attempt(lambda: Timestamp.from_str(text).to_sec_nsec())
    rows.append({"input": text, "python": python, "ours": "reject", "why": why})
for text in TIMESTAMP_REFUSED_BY_BOTH:
    python = attempt(lambda: Timestamp.from_str(text).to_sec_nsec())
    assert python is None, text
    rows.append({"input": text, "python": None, "ours": "reject", "why": "mediatimestamp refuses it too"})
cases["timestamp_parse"] = rows

values = [0, 1, -1, NS - 1, -(NS - 1), NS, -NS, NS + 1, -(NS + 1), LIMIT, -LIMIT, 1_500_000_000,
          -1_500_000_000, 1420102800 * NS + 40000000]
values += [rng.randrange(-LIMIT, LIMIT + 1) for _ in range(40)]
values += [rng.randrange(-10 * NS, 10 * NS) for _ in range(20)]
rows = []
for ns in values:
    t = Timestamp(ns=ns)
    rows.append({"nanos": str(ns), "python": t.to_sec_nsec(),
                 "parts": [t.sign < 0, t.sec, t.ns]})
cases["timestamp_format"] = rows

# --- Arithmetic -------------------------------------------------------------------

rows = []
pairs = [(LIMIT, 1), (-LIMIT, -1), (LIMIT, -LIMIT), (LIMIT, LIMIT), (0, 0), (NS, -3 * NS // 2),
         (-1, 1), (LIMIT - 5, 5), (LIMIT - 5, 6)]
pairs += [(rng.randrange(-LIMIT, LIMIT + 1), rng.randrange(-LIMIT, LIMIT + 1)) for _ in range(30)]
for a, b in pairs:
    ta, tb = Timestamp(ns=a), Timestamp(ns=b)
    rows.append({"a": ta.to_sec_nsec(), "b": tb.to_sec_nsec(),
                 "sum": (ta + tb).to_sec_nsec(), "sum_overflows": abs(a + b) > LIMIT,
                 "difference": (ta - tb).to_sec_nsec(), "difference_overflows": abs(a - b) > LIMIT})
cases["timestamp_add_sub"] = rows

# --- Counts at a rate --------------------------------------------------------------


def count_points(num, den):
    """Timestamps (ns) at and around sample boundaries and half-way points."""
    rate = Fraction(num, den)
    points = {0, 1, -1, LIMIT, -LIMIT, LIMIT - 1, 1795600837 * NS, -1795600837 * NS}
    for k in [0, 1, 2, 25, 1001, 48000, 44_900_000_000]:
        for sign in (1, -1):
            base = sign * ((NS * k * rate.denominator) // rate.numerator)
            half = (NS * rate.denominator) // (2 * rate.numerator)
            whole = (NS * rate.denominator) // rate.numerator
            for delta in (0, 1, -1, half, half - 1, half + 1, whole - 1):
                v = base + sign * delta
                if abs(v) <= LIMIT:
                    points.add(v)
    points.update(rng.randrange(-LIMIT, LIMIT + 1) for _ in range(6))
    points.update(rng.randrange(-100 * NS, 100 * NS) for _ in range(6))
    return sorted(points)


# One row per (timestamp, rate, rounding): to_count and normalise (from_count of it).
to_count_rows, from_count_rows = [], []
for num, den in RATES:
    rate = Fraction(num, den)
    for ns in count_points(num, den):
        t = Timestamp(ns=ns)
        for name, rounding in ROUNDINGS.items():
            count = t.to_count(num, den, rounding)
            exact = (NS * abs(count) * rate.denominator) // rate.numerator
            to_count_rows.append({"timestamp": t.to_sec_nsec(), "rate": [num, den], "rounding": name,
                                  "count": str(count),
                                  "normalised": t.normalise(num, den, rounding).to_sec_nsec(),
                                  "clamped": exact > LIMIT})
    counts = [0, 1, -1, 2, -2, 24, 25, 26, -25, -26, 1000, 1001, -1001, 29970, 48000, -48001,
              44_900_000_000, -44_900_000_000, 10**25, -10**25, 2**100]
    counts += [rng.randrange(-10**12, 10**12) for _ in range(8)]
    for count in counts:
        exact = (NS * abs(count) * rate.denominator) // rate.numerator
        from_count_rows.append({"count": str(count), "rate": [num, den],
                                "python": Timestamp.from_count(count, num, den).to_sec_nsec(),
                                "clamped": exact > LIMIT})
for num, den in BAD_RATES:
    to_count_rows.append({"timestamp": "1:0", "rate": [num, den], "rounding": "nearest",
                          "count": attempt(lambda: str(Timestamp(1).to_count(num, den))),
                          "normalised": attempt(lambda: Timestamp(1).normalise(num, den).to_sec_nsec()),
                          "clamped": False})
    from_count_rows.append({"count": "1", "rate": [num, den],
                            "python": attempt(lambda: Timestamp.from_count(1, num, den).to_sec_nsec()),
                            "clamped": False})
cases["to_count"] = to_count_rows
cases["from_count"] = from_count_rows

# --- ISO 8601 UTC -------------------------------------------------------------------

iso_points = [0, 1, -1, NS // 2, -NS // 2, LIMIT, -LIMIT, 86400 * NS, -86400 * NS,
              1795600837 * NS + NS // 2, 1483228837 * NS, -62135596800 * NS, -62135596801 * NS,
              253402300836 * NS + NS - 1, 253402300837 * NS, -2208988800 * NS]
for utc, tai_minus_one in UTC_LEAP:
    for delta in (-NS, -1, 0, 1, NS // 2, NS - 1, NS, 2 * NS):
        iso_points.append(tai_minus_one * NS + delta)
    iso_points.append(utc * NS)
iso_points += [s * NS + d for s in range(63071998, 63072012) for d in (0, 123456789)]
iso_points += [rng.randrange(0, 2_000_000_000 * NS) for _ in range(40)]
iso_points += [rng.randrange(-62135596800 * NS, 253402300836 * NS) for _ in range(40)]
iso_points += [rng.randrange(-LIMIT, LIMIT + 1) for _ in range(20)]
rows = []
for ns in iso_points:
    t = Timestamp(ns=ns)
    text = t.to_iso8601_utc()
    back = attempt(lambda: Timestamp.from_iso8601_utc(text).to_sec_nsec())
    rows.append({"timestamp": t.to_sec_nsec(), "python": text, "python_back": back})
cases["iso8601_format"] = rows

ISO_ACCEPTED = [
    "2026-11-25T10:00:00.5Z", "2026-11-25T10:00:00Z", "2026-11-25T10:00:00.123456789Z",
    "2026-11-25T10:00:00.000000001Z", "1970-01-01T00:00:00Z", "1969-12-31T23:59:59Z",
    "1969-12-31T23:59:59.5Z", "1969-12-31T23:59:59.999999999Z", "1900-01-01T00:00:00Z",
    "1800-02-28T12:34:56.7Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z",
    "1971-12-31T23:59:59Z", "1971-12-31T23:59:60Z", "1972-01-01T00:00:00Z",
    "1972-01-01T00:00:05Z", "2000-02-29T00:00:00Z", "2024-02-29T23:59:59.25Z",
    "2016-12-31T23:59:60.5Z",
]
for utc, _ in UTC_LEAP:
    day_before = Timestamp(utc - 1).to_iso8601_utc()[:10]  # pre-1972 stamps are UTC already
    ISO_ACCEPTED += [day_before + "T23:59:59Z", day_before + "T23:59:60Z",
                     day_before + "T23:59:60.999999999Z", day_before + "T23:59:59.999999999Z"]
    ISO_ACCEPTED.append(Timestamp.from_unix(utc, 0).to_iso8601_utc())
for _ in range(40):
    y, mo = rng.randrange(1, 10000), rng.randrange(1, 13)
    d = rng.randrange(1, 29)
    frac = str(rng.randrange(0, NS)).rjust(9, "0")[: rng.randrange(1, 10)]
    ISO_ACCEPTED.append("%04d-%02d-%02dT%02d:%02d:%02d.%sZ" % (
        y, mo, d, rng.randrange(24), rng.randrange(60), rng.randrange(60), frac))
ISO_STRICT = {
    "2026-11-25T10:00:00.1234567891Z": "more than 9 fraction digits (mediatimestamp truncates)",
    "2026-11-25T10:00:00.Z": "'.' without fraction digits",
    "2026-02-29T00:00:00Z": "no 29 February in 2026 (mediatimestamp rolls over)",
    "2026-04-31T00:00:00Z": "no 31 April (mediatimestamp rolls over)",
    "2026-11-25T24:00:00Z": "hour 24 (mediatimestamp rolls over)",
    "2026-11-25T10:60:00Z": "minute 60 (mediatimestamp rolls over)",
    "2026-11-25T10:00:61Z": "second 61",
    "2020-06-30T23:59:60Z": "no leap second that day (mediatimestamp reads :59)",
    "2016-12-31T12:00:60Z": "second 60 that is not the last second of a leap day",
    "1969-12-31T23:59:60Z": "no leap second that day",
    "2026-11-25T10:00:00+00:00Z": "offset text",
    "+2026-11-25T10:00:00Z": "'+' sign",
    "2026-1-25T10:00:00Z": "one-digit month",
    "2026-11-25T1:00:00Z": "one-digit hour",
    "02026-11-25T10:00:00Z": "five-digit year",
    "2026-11-25T10:00:00.5 Z": "space",
    "2026-11-25T10:00:00.5x9Z": "junk inside the fraction (mediatimestamp stops at it)",
}
ISO_REFUSED_BY_BOTH = ["", "2026-11-25T10:00:00", "2026-11-25 10:00:00Z", "2026-11-25T10:00Z",
                       "2026-13-01T00:00:00Z", "0000-01-01T00:00:00Z", "10000-01-01T00:00:00Z",
                       "2026-11-25T10:00:00z", "2026-11-25t10:00:00Z", "1:0", "Z"]
rows = []
for text in ISO_ACCEPTED:
    python = attempt(lambda: Timestamp.from_iso8601_utc(text).to_sec_nsec())
    assert python is not None, text
    rows.append({"input": text, "python": python, "ours": "accept"})
for text, why in ISO_STRICT.items():
    rows.append({"input": text, "python": attempt(lambda: Timestamp.from_iso8601_utc(text).to_sec_nsec()),
                 "ours": "reject", "why": why})
for text in ISO_REFUSED_BY_BOTH:
    assert attempt(lambda: Timestamp.from_iso8601_utc(text)) is None, text
    rows.append({"input": text, "python": None, "ours": "reject", "why": "mediatimestamp refuses it too"})
cases["iso8601_parse"] = rows

# --- TimeRange ------------------------------------------------------------------------

RANGE_ACCEPTED = [
    "[0:0_10:0)", "(0:0_10:0]", "[0:0_10:0]", "(0:0_10:0)", "[5:0_", "(5:0_", "[5:0_)", "_5:0]",
    "_5:0)", "[_5:0)", "(_5:0]", "_", "[_]", "(_)", "[_)", "()", "[5:0]", "5:0", "1:0_2:0",
    "5:0_5:0", "[5:0_5:0)", "(5:0_5:0]", "(5:0_5:0)", "[5:0_5:0]", "[2:0_1:0]", "[1:0_2:0",
    "1:0_2:0)", "(1:0_2:0", "-1:500000000_-0:1", "[-10:0_-5:0)", "[1420102800:40000000_1420102801:0)",
    "[281474976710655:999999999]", "(-281474976710655:999999999_281474976710655:999999999)",
    "_-0:1)", "[0:1_", "[01:5_2:050)", "-0:0", "(-0:0_0:0]",
]
RANGE_STRICT = {
    "": "empty text is not a range (mediatimestamp reads it as the empty range)",
    "[1:0__2:0)": "second '_' (mediatimestamp ignores the rest)",
    "[1:0_2:0)junk": "text after the range (mediatimestamp ignores it)",
    "[1:0_2:0))": "text after the range",
    "[0:0_1:0] ": "trailing space",
    "(5:0)": "instant with exclusive brackets (mediatimestamp reads [5:0])",
    "(5:0]": "instant with an exclusive bracket",
    "[5:0)": "instant with an exclusive bracket",
    "[5:0": "instant with one bracket",
    "5:0]": "instant with one bracket",
    "[]": "brackets around nothing (mediatimestamp reads the empty range)",
    "[)": "brackets around nothing",
    "(]": "brackets around nothing",
    "(": "a lone bracket",
    "[1:1000000000_2:0)": "nanoseconds of 10 digits (mediatimestamp carries)",
    "[281474976710656:0_": "seconds above 2^48-1 (mediatimestamp clamps)",
    "[1.5_2:0)": "sec.frac timestamps",
    "[1_2:0)": "seconds without ':nanoseconds'",
    "[2026-11-25T10:00:00Z_2026-11-25T11:00:00Z)": "ISO 8601 inside a range",
    "[ 1:0_2:0)": "space",
    "[+1:0_2:0)": "'+' sign",
    "1:0_2:0_3:0": "two separators",
}
RANGE_REFUSED_BY_BOTH = ["garbage", "[1:0:0_2:0)", "[x_", "[1:0_x)"]
rows = []
for text in RANGE_ACCEPTED:
    python = attempt(lambda: str(TimeRange.from_str(text)))
    assert python is not None, text
    rows.append({"input": text, "python": python, "ours": "accept"})
for text, why in RANGE_STRICT.items():
    rows.append({"input": text, "python": attempt(lambda: str(TimeRange.from_str(text))),
                 "ours": "reject", "why": why})
for text in RANGE_REFUSED_BY_BOTH:
    assert attempt(lambda: TimeRange.from_str(text)) is None, text
    rows.append({"input": text, "python": None, "ours": "reject", "why": "mediatimestamp refuses it too"})
cases["timerange_parse"] = rows


def bound(r, which):
    """Bound of a range as [kind, timestamp], mediatimestamp's start/end and inclusivity."""
    ts = r.start if which == "start" else r.end
    if ts is None:
        return ["unbounded", None]
    inclusive = r.includes_start() if which == "start" else r.includes_end()
    return ["inclusive" if inclusive else "exclusive", ts.to_sec_nsec()]


OP_RANGES = [
    "()", "_", "[0:0_10:0)", "[0:0_10:0]", "(0:0_10:0)", "(0:0_10:0]", "[5:0_15:0)", "[10:0_20:0)",
    "(10:0_20:0)", "[10:0]", "[0:0]", "[5:0]", "[0:0_", "(0:0_", "_0:0]", "_0:0)", "_10:0)",
    "[10:0_", "(10:0_", "[-5:0_5:0)", "[-10:0_-5:0]", "[3:0_7:0]", "_5:0]", "(5:0_", "[-10:0_10:0]",
    "(9:999999999_10:0]",
]
points = [-10, -5, 0, 3, 5, 7, 10, 15, 20]
for _ in range(12):
    a, b = sorted(rng.sample(points, 2))
    lo = rng.choice(["[", "(", ""])
    hi = rng.choice(["]", ")", ""])
    start = "" if rng.random() < 0.15 else "%d:0" % a
    end = "" if rng.random() < 0.15 else "%d:0" % b
    text = lo + start + "_" + end + hi
    OP_RANGES.append(str(TimeRange.from_str(text)))
rows = []
for text in OP_RANGES:
    r = TimeRange.from_str(text)
    length = None if not r.finite() else str(r.length.to_nanosec())
    rows.append({"range": text, "python": str(r), "is_empty": r.is_empty(), "start": bound(r, "start"),
                 "end": bound(r, "end"), "length_nanos": length})
cases["timerange_bounds"] = rows
rows = []
for a_text in OP_RANGES:
    a = TimeRange.from_str(a_text)
    for b_text in OP_RANGES:
        b = TimeRange.from_str(b_text)
        rows.append({
            "a": a_text, "b": b_text,
            "intersect": str(a.intersect_with(b)),
            "overlaps": a.overlaps_with_timerange(b),
            "contains_range": a.contains_subrange(b),
            "encompass": str(a.extend_to_encompass_timerange(b)),
            "earlier": a.is_earlier_than_timerange(b),
            "later": a.is_later_than_timerange(b),
            "equal": a == b,
        })
cases["timerange_pairs"] = rows
rows = []
for text in OP_RANGES:
    r = TimeRange.from_str(text)
    for ns in [-10 * NS, -5 * NS - 1, -5 * NS, 0, 1, 5 * NS - 1, 5 * NS, 10 * NS - 1, 10 * NS, 10 * NS + 1,
               20 * NS, LIMIT, -LIMIT]:
        t = Timestamp(ns=ns)
        rows.append({"range": text, "timestamp": t.to_sec_nsec(), "python": t in r})
cases["timerange_contains"] = rows

NORMALISE_RANGES = OP_RANGES + [
    "[0:10000000_1:0]", "(0:10000000_1:0)", "[0:20000000_0:60000000)", "[-0:20000000_0:20000000]",
    "[1795600837:16683333_1795600838:500000000)", "(-3:33366666_-1:0]", "[0:1_0:2)", "[0:19999999_",
    "_0:20000001)", "[1:0_1:0]",
]
rows = []
for text in NORMALISE_RANGES:
    r = TimeRange.from_str(text)
    for num, den in RATES[:7]:
        for name, rounding in RANGE_ROUNDINGS.items():
            result = str(r.normalise(num, den, rounding))
            assert str(MAX) not in result and str(MIN) not in result, (text, result)
            rows.append({"range": text, "rate": [num, den], "rounding": name, "python": result})
for num, den in BAD_RATES:
    rows.append({"range": "[0:0_1:0)", "rate": [num, den], "rounding": "nearest",
                 "python": attempt(lambda: str(TimeRange.from_str("[0:0_1:0)").normalise(num, den)))})
cases["timerange_normalise"] = rows

# --- Output -----------------------------------------------------------------------------

with OUT.open("w") as f:
    f.write('{\n  "generator": "tests/interop/mediatimestamp_cases.py",\n')
    f.write('  "mediatimestamp_version": %s,\n' % json.dumps(mediatimestamp.__version__
                                                           if hasattr(mediatimestamp, "__version__")
                                                           else __import__("importlib.metadata").metadata
                                                           .version("mediatimestamp")))
    f.write('  "cases": {\n')
    kinds = list(cases)
    for i, kind in enumerate(kinds):
        f.write('    %s: [\n' % json.dumps(kind))
        rows = cases[kind]
        for j, row in enumerate(rows):
            f.write('      %s%s\n' % (json.dumps(row, ensure_ascii=False, separators=(",", ":")),
                                      "," if j + 1 < len(rows) else ""))
        f.write('    ]%s\n' % ("," if i + 1 < len(kinds) else ""))
    f.write('  }\n}\n')
print("wrote %d cases to %s" % (sum(len(r) for r in cases.values()), OUT))
