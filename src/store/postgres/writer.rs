//! The write path: plan a batch against what is stored, store its object, insert its
//! rows in one transaction (a batch of small grains is first inserted as if all were new,
//! and planned only if that fails); and range deletes with object accounting.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::GenericClient;
use deadpool_postgres::tokio_postgres::Statement;
use deadpool_postgres::tokio_postgres::error::SqlState;

use super::payloads::Payloads;
use super::snapshot::{StoredGrain, grain_columns, load};
use super::{
    LOCK_FLOW, PendingEvent, Shared, grain_end, join, pg_error, record_events, runs, split,
};
use crate::grain::Grain;
use crate::store::{BatchOutcome, BatchResult, FlowId, GrainWriter, StoreError};
use crate::time::{Bound, TimeRange, Timestamp};

/// The insert of a batch's rows, as a literal for `concat!`.
macro_rules! insert_grains {
    () => {
        "INSERT INTO grains (flow_id, ts_sec, ts_nsec, end_sec, end_nsec, header, crc, len,
           inline_payload, object_id, object_offset, last_sec, last_nsec, n_grains, run)
         SELECT $1, * FROM unnest($2::int8[], $3::int4[], $4::int8[], $5::int4[], $6::bytea[],
           $7::int4[], $8::int8[], $9::bytea[], $10::int8[], $11::int8[], $12::int8[],
           $13::int4[], $14::int4[], $15::bytea[])"
    };
}

/// Inserts rows, failing at the first taken timestamp.
const INSERT_GRAINS: &str = insert_grains!();

/// Inserts rows, skipping timestamps taken since the batch was planned.
const INSERT_GRAINS_SKIPPING_TAKEN: &str = concat!(insert_grains!(), " ON CONFLICT DO NOTHING");

/// Whether the flow is writable: `read_only`, none for an unknown flow, taking a shared
/// lock on the flow's row (a concurrent flow update or delete waits for the commit).
pub(super) const FLOW_WRITABLE: &str = "SELECT read_only FROM flows WHERE id = $1 FOR SHARE";

/// The row of a batch's object, with the number of grains in it (`live`).
const INSERT_OBJECT: &str =
    "INSERT INTO objects (key, size, live) VALUES ($1, $2, $3) RETURNING id";

/// Whether a stored row of flow `$1` holds a grain within `($2, $3)..=($4, $5)`: a row
/// keyed in that span, or a run keyed before it that reaches into it.
const MEETS_STORED: &str = "SELECT EXISTS (SELECT 1 FROM grains WHERE flow_id = $1
       AND (ts_sec, ts_nsec) >= ($2::int8, $3::int4)
       AND (ts_sec, ts_nsec) <= ($4::int8, $5::int4))
     OR EXISTS (SELECT 1 FROM (SELECT last_sec, last_nsec FROM grains
       WHERE flow_id = $1 AND (ts_sec, ts_nsec) < ($2::int8, $3::int4)
       ORDER BY ts_sec DESC, ts_nsec DESC LIMIT 1) p
       WHERE (p.last_sec, p.last_nsec) >= ($2::int8, $3::int4))";

/// The columns of rows to insert, as arrays for one insert.
#[derive(Default)]
struct Rows<'a> {
    secs: Vec<i64>,
    nsecs: Vec<i32>,
    end_secs: Vec<Option<i64>>,
    end_nsecs: Vec<Option<i32>>,
    headers: Vec<&'a [u8]>,
    crcs: Vec<i32>,
    lens: Vec<i64>,
    inline: Vec<Option<&'a [u8]>>,
    objects: Vec<Option<i64>>,
    object_offsets: Vec<Option<i64>>,
    last_secs: Vec<Option<i64>>,
    last_nsecs: Vec<Option<i32>>,
    counts: Vec<i32>,
    runs: Vec<Option<&'a [u8]>>,
}

impl<'a> Rows<'a> {
    fn len(&self) -> usize {
        self.secs.len()
    }

    fn key(&mut self, timestamp: Timestamp, end: Option<Timestamp>) {
        let (s, ns) = split(timestamp);
        self.secs.push(s);
        self.nsecs.push(ns);
        let end = end.map(split);
        self.end_secs.push(end.map(|e| e.0));
        self.end_nsecs.push(end.map(|e| e.1));
    }

    /// A single grain's row: its payload inline, or at `object` (id, offset).
    #[allow(clippy::too_many_arguments)]
    fn single(
        &mut self,
        timestamp: Timestamp,
        end: Option<Timestamp>,
        header: &'a [u8],
        crc: u32,
        len: u64,
        inline: Option<&'a [u8]>,
        object: Option<(i64, u64)>,
    ) {
        self.key(timestamp, end);
        self.headers.push(header);
        self.crcs.push(crc as i32);
        self.lens.push(i64::try_from(len).unwrap_or(i64::MAX));
        self.inline.push(inline);
        self.objects.push(object.map(|o| o.0));
        self.object_offsets
            .push(object.map(|o| i64::try_from(o.1).unwrap_or(i64::MAX)));
        self.last_secs.push(None);
        self.last_nsecs.push(None);
        self.counts.push(1);
        self.runs.push(None);
    }

    /// A run's row (see [`runs`]): keyed by its first grain, `end` its last grain's;
    /// `object` (id, offset) where its payloads are when it does not hold them.
    fn run(
        &mut self,
        first: Timestamp,
        last: Timestamp,
        end: Option<Timestamp>,
        count: usize,
        run: &'a [u8],
        object: Option<(i64, u64)>,
    ) {
        self.key(first, end);
        self.headers.push(&[]);
        self.crcs.push(0);
        self.lens.push(run.len() as i64);
        self.inline.push(None);
        self.objects.push(object.map(|o| o.0));
        self.object_offsets
            .push(object.map(|o| i64::try_from(o.1).unwrap_or(i64::MAX)));
        let (s, ns) = split(last);
        self.last_secs.push(Some(s));
        self.last_nsecs.push(Some(ns));
        self.counts.push(i32::try_from(count).unwrap_or(i32::MAX));
        self.runs.push(Some(run));
    }

    /// Inserts the rows of `flow` with `statement` ([`INSERT_GRAINS`] or
    /// [`INSERT_GRAINS_SKIPPING_TAKEN`], prepared); returns how many were inserted.
    async fn insert(
        &self,
        txn: &impl GenericClient,
        flow: FlowId,
        statement: &Statement,
    ) -> Result<u64, deadpool_postgres::tokio_postgres::Error> {
        txn.execute(
            statement,
            &[
                &flow,
                &self.secs,
                &self.nsecs,
                &self.end_secs,
                &self.end_nsecs,
                &self.headers,
                &self.crcs,
                &self.lens,
                &self.inline,
                &self.objects,
                &self.object_offsets,
                &self.last_secs,
                &self.last_nsecs,
                &self.counts,
                &self.runs,
            ],
        )
        .await
    }
}

/// A stored run, as read to split it.
struct FoundRun {
    /// Its key: its first grain's timestamp.
    first: Timestamp,
    /// Its encoding.
    run: Bytes,
    /// Its object's id and where its payloads start there, when it does not hold them.
    object: Option<(i64, u64)>,
}

/// The columns of a run to split, as [`FoundRun::from_row`] reads them.
const FOUND_RUN_COLUMNS: &str = "ts_sec, ts_nsec, run, object_id, object_offset";

impl FoundRun {
    fn from_row(row: &deadpool_postgres::tokio_postgres::Row) -> Result<FoundRun, StoreError> {
        let object = match (row.get::<_, Option<i64>>(3), row.get::<_, Option<i64>>(4)) {
            (Some(id), Some(offset)) => Some((
                id,
                u64::try_from(offset)
                    .map_err(|_| StoreError::Corrupt("a run's object offset is negative".into()))?,
            )),
            _ => None,
        };
        Ok(FoundRun {
            first: join(row.get(0), row.get(1))?,
            run: Bytes::from(row.get::<_, Vec<u8>>(2)),
            object,
        })
    }
}

/// The last row of `flow` keyed before `t` (`op` `"<"`) or at or before it (`"<="`),
/// if it is a run whose last grain is after `t` (`reaches` `">"`) or at or after it
/// (`">="`).
async fn run_reaching(
    txn: &impl GenericClient,
    flow: FlowId,
    t: Timestamp,
    op: &str,
    reaches: &str,
) -> Result<Option<FoundRun>, StoreError> {
    // The nearest row first, then the test: a filter inside the ordered scan could walk
    // back over every earlier row.
    let sql = format!(
        "SELECT {FOUND_RUN_COLUMNS} FROM (SELECT ts_sec, ts_nsec, last_sec, last_nsec, run,
             object_id, object_offset
           FROM grains WHERE flow_id = $1 AND (ts_sec, ts_nsec) {op} ($2::int8, $3::int4)
           ORDER BY ts_sec DESC, ts_nsec DESC LIMIT 1) p
         WHERE run IS NOT NULL AND (last_sec, last_nsec) {reaches} ($2::int8, $3::int4)"
    );
    let statement = txn.prepare_cached(&sql).await.map_err(pg_error)?;
    let (sec, nsec) = split(t);
    let Some(row) = txn
        .query_opt(&statement, &[&flow, &sec, &nsec])
        .await
        .map_err(pg_error)?
    else {
        return Ok(None);
    };
    FoundRun::from_row(&row).map(Some)
}

/// The members of the run keyed `first`, a damaged run named in the error.
fn decode_run(first: Timestamp, run: &Bytes) -> Result<Vec<runs::Member>, StoreError> {
    runs::decode(run).map_err(|e| match e {
        StoreError::Corrupt(what) => StoreError::Corrupt(format!("{what} (the run at {first})")),
        e => e,
    })
}

/// Replaces runs of `flow` by a single row for each of their grains, inside `txn` (which
/// holds the flow's lock). A grain whose payload is in the run's object keeps it there:
/// its object's count of grains does not change.
async fn split_runs(
    txn: &impl GenericClient,
    flow: FlowId,
    found: &[FoundRun],
) -> Result<(), StoreError> {
    if found.is_empty() {
        return Ok(());
    }
    let mut members = Vec::new();
    for found in found {
        for member in decode_run(found.first, &found.run)? {
            let object = match (&member.payload, found.object) {
                (Some(_), _) => None,
                (None, Some((id, base))) => Some((id, member.object_offset(base)?)),
                (None, None) => {
                    return Err(StoreError::Corrupt(format!(
                        "the run at {} has no object for its payloads",
                        found.first
                    )));
                }
            };
            members.push((member, object));
        }
    }
    let (secs, nsecs): (Vec<i64>, Vec<i32>) = found.iter().map(|f| split(f.first)).unzip();
    txn.execute(
        "DELETE FROM grains WHERE flow_id = $1
           AND (ts_sec, ts_nsec) IN (SELECT * FROM unnest($2::int8[], $3::int4[]))",
        &[&flow, &secs, &nsecs],
    )
    .await
    .map_err(pg_error)?;
    let mut rows = Rows::default();
    for (m, object) in &members {
        rows.single(
            m.timestamp,
            m.end,
            &m.header,
            m.crc,
            m.len,
            m.payload.as_deref(),
            *object,
        );
    }
    let insert = txn.prepare_cached(INSERT_GRAINS).await.map_err(pg_error)?;
    rows.insert(txn, flow, &insert).await.map_err(pg_error)?;
    Ok(())
}

/// How often a batch is planned again when concurrent writers keep taking its
/// timestamps before it commits.
const MAX_ATTEMPTS: usize = 8;

/// Commits batches of one flow.
pub struct PgWriter {
    shared: Arc<Shared>,
    flow: FlowId,
    /// Whether the flow was looked up when the session opened (not taken as writable
    /// from [`super::writable`]).
    checked: bool,
}

impl PgWriter {
    /// A writer of `flow`, `checked` when the flow was looked up as the session opened.
    pub fn new(shared: Arc<Shared>, flow: FlowId, checked: bool) -> PgWriter {
        PgWriter {
            shared,
            flow,
            checked,
        }
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
    /// The runs keyed before one of `timestamps` whose span reaches it.
    async fn runs_around(
        &self,
        txn: &impl GenericClient,
        timestamps: Vec<Timestamp>,
    ) -> Result<Vec<FoundRun>, StoreError> {
        let (secs, nsecs): (Vec<i64>, Vec<i32>) = timestamps.into_iter().map(split).unzip();
        let statement = txn
            .prepare_cached(
                "SELECT DISTINCT ON (r.ts_sec, r.ts_nsec) r.ts_sec, r.ts_nsec, r.run,
                   r.object_id, r.object_offset
                 FROM unnest($2::int8[], $3::int4[]) t (s, n)
                 CROSS JOIN LATERAL (SELECT ts_sec, ts_nsec, last_sec, last_nsec, run,
                     object_id, object_offset
                   FROM grains h WHERE h.flow_id = $1 AND (h.ts_sec, h.ts_nsec) < (t.s, t.n)
                   ORDER BY h.ts_sec DESC, h.ts_nsec DESC LIMIT 1) r
                 WHERE r.run IS NOT NULL AND (r.last_sec, r.last_nsec) >= (t.s, t.n)",
            )
            .await
            .map_err(pg_error)?;
        let rows = txn
            .query(&statement, &[&self.flow, &secs, &nsecs])
            .await
            .map_err(pg_error)?;
        rows.iter().map(FoundRun::from_row).collect()
    }

    async fn plan(&self, grains: &[Grain]) -> Result<Plan, StoreError> {
        let (secs, nsecs): (Vec<i64>, Vec<i32>) =
            grains.iter().map(|g| split(g.origin_timestamp())).unzip();
        let client = self.shared.connection().await?;
        // For each timestamp, the row holding it: the last keyed at or before it, if it is
        // keyed at it or is a run reaching it (a damaged run elsewhere is not read).
        let sql = format!(
            "SELECT DISTINCT ON (g.ts_sec, g.ts_nsec) {}
             FROM unnest($2::int8[], $3::int4[]) t (s, n)
             CROSS JOIN LATERAL (SELECT * FROM grains h
               WHERE h.flow_id = $1 AND (h.ts_sec, h.ts_nsec) <= (t.s, t.n)
               ORDER BY h.ts_sec DESC, h.ts_nsec DESC LIMIT 1) g
             LEFT JOIN objects o ON o.id = g.object_id
             WHERE (g.ts_sec, g.ts_nsec) = (t.s, t.n) OR (g.last_sec, g.last_nsec) >= (t.s, t.n)",
            grain_columns(true)
        );
        let statement = client.prepare_cached(&sql).await.map_err(pg_error)?;
        let rows = client
            .query(&statement, &[&self.flow, &secs, &nsecs])
            .await
            .map_err(pg_error)?;
        drop(client);
        let mut found = Vec::with_capacity(rows.len());
        for row in &rows {
            StoredGrain::from_row(row, &mut found)?;
        }
        let mut stored: HashMap<(i64, i32), StoredGrain> =
            found.into_iter().map(|s| (split(s.timestamp), s)).collect();
        // The length and checksum of each stored grain at a timestamp of the batch: a
        // grain that differs in them differs, without loading the stored one.
        let sums: HashMap<(i64, i32), (u64, u32)> =
            stored.iter().map(|(k, s)| (*k, (s.len, s.crc))).collect();
        let same_sums: Vec<Option<bool>> = grains
            .iter()
            .enumerate()
            .map(|(i, grain)| {
                let payload = grain.payload();
                sums.get(&(secs[i], nsecs[i])).map(|&(len, crc)| {
                    len == payload.len() as u64 && crc == crc32c::crc32c(payload)
                })
            })
            .collect();
        // The stored grains the batch may repeat (same length and checksum), up to the
        // first it certainly does not (where the plan stops), loaded together: those in
        // one object are fetched in as few requests as their ranges allow (a re-sent
        // batch whose payloads are in an object).
        let mut candidates: Vec<StoredGrain> = Vec::new();
        for i in 0..grains.len() {
            match same_sums[i] {
                Some(false) => break,
                Some(true) => candidates.extend(stored.remove(&(secs[i], nsecs[i]))),
                None => {}
            }
        }
        let loaded = load(&self.shared, &candidates).await?;
        // Each candidate's grain as stored, by timestamp.
        let mut same_as: HashMap<(i64, i32), Result<Grain, StoreError>> = candidates
            .iter()
            .map(|s| split(s.timestamp))
            .zip(loaded)
            .collect();
        let mut plan = Plan {
            outcome: BatchOutcome::default(),
            conflict: None,
            insert: Vec::new(),
            optimistic: false,
        };
        // Grains of this batch by timestamp (new or found unchanged), for later ones at the
        // same timestamp.
        let mut batch: HashMap<(i64, i32), usize> = HashMap::new();
        for (i, grain) in grains.iter().enumerate() {
            let key = (secs[i], nsecs[i]);
            let same = if let Some(&j) = batch.get(&key) {
                Some(grains[j].same_identity(grain))
            } else if let Some(same_sums) = same_sums[i] {
                // A later grain at this timestamp is compared with this one (in `batch`
                // from here on), so each stored grain is looked at once.
                match same_as.remove(&key) {
                    _ if !same_sums => Some(false),
                    Some(Ok(existing)) => Some(existing.same_identity(grain)),
                    Some(Err(e)) => return Err(e),
                    // Loaded up to the first certain difference, where this loop stops
                    // too: every grain before it with the same sums was loaded.
                    None => {
                        return Err(StoreError::Corrupt(format!(
                            "the stored grain at {} was not loaded",
                            grain.origin_timestamp()
                        )));
                    }
                }
            } else {
                None
            };
            match same {
                Some(true) => {
                    batch.insert(key, i);
                    plan.outcome.unchanged += 1;
                }
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
        let mut plan = if optimistic {
            Plan::all_new(grains)
        } else {
            self.plan(grains).await?
        };
        // An appending batch in time order, to be cut into runs; one with a repeated
        // timestamp is planned (the rows' spans must not overlap, see `runs`).
        if plan.optimistic {
            plan.insert.sort_by_key(|&i| grains[i].origin_timestamp());
            let stamp = |k: usize| grains[plan.insert[k]].origin_timestamp();
            if (1..plan.insert.len()).any(|k| stamp(k - 1) == stamp(k)) {
                return Ok(None);
            }
        }
        let inline_max = self.shared.inline_max;
        let now = Timestamp::now();
        // An appending batch of many payloads keeps them all in its object, in time
        // order, and its runs only their keys and headers (see `runs`).
        let in_object = plan.optimistic
            && plan
                .insert
                .iter()
                .map(|&i| grains[i].payload().len() as u64)
                .sum::<u64>()
                > self.shared.inline_batch_max;

        // The object with the large payloads (or all of them), stored before the
        // transaction.
        let mut parts: Vec<Bytes> = Vec::new();
        let mut offsets: HashMap<usize, u64> = HashMap::new();
        let mut size = 0u64;
        for &i in &plan.insert {
            let payload = grains[i].payload();
            if in_object || payload.len() > inline_max {
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
            .commit(
                grains,
                &plan,
                in_object,
                &offsets,
                size,
                &object,
                now,
                &mut committing,
            )
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
        in_object: bool,
        offsets: &HashMap<usize, u64>,
        size: u64,
        object: &Option<(String, Instant)>,
        now: Timestamp,
        committing: &mut bool,
    ) -> Result<Option<BatchResult>, StoreError> {
        // An optimistic plan's grains are in time order already (see `attempt`).
        let insert = &plan.insert;
        let txn = self.shared.transaction().await?;
        let client = txn.client();
        // `BEGIN` and the checks go to the server together (one round trip) and run in
        // order: a shared lock on the flow (a concurrent flow update or delete waits for
        // this commit), the flow's write lock, and, for an appending batch, whether its
        // span meets a stored row, seen after the lock. Prepared first (once per
        // connection), so that each is sent when first polled, in this order. They only
        // read and lock: sent behind a `BEGIN` that failed, they change nothing.
        let writable = client
            .prepare_cached(FLOW_WRITABLE)
            .await
            .map_err(pg_error)?;
        let check = async {
            let row = client.query_opt(&writable, &[&self.flow]).await;
            super::writable_from(self.flow, row.map_err(pg_error)?.as_ref())
        };
        if insert.is_empty() {
            // Nothing to write: the check alone, outside a transaction, answers.
            check.await?;
            return Ok(Some(BatchResult {
                outcome: plan.outcome,
                conflict: plan.conflict,
            }));
        }
        let lock = client.prepare_cached(LOCK_FLOW).await.map_err(pg_error)?;
        let meets = client
            .prepare_cached(MEETS_STORED)
            .await
            .map_err(pg_error)?;
        let insert_object = client
            .prepare_cached(INSERT_OBJECT)
            .await
            .map_err(pg_error)?;
        let (schema_key, flow_key) = self.shared.flow_lock_key(self.flow);
        let locked = async {
            client
                .execute(&lock, &[&schema_key, &flow_key])
                .await
                .map_err(pg_error)
        };
        let ((s0, n0), (s1, n1)) = (
            split(grains[insert[0]].origin_timestamp()),
            split(grains[insert[insert.len() - 1]].origin_timestamp()),
        );
        let meets = async {
            if !plan.optimistic {
                return Ok(false);
            }
            let row = client
                .query_one(&meets, &[&self.flow, &s0, &n0, &s1, &n1])
                .await
                .map_err(pg_error)?;
            Ok::<bool, StoreError>(row.get(0))
        };
        let (begun, check, locked, meets) =
            futures::join!(txn.begin("BEGIN"), check, locked, meets);
        begun.map_err(pg_error)?;
        check?;
        locked?;
        if meets? {
            return Ok(None);
        }
        // The object's row only once the transaction is known to have begun: sent behind
        // a `BEGIN` that failed, it would commit on its own.
        let object_id: Option<i64> = match object {
            None => None,
            Some((key, _)) => {
                let live = i32::try_from(offsets.len()).unwrap_or(i32::MAX);
                let size = i64::try_from(size).unwrap_or(i64::MAX);
                let row = client
                    .query_one(&insert_object, &[key, &size, &live])
                    .await
                    .map_err(pg_error)?;
                Some(row.get(0))
            }
        };
        if !plan.optimistic {
            // A new grain inside a run's span splits the run into single rows first.
            let timestamps = insert.iter().map(|&i| grains[i].origin_timestamp());
            let found = self.runs_around(client, timestamps.collect()).await?;
            split_runs(client, self.flow, &found).await?;
        }
        let headers: Vec<Vec<u8>> = insert
            .iter()
            .map(|&i| {
                let grain = &grains[i];
                let mut header = Vec::new();
                if grain.creation_timestamp().is_some() {
                    grain.encode_header(&mut header);
                } else {
                    let mut stamped = grain.clone();
                    stamped.set_creation_timestamp(Some(now));
                    stamped.encode_header(&mut header);
                }
                header
            })
            .collect();
        let crcs: Vec<u32> = insert
            .iter()
            .map(|&i| crc32c::crc32c(grains[i].payload()))
            .collect();
        // An appending batch's small grains in time order become runs.
        let groups = if plan.optimistic {
            run_groups(grains, insert, &headers, in_object)
        } else {
            (0..insert.len()).map(|k| k..k + 1).collect()
        };
        // Each group's run, encoded (none for a single grain).
        let encoded: Vec<Option<Vec<u8>>> = groups
            .iter()
            .map(|group| {
                (group.len() > 1).then(|| {
                    let mut run = runs::RunBuilder::new(in_object);
                    for k in group.clone() {
                        let grain = &grains[insert[k]];
                        run.push(
                            grain.origin_timestamp(),
                            grain_end(grain),
                            &headers[k],
                            crcs[k],
                            grain.payload(),
                        );
                    }
                    run.finish()
                })
            })
            .collect();
        let mut rows = Rows::default();
        for (group, run) in groups.iter().zip(&encoded) {
            if let Some(run) = run {
                let (first, last) = (&grains[insert[group.start]], &grains[insert[group.end - 1]]);
                // Its payloads follow one another in the object from its first one's.
                let object = match (in_object, object_id) {
                    (true, Some(id)) => Some((id, offsets[&insert[group.start]])),
                    (true, None) => {
                        return Err(StoreError::Corrupt(
                            "a batch's payloads were to be in an object it does not have".into(),
                        ));
                    }
                    (false, _) => None,
                };
                rows.run(
                    first.origin_timestamp(),
                    last.origin_timestamp(),
                    grain_end(last),
                    group.len(),
                    run,
                    object,
                );
                continue;
            }
            let k = group.start;
            let i = insert[k];
            let grain = &grains[i];
            let payload = grain.payload();
            let (inline, object) = match offsets.get(&i) {
                Some(&offset) => (None, object_id.map(|id| (id, offset))),
                None => (Some(payload.as_ref()), None),
            };
            rows.single(
                grain.origin_timestamp(),
                grain_end(grain),
                &headers[k],
                crcs[k],
                payload.len() as u64,
                inline,
                object,
            );
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
        // The event and its notification go to the server with the insert (one round
        // trip); if the insert fails or falls short, the transaction is rolled back with
        // them.
        let events: Vec<PendingEvent> = match (plan.outcome.first, plan.outcome.last) {
            (Some(first), Some(last)) => {
                let range = TimeRange::new(Bound::Inclusive(first), Bound::Inclusive(last));
                vec![PendingEvent {
                    event_type: "flows/grains_added",
                    flow: Some(self.flow),
                    source: None,
                    body: serde_json::json!({ "flow_id": self.flow, "timerange": range.to_string() }),
                }]
            }
            _ => Vec::new(),
        };
        // Prepared first, so that the insert is sent first.
        let insert = client.prepare_cached(sql).await.map_err(pg_error)?;
        let (inserted, recorded) = futures::join!(
            rows.insert(client, self.flow, &insert),
            record_events(&self.shared, client, &events)
        );
        let inserted = match inserted {
            Ok(inserted) => inserted,
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => return Ok(None),
            Err(e) => return Err(pg_error(e)),
        };
        if inserted != rows.len() as u64 {
            // A concurrent writer took a timestamp since the plan, or (optimistic) the
            // batch holds a stored or repeated timestamp: plan (again).
            return Ok(None);
        }
        recorded?;
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

/// The batch's grains to insert (`insert`, with their `headers`) cut into groups of
/// consecutive positions: runs in strictly increasing time order within the limits of
/// [`runs`], of small grains or (`in_object`: their payloads are in the batch's object)
/// of any, every other grain a group of its own.
fn run_groups(
    grains: &[Grain],
    insert: &[usize],
    headers: &[Vec<u8>],
    in_object: bool,
) -> Vec<std::ops::Range<usize>> {
    let joinable = |grain: &Grain| in_object || grain.payload().len() <= runs::MAX_PAYLOAD;
    let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
    let mut bytes = 0;
    for (k, &i) in insert.iter().enumerate() {
        let grain = &grains[i];
        let has_end = grain_end(grain).is_some();
        let payload = grain.payload().len();
        let joins = groups.last().and_then(|group| {
            let previous = &grains[insert[group.end - 1]];
            let member = runs::member_len(
                Some(&headers[group.end - 1]),
                &headers[k],
                has_end,
                payload,
                in_object,
            );
            (joinable(&grains[insert[group.start]])
                && joinable(grain)
                && previous.origin_timestamp() < grain.origin_timestamp()
                && runs::fits(group.len(), bytes, member))
            .then_some(member)
        });
        match (groups.last_mut(), joins) {
            (Some(group), Some(member)) => {
                group.end = k + 1;
                bytes += member;
            }
            _ => {
                groups.push(k..k + 1);
                bytes = runs::EMPTY_LEN
                    + runs::member_len(None, &headers[k], has_end, payload, in_object);
            }
        }
    }
    groups
}

#[async_trait]
impl GrainWriter for PgWriter {
    /// A session taken as writable from what this replica saw a moment ago looks the
    /// flow up now; one looked up when it opened needs nothing more.
    async fn confirm(&self) -> Result<(), StoreError> {
        if self.checked {
            return Ok(());
        }
        let flow = self.flow;
        let checked = self
            .shared
            .read(|client| async move { super::check_writable(&client, flow).await })
            .await;
        self.refused(checked)
    }

    async fn commit_batch(&self, grains: Vec<Grain>) -> Result<BatchResult, StoreError> {
        let result = self.store_batch(grains).await;
        self.refused(result)
    }
}

impl PgWriter {
    /// Passes `result` on; one that found the flow deleted or read-only also makes this
    /// replica forget it as writable, so that the next session looks it up as it opens.
    fn refused<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if matches!(
            result,
            Err(StoreError::FlowNotFound(_) | StoreError::ReadOnly(_))
        ) {
            self.shared.writable.changed(self.flow);
        }
        result
    }

    /// Commits `grains` (see [`GrainWriter::commit_batch`]).
    async fn store_batch(&self, grains: Vec<Grain>) -> Result<BatchResult, StoreError> {
        // A batch of small grains is first inserted as if all its timestamps were new,
        // the case of a writer appending: without the plan's lookup of every timestamp
        // and with a plain insert, which takes every row or fails at the first taken
        // timestamp; then the batch is planned. Batches with large payloads are planned
        // first, so that a re-sent batch does not upload them again. (A re-sent batch of
        // small grains whose payloads add up to more than `inline_batch_max` is uploaded
        // once more, and the upload deleted, before its plan finds it stored.)
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
/// returns how many were deleted. A run the range cuts through is split into single rows
/// first (see [`runs`]).
pub async fn delete_range(
    shared: &Shared,
    txn: &impl GenericClient,
    flow: FlowId,
    range: &TimeRange,
) -> Result<u64, StoreError> {
    let Some((lo, hi)) = range.bounds() else {
        return Ok(0);
    };
    shared.lock_flow(txn, flow).await?;
    let mut cut: Vec<FoundRun> = Vec::new();
    // The runs reaching into the range from before it and out of it past its end.
    let candidates = [
        match lo {
            Bound::Inclusive(t) => Some((t, "<", ">=")),
            Bound::Exclusive(t) => Some((t, "<=", ">")),
            Bound::Unbounded => None,
        },
        match hi {
            Bound::Inclusive(t) => Some((t, "<=", ">")),
            Bound::Exclusive(t) => Some((t, "<", ">=")),
            Bound::Unbounded => None,
        },
    ];
    for (t, op, reaches) in candidates.into_iter().flatten() {
        if let Some(found) = run_reaching(txn, flow, t, op, reaches).await?
            && !cut.iter().any(|f| f.first == found.first)
        {
            let members = decode_run(found.first, &found.run)?;
            let inside = members
                .iter()
                .filter(|m| range.contains(m.timestamp))
                .count();
            if inside != 0 && inside != members.len() {
                cut.push(found);
            }
        }
    }
    split_runs(txn, flow, &cut).await?;
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
        "WITH d AS (DELETE FROM grains WHERE {} RETURNING object_id, n_grains),
              c AS (SELECT object_id, sum(n_grains) AS n FROM d
                    WHERE object_id IS NOT NULL GROUP BY object_id),
              u AS (UPDATE objects o SET live = o.live - c.n,
                      released_at = CASE WHEN o.live - c.n <= 0 THEN now() END
                    FROM c WHERE o.id = c.object_id RETURNING o.id)
         SELECT (SELECT COALESCE(sum(n_grains), 0)::int8 FROM d), (SELECT count(*) FROM u)",
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
