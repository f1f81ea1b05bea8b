//! GSF codec throughput: decode and encode of 1 MiB video grains (target ≥ 2 GB/s) and
//! decode of ~100-byte event grains (target ≥ 1 million grains/s on one core).
//!
//! Run with `cargo bench --bench gsf`.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use grainstore::grain::{
    CogFrameFormat, CogFrameLayout, EventDatum, EventPayload, Grain, GrainHeader, GrainKind,
    VideoComponent, VideoHeader,
};
use grainstore::gsf::{GsfDateTime, GsfDecoder, GsfEncoder, GsfEvent, GsfHead, GsfSegment};
use grainstore::time::{Rational, Timestamp};
use uuid::Uuid;

const MIB: usize = 1024 * 1024;
const VIDEO_GRAINS: usize = 32;
const EVENT_GRAINS: usize = 10_000;

fn header(i: usize, kind: GrainKind) -> GrainHeader {
    let origin = Timestamp::from_nanos(1_420_102_800_000_000_000 + i as i128 * 40_000_000)
        .expect("in range");
    GrainHeader {
        rate: Rational::new(25, 1),
        duration: Rational::new(1, 25),
        ..GrainHeader::new(Uuid::from_u128(1), Uuid::from_u128(2), origin, kind)
    }
}

fn video_grains() -> Vec<Grain> {
    let payload = Bytes::from((0..MIB).map(|i| i as u8).collect::<Vec<u8>>());
    (0..VIDEO_GRAINS)
        .map(|i| {
            let kind = GrainKind::Video(VideoHeader {
                format: CogFrameFormat::U8_420,
                layout: CogFrameLayout::FULL_FRAME,
                width: 1024,
                height: 682,
                extension: 0,
                source_aspect_ratio: Some(Rational::new(16, 9)),
                pixel_aspect_ratio: Some(Rational::new(1, 1)),
                components: vec![VideoComponent {
                    stride: 1024,
                    offset: 0,
                    width: 1024,
                    height: 1024,
                    length: MIB as u32,
                }],
            });
            Grain::new(header(i, kind), payload.clone()).expect("valid")
        })
        .collect()
}

fn event_grains() -> Vec<Grain> {
    (0..EVENT_GRAINS)
        .map(|i| {
            let event = EventPayload {
                event_type: "urn:x-ipstudio:format:event.query".into(),
                topic: "/t".into(),
                data: vec![EventDatum {
                    path: "/v".into(),
                    pre: None,
                    post: Some(serde_json::Value::from(i)),
                }],
            };
            Grain::new_event(header(i, GrainKind::Event), &event).expect("valid")
        })
        .collect()
}

fn encode(grains: &[Grain]) -> (GsfEncoder, Vec<Bytes>) {
    let mut head = GsfHead::new(
        Uuid::from_u128(9),
        GsfDateTime::from_unix_seconds(1_700_000_000),
    );
    head.segments.push(GsfSegment {
        local_id: 1,
        id: Uuid::from_u128(3),
        count: -1,
        tags: Vec::new(),
        flow: None,
    });
    let mut encoder = GsfEncoder::with_head(head);
    let mut chunks = vec![encoder.start().expect("start")];
    for grain in grains {
        chunks.extend(encoder.encode_grain_in(1, grain).expect("encode"));
    }
    chunks.push(encoder.finish());
    (encoder, chunks)
}

fn concat(chunks: &[Bytes]) -> Bytes {
    let mut out = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
    for c in chunks {
        out.extend_from_slice(c);
    }
    Bytes::from(out)
}

fn decode_count(chunks: impl IntoIterator<Item = Bytes>) -> usize {
    let mut decoder = GsfDecoder::new();
    let mut n = 0;
    for chunk in chunks {
        decoder.push(chunk);
        while let Some(event) = decoder.next_event().expect("decodes") {
            if let GsfEvent::Grain { grain, .. } = event {
                black_box(&grain);
                n += 1;
            }
        }
    }
    decoder.finish().expect("clean end");
    n
}

fn bench(c: &mut Criterion) {
    let video = video_grains();
    let (encoder, chunks) = encode(&video);
    let file = concat(&chunks);
    let bytes = file.len() as u64;

    let mut group = c.benchmark_group("video_1mib");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("decode_one_chunk", |b| {
        b.iter(|| assert_eq!(decode_count([file.clone()]), VIDEO_GRAINS))
    });
    // As from an HTTP body: 64 KiB chunks, so every payload is assembled (one copy).
    let pieces: Vec<Bytes> = (0..file.len())
        .step_by(64 * 1024)
        .map(|at| file.slice(at..(at + 64 * 1024).min(file.len())))
        .collect();
    group.bench_function("decode_64k_chunks", |b| {
        b.iter(|| assert_eq!(decode_count(pieces.iter().cloned()), VIDEO_GRAINS))
    });
    group.bench_function("encode", |b| {
        b.iter(|| {
            let mut n = 0;
            for grain in &video {
                for chunk in encoder.encode_grain_in(1, grain).expect("encode") {
                    n += black_box(chunk).len();
                }
            }
            n
        })
    });
    group.finish();

    let events = event_grains();
    let (_, chunks) = encode(&events);
    let file = concat(&chunks);
    let mut group = c.benchmark_group("event_grains");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(EVENT_GRAINS as u64));
    println!(
        "event grains: {} bytes per grai block on average",
        (file.len() - chunks[0].len() - 8) / EVENT_GRAINS
    );
    group.bench_function("decode", |b| {
        b.iter(|| assert_eq!(decode_count([file.clone()]), EVENT_GRAINS))
    });
    group.bench_function("encode", |b| {
        b.iter(|| {
            let mut n = 0;
            for grain in &events {
                for chunk in encoder.encode_grain_in(1, grain).expect("encode") {
                    n += black_box(chunk).len();
                }
            }
            n
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
