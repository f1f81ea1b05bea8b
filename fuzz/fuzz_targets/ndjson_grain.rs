//! Arbitrary bytes through `Grain::from_json`; a grain that parses must survive a round
//! trip through `to_json` with its payload.

#![no_main]

use grainstore::grain::Grain;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(grain) = Grain::from_json(data) {
        let json = grain.to_json(true);
        let back = Grain::from_json(&json)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", String::from_utf8_lossy(&json)));
        assert_eq!(
            back,
            grain,
            "round trip through {}",
            String::from_utf8_lossy(&json)
        );
    }
});
