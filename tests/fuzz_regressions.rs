//! The fuzz targets' checks (`fuzz/checks.rs`), run on every input kept under
//! `tests/data/fuzz/<target>/`: corpus seeds and minimised crashers, so that a bug
//! the fuzzer once found stays fixed without a nightly toolchain.

use std::path::PathBuf;

#[path = "../fuzz/checks.rs"]
mod checks;

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

/// Runs `check` on every input kept for `target`; a failure names the input's file.
fn check_inputs(target: &str, check: fn(&[u8])) {
    for (path, data) in inputs(target) {
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!(
                "{}: the {target} check failed (message above)",
                path.display()
            );
        }
    }
}

#[test]
fn gsf_decoder_inputs_decode_alike_whatever_the_chunks() {
    check_inputs("gsf_decoder", checks::gsf_decoder);
}

#[test]
fn timestamp_inputs_round_trip() {
    check_inputs("timestamp_parse", checks::timestamp_parse);
}

#[test]
fn timerange_inputs_round_trip() {
    check_inputs("timerange_parse", checks::timerange_parse);
}

#[test]
fn ndjson_grain_inputs_round_trip() {
    check_inputs("ndjson_grain", checks::ndjson_grain);
}
