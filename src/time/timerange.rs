//! [`TimeRange`]: a span of time with inclusive, exclusive or unbounded ends, its
//! strict text grammar and the set operations of mediatimestamp's `TimeRange`.
//!
//! Grammar (TAMS / mediatimestamp), `ts` being a `sec:nsec` [`Timestamp`]:
//!
//! | text | meaning |
//! | --- | --- |
//! | `[a_b)`, `(a_b]`, `[a_b]`, `(a_b)` | `[`/`]` include the end, `(`/`)` exclude it |
//! | `a_b` | no brackets: both ends inclusive, as mediatimestamp reads it |
//! | `[a_`, `(a_`, `_b]`, `_b)` | unbounded on the side without a timestamp |
//! | `_` | eternity |
//! | `()` | the empty range |
//! | `[a]`, `a` | the instant `a` |
//!
//! A missing bracket next to a timestamp means inclusive, and a bracket next to an
//! unbounded side is allowed and means nothing (both as in mediatimestamp and the TAMS
//! pattern). Where mediatimestamp is lenient the parser refuses, with the byte
//! position: the empty string, anything after the closing bracket (such as the
//! second `_` of `[1:0__2:0)`, which mediatimestamp silently drops), an instant with
//! exclusive or unpaired brackets (`(5:0)`, which mediatimestamp reads as `[5:0]`),
//! brackets around nothing (`[]`), and every timestamp error of
//! [`Timestamp::from_str`](std::str::FromStr). A start after the end is grammatical
//! and gives the empty range, as in mediatimestamp.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::timestamp::{FromStrVisitor, scan, syntax, unexpected};
use super::{Rational, Rounding, TimeError, Timestamp};

/// One end of a [`TimeRange`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bound {
    /// The range includes this timestamp.
    Inclusive(Timestamp),
    /// The range stops just short of this timestamp.
    Exclusive(Timestamp),
    /// The range extends without limit on this side.
    Unbounded,
}

impl Bound {
    /// The timestamp of a bounded end.
    pub const fn timestamp(self) -> Option<Timestamp> {
        match self {
            Bound::Inclusive(ts) | Bound::Exclusive(ts) => Some(ts),
            Bound::Unbounded => None,
        }
    }

    /// Whether this end is a timestamp the range includes.
    pub const fn is_inclusive(self) -> bool {
        matches!(self, Bound::Inclusive(_))
    }

    /// Whether `ts` is on the inside of this bound taken as a start.
    fn admits_after(self, ts: Timestamp) -> bool {
        match self {
            Bound::Inclusive(start) => ts >= start,
            Bound::Exclusive(start) => ts > start,
            Bound::Unbounded => true,
        }
    }

    /// Whether `ts` is on the inside of this bound taken as an end.
    fn admits_before(self, ts: Timestamp) -> bool {
        match self {
            Bound::Inclusive(end) => ts <= end,
            Bound::Exclusive(end) => ts < end,
            Bound::Unbounded => true,
        }
    }

    /// Orders bounds taken as starts: earlier admits more (`Unbounded` first, and at
    /// one timestamp the inclusive start first).
    fn start_key(self) -> (bool, Timestamp, bool) {
        match self {
            Bound::Unbounded => (false, Timestamp::MIN, false),
            Bound::Inclusive(ts) => (true, ts, false),
            Bound::Exclusive(ts) => (true, ts, true),
        }
    }

    /// Orders bounds taken as ends: later admits more (`Unbounded` last, and at one
    /// timestamp the inclusive end last).
    fn end_key(self) -> (bool, Timestamp, bool) {
        match self {
            Bound::Exclusive(ts) => (false, ts, false),
            Bound::Inclusive(ts) => (false, ts, true),
            Bound::Unbounded => (true, Timestamp::MAX, true),
        }
    }
}

/// How [`TimeRange::normalise`] rounds its ends to sample times; mediatimestamp's
/// `TimeRange.ROUND_*`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RangeRounding {
    /// Each end to its nearest sample.
    #[default]
    Nearest,
    /// Both ends to the sample at or after them.
    Up,
    /// Both ends to the sample at or before them.
    Down,
    /// The start up and the end down (never grows the range).
    In,
    /// The start down and the end up (never shrinks the range).
    Out,
    /// The start to its nearest sample, the end in the same direction.
    Start,
    /// The end to its nearest sample, the start in the same direction.
    End,
}

/// A range of time, as mediatimestamp's `TimeRange`: always normalised, so that equal
/// sets of times are equal values (derived `Eq` and `Hash` are meaningful).
///
/// Every empty range is the one [`TimeRange::EMPTY`] (written `()`); its bounds read
/// as `(0:0_0:0)`, as mediatimestamp's `never()`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeRange {
    start: Bound,
    end: Bound,
}

impl TimeRange {
    /// The empty range `()`.
    pub const EMPTY: TimeRange = TimeRange {
        start: Bound::Exclusive(Timestamp::ZERO),
        end: Bound::Exclusive(Timestamp::ZERO),
    };

    /// All of time, `_`.
    pub const ETERNITY: TimeRange = TimeRange {
        start: Bound::Unbounded,
        end: Bound::Unbounded,
    };

    /// The range between two bounds; empty when the start is after the end, or at the
    /// same timestamp unless both ends are inclusive.
    pub fn new(start: Bound, end: Bound) -> TimeRange {
        if let (Some(s), Some(e)) = (start.timestamp(), end.timestamp())
            && (s > e || (s == e && !(start.is_inclusive() && end.is_inclusive())))
        {
            return Self::EMPTY;
        }
        TimeRange { start, end }
    }

    /// The empty range `()`.
    pub const fn empty() -> TimeRange {
        Self::EMPTY
    }

    /// All of time, `_`.
    pub const fn eternity() -> TimeRange {
        Self::ETERNITY
    }

    /// The one instant `[ts]`.
    pub const fn instant(ts: Timestamp) -> TimeRange {
        TimeRange {
            start: Bound::Inclusive(ts),
            end: Bound::Inclusive(ts),
        }
    }

    /// From `start` on, inclusive: `[start_`.
    pub const fn from_start(start: Timestamp) -> TimeRange {
        TimeRange {
            start: Bound::Inclusive(start),
            end: Bound::Unbounded,
        }
    }

    /// Strictly after `ts`: `(ts_`, how a reader continues after the last grain it got.
    pub const fn after(ts: Timestamp) -> TimeRange {
        TimeRange {
            start: Bound::Exclusive(ts),
            end: Bound::Unbounded,
        }
    }

    /// Up to `end`, inclusive: `_end]`.
    pub const fn to_end(end: Timestamp) -> TimeRange {
        TimeRange {
            start: Bound::Unbounded,
            end: Bound::Inclusive(end),
        }
    }

    /// Strictly before `ts`: `_ts)`.
    pub const fn before(ts: Timestamp) -> TimeRange {
        TimeRange {
            start: Bound::Unbounded,
            end: Bound::Exclusive(ts),
        }
    }

    /// `[start_end)`, the usual span of grains (empty unless `start < end`).
    pub fn half_open(start: Timestamp, end: Timestamp) -> TimeRange {
        Self::new(Bound::Inclusive(start), Bound::Exclusive(end))
    }

    /// `[start_end]` (empty when `start > end`).
    pub fn inclusive(start: Timestamp, end: Timestamp) -> TimeRange {
        Self::new(Bound::Inclusive(start), Bound::Inclusive(end))
    }

    /// Where the range starts (`Exclusive(0:0)` for the empty range).
    pub const fn start(&self) -> Bound {
        self.start
    }

    /// Where the range ends (`Exclusive(0:0)` for the empty range).
    pub const fn end(&self) -> Bound {
        self.end
    }

    /// `(start, end)`, or `None` for the empty range.
    pub fn bounds(&self) -> Option<(Bound, Bound)> {
        (!self.is_empty()).then_some((self.start, self.end))
    }

    /// Whether the range contains no time at all.
    pub fn is_empty(&self) -> bool {
        *self == Self::EMPTY
    }

    /// Whether the range is all of time.
    pub fn is_eternity(&self) -> bool {
        *self == Self::ETERNITY
    }

    /// The timestamp of a range holding exactly one instant.
    pub fn as_instant(&self) -> Option<Timestamp> {
        match (self.start, self.end) {
            (Bound::Inclusive(s), Bound::Inclusive(e)) if s == e => Some(s),
            _ => None,
        }
    }

    /// Whether the range has a start (the empty range counts as bounded).
    pub const fn is_bounded_before(&self) -> bool {
        !matches!(self.start, Bound::Unbounded)
    }

    /// Whether the range has an end (the empty range counts as bounded).
    pub const fn is_bounded_after(&self) -> bool {
        !matches!(self.end, Bound::Unbounded)
    }

    /// The length in nanoseconds (end − start), or `None` when unbounded; 0 for the
    /// empty range and for an instant. Nanoseconds rather than a [`Timestamp`] because
    /// a range can be longer than the largest timestamp.
    pub fn length_nanos(&self) -> Option<i128> {
        Some(self.end.timestamp()?.to_nanos() - self.start.timestamp()?.to_nanos())
    }

    /// Whether `ts` is in the range.
    pub fn contains(&self, ts: Timestamp) -> bool {
        self.start.admits_after(ts) && self.end.admits_before(ts)
    }

    /// Whether every time of `other` is in this range, as mediatimestamp's
    /// `contains_subrange`: an empty `other` is contained in any non-empty range, and
    /// the empty range contains nothing.
    pub fn contains_range(&self, other: &TimeRange) -> bool {
        if self.is_empty() {
            return false;
        }
        other.is_empty()
            || (self.start.start_key() <= other.start.start_key()
                && other.end.end_key() <= self.end.end_key())
    }

    /// The times in both ranges.
    pub fn intersect(&self, other: &TimeRange) -> TimeRange {
        if self.is_empty() || other.is_empty() {
            return Self::EMPTY;
        }
        let start = later_start(self.start, other.start);
        let end = earlier_end(self.end, other.end);
        Self::new(start, end)
    }

    /// Whether the ranges have any time in common.
    pub fn overlaps(&self, other: &TimeRange) -> bool {
        !self.intersect(other).is_empty()
    }

    /// The smallest range that contains both (filling any gap between them);
    /// mediatimestamp's `extend_to_encompass_timerange`.
    pub fn extend_to_encompass(&self, other: &TimeRange) -> TimeRange {
        if self.is_empty() {
            return *other;
        }
        if other.is_empty() {
            return *self;
        }
        let start = if self.start.start_key() <= other.start.start_key() {
            self.start
        } else {
            other.start
        };
        let end = if self.end.end_key() >= other.end.end_key() {
            self.end
        } else {
            other.end
        };
        Self::new(start, end)
    }

    /// Whether every time of this range is before every time of `other` (false if
    /// either is empty); mediatimestamp's `is_earlier_than_timerange`.
    pub fn is_earlier_than(&self, other: &TimeRange) -> bool {
        if self.is_empty() || other.is_empty() {
            return false;
        }
        match (self.end.timestamp(), other.start.timestamp()) {
            (Some(end), Some(start)) => {
                end < start
                    || (end == start && !(self.end.is_inclusive() && other.start.is_inclusive()))
            }
            _ => false,
        }
    }

    /// Whether every time of this range is after every time of `other`.
    pub fn is_later_than(&self, other: &TimeRange) -> bool {
        other.is_earlier_than(self)
    }

    /// The times after the whole range (`(end_` or `[end_`), empty if unbounded after;
    /// eternity for the empty range (every time is after nothing), where mediatimestamp
    /// gives `[0:0_`.
    pub fn range_after(&self) -> TimeRange {
        if self.is_empty() {
            return Self::ETERNITY;
        }
        match self.end {
            Bound::Inclusive(ts) => Self::after(ts),
            Bound::Exclusive(ts) => Self::from_start(ts),
            Bound::Unbounded => Self::EMPTY,
        }
    }

    /// The times before the whole range (`_start)` or `_start]`), empty if unbounded
    /// before; eternity for the empty range.
    pub fn range_before(&self) -> TimeRange {
        if self.is_empty() {
            return Self::ETERNITY;
        }
        match self.start {
            Bound::Inclusive(ts) => Self::before(ts),
            Bound::Exclusive(ts) => Self::to_end(ts),
            Bound::Unbounded => Self::EMPTY,
        }
    }

    /// The half-open range `[s_e)` of whole samples at `rate` that this range covers,
    /// as mediatimestamp's `normalise(rate_num, rate_den, rounding)`: each end rounds
    /// to a sample time as `rounding` says, an exclusive start then moves one sample
    /// later and an inclusive end one sample later.
    ///
    /// An error for a non-positive rate, or when a rounded end falls outside the
    /// representable range (where mediatimestamp would clamp).
    pub fn normalise(
        &self,
        rate: Rational,
        rounding: RangeRounding,
    ) -> Result<TimeRange, TimeError> {
        if self.is_empty() {
            // mediatimestamp's `never()` is `(0:0_0:0)`, which normalises to empty too;
            // checking the rate first keeps errors identical.
            rate.positive_parts()?;
            return Ok(Self::EMPTY);
        }
        let (start_rounding, end_rounding) = match rounding {
            RangeRounding::Nearest | RangeRounding::Start | RangeRounding::End => {
                (Rounding::Nearest, Rounding::Nearest)
            }
            RangeRounding::Up => (Rounding::Up, Rounding::Up),
            RangeRounding::Down => (Rounding::Down, Rounding::Down),
            RangeRounding::In => (Rounding::Up, Rounding::Down),
            RangeRounding::Out => (Rounding::Down, Rounding::Up),
        };
        let start_ts = self.start.timestamp();
        let end_ts = self.end.timestamp();
        let mut start = start_ts
            .map(|ts| ts.to_count(rate, start_rounding))
            .transpose()?;
        let mut end = end_ts
            .map(|ts| ts.to_count(rate, end_rounding))
            .transpose()?;
        if let (Some(s), Some(e)) = (start_ts, end_ts) {
            // One end rounds to nearest; the other follows in the same direction.
            if rounding == RangeRounding::Start {
                let same = if start == Some(s.to_count(rate, Rounding::Up)?) {
                    Rounding::Up
                } else {
                    Rounding::Down
                };
                end = Some(e.to_count(rate, same)?);
            } else if rounding == RangeRounding::End {
                let same = if end == Some(e.to_count(rate, Rounding::Up)?) {
                    Rounding::Up
                } else {
                    Rounding::Down
                };
                start = Some(s.to_count(rate, same)?);
            }
        }
        let start = match start {
            Some(count) => {
                let count = if self.start.is_inclusive() {
                    count
                } else {
                    count + 1
                };
                Bound::Inclusive(Timestamp::from_count(count, rate)?)
            }
            None => Bound::Unbounded,
        };
        let end = match end {
            Some(count) => {
                let count = if self.end.is_inclusive() {
                    count + 1
                } else {
                    count
                };
                Bound::Exclusive(Timestamp::from_count(count, rate)?)
            }
            None => Bound::Unbounded,
        };
        Ok(Self::new(start, end))
    }
}

/// The later of two starts (the one admitting less).
fn later_start(a: Bound, b: Bound) -> Bound {
    if a.start_key() >= b.start_key() { a } else { b }
}

/// The earlier of two ends (the one admitting less).
fn earlier_end(a: Bound, b: Bound) -> Bound {
    if a.end_key() <= b.end_key() { a } else { b }
}

impl fmt::Display for TimeRange {
    /// The canonical form, identical to mediatimestamp's `str()`: `()` when empty,
    /// `[a]` for an instant, otherwise brackets only next to timestamps
    /// (`[a_b)`, `(a_`, `_b]`, `_`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("()");
        }
        if let Some(ts) = self.as_instant() {
            return write!(f, "[{ts}]");
        }
        match self.start {
            Bound::Inclusive(ts) => write!(f, "[{ts}")?,
            Bound::Exclusive(ts) => write!(f, "({ts}")?,
            Bound::Unbounded => {}
        }
        f.write_str("_")?;
        match self.end {
            Bound::Inclusive(ts) => write!(f, "{ts}]"),
            Bound::Exclusive(ts) => write!(f, "{ts})"),
            Bound::Unbounded => Ok(()),
        }
    }
}

impl fmt::Debug for TimeRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TimeRange({self})")
    }
}

impl FromStr for TimeRange {
    type Err = TimeError;

    /// Parses the grammar of the module documentation, strictly.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "timerange";
        if s.is_empty() {
            return Err(syntax(
                WHAT,
                s,
                0,
                "empty timerange; write '_' for all of time or '()' for the empty range",
            ));
        }
        if s == "()" {
            return Ok(Self::EMPTY);
        }
        let bytes = s.as_bytes();
        let starts_timestamp = |pos: usize| matches!(bytes.get(pos), Some(b'-' | b'0'..=b'9'));
        let mut pos = 0;

        // `Some(true)` for an inclusive bracket, `Some(false)` for an exclusive one.
        let open = match bytes.first() {
            Some(b'[') => Some(true),
            Some(b'(') => Some(false),
            _ => None,
        };
        if open.is_some() {
            pos += 1;
        }
        let start = if starts_timestamp(pos) {
            let (ts, next) = scan(s, pos, WHAT)?;
            pos = next;
            Some(ts)
        } else {
            None
        };
        let separator = bytes.get(pos) == Some(&b'_');
        let mut end = None;
        if separator {
            pos += 1;
            if starts_timestamp(pos) {
                let (ts, next) = scan(s, pos, WHAT)?;
                pos = next;
                end = Some(ts);
            }
        }
        let close_at = pos;
        let close = match bytes.get(pos) {
            Some(b']') => Some(true),
            Some(b')') => Some(false),
            _ => None,
        };
        if close.is_some() {
            pos += 1;
        }
        if pos != s.len() {
            let context = if bytes.get(pos) == Some(&b'_') {
                "(a timerange has one '_' between start and end)"
            } else {
                "after the end of the timerange"
            };
            return Err(unexpected(s, pos, WHAT, context));
        }

        if !separator {
            let Some(ts) = start else {
                let reason =
                    "expected a timestamp or '_' inside the brackets (the empty range is '()')";
                return Err(syntax(WHAT, s, open.map_or(0, |_| 1), reason));
            };
            return match (open, close) {
                (None, None) | (Some(true), Some(true)) => Ok(Self::instant(ts)),
                (Some(false), _) => Err(syntax(WHAT, s, 0, "an instant is written [ts] or ts")),
                (_, Some(false)) => Err(syntax(
                    WHAT,
                    s,
                    close_at,
                    "an instant is written [ts] or ts",
                )),
                (Some(true), None) => Err(syntax(
                    WHAT,
                    s,
                    close_at,
                    "expected ']' to close the instant",
                )),
                (None, Some(true)) => Err(syntax(WHAT, s, 0, "expected '[' to open the instant")),
            };
        }
        let start = match start {
            Some(ts) if open == Some(false) => Bound::Exclusive(ts),
            Some(ts) => Bound::Inclusive(ts),
            None => Bound::Unbounded,
        };
        let end = match end {
            Some(ts) if close == Some(false) => Bound::Exclusive(ts),
            Some(ts) => Bound::Inclusive(ts),
            None => Bound::Unbounded,
        };
        Ok(Self::new(start, end))
    }
}

impl Serialize for TimeRange {
    /// As its canonical string.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeRange {
    /// From its string form, strictly.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromStrVisitor::<TimeRange>::new("a timerange string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(s: &str) -> TimeRange {
        s.parse().unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn position(s: &str) -> usize {
        match s.parse::<TimeRange>() {
            Err(TimeError::Syntax { position, .. }) => position,
            other => panic!("{s:?} should be a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn parses_the_grammar() {
        for (text, canonical) in [
            ("[0:0_10:0)", "[0:0_10:0)"),
            ("(5:0_", "(5:0_"),
            ("[5:0_)", "[5:0_"),
            ("_5:0]", "_5:0]"),
            ("(_5:0)", "_5:0)"),
            ("_", "_"),
            ("[_]", "_"),
            ("()", "()"),
            ("[5:0]", "[5:0]"),
            ("5:0", "[5:0]"),
            ("1:0_2:0", "[1:0_2:0]"),
            ("5:0_5:0", "[5:0]"),
            ("[5:0_5:0)", "()"),
            ("[2:0_1:0]", "()"),
            ("[1:0_2:0", "[1:0_2:0]"),
            ("-1:500000000_-0:1)", "[-1:500000000_-0:1)"),
        ] {
            assert_eq!(tr(text).to_string(), canonical, "{text}");
        }
    }

    #[test]
    fn refuses_what_mediatimestamp_lets_through() {
        assert_eq!(position(""), 0);
        assert_eq!(position("[1:0__2:0)"), 5);
        assert_eq!(position("1:0:0"), 3);
        assert_eq!(position("[1:1000000000_2:0)"), 12);
        assert_eq!(position("[281474976710656:0_"), 1);
        assert_eq!(position("(5:0)"), 0);
        assert_eq!(position("[5:0)"), 4);
        assert_eq!(position("[5:0"), 4);
        assert_eq!(position("[]"), 1);
        assert_eq!(position("garbage"), 0);
        assert_eq!(position("[0:0_1:0) "), 9);
        assert_eq!(position("[0:0_1:0]]"), 9);
    }

    #[test]
    fn set_operations() {
        let a = tr("[0:0_10:0)");
        let b = tr("[5:0_15:0]");
        assert_eq!(a.intersect(&b), tr("[5:0_10:0)"));
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&tr("[10:0_")));
        assert!(a.contains(ts("0:0")) && !a.contains(ts("10:0")));
        assert!(a.contains_range(&tr("(0:0_10:0)")));
        assert!(!tr("(0:0_10:0)").contains_range(&a));
        assert!(!TimeRange::EMPTY.contains_range(&TimeRange::EMPTY));
        assert!(a.contains_range(&TimeRange::EMPTY));
        assert_eq!(a.extend_to_encompass(&tr("[20:0]")), tr("[0:0_20:0]"));
        assert!(a.is_earlier_than(&tr("[10:0_")));
        assert!(!a.is_earlier_than(&tr("[9:0_")));
        assert_eq!(a.range_after(), tr("[10:0_"));
        assert_eq!(a.range_before(), tr("_0:0)"));
        assert_eq!(a.length_nanos(), Some(10_000_000_000));
        assert_eq!(TimeRange::ETERNITY.length_nanos(), None);
        assert_eq!(TimeRange::EMPTY.bounds(), None);
    }

    #[test]
    fn normalises_to_a_rate() {
        let r25 = Rational::new(25, 1);
        let range = tr("[0:10000000_1:0]");
        assert_eq!(
            range.normalise(r25, RangeRounding::Nearest).unwrap(),
            tr("[0:0_1:40000000)")
        );
        assert_eq!(
            range.normalise(r25, RangeRounding::Up).unwrap(),
            tr("[0:40000000_1:40000000)")
        );
        assert_eq!(
            TimeRange::ETERNITY
                .normalise(r25, RangeRounding::In)
                .unwrap(),
            TimeRange::ETERNITY
        );
        assert!(
            range
                .normalise(Rational::new(0, 1), RangeRounding::In)
                .is_err()
        );
    }

    #[test]
    fn serde_uses_the_string_form() {
        let json = serde_json::to_string(&tr("[0:0_10:0)")).unwrap();
        assert_eq!(json, r#""[0:0_10:0)""#);
        assert_eq!(
            serde_json::from_str::<TimeRange>(&json).unwrap(),
            tr("[0:0_10:0)")
        );
        assert!(serde_json::from_str::<TimeRange>(r#""""#).is_err());
    }
}
