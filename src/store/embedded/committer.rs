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
use super::{
    FLOWS, GRAINS, SEGMENTS, SOURCES, Shared, at_key, corrupt, engine, entries_from, key_range,
    load_grain, with_entry_before, within,
};
use crate::grain::Grain;
use crate::store::{
    BatchOutcome, BatchResult, Flow, FlowId, Order, PutOutcome, Source, StoreError, now_rfc3339,
};
use crate::time::{TimeRange, Timestamp};
use std::ops::Bound as KeyBound;

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
        if let Some(appender) = self.appender.take()
            && let Err(e) = appender.finish()
        {
            tracing::error!(error = %e, "closing the active segment failed");
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
                if let (Some(appender), Some((id, len))) = (self.appender.as_mut(), committed_len)
                    && appender.id() == id
                    && let Err(e) = appender.rewind(len)
                {
                    tracing::error!(error = %e, segment = id, "cannot rewind the segment; closing it");
                    self.appender = None;
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
        // A damaged index value that this batch's grains would meet fails the batch, and
        // only it, before anything of it is applied.
        if let Some(damage) = damage_among(&table, flow, grains)? {
            return Ok(Err(damage));
        }
        let mut outcome = BatchOutcome::default();
        let mut conflict = None;
        // The recent-grains cache takes the end of each batch only: all of a live
        // writer's (small) batches, and of a bulk upload's batches what a reader at its
        // edge asks for, without paying a copy for every grain of a bulk load.
        let recent_from = grains.len().saturating_sub(recent::PER_BATCH);
        let mut index = 0;
        while index < grains.len() && conflict.is_none() {
            // Small grains in increasing time order go in as runs (see `record`) when no
            // stored grain lies among them; anything else goes one grain at a time.
            let end = self.run_candidate(grains, index);
            if end - index >= 2 && span_is_free(&table, flow, &grains[index..end])? {
                self.put_run(&mut table, group, flow, grains, index..end, recent_from)?;
                for grain in &grains[index..end] {
                    outcome.note_written(grain.origin_timestamp());
                }
                index = end;
                continue;
            }
            for (at, grain) in grains
                .iter()
                .enumerate()
                .take(end.max(index + 1))
                .skip(index)
            {
                let timestamp = grain.origin_timestamp();
                match self.put_one(&mut table, group, flow, grain, at >= recent_from)? {
                    Put::Written => outcome.note_written(timestamp),
                    Put::Unchanged => outcome.unchanged += 1,
                    Put::Conflict => {
                        conflict = Some(timestamp);
                        break;
                    }
                }
            }
            index = end.max(index + 1);
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

    /// The end of the run that could start at `grains[from]`: grains kept in the index,
    /// in strictly increasing time order, up to a run's bounds; `from` itself when that
    /// grain's payload goes to a segment.
    fn run_candidate(&self, grains: &[Grain], from: usize) -> usize {
        let mut bytes = 0;
        let mut previous = None;
        for (at, grain) in grains.iter().enumerate().skip(from) {
            let len = grain.payload().len();
            let timestamp = grain.origin_timestamp();
            let fits = at == from || bytes + len <= record::RUN_PAYLOAD_BYTES;
            if len > self.shared.inline_max
                || at - from >= record::RUN_GRAINS
                || !fits
                || previous.is_some_and(|p| p >= timestamp)
            {
                return at;
            }
            bytes += len;
            previous = Some(timestamp);
        }
        grains.len()
    }

    /// Stores `grains[range]` (new, small, in increasing time order) as one run.
    fn put_run(
        &mut self,
        table: &mut redb::Table<'_, (u128, i128), &'static [u8]>,
        group: &mut Group,
        flow: FlowId,
        grains: &[Grain],
        range: std::ops::Range<usize>,
        recent_from: usize,
    ) -> Result<(), StoreError> {
        self.scratch.clear();
        let mut ends = Vec::with_capacity(range.len());
        for at in range.clone() {
            let grain = &grains[at];
            let created = self.created(group, grain);
            record::encode(grain, created, Location::Inline, &mut self.scratch);
            ends.push((grain.origin_timestamp().to_nanos(), self.scratch.len()));
            if at >= recent_from {
                self.keep_recent(group, flow, grain, created);
            }
        }
        let mut members = Vec::with_capacity(ends.len());
        let mut start = 0;
        for (timestamp, end) in ends {
            members.push((timestamp, &self.scratch[start..end]));
            start = end;
        }
        let mut value = Vec::with_capacity(self.scratch.len() + members.len() * 20 + 8);
        record::encode_entry(&members, &mut value);
        let key = (flow.as_u128(), members[0].0);
        let previous = table.insert(key, value.as_slice()).map_err(engine)?;
        debug_assert!(previous.is_none(), "a run was written over a stored grain");
        Ok(())
    }

    /// Stores one grain, splitting a run that spans its timestamp.
    fn put_one(
        &mut self,
        table: &mut redb::Table<'_, (u128, i128), &'static [u8]>,
        group: &mut Group,
        flow: FlowId,
        grain: &Grain,
        recent: bool,
    ) -> Result<Put, StoreError> {
        let timestamp = grain.origin_timestamp();
        let t = timestamp.to_nanos();
        let upto = KeyBound::Included((flow.as_u128(), t));
        let found = with_entry_before(&*table, flow.as_u128(), upto, |key, value| {
            if key != t && !record::is_run(value) {
                return Ok(Held::Nothing);
            }
            let entry = record::Entry::read(key, value).map_err(|e| at_key(t, e))?;
            Ok(match entry.find(t) {
                Some(i) => Held::Grain(entry.record(i).to_vec()),
                None if entry.last() > t => Held::InRun(key, value.to_vec()),
                None => Held::Nothing,
            })
        })?;
        match found {
            Some(Held::Grain(stored)) => {
                let stored = load_grain(&self.shared, timestamp, &stored, true)?;
                return Ok(if stored.same_identity(grain) {
                    Put::Unchanged
                } else {
                    Put::Conflict
                });
            }
            Some(Held::InRun(key, value)) => split_run(table, flow, key, &value, t)?,
            Some(Held::Nothing) | None => {}
        }
        let created = self.created(group, grain);
        let payload = grain.payload();
        let location = if payload.len() <= self.shared.inline_max {
            if recent {
                self.keep_recent(group, flow, grain, created);
            }
            Location::Inline
        } else {
            let appender = self.appender_for(group, payload.len() as u64)?;
            let id = appender.id();
            let offset = appender.append(payload)?;
            group.lengths.insert(id, appender.len());
            *group.live_delta.entry(id).or_default() += payload.len() as i64;
            Location::Segment { id, offset }
        };
        self.scratch.clear();
        record::encode(grain, created, location, &mut self.scratch);
        table
            .insert((flow.as_u128(), t), self.scratch.as_slice())
            .map_err(engine)?;
        Ok(Put::Written)
    }

    /// The creation timestamp stored for `grain`: its own, or the commit's.
    fn created(&self, group: &mut Group, grain: &Grain) -> Option<Timestamp> {
        grain
            .creation_timestamp()
            .or_else(|| Some(*group.now.get_or_insert_with(Timestamp::now)))
    }

    /// Adds a small grain, as it will be read back, to what the recent-grains cache
    /// takes after the commit.
    fn keep_recent(
        &self,
        group: &mut Group,
        flow: FlowId,
        grain: &Grain,
        created: Option<Timestamp>,
    ) {
        if !self.shared.recent.keeps_any() {
            return;
        }
        // Its own copy of the payload, which may be a slice of a large upload buffer
        // (and cloning it would touch a count shared with the writer's other grains).
        let mut header = grain.header().clone();
        header.creation_timestamp = created;
        let stored = Grain::from_stored(header, Bytes::copy_from_slice(grain.payload()));
        group.recent.push((flow.as_u128(), stored));
    }

    /// The appender to use for `len` more bytes, rotating to a new segment when the
    /// current one is full.
    fn appender_for(&mut self, group: &mut Group, len: u64) -> Result<&mut Appender, StoreError> {
        let full = self
            .appender
            .as_ref()
            .is_some_and(|a| a.len() > 0 && a.len() + len > self.shared.segment_bytes);
        if full && let Some(old) = self.appender.take() {
            // Account the segment left behind in this group: its grains may all
            // have been deleted while it was active (which kept it), and no later
            // delete will look at it again.
            group.live_delta.entry(old.id()).or_default();
            old.finish()?;
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
            // Named as the flow that made it: its label, description and tags.
            label: flow.label.clone(),
            description: flow.description.clone(),
            tags: flow.tags.clone(),
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

/// What one grain's write met in the index.
enum Put {
    Written,
    Unchanged,
    Conflict,
}

/// What the index holds at a timestamp.
enum Held {
    /// Nothing, and no run spans it.
    Nothing,
    /// A grain: its record.
    Grain(Vec<u8>),
    /// Nothing, inside the span of the run stored under this key (its value).
    InRun(i128, Vec<u8>),
}

/// The first damage that writing `grains` would meet: a damaged index value among those
/// from the one holding the earliest grain to the one holding the latest, or the
/// damaged record of a grain stored at one of their timestamps.
/// Writing the grains reads those values (to find a stored grain, or a run to split),
/// and a damaged run's span is unknown: it fails the writes it may cover until it is
/// deleted.
fn damage_among(
    table: &redb::Table<'_, (u128, i128), &'static [u8]>,
    flow: FlowId,
    grains: &[Grain],
) -> Result<Option<StoreError>, StoreError> {
    let stamps = grains.iter().map(|g| g.origin_timestamp().to_nanos());
    let (Some(first), Some(last)) = (stamps.clone().min(), stamps.max()) else {
        return Ok(None);
    };
    let flow = flow.as_u128();
    let from = with_entry_before(table, flow, KeyBound::Included((flow, first)), |key, _| {
        Ok(key)
    })?
    .unwrap_or(first);
    for entry in table.range((flow, from)..=(flow, last)).map_err(engine)? {
        let (key, value) = entry.map_err(engine)?;
        let (key, value) = (key.value().1, value.value());
        let damage = if record::is_run(value) || record::was_run(value) {
            match record::Entry::read(key, value) {
                Err(e) => Some(e),
                // And the records of the run's grains that the batch writes again.
                Ok(run) => grains.iter().find_map(|g| {
                    let i = run.find(g.origin_timestamp().to_nanos())?;
                    record::decode(run.record(i)).err()
                }),
            }
        } else {
            // A damaged grain matters to a write at its own timestamp only.
            record::decode(value).err().filter(|_| {
                grains
                    .iter()
                    .any(|g| g.origin_timestamp().to_nanos() == key)
            })
        };
        if let Some(e) = damage {
            return Ok(Some(at_key(key, e)));
        }
    }
    Ok(None)
}

/// Whether no stored grain lies within the timestamps of `grains` (in increasing order):
/// no key among them, and no run keyed before the first reaching it.
fn span_is_free(
    table: &redb::Table<'_, (u128, i128), &'static [u8]>,
    flow: FlowId,
    grains: &[Grain],
) -> Result<bool, StoreError> {
    let (Some(first), Some(last)) = (grains.first(), grains.last()) else {
        return Ok(true);
    };
    let (first, last) = (
        first.origin_timestamp().to_nanos(),
        last.origin_timestamp().to_nanos(),
    );
    let upto = KeyBound::Included((flow.as_u128(), last));
    let free = with_entry_before(table, flow.as_u128(), upto, |key, value| {
        if key >= first {
            return Ok(false);
        }
        // A damaged value was refused by `damage_among`.
        Ok(record::Entry::read(key, value).is_ok_and(|run| run.last() < first))
    })?;
    Ok(free.unwrap_or(true))
}

/// Splits the run stored under `key` (`value`) around `t`, which lies inside its span
/// and is none of its grains: the grains before `t` stay under `key`, those after go
/// under the first of them.
fn split_run(
    table: &mut redb::Table<'_, (u128, i128), &'static [u8]>,
    flow: FlowId,
    key: i128,
    value: &[u8],
    t: i128,
) -> Result<(), StoreError> {
    let run = record::Entry::read(key, value).map_err(|e| at_key(key, e))?;
    let (before, after): (Vec<_>, Vec<_>) = run.members().partition(|(at, _)| *at < t);
    let mut out = Vec::with_capacity(value.len());
    for part in [before, after] {
        out.clear();
        record::encode_entry(&part, &mut out);
        table
            .insert((flow.as_u128(), part[0].0), out.as_slice())
            .map_err(engine)?;
    }
    Ok(())
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
    // Keys to remove, and what to store again of the runs partly in the range.
    let mut doomed = Vec::new();
    let mut kept = Vec::new();
    let from = entries_from(&table, flow.as_u128(), keys.0)?;
    for entry in table.range((from, keys.1)).map_err(engine)? {
        let (key, value) = entry.map_err(engine)?;
        let key = key.value().1;
        let entry = match record::Entry::read(key, value.value()) {
            Ok(entry) => entry,
            // A run whose directory is damaged: its grains cannot be told apart, so it
            // goes whole when its first grain is in the range (none of them can be
            // read), and stays otherwise.
            Err(e) => {
                let whole = within(key, &keys);
                tracing::error!(
                    flow = %flow,
                    timestamp_ns = key,
                    error = %e,
                    deleted = whole,
                    "a run of grains whose index record is damaged"
                );
                if whole {
                    doomed.push(key);
                    removed += 1;
                }
                continue;
            }
        };
        let mut rest = Vec::new();
        let mut gone = 0;
        for (t, raw) in entry.members() {
            if !within(t, &keys) {
                rest.push((t, raw));
                continue;
            }
            gone += 1;
            match record::decode(raw) {
                Ok(record) => {
                    if let Location::Segment { id, .. } = record.location {
                        *group.live_delta.entry(id).or_default() -= record.len as i64;
                    }
                }
                // A damaged grain can still be deleted, which is how a user gets rid
                // of it; only the segment it may point into cannot be told it lost the
                // bytes, so that segment is never reclaimed.
                Err(e) => tracing::error!(
                    flow = %flow,
                    timestamp_ns = t,
                    error = %e,
                    "deleting a grain whose index record is damaged; its segment space is not reclaimed"
                ),
            }
        }
        if gone == 0 {
            continue;
        }
        removed += gone;
        doomed.push(key);
        if let Some((first, _)) = rest.first() {
            let mut value = Vec::new();
            record::encode_entry(&rest, &mut value);
            kept.push((*first, value));
        }
    }
    for key in doomed {
        table.remove((flow.as_u128(), key)).map_err(engine)?;
    }
    for (key, value) in kept {
        table
            .insert((flow.as_u128(), key), value.as_slice())
            .map_err(engine)?;
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
