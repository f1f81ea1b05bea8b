//! Embedded store benchmark: durable ingest and range reads of 1 MiB video grains and
//! ~200-byte coded audio grains, single-grain get latency, each beside a physical peer
//! measured in the same run (`dd bs=1M conv=fdatasync` into the same filesystem).
//!
//! Prints throughput and the process's CPU seconds per unit of work (utime + stime from
//! `getrusage`): on a shared 2-core machine wall-clock figures swing, CPU cost per unit is
//! the steadier figure.
//!
//! `cargo bench --bench store` (sizes: `GRAINSTORE_BENCH_MIB` for the large-grain volume,
//! default 1024; `GRAINSTORE_BENCH_SMALL` for the small-grain count, default 1000000;
//! `GRAINSTORE_BENCH_DIR` for where to write, default a temp dir under `target/`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use grainstore::grain::{
    CodedAudioHeader, CogAudioFormat, CogFrameFormat, CogFrameLayout, Grain, GrainHeader,
    GrainKind, VideoComponent, VideoHeader,
};
use grainstore::store::embedded::{EmbeddedConfig, EmbeddedStore};
use grainstore::store::{Flow, Format, GrainQuery, Store};
use grainstore::time::{Rational, TimeRange, Timestamp};
use uuid::Uuid;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Wall time and CPU time of `f`.
async fn measure<T>(f: impl std::future::Future<Output = T>) -> (T, Duration, f64) {
    let cpu = cpu_seconds();
    let start = Instant::now();
    let out = f.await;
    (out, start.elapsed(), cpu_seconds() - cpu)
}

fn flow(format: Format) -> Flow {
    serde_json::from_value(serde_json::json!({
        "id": Uuid::new_v4(),
        "source_id": Uuid::new_v4(),
        "format": format.as_urn(),
    }))
    .expect("a valid flow")
}

fn at(index: u64, rate: u64) -> Timestamp {
    Timestamp::from_nanos(
        1_700_000_000_000_000_000 + (index as i128) * (1_000_000_000 / rate as i128),
    )
    .expect("a valid timestamp")
}

fn video(flow: &Flow, index: u64, payload: Bytes) -> Grain {
    let kind = GrainKind::Video(VideoHeader {
        format: CogFrameFormat::UYVY,
        layout: CogFrameLayout::FULL_FRAME,
        width: 1920,
        height: 1080,
        extension: 0,
        source_aspect_ratio: Some(Rational::new(16, 9)),
        pixel_aspect_ratio: Some(Rational::new(1, 1)),
        components: vec![VideoComponent {
            stride: 3840,
            offset: 0,
            width: 1920,
            height: 1080,
            length: payload.len() as u32,
        }],
    });
    let mut header = GrainHeader::new(flow.source_id, flow.id, at(index, 25), kind);
    header.rate = Rational::new(25, 1);
    header.duration = Rational::new(1, 25);
    Grain::new(header, payload).expect("a valid grain")
}

fn audio(flow: &Flow, index: u64, payload: Bytes) -> Grain {
    let kind = GrainKind::CodedAudio(CodedAudioHeader {
        format: CogAudioFormat::AAC,
        channels: 2,
        samples: 1024,
        priming: 0,
        remainder: 0,
        sample_rate: 48_000,
    });
    let mut header = GrainHeader::new(flow.source_id, flow.id, at(index, 1000), kind);
    header.rate = Rational::new(1000, 1);
    header.duration = Rational::new(1, 1000);
    Grain::new(header, payload).expect("a valid grain")
}

/// `dd bs=1M count=N conv=fdatasync` into `dir`: MB/s and dd's own CPU seconds.
fn dd(dir: &Path, mib: usize) -> (f64, f64) {
    let target = dir.join("dd.bin");
    let start = Instant::now();
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "TIMEFORMAT='%U %S'; {{ time dd if=/dev/zero of={} bs=1M count={mib} conv=fdatasync status=none ; }} 2>&1",
            target.display()
        ))
        .output()
        .expect("dd runs");
    let elapsed = start.elapsed();
    let _ = std::fs::remove_file(&target);
    let text = String::from_utf8_lossy(&output.stdout);
    let cpu: f64 = text
        .split_whitespace()
        .filter_map(|t| t.parse::<f64>().ok())
        .sum();
    ((mib as f64 * 1.048576) / elapsed.as_secs_f64(), cpu)
}

fn bench_dir() -> (tempfile::TempDir, PathBuf) {
    let base = std::env::var("GRAINSTORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&base).expect("bench dir");
    let dir = tempfile::tempdir_in(&base).expect("temp dir");
    let path = dir.path().to_owned();
    (dir, path)
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let mib = env_usize("GRAINSTORE_BENCH_MIB", 1024);
    let small = env_usize("GRAINSTORE_BENCH_SMALL", 1_000_000);
    let (_guard, dir) = bench_dir();
    println!("grainstore embedded store benchmark in {}", dir.display());
    println!("large grains: {mib} x 1 MiB; small grains: {small} x 200 B\n");

    let (dd_mbs, dd_cpu) = dd(&dir, mib);
    println!(
        "peer: dd bs=1M conv=fdatasync           {dd_mbs:>9.1} MB/s   {:>6.3} CPU-s/GiB",
        dd_cpu / (mib as f64 / 1024.0)
    );

    let store = EmbeddedStore::open(EmbeddedConfig::new(dir.join("store"))).expect("store opens");

    // Durable ingest of 1 MiB grains, committed every 16 MiB (as an upload does).
    let big = flow(Format::Video);
    store.put_flow(big.clone()).await.expect("put flow");
    let payload = Bytes::from(
        (0..1 << 20)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let ((), wall, cpu) = measure(async {
        let mut session = store.open_write(big.id).await.expect("write session");
        for i in 0..mib as u64 {
            session
                .stage(video(&big, i, payload.clone()))
                .expect("stage");
            if (i + 1) % 16 == 0 {
                session.commit().await.expect("commit");
            }
        }
        session.commit().await.expect("commit");
    })
    .await;
    let ingest_mbs = mib as f64 * 1.048576 / wall.as_secs_f64();
    println!(
        "ingest 1 MiB grains, durable            {ingest_mbs:>9.1} MB/s   {:>6.3} CPU-s/GiB   {:.2}x dd",
        cpu / (mib as f64 / 1024.0),
        ingest_mbs / dd_mbs
    );

    // Warm range read of the same grains.
    let (bytes, wall, cpu) = measure(async {
        let session = store.open_read(big.id).await.expect("read session");
        let mut grains = session.grains(GrainQuery::all());
        let mut bytes = 0usize;
        while let Some(grain) = grains.next().await {
            bytes += grain.expect("grain").payload().len();
        }
        bytes
    })
    .await;
    println!(
        "range read 1 MiB grains, warm           {:>9.1} MB/s   {:>6.3} CPU-s/GiB",
        bytes as f64 / 1e6 / wall.as_secs_f64(),
        cpu / (bytes as f64 / (1u64 << 30) as f64)
    );

    // Single-grain get latency: a session per get, as the HTTP handler does.
    let mut latencies = Vec::with_capacity(2000);
    for i in 0..2000u64 {
        let index = (i * 7919) % mib as u64;
        let start = Instant::now();
        let session = store.open_read(big.id).await.expect("read session");
        let grain = session.get(at(index, 25), true).await.expect("get");
        assert!(grain.is_some());
        latencies.push(start.elapsed());
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    println!(
        "get one 1 MiB grain (session + read)    p50 {:>8.1?}   p99 {:>8.1?}",
        pct(0.5),
        pct(0.99)
    );

    // Small grains, committed in batches of 1000.
    let little = flow(Format::Audio);
    store.put_flow(little.clone()).await.expect("put flow");
    let payload = Bytes::from(vec![0x5au8; 200]);
    let ((), wall, cpu) = measure(async {
        let mut session = store.open_write(little.id).await.expect("write session");
        for i in 0..small as u64 {
            session
                .stage(audio(&little, i, payload.clone()))
                .expect("stage");
            if (i + 1) % 1000 == 0 {
                session.commit().await.expect("commit");
            }
        }
        session.commit().await.expect("commit");
    })
    .await;
    println!(
        "ingest 200 B grains, batches of 1000    {:>9.0} grains/s {:>6.3} CPU-s/M grains",
        small as f64 / wall.as_secs_f64(),
        cpu / (small as f64 / 1e6)
    );

    let (count, wall, cpu) = measure(async {
        let session = store.open_read(little.id).await.expect("read session");
        let mut grains = session.grains(GrainQuery {
            range: TimeRange::eternity(),
            ..GrainQuery::all()
        });
        let mut count = 0usize;
        while let Some(grain) = grains.next().await {
            grain.expect("grain");
            count += 1;
        }
        count
    })
    .await;
    assert_eq!(count, small);
    println!(
        "range read 200 B grains, warm           {:>9.0} grains/s {:>6.3} CPU-s/M grains",
        count as f64 / wall.as_secs_f64(),
        cpu / (count as f64 / 1e6)
    );
}
