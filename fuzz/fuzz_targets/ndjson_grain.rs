//! The `ndjson_grain` check of `checks.rs` on what libFuzzer makes.

#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)] // each target uses one of the checks
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::ndjson_grain(data));
