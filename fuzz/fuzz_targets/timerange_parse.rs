//! Arbitrary text through `TimeRange`'s parser; what parses must survive a round trip.

#![no_main]

use grainstore::time::TimeRange;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(range) = text.parse::<TimeRange>() {
        let formatted = range.to_string();
        let back: TimeRange = formatted
            .parse()
            .unwrap_or_else(|e| panic!("{formatted:?} (from {text:?}) does not parse: {e}"));
        assert_eq!(back, range, "{text:?} formatted as {formatted:?}");
    }
});
