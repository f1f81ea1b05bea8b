//! The fuzz targets' checks (see `fuzz/`), run on every input kept under
//! `tests/data/fuzz/<target>/`: corpus seeds and minimised crashers, so that a bug
//! the fuzzer once found stays fixed without a nightly toolchain.

use std::path::PathBuf;

use bytes::Bytes;
use grainstore::grain::Grain;
use grainstore::gsf::{GsfDecoder, GsfEvent};
use grainstore::time::{TimeRange, Timestamp};

/// The inputs kept for `target`, with their paths for messages.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", dir.display());
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, bytes)
        })
        .collect()
}

/// The same limits as the fuzz target.
const MAX_GRAIN_SIZE: usize = 4096;
const MAX_HEAD_SIZE: usize = 4096;

/// Chunk lengths from 1 to 16 bytes, drawn from `seed`, covering `len` bytes (as in
/// `fuzz/fuzz_targets/gsf_decoder.rs`).
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

#[test]
fn gsf_decoder_inputs_decode_alike_whatever_the_chunks() {
    for (path, data) in inputs("gsf_decoder") {
        let Some((&seed, input)) = data.split_first() else {
            continue;
        };
        let whole = decode(input, &[input.len()]);
        let split = decode(input, &chunk_lengths(seed, input.len()));
        assert_eq!(whole, split, "{}", path.display());
    }
}

#[test]
fn timestamp_inputs_round_trip() {
    for (path, data) in inputs("timestamp_parse") {
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        if let Ok(ts) = text.parse::<Timestamp>() {
            let formatted = ts.to_string();
            assert_eq!(formatted.parse::<Timestamp>(), Ok(ts), "{}", path.display());
        }
    }
}

#[test]
fn timerange_inputs_round_trip() {
    for (path, data) in inputs("timerange_parse") {
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        if let Ok(range) = text.parse::<TimeRange>() {
            let formatted = range.to_string();
            assert_eq!(
                formatted.parse::<TimeRange>(),
                Ok(range),
                "{}",
                path.display()
            );
        }
    }
}

#[test]
fn ndjson_grain_inputs_round_trip() {
    for (path, data) in inputs("ndjson_grain") {
        if let Ok(grain) = Grain::from_json(&data) {
            let json = grain.to_json(true);
            let back =
                Grain::from_json(&json).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(back, grain, "{}", path.display());
        }
    }
}
