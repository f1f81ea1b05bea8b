//! [`Timestamp`]: a signed TAI time with nanosecond precision.

use std::fmt;
use std::str::FromStr;

use super::TimeError;

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// A TAI timestamp: signed, nanosecond precision, seconds in `-(2^48-1)..=2^48-1`.
///
/// Stored as one count of nanoseconds so that ordering and arithmetic are plain integer
/// operations; the `sec:nsec` form is a view of it.
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
                "seconds {secs} exceed the 48-bit limit"
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
        if nanos > Self::MAX.nanos || nanos < Self::MIN.nanos {
            return Err(TimeError::OutOfRange(format!(
                "{nanos} ns is outside the 48-bit seconds range"
            )));
        }
        Ok(Timestamp { nanos })
    }

    /// The signed count of nanoseconds since the epoch.
    pub fn to_nanos(self) -> i128 {
        self.nanos
    }

    /// Sign (true when before the epoch), whole seconds and nanoseconds of the magnitude.
    pub fn to_parts(self) -> (bool, u64, u32) {
        let magnitude = self.nanos.unsigned_abs();
        (
            self.nanos < 0,
            (magnitude / NANOS_PER_SEC as u128) as u64,
            (magnitude % NANOS_PER_SEC as u128) as u32,
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (negative, secs, nanos) = self.to_parts();
        let sign = if negative { "-" } else { "" };
        write!(f, "{sign}{secs}:{nanos}")
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl FromStr for Timestamp {
    type Err = TimeError;

    /// Parses the `sec:nsec` form (a minimal parser; see the module for the full grammar).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = |position: usize, reason: &str| TimeError::Syntax {
            what: "timestamp",
            input: s.to_owned(),
            position,
            reason: reason.to_owned(),
        };
        let (negative, body, offset) = match s.strip_prefix('-') {
            Some(rest) => (true, rest, 1),
            None => (false, s, 0),
        };
        let (secs, nanos) = body
            .split_once(':')
            .ok_or_else(|| syntax(offset + body.len(), "expected ':' between seconds and nanoseconds"))?;
        let secs: u64 = secs
            .parse()
            .map_err(|_| syntax(offset, "expected decimal seconds"))?;
        let nanos: u32 = nanos
            .parse()
            .map_err(|_| syntax(offset + secs.to_string().len() + 1, "expected decimal nanoseconds"))?;
        Timestamp::from_parts(negative, secs, nanos)
    }
}
