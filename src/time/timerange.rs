//! [`TimeRange`]: a span of time with inclusive or exclusive ends.

use super::Timestamp;

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

/// A range of time, as mediatimestamp's `TimeRange`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeRange {
    /// The empty range `()`.
    Empty,
    /// A non-empty range between two bounds.
    Span {
        /// Where the range starts.
        start: Bound,
        /// Where the range ends.
        end: Bound,
    },
}
