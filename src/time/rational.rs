//! [`Rational`]: exact rates and durations, `{"numerator": 25, "denominator": 1}`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::TimeError;

/// An exact fraction, as mediagrains' `Fraction` rates and durations.
///
/// Equality is structural (`50/2 != 25/1`); compare [`Rational::reduced`] forms to
/// compare values. Deserialisation refuses a zero denominator, so a value read from
/// JSON is always [valid](Rational::is_valid).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawRational")]
pub struct Rational {
    /// The numerator.
    pub numerator: i64,
    /// The denominator; never zero in a valid value.
    pub denominator: i64,
}

/// The unchecked JSON shape, validated into a [`Rational`] by `TryFrom`.
#[derive(Deserialize)]
struct RawRational {
    numerator: i64,
    denominator: i64,
}

impl TryFrom<RawRational> for Rational {
    type Error = TimeError;

    fn try_from(raw: RawRational) -> Result<Self, Self::Error> {
        Rational::try_new(raw.numerator, raw.denominator)
    }
}

impl Rational {
    /// Builds `numerator / denominator` as written (not reduced, not checked).
    pub const fn new(numerator: i64, denominator: i64) -> Self {
        Rational {
            numerator,
            denominator,
        }
    }

    /// Builds `numerator / denominator` as written, refusing a zero denominator.
    pub fn try_new(numerator: i64, denominator: i64) -> Result<Self, TimeError> {
        let rational = Rational::new(numerator, denominator);
        if !rational.is_valid() {
            return Err(TimeError::OutOfRange(format!(
                "rational {rational} has a zero denominator"
            )));
        }
        Ok(rational)
    }

    /// Whether the denominator is non-zero.
    pub const fn is_valid(self) -> bool {
        self.denominator != 0
    }

    /// Whether the value is strictly positive, as a rate must be.
    pub const fn is_positive(self) -> bool {
        self.denominator != 0
            && ((self.numerator > 0) == (self.denominator > 0))
            && self.numerator != 0
    }

    /// The same value in lowest terms with a positive denominator (`50/-2` → `-25/1`).
    ///
    /// An invalid value (zero denominator) is returned unchanged, and so is the one
    /// value whose sign cannot be moved within `i64` (a denominator of `i64::MIN`
    /// that does not reduce).
    pub fn reduced(self) -> Self {
        if self.denominator == 0 {
            return self;
        }
        // i128 so that negating i64::MIN cannot overflow.
        let mut numerator = i128::from(self.numerator);
        let mut denominator = i128::from(self.denominator);
        let divisor = gcd(numerator.unsigned_abs(), denominator.unsigned_abs()) as i128;
        numerator /= divisor;
        denominator /= divisor;
        if denominator < 0 {
            numerator = -numerator;
            denominator = -denominator;
        }
        match (i64::try_from(numerator), i64::try_from(denominator)) {
            (Ok(numerator), Ok(denominator)) => Rational::new(numerator, denominator),
            _ => self,
        }
    }

    /// The value as a float (NaN or infinite for a zero denominator).
    pub fn to_f64(self) -> f64 {
        self.numerator as f64 / self.denominator as f64
    }

    /// The value reduced to `(numerator, denominator)`, both positive, as counts and
    /// rates need; an error for a zero, negative or invalid rate.
    pub(crate) fn positive_parts(self) -> Result<(u128, u128), TimeError> {
        if !self.is_positive() {
            return Err(TimeError::OutOfRange(format!(
                "rate {self} must be a positive rational"
            )));
        }
        let numerator = self.numerator.unsigned_abs();
        let denominator = self.denominator.unsigned_abs();
        let divisor = gcd(u128::from(numerator), u128::from(denominator));
        Ok((
            u128::from(numerator) / divisor,
            u128::from(denominator) / divisor,
        ))
    }
}

/// Greatest common divisor; `gcd(0, 0) == 1` so that callers may always divide by it.
fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

impl fmt::Display for Rational {
    /// `numerator/denominator`, as written (`25/1`, `30000/1001`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.numerator, self.denominator)
    }
}

impl FromStr for Rational {
    type Err = TimeError;

    /// Parses `n/d` or a bare integer `n` (meaning `n/1`); signs are allowed on both.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = |position: usize, reason: &str| TimeError::Syntax {
            what: "rational",
            input: s.to_owned(),
            position,
            reason: reason.to_owned(),
        };
        let integer = |text: &str, offset: usize| -> Result<i64, TimeError> {
            let digits = text.strip_prefix('-').unwrap_or(text);
            if let Some(bad) = digits.bytes().position(|b| !b.is_ascii_digit()) {
                let at = offset + (text.len() - digits.len()) + bad;
                return Err(syntax(at, "expected a decimal digit"));
            }
            if digits.is_empty() {
                return Err(syntax(offset + text.len(), "expected a decimal integer"));
            }
            text.parse()
                .map_err(|_| syntax(offset, "integer does not fit in 64 bits"))
        };
        let (numerator, denominator) = match s.split_once('/') {
            Some((n, d)) => (integer(n, 0)?, integer(d, n.len() + 1)?),
            None => (integer(s, 0)?, 1),
        };
        if denominator == 0 {
            return Err(syntax(s.len() - 1, "the denominator must not be zero"));
        }
        Ok(Rational::new(numerator, denominator))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduces_and_moves_the_sign() {
        assert_eq!(Rational::new(50, 2).reduced(), Rational::new(25, 1));
        assert_eq!(Rational::new(50, -2).reduced(), Rational::new(-25, 1));
        assert_eq!(Rational::new(0, 7).reduced(), Rational::new(0, 1));
        assert_eq!(Rational::new(3, 0).reduced(), Rational::new(3, 0));
        assert_eq!(
            Rational::new(1, i64::MIN).reduced(),
            Rational::new(1, i64::MIN)
        );
        assert_eq!(
            Rational::new(2, i64::MIN).reduced(),
            Rational::new(-1, 1 << 62)
        );
    }

    #[test]
    fn validates_and_prints() {
        assert!(Rational::try_new(1, 0).is_err());
        assert_eq!(Rational::new(30000, 1001).to_string(), "30000/1001");
        assert!((Rational::new(30000, 1001).to_f64() - 29.97).abs() < 0.001);
        assert!(Rational::new(-25, -1).is_positive());
        assert!(!Rational::new(-25, 1).is_positive());
        assert!(!Rational::new(0, 1).is_positive());
    }

    #[test]
    fn parses_strictly() {
        assert_eq!("25/1".parse::<Rational>(), Ok(Rational::new(25, 1)));
        assert_eq!("48000".parse::<Rational>(), Ok(Rational::new(48000, 1)));
        assert_eq!("-1/2".parse::<Rational>(), Ok(Rational::new(-1, 2)));
        for bad in ["", "/", "1/", "/2", "1/0", "1.5", "1/2/3", " 1/2", "+1/2"] {
            assert!(bad.parse::<Rational>().is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn serde_uses_the_object_form_and_refuses_zero_denominators() {
        let json = serde_json::to_string(&Rational::new(25, 1)).unwrap();
        assert_eq!(json, r#"{"numerator":25,"denominator":1}"#);
        let back: Rational = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Rational::new(25, 1));
        assert!(serde_json::from_str::<Rational>(r#"{"numerator":1,"denominator":0}"#).is_err());
    }
}
