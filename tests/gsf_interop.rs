//! GSF interoperability with the real mediagrains 5.1.0, run through
//! `tests/interop/mediagrains_gsf.py` with the Python named by `GRAINSTORE_PYTHON`:
//!
//! ```sh
//! GRAINSTORE_PYTHON=~/.cache/grainstore/venv/bin/python \
//!     cargo test --test gsf_interop -- --include-ignored
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use grainstore::grain::Grain;
use grainstore::gsf::{GsfDecoder, GsfEncoder, GsfEvent, GsfHead, encode_file};
use serde_json::Value;

fn python() -> String {
    std::env::var("GRAINSTORE_PYTHON")
        .expect("set GRAINSTORE_PYTHON to a python with mediagrains 5.1.0 installed")
}

fn script(args: &[&str]) -> (bool, String) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/mediagrains_gsf.py"
    );
    let out = Command::new(python())
        .arg(path)
        .args(args)
        .output()
        .expect("python runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn make_fixtures() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, text) = script(&["make", dir.path().to_str().expect("utf-8 path")]);
    assert!(ok, "make failed: {text}");
    dir
}

fn decode(path: &Path) -> (GsfHead, Vec<(u16, Grain)>) {
    let data = std::fs::read(path).expect("read gsf");
    let mut head = None;
    let mut grains = Vec::new();
    for event in GsfDecoder::decode_all(Bytes::from(data)).expect("decodes") {
        match event {
            GsfEvent::Head(h) => head = Some(h),
            GsfEvent::Grain { local_id, grain } => grains.push((local_id, grain)),
            GsfEvent::End => {}
        }
    }
    (head.expect("a head"), grains)
}

fn expected_grains(path: &Path) -> Vec<(u16, Grain)> {
    let v: Value = serde_json::from_slice(&std::fs::read(path).expect("read json")).expect("json");
    v["grains"]
        .as_array()
        .expect("grains")
        .iter()
        .map(|g| {
            let local_id = g["local_id"].as_u64().expect("local_id") as u16;
            (
                local_id,
                Grain::from_json(g.to_string().as_bytes()).expect("grain json"),
            )
        })
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path
}

#[test]
#[ignore = "needs GRAINSTORE_PYTHON with mediagrains 5.1.0"]
fn rust_decodes_what_mediagrains_writes() {
    let dir = make_fixtures();
    for version in [7, 8, 9] {
        let (head, grains) = decode(&dir.path().join(format!("mediagrains_v{version}.gsf")));
        assert_eq!(head.major, version);
        let expected = expected_grains(&dir.path().join(format!("mediagrains_v{version}.json")));
        assert_eq!(grains, expected, "v{version}");
    }
}

#[test]
#[ignore = "needs GRAINSTORE_PYTHON with mediagrains 5.1.0"]
fn rust_v9_output_is_byte_identical_to_mediagrains() {
    let dir = make_fixtures();
    let path = dir.path().join("mediagrains_v9.gsf");
    let (head, grains) = decode(&path);
    let ours = encode_file(&head, &grains).expect("encodes");
    assert!(
        ours[..] == std::fs::read(&path).expect("read")[..],
        "bytes differ"
    );
}

#[test]
#[ignore = "needs GRAINSTORE_PYTHON with mediagrains 5.1.0"]
fn mediagrains_reads_what_rust_writes() {
    let dir = make_fixtures();
    for version in [7, 8, 9] {
        let expected = dir.path().join(format!("mediagrains_v{version}.json"));
        let (head, grains) = decode(&dir.path().join(format!("mediagrains_v{version}.gsf")));

        // A whole file with the same head (re-encoded as version 9).
        let file = encode_file(&head, &grains).expect("encodes");
        let path = write(dir.path(), &format!("rust_file_v{version}.gsf"), &file);
        let (ok, text) = script(&[
            "check",
            path.to_str().expect("path"),
            expected.to_str().expect("path"),
        ]);
        assert!(ok, "check of {}: {text}", path.display());
        let (ok, text) = script(&["probe", path.to_str().expect("path")]);
        assert!(ok, "gsf_probe of {}: {text}", path.display());

        // The streaming form (segment counts -1), chunk by chunk, grains from the JSON
        // form so that the JSON parser is part of the path.
        let mut encoder = GsfEncoder::with_head(head.clone());
        let mut stream = encoder.start().expect("start").to_vec();
        for (local_id, grain) in expected_grains(&expected) {
            for chunk in encoder.encode_grain_in(local_id, &grain).expect("grain") {
                stream.extend_from_slice(&chunk);
            }
        }
        stream.extend_from_slice(&encoder.finish());
        let path = write(dir.path(), &format!("rust_stream_v{version}.gsf"), &stream);
        let (ok, text) = script(&[
            "check",
            path.to_str().expect("path"),
            expected.to_str().expect("path"),
        ]);
        assert!(ok, "check of {}: {text}", path.display());
        let (ok, text) = script(&["probe", path.to_str().expect("path")]);
        assert!(ok, "gsf_probe of {}: {text}", path.display());
    }
}

#[test]
#[ignore = "needs GRAINSTORE_PYTHON with mediagrains 5.1.0"]
fn the_check_detects_a_difference() {
    let dir = make_fixtures();
    let expected = dir.path().join("mediagrains_v9.json");
    let (head, mut grains) = decode(&dir.path().join("mediagrains_v9.gsf"));
    let (header, payload) = grains[0].1.clone().into_parts();
    let mut changed = payload.to_vec();
    changed[3] ^= 0xff;
    grains[0].1 = Grain::new(header, Bytes::from(changed)).expect("valid");
    let path = write(
        dir.path(),
        "changed.gsf",
        &encode_file(&head, &grains).expect("encodes"),
    );
    let (ok, text) = script(&[
        "check",
        path.to_str().expect("path"),
        expected.to_str().expect("path"),
    ]);
    assert!(!ok, "a changed payload must be reported: {text}");
    assert!(text.contains("payload"), "{text}");
}
