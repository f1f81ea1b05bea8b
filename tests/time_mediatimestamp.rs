//! grainstore::time against the real Python `mediatimestamp` library.
//!
//! `tests/data/mediatimestamp_cases.json` is written by
//! `tests/interop/mediatimestamp_cases.py` from mediatimestamp itself (regenerate with
//! `~/.cache/grainstore/venv/bin/python tests/interop/mediatimestamp_cases.py`). Each
//! test checks every row of one kind and fails listing the rows that disagree.
//!
//! Rows marked `"ours": "reject"` are text mediatimestamp reads leniently and we
//! refuse with a syntax error; rows marked `"clamped": true` are results mediatimestamp
//! clamps to its range where we report an error.

use std::sync::LazyLock;

use grainstore::time::{Bound, RangeRounding, Rational, Rounding, TimeError, TimeRange, Timestamp};
use serde_json::Value;

static TABLE: LazyLock<Value> = LazyLock::new(|| {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/mediatimestamp_cases.json"
    );
    let text = std::fs::read_to_string(path).expect("the mediatimestamp table is readable");
    serde_json::from_str(&text).expect("the mediatimestamp table is JSON")
});

/// Runs `check` on every row of `kind`, and fails listing each row it rejects.
fn check_rows(kind: &str, check: impl Fn(&Value) -> Result<(), String>) {
    let rows = TABLE["cases"][kind]
        .as_array()
        .unwrap_or_else(|| panic!("the table has no {kind:?} rows"));
    assert!(!rows.is_empty(), "no {kind:?} rows");
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|row| check(row).err().map(|why| format!("  {row}\n    -> {why}")))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} {kind} rows disagree with mediatimestamp:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

fn text<'a>(row: &'a Value, field: &str) -> &'a str {
    row[field]
        .as_str()
        .unwrap_or_else(|| panic!("field {field:?} is not a string in {row}"))
}

fn opt_text<'a>(row: &'a Value, field: &str) -> Option<&'a str> {
    row[field].as_str()
}

fn flag(row: &Value, field: &str) -> bool {
    row[field]
        .as_bool()
        .unwrap_or_else(|| panic!("field {field:?} is not a bool in {row}"))
}

fn ts(s: &str) -> Timestamp {
    s.parse()
        .unwrap_or_else(|e| panic!("table timestamp {s:?} must parse: {e}"))
}

fn range(s: &str) -> TimeRange {
    s.parse()
        .unwrap_or_else(|e| panic!("table range {s:?} must parse: {e}"))
}

fn rate(row: &Value) -> Rational {
    let pair = row["rate"]
        .as_array()
        .expect("rate is [numerator, denominator]");
    Rational::new(
        pair[0].as_i64().expect("integer numerator"),
        pair[1].as_i64().expect("integer denominator"),
    )
}

fn rounding(row: &Value) -> Rounding {
    match text(row, "rounding") {
        "nearest" => Rounding::Nearest,
        "up" => Rounding::Up,
        "down" => Rounding::Down,
        other => panic!("unknown rounding {other:?}"),
    }
}

fn range_rounding(row: &Value) -> RangeRounding {
    match text(row, "rounding") {
        "nearest" => RangeRounding::Nearest,
        "up" => RangeRounding::Up,
        "down" => RangeRounding::Down,
        "in" => RangeRounding::In,
        "out" => RangeRounding::Out,
        "start" => RangeRounding::Start,
        "end" => RangeRounding::End,
        other => panic!("unknown range rounding {other:?}"),
    }
}

fn expect_eq<T: PartialEq + std::fmt::Debug>(what: &str, ours: T, python: T) -> Result<(), String> {
    if ours == python {
        Ok(())
    } else {
        Err(format!("{what}: ours {ours:?}, mediatimestamp {python:?}"))
    }
}

/// The shared rule for parse rows: accepted text prints as mediatimestamp prints it;
/// refused text is a syntax error (never a panic or another error kind).
fn check_parse<T: std::fmt::Display>(
    row: &Value,
    parse: impl Fn(&str) -> Result<T, TimeError>,
) -> Result<(), String> {
    let input = text(row, "input");
    match (text(row, "ours"), parse(input)) {
        ("accept", Ok(value)) => {
            let python = opt_text(row, "python").ok_or("accepted but mediatimestamp refuses")?;
            expect_eq("printed", value.to_string().as_str(), python)
        }
        ("accept", Err(e)) => Err(format!("refused: {e}")),
        ("reject", Ok(value)) => Err(format!("accepted as {value}, should be refused")),
        ("reject", Err(TimeError::Syntax { position, .. })) if position <= input.len() => Ok(()),
        ("reject", Err(e)) => Err(format!("refused with the wrong error: {e:?}")),
        (other, _) => Err(format!("unknown expectation {other:?}")),
    }
}

#[test]
fn timestamp_parse() {
    check_rows("timestamp_parse", |row| {
        check_parse(row, str::parse::<Timestamp>)
    });
}

#[test]
fn timestamp_format() {
    check_rows("timestamp_format", |row| {
        let nanos: i128 = text(row, "nanos").parse().map_err(|e| format!("{e}"))?;
        let t = Timestamp::from_nanos(nanos).map_err(|e| e.to_string())?;
        expect_eq("printed", t.to_string().as_str(), text(row, "python"))?;
        let parts = &row["parts"];
        let python = (
            parts[0].as_bool().unwrap_or_default(),
            parts[1].as_u64().unwrap_or_default(),
            parts[2].as_u64().unwrap_or_default() as u32,
        );
        expect_eq("parts", t.to_parts(), python)?;
        expect_eq("reparsed", ts(&t.to_string()), t)
    });
}

#[test]
fn timestamp_add_sub() {
    check_rows("timestamp_add_sub", |row| {
        let (a, b) = (ts(text(row, "a")), ts(text(row, "b")));
        let sum = ts(text(row, "sum"));
        let difference = ts(text(row, "difference"));
        expect_eq("saturating_add", a.saturating_add(b), sum)?;
        expect_eq("saturating_sub", a.saturating_sub(b), difference)?;
        let checked_sum = (!flag(row, "sum_overflows")).then_some(sum);
        expect_eq("checked_add", a.checked_add(b), checked_sum)?;
        let checked_difference = (!flag(row, "difference_overflows")).then_some(difference);
        expect_eq("checked_sub", a.checked_sub(b), checked_difference)
    });
}

#[test]
fn to_count_and_normalise() {
    check_rows("to_count", |row| {
        let t = ts(text(row, "timestamp"));
        let (rate, rounding) = (rate(row), rounding(row));
        let count = t.to_count(rate, rounding).map(|c| c.to_string()).ok();
        expect_eq("to_count", count.as_deref(), opt_text(row, "count"))?;
        let normalised = t.normalise(rate, rounding).map(|n| n.to_string()).ok();
        let python = if flag(row, "clamped") {
            None
        } else {
            opt_text(row, "normalised")
        };
        expect_eq("normalise", normalised.as_deref(), python)
    });
}

#[test]
fn from_count() {
    check_rows("from_count", |row| {
        let count: i128 = text(row, "count").parse().map_err(|e| format!("{e}"))?;
        let ours = Timestamp::from_count(count, rate(row))
            .map(|t| t.to_string())
            .ok();
        let python = if flag(row, "clamped") {
            None
        } else {
            opt_text(row, "python")
        };
        expect_eq("from_count", ours.as_deref(), python)
    });
}

#[test]
fn iso8601_format() {
    check_rows("iso8601_format", |row| {
        let t = ts(text(row, "timestamp"));
        let printed = text(row, "python");
        expect_eq("to_iso8601", t.to_iso8601().as_str(), printed)?;
        // Reading the printed text back gives what mediatimestamp reads back, including
        // its refusals (years outside 1..=9999) and the 1972 step.
        let back = Timestamp::from_iso8601(printed).map(|b| b.to_string()).ok();
        expect_eq(
            "from_iso8601 of it",
            back.as_deref(),
            opt_text(row, "python_back"),
        )
    });
}

#[test]
fn iso8601_parse() {
    check_rows("iso8601_parse", |row| {
        check_parse(row, Timestamp::from_iso8601)
    });
}

#[test]
fn timerange_parse() {
    check_rows("timerange_parse", |row| {
        check_parse(row, str::parse::<TimeRange>)
    });
}

#[test]
fn timerange_bounds() {
    fn bound_of(value: &Value) -> Bound {
        let kind = value[0].as_str().unwrap_or_default();
        match (kind, value[1].as_str()) {
            ("inclusive", Some(t)) => Bound::Inclusive(ts(t)),
            ("exclusive", Some(t)) => Bound::Exclusive(ts(t)),
            _ => Bound::Unbounded,
        }
    }
    check_rows("timerange_bounds", |row| {
        let r = range(text(row, "range"));
        expect_eq("printed", r.to_string().as_str(), text(row, "python"))?;
        expect_eq("reparsed", range(&r.to_string()), r)?;
        expect_eq("is_empty", r.is_empty(), flag(row, "is_empty"))?;
        expect_eq("start", r.start(), bound_of(&row["start"]))?;
        expect_eq("end", r.end(), bound_of(&row["end"]))?;
        let length = r.length_nanos().map(|n| n.to_string());
        expect_eq("length", length.as_deref(), opt_text(row, "length_nanos"))
    });
}

#[test]
fn timerange_pairs() {
    check_rows("timerange_pairs", |row| {
        let (a, b) = (range(text(row, "a")), range(text(row, "b")));
        expect_eq(
            "intersect",
            a.intersect(&b).to_string().as_str(),
            text(row, "intersect"),
        )?;
        expect_eq("intersect commutes", a.intersect(&b), b.intersect(&a))?;
        expect_eq("overlaps", a.overlaps(&b), flag(row, "overlaps"))?;
        expect_eq(
            "contains_range",
            a.contains_range(&b),
            flag(row, "contains_range"),
        )?;
        expect_eq(
            "extend_to_encompass",
            a.extend_to_encompass(&b).to_string().as_str(),
            text(row, "encompass"),
        )?;
        expect_eq(
            "is_earlier_than",
            a.is_earlier_than(&b),
            flag(row, "earlier"),
        )?;
        expect_eq("is_later_than", a.is_later_than(&b), flag(row, "later"))?;
        expect_eq("==", a == b, flag(row, "equal"))
    });
}

#[test]
fn timerange_contains() {
    check_rows("timerange_contains", |row| {
        let r = range(text(row, "range"));
        let t = ts(text(row, "timestamp"));
        expect_eq("contains", r.contains(t), flag(row, "python"))?;
        expect_eq(
            "contains_range of the instant",
            r.contains_range(&TimeRange::instant(t)),
            flag(row, "python"),
        )
    });
}

#[test]
fn timerange_normalise() {
    check_rows("timerange_normalise", |row| {
        let r = range(text(row, "range"));
        let ours = r
            .normalise(rate(row), range_rounding(row))
            .map(|n| n.to_string())
            .ok();
        expect_eq("normalise", ours.as_deref(), opt_text(row, "python"))
    });
}

#[test]
fn the_table_comes_from_mediatimestamp() {
    let version = TABLE["mediatimestamp_version"].as_str().unwrap_or_default();
    assert!(
        version.starts_with("5."),
        "unexpected mediatimestamp version {version:?}"
    );
}
