//! The grain model, its JSON form and its storage header, checked against the grains
//! mediagrains 5.1.0 wrote into `tests/data/gsf/` (no Python needed).

use bytes::Bytes;
use grainstore::grain::{
    CodedVideoHeader, CogFrameFormat, CogFrameLayout, EventPayload, Grain, GrainError, GrainHeader,
    GrainKind, GrainType, Timelabel, VideoComponent, VideoHeader,
};
use grainstore::time::{Rational, Timestamp};
use serde_json::{Value, json};
use uuid::Uuid;

fn expected_grains() -> Vec<Value> {
    let path = format!(
        "{}/tests/data/gsf/mediagrains_v9.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: Value = serde_json::from_slice(&text).expect("json");
    v["grains"].as_array().expect("grains").clone()
}

fn fixture_grains() -> Vec<Grain> {
    expected_grains()
        .iter()
        .map(|g| Grain::from_json(g.to_string().as_bytes()).expect("parses"))
        .collect()
}

fn ts(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

#[test]
fn covers_every_grain_type() {
    let mut types: Vec<GrainType> = fixture_grains().iter().map(Grain::grain_type).collect();
    types.dedup();
    for t in [
        GrainType::Video,
        GrainType::Audio,
        GrainType::CodedVideo,
        GrainType::CodedAudio,
        GrainType::Event,
        GrainType::Empty,
    ] {
        assert!(types.contains(&t), "{t}");
    }
}

#[test]
fn meta_is_exactly_mediagrains_meta() {
    for want in expected_grains() {
        let grain = Grain::from_json(want.to_string().as_bytes()).expect("parses");
        assert_eq!(
            grain.meta_json(),
            want["meta"],
            "meta of a {}",
            grain.grain_type()
        );
        let out: Value = serde_json::from_slice(&grain.to_json(true)).expect("json");
        assert_eq!(out["data"], want["data"]);
    }
}

#[test]
fn json_round_trips_with_and_without_payload() {
    for mut grain in fixture_grains() {
        grain.set_creation_timestamp(Some(ts("1700000000:5")));
        let back = Grain::from_json(&grain.to_json(true)).expect("parses");
        assert_eq!(back, grain);
        let meta_only = Grain::from_json(&grain.to_json(false)).expect("parses");
        assert_eq!(meta_only.header(), grain.header());
        if grain.grain_type() == GrainType::Event {
            // The event document is in the metadata; the payload is rebuilt byte for byte
            // as Python's json.dumps writes it.
            assert_eq!(meta_only.payload(), grain.payload());
        } else {
            assert!(meta_only.payload().is_empty());
        }
    }
}

#[test]
fn json_is_written_in_mediagrains_key_order() {
    let grain = &fixture_grains()[0];
    let text = String::from_utf8(grain.to_json(false)).expect("utf-8");
    assert!(text.starts_with(
        "{\"meta\":{\"@_ns\":\"urn:x-ipstudio:ns:0.1\",\"grain\":{\"grain_type\":\"video\",\"source_id\":"
    ));
    assert!(!text.contains("\"data\""));
    assert!(text.contains("\"rate\":{\"numerator\":25,\"denominator\":1}"));
}

#[test]
fn storage_header_round_trips_every_field() {
    let mut grains = fixture_grains();
    // Fields of the JSON form that GSF does not carry.
    let coded = Grain::from_json(
        json!({"meta": {"grain": {
            "grain_type": "coded_video", "source_id": Uuid::nil(), "flow_id": Uuid::nil(),
            "origin_timestamp": "-3:7", "creation_timestamp": "12:0",
            "cog_coded_frame": {"format": 516, "layout": 0, "origin_width": 1, "origin_height": 2,
                "coded_width": 3, "coded_height": 4, "length": 99,
                "source_aspect_ratio": {"numerator": 4, "denominator": 3},
                "pixel_aspect_ratio": {"numerator": 1, "denominator": 1}}}}})
        .to_string()
        .as_bytes(),
    )
    .expect("parses");
    grains.push(coded);
    let mut video = grains[0].header().clone();
    if let GrainKind::Video(v) = &mut video.kind {
        v.components[1].offset = 1000;
    }
    grains.push(Grain::new(video, grains[0].payload().clone()).expect("valid"));
    for (i, mut grain) in grains.into_iter().enumerate() {
        if i % 2 == 0 {
            grain.set_creation_timestamp(Some(ts("1700000000:123")));
        }
        let mut bytes = Vec::new();
        grain.encode_header(&mut bytes);
        let header = GrainHeader::decode(&bytes).expect("decodes");
        assert_eq!(&header, grain.header(), "grain {i}");
        assert_eq!(
            Grain::new(header, grain.payload().clone()).expect("valid"),
            grain
        );
        // Strict: truncations and trailing bytes are errors, never panics.
        for cut in 0..bytes.len() {
            assert!(
                GrainHeader::decode(&bytes[..cut]).is_err(),
                "grain {i} cut at {cut}"
            );
        }
        bytes.push(0);
        assert!(GrainHeader::decode(&bytes).is_err());
    }
}

#[test]
fn same_identity_ignores_only_the_creation_timestamp() {
    let grain = fixture_grains()[0].clone();
    let mut later = grain.clone();
    later.set_creation_timestamp(Some(ts("1800000000:0")));
    assert!(grain.same_identity(&later));
    assert_ne!(grain, later);
    let (mut header, payload) = grain.clone().into_parts();
    header.sync_timestamp = ts("1:0");
    assert!(!grain.same_identity(&Grain::new(header, payload.clone()).expect("valid")));
    let mut other = payload.to_vec();
    other[0] ^= 1;
    assert!(
        !grain
            .same_identity(&Grain::new(grain.header().clone(), Bytes::from(other)).expect("valid"))
    );
}

#[test]
fn rationals_are_canonical() {
    let meta = |rate: Value| {
        json!({"meta": {"grain": {"grain_type": "empty", "origin_timestamp": "1:0", "rate": rate}}})
            .to_string()
    };
    let g =
        Grain::from_json(meta(json!({"numerator": 50, "denominator": 2})).as_bytes()).expect("ok");
    assert_eq!(g.rate(), Rational::new(25, 1));
    let g =
        Grain::from_json(meta(json!({"numerator": 0, "denominator": 7})).as_bytes()).expect("ok");
    assert_eq!(g.rate(), Rational::new(0, 1));
    let g =
        Grain::from_json(meta(json!({"numerator": -3, "denominator": -6})).as_bytes()).expect("ok");
    assert_eq!(g.rate(), Rational::new(1, 2));
    // A zero denominator is refused (by the Rational parser itself).
    assert!(Grain::from_json(meta(json!({"numerator": 1, "denominator": 0})).as_bytes()).is_err());
    for bad in [
        json!({"numerator": -1, "denominator": 2}),
        json!({"numerator": 1u64 << 33, "denominator": 1}),
    ] {
        let result = Grain::from_json(meta(bad.clone()).as_bytes());
        assert!(
            matches!(result, Err(GrainError::Invalid { field: "rate", .. })),
            "{bad}: {result:?}"
        );
    }
}

#[test]
fn invalid_json_forms_are_typed_errors() {
    let parse = |v: Value| Grain::from_json(v.to_string().as_bytes());
    assert!(matches!(Grain::from_json(b"{"), Err(GrainError::Json(_))));
    assert!(matches!(
        parse(json!({"meta": {"grain": {"grain_type": "smell", "origin_timestamp": "1:0"}}})),
        Err(GrainError::UnknownGrainType(t)) if t == "smell"
    ));
    assert!(matches!(
        parse(json!({"meta": {"grain": {"grain_type": "empty"}}})),
        Err(GrainError::MissingField("origin_timestamp"))
    ));
    assert!(matches!(
        parse(json!({"meta": {"grain": {"origin_timestamp": "1:0"}}, "data": "!!"})),
        Err(GrainError::Base64(_))
    ));
    assert!(matches!(
        parse(json!({"meta": {"grain": {"origin_timestamp": "x"}}})),
        Err(GrainError::Json(_))
    ));
    assert!(matches!(
        parse(
            json!({"meta": {"grain": {"grain_type": "video", "origin_timestamp": "1:0",
            "cog_frame": {"width": -1}}}})
        ),
        Err(GrainError::Json(_))
    ));
    assert!(matches!(
        parse(
            json!({"meta": {"grain": {"grain_type": "event", "origin_timestamp": "1:0"}},
            "data": "bm90IGpzb24="})
        ),
        Err(GrainError::EventPayload(_))
    ));
    assert!(matches!(
        parse(
            json!({"meta": {"grain": {"origin_timestamp": "1:0", "timelabels": [
            {"tag": "seventeen bytes!!", "timelabel": {"frames_since_midnight": 0,
                "frame_rate_numerator": 25, "frame_rate_denominator": 1}}]}}})
        ),
        Err(GrainError::Invalid {
            field: "timelabels.tag",
            ..
        })
    ));
}

#[test]
fn data_grain_type_is_an_event_and_unknown_cog_values_survive() {
    let g = Grain::from_json(
        json!({"meta": {"grain": {"grain_type": "data", "origin_timestamp": "1:0",
            "event_payload": {"type": "t", "topic": "/x", "data": [{"path": "/p", "pre": null}]}}}})
        .to_string()
        .as_bytes(),
    )
    .expect("parses");
    assert_eq!(g.grain_type(), GrainType::Event);
    let event = g.event_payload().expect("event").expect("parses");
    assert_eq!(event.data[0].pre, Some(Value::Null), "explicit null kept");
    assert_eq!(
        &g.payload()[..],
        b"{\"type\": \"t\", \"topic\": \"/x\", \"data\": [{\"path\": \"/p\", \"pre\": null}]}"
    );

    let header = GrainHeader {
        kind: GrainKind::Video(VideoHeader {
            format: CogFrameFormat(0x1234_5678),
            layout: CogFrameLayout(77),
            width: 1,
            height: 1,
            extension: 0,
            source_aspect_ratio: Some(Rational::new(0, 5)),
            pixel_aspect_ratio: None,
            components: vec![VideoComponent {
                stride: 1,
                offset: 0,
                width: 1,
                height: 1,
                length: 1,
            }],
        }),
        timelabels: vec![Timelabel {
            tag: "a".into(),
            count: 1,
            rate: Rational::new(50, 2),
            drop_frame: false,
        }],
        ..GrainHeader::new(Uuid::nil(), Uuid::nil(), Timestamp::ZERO, GrainKind::Empty)
    };
    let g = Grain::new(header, Bytes::from_static(b"x")).expect("valid");
    let GrainKind::Video(v) = g.kind() else {
        panic!("video")
    };
    assert_eq!(v.source_aspect_ratio, None, "a zero ratio is no ratio");
    assert_eq!(g.timelabels()[0].rate, Rational::new(25, 1));
    let back = Grain::from_json(&g.to_json(true)).expect("parses");
    assert_eq!(back, g);
    assert_eq!(
        format!("{:?}", CogFrameFormat(0x1234_5678)),
        "CogFrameFormat(0x12345678)"
    );
    assert_eq!(CogFrameFormat::U8_420.name(), Some("U8_420"));
}

#[test]
fn unknown_temporal_offset_is_normalised() {
    let header = GrainHeader::new(
        Uuid::nil(),
        Uuid::nil(),
        Timestamp::ZERO,
        GrainKind::CodedVideo(CodedVideoHeader {
            format: CogFrameFormat::H264,
            layout: CogFrameLayout::FULL_FRAME,
            origin_width: 1,
            origin_height: 1,
            coded_width: 1,
            coded_height: 1,
            is_key_frame: None,
            temporal_offset: Some(i32::MAX),
            unit_offsets: vec![],
            length: 0,
            source_aspect_ratio: None,
            pixel_aspect_ratio: None,
        }),
    );
    let g = Grain::new(header, Bytes::new()).expect("valid");
    let GrainKind::CodedVideo(c) = g.kind() else {
        panic!("coded")
    };
    assert_eq!(c.temporal_offset, None);
}

#[test]
fn new_event_writes_the_python_document() {
    let event = EventPayload {
        event_type: "urn:x".into(),
        topic: "/t".into(),
        data: vec![],
    };
    let header = GrainHeader::new(Uuid::nil(), Uuid::nil(), Timestamp::ZERO, GrainKind::Empty);
    let g = Grain::new_event(header, &event).expect("valid");
    assert_eq!(g.grain_type(), GrainType::Event);
    assert_eq!(
        &g.payload()[..],
        b"{\"type\": \"urn:x\", \"topic\": \"/t\", \"data\": []}"
    );
    assert_eq!(g.event_payload().expect("event").expect("parses"), event);
}
