//! [`Timestamp`]: a signed TAI time with nanosecond precision, its strict `sec:nsec`
//! text form, offset arithmetic and conversions to and from counts at a rate.
//!
//! A `Timestamp` is also the type of a signed time offset (a difference of two
//! timestamps), as in mediatimestamp, where `TimeOffset` is the same class.

use std::fmt;
use std::ops::Neg;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::arith::mul_div_floor;
use super::{Rational, TimeError};

/// Nanoseconds in one second.
pub(crate) const NANOS_PER_SEC: i128 = 1_000_000_000;

/// How a conversion to a count of samples rounds a time that falls between samples.
///
/// The directions are on the time line, for negative timestamps too: `Up` never
/// gives an earlier sample, `Down` never a later one. `Nearest` rounds the magnitude
/// half up, so a time exactly half-way between two samples goes away from zero.
/// These are mediatimestamp's `ROUND_NEAREST`, `ROUND_UP` and `ROUND_DOWN`, including
/// its integer-nanosecond approximation of the half and whole sample interval.
///
/// That approximation matters where a sample interval is not a whole number of
/// nanoseconds (30000/1001, 48000): sample times from [`Timestamp::from_count`] are
/// truncated, so `Down` of a sample time can give the sample before it, and `Up` can
/// land up to 2 ns early. `Nearest` is stable (normalising twice changes nothing) at
/// every rate; at rates with whole-nanosecond intervals (25, 50) all three are exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Rounding {
    /// The nearest sample; half-way goes away from zero.
    #[default]
    Nearest,
    /// The sample at or after the time.
    Up,
    /// The sample at or before the time.
    Down,
}

/// A TAI timestamp: signed, nanosecond precision, seconds in `-(2^48-1)..=2^48-1`.
///
/// Stored as one count of nanoseconds so that ordering and arithmetic are plain integer
/// operations; the `sec:nsec` form is a view of it. The sign applies to the whole value:
/// `-1:500000000` is one and a half seconds before the epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    nanos: i128,
}

impl Timestamp {
    /// The largest number of whole seconds either side of zero.
    pub const MAX_SECONDS: u64 = (1 << 48) - 1;
    /// The latest representable timestamp.
    pub const MAX: Timestamp = Timestamp {
        nanos: (Self::MAX_SECONDS as i128) * NANOS_PER_SEC + (NANOS_PER_SEC - 1),
    };
    /// The earliest representable timestamp.
    pub const MIN: Timestamp = Timestamp {
        nanos: -((Self::MAX_SECONDS as i128) * NANOS_PER_SEC + (NANOS_PER_SEC - 1)),
    };
    /// Zero, the TAI epoch.
    pub const ZERO: Timestamp = Timestamp { nanos: 0 };

    /// Builds a timestamp from a sign, whole seconds and nanoseconds (`< 10^9`).
    pub fn from_parts(negative: bool, secs: u64, nanos: u32) -> Result<Self, TimeError> {
        if secs > Self::MAX_SECONDS {
            return Err(TimeError::OutOfRange(format!(
                "seconds {secs} exceed the 48-bit limit {}",
                Self::MAX_SECONDS
            )));
        }
        if nanos >= 1_000_000_000 {
            return Err(TimeError::OutOfRange(format!(
                "nanoseconds {nanos} must be below 1000000000"
            )));
        }
        let magnitude = secs as i128 * NANOS_PER_SEC + nanos as i128;
        Ok(Timestamp {
            nanos: if negative { -magnitude } else { magnitude },
        })
    }

    /// Builds a timestamp from a signed count of nanoseconds since the epoch.
    pub fn from_nanos(nanos: i128) -> Result<Self, TimeError> {
        if !(Self::MIN.nanos..=Self::MAX.nanos).contains(&nanos) {
            return Err(TimeError::OutOfRange(format!(
                "{nanos} ns is outside the 48-bit seconds range"
            )));
        }
        Ok(Timestamp { nanos })
    }

    /// Builds a timestamp from a signed count of whole seconds.
    pub fn from_secs(secs: i64) -> Result<Self, TimeError> {
        Self::from_nanos(i128::from(secs) * NANOS_PER_SEC)
    }

    /// The signed count of nanoseconds since the epoch.
    pub const fn to_nanos(self) -> i128 {
        self.nanos
    }

    /// Sign (true when before the epoch), whole seconds and nanoseconds of the magnitude.
    pub const fn to_parts(self) -> (bool, u64, u32) {
        let magnitude = self.nanos.unsigned_abs();
        (
            self.nanos < 0,
            (magnitude / NANOS_PER_SEC as u128) as u64,
            (magnitude % NANOS_PER_SEC as u128) as u32,
        )
    }

    /// Whether the timestamp is before the epoch.
    pub const fn is_negative(self) -> bool {
        self.nanos < 0
    }

    /// The magnitude (always representable, the range being symmetric).
    pub const fn abs(self) -> Timestamp {
        Timestamp {
            nanos: self.nanos.abs(),
        }
    }

    /// `self + offset`, or `None` outside the representable range.
    pub fn checked_add(self, offset: Timestamp) -> Option<Timestamp> {
        Self::from_nanos(self.nanos + offset.nanos).ok()
    }

    /// `self - offset` (also the offset between two timestamps), or `None` outside the
    /// representable range.
    pub fn checked_sub(self, offset: Timestamp) -> Option<Timestamp> {
        Self::from_nanos(self.nanos - offset.nanos).ok()
    }

    /// `self + nanos`, or `None` outside the representable range.
    pub fn checked_add_nanos(self, nanos: i128) -> Option<Timestamp> {
        Self::from_nanos(self.nanos.checked_add(nanos)?).ok()
    }

    /// `self + offset`, clamped to [`MIN`](Self::MIN)..=[`MAX`](Self::MAX) as
    /// mediatimestamp's `+` is.
    pub fn saturating_add(self, offset: Timestamp) -> Timestamp {
        Self::clamped(self.nanos + offset.nanos)
    }

    /// `self - offset`, clamped as mediatimestamp's `-` is.
    pub fn saturating_sub(self, offset: Timestamp) -> Timestamp {
        Self::clamped(self.nanos - offset.nanos)
    }

    fn clamped(nanos: i128) -> Timestamp {
        Timestamp {
            nanos: nanos.clamp(Self::MIN.nanos, Self::MAX.nanos),
        }
    }

    /// Builds a non-negative offset from a `std` duration.
    pub fn from_std_duration(duration: std::time::Duration) -> Result<Self, TimeError> {
        Self::from_nanos(duration.as_nanos() as i128)
    }

    /// This offset as a `std` duration, or `None` when negative.
    pub fn to_std_duration(self) -> Option<std::time::Duration> {
        let (negative, secs, nanos) = self.to_parts();
        (!negative).then(|| std::time::Duration::new(secs, nanos))
    }

    /// The number of samples at `rate` (Hz) from the epoch to this time, rounded as
    /// `rounding` says; mediatimestamp's `to_count`.
    ///
    /// An error only for a rate that is not positive. Rounding works on the integer
    /// nanosecond half interval (`floor(10^9 / (2 rate))`) and whole interval, exactly
    /// as mediatimestamp does, so results are identical to it at every rate.
    pub fn to_count(self, rate: Rational, rounding: Rounding) -> Result<i128, TimeError> {
        let (numerator, denominator) = rate.positive_parts()?;
        let negative = self.nanos < 0;
        let magnitude = self.nanos.unsigned_abs();
        // The magnitude is rounded, so for a negative time "up" on the time line is
        // "down" for the magnitude.
        let rounding = match (negative, rounding) {
            (true, Rounding::Up) => Rounding::Down,
            (true, Rounding::Down) => Rounding::Up,
            (_, rounding) => rounding,
        };
        let scale = NANOS_PER_SEC as u128 * denominator;
        let count = match rounding {
            Rounding::Down => mul_div_floor(magnitude, numerator, scale),
            Rounding::Nearest => {
                let half_interval = scale / (numerator * 2);
                mul_div_floor(magnitude + half_interval, numerator, scale)
            }
            Rounding::Up => {
                let interval = scale / numerator;
                if interval > 0 {
                    mul_div_floor(magnitude + interval - 1, numerator, scale)
                } else if magnitude > 0 {
                    // Above 1 GHz the interval is 0 ns and mediatimestamp adds -1 ns.
                    mul_div_floor(magnitude - 1, numerator, scale)
                } else {
                    // ... which at zero floors (-1 * rate / 10^9) to a negative count.
                    let count = numerator.div_ceil(scale);
                    return i128::try_from(count)
                        .map(|count| -count)
                        .map_err(|_| Self::count_out_of_range(rate));
                }
            }
        };
        let count = count
            .and_then(|count| i128::try_from(count).ok())
            .ok_or_else(|| Self::count_out_of_range(rate))?;
        Ok(if negative { -count } else { count })
    }

    fn count_out_of_range(rate: Rational) -> TimeError {
        TimeError::OutOfRange(format!("the sample count at rate {rate} is out of range"))
    }

    /// The time of sample `count` at `rate` (Hz) from the epoch, truncated towards zero
    /// to whole nanoseconds; mediatimestamp's `from_count`.
    ///
    /// An error for a rate that is not positive or a time outside the representable
    /// range (where mediatimestamp would clamp).
    pub fn from_count(count: i128, rate: Rational) -> Result<Self, TimeError> {
        let (numerator, denominator) = rate.positive_parts()?;
        let scale = NANOS_PER_SEC as u128 * denominator;
        let magnitude = mul_div_floor(count.unsigned_abs(), scale, numerator)
            .and_then(|magnitude| i128::try_from(magnitude).ok())
            .ok_or_else(|| {
                TimeError::OutOfRange(format!("sample {count} at rate {rate} is out of range"))
            })?;
        Self::from_nanos(if count < 0 { -magnitude } else { magnitude }).map_err(|_| {
            TimeError::OutOfRange(format!("sample {count} at rate {rate} is out of range"))
        })
    }

    /// The time of the sample at `rate` nearest to this one, as `rounding` says;
    /// mediatimestamp's `normalise`.
    pub fn normalise(self, rate: Rational, rounding: Rounding) -> Result<Self, TimeError> {
        Self::from_count(self.to_count(rate, rounding)?, rate)
    }
}

impl Neg for Timestamp {
    type Output = Timestamp;

    /// The mirror image about the epoch (always representable).
    fn neg(self) -> Timestamp {
        Timestamp { nanos: -self.nanos }
    }
}

impl fmt::Display for Timestamp {
    /// The canonical `sec:nsec` form, e.g. `1420102800:40000000` or `-1:500000000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.text().as_str())
    }
}

/// The canonical `sec:nsec` text of a [`Timestamp`], formatted on the stack
/// ([`Timestamp::text`]): for the places that write many timestamps, such as the
/// `Grain-*` headers of every single-grain read.
#[derive(Clone, Copy)]
pub struct TimestampText {
    /// `-`, up to 20 digits of seconds, `:`, up to 9 digits of nanoseconds.
    buf: [u8; 32],
    len: usize,
}

impl TimestampText {
    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits, `-` and `:` are ever written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl Timestamp {
    /// The canonical `sec:nsec` text, without allocating; `to_string` gives the same.
    pub fn text(self) -> TimestampText {
        let (negative, secs, nanos) = self.to_parts();
        let mut text = TimestampText {
            buf: [0; 32],
            len: 0,
        };
        let mut push = |part: &[u8]| {
            text.buf[text.len..text.len + part.len()].copy_from_slice(part);
            text.len += part.len();
        };
        if negative {
            push(b"-");
        }
        push(itoa::Buffer::new().format(secs).as_bytes());
        push(b":");
        push(itoa::Buffer::new().format(nanos).as_bytes());
        text
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl FromStr for Timestamp {
    type Err = TimeError;

    /// Parses the `sec:nsec` form strictly: an optional `-`, decimal seconds up to
    /// 2^48-1, `:`, and one to nine decimal digits of nanoseconds; nothing else (no
    /// spaces, `+`, fractions, ISO 8601 — see [`Timestamp::from_iso8601`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (timestamp, end) = scan(s, 0, "timestamp")?;
        if end != s.len() {
            return Err(unexpected(s, end, "timestamp", "after the nanoseconds"));
        }
        Ok(timestamp)
    }
}

/// A syntax error about `input` at byte `position`.
pub(crate) fn syntax(
    what: &'static str,
    input: &str,
    position: usize,
    reason: impl Into<String>,
) -> TimeError {
    TimeError::Syntax {
        what,
        input: input.to_owned(),
        position,
        reason: reason.into(),
    }
}

/// A syntax error naming the character found at `position` (or the end of input).
pub(crate) fn unexpected(
    input: &str,
    position: usize,
    what: &'static str,
    context: &str,
) -> TimeError {
    match input.get(position..).and_then(|rest| rest.chars().next()) {
        Some(found) => syntax(
            what,
            input,
            position,
            format!("unexpected {found:?} {context}"),
        ),
        None => syntax(what, input, position, format!("unexpected end {context}")),
    }
}

/// Scans one `sec:nsec` timestamp starting at byte `start` of `input` and returns it
/// with the offset just past it; what follows is the caller's business.
pub(crate) fn scan(
    input: &str,
    start: usize,
    what: &'static str,
) -> Result<(Timestamp, usize), TimeError> {
    let bytes = input.as_bytes();
    let digit_at = |pos: usize| {
        bytes
            .get(pos)
            .filter(|b| b.is_ascii_digit())
            .map(|b| b - b'0')
    };
    let mut pos = start;
    let negative = bytes.get(pos) == Some(&b'-');
    if negative {
        pos += 1;
    }

    let secs_start = pos;
    let mut secs: u64 = 0;
    while let Some(digit) = digit_at(pos) {
        // Saturating keeps the loop total; anything above the limit is refused below.
        secs = secs.saturating_mul(10).saturating_add(u64::from(digit));
        pos += 1;
    }
    if pos == secs_start {
        let reason = if pos == input.len() {
            "expected a timestamp `seconds:nanoseconds`".to_owned()
        } else {
            return Err(unexpected(
                input,
                pos,
                what,
                "where decimal seconds were expected",
            ));
        };
        return Err(syntax(what, input, pos, reason));
    }
    if secs > Timestamp::MAX_SECONDS {
        return Err(syntax(
            what,
            input,
            secs_start,
            format!("seconds exceed the 48-bit limit {}", Timestamp::MAX_SECONDS),
        ));
    }

    match bytes.get(pos) {
        Some(b':') => pos += 1,
        Some(b'.') => {
            return Err(syntax(
                what,
                input,
                pos,
                "fractional seconds are not accepted; write seconds:nanoseconds",
            ));
        }
        _ => {
            return Err(unexpected(
                input,
                pos,
                what,
                "where ':' between seconds and nanoseconds was expected",
            ));
        }
    }

    let nanos_start = pos;
    let mut nanos: u32 = 0;
    while let Some(digit) = digit_at(pos) {
        if pos - nanos_start == 9 {
            return Err(syntax(
                what,
                input,
                pos,
                "nanoseconds have at most 9 digits (they must be below 1000000000)",
            ));
        }
        nanos = nanos * 10 + u32::from(digit);
        pos += 1;
    }
    if pos == nanos_start {
        return Err(unexpected(
            input,
            pos,
            what,
            "where decimal nanoseconds were expected",
        ));
    }

    // Both parts were checked above, so this cannot fail; map it anyway rather than panic.
    let timestamp = Timestamp::from_parts(negative, secs, nanos)
        .map_err(|err| syntax(what, input, start, err.to_string()))?;
    Ok((timestamp, pos))
}

impl Serialize for Timestamp {
    /// As its `sec:nsec` string.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    /// From a `sec:nsec` string, strictly.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromStrVisitor::<Timestamp>::new(
            "a `sec:nsec` timestamp string",
        ))
    }
}

/// A serde visitor for types read from their string form.
pub(crate) struct FromStrVisitor<T> {
    expecting: &'static str,
    marker: std::marker::PhantomData<T>,
}

impl<T> FromStrVisitor<T> {
    pub(crate) fn new(expecting: &'static str) -> Self {
        FromStrVisitor {
            expecting,
            marker: std::marker::PhantomData,
        }
    }
}

impl<T> serde::de::Visitor<'_> for FromStrVisitor<T>
where
    T: FromStr<Err = TimeError>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn position(s: &str) -> usize {
        match s.parse::<Timestamp>() {
            Err(TimeError::Syntax { position, .. }) => position,
            other => panic!("{s:?} should be a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn prints_canonically() {
        assert_eq!(ts("1420102800:40000000").to_string(), "1420102800:40000000");
        assert_eq!(ts("-1:500000000").to_nanos(), -1_500_000_000);
        assert_eq!(ts("-0:0").to_string(), "0:0");
        assert_eq!(ts("01:050").to_string(), "1:50");
        assert_eq!(Timestamp::MAX.to_string(), "281474976710655:999999999");
        assert_eq!(Timestamp::MIN.to_string(), "-281474976710655:999999999");
    }

    #[test]
    fn refuses_what_is_not_sec_nsec_and_says_where() {
        assert_eq!(position(""), 0);
        assert_eq!(position("1:0:0"), 3);
        assert_eq!(position("1:1000000000"), 11);
        assert_eq!(position("281474976710656:0"), 0);
        assert_eq!(position("-281474976710656:0"), 1);
        assert_eq!(position("1.5"), 1);
        assert_eq!(position("1"), 1);
        assert_eq!(position("1:"), 2);
        assert_eq!(position(":1"), 0);
        assert_eq!(position("+1:0"), 0);
        assert_eq!(position(" 1:0"), 0);
        assert_eq!(position("1:0 "), 3);
        assert_eq!(position("1:-5"), 2);
        assert_eq!(position("--1:0"), 1);
        assert_eq!(position("1_000:0"), 1);
        assert_eq!(position("99999999999999999999999999:0"), 0);
        assert_eq!(position("1:0é"), 3);
    }

    #[test]
    fn arithmetic_is_checked() {
        let one = Timestamp::from_secs(1).unwrap();
        assert_eq!(Timestamp::MAX.checked_add(one), None);
        assert_eq!(Timestamp::MAX.saturating_add(one), Timestamp::MAX);
        assert_eq!(Timestamp::MIN.checked_sub(one), None);
        assert_eq!(one.checked_sub(one), Some(Timestamp::ZERO));
        assert_eq!(
            ts("1:0").checked_sub(ts("2:500000000")),
            Some(ts("-1:500000000"))
        );
        assert_eq!(Timestamp::MAX.checked_add_nanos(i128::MAX), None);
        assert_eq!(-Timestamp::MAX, Timestamp::MIN);
        assert_eq!(
            one.to_std_duration(),
            Some(std::time::Duration::from_secs(1))
        );
        assert_eq!((-one).to_std_duration(), None);
    }

    #[test]
    fn counts_follow_mediatimestamp() {
        let r25 = Rational::new(25, 1);
        assert_eq!(ts("1:20000000").to_count(r25, Rounding::Nearest), Ok(26));
        assert_eq!(ts("1:19999999").to_count(r25, Rounding::Nearest), Ok(25));
        assert_eq!(ts("1:1").to_count(r25, Rounding::Up), Ok(26));
        assert_eq!(ts("-1:1").to_count(r25, Rounding::Up), Ok(-25));
        assert_eq!(ts("-1:1").to_count(r25, Rounding::Down), Ok(-26));
        assert_eq!(Timestamp::from_count(-26, r25), Ok(ts("-1:40000000")));
        assert!(
            Timestamp::ZERO
                .to_count(Rational::new(0, 1), Rounding::Nearest)
                .is_err()
        );
        assert!(
            Timestamp::ZERO
                .to_count(Rational::new(1, 0), Rounding::Nearest)
                .is_err()
        );
        assert!(Timestamp::from_count(i128::MAX, r25).is_err());
        // Very large rates go through the wide path without overflow.
        let huge = Rational::new(i64::MAX, 1);
        assert!(Timestamp::MAX.to_count(huge, Rounding::Up).is_ok());
    }

    #[test]
    fn serde_uses_the_string_form() {
        let json = serde_json::to_string(&ts("-1:5")).unwrap();
        assert_eq!(json, r#""-1:5""#);
        assert_eq!(
            serde_json::from_str::<Timestamp>(&json).unwrap(),
            ts("-1:5")
        );
        assert!(serde_json::from_str::<Timestamp>(r#""1:0:0""#).is_err());
        assert!(serde_json::from_str::<Timestamp>("5").is_err());
    }
}
