//! The embedded store: the conformance suite in two configurations, and what only this
//! backend has — files on disk that can be corrupted, reopened and reclaimed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use grainstore::grain::Grain;
use grainstore::store::embedded::{EmbeddedConfig, EmbeddedStore};
use grainstore::store::{
    FlowFilter, Format, GrainQuery, Order, PageRequest, SourceFilter, Store, StoreError,
};
use grainstore::time::Timestamp;
use redb::ReadableTable;
use tempfile::TempDir;

use crate::helpers::*;

/// Opens a store in a blocking task, as the service does at start-up.
pub async fn open(config: EmbeddedConfig) -> EmbeddedStore {
    tokio::task::spawn_blocking(move || EmbeddedStore::open(config))
        .await
        .expect("open task")
        .expect("open the store")
}

fn configured(dir: &Path, setup: StoreSetup) -> EmbeddedConfig {
    let mut config = EmbeddedConfig::new(dir);
    config.max_sessions = setup.max_sessions;
    config.session_wait = setup.session_wait;
    config
}

/// Every payload in a segment file, and segments so small that almost every payload
/// starts a new one.
fn segmented(dir: &Path, setup: StoreSetup) -> EmbeddedConfig {
    let mut config = configured(dir, setup);
    config.inline_max = 0;
    config.segment_bytes = 4096;
    config
}

/// The default configuration in a fresh directory.
pub async fn open_default(setup: StoreSetup) -> (EmbeddedStore, TempDir) {
    let dir = TempDir::new().expect("temp dir");
    (open(configured(dir.path(), setup)).await, dir)
}

/// The segment-heavy configuration in a fresh directory.
pub async fn open_segmented(setup: StoreSetup) -> (EmbeddedStore, TempDir) {
    let dir = TempDir::new().expect("temp dir");
    (open(segmented(dir.path(), setup)).await, dir)
}

crate::store_conformance!(default_config, crate::embedded::open_default);
crate::store_conformance!(segment_payloads, crate::embedded::open_segmented);

/// The segment files present, sorted.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
        .expect("segments dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    files
}

/// Polls `done` for up to ten seconds (the committer reclaims at least every second).
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_segment_byte_fails_the_read() {
    let dir = TempDir::new().unwrap();
    let store = open(segmented(dir.path(), StoreSetup::default())).await;
    let flow = create(&store, video_flow()).await;
    let sent: Vec<Grain> = (0..3).map(|s| frame(&flow, secs(s), 10_000, 20)).collect();
    write(&store, flow.id, sent.clone()).await.unwrap();
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 3, "one payload per segment");

    // Flip one byte of the second grain's payload.
    let mut bytes = std::fs::read(&files[1]).unwrap();
    bytes[5000] ^= 0x40;
    std::fs::write(&files[1], &bytes).unwrap();
    let session = store.open_read(flow.id).await.unwrap();
    assert!(matches!(
        session.get(secs(1), true).await,
        Err(StoreError::Corrupt(_))
    ));
    assert_stored(
        &session.get(secs(0), true).await.unwrap().unwrap(),
        &sent[0],
    );
    let mut stream = session.grains(GrainQuery::all());
    assert_stored(&stream.next().await.unwrap().unwrap(), &sent[0]);
    assert!(matches!(
        stream.next().await,
        Some(Err(StoreError::Corrupt(_)))
    ));
    drop(stream);
    assert_pages_stop_at_damage(&session, tr("_"), Order::Ascending, 1).await;
    assert_pages_stop_at_damage(&session, tr("_"), Order::Descending, 1).await;
    // Without its payload the grain's header is still readable.
    let bare = session.get(secs(1), false).await.unwrap().unwrap();
    assert_eq!(with_creation(bare, None).header(), sent[1].header());

    // A segment cut short fails the same way.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[2])
        .unwrap();
    file.set_len(100).unwrap();
    assert!(matches!(
        session.get(secs(2), true).await,
        Err(StoreError::Corrupt(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_creation_cut_short_is_started_again() {
    // What a process killed while redb was writing a new index leaves: the file under
    // its temporary name, half written.
    let dir = TempDir::new().unwrap();
    let leftover = dir.path().join("index.redb.new");
    std::fs::write(&leftover, b"redb\x1a\x0a\xa9\x0d\x0a half a header").unwrap();
    let store = open(configured(dir.path(), StoreSetup::default())).await;
    assert!(!leftover.exists(), "the leftover is removed");
    let flow = create(&store, video_flow()).await;
    let sent = vec![frame(&flow, secs(0), 100, 1)];
    write(&store, flow.id, sent.clone()).await.unwrap();
    drop(store);
    let store = open(configured(dir.path(), StoreSetup::default())).await;
    let got = read_all(&store, flow.id).await;
    assert_eq!(got.len(), 1);
    assert_stored(&got[0], &sent[0]);
}

/// Rewrites the index value holding `flow`'s grain at `at`, with `damage` applied to that
/// grain's record (`RecordDamage::Grain`) or to the directory of the run holding it
/// (`RecordDamage::Directory`), through redb itself: its pages stay valid, so this is
/// damage that redb's page checksums do not catch (a bit flipped in memory before a
/// write, or on disk while the store runs). Returns how many grains the value holds.
fn damage_record(
    dir: &Path,
    flow: uuid::Uuid,
    at: Timestamp,
    what: RecordDamage,
    damage: impl FnOnce(&mut [u8]),
) -> usize {
    const GRAINS: redb::TableDefinition<(u128, i128), &[u8]> = redb::TableDefinition::new("grains");
    let db = redb::Database::open(dir.join("index.redb")).expect("open the index");
    let txn = db.begin_write().unwrap();
    let held;
    {
        let mut table = txn.open_table(GRAINS).unwrap();
        let t = at.to_nanos();
        // The value holding a grain is the last one keyed at or before it.
        let (key, mut value) = {
            let mut before = table
                .range((flow.as_u128(), i128::MIN)..=(flow.as_u128(), t))
                .unwrap();
            let (key, value) = before.next_back().expect("the grain's value").unwrap();
            (key.value(), value.value().to_vec())
        };
        // A run, as the store's `record` module lays it out: version 3, flags, a u16
        // count, (i128 timestamp, u32 record end) per grain, a u32 checksum, records.
        let (records, directory) = if value[0] == 3 {
            let count = u16::from_le_bytes([value[2], value[3]]) as usize;
            let base = 4 + count * 20 + 4;
            let mut start = 0;
            let mut found = None;
            for i in 0..count {
                let entry = &value[4 + i * 20..4 + (i + 1) * 20];
                let end = u32::from_le_bytes(entry[16..].try_into().unwrap()) as usize;
                if i128::from_le_bytes(entry[..16].try_into().unwrap()) == t {
                    found = Some(base + start..base + end);
                }
                start = end;
            }
            held = count;
            (found.expect("the grain in its run"), Some(4..base - 4))
        } else {
            assert_eq!(key.1, t, "no grain at {at}");
            held = 1;
            (0..value.len(), None)
        };
        match what {
            RecordDamage::Grain => damage(&mut value[records]),
            RecordDamage::Directory => damage(&mut value[directory.expect("a run")]),
            RecordDamage::Version => damage(&mut value[..1]),
        }
        table.insert(key, value.as_slice()).unwrap();
    }
    txn.commit().unwrap();
    held
}

/// What `damage_record` damages.
#[derive(Clone, Copy)]
enum RecordDamage {
    Grain,
    Directory,
    /// The value's first byte.
    Version,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_index_record_fails_its_grain_only() {
    let dir = TempDir::new().unwrap();
    let config = || configured(dir.path(), StoreSetup::default());
    let store = open(config()).await;
    let flow = create(&store, video_flow()).await;
    // Payloads small enough to live in the index records.
    let sent: Vec<Grain> = (0..4).map(|s| frame(&flow, secs(s), 100, 7)).collect();
    write(&store, flow.id, sent.clone()).await.unwrap();
    drop(store);

    // Grain 1: one bit of the flow id in its header, which would otherwise decode to a
    // well-formed grain of another flow.
    let held = damage_record(
        dir.path(),
        flow.id,
        secs(1),
        RecordDamage::Grain,
        |record| {
            let at = record
                .windows(16)
                .position(|w| w == flow.id.as_bytes())
                .expect("the flow id in the record's header");
            record[at + 3] ^= 0x10;
        },
    );
    assert_eq!(held, 4, "the batch's grains are stored as one run");
    // Grain 3, the last: one bit of the end of its duration (bytes 14..30 of a record
    // with a duration), which the flow's timerange is computed from.
    damage_record(
        dir.path(),
        flow.id,
        secs(3),
        RecordDamage::Grain,
        |record| record[20] ^= 0x01,
    );

    let store = open(config()).await;
    let session = store.open_read(flow.id).await.unwrap();
    match session.get(secs(1), true).await {
        Err(StoreError::Corrupt(what)) => {
            assert!(what.contains(&secs(1).to_string()), "{what}")
        }
        other => panic!("a damaged record was read as {other:?}"),
    }
    assert!(matches!(
        session.get(secs(1), false).await,
        Err(StoreError::Corrupt(_))
    ));
    assert_stored(
        &session.get(secs(0), true).await.unwrap().unwrap(),
        &sent[0],
    );
    assert_stored(
        &session.get(secs(2), true).await.unwrap().unwrap(),
        &sent[2],
    );
    // A range read hands out the grains before the damage, then the error.
    let mut stream = session.grains(GrainQuery::all());
    assert_stored(&stream.next().await.unwrap().unwrap(), &sent[0]);
    assert!(matches!(
        stream.next().await,
        Some(Err(StoreError::Corrupt(_)))
    ));
    drop(stream);
    drop(session);

    // A write at a damaged grain's timestamp fails, and only that write.
    assert!(matches!(
        write(&store, flow.id, [frame(&flow, secs(1), 100, 8)]).await,
        Err(StoreError::Corrupt(_))
    ));
    // The flow still answers: its range ends at the damaged last grain, inclusively,
    // as for a grain without a duration.
    let info = store.get_flow(flow.id).await.unwrap().expect("the flow");
    assert_eq!(info.timerange, tr("[0:0_3:0]"));
    // Damaged grains can be deleted, and the rest is read as written.
    assert_eq!(
        store
            .delete_grains(flow.id, &tr("[1:0_1:0]"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .delete_grains(flow.id, &tr("[3:0_3:0]"))
            .await
            .unwrap(),
        1
    );
    let left = read_all(&store, flow.id).await;
    assert_eq!(left.len(), 2);
    assert_stored(&left[0], &sent[0]);
    assert_stored(&left[1], &sent[2]);
    let info = store.get_flow(flow.id).await.unwrap().expect("the flow");
    assert_eq!(info.timerange, tr("[0:0_2:40000000)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_run_directory_fails_its_grains_only() {
    let dir = TempDir::new().unwrap();
    let config = || configured(dir.path(), StoreSetup::default());
    let store = open(config()).await;
    let flow = create(&store, video_flow()).await;
    // Two batches, two runs: grains 0-9 and 10-14.
    let sent: Vec<Grain> = (0..15).map(|s| frame(&flow, secs(s), 100, 5)).collect();
    write(&store, flow.id, sent[..10].to_vec()).await.unwrap();
    write(&store, flow.id, sent[10..].to_vec()).await.unwrap();
    drop(store);
    // One bit of the timestamp of the run's fourth grain.
    let held = damage_record(dir.path(), flow.id, secs(3), RecordDamage::Directory, |d| {
        d[3 * 20 + 5] ^= 0x04
    });
    assert_eq!(held, 10);

    let store = open(config()).await;
    let session = store.open_read(flow.id).await.unwrap();
    assert_gets_fail(&session, &[0, 3, 9]).await;
    for s in [10, 14] {
        assert_stored(
            &session.get(secs(s), true).await.unwrap().unwrap(),
            &sent[s as usize],
        );
    }
    assert!(matches!(
        collect(&session, GrainQuery::all()).await,
        Err(StoreError::Corrupt(_))
    ));
    // Backwards, the intact run's grains come first, then the damaged run's error.
    assert_pages_stop_at_damage(&session, tr("_"), Order::Descending, 5).await;
    let later = collect(&session, query(tr("[10:0_)"), Order::Ascending, None)).await;
    assert_eq!(
        stamps(&later.unwrap()),
        (10..15).map(secs).collect::<Vec<_>>()
    );
    drop(session);
    // The flow's range is taken from the intact last run.
    let info = store.get_flow(flow.id).await.unwrap().expect("the flow");
    assert_eq!(info.timerange, tr("[0:0_14:40000000)"));
    // Writes the damaged run may cover fail, alone: other flows' writes committed in
    // the same transactions go through.
    let other = create(&store, flow_of(Format::Video)).await;
    let inside = frame(&flow, ts("5:500000000"), 100, 5);
    let (refused, others) = tokio::join!(
        write(&store, flow.id, [inside.clone()]),
        futures::future::join_all((0..32).map(|s| write(
            &store,
            other.id,
            [frame(&other, secs(s), 100, 1)]
        )))
    );
    match refused {
        Err(StoreError::Corrupt(what)) => assert!(what.contains("0:0"), "{what}"),
        other => panic!("a write inside a damaged run gave {other:?}"),
    }
    assert!(others.iter().all(Result::is_ok), "{others:?}");
    assert_eq!(read_all(&store, other.id).await.len(), 32);
    // A delete that takes the run's first grain takes the damaged run whole (its grains
    // cannot be told apart, and none can be read); it counts as one.
    assert_eq!(
        store
            .delete_grains(flow.id, &tr("[0:0_0:0]"))
            .await
            .unwrap(),
        1
    );
    let left = read_all(&store, flow.id).await;
    assert_eq!(stamps(&left), (10..15).map(secs).collect::<Vec<_>>());
    write(&store, flow.id, [inside]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_a_damaged_version_byte_is_not_read_as_one_grain() {
    let dir = TempDir::new().unwrap();
    let config = || configured(dir.path(), StoreSetup::default());
    let store = open(config()).await;
    let flow = create(&store, video_flow()).await;
    let sent: Vec<Grain> = (0..10).map(|s| frame(&flow, secs(s), 100, 5)).collect();
    write(&store, flow.id, sent.clone()).await.unwrap();
    drop(store);
    // Version 3 (a run) turned into 2 (one grain's record).
    let held = damage_record(dir.path(), flow.id, secs(3), RecordDamage::Version, |v| {
        v[0] ^= 0x01
    });
    assert_eq!(held, 10);

    let store = open(config()).await;
    let session = store.open_read(flow.id).await.unwrap();
    assert_gets_fail(&session, &[0, 3, 9]).await;
    for range in ["_", "[3:0_)", "(2:0_5:0]"] {
        for order in [Order::Ascending, Order::Descending] {
            assert!(
                matches!(
                    collect(&session, query(tr(range), order, None)).await,
                    Err(StoreError::Corrupt(_))
                ),
                "{range} {order:?}"
            );
        }
    }
    drop(session);
    // Neither a grain of it nor one after it can be written over it.
    for s in [3, 20] {
        assert!(
            matches!(
                write(&store, flow.id, [frame(&flow, secs(s), 100, 6)]).await,
                Err(StoreError::Corrupt(_))
            ),
            "a write at {s}"
        );
    }
    assert_eq!(
        store
            .delete_grains(flow.id, &tr("[0:0_0:0]"))
            .await
            .unwrap(),
        1
    );
    assert!(read_all(&store, flow.id).await.is_empty());
    write(&store, flow.id, [frame(&flow, secs(20), 100, 6)])
        .await
        .unwrap();
}

/// Asserts that the grains at these seconds fail to read as corrupt.
async fn assert_gets_fail(session: &grainstore::store::ReadSession, seconds: &[i64]) {
    for &s in seconds {
        assert!(
            matches!(
                session.get(secs(s), true).await,
                Err(StoreError::Corrupt(_))
            ),
            "grain {s} of the damaged run"
        );
    }
}

async fn snapshot_of(store: &EmbeddedStore) -> (Vec<grainstore::store::FlowInfo>, Vec<Vec<Grain>>) {
    let all = PageRequest {
        limit: 1000,
        after: None,
    };
    let flows = store
        .list_flows(&FlowFilter::default(), &all)
        .await
        .unwrap();
    let mut grains = Vec::new();
    for info in &flows.items {
        grains.push(read_all(store, info.flow.id).await);
    }
    (flows.items, grains)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_everything() {
    for segments in [false, true] {
        let dir = TempDir::new().unwrap();
        let config = if segments {
            let mut config = segmented(dir.path(), StoreSetup::default());
            config.segment_bytes = 100_000;
            config
        } else {
            configured(dir.path(), StoreSetup::default())
        };
        let store = open(config.clone()).await;
        let mut a = create(&store, video_flow()).await;
        let b = create(&store, video_flow()).await;
        let sizes = [0, 10, 17_000, 40_000, 70_000, 1 << 20];
        for (i, len) in sizes.into_iter().enumerate() {
            write(&store, a.id, [frame(&a, secs(i as i64), len, 21)])
                .await
                .unwrap();
        }
        write(&store, b.id, (0..20).map(|s| event(&b, secs(s), "b")))
            .await
            .unwrap();
        store.delete_grains(a.id, &tr("[1:0_3:0)")).await.unwrap();
        a.label = Some("relabelled".into());
        store.put_flow(a.clone()).await.unwrap();
        let before = snapshot_of(&store).await;
        let sources = store
            .list_sources(
                &SourceFilter::default(),
                &PageRequest {
                    limit: 10,
                    after: None,
                },
            )
            .await
            .unwrap();
        drop(store);

        let store = open(config.clone()).await;
        assert_eq!(snapshot_of(&store).await, before, "segments: {segments}");
        assert_eq!(
            store
                .list_sources(
                    &SourceFilter::default(),
                    &PageRequest {
                        limit: 10,
                        after: None
                    }
                )
                .await
                .unwrap(),
            sources
        );
        // Appending after a reopen continues the segments without harm.
        let more: Vec<Grain> = (10..14).map(|s| frame(&a, secs(s), 30_000, 22)).collect();
        write(&store, a.id, more.clone()).await.unwrap();
        let after = snapshot_of(&store).await;
        drop(store);
        let store = open(config).await;
        assert_eq!(snapshot_of(&store).await, after);
        let tail = read_all(&store, a.id).await;
        for (got, sent) in tail[tail.len() - 4..].iter().zip(&more) {
            assert_stored(got, sent);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_repairs_what_a_crash_leaves() {
    let dir = TempDir::new().unwrap();
    let mut config = segmented(dir.path(), StoreSetup::default());
    config.segment_bytes = 1 << 20;
    let store = open(config.clone()).await;
    let flow = create(&store, video_flow()).await;
    let sent: Vec<Grain> = (0..3).map(|s| frame(&flow, secs(s), 5_000, 23)).collect();
    write(&store, flow.id, sent.clone()).await.unwrap();
    drop(store);

    // An append whose commit never happened, and a segment no commit recorded.
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 1);
    let committed_len = std::fs::metadata(&files[0]).unwrap().len();
    let mut bytes = std::fs::read(&files[0]).unwrap();
    bytes.extend_from_slice(&[0xee; 777]);
    std::fs::write(&files[0], &bytes).unwrap();
    let orphan = dir.path().join("segments").join("00000000000000ff.seg");
    std::fs::write(&orphan, b"half a payload").unwrap();

    let store = open(config).await;
    assert!(!orphan.exists(), "an unknown segment is removed");
    assert_eq!(std::fs::metadata(&files[0]).unwrap().len(), committed_len);
    let next = frame(&flow, secs(3), 5_000, 23);
    write(&store, flow.id, [next.clone()]).await.unwrap();
    let got = read_all(&store, flow.id).await;
    assert_eq!(got.len(), 4);
    for (got, sent) in got.iter().zip(sent.iter().chain([&next])) {
        assert_stored(got, sent);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_segments_are_unlinked_once_unread() {
    let dir = TempDir::new().unwrap();
    let mut config = segmented(dir.path(), StoreSetup::default());
    config.segment_bytes = 64 << 10;
    let store = open(config).await;
    let flow = create(&store, video_flow()).await;
    let other = create(&store, video_flow()).await;
    let sent: Vec<Grain> = (0..10).map(|s| frame(&flow, secs(s), 40_000, 24)).collect();
    for grain in &sent {
        write(&store, flow.id, [grain.clone()]).await.unwrap();
    }
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 10, "one 40 kB payload per 64 kB segment");

    let old = store.open_read(flow.id).await.unwrap();
    assert_eq!(
        store
            .delete_grains(flow.id, &tr("[0:0_5:0)"))
            .await
            .unwrap(),
        5
    );
    let newer = store.open_read(flow.id).await.unwrap();
    // Commits run the reclaimer; give it several chances.
    for s in 0..3 {
        write(&store, other.id, [frame(&other, secs(s), 10, 0)])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        files.iter().all(|f| f.exists()),
        "an older session still reads them"
    );
    let seen = collect(&old, GrainQuery::all()).await.unwrap();
    assert_eq!(seen.len(), 10);
    for (got, sent) in seen.iter().zip(&sent) {
        assert_stored(got, sent);
    }
    drop(old);
    // A session opened after the delete does not hold the dead segments.
    write(&store, other.id, [frame(&other, secs(9), 10, 0)])
        .await
        .unwrap();
    eventually("dead segments unlinked", || {
        files[..5].iter().all(|f| !f.exists())
    })
    .await;
    assert!(files[5..].iter().all(|f| f.exists()));
    assert_eq!(collect(&newer, GrainQuery::all()).await.unwrap().len(), 5);
    drop(newer);

    // Deleting the flow empties every segment, the one being appended to included: it
    // goes once appends have moved on to another.
    store.delete_flow(flow.id).await.unwrap();
    store.delete_flow(other.id).await.unwrap();
    let recreated = create(&store, video_flow()).await;
    for s in 0..3 {
        write(
            &store,
            recreated.id,
            [frame(&recreated, secs(s), 40_000, 25)],
        )
        .await
        .unwrap();
    }
    eventually("every emptied segment unlinked", || {
        files.iter().all(|f| !f.exists())
    })
    .await;
    assert_eq!(read_all(&store, recreated.id).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_emptied_while_appended_to_is_unlinked_after_reopen() {
    let dir = TempDir::new().unwrap();
    let config = segmented(dir.path(), StoreSetup::default());
    let store = open(config.clone()).await;
    let flow = create(&store, video_flow()).await;
    // One payload larger than a segment: the segment is full but still the one being
    // appended to when its only grain is deleted.
    write(&store, flow.id, [frame(&flow, secs(0), 10_000, 26)])
        .await
        .unwrap();
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 1);
    store.delete_grains(flow.id, &tr("_")).await.unwrap();
    drop(store);

    let store = open(config).await;
    eventually("the emptied segment unlinked", || !files[0].exists()).await;
    let grain = frame(&flow, secs(1), 10_000, 26);
    write(&store, flow.id, [grain.clone()]).await.unwrap();
    assert_stored(&read_all(&store, flow.id).await[0], &grain);
}
