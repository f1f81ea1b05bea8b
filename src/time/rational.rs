//! [`Rational`]: exact rates and durations, `{"numerator": 25, "denominator": 1}`.

use serde::{Deserialize, Serialize};

/// An exact fraction, as mediagrains' `Fraction` rates and durations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rational {
    /// The numerator.
    pub numerator: i64,
    /// The denominator; never zero in a valid value.
    pub denominator: i64,
}

impl Rational {
    /// Builds `numerator / denominator` as written (not reduced).
    pub const fn new(numerator: i64, denominator: i64) -> Self {
        Rational {
            numerator,
            denominator,
        }
    }
}
