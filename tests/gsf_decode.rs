//! GSF decoding and encoding against files written by mediagrains 5.1.0 itself
//! (`tests/data/gsf/`, made by `tests/interop/mediagrains_gsf.py make`), plus the
//! decoder's handling of truncated, malformed and unusual input.

use bytes::Bytes;
use grainstore::grain::Grain;
use grainstore::gsf::{
    GsfDateTime, GsfDecoder, GsfEncoder, GsfError, GsfEvent, GsfHead, encode_file,
};
use serde_json::Value;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/gsf/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn expected(version: u16) -> Value {
    serde_json::from_slice(&fixture(&format!("mediagrains_v{version}.json")))
        .expect("expected json")
}

/// Decodes `data` pushed in chunks of the given sizes (cycled), checking a clean end.
fn decode_chunked(data: &[u8], sizes: &[usize]) -> Result<Vec<GsfEvent>, GsfError> {
    let mut decoder = GsfDecoder::new();
    let mut events = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let n = sizes[i % sizes.len()].max(1).min(data.len() - at);
        decoder.push(Bytes::copy_from_slice(&data[at..at + n]));
        at += n;
        i += 1;
        while let Some(event) = decoder.next_event()? {
            events.push(event);
        }
    }
    decoder.finish()?;
    Ok(events)
}

fn split(events: Vec<GsfEvent>) -> (Vec<GsfHead>, Vec<(u16, Grain)>, usize) {
    let mut heads = Vec::new();
    let mut grains = Vec::new();
    let mut ends = 0;
    for event in events {
        match event {
            GsfEvent::Head(head) => heads.push(head),
            GsfEvent::Grain { local_id, grain } => grains.push((local_id, grain)),
            GsfEvent::End => ends += 1,
        }
    }
    (heads, grains, ends)
}

fn check_against_expected(version: u16, events: Vec<GsfEvent>) {
    let want = expected(version);
    let (heads, grains, ends) = split(events);
    assert_eq!(heads.len(), 1);
    assert_eq!(ends, 1);
    let head = &heads[0];
    assert_eq!(head.major, version);
    assert_eq!(head.id.to_string(), want["head"]["id"]);
    let c = head.created;
    assert_eq!(
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            c.year, c.month, c.day, c.hour, c.minute, c.second
        ),
        want["head"]["created"]
    );
    let tags: Vec<Value> = head
        .tags
        .iter()
        .map(|t| serde_json::json!([t.key, t.value]))
        .collect();
    assert_eq!(Value::from(tags), want["head"]["tags"]);
    let segments = want["head"]["segments"].as_array().expect("segments");
    assert_eq!(head.segments.len(), segments.len());
    for (seg, want) in head.segments.iter().zip(segments) {
        assert_eq!(seg.local_id, want["local_id"]);
        assert_eq!(seg.id.to_string(), want["id"]);
        assert_eq!(seg.count, want["count"]);
        let tags: Vec<Value> = seg
            .tags
            .iter()
            .map(|t| serde_json::json!([t.key, t.value]))
            .collect();
        assert_eq!(Value::from(tags), want["tags"]);
        match (&seg.flow, want.get("flow")) {
            (None, None) => {}
            (Some(flow), Some(w)) => {
                assert_eq!(flow.source_id.to_string(), w["source_id"]);
                assert_eq!(flow.flow_id.to_string(), w["flow_id"]);
                assert_eq!(flow.format, w["format"]);
                assert_eq!(flow.data, w["data"]);
            }
            other => panic!("flow block mismatch: {other:?}"),
        }
    }
    let want_grains = want["grains"].as_array().expect("grains");
    assert_eq!(grains.len(), want_grains.len());
    for (i, ((local_id, grain), w)) in grains.iter().zip(want_grains).enumerate() {
        assert_eq!(*local_id, w["local_id"], "grain {i}");
        let from_json = Grain::from_json(w.to_string().as_bytes()).expect("expected grain parses");
        assert_eq!(grain, &from_json, "grain {i} of v{version}");
        assert_eq!(grain.creation_timestamp(), None);
    }
}

#[test]
fn decodes_mediagrains_v7_v8_v9_files() {
    for version in [7, 8, 9] {
        let data = fixture(&format!("mediagrains_v{version}.gsf"));
        let events = GsfDecoder::decode_all(Bytes::from(data)).expect("decodes");
        check_against_expected(version, events);
    }
}

#[test]
fn any_chunking_gives_the_same_events() {
    for version in [7, 8, 9] {
        let data = fixture(&format!("mediagrains_v{version}.gsf"));
        let whole = GsfDecoder::decode_all(Bytes::from(data.clone())).expect("decodes");
        for sizes in [
            &[1][..],
            &[2, 3, 5],
            &[7, 100, 13],
            &[4096],
            &[11, 1, 64, 3],
        ] {
            assert_eq!(
                decode_chunked(&data, sizes).expect("decodes"),
                whole,
                "chunks {sizes:?}"
            );
        }
    }
}

#[test]
fn grains_in_one_chunk_share_the_input_buffer() {
    let data = Bytes::from(fixture("mediagrains_v9.gsf"));
    let range = data.as_ptr() as usize..data.as_ptr() as usize + data.len();
    for event in GsfDecoder::decode_all(data.clone()).expect("decodes") {
        if let GsfEvent::Grain { grain, .. } = event
            && !grain.payload().is_empty()
        {
            assert!(
                range.contains(&(grain.payload().as_ptr() as usize)),
                "payload was copied"
            );
        }
    }
}

#[test]
fn encoding_the_decoded_v9_file_gives_the_same_bytes() {
    let data = fixture("mediagrains_v9.gsf");
    let (heads, grains, _) =
        split(GsfDecoder::decode_all(Bytes::from(data.clone())).expect("decodes"));
    let encoded = encode_file(&heads[0], &grains).expect("encodes");
    let first_difference = encoded.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(
        first_difference, None,
        "byte-identical to mediagrains' output"
    );
    assert_eq!(encoded.len(), data.len());
}

#[test]
fn older_versions_re_encode_as_v9_with_the_same_grains() {
    for version in [7, 8] {
        let data = fixture(&format!("mediagrains_v{version}.gsf"));
        let (heads, grains, _) = split(GsfDecoder::decode_all(Bytes::from(data)).expect("decodes"));
        let encoded = encode_file(&heads[0], &grains).expect("encodes");
        assert_eq!(&encoded[8..10], &9u16.to_le_bytes());
        let (heads2, grains2, _) = split(GsfDecoder::decode_all(encoded).expect("decodes"));
        assert_eq!(grains2, grains);
        assert_eq!(heads2[0].segments, heads[0].segments);
    }
}

#[test]
fn streaming_encoder_output_decodes_to_the_same_grains() {
    let data = fixture("mediagrains_v9.gsf");
    let (_, grains, _) = split(GsfDecoder::decode_all(Bytes::from(data)).expect("decodes"));
    let mut encoder = GsfEncoder::new(
        uuid::Uuid::new_v4(),
        GsfDateTime::from_unix_seconds(1_700_000_000),
    );
    encoder.add_tag("k", "v").expect("tag");
    for (_, grain) in &grains {
        encoder.add_flow_segment(grain.flow_id()).expect("segment");
    }
    let mut chunks = vec![encoder.start().expect("start")];
    for (_, grain) in &grains {
        let out = encoder.encode_grain(grain).expect("grain");
        assert_eq!(
            out.payload.as_ptr(),
            grain.payload().as_ptr(),
            "payload not copied"
        );
        chunks.extend(out);
    }
    chunks.push(encoder.finish());
    let mut decoder = GsfDecoder::new();
    let mut events = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        while let Some(event) = decoder.next_event().expect("decodes") {
            events.push(event);
        }
    }
    decoder.finish().expect("clean end");
    let (heads, decoded, ends) = split(events);
    assert_eq!(ends, 1);
    assert!(heads[0].segments.iter().all(|s| s.count == -1));
    assert_eq!(heads[0].tags.len(), 1);
    let decoded: Vec<Grain> = decoded.into_iter().map(|(_, g)| g).collect();
    let original: Vec<Grain> = grains.into_iter().map(|(_, g)| g).collect();
    assert_eq!(decoded, original);
}

#[test]
fn truncation_is_reported_with_its_offset_and_grain_boundaries_end_cleanly() {
    let data = fixture("mediagrains_v9.gsf");
    // Offsets where a grain (or the terminator) starts: the input may end there.
    let mut boundaries = Vec::new();
    {
        let mut decoder = GsfDecoder::new();
        decoder.push(Bytes::from(data.clone()));
        while let Some(event) = decoder.next_event().expect("decodes") {
            if !matches!(event, GsfEvent::End) {
                boundaries.push(decoder.offset() as usize);
            }
        }
    }
    for cut in 0..data.len() {
        let mut decoder = GsfDecoder::new();
        decoder.push(Bytes::copy_from_slice(&data[..cut]));
        while decoder
            .next_event()
            .expect("no error before the cut")
            .is_some()
        {}
        let end = decoder.finish();
        if boundaries.contains(&cut) {
            assert!(end.is_ok(), "cut at {cut} is a grain boundary: {end:?}");
        } else {
            match end {
                Err(GsfError::Truncated { offset, .. }) => assert_eq!(offset, cut as u64),
                other => panic!("cut at {cut}: expected truncation, got {other:?}"),
            }
        }
    }
}

#[test]
fn empty_input_is_not_a_clean_end() {
    let decoder = GsfDecoder::new();
    assert!(matches!(
        decoder.finish(),
        Err(GsfError::Truncated { offset: 0, .. })
    ));
}

#[test]
fn concatenated_files_decode_in_order() {
    let mut data = fixture("mediagrains_v7.gsf");
    data.extend(fixture("mediagrains_v9.gsf"));
    let (heads, grains, ends) = split(GsfDecoder::decode_all(Bytes::from(data)).expect("decodes"));
    assert_eq!(
        heads.iter().map(|h| h.major).collect::<Vec<_>>(),
        vec![7, 9]
    );
    assert_eq!(ends, 2);
    assert_eq!(grains.len(), 11 + 12);
}

#[test]
fn unknown_blocks_are_skipped_and_tiny_ones_refused() {
    let data = fixture("mediagrains_v9.gsf");
    let whole = GsfDecoder::decode_all(Bytes::from(data.clone())).expect("decodes");
    // Insert an unknown block before the terminator (the last 8 bytes).
    let mut with_unknown = data[..data.len() - 8].to_vec();
    with_unknown.extend_from_slice(b"fill\x0c\0\0\0xyzw");
    with_unknown.extend_from_slice(&data[data.len() - 8..]);
    assert_eq!(decode_chunked(&with_unknown, &[3]).expect("decodes"), whole);

    for size in 0u32..8 {
        let mut bad = data[..data.len() - 8].to_vec();
        bad.extend_from_slice(b"fill");
        bad.extend_from_slice(&size.to_le_bytes());
        let at = (data.len() - 8) as u64;
        match decode_chunked(&bad, &[5]) {
            Err(GsfError::Malformed { offset, .. }) => assert_eq!(offset, at + 4),
            other => panic!("size {size}: {other:?}"),
        }
    }
}

#[test]
fn unsupported_versions_and_other_files_are_refused() {
    let mut data = fixture("mediagrains_v9.gsf");
    data[8] = 10;
    assert!(matches!(
        GsfDecoder::decode_all(Bytes::from(data)),
        Err(GsfError::UnsupportedVersion { major: 10, .. })
    ));
    assert!(matches!(
        GsfDecoder::decode_all(Bytes::from_static(b"not a gsf file at all")),
        Err(GsfError::Malformed { offset: 0, .. })
    ));
}

#[test]
fn declared_sizes_over_the_limit_are_refused_before_buffering() {
    let data = fixture("mediagrains_v9.gsf");
    let mut decoder = GsfDecoder::new().with_max_grain_size(100);
    decoder.push(Bytes::from(data));
    let err = loop {
        match decoder.next_event() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("all decoded"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, GsfError::TooLarge { limit: 100, .. }),
        "{err}"
    );
    // A huge declared grain with few bytes present fails at once, not after buffering.
    let mut huge = fixture("mediagrains_v9.gsf");
    let first_grain = {
        let mut d = GsfDecoder::new();
        d.push(Bytes::from(huge.clone()));
        assert!(matches!(d.next_event(), Ok(Some(GsfEvent::Head(_)))));
        d.offset() as usize
    };
    assert_eq!(&huge[first_grain..first_grain + 4], b"grai");
    huge.truncate(first_grain + 4);
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    let mut decoder = GsfDecoder::new();
    decoder.push(Bytes::from(huge));
    assert!(matches!(decoder.next_event(), Ok(Some(GsfEvent::Head(_)))));
    assert!(matches!(
        decoder.next_event(),
        Err(GsfError::TooLarge { .. })
    ));
    // The error sticks.
    assert!(decoder.next_event().is_err());
    assert!(decoder.finish().is_err());
}

#[test]
fn a_file_without_terminator_ending_on_a_grain_is_clean() {
    let data = fixture("mediagrains_v8.gsf");
    let cut = &data[..data.len() - 8];
    let (_, grains, ends) = split(decode_chunked(cut, &[17]).expect("clean"));
    assert_eq!(ends, 0);
    assert_eq!(grains.len(), 11);
}
