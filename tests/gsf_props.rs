//! Property tests of the GSF codec and the grain forms: arbitrary grains round-trip
//! through GSF, JSON and the storage header; any chunking of the input decodes the
//! same; random, truncated and mutated input never panics and never makes the decoder
//! allocate past its limit.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use grainstore::grain::{
    AudioHeader, CodedAudioHeader, CodedVideoHeader, CogAudioFormat, CogFrameFormat,
    CogFrameLayout, EventDatum, EventPayload, Grain, GrainHeader, GrainKind, Timelabel,
    VideoComponent, VideoHeader,
};
use grainstore::gsf::{
    GsfDateTime, GsfDecoder, GsfError, GsfEvent, GsfFlow, GsfHead, GsfSegment, GsfTag, encode_file,
};
use grainstore::time::{Rational, Timestamp};
use proptest::prelude::*;
use uuid::Uuid;

// ---- an allocator that records the largest allocation of an armed thread -------------

struct Recording;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: thread-locals may be gone while a thread shuts down.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarding the caller's layout to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as for `dealloc`; `new_size` comes from the caller.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Recording = Recording;

/// Runs `f` and returns the largest single allocation it made on this thread.
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
    f();
    ARMED.with(|a| a.set(false));
    LARGEST.with(Cell::get)
}

// ---- strategies ----------------------------------------------------------------------

fn timestamp() -> impl Strategy<Value = Timestamp> {
    (
        any::<bool>(),
        0..=Timestamp::MAX_SECONDS,
        0..1_000_000_000u32,
    )
        .prop_map(|(neg, s, n)| Timestamp::from_parts(neg, s, n).expect("in range"))
}

fn rational() -> impl Strategy<Value = Rational> {
    prop_oneof![
        Just(Rational::new(0, 1)),
        Just(Rational::new(25, 1)),
        Just(Rational::new(30000, 1001)),
        (any::<u32>(), 1..=u32::MAX).prop_map(|(n, d)| Rational::new(n.into(), d.into())),
    ]
}

fn short_string(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![Just('a'), Just('Z'), Just('é'), Just(' '), Just('"')],
        0..=max,
    )
    .prop_map(move |chars| {
        let mut s: String = chars.into_iter().collect();
        while s.len() > max {
            s.pop();
        }
        s
    })
}

fn timelabel() -> impl Strategy<Value = Timelabel> {
    (short_string(16), any::<u32>(), rational(), any::<bool>()).prop_map(
        |(tag, count, rate, drop_frame)| Timelabel {
            tag,
            count,
            rate,
            drop_frame,
        },
    )
}

fn component() -> impl Strategy<Value = VideoComponent> {
    (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
        |(stride, width, height, length)| VideoComponent {
            stride,
            offset: 0,
            width,
            height,
            length,
        },
    )
}

fn kind() -> impl Strategy<Value = GrainKind> {
    let video = (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        proptest::option::of(rational()),
        proptest::option::of(rational()),
        proptest::collection::vec(component(), 0..4),
    )
        .prop_map(
            |(f, l, width, height, extension, sar, par, mut components)| {
                // GSF implies offsets as the running sum of lengths.
                let mut offset = 0u64;
                for c in &mut components {
                    c.offset = offset;
                    offset += u64::from(c.length);
                }
                GrainKind::Video(VideoHeader {
                    format: CogFrameFormat(f),
                    layout: CogFrameLayout(l),
                    width,
                    height,
                    extension,
                    source_aspect_ratio: sar,
                    pixel_aspect_ratio: par,
                    components,
                })
            },
        );
    let coded_video = (
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
        ),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<i32>()),
        proptest::collection::vec(any::<u32>(), 0..5),
    )
        .prop_map(
            |((f, l, ow, oh, cw, ch), is_key_frame, temporal_offset, unit_offsets)| {
                GrainKind::CodedVideo(CodedVideoHeader {
                    format: CogFrameFormat(f),
                    layout: CogFrameLayout(l),
                    origin_width: ow,
                    origin_height: oh,
                    coded_width: cw,
                    coded_height: ch,
                    is_key_frame,
                    temporal_offset,
                    unit_offsets,
                    length: 0,
                    source_aspect_ratio: None,
                    pixel_aspect_ratio: None,
                })
            },
        );
    let audio = (any::<u32>(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(
        |(f, channels, samples, sample_rate)| {
            GrainKind::Audio(AudioHeader {
                format: CogAudioFormat(f),
                channels,
                samples,
                sample_rate,
            })
        },
    );
    let coded_audio = (
        any::<u32>(),
        any::<u16>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(f, channels, samples, priming, remainder, sample_rate)| {
            GrainKind::CodedAudio(CodedAudioHeader {
                format: CogAudioFormat(f),
                channels,
                samples,
                priming,
                remainder,
                sample_rate,
            })
        });
    prop_oneof![
        Just(GrainKind::Empty),
        Just(GrainKind::Event),
        video,
        coded_video,
        audio,
        coded_audio
    ]
}

fn event_payload() -> impl Strategy<Value = EventPayload> {
    (
        short_string(20),
        short_string(10),
        proptest::collection::vec(
            (
                short_string(8),
                proptest::option::of(any::<i32>()),
                any::<bool>(),
            ),
            0..3,
        ),
    )
        .prop_map(|(event_type, topic, data)| EventPayload {
            event_type,
            topic,
            data: data
                .into_iter()
                .map(|(path, pre, post)| EventDatum {
                    path,
                    pre: pre.map(serde_json::Value::from),
                    post: post.then(|| serde_json::json!({"x": [1.5, null]})),
                })
                .collect(),
        })
}

/// An arbitrary valid grain of the form GSF carries (no creation timestamp, no
/// JSON-only fields).
fn gsf_grain() -> impl Strategy<Value = Grain> {
    (
        (
            any::<u128>(),
            any::<u128>(),
            timestamp(),
            timestamp(),
            rational(),
            rational(),
        ),
        proptest::collection::vec(timelabel(), 0..3),
        kind(),
        proptest::collection::vec(any::<u8>(), 0..200),
        event_payload(),
    )
        .prop_map(
            |((src, flow, origin, sync, rate, duration), timelabels, kind, payload, event)| {
                let header = GrainHeader {
                    source_id: Uuid::from_u128(src),
                    flow_id: Uuid::from_u128(flow),
                    origin_timestamp: origin,
                    sync_timestamp: sync,
                    creation_timestamp: None,
                    rate,
                    duration,
                    timelabels,
                    kind,
                };
                if matches!(header.kind, GrainKind::Event) {
                    Grain::new_event(header, &event).expect("valid event grain")
                } else {
                    Grain::new(header, Bytes::from(payload)).expect("valid grain")
                }
            },
        )
}

/// Any grain, including a creation timestamp and the JSON-only fields.
fn any_grain() -> impl Strategy<Value = Grain> {
    (
        gsf_grain(),
        proptest::option::of(timestamp()),
        any::<u64>(),
        proptest::option::of(rational()),
        any::<u64>(),
    )
        .prop_map(|(grain, creation, length, sar, offset)| {
            let (mut header, payload) = grain.into_parts();
            header.creation_timestamp = creation;
            match &mut header.kind {
                GrainKind::CodedVideo(c) => {
                    c.length = length;
                    c.source_aspect_ratio = sar;
                }
                GrainKind::Video(v) => {
                    if let Some(c) = v.components.first_mut() {
                        c.offset = offset;
                    }
                }
                _ => {}
            }
            Grain::new(header, payload).expect("valid")
        })
}

fn head(local_ids: &[u16]) -> GsfHead {
    let mut head = GsfHead::new(
        Uuid::from_u128(7),
        GsfDateTime::from_unix_seconds(1_700_000_000),
    );
    head.tags.push(GsfTag::new("k", "v"));
    for &local_id in local_ids {
        head.segments.push(GsfSegment {
            local_id,
            id: Uuid::from_u128(u128::from(local_id)),
            count: -1,
            tags: vec![GsfTag::new("seg", "tag")],
            flow: (local_id == 1).then(|| GsfFlow {
                source_id: Uuid::from_u128(1),
                flow_id: Uuid::from_u128(2),
                format: "urn:x-nmos:format:video".into(),
                data: "{}".into(),
            }),
        });
    }
    head
}

fn file(grains: &[Grain]) -> Bytes {
    let pairs: Vec<(u16, Grain)> = grains
        .iter()
        .enumerate()
        .map(|(i, g)| ((i % 3) as u16 + 1, g.clone()))
        .collect();
    encode_file(&head(&[1, 2, 3]), &pairs).expect("encodes")
}

/// Splits `data` at the given (sorted, deduplicated) cut points.
fn chunks(data: &Bytes, cuts: &[usize]) -> Vec<Bytes> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut at = 0;
    for cut in cuts.into_iter().chain([data.len()]) {
        out.push(data.slice(at..cut));
        at = cut;
    }
    out
}

/// Feeds the chunks; returns the events and how the input ended.
fn run(decoder: &mut GsfDecoder, chunks: Vec<Bytes>) -> (Vec<GsfEvent>, Result<(), GsfError>) {
    let mut events = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        loop {
            match decoder.next_event() {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(e) => return (events, Err(e)),
            }
        }
    }
    let end = decoder.finish();
    (events, end)
}

fn grains_of(events: &[GsfEvent]) -> Vec<Grain> {
    events
        .iter()
        .filter_map(|e| match e {
            GsfEvent::Grain { grain, .. } => Some(grain.clone()),
            _ => None,
        })
        .collect()
}

const LIMIT: usize = 64 * 1024;

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn gsf_round_trips_arbitrary_grains(grains in proptest::collection::vec(gsf_grain(), 0..6)) {
        let data = file(&grains);
        let events = GsfDecoder::decode_all(data).expect("decodes");
        prop_assert_eq!(grains_of(&events), grains);
    }

    #[test]
    fn any_chunking_decodes_the_same(
        grains in proptest::collection::vec(gsf_grain(), 1..5),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let data = file(&grains);
        let whole = GsfDecoder::decode_all(data.clone()).expect("decodes");
        let (events, end) = run(&mut GsfDecoder::new(), chunks(&data, &cuts));
        prop_assert!(end.is_ok());
        prop_assert_eq!(events, whole);
    }

    #[test]
    fn json_and_storage_header_round_trip_arbitrary_grains(grain in any_grain()) {
        let back = Grain::from_json(&grain.to_json(true)).expect("parses");
        prop_assert_eq!(&back, &grain);
        let mut header = Vec::new();
        grain.encode_header(&mut header);
        let decoded = GrainHeader::decode(&header).expect("decodes");
        prop_assert_eq!(&decoded, grain.header());
    }

    #[test]
    fn random_bytes_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        gsf_prefix in any::<bool>(),
    ) {
        let mut input = if gsf_prefix { b"SSBBgrsg\x09\x00\x00\x00".to_vec() } else { Vec::new() };
        input.extend(data);
        let input = Bytes::from(input);
        let pieces = chunks(&input, &cuts);
        let largest = largest_allocation(|| {
            let mut decoder = GsfDecoder::new().with_max_grain_size(LIMIT).with_max_head_size(LIMIT);
            let _ = run(&mut decoder, pieces);
        });
        prop_assert!(largest <= LIMIT, "allocated {} bytes", largest);
        let _ = GrainHeader::decode(&input);
        let _ = Grain::from_json(&input);
    }

    #[test]
    fn truncated_and_mutated_files_never_panic_nor_over_allocate(
        grains in proptest::collection::vec(gsf_grain(), 1..4),
        cut in any::<usize>(),
        mutations in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let original = file(&grains);
        let mut data = original.to_vec();
        for (at, byte) in &mutations {
            let at = at % data.len();
            data[at] = *byte;
        }
        let truncated = cut % (data.len() + 1);
        data.truncate(truncated);
        let data = Bytes::from(data);
        let pieces = chunks(&data, &cuts);
        let mut outcome = None;
        let largest = largest_allocation(|| {
            let mut decoder = GsfDecoder::new().with_max_grain_size(LIMIT).with_max_head_size(LIMIT);
            outcome = Some(run(&mut decoder, pieces));
        });
        prop_assert!(largest <= LIMIT, "allocated {} bytes", largest);
        let (events, end) = outcome.expect("ran");
        if mutations.is_empty() {
            // A cut file yields a prefix of the grains, then ends cleanly exactly when
            // the cut is on a block boundary.
            let decoded = grains_of(&events);
            prop_assert!(decoded.len() <= grains.len());
            prop_assert_eq!(&decoded[..], &grains[..decoded.len()]);
            if truncated == original.len() {
                prop_assert!(end.is_ok());
            }
            if let Err(e) = end {
                prop_assert!(matches!(e, GsfError::Truncated { .. }), "{}", e);
                prop_assert_eq!(e.offset(), Some(truncated as u64));
            }
        }
    }
}

#[test]
fn the_allocation_recorder_sees_large_allocations() {
    let largest = largest_allocation(|| {
        let v = std::hint::black_box(vec![0u8; 3 * LIMIT]);
        drop(v);
    });
    assert!(largest >= 3 * LIMIT);
    // A grain declaring 4 GiB is refused without buffering towards it.
    let grain = Grain::new(
        GrainHeader::new(Uuid::nil(), Uuid::nil(), Timestamp::ZERO, GrainKind::Empty),
        Bytes::from_static(b"x"),
    )
    .expect("valid");
    let mut data = file(&[grain]).to_vec();
    let at = data.len() - 8 - 8 - 1 - 78 - 10; // the grai block of the one grain
    assert_eq!(&data[at..at + 4], b"grai");
    data[at + 4..at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    let data = Bytes::from(data);
    let largest = largest_allocation(|| {
        let mut decoder = GsfDecoder::new();
        let (_, end) = run(&mut decoder, vec![data]);
        assert!(matches!(end, Err(GsfError::TooLarge { .. })));
    });
    assert!(largest <= LIMIT, "allocated {largest} bytes");
}
