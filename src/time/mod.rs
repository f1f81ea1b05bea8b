//! The time model of `mediatimestamp`: TAI [`Timestamp`]s with nanosecond precision,
//! [`TimeRange`]s with inclusive or exclusive ends, and [`Rational`] rates.
//!
//! Nothing here knows about grains, storage or HTTP.

mod rational;
mod timerange;
mod timestamp;

pub use rational::Rational;
pub use timerange::{Bound, TimeRange};
pub use timestamp::Timestamp;

/// Why a time value could not be parsed or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// The text does not follow the grammar; `position` is the byte offset of the problem.
    #[error("invalid {what} {input:?} at byte {position}: {reason}")]
    Syntax {
        /// What was being parsed ("timestamp", "timerange", ...).
        what: &'static str,
        /// The whole input.
        input: String,
        /// Byte offset of the first character that could not be accepted.
        position: usize,
        /// What was expected there.
        reason: String,
    },
    /// The value is outside what the model can represent.
    #[error("{0}")]
    OutOfRange(String),
}
