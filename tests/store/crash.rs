//! Crash safety: a writer process is killed with SIGKILL at random moments, and every
//! time the store must open with every acknowledged grain whole and nothing invented.
//!
//! The writer is this test binary run again ([`writer_child`], selected by name and
//! enabled by environment variables). It writes grains whose content is a function of
//! (seed, index) in committed batches and keeps two logs beside the store: before a
//! commit the last index staged, after `commit()` returns the indices acknowledged,
//! fsynced. A grain in flight when the process died may be present or absent, but if
//! present it must be the grain that was staged, byte for byte.
//!
//! `GRAINSTORE_CRASH_SEED` replays a failing run (the seed is printed).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use grainstore::grain::{Grain, GrainHeader, GrainKind};
use grainstore::store::embedded::{EmbeddedConfig, EmbeddedStore};
use grainstore::store::{Flow, GrainQuery, Order, Store};
use grainstore::time::{TimeRange, Timestamp};
use uuid::Uuid;

use crate::helpers::*;

const DIR_VAR: &str = "GRAINSTORE_CRASH_DIR";
const SEED_VAR: &str = "GRAINSTORE_CRASH_SEED";
const ROUND_VAR: &str = "GRAINSTORE_CRASH_ROUND";

/// The writer stops here, so that a run's disk use stays bounded.
const LAST_INDEX: u64 = 20_000;
/// How many times the writer is killed.
const ROUNDS: u64 = 25;
/// The most time the rounds may take together.
const BUDGET: Duration = Duration::from_secs(50);

fn config(dir: &Path) -> EmbeddedConfig {
    let mut config = EmbeddedConfig::new(dir.join("store"));
    config.inline_max = 4096;
    // Small segments, so that kills land around rotations too.
    config.segment_bytes = 512 << 10;
    config
}

fn the_flow(seed: u64) -> Flow {
    let mut flow = video_flow();
    flow.id = Uuid::from_u64_pair(seed, 1);
    flow.source_id = Uuid::from_u64_pair(seed, 2);
    flow
}

fn at(index: u64) -> Timestamp {
    Timestamp::from_nanos(i128::from(index) * 20_000_000).expect("in range")
}

/// The grain the writer stages at `index`: its kind and size vary, and its content
/// follows from `(seed, index)` alone.
fn grain(flow: &Flow, seed: u64, index: u64) -> Grain {
    let mut rng = SplitMix(seed ^ index.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let choice = rng.below(0, 100);
    if choice < 10 {
        return event(flow, at(index), &format!("topic {index}"));
    }
    if choice < 15 {
        let header = GrainHeader::new(flow.source_id, flow.id, at(index), GrainKind::Empty);
        return Grain::new(header, bytes::Bytes::new()).expect("valid grain");
    }
    let len = match choice {
        15..40 => rng.below(0, 300),
        40..70 => rng.below(300, 4097),
        70..95 => rng.below(4097, 40_000),
        _ => rng.below(40_000, 300_000),
    };
    video(flow, at(index), pattern(len as usize, rng.next()))
}

fn index_of(timestamp: Timestamp) -> u64 {
    u64::try_from(timestamp.to_nanos() / 20_000_000).expect("a written index")
}

/// The writer process: never run directly (ignored), run by the crash test.
#[test]
#[ignore = "run by acknowledged_grains_survive_sigkill in a child process"]
fn writer_child() {
    let (Ok(dir), Ok(seed), Ok(round)) = (
        std::env::var(DIR_VAR),
        std::env::var(SEED_VAR),
        std::env::var(ROUND_VAR),
    ) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let seed: u64 = seed.parse().expect("seed");
    let round: u64 = round.parse().expect("round");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(write_until_killed(&dir, seed, round));
}

async fn write_until_killed(dir: &Path, seed: u64, round: u64) {
    let store = crate::embedded::open(config(dir)).await;
    let flow = the_flow(seed);
    if store.get_flow(flow.id).await.unwrap().is_none() {
        store.put_flow(flow.clone()).await.unwrap();
    }
    let session = store.open_read(flow.id).await.unwrap();
    let newest = query(TimeRange::eternity(), Order::Descending, Some(1));
    let mut next = match session.grains(newest).next().await {
        Some(last) => index_of(last.expect("readable").origin_timestamp()) + 1,
        None => 0,
    };
    drop(session);
    let append = |name: &str| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(name))
            .expect("log")
    };
    let mut staged_log = append("staged.log");
    let mut acked_log = append("acked.log");
    let mut rng = SplitMix(seed ^ round.rotate_left(32));
    while next < LAST_INDEX {
        let mut session = store.open_write(flow.id).await.unwrap();
        for _ in 0..rng.below(1, 4) {
            let first = next;
            for _ in 0..rng.below(1, 12) {
                session.stage(grain(&flow, seed, next)).unwrap();
                next += 1;
            }
            // A kill cannot lose what is written to the page cache; no fsync needed.
            staged_log
                .write_all(format!("{}\n", next - 1).as_bytes())
                .unwrap();
            let outcome = session.commit().await.expect("commit");
            assert_eq!(outcome.committed(), next - first);
            acked_log
                .write_all(format!("{first} {}\n", next - 1).as_bytes())
                .unwrap();
            acked_log.sync_data().unwrap();
        }
    }
}

/// Complete lines of a log (a kill may leave half a line at the end).
fn lines(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What the logs say: the highest index acknowledged (exclusive) and staged.
fn logs(dir: &Path) -> (u64, Option<u64>) {
    let acked = lines(&dir.join("acked.log"))
        .iter()
        .map(|l| {
            let (_, last) = l.split_once(' ').expect("first last");
            last.parse::<u64>().expect("index") + 1
        })
        .max()
        .unwrap_or(0);
    let staged = lines(&dir.join("staged.log"))
        .iter()
        .map(|l| l.parse::<u64>().expect("index"))
        .max();
    (acked, staged)
}

/// Opens the store after a kill and checks it; returns how many grains it holds.
async fn verify(dir: &Path, seed: u64) -> u64 {
    let config = config(dir);
    let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(config))
        .await
        .unwrap()
        .expect("the store opens after a kill");
    let (acked, staged) = logs(dir);
    let flow = the_flow(seed);
    if store.get_flow(flow.id).await.unwrap().is_none() {
        assert_eq!(acked, 0, "the flow vanished");
        return 0;
    }
    let session = store.open_read(flow.id).await.unwrap();
    let stored = collect(&session, GrainQuery::all())
        .await
        .expect("every stored grain reads back whole");
    for (expected, got) in stored.iter().enumerate() {
        let index = index_of(got.origin_timestamp());
        assert_eq!(index, expected as u64, "the grains form a prefix");
        assert!(
            got.same_identity(&grain(&flow, seed, index)),
            "the grain at index {index} is not the one staged"
        );
    }
    let present = stored.len() as u64;
    assert!(
        present >= acked,
        "acknowledged {acked} grains, only {present} present"
    );
    if present > 0 {
        let staged = staged.expect("grains present but none staged");
        assert!(present - 1 <= staged, "grain {present} was never staged");
    }
    present
}

#[test]
fn acknowledged_grains_survive_sigkill() {
    let seed: u64 = match std::env::var(SEED_VAR) {
        Ok(seed) => seed.parse().expect("seed"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    eprintln!("crash test seed: {seed} (set {SEED_VAR} to replay)");
    let dir = tempfile::TempDir::new().unwrap();
    let exe = std::env::current_exe().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rng = SplitMix(seed);
    let started = Instant::now();
    let mut present = 0;
    let mut rounds = 0;
    let mut grew = 0;
    while rounds < ROUNDS && started.elapsed() < BUDGET {
        let mut child = Command::new(&exe)
            .args(["crash::writer_child", "--exact", "--ignored", "--nocapture"])
            .env(DIR_VAR, dir.path())
            .env(SEED_VAR, seed.to_string())
            .env(ROUND_VAR, rounds.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the writer");
        // The writer needs a moment to open the store; then kill it anywhere. The first
        // round often kills it while it is still creating the store's files.
        let delay = if rounds == 0 {
            rng.below(1, 60)
        } else {
            rng.below(20, 600)
        };
        std::thread::sleep(Duration::from_millis(delay));
        match child.try_wait().unwrap() {
            // It stops by itself only after the last index, or when it failed.
            Some(status) => {
                let (acked, _) = logs(dir.path());
                assert!(
                    status.success() && acked == LAST_INDEX,
                    "the writer failed: {status}"
                );
            }
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
            }
        }
        let now = runtime.block_on(verify(dir.path(), seed));
        assert!(now >= present, "grains lost: {present} before, {now} now");
        if now > present {
            grew += 1;
        }
        present = now;
        rounds += 1;
    }
    eprintln!("crash test: {rounds} kills, {present} grains, {grew} rounds made progress");
    assert!(rounds >= 10, "only {rounds} rounds in the time budget");
    assert!(grew >= rounds / 3, "the writer rarely got to write");
}
