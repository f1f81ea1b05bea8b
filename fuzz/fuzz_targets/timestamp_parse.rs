//! Arbitrary text through `Timestamp`'s parser; what parses must survive a round trip.

#![no_main]

use grainstore::time::Timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ts) = text.parse::<Timestamp>() {
        let formatted = ts.to_string();
        let back: Timestamp = formatted
            .parse()
            .unwrap_or_else(|e| panic!("{formatted:?} (from {text:?}) does not parse: {e}"));
        assert_eq!(back, ts, "{text:?} formatted as {formatted:?}");
    }
});
