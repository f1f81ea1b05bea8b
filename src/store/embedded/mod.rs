//! The embedded store: everything in one directory, no server needed.
//!
//! # Layout
//!
//! - `index.redb`: a [redb] database (a copy-on-write B-tree with checksummed,
//!   crash-safe commits) holding flows, sources, the grain index and segment accounting.
//!   Each grain's index record holds its header, its payload checksum and, for small
//!   grains, the payload itself. Records are keyed by (flow, origin timestamp); a batch's
//!   small grains in time order are stored as runs of up to 64, one index value keyed by
//!   the first grain's timestamp (see `record`), which the reads, writes and deletes
//!   here split and rewrite as needed. Small-grain ingest went from 247k to 600k
//!   grains/s with runs (3.5 to 1.25 CPU-s per million), and warm range reads of them
//!   from 825k to 1.45M grains/s, on an AMD EPYC of this kind (`cargo bench --bench
//!   store`, one session).
//! - `segments/`: append-only files holding payloads larger than `inline_max`.
//!
//! # Why payloads are split
//!
//! Small payloads (event grains, compressed audio) live in the index entry: a range read
//! is then one B-tree scan with no extra system call per grain. Large payloads (video
//! frames) go to segment files with one `write` each, so ingest runs at the speed of the
//! disk: putting a 1 MiB value into the B-tree would write it into freshly allocated
//! pages and copy-on-write the path to it, while a segment append is a single sequential
//! write. Reads of large payloads are a `pread` straight into the buffer that becomes the
//! grain's `Bytes`, taken from a bounded pool of reused buffers (`crate::buffer`).
//!
//! Measured with `cargo bench --bench store` (2-core VM shared with other work; one
//! run, 1 GiB of 1 MiB grains and a million 200-byte grains): durable ingest of 1 MiB
//! grains at 717 MB/s beside `dd bs=1M conv=fdatasync` at 406 MB/s in the same run
//! (0.36 CPU-s/GiB), warm range reads at 1.7 GB/s (0.51 CPU-s/GiB), a single 1 MiB get
//! p50 212 µs / p99 1.1 ms; 200-byte grains committed 1000 at a time at 151k grains/s
//! (3.0 CPU-s per million, nearly all in the B-tree insert) and read at 340k grains/s
//! (1.6 CPU-s per million). BENCHMARKS.md keeps the current figures.
//!
//! # Writes and durability
//!
//! One committer thread owns every write transaction. Write sessions hand it batches;
//! it takes every batch waiting, runs them in one transaction, appends their large
//! payloads, `fdatasync`s the segment, commits the index (redb fsyncs), and only then
//! answers them all: concurrent writers share one pair of syncs (group commit). A crash
//! before the index commit leaves bytes past a segment's recorded length; opening the
//! store cuts them off. A new index is created under a temporary name and renamed into
//! place once written, so a crash during a store's very first start leaves nothing
//! that fails to open.
//!
//! # Reads
//!
//! A read session is a redb read transaction: a consistent snapshot that later commits
//! do not change. Every engine call that may read the index or a segment file runs on
//! the blocking pool, never on an async worker: pages of grains (range reads), single
//! grains (`get`), flow look-ups, listings. Opening a read session makes no such call:
//! beginning a redb read transaction takes a mutex and copies the root of the newest
//! commit, both in memory, and whether the flow exists is answered by a set of the
//! flows' ids that the committer keeps beside the index ([`KnownFlows`]), updated after
//! each commit and before its writers are answered. A single grain among the recently
//! committed small ones (`storage.recent_grains_bytes`, see [`recent`]) is answered from
//! memory without an engine call: on a two-core machine a trip to the blocking pool
//! (a thread wake-up and two context switches) cost a single-grain GET about half its
//! throughput (12.7 against 19-23 CPU-µs per request), and reads concentrate on the grains
//! a flow's live subscribers have just been told of.
//! Segments emptied by deletes are unlinked once no snapshot that could read them is
//! open ([`segments::Reclaimer`]).
//!
//! A GSF range read does not rebuild grains: each record keeps its header's GSF `gbhd`
//! block as written, so a page of GSF grain blocks is the stored `gbhd` bytes and
//! payloads copied into shared chunks (large payloads passed on as read), without a
//! header decode or an allocation per grain. Range reads of 200-byte grains over HTTP
//! went from 1.57-1.59 to 0.86-0.89 server CPU-s per million grains with it
//! (`GS_COMPARE_WORKLOADS=read-small GS_COMPARE_READS=100 cargo bench --bench compare`,
//! before and after in one session).

mod committer;
mod recent;
mod record;
mod segments;

use std::ops::Bound as KeyBound;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadTransaction, ReadableTable, TableDefinition};

use super::{
    BatchResult, CommitWatch, EventLog, Flow, FlowFilter, FlowId, FlowInfo, GrainPage, GrainWriter,
    GsfPage, Notifier, Order, Page, PageKey, PageLimit, PageRequest, PutOutcome, ReadSession,
    SessionPool, Snapshot, Source, SourceFilter, SourceId, Store, StoreError, WriteSession,
};
use crate::grain::Grain;
use crate::time::{Bound, TimeRange, Timestamp};
use committer::{Committer, Job};
use record::Location;
use segments::{Reclaimer, Segments};

/// Grain index: (flow id, origin timestamp in ns) → record (see `record`).
const GRAINS: TableDefinition<(u128, i128), &[u8]> = TableDefinition::new("grains");
/// Flows: id → the flow resource as JSON.
const FLOWS: TableDefinition<u128, &[u8]> = TableDefinition::new("flows");
/// Sources: id → the source resource as JSON.
const SOURCES: TableDefinition<u128, &[u8]> = TableDefinition::new("sources");
/// Segments: id → (committed length, live bytes).
const SEGMENTS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("segments");

/// Settings of the embedded store.
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    /// The directory holding the store.
    pub data_dir: PathBuf,
    /// How many sessions may be open at once.
    pub max_sessions: usize,
    /// How long opening a session waits for a free place.
    pub session_wait: Duration,
    /// Payloads up to this size are kept in the index.
    pub inline_max: usize,
    /// A segment file is closed for appends past this size.
    pub segment_bytes: u64,
    /// How many service events are retained for resumption.
    pub event_retention: usize,
    /// Memory for the index's page cache. Small payloads live in the index, so this
    /// bounds what a long read of small grains keeps resident.
    pub index_cache_bytes: usize,
    /// Writes are refused while less than this is free on the data directory's file
    /// system (see the committer: the index must never meet a full disk).
    pub min_free_bytes: u64,
    /// Memory for the most recently committed grains kept in the index (payloads up to
    /// `inline_max`), which single-grain reads take without an engine call; 0: none.
    pub recent_grains_bytes: usize,
}

impl EmbeddedConfig {
    /// Defaults for a store in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> EmbeddedConfig {
        EmbeddedConfig {
            data_dir: data_dir.into(),
            max_sessions: 1024,
            session_wait: Duration::from_millis(500),
            inline_max: 16 << 10,
            segment_bytes: 1 << 30,
            event_retention: 10_000,
            index_cache_bytes: 32 << 20,
            min_free_bytes: 64 << 20,
            recent_grains_bytes: 8 << 20,
        }
    }
}

/// What the committer thread and the read paths share.
struct Shared {
    db: Database,
    known_flows: KnownFlows,
    recent: recent::Recent,
    segments: Segments,
    reclaimer: Reclaimer,
    notifier: Notifier,
    events: EventLog,
    inline_max: usize,
    segment_bytes: u64,
    min_free_bytes: u64,
}

/// The ids of the flows in the index, kept in memory so that opening a read session
/// needs no index look-up. Only the committer changes it, after a commit that created
/// or deleted flows and before answering. A session opened between a flow's delete
/// committing and this set learning of it finds the flow and reads a snapshot without
/// it (no grains), as a session opened just before the delete would have done.
struct KnownFlows(std::sync::RwLock<std::collections::HashSet<u128>>);

impl KnownFlows {
    fn new(ids: Vec<u128>) -> KnownFlows {
        KnownFlows(std::sync::RwLock::new(ids.into_iter().collect()))
    }

    fn contains(&self, id: u128) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
    }

    /// Records flows created (`true`) and deleted (`false`), in commit order.
    fn apply(&self, changes: &[(u128, bool)]) {
        if changes.is_empty() {
            return;
        }
        let mut ids = self.0.write().unwrap_or_else(|e| e.into_inner());
        for &(id, exists) in changes {
            if exists {
                ids.insert(id);
            } else {
                ids.remove(&id);
            }
        }
    }
}

/// The embedded [`Store`].
///
/// Dropping it waits for the committer thread to finish; the index file is closed, and
/// the directory can be opened again, once the store and its read sessions are dropped.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    committer: Committer,
    /// Joined on drop: the thread holds the index open until it ends.
    committer_thread: Option<std::thread::JoinHandle<()>>,
    pool: SessionPool,
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.committer.stop();
        if let Some(thread) = self.committer_thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the committer thread panicked");
        }
    }
}

fn engine(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("index: {e}"))
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `config.data_dir`, repairing what a crash left.
    /// Blocking: call it from a blocking context or at start-up.
    pub fn open(config: EmbeddedConfig) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(&config.data_dir)?;
        let path = config.data_dir.join("index.redb");
        let db = open_index(&path, config.index_cache_bytes)?;
        let segments = Segments::open(&config.data_dir.join("segments"))?;
        let txn = db.begin_write().map_err(engine)?;
        let mut known = std::collections::BTreeMap::new();
        let mut flow_ids = Vec::new();
        {
            txn.open_table(GRAINS).map_err(engine)?;
            for entry in txn
                .open_table(FLOWS)
                .map_err(engine)?
                .iter()
                .map_err(engine)?
            {
                flow_ids.push(entry.map_err(engine)?.0.value());
            }
            txn.open_table(SOURCES).map_err(engine)?;
            let mut table = txn.open_table(SEGMENTS).map_err(engine)?;
            for entry in table.iter().map_err(engine)? {
                let (id, value) = entry.map_err(engine)?;
                known.insert(id.value(), value.value());
            }
            // A segment emptied while it was being appended to keeps its entry; unless it
            // becomes the active segment again, nothing would ever free it. No snapshot
            // is open yet, so it can go now (its file goes with the unknown ones below).
            let last = known.keys().next_back().copied();
            let dead: Vec<u64> = known
                .iter()
                .filter(|&(&id, &(len, live))| {
                    live == 0 && !(Some(id) == last && len < config.segment_bytes)
                })
                .map(|(&id, _)| id)
                .collect();
            for id in dead {
                table.remove(id).map_err(engine)?;
                known.remove(&id);
            }
        }
        txn.commit().map_err(engine)?;
        // Files the index does not know were created by a commit that never completed;
        // bytes past a known segment's length were appended by one.
        for id in segments.list()? {
            match known.get(&id) {
                Some(&(len, _)) => segments.truncate(id, len)?,
                None => segments.remove(id)?,
            }
        }
        let active = known
            .iter()
            .next_back()
            .filter(|(_, (len, _))| *len < config.segment_bytes)
            .map(|(&id, &(len, _))| (id, len));
        let next_segment = known.keys().next_back().map_or(0, |id| id + 1);
        let shared = Arc::new(Shared {
            db,
            known_flows: KnownFlows::new(flow_ids),
            recent: recent::Recent::new(config.recent_grains_bytes),
            segments,
            reclaimer: Reclaimer::default(),
            notifier: Notifier::default(),
            events: EventLog::new(config.event_retention),
            inline_max: config.inline_max,
            segment_bytes: config.segment_bytes,
            min_free_bytes: config.min_free_bytes,
        });
        let (committer, committer_thread) = Committer::start(shared.clone(), active, next_segment)?;
        Ok(EmbeddedStore {
            shared,
            committer,
            committer_thread: Some(committer_thread),
            pool: SessionPool::new(config.max_sessions, config.session_wait),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| StoreError::Unavailable(format!("blocking task failed: {e}")))?
    }

    async fn flow_exists_writable(&self, flow: FlowId) -> Result<(), StoreError> {
        let id = flow.as_u128();
        self.blocking(move |s| {
            let txn = s.db.begin_read().map_err(engine)?;
            match read_flow(&txn, id)? {
                None => Err(StoreError::FlowNotFound(flow)),
                Some(f) if f.read_only => Err(StoreError::ReadOnly(flow)),
                Some(_) => Ok(()),
            }
        })
        .await
    }
}

/// Opens the index and makes sure that every page it reaches is the page redb wrote.
///
/// redb checks its page checksums only when it repairs the file after an unclean
/// shutdown; an open after a clean one trusts every page, and a page damaged on disk
/// since (a failing disk, a stray write) would later panic inside redb or hand out wrong
/// grains. So an open that redb did not repair walks the whole index once (as its repair
/// does), and a damaged index stops the start with an error naming the file.
fn open_index(path: &std::path::Path, cache_bytes: usize) -> Result<Database, StoreError> {
    if !path.exists() {
        create_index(path)?;
    }
    let damaged = |e: &dyn std::fmt::Display| {
        StoreError::Corrupt(format!(
            "index {} is damaged ({e}); restore the data directory from a backup",
            path.display()
        ))
    };
    let repaired = Arc::new(AtomicBool::new(false));
    let flag = repaired.clone();
    let mut db = redb::Builder::new()
        .set_cache_size(cache_bytes)
        .set_repair_callback(move |_| flag.store(true, Ordering::Relaxed))
        .create(path)
        .map_err(|e| match e {
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => damaged(&e),
            e => StoreError::Unavailable(format!("index {}: {e}", path.display())),
        })?;
    if !repaired.load(Ordering::Relaxed) {
        // It reads the whole index: logged, since on a large one it takes a while.
        let started = std::time::Instant::now();
        tracing::info!(file = %path.display(), "checking the index's page checksums");
        let checked = db.check_integrity();
        tracing::info!(
            file = %path.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "index checked"
        );
        match checked {
            Ok(true) => {}
            // Damage redb could repair: its free-page state, or a page reached only by
            // the newest commit when that was not two-phase (it then goes back to the
            // commit before, and what the newest one wrote is gone).
            Ok(false) => tracing::error!(
                file = %path.display(),
                "the index failed its integrity check and was repaired; \
                 grains of its newest commit may be lost"
            ),
            Err(e) => return Err(damaged(&e)),
        }
    }
    Ok(db)
}

/// Creates an empty index at `path`, whole or not at all: redb writes a new file in
/// several steps, and a process killed between them leaves a file that no longer opens
/// ("invalid data") in a store that never held anything. So the file is made under
/// another name and renamed into place once redb has written and synced it; what a kill
/// leaves under the other name is removed by the next attempt.
fn create_index(path: &std::path::Path) -> Result<(), StoreError> {
    let unavailable = |e: &dyn std::fmt::Display| {
        StoreError::Unavailable(format!("index {}: {e}", path.display()))
    };
    let fresh = path.with_extension("redb.new");
    match std::fs::remove_file(&fresh) {
        Ok(()) => {
            tracing::warn!(file = %fresh.display(), "removed an index whose creation was cut short")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(unavailable(&e)),
    }
    drop(Database::create(&fresh).map_err(|e| unavailable(&e))?);
    std::fs::File::open(&fresh)
        .and_then(|file| file.sync_all())
        .and_then(|()| std::fs::rename(&fresh, path))
        .map_err(|e| unavailable(&e))?;
    // The rename itself must survive a power loss.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| unavailable(&e))?;
    }
    Ok(())
}

fn read_flow(txn: &ReadTransaction, id: u128) -> Result<Option<Flow>, StoreError> {
    let table = txn.open_table(FLOWS).map_err(engine)?;
    let Some(value) = table.get(id).map_err(engine)? else {
        return Ok(None);
    };
    serde_json::from_slice(value.value())
        .map(Some)
        .map_err(corrupt)
}

/// Bounds of a range of grain index keys.
type KeyRange = (KeyBound<(u128, i128)>, KeyBound<(u128, i128)>);

/// The key range of `flow`'s grains within `range`, narrowed to strictly after `resume`
/// in `order`. `None` when nothing can match.
fn key_range(
    flow: u128,
    range: &TimeRange,
    order: Order,
    resume: Option<Timestamp>,
) -> Option<KeyRange> {
    let (lo, hi) = order.rest_of(range, resume).bounds()?;
    let lo = match lo {
        Bound::Inclusive(t) => KeyBound::Included((flow, t.to_nanos())),
        Bound::Exclusive(t) => KeyBound::Excluded((flow, t.to_nanos())),
        Bound::Unbounded => KeyBound::Included((flow, i128::MIN)),
    };
    let hi = match hi {
        Bound::Inclusive(t) => KeyBound::Included((flow, t.to_nanos())),
        Bound::Exclusive(t) => KeyBound::Excluded((flow, t.to_nanos())),
        Bound::Unbounded => KeyBound::Included((flow, i128::MAX)),
    };
    let empty = match (&lo, &hi) {
        (KeyBound::Included(a), KeyBound::Included(b)) => a > b,
        (
            KeyBound::Included(a) | KeyBound::Excluded(a),
            KeyBound::Included(b) | KeyBound::Excluded(b),
        ) => a >= b,
        _ => false,
    };
    (!empty).then_some((lo, hi))
}

/// Grain index keys of one flow.
type GrainKey = (u128, i128);

/// Applies `f` to the last index value of `flow` keyed within `upto` (the value that
/// holds a grain at that bound, if any: see `record` on runs).
pub(crate) fn with_entry_before<T, R>(
    table: &T,
    flow: u128,
    upto: KeyBound<GrainKey>,
    f: impl FnOnce(i128, &[u8]) -> Result<R, StoreError>,
) -> Result<Option<R>, StoreError>
where
    T: ReadableTable<GrainKey, &'static [u8]>,
{
    if matches!(upto, KeyBound::Excluded((_, i128::MIN))) {
        return Ok(None);
    }
    let mut iter = table
        .range::<GrainKey>((KeyBound::Included((flow, i128::MIN)), upto))
        .map_err(engine)?;
    match iter.next_back() {
        None => Ok(None),
        Some(entry) => {
            let (key, value) = entry.map_err(engine)?;
            f(key.value().1, value.value()).map(Some)
        }
    }
}

/// The keys to visit for the grains within `(lo, hi)`: from a run keyed before `lo` that
/// may hold some of them, or else from `lo`.
pub(crate) fn entries_from<T>(
    table: &T,
    flow: u128,
    lo: KeyBound<GrainKey>,
) -> Result<KeyBound<GrainKey>, StoreError>
where
    T: ReadableTable<GrainKey, &'static [u8]>,
{
    let before = match lo {
        KeyBound::Included(k) => KeyBound::Excluded(k),
        KeyBound::Excluded(k) => KeyBound::Included(k),
        KeyBound::Unbounded => return Ok(lo),
    };
    let reaches = |t: i128| within(t, &(lo, KeyBound::Unbounded));
    let run = with_entry_before(table, flow, before, |key, value| {
        if !record::is_run(value) {
            return Ok(record::was_run(value).then_some((key, true)));
        }
        Ok(match record::Entry::read(key, value) {
            Ok(run) => reaches(run.last()).then_some((key, false)),
            Err(_) => Some((key, true)),
        })
    })?;
    let from = |key| Ok(KeyBound::Included((flow, key)));
    match run.flatten() {
        None => Ok(lo),
        Some((key, false)) => from(key),
        // A run whose directory is damaged may hold grains up to the next key: it is
        // visited (and reported) only when some of those could be at or past `lo`.
        Some((key, true)) => {
            let next = table
                .range::<GrainKey>((
                    KeyBound::Excluded((flow, key)),
                    KeyBound::Included((flow, i128::MAX)),
                ))
                .map_err(engine)?
                .next()
                .transpose()
                .map_err(engine)?
                .map_or(i128::MAX, |(next, _)| next.value().1);
            if reaches(next - 1) { from(key) } else { Ok(lo) }
        }
    }
}

/// Whether timestamp `t` lies within the key bounds.
pub(crate) fn within(t: i128, (lo, hi): &KeyRange) -> bool {
    let above = match lo {
        KeyBound::Included((_, a)) => t >= *a,
        KeyBound::Excluded((_, a)) => t > *a,
        KeyBound::Unbounded => true,
    };
    let below = match hi {
        KeyBound::Included((_, b)) => t <= *b,
        KeyBound::Excluded((_, b)) => t < *b,
        KeyBound::Unbounded => true,
    };
    above && below
}

/// `e` naming the grain stored under `key`.
pub(crate) fn at_key(key: i128, e: StoreError) -> StoreError {
    match Timestamp::from_nanos(key) {
        Ok(timestamp) => at_grain(timestamp, e),
        Err(_) => e,
    }
}

/// Loads a stored grain from its index record, reading and checking its payload.
fn load_grain(
    shared: &Shared,
    timestamp: Timestamp,
    raw: &[u8],
    with_payload: bool,
) -> Result<Grain, StoreError> {
    let record = record::decode(raw).map_err(|e| at_grain(timestamp, e))?;
    let payload = if with_payload {
        load_payload(shared, timestamp, &record)?
    } else {
        Bytes::new()
    };
    record.grain(payload)
}

/// A stored grain's payload, from its record or its segment, checked.
fn load_payload(
    shared: &Shared,
    timestamp: Timestamp,
    record: &record::Record<'_>,
) -> Result<Bytes, StoreError> {
    let payload = match record.location {
        Location::Inline => Bytes::copy_from_slice(record.inline),
        Location::Segment { id, offset } => {
            let len = usize::try_from(record.len).map_err(corrupt)?;
            shared.segments.read(id, offset, len).map_err(|e| {
                StoreError::Corrupt(format!(
                    "payload of the grain at {timestamp} unreadable from segment {id}: {e}"
                ))
            })?
        }
    };
    record.verify(&payload, timestamp)?;
    Ok(payload)
}

/// `e` naming the grain it concerns.
fn at_grain(timestamp: Timestamp, e: StoreError) -> StoreError {
    match e {
        StoreError::Corrupt(what) => {
            StoreError::Corrupt(format!("the grain at {timestamp}: {what}"))
        }
        e => e,
    }
}

/// The flow's grain extent: first origin timestamp to the end of the last grain.
fn flow_timerange(
    shared: &Shared,
    txn: &ReadTransaction,
    flow: u128,
) -> Result<TimeRange, StoreError> {
    let _ = shared;
    let table = txn.open_table(GRAINS).map_err(engine)?;
    let range = (flow, i128::MIN)..=(flow, i128::MAX);
    let mut iter = table.range(range).map_err(engine)?;
    let Some(first) = iter.next() else {
        return Ok(TimeRange::empty());
    };
    let (first_key, _) = first.map_err(engine)?;
    let start = Timestamp::from_nanos(first_key.value().1).map_err(corrupt)?;
    let (last_key, last_value) = match iter.next_back() {
        Some(last) => last.map_err(engine)?,
        None => {
            let mut again = table
                .range((flow, i128::MIN)..=(flow, i128::MAX))
                .map_err(engine)?;
            match again.next() {
                Some(x) => x.map_err(engine)?,
                None => return Ok(TimeRange::empty()),
            }
        }
    };
    // A damaged last record fails its own reads, not the flow's: without its duration
    // the range ends at its timestamp, inclusively (at the run's first, for a run
    // whose directory is damaged).
    let key = last_key.value().1;
    let (last, end) = match record::Entry::read(key, last_value.value()) {
        Ok(entry) => {
            let last = entry.last();
            match record::decode(entry.record(entry.len() - 1)) {
                Ok(record) => (last, record.end),
                Err(e) => {
                    tracing::error!(flow = %uuid::Uuid::from_u128(flow), error = %at_key(last, e), "flow timerange without the last grain's duration");
                    (last, None)
                }
            }
        }
        Err(e) => {
            tracing::error!(flow = %uuid::Uuid::from_u128(flow), error = %at_key(key, e), "flow timerange without the last grains");
            (key, None)
        }
    };
    let last = Timestamp::from_nanos(last).map_err(corrupt)?;
    Ok(match end.map(Timestamp::from_nanos) {
        Some(Ok(end)) if end > last => {
            TimeRange::new(Bound::Inclusive(start), Bound::Exclusive(end))
        }
        _ => TimeRange::new(Bound::Inclusive(start), Bound::Inclusive(last)),
    })
}

/// A read session's snapshot: a redb read transaction.
struct EmbeddedSnapshot {
    flow: u128,
    /// The recent-grains cache's sequence number when the snapshot was begun.
    sequence: u64,
    shared: Arc<Shared>,
    txn: Arc<ReadTransaction>,
    /// Keeps segments this snapshot may read from being unlinked.
    _epoch: Arc<()>,
}

impl EmbeddedSnapshot {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared, &ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let shared = self.shared.clone();
        let txn = self.txn.clone();
        tokio::task::spawn_blocking(move || f(&shared, &txn))
            .await
            .map_err(|e| StoreError::Unavailable(format!("blocking task failed: {e}")))?
    }
}

#[async_trait]
impl Snapshot for EmbeddedSnapshot {
    async fn timerange(&self) -> Result<TimeRange, StoreError> {
        let flow = self.flow;
        self.blocking(move |s, txn| flow_timerange(s, txn, flow))
            .await
    }

    async fn get(
        &self,
        timestamp: Timestamp,
        with_payload: bool,
    ) -> Result<Option<Grain>, StoreError> {
        let flow = self.flow;
        if let Some(grain) = self
            .shared
            .recent
            .get(flow, timestamp.to_nanos(), self.sequence)
        {
            return Ok(Some(if with_payload {
                grain
            } else {
                let (header, _) = grain.into_parts();
                Grain::from_stored(header, Bytes::new())
            }));
        }
        self.blocking(move |s, txn| {
            let table = txn.open_table(GRAINS).map_err(engine)?;
            let t = timestamp.to_nanos();
            let upto = KeyBound::Included((flow, t));
            with_entry_before(&table, flow, upto, |key, value| {
                // One grain's record under another key holds nothing at `t`; `find`
                // says so. (A run whose version byte is damaged fails to read.)
                let entry = record::Entry::read(key, value).map_err(|e| at_key(key, e))?;
                match entry.find(t) {
                    Some(i) => load_grain(s, timestamp, entry.record(i), with_payload).map(Some),
                    None => Ok(None),
                }
            })
            .map(Option::flatten)
        })
        .await
    }

    async fn page(
        &self,
        range: TimeRange,
        order: Order,
        resume: Option<Timestamp>,
        limit: PageLimit,
        with_payload: bool,
    ) -> Result<GrainPage, StoreError> {
        let flow = self.flow;
        self.blocking(move |s, txn| {
            let mut grains = Vec::new();
            let (_, ended) =
                scan_page(txn, flow, &range, order, resume, limit, |timestamp, raw| {
                    let grain = load_grain(s, timestamp, raw, with_payload)?;
                    let len = grain.payload().len();
                    grains.push(grain);
                    Ok(len)
                })?;
            Ok(GrainPage { grains, ended })
        })
        .await
    }

    /// Builds the blocks from the stored records: each header's `gbhd` block is kept as
    /// written, so no header is decoded and small payloads are copied once, from the
    /// index page into the shared chunk.
    async fn gsf_page(
        &self,
        range: TimeRange,
        order: Order,
        resume: Option<Timestamp>,
        limit: PageLimit,
        local_id: u16,
    ) -> Result<GsfPage, StoreError> {
        let flow = self.flow;
        self.blocking(move |s, txn| {
            let mut blocks = crate::gsf::GsfBlocks::new(local_id);
            let (last, ended) =
                scan_page(txn, flow, &range, order, resume, limit, |timestamp, raw| {
                    add_gsf_block(s, &mut blocks, timestamp, raw)
                })?;
            Ok(GsfPage::new(blocks, last).with_ended(ended))
        })
        .await
    }
}

/// Visits the stored grains of one page of `flow`: those of `range` in `order`, strictly
/// after `resume`, up to `limit` (grains, and the payload bytes `visit` reports for
/// each). A grain that fails after good ones ends the page before it: the next page
/// starts at it and reports the error, so a reader gets everything up to the damage.
/// Returns the last grain visited, and whether the range ended with the page: it ran out
/// before the limit was reached and no damaged grain was met.
fn scan_page(
    txn: &ReadTransaction,
    flow: u128,
    range: &TimeRange,
    order: Order,
    resume: Option<Timestamp>,
    limit: PageLimit,
    mut visit: impl FnMut(Timestamp, &[u8]) -> Result<usize, StoreError>,
) -> Result<(Option<Timestamp>, bool), StoreError> {
    let Some(keys) = key_range(flow, range, order, resume) else {
        return Ok((None, true));
    };
    let table = txn.open_table(GRAINS).map_err(engine)?;
    let from = entries_from(&table, flow, keys.0)?;
    let iter = table.range((from, keys.1)).map_err(engine)?;
    let entries: Box<dyn Iterator<Item = _>> = match order {
        Order::Ascending => Box::new(iter),
        Order::Descending => Box::new(iter.rev()),
    };
    let (mut grains, mut bytes, mut last) = (0usize, 0usize, None);
    for entry in entries {
        let (key, value) = match entry.map_err(engine) {
            Ok(entry) => entry,
            Err(_) if grains > 0 => return Ok((last, false)),
            Err(e) => return Err(e),
        };
        let key = key.value().1;
        let entry = match record::Entry::read(key, value.value()) {
            Ok(entry) => entry,
            Err(_) if grains > 0 => return Ok((last, false)),
            Err(e) => return Err(at_key(key, e)),
        };
        let n = entry.len();
        for j in 0..n {
            let i = match order {
                Order::Ascending => j,
                Order::Descending => n - 1 - j,
            };
            let t = entry.timestamp(i);
            if !within(t, &keys) {
                continue;
            }
            let visited = Timestamp::from_nanos(t)
                .map_err(corrupt)
                .and_then(|timestamp| {
                    visit(timestamp, entry.record(i)).map(|len| (timestamp, len))
                });
            match visited {
                Ok((timestamp, len)) => {
                    last = Some(timestamp);
                    grains += 1;
                    bytes += len;
                    if grains >= limit.grains || bytes >= limit.bytes {
                        return Ok((last, false));
                    }
                }
                Err(_) if grains > 0 => return Ok((last, false)),
                Err(e) => return Err(e),
            }
        }
    }
    Ok((last, true))
}

/// Adds the stored grain `raw` to `blocks`, its payload read and checked; returns the
/// payload's length.
fn add_gsf_block(
    shared: &Shared,
    blocks: &mut crate::gsf::GsfBlocks,
    timestamp: Timestamp,
    raw: &[u8],
) -> Result<usize, StoreError> {
    let record = record::decode(raw).map_err(|e| at_grain(timestamp, e))?;
    let gbhd = crate::grain::wire::stored_gbhd(record.header).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "the grain at {timestamp}: grain index record: header in an unknown form"
        ))
    })?;
    match record.location {
        Location::Inline => {
            record.verify(record.inline, timestamp)?;
            blocks.push_parts(gbhd, record.inline, || {
                Bytes::copy_from_slice(record.inline)
            });
            Ok(record.inline.len())
        }
        Location::Segment { .. } => {
            let payload = load_payload(shared, timestamp, &record)?;
            blocks.push_parts(gbhd, &payload, || payload.clone());
            Ok(payload.len())
        }
    }
}

/// A write session's backend: hands batches to the committer.
struct EmbeddedWriter {
    flow: FlowId,
    committer: Committer,
}

#[async_trait]
impl GrainWriter for EmbeddedWriter {
    async fn commit_batch(&self, grains: Vec<Grain>) -> Result<BatchResult, StoreError> {
        self.committer
            .run(Job::CommitGrains {
                flow: self.flow,
                grains,
            })
            .await
            .map(|reply| reply.into_batch())
    }
}

/// Pages through an id-keyed JSON table, keeping items that `keep` accepts.
fn list_table<T: serde::de::DeserializeOwned>(
    txn: &ReadTransaction,
    table: TableDefinition<u128, &[u8]>,
    page: &PageRequest,
    mut keep: impl FnMut(&T) -> Result<bool, StoreError>,
) -> Result<(Vec<T>, Option<PageKey>), StoreError> {
    let table = txn.open_table(table).map_err(engine)?;
    let start = match page.after {
        Some(key) => KeyBound::Excluded(key.0.as_u128()),
        None => KeyBound::Unbounded,
    };
    let limit = page.limit.max(1);
    let mut items = Vec::new();
    let mut last = None;
    for entry in table
        .range::<u128>((start, KeyBound::Unbounded))
        .map_err(engine)?
    {
        let (key, value) = entry.map_err(engine)?;
        let item: T = serde_json::from_slice(value.value()).map_err(corrupt)?;
        if keep(&item)? {
            if items.len() == limit {
                return Ok((items, last.map(|k| PageKey(uuid::Uuid::from_u128(k)))));
            }
            last = Some(key.value());
            items.push(item);
        }
    }
    Ok((items, None))
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend_name(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|s| {
            let txn = s.db.begin_read().map_err(engine)?;
            txn.open_table(FLOWS).map_err(engine)?;
            Ok(())
        })
        .await
    }

    fn sessions(&self) -> &SessionPool {
        &self.pool
    }

    async fn put_flow(&self, flow: Flow) -> Result<PutOutcome, StoreError> {
        self.committer
            .run(Job::PutFlow(Box::new(flow)))
            .await
            .map(|reply| reply.into_put())
    }

    async fn get_flow(&self, id: FlowId) -> Result<Option<FlowInfo>, StoreError> {
        self.blocking(move |s| {
            let txn = s.db.begin_read().map_err(engine)?;
            let Some(flow) = read_flow(&txn, id.as_u128())? else {
                return Ok(None);
            };
            let timerange = flow_timerange(s, &txn, id.as_u128())?;
            Ok(Some(FlowInfo { flow, timerange }))
        })
        .await
    }

    async fn delete_flow(&self, id: FlowId) -> Result<bool, StoreError> {
        self.committer
            .run(Job::DeleteFlow(id))
            .await
            .map(|reply| reply.into_count() > 0)
    }

    async fn list_flows(
        &self,
        filter: &FlowFilter,
        page: &PageRequest,
    ) -> Result<Page<FlowInfo>, StoreError> {
        let filter = filter.clone();
        let page = page.clone();
        self.blocking(move |s| {
            let txn = s.db.begin_read().map_err(engine)?;
            let mut ranges = Vec::new();
            let (flows, next) = list_table(&txn, FLOWS, &page, |flow: &Flow| {
                if !flow.matches(&filter) {
                    return Ok(false);
                }
                let range = flow_timerange(s, &txn, flow.id.as_u128())?;
                let keep = filter
                    .timerange
                    .as_ref()
                    .is_none_or(|wanted| wanted.overlaps(&range));
                if keep {
                    ranges.push(range);
                }
                Ok(keep)
            })?;
            let items = flows
                .into_iter()
                .zip(ranges)
                .map(|(flow, timerange)| FlowInfo { flow, timerange })
                .collect();
            Ok(Page { items, next })
        })
        .await
    }

    async fn get_source(&self, id: SourceId) -> Result<Option<Source>, StoreError> {
        self.blocking(move |s| {
            let txn = s.db.begin_read().map_err(engine)?;
            let table = txn.open_table(SOURCES).map_err(engine)?;
            let Some(value) = table.get(id.as_u128()).map_err(engine)? else {
                return Ok(None);
            };
            serde_json::from_slice(value.value())
                .map(Some)
                .map_err(corrupt)
        })
        .await
    }

    async fn list_sources(
        &self,
        filter: &SourceFilter,
        page: &PageRequest,
    ) -> Result<Page<Source>, StoreError> {
        let filter = filter.clone();
        let page = page.clone();
        self.blocking(move |s| {
            let txn = s.db.begin_read().map_err(engine)?;
            let (items, next) = list_table(&txn, SOURCES, &page, |source: &Source| {
                Ok(source.matches(&filter))
            })?;
            Ok(Page { items, next })
        })
        .await
    }

    async fn open_read(&self, flow: FlowId) -> Result<ReadSession, StoreError> {
        let permit = self.pool.acquire().await?;
        if !self.shared.known_flows.contains(flow.as_u128()) {
            return Err(StoreError::FlowNotFound(flow));
        }
        let epoch = self.shared.reclaimer.enter();
        // Read before the snapshot is begun: see `recent`.
        let sequence = self.shared.recent.sequence();
        // In memory only (see "Reads" in the module docs): no trip to the blocking pool.
        let txn = self.shared.db.begin_read().map_err(engine)?;
        let snapshot = EmbeddedSnapshot {
            flow: flow.as_u128(),
            sequence,
            shared: self.shared.clone(),
            txn: Arc::new(txn),
            _epoch: epoch,
        };
        Ok(ReadSession::new(flow, Arc::new(snapshot), permit))
    }

    async fn open_write(&self, flow: FlowId) -> Result<WriteSession, StoreError> {
        let permit = self.pool.acquire().await?;
        self.flow_exists_writable(flow).await?;
        let writer = EmbeddedWriter {
            flow,
            committer: self.committer.clone(),
        };
        Ok(WriteSession::new(flow, Arc::new(writer), permit))
    }

    async fn delete_grains(&self, flow: FlowId, range: &TimeRange) -> Result<u64, StoreError> {
        self.committer
            .run(Job::DeleteGrains {
                flow,
                range: *range,
            })
            .await
            .map(|reply| reply.into_count())
    }

    fn watch(&self, flow: FlowId) -> CommitWatch {
        self.shared.notifier.watch(flow)
    }

    fn events(&self) -> &EventLog {
        &self.shared.events
    }
}
