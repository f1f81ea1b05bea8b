//! The committer thread: the only writer of the embedded store.
//!
//! Jobs arrive on a channel; the thread takes every job waiting (up to a bound), runs
//! them in one redb write transaction, makes appended segment bytes durable, commits,
//! and answers each job. Many concurrent writers thus share one `fdatasync` and one
//! index commit (group commit), and the segment appender needs no lock.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use redb::{ReadableTable, WriteTransaction};
use tokio::sync::oneshot;

use super::recent;
use super::record::{self, Location};
use super::segments::Appender;
use super::{FLOWS, GRAINS, SEGMENTS, SOURCES, Shared, corrupt, engine, key_range, load_grain};
use crate::grain::Grain;
use crate::store::{
    BatchOutcome, BatchResult, Flow, FlowId, Order, PutOutcome, Source, StoreError, now_rfc3339,
};
use crate::time::{TimeRange, Timestamp};

/// The most jobs one transaction takes, so one group's latency stays bounded.
const MAX_GROUP: usize = 256;

/// A mutation for the committer.
pub enum Job {
    /// Store grains of one flow.
    CommitGrains {
        /// The flow (checked to exist and be writable in the transaction).
        flow: FlowId,
        /// The grains, in the order written.
        grains: Vec<Grain>,
    },
    /// Create or replace a flow.
    PutFlow(Box<Flow>),
    /// Delete a flow and its grains.
    DeleteFlow(FlowId),
    /// Delete a flow's grains in a range.
    DeleteGrains {
        /// The flow.
        flow: FlowId,
        /// The range of origin timestamps.
        range: TimeRange,
    },
}

/// What a job produced.
#[derive(Debug)]
pub enum Reply {
    /// A batch's result.
    Batch(BatchResult),
    /// A put's result.
    Put(PutOutcome),
    /// How many things a delete removed.
    Count(u64),
}

impl Reply {
    pub fn into_batch(self) -> BatchResult {
        match self {
            Reply::Batch(b) => b,
            _ => unreachable!("a grain commit always answers with a batch result"),
        }
    }

    pub fn into_put(self) -> PutOutcome {
        match self {
            Reply::Put(p) => p,
            _ => unreachable!("a put always answers with a put outcome"),
        }
    }

    pub fn into_count(self) -> u64 {
        match self {
            Reply::Count(c) => c,
            _ => unreachable!("a delete always answers with a count"),
        }
    }
}

struct Request {
    job: Job,
    reply: oneshot::Sender<Result<Reply, StoreError>>,
}

/// A handle to the committer thread; the thread ends when every handle is dropped or
/// [`Committer::stop`] is called.
#[derive(Clone)]
pub struct Committer {
    /// `None` asks the thread to stop after the jobs sent before it.
    jobs: mpsc::Sender<Option<Request>>,
}

impl Committer {
    /// Starts the thread. `active` is the segment to keep appending to, if any.
    pub fn start(
        shared: Arc<Shared>,
        active: Option<(u64, u64)>,
        next_segment: u64,
    ) -> Result<(Committer, JoinHandle<()>), StoreError> {
        let (tx, rx) = mpsc::channel();
        let appender = match active {
            Some((id, len)) => Some(shared.segments.appender(id, len)?),
            None => None,
        };
        let mut state = State {
            shared,
            appender,
            next_segment,
            scratch: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("grainstore-committer".into())
            .spawn(move || state.run(rx))?;
        Ok((Committer { jobs: tx }, thread))
    }

    /// Asks the thread to stop once the jobs already sent are done; jobs sent later
    /// fail as [`StoreError::Unavailable`].
    pub fn stop(&self) {
        let _ = self.jobs.send(None);
    }

    /// Runs a job and waits for its durable completion.
    pub async fn run(&self, job: Job) -> Result<Reply, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Some(Request { job, reply }))
            .map_err(|_| StoreError::Unavailable("the committer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the committer stopped during a commit".into()))?
    }
}

struct State {
    shared: Arc<Shared>,
    appender: Option<Appender>,
    next_segment: u64,
    /// Reused buffer for encoding index records.
    scratch: Vec<u8>,
}

/// Per-transaction bookkeeping.
#[derive(Default)]
struct Group {
    /// Segment id → signed change of live bytes.
    live_delta: BTreeMap<u64, i64>,
    /// Segment id → new committed length (segments appended to).
    lengths: BTreeMap<u64, u64>,
    /// Segments left with nothing live, to unlink once no snapshot can read them.
    dead: Vec<u64>,
    /// Flows whose grains changed, to wake their watchers.
    touched: HashSet<FlowId>,
    /// The creation timestamp given to grains that have none.
    now: Option<Timestamp>,
    /// Events to publish once the transaction has committed.
    events: Vec<PendingEvent>,
    /// Flows created (true) or deleted (false), for the store's set of known flows.
    flows: Vec<(u128, bool)>,
    /// Small grains stored, as they will be read back, for the recent-grains cache.
    recent: Vec<(u128, Grain)>,
}

/// An event held until its transaction commits.
struct PendingEvent {
    event_type: &'static str,
    flow: Option<FlowId>,
    source: Option<uuid::Uuid>,
    body: serde_json::Value,
}

impl State {
    fn run(&mut self, jobs: mpsc::Receiver<Option<Request>>) {
        let mut stopping = false;
        while !stopping {
            let first = match jobs.recv_timeout(Duration::from_secs(1)) {
                Ok(Some(request)) => request,
                Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.reclaim();
                    continue;
                }
            };
            let mut batch = vec![first];
            while batch.len() < MAX_GROUP {
                match jobs.try_recv() {
                    Ok(Some(request)) => batch.push(request),
                    Ok(None) => {
                        stopping = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(batch);
            self.reclaim();
        }
        if let Some(appender) = self.appender.take() {
            if let Err(e) = appender.finish() {
                tracing::error!(error = %e, "closing the active segment failed");
            }
        }
    }

    fn commit_group(&mut self, requests: Vec<Request>) {
        let requests = match self.storage_refusal(&requests) {
            None => requests,
            Some(refusal) => {
                let (writes, others): (Vec<Request>, Vec<Request>) = requests
                    .into_iter()
                    .partition(|r| adds_data(&r.job).is_some());
                for request in writes {
                    let _ = request.reply.send(Err(refusal.to_error()));
                }
                if others.is_empty() {
                    return;
                }
                others
            }
        };
        let committed_len = self.appender.as_ref().map(|a| (a.id(), a.len()));
        let mut group = Group::default();
        let result = (|| -> Result<Vec<Result<Reply, StoreError>>, StoreError> {
            let txn = self.shared.db.begin_write().map_err(engine)?;
            let mut replies = Vec::with_capacity(requests.len());
            for request in &requests {
                replies.push(self.apply(&txn, &mut group, &request.job)?);
            }
            if let Some(appender) = self.appender.as_mut() {
                appender.sync()?;
            }
            self.account_segments(&txn, &mut group)?;
            txn.commit().map_err(engine)?;
            Ok(replies)
        })();
        match result {
            Ok(replies) => {
                // Parked only after the commit: a failed commit must not lose segments.
                // Parked before answering: a snapshot opened once a delete has returned
                // must not hold back the segments that delete emptied.
                self.shared.reclaimer.retire(group.dead);
                // Before answering: once a put returns, a read session can be opened;
                // once a write returns, a session begun then may take its grains from
                // the recent-grains cache.
                self.shared.known_flows.apply(&group.flows);
                let sequence = self.shared.recent.publish();
                // Wake watchers before answering, so that when a commit returns its
                // watchers have been told: a caller that commits and then waits on a
                // watch it had already marked seen never misses its own commit.
                for flow in &group.touched {
                    self.shared.notifier.notify(*flow);
                }
                // Events too: once a write has returned, /events already reports it.
                for e in group.events {
                    self.shared
                        .events
                        .publish(e.event_type, e.flow, e.source, e.body);
                }
                for (request, reply) in requests.into_iter().zip(replies) {
                    let _ = request.reply.send(reply);
                }
                self.shared.recent.add(sequence, group.recent);
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed; the group is rolled back");
                if let (Some(appender), Some((id, len))) = (self.appender.as_mut(), committed_len) {
                    if appender.id() == id {
                        if let Err(e) = appender.rewind(len) {
                            tracing::error!(error = %e, segment = id, "cannot rewind the segment; closing it");
                            self.appender = None;
                        }
                    }
                }
                let fault = StorageFault::of(&e);
                for request in requests {
                    let _ = request.reply.send(Err(fault.to_error()));
                }
            }
        }
    }

    /// Refuses a group that writes while the data directory's file system is read-only
    /// or has less free space than `min_free_bytes` plus what the group adds. redb marks
    /// its database failed after any write error and refuses every later transaction,
    /// reads included, until it is reopened; so the index must not meet a full or
    /// read-only disk. (A segment append that still meets one is rolled back and
    /// recovers: see the error branch of `commit_group`.)
    fn storage_refusal(&self, requests: &[Request]) -> Option<StorageFault> {
        let adds: u64 = requests.iter().filter_map(|r| adds_data(&r.job)).sum();
        if adds == 0 {
            return None;
        }
        let path = self.shared.segments.path(0);
        let dir = path.parent()?;
        let (available, read_only) = free_space(dir).ok()?;
        if read_only {
            return Some(StorageFault::ReadOnly(format!(
                "the data directory {} is on a read-only file system",
                dir.display()
            )));
        }
        let needed = self.shared.min_free_bytes.saturating_add(adds);
        if available < needed {
            return Some(StorageFault::Full(format!(
                "{available} bytes free on the data directory's file system, below the reserve of {} (storage.min_free_bytes) plus this write",
                self.shared.min_free_bytes
            )));
        }
        None
    }

    /// Applies one job inside the transaction. An `Err` aborts the whole group (an engine
    /// or I/O failure); a job's own refusal is an `Ok(Err(..))`.
    fn apply(
        &mut self,
        txn: &WriteTransaction,
        group: &mut Group,
        job: &Job,
    ) -> Result<Result<Reply, StoreError>, StoreError> {
        match job {
            Job::CommitGrains { flow, grains } => self.commit_grains(txn, group, *flow, grains),
            Job::PutFlow(flow) => {
                group.flows.push((flow.id.as_u128(), true));
                put_flow(txn, group, flow).map(|r| r.map(Reply::Put))
            }
            Job::DeleteFlow(flow) => {
                let flows = txn.open_table(FLOWS).map_err(engine)?;
                let existed = flows.get(flow.as_u128()).map_err(engine)?.is_some();
                drop(flows);
                if !existed {
                    return Ok(Ok(Reply::Count(0)));
                }
                delete_range(&self.shared, txn, group, *flow, &TimeRange::eternity())?;
                txn.open_table(FLOWS)
                    .map_err(engine)?
                    .remove(flow.as_u128())
                    .map_err(engine)?;
                // Live readers of the flow must learn that it is gone.
                group.touched.insert(*flow);
                group.flows.push((flow.as_u128(), false));
                group.events.push(PendingEvent {
                    event_type: "flows/deleted",
                    flow: Some(*flow),
                    source: None,
                    body: serde_json::json!({ "flow_id": flow }),
                });
                Ok(Ok(Reply::Count(1)))
            }
            Job::DeleteGrains { flow, range } => {
                let source = match check_writable(txn, *flow)? {
                    Ok(source) => source,
                    Err(refusal) => return Ok(Err(refusal)),
                };
                let deleted = delete_range(&self.shared, txn, group, *flow, range)?;
                if deleted > 0 {
                    group.events.push(PendingEvent {
                        event_type: "flows/grains_deleted",
                        flow: Some(*flow),
                        source: Some(source),
                        body: serde_json::json!({ "flow_id": flow, "timerange": range.to_string() }),
                    });
                }
                Ok(Ok(Reply::Count(deleted)))
            }
        }
    }

    fn commit_grains(
        &mut self,
        txn: &WriteTransaction,
        group: &mut Group,
        flow: FlowId,
        grains: &[Grain],
    ) -> Result<Result<Reply, StoreError>, StoreError> {
        let source = match check_writable(txn, flow)? {
            Ok(source) => source,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let mut table = txn.open_table(GRAINS).map_err(engine)?;
        let mut outcome = BatchOutcome::default();
        let mut conflict = None;
        // The recent-grains cache takes the end of each batch only: all of a live
        // writer's (small) batches, and of a bulk upload's batches what a reader at its
        // edge asks for, without paying a copy for every grain of a bulk load.
        let recent_from = grains.len().saturating_sub(recent::PER_BATCH);
        for (index, grain) in grains.iter().enumerate() {
            let timestamp = grain.origin_timestamp();
            let key = (flow.as_u128(), timestamp.to_nanos());
            let created = grain
                .creation_timestamp()
                .or_else(|| Some(*group.now.get_or_insert_with(Timestamp::now)));
            let payload = grain.payload();
            if payload.len() <= self.shared.inline_max {
                // Insert first: a new grain (the common case) then costs one B-tree
                // descent; an occupied timestamp gets its stored record put back.
                self.scratch.clear();
                record::encode(grain, created, Location::Inline, &mut self.scratch);
                let previous = table
                    .insert(key, self.scratch.as_slice())
                    .map_err(engine)?
                    .map(|old| old.value().to_vec());
                if let Some(previous) = previous {
                    table.insert(key, previous.as_slice()).map_err(engine)?;
                    let stored = load_grain(&self.shared, timestamp, &previous, true)?;
                    if stored.same_identity(grain) {
                        outcome.unchanged += 1;
                        continue;
                    }
                    conflict = Some(timestamp);
                    break;
                }
                if index >= recent_from && self.shared.recent.keeps_any() {
                    // Its own copy of the payload, which may be a slice of a large
                    // upload buffer (and cloning it would touch a count shared with
                    // the writer's other grains).
                    let mut header = grain.header().clone();
                    header.creation_timestamp = created;
                    let stored = Grain::from_stored(header, Bytes::copy_from_slice(payload));
                    group.recent.push((flow.as_u128(), stored));
                }
            } else {
                // Look first: a re-sent large payload must not be appended again.
                let stored = match table.get(key).map_err(engine)? {
                    Some(existing) => {
                        Some(load_grain(&self.shared, timestamp, existing.value(), true)?)
                    }
                    None => None,
                };
                if let Some(stored) = stored {
                    if stored.same_identity(grain) {
                        outcome.unchanged += 1;
                        continue;
                    }
                    conflict = Some(timestamp);
                    break;
                }
                let appender = self.appender_for(group, payload.len() as u64)?;
                let id = appender.id();
                let offset = appender.append(payload)?;
                group.lengths.insert(id, appender.len());
                *group.live_delta.entry(id).or_default() += payload.len() as i64;
                self.scratch.clear();
                record::encode(
                    grain,
                    created,
                    Location::Segment { id, offset },
                    &mut self.scratch,
                );
                table.insert(key, self.scratch.as_slice()).map_err(engine)?;
            }
            outcome.written += 1;
            outcome.first = Some(outcome.first.map_or(timestamp, |t| t.min(timestamp)));
            outcome.last = Some(outcome.last.map_or(timestamp, |t| t.max(timestamp)));
        }
        if let (Some(first), Some(last)) = (outcome.first, outcome.last) {
            group.touched.insert(flow);
            let range = TimeRange::new(
                crate::time::Bound::Inclusive(first),
                crate::time::Bound::Inclusive(last),
            );
            group.events.push(PendingEvent {
                event_type: "flows/grains_added",
                flow: Some(flow),
                source: Some(source),
                body: serde_json::json!({ "flow_id": flow, "timerange": range.to_string() }),
            });
        }
        Ok(Ok(Reply::Batch(BatchResult { outcome, conflict })))
    }

    /// The appender to use for `len` more bytes, rotating to a new segment when the
    /// current one is full.
    fn appender_for(&mut self, group: &mut Group, len: u64) -> Result<&mut Appender, StoreError> {
        let full = self
            .appender
            .as_ref()
            .is_some_and(|a| a.len() > 0 && a.len() + len > self.shared.segment_bytes);
        if full {
            if let Some(old) = self.appender.take() {
                // Account the segment left behind in this group: its grains may all
                // have been deleted while it was active (which kept it), and no later
                // delete will look at it again.
                group.live_delta.entry(old.id()).or_default();
                old.finish()?;
            }
        }
        if self.appender.is_none() {
            let id = self.next_segment;
            self.next_segment += 1;
            self.appender = Some(self.shared.segments.appender(id, 0)?);
            group.lengths.insert(id, 0);
        }
        // Just ensured above.
        self.appender
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("no segment to append to".into()))
    }

    /// Writes segment lengths and live bytes; segments with nothing live (and not being
    /// appended to) are dropped from the index and parked for unlinking.
    fn account_segments(
        &mut self,
        txn: &WriteTransaction,
        group: &mut Group,
    ) -> Result<(), StoreError> {
        if group.lengths.is_empty() && group.live_delta.is_empty() {
            return Ok(());
        }
        let active = self.appender.as_ref().map(|a| a.id());
        let mut table = txn.open_table(SEGMENTS).map_err(engine)?;
        let ids: HashSet<u64> = group
            .lengths
            .keys()
            .chain(group.live_delta.keys())
            .copied()
            .collect();
        for id in ids {
            let (len, live) = table.get(id).map_err(engine)?.map_or((0, 0), |v| v.value());
            let len = group.lengths.get(&id).copied().unwrap_or(len);
            let delta = group.live_delta.get(&id).copied().unwrap_or(0);
            let live = u64::try_from(live as i64 + delta)
                .map_err(|_| corrupt(format!("segment {id} live bytes below zero")))?;
            if live == 0 && Some(id) != active {
                table.remove(id).map_err(engine)?;
                group.dead.push(id);
            } else {
                table.insert(id, (len, live)).map_err(engine)?;
            }
        }
        Ok(())
    }

    fn reclaim(&mut self) {
        for id in self.shared.reclaimer.reclaimable() {
            if let Err(e) = self.shared.segments.remove(id) {
                tracing::warn!(error = %e, segment = id, "cannot remove an emptied segment");
            }
        }
    }
}

/// The flow's source when the flow exists and is writable; its refusal otherwise.
fn check_writable(
    txn: &WriteTransaction,
    flow: FlowId,
) -> Result<Result<uuid::Uuid, StoreError>, StoreError> {
    let flows = txn.open_table(FLOWS).map_err(engine)?;
    let Some(value) = flows.get(flow.as_u128()).map_err(engine)? else {
        return Ok(Err(StoreError::FlowNotFound(flow)));
    };
    let stored: Flow = serde_json::from_slice(value.value()).map_err(corrupt)?;
    if stored.read_only {
        return Ok(Err(StoreError::ReadOnly(flow)));
    }
    Ok(Ok(stored.source_id))
}

fn put_flow(
    txn: &WriteTransaction,
    group: &mut Group,
    flow: &Flow,
) -> Result<Result<PutOutcome, StoreError>, StoreError> {
    let now = now_rfc3339();
    let mut flow = flow.clone();
    let mut flows = txn.open_table(FLOWS).map_err(engine)?;
    let previous: Option<Flow> = match flows.get(flow.id.as_u128()).map_err(engine)? {
        Some(value) => Some(serde_json::from_slice(value.value()).map_err(corrupt)?),
        None => None,
    };
    flow.created = Some(
        previous
            .as_ref()
            .and_then(|p| p.created.clone())
            .unwrap_or_else(|| now.clone()),
    );
    flow.metadata_updated = Some(now.clone());
    let json = serde_json::to_vec(&flow).map_err(corrupt)?;
    flows
        .insert(flow.id.as_u128(), json.as_slice())
        .map_err(engine)?;
    let mut sources = txn.open_table(SOURCES).map_err(engine)?;
    if sources
        .get(flow.source_id.as_u128())
        .map_err(engine)?
        .is_none()
    {
        let source = Source {
            id: flow.source_id,
            format: flow.format,
            label: None,
            description: None,
            tags: Default::default(),
            created: Some(now.clone()),
            updated: Some(now),
        };
        let json = serde_json::to_vec(&source).map_err(corrupt)?;
        sources
            .insert(flow.source_id.as_u128(), json.as_slice())
            .map_err(engine)?;
        group.events.push(PendingEvent {
            event_type: "sources/created",
            flow: None,
            source: Some(source.id),
            body: serde_json::to_value(&source).map_err(corrupt)?,
        });
    }
    group.events.push(PendingEvent {
        event_type: if previous.is_some() {
            "flows/updated"
        } else {
            "flows/created"
        },
        flow: Some(flow.id),
        source: Some(flow.source_id),
        body: serde_json::to_value(&flow).map_err(corrupt)?,
    });
    Ok(Ok(if previous.is_some() {
        PutOutcome::Updated
    } else {
        PutOutcome::Created
    }))
}

fn delete_range(
    shared: &Shared,
    txn: &WriteTransaction,
    group: &mut Group,
    flow: FlowId,
    range: &TimeRange,
) -> Result<u64, StoreError> {
    let Some(keys) = key_range(flow.as_u128(), range, Order::Ascending, None) else {
        return Ok(0);
    };
    // Out of the recent-grains cache before the commit (see `recent`), and out of what
    // this group would add to it.
    shared.recent.forget(flow.as_u128(), Some(range));
    group
        .recent
        .retain(|(f, grain)| *f != flow.as_u128() || !range.contains(grain.origin_timestamp()));
    let mut table = txn.open_table(GRAINS).map_err(engine)?;
    let mut removed = 0;
    let mut doomed = Vec::new();
    for entry in table.range(keys).map_err(engine)? {
        let (key, value) = entry.map_err(engine)?;
        match record::decode(value.value()) {
            Ok(record) => {
                if let Location::Segment { id, .. } = record.location {
                    *group.live_delta.entry(id).or_default() -= record.len as i64;
                }
            }
            // A damaged grain can still be deleted, which is how a user gets rid of
            // it; only the segment it may point into cannot be told it lost the bytes,
            // so that segment is never reclaimed.
            Err(e) => tracing::error!(
                flow = %flow,
                timestamp_ns = key.value().1,
                error = %e,
                "deleting a grain whose index record is damaged; its segment space is not reclaimed"
            ),
        }
        doomed.push(key.value());
    }
    for key in doomed {
        table.remove(key).map_err(engine)?;
        removed += 1;
    }
    if removed > 0 {
        group.touched.insert(flow);
    }
    Ok(removed)
}

/// Bytes a job may add to the store's files (payloads and an allowance for index
/// pages), or `None` for a job that only removes.
fn adds_data(job: &Job) -> Option<u64> {
    match job {
        Job::CommitGrains { grains, .. } => {
            Some(grains.iter().map(|g| g.payload().len() as u64 + 1024).sum())
        }
        Job::PutFlow(_) => Some(16 << 10),
        Job::DeleteFlow(_) | Job::DeleteGrains { .. } => None,
    }
}

/// A storage fault reported to every job of a group.
enum StorageFault {
    /// Out of space (ENOSPC, EDQUOT, or below the reserve).
    Full(String),
    /// A read-only file system (EROFS).
    ReadOnly(String),
    /// Anything else.
    Other(String),
}

impl StorageFault {
    /// Classifies the error that failed a group.
    fn of(e: &StoreError) -> StorageFault {
        let message = e.to_string();
        match e {
            StoreError::Io(io) => match io.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT) => StorageFault::Full(message),
                Some(libc::EROFS) => StorageFault::ReadOnly(message),
                _ => StorageFault::Other(message),
            },
            StoreError::StorageFull(m) => StorageFault::Full(m.clone()),
            StoreError::StorageReadOnly(m) => StorageFault::ReadOnly(m.clone()),
            _ => StorageFault::Other(message),
        }
    }

    fn to_error(&self) -> StoreError {
        match self {
            StorageFault::Full(m) => StoreError::StorageFull(m.clone()),
            StorageFault::ReadOnly(m) => StoreError::StorageReadOnly(m.clone()),
            StorageFault::Other(m) => StoreError::Unavailable(m.clone()),
        }
    }
}

/// Bytes available to unprivileged writers on the file system of `dir`, and whether it
/// is mounted read-only.
fn free_space(dir: &std::path::Path) -> std::io::Result<(u64, bool)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid C string and `stat` a buffer of the right type, which
    // statvfs fills when it returns 0.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stat.assume_init()
    };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    let available = stat.f_bavail as u64 * stat.f_frsize as u64;
    Ok((available, stat.f_flag & libc::ST_RDONLY != 0))
}
