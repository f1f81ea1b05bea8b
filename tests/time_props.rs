//! Properties of grainstore::time over generated values: text forms read back to the
//! same value, and the range operations keep their algebraic laws.

use grainstore::time::{Bound, RangeRounding, Rational, Rounding, TimeRange, Timestamp};
use proptest::prelude::*;

/// Any representable timestamp, biased towards small values and the extremes where
/// off-by-one mistakes hide.
fn timestamp() -> impl Strategy<Value = Timestamp> {
    let max = Timestamp::MAX.to_nanos();
    prop_oneof![
        4 => -max..=max,
        4 => -20_000_000_000i128..=20_000_000_000i128,
        1 => prop_oneof![Just(max), Just(-max), Just(0), Just(1), Just(-1)],
    ]
    .prop_map(|nanos| Timestamp::from_nanos(nanos).expect("generated in range"))
}

/// Timestamps from a few whole seconds, so that ranges often share ends.
fn coarse_timestamp() -> impl Strategy<Value = Timestamp> {
    (-4i64..=4).prop_map(|secs| Timestamp::from_secs(secs).expect("small"))
}

fn bound(ts: impl Strategy<Value = Timestamp>) -> impl Strategy<Value = Bound> {
    (0u8..5, ts).prop_map(|(kind, ts)| match kind {
        0 => Bound::Unbounded,
        1 | 2 => Bound::Inclusive(ts),
        _ => Bound::Exclusive(ts),
    })
}

fn range_from(ts: fn() -> BoxedStrategy<Timestamp>) -> impl Strategy<Value = TimeRange> {
    (bound(ts()), bound(ts())).prop_map(|(start, end)| TimeRange::new(start, end))
}

fn any_range() -> impl Strategy<Value = TimeRange> {
    range_from(|| timestamp().boxed())
}

fn coarse_range() -> impl Strategy<Value = TimeRange> {
    range_from(|| coarse_timestamp().boxed())
}

/// The ISO 8601 range both sides can read back (years 1 to 9999), without the nine
/// seconds of 1972 that mediatimestamp prints as one UTC time and reads as another.
fn iso_timestamp() -> impl Strategy<Value = Timestamp> {
    let first = -62_135_596_800i128 * 1_000_000_000;
    let last = 253_402_300_836i128 * 1_000_000_000 + 999_999_999;
    (first..=last)
        .prop_filter("the 1972 step", |nanos| {
            !(63_072_000_000_000_000..63_072_009_000_000_000).contains(nanos)
        })
        .prop_map(|nanos| Timestamp::from_nanos(nanos).expect("in range"))
}

fn rate() -> impl Strategy<Value = Rational> {
    prop_oneof![
        Just(Rational::new(25, 1)),
        Just(Rational::new(30000, 1001)),
        Just(Rational::new(48000, 1)),
        Just(Rational::new(60000, 1001)),
        Just(Rational::new(50, 1)),
        Just(Rational::new(16000, 1)),
        Just(Rational::new(24, 5)),
        (1i64..1_000_000, 1i64..10_000).prop_map(|(n, d)| Rational::new(n, d)),
    ]
}

/// Whether a sample interval is a whole number of nanoseconds, where mediatimestamp's
/// integer rounding is exact.
fn is_exact(rate: Rational) -> bool {
    let (n, d) = (i128::from(rate.numerator), i128::from(rate.denominator));
    (1_000_000_000 * d) % n == 0
}

fn rounding() -> impl Strategy<Value = Rounding> {
    prop_oneof![
        Just(Rounding::Nearest),
        Just(Rounding::Up),
        Just(Rounding::Down)
    ]
}

proptest! {
    // No failure files: a failing case prints its minimal input, which is what to
    // copy into a unit test.
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn timestamp_text_round_trips(t in timestamp()) {
        let text = t.to_string();
        prop_assert_eq!(text.parse::<Timestamp>(), Ok(t));
        let json = serde_json::to_string(&t).expect("serialises");
        prop_assert_eq!(serde_json::from_str::<Timestamp>(&json).expect("deserialises"), t);
    }

    #[test]
    fn timestamp_parts_round_trip(t in timestamp()) {
        let (negative, secs, nanos) = t.to_parts();
        prop_assert_eq!(Timestamp::from_parts(negative, secs, nanos), Ok(t));
    }

    #[test]
    fn iso8601_round_trips(t in iso_timestamp()) {
        let text = t.to_iso8601();
        prop_assert_eq!(Timestamp::from_iso8601(&text), Ok(t), "{}", text);
    }

    #[test]
    fn iso8601_never_panics(t in timestamp()) {
        let text = t.to_iso8601();
        prop_assert!(text.ends_with('Z'));
        let _ = Timestamp::from_iso8601(&text);
    }

    #[test]
    fn unix_time_round_trips_outside_leap_seconds(t in iso_timestamp()) {
        prop_assume!(!t.is_leap_second());
        prop_assert_eq!(Timestamp::from_unix_nanos(t.to_unix_nanos()), Ok(t));
    }

    #[test]
    fn add_then_sub_is_identity(a in timestamp(), b in timestamp()) {
        if let Some(sum) = a.checked_add(b) {
            prop_assert_eq!(sum.checked_sub(b), Some(a));
        } else {
            prop_assert!(a.to_nanos() + b.to_nanos() > Timestamp::MAX.to_nanos()
                || a.to_nanos() + b.to_nanos() < Timestamp::MIN.to_nanos());
        }
    }

    #[test]
    fn counts_round_in_their_direction(t in timestamp(), rate in rate()) {
        // mediatimestamp rounds with whole-nanosecond sample intervals and truncates
        // sample times, so at rates like 30000/1001 "up" may land up to 2 ns early and
        // "down" up to 2 ns late; at rates with whole-nanosecond intervals it is exact.
        let slack = if is_exact(rate) { 0 } else { 2 };
        let up = t.normalise(rate, Rounding::Up);
        let down = t.normalise(rate, Rounding::Down);
        let nearest = t.normalise(rate, Rounding::Nearest);
        if let Ok(up) = up { prop_assert!(up.to_nanos() >= t.to_nanos() - slack); }
        if let Ok(down) = down { prop_assert!(down.to_nanos() <= t.to_nanos() + slack); }
        if let (Ok(up), Ok(down), Ok(nearest)) = (up, down, nearest) {
            prop_assert!(down <= nearest && nearest <= up);
        }
    }

    #[test]
    fn normalising_twice_changes_nothing(t in timestamp(), rate in rate(), rounding in rounding()) {
        // Only nearest is stable at every rate: mediatimestamp's "down" of a truncated
        // sample time at 30000/1001 is the sample before it (see the table).
        let stable = rounding == Rounding::Nearest || is_exact(rate);
        if let (true, Ok(once)) = (stable, t.normalise(rate, rounding)) {
            prop_assert_eq!(once.normalise(rate, rounding), Ok(once));
        }
    }

    #[test]
    fn from_count_inverts_to_count(count in -10_000_000_000i128..10_000_000_000, rate in rate()) {
        let t = Timestamp::from_count(count, rate).expect("in range");
        prop_assert_eq!(t.to_count(rate, Rounding::Nearest), Ok(count));
        if is_exact(rate) {
            prop_assert_eq!(t.to_count(rate, Rounding::Up), Ok(count));
            prop_assert_eq!(t.to_count(rate, Rounding::Down), Ok(count));
        }
    }

    #[test]
    fn range_text_round_trips(r in any_range()) {
        let text = r.to_string();
        prop_assert_eq!(text.parse::<TimeRange>(), Ok(r), "{}", text);
        let json = serde_json::to_string(&r).expect("serialises");
        prop_assert_eq!(serde_json::from_str::<TimeRange>(&json).expect("deserialises"), r);
    }

    #[test]
    fn parsers_never_panic(text in "[\\[\\(\\]\\)_:0-9\\-.Z T]{0,24}") {
        let _ = text.parse::<TimeRange>();
        let _ = text.parse::<Timestamp>();
        let _ = Timestamp::from_iso8601(&text);
    }

    #[test]
    fn errors_point_inside_the_input(text in "\\PC{0,16}") {
        for result in [text.parse::<TimeRange>().err(), text.parse::<Timestamp>().err()] {
            if let Some(grainstore::time::TimeError::Syntax { position, .. }) = result {
                prop_assert!(position <= text.len() && text.is_char_boundary(position));
            }
        }
    }

    #[test]
    fn intersection_laws(a in coarse_range(), b in coarse_range(), c in coarse_range()) {
        let ab = a.intersect(&b);
        prop_assert_eq!(ab, b.intersect(&a));
        prop_assert_eq!(ab.intersect(&c), a.intersect(&b.intersect(&c)));
        prop_assert_eq!(a.intersect(&a), a);
        prop_assert_eq!(a.intersect(&TimeRange::ETERNITY), a);
        prop_assert!(a.intersect(&TimeRange::EMPTY).is_empty());
        prop_assert_eq!(a.overlaps(&b), b.overlaps(&a));
        if !ab.is_empty() {
            prop_assert!(a.contains_range(&ab) && b.contains_range(&ab));
        }
    }

    #[test]
    fn membership_agrees_with_the_operations(
        a in coarse_range(),
        b in coarse_range(),
        t in coarse_timestamp(),
        nanos in -1i128..=1,
    ) {
        let t = t.checked_add_nanos(nanos).expect("small");
        prop_assert_eq!(a.intersect(&b).contains(t), a.contains(t) && b.contains(t));
        if a.contains(t) || b.contains(t) {
            prop_assert!(a.extend_to_encompass(&b).contains(t));
        }
        if a.contains_range(&b) && b.contains(t) {
            prop_assert!(a.contains(t));
        }
        prop_assert_eq!(a.contains_range(&TimeRange::instant(t)), a.contains(t));
        if a.contains(t) {
            prop_assert!(!a.range_after().contains(t) && !a.range_before().contains(t));
        }
    }

    #[test]
    fn normalised_ranges_are_half_open_on_samples(r in any_range(), rate in rate()) {
        for rounding in [RangeRounding::Nearest, RangeRounding::In, RangeRounding::Out,
                         RangeRounding::Up, RangeRounding::Down, RangeRounding::Start,
                         RangeRounding::End] {
            let Ok(n) = r.normalise(rate, rounding) else { continue };
            if let Some((start, end)) = n.bounds() {
                prop_assert!(!matches!(start, Bound::Exclusive(_)));
                prop_assert!(!matches!(end, Bound::Inclusive(_)) || n.as_instant().is_some());
                if let Some(s) = start.timestamp() {
                    prop_assert_eq!(s.normalise(rate, Rounding::Nearest), Ok(s));
                }
            }
            if rounding == RangeRounding::Out && is_exact(rate) && !n.is_empty() {
                // Rounding out covers every sample time the range holds.
                if let Some(s) = r.start().timestamp()
                    && r.contains(s) {
                        prop_assert!(n.contains(s));
                    }
            }
        }
    }
}
