//! A read session's snapshot: a pooled connection holding a `REPEATABLE READ`, read-only
//! transaction; pages are keyset queries in it, payloads ranged object reads.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::tokio_postgres::Row;
use deadpool_postgres::tokio_postgres::types::ToSql;

use super::payloads::Fetched;
use super::txn::Txn;
use super::{Shared, corrupt, extent_join, extent_of, extent_sql, join, pg_error, runs, split};
use crate::grain::wire::stored_gbhd;
use crate::grain::{Grain, GrainHeader};
use crate::gsf::GsfBlocks;
use crate::store::{FlowId, GrainPage, GsfPage, Order, PageLimit, Snapshot, StoreError};
use crate::time::{Bound, TimeRange, Timestamp};

/// The columns of a grain row, in the order [`StoredGrain::from_row`] reads them; the
/// inline payload of a single grain is selected only when `with_payload` (a run always
/// is: its members' headers are in it).
pub fn grain_columns(with_payload: bool) -> &'static str {
    if with_payload {
        "g.ts_sec, g.ts_nsec, g.header, g.crc, g.len, g.inline_payload, o.key, g.object_offset, \
         g.run"
    } else {
        "g.ts_sec, g.ts_nsec, g.header, g.crc, g.len, NULL::bytea, o.key, g.object_offset, g.run"
    }
}

/// A grain row as stored.
#[derive(Debug)]
pub struct StoredGrain {
    /// The origin timestamp.
    pub timestamp: Timestamp,
    /// The header's binary form.
    pub header: Bytes,
    /// The payload's crc32c.
    pub crc: u32,
    /// The payload's length.
    pub len: u64,
    /// The payload, when inline (and selected).
    pub inline: Option<Bytes>,
    /// The object and offset of the payload when it is not inline.
    /// (The key is shared by every grain of a run that left its payloads in an object.)
    pub object: Option<(Arc<str>, u64)>,
}

impl StoredGrain {
    /// Appends the grains of a row selected with [`grain_columns`] to `out`: the row's
    /// own, or its run's members in time order.
    pub fn from_row(row: &Row, out: &mut Vec<StoredGrain>) -> Result<(), StoreError> {
        let Some(run) = row.get::<_, Option<Vec<u8>>>(8) else {
            out.push(StoredGrain::single(row)?);
            return Ok(());
        };
        let members = runs::decode(&Bytes::from(run)).map_err(|e| match e {
            StoreError::Corrupt(what) => StoreError::Corrupt(format!(
                "{what} (the run at {})",
                join(row.get(0), row.get(1)).map_or_else(|e| e.to_string(), |t| t.to_string())
            )),
            e => e,
        })?;
        // A run whose payloads are in an object: where its first payload starts.
        let object = match (
            row.get::<_, Option<String>>(6),
            row.get::<_, Option<i64>>(7),
        ) {
            (Some(key), Some(base)) => {
                Some((Arc::<str>::from(key), u64::try_from(base).map_err(corrupt)?))
            }
            _ => None,
        };
        for m in members {
            let object = match (&m.payload, &object) {
                (Some(_), _) => None,
                // Nothing to fetch (an object store refuses an empty range).
                (None, _) if m.len == 0 => None,
                (None, Some((key, base))) => Some((key.clone(), m.object_offset(*base)?)),
                (None, None) => {
                    return Err(StoreError::Corrupt(format!(
                        "the run holding the grain at {} has no object for its payloads",
                        m.timestamp
                    )));
                }
            };
            out.push(StoredGrain {
                timestamp: m.timestamp,
                header: m.header,
                crc: m.crc,
                len: m.len,
                inline: m.payload.or_else(|| object.is_none().then(Bytes::new)),
                object,
            });
        }
        Ok(())
    }

    /// Reads the row of a single grain.
    fn single(row: &Row) -> Result<StoredGrain, StoreError> {
        let timestamp = join(row.get(0), row.get(1))?;
        let len: i64 = row.get(4);
        let key: Option<String> = row.get(6);
        let offset: Option<i64> = row.get(7);
        let object = match (key, offset) {
            (Some(key), Some(offset)) => Some((
                Arc::<str>::from(key),
                u64::try_from(offset).map_err(corrupt)?,
            )),
            (None, None) => None,
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "the grain at {timestamp} has half an object reference"
                )));
            }
        };
        let len = u64::try_from(len).map_err(corrupt)?;
        let mut inline = row.get::<_, Option<Vec<u8>>>(5).map(Bytes::from);
        // An empty payload in an object (split from a run that left its payloads there)
        // has nothing to fetch: an object store refuses an empty range.
        let object = object.filter(|_| len > 0);
        if len == 0 && inline.is_none() {
            inline = Some(Bytes::new());
        }
        Ok(StoredGrain {
            timestamp,
            header: Bytes::from(row.get::<_, Vec<u8>>(2)),
            crc: row.get::<_, i32>(3) as u32,
            len,
            inline,
            object,
        })
    }

    /// Checks `payload` against the stored length and checksum.
    pub fn verify(&self, payload: &[u8]) -> Result<(), StoreError> {
        self.verify_pieces(&[payload])
    }

    /// As [`StoredGrain::verify`], for a payload in pieces.
    pub fn verify_pieces(&self, pieces: &[impl AsRef<[u8]>]) -> Result<(), StoreError> {
        let (len, crc) = pieces.iter().fold((0, 0), |(len, crc), piece| {
            let piece = piece.as_ref();
            (len + piece.len() as u64, crc32c::crc32c_append(crc, piece))
        });
        if len != self.len || crc != self.crc {
            return Err(StoreError::Corrupt(format!(
                "payload of the grain at {} fails its checksum",
                self.timestamp
            )));
        }
        Ok(())
    }

    /// The grain rebuilt from its header and `payload` (checked already).
    fn grain(&self, payload: Bytes) -> Result<Grain, StoreError> {
        let header = GrainHeader::decode(&self.header).map_err(|e| {
            StoreError::Corrupt(format!("header of the grain at {}: {e}", self.timestamp))
        })?;
        Grain::new(header, payload)
            .map_err(|e| StoreError::Corrupt(format!("grain at {}: {e}", self.timestamp)))
    }

    /// The grain without its payload.
    pub fn bare(&self) -> Result<Grain, StoreError> {
        let header = GrainHeader::decode(&self.header).map_err(|e| {
            StoreError::Corrupt(format!("header of the grain at {}: {e}", self.timestamp))
        })?;
        Grain::new(header, Bytes::new())
            .map_err(|e| StoreError::Corrupt(format!("grain at {}: {e}", self.timestamp)))
    }
}

/// Loads the payloads of `stored` (inline or from their objects), checks them, and
/// rebuilds the grains; each grain's own failure (a checksum, a missing object) is its
/// own result.
pub async fn load(
    shared: &Shared,
    stored: &[StoredGrain],
) -> Result<Vec<Result<Grain, StoreError>>, StoreError> {
    let payloads = load_payloads(shared, stored).await?;
    Ok(stored
        .iter()
        .zip(payloads)
        .map(|(s, payload)| payload.and_then(|p| s.grain(p)))
        .collect())
}

/// The payloads of `stored`, inline or fetched from their objects, each checked; each
/// grain's own failure (a checksum, a missing object) is its own result.
async fn load_payloads(
    shared: &Shared,
    stored: &[StoredGrain],
) -> Result<Vec<Result<Bytes, StoreError>>, StoreError> {
    let ranges = object_ranges(stored);
    let fetched = shared.payloads.fetch(&ranges).await?;
    let fetched = checked(
        shared,
        stored,
        &ranges,
        fetched,
        |s, p: &Bytes| s.verify(p),
        |again| async move { shared.payloads.fetch(&again).await.map(|f| f.results) },
    )
    .await?;
    Ok(in_place(stored, fetched, Bytes::clone, |s, p| s.verify(p)))
}

/// As [`load_payloads`], each payload as the pieces it arrived in (see
/// [`super::payloads::Payloads::fetch_pieces`]).
async fn load_payload_pieces(
    shared: &Shared,
    stored: &[StoredGrain],
) -> Result<Vec<Result<Vec<Bytes>, StoreError>>, StoreError> {
    let ranges = object_ranges(stored);
    let fetched = shared.payloads.fetch_pieces(&ranges).await?;
    let fetched = checked(
        shared,
        stored,
        &ranges,
        fetched,
        |s, p: &Vec<Bytes>| s.verify_pieces(p),
        |again| async move {
            shared
                .payloads
                .fetch_pieces(&again)
                .await
                .map(|f| f.results)
        },
    )
    .await?;
    Ok(in_place(
        stored,
        fetched,
        |inline| vec![inline.clone()],
        |s, p| s.verify_pieces(p),
    ))
}

/// `fetched` (the payloads of `stored`'s [`object_ranges`]), each checked against its
/// grain's length and checksum. Those that fail and were read from the object cache
/// are fetched once more, their objects first dropped from the cache (so they come
/// from the object store): a damaged cache file costs a second request, not a grain.
async fn checked<'a, T, F>(
    shared: &Shared,
    stored: &[StoredGrain],
    ranges: &[(&'a str, std::ops::Range<u64>)],
    fetched: Fetched<T>,
    verify: impl Fn(&StoredGrain, &T) -> Result<(), StoreError>,
    refetch: impl FnOnce(Vec<(&'a str, std::ops::Range<u64>)>) -> F,
) -> Result<Vec<Result<T, StoreError>>, StoreError>
where
    F: std::future::Future<Output = Result<Vec<Result<T, StoreError>>, StoreError>>,
{
    let Fetched {
        results: mut fetched,
        from_cache,
    } = fetched;
    let in_objects = stored.iter().filter(|s| s.object.is_some());
    let mut failed = Vec::new();
    for (i, (s, payload)) in in_objects.zip(fetched.iter_mut()).enumerate() {
        if let Ok(p) = payload
            && let Err(e) = verify(s, p)
        {
            *payload = Err(e);
            failed.push(i);
        }
    }
    // Fetched again: those the cache served (their objects forgotten first, so that
    // they come from the object store).
    failed.retain(|&i| from_cache[i]);
    if failed.is_empty() {
        return Ok(fetched);
    }
    let keys: std::collections::HashSet<&str> = failed.iter().map(|&i| ranges[i].0).collect();
    for key in keys {
        shared.payloads.forget_cached(key);
    }
    let again: Vec<(&'a str, std::ops::Range<u64>)> =
        failed.iter().map(|&i| ranges[i].clone()).collect();
    let refetched = refetch(again).await?;
    let in_objects: Vec<&StoredGrain> = stored.iter().filter(|s| s.object.is_some()).collect();
    for (i, payload) in failed.into_iter().zip(refetched) {
        fetched[i] = payload.and_then(|p| verify(in_objects[i], &p).map(|()| p));
        // The cache is to blame only if the object store's bytes pass (if they fail
        // too, the grain is reported as corrupt, as without a cache).
        if fetched[i].is_ok() {
            tracing::warn!(
                key = ranges[i].0,
                "cached bytes failed a checksum; read again from the object store"
            );
        }
    }
    Ok(fetched)
}

/// The object ranges of the payloads of `stored` that are not inline, in order.
fn object_ranges(stored: &[StoredGrain]) -> Vec<(&str, std::ops::Range<u64>)> {
    stored
        .iter()
        .filter_map(|s| {
            s.object
                .as_ref()
                .map(|(key, offset)| (key.as_ref(), *offset..offset + s.len))
        })
        .collect()
}

/// Each grain's payload: the next of `fetched` (for the [`object_ranges`] of `stored`,
/// checked already) for one in an object, `inline` of its bytes (shared, not copied),
/// checked with `verify`, for one inline.
fn in_place<T>(
    stored: &[StoredGrain],
    fetched: Vec<Result<T, StoreError>>,
    inline: impl Fn(&Bytes) -> T,
    verify: impl Fn(&StoredGrain, &T) -> Result<(), StoreError>,
) -> Vec<Result<T, StoreError>> {
    let mut fetched = fetched.into_iter();
    stored
        .iter()
        .map(|s| match (&s.object, &s.inline) {
            (Some(_), _) => fetched
                .next()
                .unwrap_or_else(|| Err(StoreError::Corrupt("a payload was not fetched".into()))),
            (None, Some(bytes)) => {
                let payload = inline(bytes);
                verify(s, &payload).map(|()| payload)
            }
            (None, None) => Err(StoreError::Corrupt(format!(
                "the grain at {} has no payload",
                s.timestamp
            ))),
        })
        .collect()
}

/// The snapshot of one flow.
pub struct PgSnapshot {
    flow: FlowId,
    shared: Arc<Shared>,
    /// The read-only transaction, rolled back when the snapshot is dropped.
    txn: Txn,
}

impl PgSnapshot {
    /// Starts the transaction; fails with `FlowNotFound` when the flow does not exist.
    pub async fn open(shared: Arc<Shared>, flow: FlowId) -> Result<PgSnapshot, StoreError> {
        // The snapshot owns the connection before the transaction begins: if this future
        // is dropped (a client gone mid-request) once `BEGIN` is sent, its `Drop` still
        // rolls back, so the connection never returns to the pool inside a read-only
        // transaction where the next writer would fail.
        let txn = shared.transaction().await?;
        let snapshot = PgSnapshot { flow, shared, txn };
        let client = snapshot.client();
        // Prepared once per connection: `BEGIN` and the flow check then go to the server
        // together, in one round trip, and run in order. The snapshot is taken at the
        // check, the transaction's first query.
        let check = client
            .prepare_cached("SELECT 1 FROM flows WHERE id = $1")
            .await
            .map_err(pg_error)?;
        let params: [&(dyn ToSql + Sync); 1] = [&flow];
        let (begun, exists) = futures::join!(
            snapshot
                .txn
                .begin("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"),
            client.query_opt(&check, &params)
        );
        begun.map_err(pg_error)?;
        if exists.map_err(pg_error)?.is_none() {
            return Err(StoreError::FlowNotFound(flow));
        }
        Ok(snapshot)
    }

    fn client(&self) -> &deadpool_postgres::Object {
        self.txn.client()
    }
}

/// A SQL condition on `(ts_sec, ts_nsec)` for one bound, with its parameters.
fn bound_sql(
    bound: Bound,
    lower: bool,
    params: &mut Vec<Box<dyn ToSql + Sync + Send>>,
) -> Option<String> {
    let (t, op) = match (bound, lower) {
        (Bound::Unbounded, _) => return None,
        (Bound::Inclusive(t), true) => (t, ">="),
        (Bound::Exclusive(t), true) => (t, ">"),
        (Bound::Inclusive(t), false) => (t, "<="),
        (Bound::Exclusive(t), false) => (t, "<"),
    };
    let (sec, nsec) = split(t);
    params.push(Box::new(sec));
    params.push(Box::new(nsec));
    let n = params.len();
    Some(format!(
        "(g.ts_sec, g.ts_nsec) {op} (${}::int8, ${}::int4)",
        n - 1,
        n
    ))
}

#[async_trait]
impl Snapshot for PgSnapshot {
    async fn timerange(&self) -> Result<TimeRange, StoreError> {
        let sql = format!(
            "SELECT {} FROM (SELECT $1::uuid AS id) f {}",
            extent_sql(),
            extent_join("f.id")
        );
        let client = self.client();
        let statement = client.prepare_cached(&sql).await.map_err(pg_error)?;
        let row = client
            .query_one(&statement, &[&self.flow])
            .await
            .map_err(pg_error)?;
        extent_of(&row, 0)
    }

    async fn get(
        &self,
        timestamp: Timestamp,
        with_payload: bool,
    ) -> Result<Option<Grain>, StoreError> {
        // The row holding the timestamp, if any, is the last row keyed at or before it,
        // keyed at it or a run reaching it (a damaged run it is not in is not read).
        let sql = format!(
            "SELECT {} FROM (SELECT * FROM grains h
               WHERE h.flow_id = $1 AND (h.ts_sec, h.ts_nsec) <= ($2::int8, $3::int4)
               ORDER BY h.ts_sec DESC, h.ts_nsec DESC LIMIT 1) g
             LEFT JOIN objects o ON o.id = g.object_id
             WHERE (g.ts_sec, g.ts_nsec) = ($2::int8, $3::int4)
                OR (g.last_sec, g.last_nsec) >= ($2::int8, $3::int4)",
            grain_columns(with_payload)
        );
        let client = self.client();
        let statement = client.prepare_cached(&sql).await.map_err(pg_error)?;
        let (sec, nsec) = split(timestamp);
        let Some(row) = client
            .query_opt(&statement, &[&self.flow, &sec, &nsec])
            .await
            .map_err(pg_error)?
        else {
            return Ok(None);
        };
        let mut grains = Vec::new();
        StoredGrain::from_row(&row, &mut grains)?;
        let Some(stored) = grains.into_iter().find(|s| s.timestamp == timestamp) else {
            return Ok(None);
        };
        if !with_payload {
            return stored.bare().map(Some);
        }
        let mut loaded = load(&self.shared, std::slice::from_ref(&stored)).await?;
        loaded
            .pop()
            .unwrap_or_else(|| Err(StoreError::Corrupt("a grain was not loaded".into())))
            .map(Some)
    }

    async fn page(
        &self,
        range: TimeRange,
        order: Order,
        resume: Option<Timestamp>,
        limit: PageLimit,
        with_payload: bool,
    ) -> Result<GrainPage, StoreError> {
        let (stored, ended) = self
            .stored_page(range, order, resume, limit, with_payload)
            .await?;
        if !with_payload {
            let grains = stored
                .iter()
                .map(StoredGrain::bare)
                .collect::<Result<_, _>>()?;
            return Ok(GrainPage { grains, ended });
        }
        let mut grains = Vec::with_capacity(stored.len());
        for loaded in load(&self.shared, &stored).await? {
            match loaded {
                Ok(grain) => grains.push(grain),
                // Hand out the good grains before a failing one: the next page starts
                // at it and reports the error.
                Err(_) if !grains.is_empty() => {
                    return Ok(GrainPage {
                        grains,
                        ended: false,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(GrainPage { grains, ended })
    }

    /// The rows' headers hold the grains' GSF `gbhd` blocks as written: the blocks are
    /// built from them and the payloads without rebuilding a grain.
    async fn gsf_page(
        &self,
        range: TimeRange,
        order: Order,
        resume: Option<Timestamp>,
        limit: PageLimit,
        local_id: u16,
    ) -> Result<GsfPage, StoreError> {
        let (stored, mut ended) = self.stored_page(range, order, resume, limit, true).await?;
        let payloads = load_payload_pieces(&self.shared, &stored).await?;
        let mut blocks = GsfBlocks::new(local_id);
        let mut last = None;
        for (s, pieces) in stored.iter().zip(payloads) {
            let added = pieces.and_then(|pieces| {
                let gbhd = stored_gbhd(&s.header).ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "header of the grain at {}: not a stored header",
                        s.timestamp
                    ))
                })?;
                blocks.push_pieces(gbhd, pieces);
                Ok(())
            });
            match added {
                Ok(()) => last = Some(s.timestamp),
                // As `page`: the good grains first, the error on the next page.
                Err(_) if !blocks.is_empty() => {
                    ended = false;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(GsfPage::new(blocks, last).with_ended(ended))
    }
}

impl PgSnapshot {
    /// The grains of the next page, cut at the byte limit (counting payloads only when
    /// `with_payload`), no object payload fetched yet, and whether the range ended with
    /// them (see [`GrainPage::ended`]).
    ///
    /// Rows are read in rounds, since a row may hold one grain or a run of many: the
    /// first asks for a sixty-fourth of the page's grains in rows, each next one (from where
    /// the last ended) for as many as the grains still wanted need at the rows' mean so
    /// far, until the page is full or the range ends.
    /// The first also reads the last run keyed before the range, which may reach into it.
    async fn stored_page(
        &self,
        range: TimeRange,
        order: Order,
        resume: Option<Timestamp>,
        limit: PageLimit,
        with_payload: bool,
    ) -> Result<(Vec<StoredGrain>, bool), StoreError> {
        let rest = order.rest_of(&range, resume);
        let Some((mut lo, mut hi)) = rest.bounds() else {
            return Ok((Vec::new(), true));
        };
        let want = limit.grains.max(1);
        let mut rows_wanted = want.div_ceil(64);
        let mut found: Vec<StoredGrain> = Vec::new();
        let mut first = true;
        // Counted from the rows keyed in the range only: in descending order the run
        // before the range comes after every one of them.
        let (mut counted, mut counted_bytes) = (0usize, 0usize);
        // The first row in the page's order that failed to decode: its span, its error.
        let mut damaged: Option<(Timestamp, Timestamp, StoreError)> = None;
        // Whether the last round found fewer rows keyed in the range than it asked for:
        // none are left but damaged ones (which `damaged` records).
        let mut rows_ran_out;
        loop {
            let rows = self
                .rows(lo, hi, order, rows_wanted, first, with_payload)
                .await?;
            let (mut keyed_in_range, mut counted_now) = (0, 0);
            let mut cursor = None;
            for row in &rows {
                let key = join(row.get(0), row.get(1))?;
                let mut grains = Vec::new();
                if let Err(e) = StoredGrain::from_row(row, &mut grains) {
                    let last = match (row.get(10), row.get(11)) {
                        (Some(sec), Some(nsec)) => join(sec, nsec)?,
                        _ => key,
                    };
                    let earlier = damaged.as_ref().is_none_or(|(k, l, _)| match order {
                        Order::Ascending => key < *k,
                        Order::Descending => last > *l,
                    });
                    if earlier {
                        damaged = Some((key, last, e));
                    }
                    continue;
                }
                grains.retain(|s| rest.contains(s.timestamp));
                if !row.get::<_, bool>(9) {
                    keyed_in_range += 1;
                    // The join may reorder the rows: the round ends at its farthest key.
                    cursor = match (order, cursor) {
                        (Order::Ascending, Some(c)) if c > key => Some(c),
                        (Order::Descending, Some(c)) if c < key => Some(c),
                        _ => Some(key),
                    };
                    counted_now += grains.len();
                    counted_bytes = grains.iter().fold(counted_bytes, |n, s| {
                        n.saturating_add(usize::try_from(s.len).unwrap_or(usize::MAX))
                    });
                }
                found.extend(grains);
            }
            first = false;
            counted += counted_now;
            rows_ran_out = keyed_in_range < rows_wanted;
            let full = counted >= want || (with_payload && counted_bytes >= limit.bytes);
            let (Some(cursor), false, None) = (cursor, full, &damaged) else {
                break;
            };
            if rows_ran_out {
                break;
            }
            match order {
                Order::Ascending => lo = Bound::Exclusive(cursor),
                Order::Descending => hi = Bound::Exclusive(cursor),
            }
            // As many rows as the grains still wanted need at the rows' mean so far.
            rows_wanted = ((want - counted) * keyed_in_range)
                .div_ceil(counted_now.max(keyed_in_range))
                .max(1);
        }
        let mut ended = rows_ran_out && damaged.is_none();
        // A damaged row: the grains before it in the page's order, the error on the
        // next page (or now, if there are none).
        if let Some((key, last, e)) = damaged {
            found.retain(|s| match order {
                Order::Ascending => s.timestamp < key,
                Order::Descending => s.timestamp > last,
            });
            if found.is_empty() {
                return Err(e);
            }
        }
        match order {
            Order::Ascending => found.sort_unstable_by_key(|s| s.timestamp),
            Order::Descending => found.sort_unstable_by_key(|s| std::cmp::Reverse(s.timestamp)),
        }
        // Cut the page at its grain count, then at the byte limit before fetching
        // anything; a page cut short leaves grains for the next one.
        let mut keep = found.len().min(want);
        let mut bytes = 0usize;
        for (i, s) in found[..keep].iter().enumerate() {
            if with_payload {
                bytes = bytes.saturating_add(usize::try_from(s.len).unwrap_or(usize::MAX));
            }
            if bytes >= limit.bytes {
                keep = i + 1;
                break;
            }
        }
        ended &= keep == found.len();
        found.truncate(keep);
        Ok((found, ended))
    }

    /// At most `count` rows keyed within (`lo`, `hi`) in `order`, and, with
    /// `run_before`, the last row keyed before `lo` if it is a run that reaches `lo`;
    /// selected with [`grain_columns`], then whether the row is that run and the row's
    /// `last_sec`, `last_nsec`.
    async fn rows(
        &self,
        lo: Bound,
        hi: Bound,
        order: Order,
        count: usize,
        run_before: bool,
        with_payload: bool,
    ) -> Result<Vec<Row>, StoreError> {
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(self.flow)];
        let mut conditions = vec!["g.flow_id = $1".to_owned()];
        conditions.extend(bound_sql(lo, true, &mut params));
        conditions.extend(bound_sql(hi, false, &mut params));
        params.push(Box::new(i64::try_from(count).unwrap_or(i64::MAX)));
        let direction = match order {
            Order::Ascending => "ASC",
            Order::Descending => "DESC",
        };
        let mut sql = format!(
            "(SELECT *, false AS before FROM grains g WHERE {}
              ORDER BY g.ts_sec {direction}, g.ts_nsec {direction} LIMIT ${})",
            conditions.join(" AND "),
            params.len()
        );
        let before = match lo {
            Bound::Inclusive(t) if run_before => Some((t, "<", ">=")),
            Bound::Exclusive(t) if run_before => Some((t, "<=", ">")),
            _ => None,
        };
        if let Some((t, op, reaches)) = before {
            let (sec, nsec) = split(t);
            params.push(Box::new(sec));
            params.push(Box::new(nsec));
            let n = params.len();
            // The nearest row first, then whether it is a run reaching the bound: a filter
            // inside the ordered scan could walk back over every earlier row.
            sql = format!(
                "(SELECT *, true AS before FROM (SELECT * FROM grains g
                   WHERE g.flow_id = $1 AND (g.ts_sec, g.ts_nsec) {op} (${a}::int8, ${b}::int4)
                   ORDER BY g.ts_sec DESC, g.ts_nsec DESC LIMIT 1) p
                 WHERE p.run IS NOT NULL
                   AND (p.last_sec, p.last_nsec) {reaches} (${a}::int8, ${b}::int4))
                 UNION ALL {sql}",
                a = n - 1,
                b = n
            );
        }
        let sql = format!(
            "SELECT {}, g.before, g.last_sec, g.last_nsec
             FROM ({sql}) g LEFT JOIN objects o ON o.id = g.object_id",
            grain_columns(with_payload)
        );
        let client = self.client();
        let statement = client.prepare_cached(&sql).await.map_err(pg_error)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        client.query(&statement, &refs).await.map_err(pg_error)
    }
}
