//! The property each fuzz target checks, one function per target, each panicking when
//! its property fails for `data`. The targets in `fuzz_targets/` run them on what
//! libFuzzer makes; `tests/fuzz_regressions.rs` runs them under plain `cargo test` on
//! the inputs kept in `tests/data/fuzz/<target>/`.

use bytes::Bytes;
use grainstore::grain::Grain;
use grainstore::gsf::{GsfDecoder, GsfEvent};
use grainstore::time::{TimeRange, Timestamp};

/// Small, so that size checks are reached and no input makes the decoder buffer much.
const MAX_GRAIN_SIZE: usize = 4096;
const MAX_HEAD_SIZE: usize = 4096;

/// Arbitrary bytes, split into arbitrary chunks, through the incremental GSF decoder.
/// The first byte chooses the chunk lengths; the rest is the input. Whatever the split,
/// the decoder must not panic, and it must produce the same events and the same outcome
/// as when the whole input arrives in one chunk.
pub fn gsf_decoder(data: &[u8]) {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let whole = decode(input, &[input.len()]);
    let split = decode(input, &chunk_lengths(seed, input.len()));
    assert_eq!(whole, split, "chunk boundaries changed the decoding");
}

/// Chunk lengths from 1 to 16 bytes, drawn from `seed`, covering `len` bytes.
fn chunk_lengths(seed: u8, len: usize) -> Vec<usize> {
    let mut state = u32::from(seed) | 0x100;
    let mut lengths = Vec::new();
    let mut left = len;
    while left > 0 {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = (((state >> 16) % 16) as usize + 1).min(left);
        lengths.push(n);
        left -= n;
    }
    lengths
}

/// The events, and the first error (from `next_event` or `finish`) as text.
fn decode(input: &[u8], lengths: &[usize]) -> (Vec<GsfEvent>, Result<(), String>) {
    let mut decoder = GsfDecoder::new()
        .with_max_grain_size(MAX_GRAIN_SIZE)
        .with_max_head_size(MAX_HEAD_SIZE);
    let mut events = Vec::new();
    let mut at = 0;
    for &n in lengths {
        decoder.push(Bytes::copy_from_slice(&input[at..at + n]));
        at += n;
        loop {
            match decoder.next_event() {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(e) => return (events, Err(e.to_string())),
            }
        }
    }
    let end = decoder.finish().map_err(|e| e.to_string());
    (events, end)
}

/// Arbitrary bytes through `Grain::from_json`; a grain that parses must survive a round
/// trip through `to_json` with its payload.
pub fn ndjson_grain(data: &[u8]) {
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
}

/// Arbitrary text through `Timestamp`'s parser; what parses must survive a round trip.
pub fn timestamp_parse(data: &[u8]) {
    round_trip::<Timestamp>(data);
}

/// Arbitrary text through `TimeRange`'s parser; what parses must survive a round trip.
pub fn timerange_parse(data: &[u8]) {
    round_trip::<TimeRange>(data);
}

/// What of `data` parses as a `T` formats to text that parses back to the same `T`.
fn round_trip<T>(data: &[u8])
where
    T: std::str::FromStr + std::fmt::Display + PartialEq + std::fmt::Debug,
    T::Err: std::fmt::Display,
{
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(value) = text.parse::<T>() {
        let formatted = value.to_string();
        let back: T = formatted
            .parse()
            .unwrap_or_else(|e| panic!("{formatted:?} (from {text:?}) does not parse: {e}"));
        assert_eq!(back, value, "{text:?} formatted as {formatted:?}");
    }
}
