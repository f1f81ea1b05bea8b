//! The write path: plan a batch against what is stored, store its object, insert its
//! rows in one transaction (a batch of small grains is first inserted as if all were new,
//! and planned only if that fails); and range deletes with object accounting.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::tokio_postgres::Transaction;
use deadpool_postgres::tokio_postgres::error::SqlState;

use super::payloads::Payloads;
use super::snapshot::{StoredGrain, grain_columns, load};
use super::{PendingEvent, Shared, grain_end, pg_error, record_events, split};
use crate::grain::Grain;
use crate::store::{BatchOutcome, BatchResult, FlowId, GrainWriter, StoreError};
use crate::time::{Bound, TimeRange, Timestamp};

/// The insert of a batch's rows, as a literal for `concat!`.
macro_rules! insert_grains {
    () => {
        "INSERT INTO grains (flow_id, ts_sec, ts_nsec, end_sec, end_nsec, header, crc, len,
           inline_payload, object_id, object_offset)
         SELECT $1, * FROM unnest($2::int8[], $3::int4[], $4::int8[], $5::int4[], $6::bytea[],
           $7::int4[], $8::int8[], $9::bytea[], $10::int8[], $11::int8[])"
    };
}

/// Inserts a batch's rows, failing at the first taken timestamp.
const INSERT_GRAINS: &str = insert_grains!();

/// Inserts a batch's rows, skipping timestamps taken since the batch was planned.
const INSERT_GRAINS_SKIPPING_TAKEN: &str = concat!(insert_grains!(), " ON CONFLICT DO NOTHING");

/// How often a batch is planned again when concurrent writers keep taking its
/// timestamps before it commits.
const MAX_ATTEMPTS: usize = 8;

/// Commits batches of one flow.
pub struct PgWriter {
    shared: Arc<Shared>,
    flow: FlowId,
}

impl PgWriter {
    /// A writer of `flow`.
    pub fn new(shared: Arc<Shared>, flow: FlowId) -> PgWriter {
        PgWriter { shared, flow }
    }
}

/// What a batch will do, decided against the rows stored when it was planned.
struct Plan {
    outcome: BatchOutcome,
    conflict: Option<Timestamp>,
    /// Indexes of the grains to insert, in batch order.
    insert: Vec<usize>,
    /// Made without looking at what is stored ([`Plan::all_new`]).
    optimistic: bool,
}

/// Whether a stored grain is the same as `grain` (every header field and the payload
/// bytes, not the creation timestamp). The payload is fetched only when its length and
/// checksum already match.
async fn same_as_stored(
    shared: &Shared,
    stored: &StoredGrain,
    grain: &Grain,
) -> Result<bool, StoreError> {
    let payload = grain.payload();
    if stored.len != payload.len() as u64 || stored.crc != crc32c::crc32c(payload) {
        return Ok(false);
    }
    let mut loaded = load(shared, std::slice::from_ref(stored)).await?;
    let existing = loaded
        .pop()
        .unwrap_or_else(|| Err(StoreError::Corrupt("a grain was not loaded".into())))?;
    Ok(existing.same_identity(grain))
}

impl Plan {
    /// Every grain inserted: the plan of a batch that holds only new timestamps.
    fn all_new(grains: &[Grain]) -> Plan {
        let mut plan = Plan {
            outcome: BatchOutcome::default(),
            conflict: None,
            insert: (0..grains.len()).collect(),
            optimistic: true,
        };
        for grain in grains {
            plan.outcome.note_written(grain.origin_timestamp());
        }
        plan
    }
}

impl PgWriter {
    async fn plan(&self, grains: &[Grain]) -> Result<Plan, StoreError> {
        let (secs, nsecs): (Vec<i64>, Vec<i32>) =
            grains.iter().map(|g| split(g.origin_timestamp())).unzip();
        let client = self.shared.connection().await?;
        let sql = format!(
            "SELECT {} FROM grains g LEFT JOIN objects o ON o.id = g.object_id
             WHERE g.flow_id = $1
               AND (g.ts_sec, g.ts_nsec) IN (SELECT * FROM unnest($2::int8[], $3::int4[]))",
            grain_columns(true)
        );
        let statement = client.prepare_cached(&sql).await.map_err(pg_error)?;
        let rows = client
            .query(&statement, &[&self.flow, &secs, &nsecs])
            .await
            .map_err(pg_error)?;
        drop(client);
        let mut stored: HashMap<(i64, i32), StoredGrain> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let s = StoredGrain::from_row(row)?;
            stored.insert(split(s.timestamp), s);
        }
        let mut plan = Plan {
            outcome: BatchOutcome::default(),
            conflict: None,
            insert: Vec::new(),
            optimistic: false,
        };
        // Grains of this batch by timestamp, for duplicates within it.
        let mut batch: HashMap<(i64, i32), usize> = HashMap::new();
        for (i, grain) in grains.iter().enumerate() {
            let key = (secs[i], nsecs[i]);
            let same = if let Some(&j) = batch.get(&key) {
                Some(grains[j].same_identity(grain))
            } else if let Some(existing) = stored.get(&key) {
                Some(same_as_stored(&self.shared, existing, grain).await?)
            } else {
                None
            };
            match same {
                Some(true) => plan.outcome.unchanged += 1,
                Some(false) => {
                    plan.conflict = Some(grain.origin_timestamp());
                    break;
                }
                None => {
                    batch.insert(key, i);
                    plan.insert.push(i);
                    plan.outcome.note_written(grain.origin_timestamp());
                }
            }
        }
        Ok(plan)
    }

    /// One attempt: `Ok(None)` when a concurrent writer took a planned timestamp, or,
    /// `optimistic`, when any timestamp of the batch is taken (or repeated in it).
    async fn attempt(
        &self,
        grains: &[Grain],
        optimistic: bool,
    ) -> Result<Option<BatchResult>, StoreError> {
        let plan = if optimistic {
            Plan::all_new(grains)
        } else {
            self.plan(grains).await?
        };
        let inline_max = self.shared.inline_max;
        let now = Timestamp::now();

        // The object with the large payloads, stored before the transaction.
        let mut parts: Vec<Bytes> = Vec::new();
        let mut offsets: HashMap<usize, u64> = HashMap::new();
        let mut size = 0u64;
        for &i in &plan.insert {
            let payload = grains[i].payload();
            if payload.len() > inline_max {
                offsets.insert(i, size);
                size += payload.len() as u64;
                parts.push(payload.clone());
            }
        }
        let object = if parts.is_empty() {
            None
        } else {
            let key = Payloads::new_key(self.flow);
            let started = Instant::now();
            self.shared.payloads.put(&key, parts).await?;
            Some((key, started))
        };
        let discard = |object: &Option<(String, Instant)>| {
            if let Some((key, _)) = object {
                self.shared.payloads.discard(key.clone());
            }
        };

        let mut committing = false;
        let result = self
            .commit(grains, &plan, &offsets, size, &object, now, &mut committing)
            .await;
        match result {
            Ok(Some(done)) => Ok(Some(done)),
            Ok(None) => {
                discard(&object);
                Ok(None)
            }
            // A failed COMMIT may still have committed: the object stays (if nothing
            // references it, the garbage collector removes it).
            Err(e) if committing => Err(e),
            Err(e) => {
                discard(&object);
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        grains: &[Grain],
        plan: &Plan,
        offsets: &HashMap<usize, u64>,
        size: u64,
        object: &Option<(String, Instant)>,
        now: Timestamp,
        committing: &mut bool,
    ) -> Result<Option<BatchResult>, StoreError> {
        let mut client = self.shared.connection().await?;
        let txn = client.transaction().await.map_err(pg_error)?;
        // Shared lock: a concurrent flow update or delete waits for this commit.
        let row = txn
            .query_opt(
                "SELECT read_only FROM flows WHERE id = $1 FOR SHARE",
                &[&self.flow],
            )
            .await
            .map_err(pg_error)?;
        match row.map(|r| r.get::<_, bool>(0)) {
            None => return Err(StoreError::FlowNotFound(self.flow)),
            Some(true) => return Err(StoreError::ReadOnly(self.flow)),
            Some(false) => {}
        }
        if plan.insert.is_empty() {
            return Ok(Some(BatchResult {
                outcome: plan.outcome,
                conflict: plan.conflict,
            }));
        }
        let object_id: Option<i64> = match object {
            None => None,
            Some((key, _)) => {
                let live = i32::try_from(offsets.len()).unwrap_or(i32::MAX);
                let size = i64::try_from(size).unwrap_or(i64::MAX);
                let row = txn
                    .query_one(
                        "INSERT INTO objects (key, size, live) VALUES ($1, $2, $3) RETURNING id",
                        &[key, &size, &live],
                    )
                    .await
                    .map_err(pg_error)?;
                Some(row.get(0))
            }
        };
        let n = plan.insert.len();
        let mut secs = Vec::with_capacity(n);
        let mut nsecs = Vec::with_capacity(n);
        let mut end_secs: Vec<Option<i64>> = Vec::with_capacity(n);
        let mut end_nsecs: Vec<Option<i32>> = Vec::with_capacity(n);
        let mut headers: Vec<Vec<u8>> = Vec::with_capacity(n);
        let mut crcs = Vec::with_capacity(n);
        let mut lens = Vec::with_capacity(n);
        let mut inline: Vec<Option<&[u8]>> = Vec::with_capacity(n);
        let mut objects: Vec<Option<i64>> = Vec::with_capacity(n);
        let mut object_offsets: Vec<Option<i64>> = Vec::with_capacity(n);
        for &i in &plan.insert {
            let grain = &grains[i];
            let (s, ns) = split(grain.origin_timestamp());
            secs.push(s);
            nsecs.push(ns);
            let end = grain_end(grain).map(split);
            end_secs.push(end.map(|e| e.0));
            end_nsecs.push(end.map(|e| e.1));
            let mut header = Vec::new();
            if grain.creation_timestamp().is_some() {
                grain.encode_header(&mut header);
            } else {
                let mut stamped = grain.clone();
                stamped.set_creation_timestamp(Some(now));
                stamped.encode_header(&mut header);
            }
            headers.push(header);
            let payload = grain.payload();
            crcs.push(crc32c::crc32c(payload) as i32);
            lens.push(payload.len() as i64);
            match offsets.get(&i) {
                Some(&offset) => {
                    inline.push(None);
                    objects.push(object_id);
                    object_offsets.push(Some(offset as i64));
                }
                None => {
                    inline.push(Some(payload.as_ref()));
                    objects.push(None);
                    object_offsets.push(None);
                }
            }
        }
        // An optimistic plan inserts plainly and gives up at the first taken timestamp
        // (PostgreSQL logs the unique violation); a plan made against the stored rows
        // skips rows a concurrent writer has taken since and counts them. A plain insert
        // costs PostgreSQL a third to a half of one with ON CONFLICT (timed with psql:
        // 3.9-4.2 against 7.5-12 ms for 1,000 rows of 200-byte grains), which checks
        // every key before it inserts.
        let sql = if plan.optimistic {
            INSERT_GRAINS
        } else {
            INSERT_GRAINS_SKIPPING_TAKEN
        };
        let statement = txn.prepare_cached(sql).await.map_err(pg_error)?;
        let inserted = txn
            .execute(
                &statement,
                &[
                    &self.flow,
                    &secs,
                    &nsecs,
                    &end_secs,
                    &end_nsecs,
                    &headers,
                    &crcs,
                    &lens,
                    &inline,
                    &objects,
                    &object_offsets,
                ],
            )
            .await;
        let inserted = match inserted {
            Ok(inserted) => inserted,
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => return Ok(None),
            Err(e) => return Err(pg_error(e)),
        };
        if inserted != n as u64 {
            // A concurrent writer took a timestamp since the plan, or (optimistic) the
            // batch holds a stored or repeated timestamp: plan (again).
            return Ok(None);
        }
        if let (Some(first), Some(last)) = (plan.outcome.first, plan.outcome.last) {
            let range = TimeRange::new(Bound::Inclusive(first), Bound::Inclusive(last));
            let events = [PendingEvent {
                event_type: "flows/grains_added",
                flow: Some(self.flow),
                source: None,
                body: serde_json::json!({ "flow_id": self.flow, "timerange": range.to_string() }),
            }];
            record_events(&self.shared, &txn, &events).await?;
        }
        // The garbage collector deletes objects no row knows once they are older than
        // the grace period: an upload that old may be gone, so store it again.
        if let Some((_, started)) = object
            && started.elapsed() > self.shared.gc_grace / 2
        {
            tracing::warn!(flow_id = %self.flow, "a batch took too long to commit; retrying it");
            return Ok(None);
        }
        *committing = true;
        txn.commit().await.map_err(pg_error)?;
        // Woken before answering: a caller that commits and then waits on a watch it had
        // marked seen never misses its own commit.
        self.shared.notifier.notify(self.flow);
        Ok(Some(BatchResult {
            outcome: plan.outcome,
            conflict: plan.conflict,
        }))
    }
}

#[async_trait]
impl GrainWriter for PgWriter {
    async fn commit_batch(&self, grains: Vec<Grain>) -> Result<BatchResult, StoreError> {
        // A batch of small grains is first inserted as if all its timestamps were new,
        // the case of a writer appending: without the plan's lookup of every timestamp
        // and with a plain insert, which takes every row or fails at the first taken
        // timestamp; then the batch is planned. Batches with payloads for the object
        // store are planned first, so that a re-sent batch does not upload them again.
        let inline_max = self.shared.inline_max;
        if grains.iter().all(|g| g.payload().len() <= inline_max)
            && let Some(result) = self.attempt(&grains, true).await?
        {
            return Ok(result);
        }
        for attempt in 0..MAX_ATTEMPTS {
            if let Some(result) = self.attempt(&grains, false).await? {
                return Ok(result);
            }
            tracing::debug!(flow_id = %self.flow, attempt, "concurrent writers; planning the batch again");
            tokio::time::sleep(Duration::from_millis(5 << attempt.min(6))).await;
        }
        Err(StoreError::Unavailable(format!(
            "flow {}: concurrent writers kept taking the batch's timestamps",
            self.flow
        )))
    }
}

/// Deletes the grains of `flow` in `range` inside `txn`, releasing their objects;
/// returns how many were deleted.
pub async fn delete_range(
    txn: &Transaction<'_>,
    flow: FlowId,
    range: &TimeRange,
) -> Result<u64, StoreError> {
    let Some((lo, hi)) = range.bounds() else {
        return Ok(0);
    };
    let mut params: Vec<Box<dyn deadpool_postgres::tokio_postgres::types::ToSql + Sync + Send>> =
        vec![Box::new(flow)];
    let mut conditions = vec!["flow_id = $1".to_owned()];
    for (bound, lower) in [(lo, true), (hi, false)] {
        let (t, op) = match (bound, lower) {
            (Bound::Unbounded, _) => continue,
            (Bound::Inclusive(t), true) => (t, ">="),
            (Bound::Exclusive(t), true) => (t, ">"),
            (Bound::Inclusive(t), false) => (t, "<="),
            (Bound::Exclusive(t), false) => (t, "<"),
        };
        let (s, ns) = split(t);
        params.push(Box::new(s));
        params.push(Box::new(ns));
        let n = params.len();
        conditions.push(format!(
            "(ts_sec, ts_nsec) {op} (${}::int8, ${}::int4)",
            n - 1,
            n
        ));
    }
    let sql = format!(
        "WITH d AS (DELETE FROM grains WHERE {} RETURNING object_id),
              c AS (SELECT object_id, count(*) AS n FROM d
                    WHERE object_id IS NOT NULL GROUP BY object_id),
              u AS (UPDATE objects o SET live = o.live - c.n,
                      released_at = CASE WHEN o.live - c.n <= 0 THEN now() END
                    FROM c WHERE o.id = c.object_id RETURNING o.id)
         SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM u)",
        conditions.join(" AND ")
    );
    let refs: Vec<&(dyn deadpool_postgres::tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn deadpool_postgres::tokio_postgres::types::ToSql + Sync))
        .collect();
    let row = txn.query_one(&sql, &refs).await.map_err(pg_error)?;
    let deleted: i64 = row.get(0);
    Ok(u64::try_from(deleted).unwrap_or(0))
}
