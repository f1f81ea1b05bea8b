//! Arbitrary bytes, split into arbitrary chunks, through the incremental GSF decoder.
//!
//! The first byte chooses the chunk lengths; the rest is the input. Whatever the
//! split, the decoder must not panic, and it must produce the same events and the same
//! outcome as when the whole input arrives in one chunk.

#![no_main]

use bytes::Bytes;
use grainstore::gsf::{GsfDecoder, GsfEvent};
use libfuzzer_sys::fuzz_target;

/// Small, so that size checks are reached and no input makes the decoder buffer much.
const MAX_GRAIN_SIZE: usize = 4096;
const MAX_HEAD_SIZE: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let whole = decode(input, &[input.len()]);
    let split = decode(input, &chunk_lengths(seed, input.len()));
    assert_eq!(whole, split, "chunk boundaries changed the decoding");
});

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
