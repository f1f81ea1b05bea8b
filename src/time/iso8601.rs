//! UTC views of a TAI [`Timestamp`]: ISO 8601 text and Unix time, through
//! mediatimestamp's table of leap seconds.
//!
//! The rules are mediatimestamp's, kept exactly so that both sides print and read the
//! same instants the same way:
//! - TAI − UTC is 0 before 1972 and follows the table from then on (10 s in 1972,
//!   37 s since 2017). mediatimestamp applies no leap seconds to negative times, and
//!   treats the first entry (10 s at once) as a step, so the nine TAI seconds
//!   `63072000..=63072008` print as `1972-01-01T00:00:00..08` although those UTC
//!   times read back ten seconds later. That quirk is kept for compatibility.
//! - A positive TAI second that is a leap second prints as `23:59:60`.
//! - Fractions are printed with nine digits, never rounded.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use super::timestamp::{NANOS_PER_SEC, syntax};
use super::{TimeError, Timestamp};

/// The leap-second table: (UTC Unix second at which the new offset starts, TAI second
/// of the leap second itself, i.e. the new TAI second minus one), latest first, as in
/// mediatimestamp's `UTC_LEAP` (from IETF `leap-seconds.list`).
const UTC_LEAP: [(i64, i64); 28] = [
    (1_483_228_800, 1_483_228_836), // 1 Jan 2017, 37 s
    (1_435_708_800, 1_435_708_835), // 1 Jul 2015, 36 s
    (1_341_100_800, 1_341_100_834), // 1 Jul 2012, 35 s
    (1_230_768_000, 1_230_768_033), // 1 Jan 2009, 34 s
    (1_136_073_600, 1_136_073_632), // 1 Jan 2006, 33 s
    (915_148_800, 915_148_831),     // 1 Jan 1999, 32 s
    (867_715_200, 867_715_230),     // 1 Jul 1997, 31 s
    (820_454_400, 820_454_429),     // 1 Jan 1996, 30 s
    (773_020_800, 773_020_828),     // 1 Jul 1994, 29 s
    (741_484_800, 741_484_827),     // 1 Jul 1993, 28 s
    (709_948_800, 709_948_826),     // 1 Jul 1992, 27 s
    (662_688_000, 662_688_025),     // 1 Jan 1991, 26 s
    (631_152_000, 631_152_024),     // 1 Jan 1990, 25 s
    (567_993_600, 567_993_623),     // 1 Jan 1988, 24 s
    (489_024_000, 489_024_022),     // 1 Jul 1985, 23 s
    (425_865_600, 425_865_621),     // 1 Jul 1983, 22 s
    (394_329_600, 394_329_620),     // 1 Jul 1982, 21 s
    (362_793_600, 362_793_619),     // 1 Jul 1981, 20 s
    (315_532_800, 315_532_818),     // 1 Jan 1980, 19 s
    (283_996_800, 283_996_817),     // 1 Jan 1979, 18 s
    (252_460_800, 252_460_816),     // 1 Jan 1978, 17 s
    (220_924_800, 220_924_815),     // 1 Jan 1977, 16 s
    (189_302_400, 189_302_414),     // 1 Jan 1976, 15 s
    (157_766_400, 157_766_413),     // 1 Jan 1975, 14 s
    (126_230_400, 126_230_412),     // 1 Jan 1974, 13 s
    (94_694_400, 94_694_411),       // 1 Jan 1973, 12 s
    (78_796_800, 78_796_810),       // 1 Jul 1972, 11 s
    (63_072_000, 63_072_009),       // 1 Jan 1972, 10 s
];

const SECS_PER_DAY: i64 = 86_400;

/// TAI − UTC in seconds for a UTC Unix second (`is_leap`: the instant is the leap
/// second `23:59:60` that ends the day before `unix_secs + 1`).
fn leap_seconds_at_unix(unix_secs: i64, is_leap: bool) -> i64 {
    if unix_secs < 0 {
        return 0;
    }
    let probe = unix_secs + i64::from(is_leap);
    UTC_LEAP
        .iter()
        .find(|(utc, _)| probe >= *utc)
        .map_or(0, |(utc, tai_minus_one)| tai_minus_one + 1 - utc)
}

/// Whether a UTC day ends with a leap second: `next_midnight` is the Unix second of
/// the following midnight.
fn is_leap_day_end(next_midnight: i64) -> bool {
    UTC_LEAP.iter().any(|(utc, _)| *utc == next_midnight)
}

/// `(TAI − UTC, is the leap second itself)` for a TAI time, mediatimestamp's rule:
/// nothing for negative times, and the table looked up by whole TAI seconds.
fn leap_of_tai(timestamp: Timestamp) -> (i64, bool) {
    let (negative, secs, _) = timestamp.to_parts();
    if negative {
        return (0, false);
    }
    let secs = secs as i64;
    UTC_LEAP
        .iter()
        .find(|(_, tai_minus_one)| secs >= *tai_minus_one)
        .map_or((0, false), |(utc, tai_minus_one)| {
            (tai_minus_one + 1 - utc, secs == *tai_minus_one)
        })
}

impl Timestamp {
    /// The TAI time of a UTC Unix time given in nanoseconds (non-negative Unix times
    /// get the table's leap seconds, negative ones none, as in mediatimestamp's
    /// `from_unix`).
    pub fn from_unix_nanos(unix_nanos: i128) -> Result<Self, TimeError> {
        let unix_secs = i64::try_from(unix_nanos.div_euclid(NANOS_PER_SEC)).map_err(|_| {
            TimeError::OutOfRange(format!("unix time {unix_nanos} ns is out of range"))
        })?;
        let leap = leap_seconds_at_unix(unix_secs, false);
        Self::from_nanos(unix_nanos + i128::from(leap) * NANOS_PER_SEC)
    }

    /// The UTC Unix time of this TAI time in nanoseconds. A leap second maps to the
    /// Unix second before it (`23:59:59`), as POSIX time has no leap seconds.
    pub fn to_unix_nanos(self) -> i128 {
        let (leap, _) = leap_of_tai(self);
        self.to_nanos() - i128::from(leap) * NANOS_PER_SEC
    }

    /// TAI − UTC at this time in seconds (0 before 1972 and for negative times).
    pub fn leap_seconds(self) -> i64 {
        leap_of_tai(self).0
    }

    /// Whether this time falls in a UTC leap second (prints as `23:59:60`).
    pub fn is_leap_second(self) -> bool {
        leap_of_tai(self).1
    }

    /// The current TAI time, from the system clock (UTC) and the leap-second table.
    pub fn now() -> Timestamp {
        let unix_nanos = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(after) => after.as_nanos() as i128,
            Err(before) => -(before.duration().as_nanos() as i128),
        };
        // A clock outside ±8.9 million years is not worth an error path: clamp.
        Self::from_unix_nanos(unix_nanos).unwrap_or(if unix_nanos < 0 {
            Timestamp::MIN
        } else {
            Timestamp::MAX
        })
    }

    /// A view that prints this time as ISO 8601 UTC, `YYYY-MM-DDThh:mm:ss.nnnnnnnnnZ`,
    /// exactly as mediatimestamp's `to_iso8601_utc` (nine fraction digits, `:60` in a
    /// leap second, at least four year digits, astronomical negative years).
    pub fn iso8601(self) -> Iso8601 {
        Iso8601(self)
    }

    /// This time as an ISO 8601 UTC string; see [`Timestamp::iso8601`].
    pub fn to_iso8601(self) -> String {
        self.iso8601().to_string()
    }

    /// Parses ISO 8601 UTC, `YYYY-MM-DDThh:mm:ss[.f]Z`, into TAI with the leap-second
    /// table; the instants are those of mediatimestamp's `from_iso8601_utc`.
    ///
    /// Stricter than mediatimestamp: years `0001`–`9999` with four digits, every field
    /// two digits and within its calendar range (no `24:00`, no 30 February), one to
    /// nine fraction digits (more would be silently truncated there), the final `Z`,
    /// and second `60` only at the end of a day the table gives a leap second.
    pub fn from_iso8601(s: &str) -> Result<Self, TimeError> {
        let fields = IsoFields::parse(s)?;
        let days = days_from_civil(fields.year, fields.month, fields.day);
        let is_leap = fields.second == 60;
        // mediatimestamp maps :60 onto :59 of the same minute, then adds the new offset.
        let unix_secs =
            days * SECS_PER_DAY + fields.hour * 3600 + fields.minute * 60 + fields.second
                - i64::from(is_leap);
        if is_leap
            && !(fields.hour == 23
                && fields.minute == 59
                && is_leap_day_end((days + 1) * SECS_PER_DAY))
        {
            return Err(syntax(
                "ISO 8601 time",
                s,
                17,
                "second 60 exists only as 23:59:60 at the end of a day with a leap second",
            ));
        }
        let leap = leap_seconds_at_unix(unix_secs, is_leap);
        let nanos = i128::from(unix_secs + leap) * NANOS_PER_SEC + i128::from(fields.nanos);
        // Years 1-9999 are far inside the 48-bit range.
        Self::from_nanos(nanos)
    }
}

/// Prints a [`Timestamp`] as ISO 8601 UTC; made by [`Timestamp::iso8601`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Iso8601(Timestamp);

impl fmt::Display for Iso8601 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (leap, is_leap) = leap_of_tai(self.0);
        let unix_nanos = self.0.to_nanos() - i128::from(leap) * NANOS_PER_SEC;
        // The range is ±2^48 s, so whole seconds always fit in i64.
        let unix_secs = unix_nanos.div_euclid(NANOS_PER_SEC) as i64;
        let nanos = unix_nanos.rem_euclid(NANOS_PER_SEC);
        let days = unix_secs.div_euclid(SECS_PER_DAY);
        let second_of_day = unix_secs.rem_euclid(SECS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
            second_of_day / 3600,
            second_of_day / 60 % 60,
            second_of_day % 60 + i64::from(is_leap),
        )
    }
}

/// The fields of an ISO 8601 UTC time, each checked against its calendar range.
struct IsoFields {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    nanos: u32,
}

impl IsoFields {
    fn parse(s: &str) -> Result<Self, TimeError> {
        const WHAT: &str = "ISO 8601 time";
        let bytes = s.as_bytes();
        let err = |position: usize, reason: &str| syntax(WHAT, s, position, reason);
        // A fixed-width number of `width` digits at `at`, within `min..=max`.
        let number = |at: usize, width: usize, min: i64, max: i64, name: &str| {
            let mut value = 0i64;
            for pos in at..at + width {
                match bytes.get(pos) {
                    Some(b) if b.is_ascii_digit() => value = value * 10 + i64::from(b - b'0'),
                    _ => return Err(err(pos, &format!("expected {width} digits of the {name}"))),
                }
            }
            if !(min..=max).contains(&value) {
                return Err(err(at, &format!("{name} {value} is outside {min}..={max}")));
            }
            Ok(value)
        };
        let literal = |at: usize, expected: u8| {
            if bytes.get(at) == Some(&expected) {
                Ok(())
            } else {
                Err(err(at, &format!("expected {:?}", char::from(expected))))
            }
        };

        let year = number(0, 4, 1, 9999, "year")?;
        literal(4, b'-')?;
        let month = number(5, 2, 1, 12, "month")?;
        literal(7, b'-')?;
        let day = number(8, 2, 1, days_in_month(year, month), "day")?;
        literal(10, b'T')?;
        let hour = number(11, 2, 0, 23, "hour")?;
        literal(13, b':')?;
        let minute = number(14, 2, 0, 59, "minute")?;
        literal(16, b':')?;
        let second = number(17, 2, 0, 60, "second")?;
        let mut pos = 19;
        let mut nanos = 0u32;
        if bytes.get(pos) == Some(&b'.') {
            pos += 1;
            let start = pos;
            let mut scale = 100_000_000;
            while let Some(b) = bytes.get(pos).filter(|b| b.is_ascii_digit()) {
                if pos - start == 9 {
                    return Err(err(pos, "at most 9 fraction digits (nanoseconds)"));
                }
                nanos += u32::from(b - b'0') * scale;
                scale /= 10;
                pos += 1;
            }
            if pos == start {
                return Err(err(pos, "expected fraction digits after '.'"));
            }
        }
        literal(pos, b'Z')?;
        if pos + 1 != s.len() {
            return Err(err(pos + 1, "unexpected text after 'Z'"));
        }
        Ok(IsoFields {
            year,
            month,
            day,
            hour,
            minute,
            second,
            nanos,
        })
    }
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date (astronomical year numbering) of a day count since
/// 1970-01-01, as `gmtime` gives it.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iso(s: &str) -> Timestamp {
        Timestamp::from_iso8601(s).unwrap()
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in (-3_000_000..3_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn leap_seconds_print_as_sixty() {
        let leap: Timestamp = "1483228836:0".parse().unwrap();
        assert_eq!(leap.to_iso8601(), "2016-12-31T23:59:60.000000000Z");
        assert!(leap.is_leap_second());
        assert_eq!(iso("2016-12-31T23:59:60Z"), leap);
        assert_eq!(iso("2017-01-01T00:00:00Z").leap_seconds(), 37);
        assert_eq!(
            iso("2026-11-25T10:00:00.5Z").to_iso8601(),
            "2026-11-25T10:00:00.500000000Z"
        );
    }

    #[test]
    fn refuses_loose_iso_text() {
        for bad in [
            "",
            "2026-11-25T10:00:00",
            "2026-11-25T10:00:00z",
            "2026-11-25 10:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-25T24:00:00Z",
            "2026-11-25T10:00:00.Z",
            "2026-11-25T10:00:00.1234567891Z",
            "2020-06-30T23:59:60Z",
            "0000-01-01T00:00:00Z",
            "+2026-11-25T10:00:00Z",
            "2026-11-25T10:00:00ZZ",
        ] {
            assert!(
                Timestamp::from_iso8601(bad).is_err(),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn now_is_after_2026() {
        assert!(Timestamp::now() > iso("2026-01-01T00:00:00Z"));
    }
}
