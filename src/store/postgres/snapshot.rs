//! A read session's snapshot: a pooled connection holding a `REPEATABLE READ`, read-only
//! transaction; pages are keyset queries in it, payloads ranged object reads.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::tokio_postgres::Row;
use deadpool_postgres::tokio_postgres::types::ToSql;

use super::{Shared, corrupt, extent_join, extent_of, extent_sql, join, pg_error, split};
use crate::grain::wire::stored_gbhd;
use crate::grain::{Grain, GrainHeader};
use crate::gsf::GsfBlocks;
use crate::store::{FlowId, GsfPage, Order, PageLimit, Snapshot, StoreError};
use crate::time::{Bound, TimeRange, Timestamp};

/// The columns of a grain row, in the order [`StoredGrain::from_row`] reads them; the
/// inline payload is selected only when `with_payload`.
pub fn grain_columns(with_payload: bool) -> &'static str {
    if with_payload {
        "g.ts_sec, g.ts_nsec, g.header, g.crc, g.len, g.inline_payload, o.key, g.object_offset"
    } else {
        "g.ts_sec, g.ts_nsec, g.header, g.crc, g.len, NULL::bytea, o.key, g.object_offset"
    }
}

/// A grain row as stored.
#[derive(Debug)]
pub struct StoredGrain {
    /// The origin timestamp.
    pub timestamp: Timestamp,
    /// The header's binary form.
    pub header: Vec<u8>,
    /// The payload's crc32c.
    pub crc: u32,
    /// The payload's length.
    pub len: u64,
    /// The payload, when inline (and selected).
    pub inline: Option<Bytes>,
    /// The object and offset of the payload when it is not inline.
    pub object: Option<(String, u64)>,
}

impl StoredGrain {
    /// Reads a row selected with [`grain_columns`].
    pub fn from_row(row: &Row) -> Result<StoredGrain, StoreError> {
        let timestamp = join(row.get(0), row.get(1))?;
        let len: i64 = row.get(4);
        let key: Option<String> = row.get(6);
        let offset: Option<i64> = row.get(7);
        let object = match (key, offset) {
            (Some(key), Some(offset)) => Some((key, u64::try_from(offset).map_err(corrupt)?)),
            (None, None) => None,
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "the grain at {timestamp} has half an object reference"
                )));
            }
        };
        Ok(StoredGrain {
            timestamp,
            header: row.get(2),
            crc: row.get::<_, i32>(3) as u32,
            len: u64::try_from(len).map_err(corrupt)?,
            inline: row.get::<_, Option<Vec<u8>>>(5).map(Bytes::from),
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

    /// The grain rebuilt from its header and `payload`, which is checked first.
    pub fn grain(&self, payload: Bytes) -> Result<Grain, StoreError> {
        self.verify(&payload)?;
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

/// Loads the payloads of `stored` (inline or from their objects) and rebuilds the
/// grains; each grain's own failure (a checksum, a missing object) is its own result.
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

/// The payloads of `stored`, inline or fetched from their objects, not yet checked;
/// each grain's own failure (a missing object) is its own result.
async fn load_payloads(
    shared: &Shared,
    stored: &[StoredGrain],
) -> Result<Vec<Result<Bytes, StoreError>>, StoreError> {
    let fetched = shared.payloads.fetch(&object_ranges(stored)).await?;
    Ok(in_place(stored, fetched, Bytes::clone))
}

/// As [`load_payloads`], each payload as the pieces it arrived in (see
/// [`super::payloads::Payloads::fetch_pieces`]).
async fn load_payload_pieces(
    shared: &Shared,
    stored: &[StoredGrain],
) -> Result<Vec<Result<Vec<Bytes>, StoreError>>, StoreError> {
    let fetched = shared.payloads.fetch_pieces(&object_ranges(stored)).await?;
    Ok(in_place(stored, fetched, |inline| vec![inline.clone()]))
}

/// The object ranges of the payloads of `stored` that are not inline, in order.
fn object_ranges(stored: &[StoredGrain]) -> Vec<(&str, std::ops::Range<u64>)> {
    stored
        .iter()
        .filter_map(|s| {
            s.object
                .as_ref()
                .map(|(key, offset)| (key.as_str(), *offset..offset + s.len))
        })
        .collect()
}

/// Each grain's payload: the next of `fetched` (for the [`object_ranges`] of `stored`)
/// for one in an object, `inline` of its bytes (shared, not copied) for one inline.
fn in_place<T>(
    stored: &[StoredGrain],
    fetched: Vec<Result<T, StoreError>>,
    inline: impl Fn(&Bytes) -> T,
) -> Vec<Result<T, StoreError>> {
    let mut fetched = fetched.into_iter();
    stored
        .iter()
        .map(|s| match (&s.object, &s.inline) {
            (Some(_), _) => fetched
                .next()
                .unwrap_or_else(|| Err(StoreError::Corrupt("a payload was not fetched".into()))),
            (None, Some(bytes)) => Ok(inline(bytes)),
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
    /// Taken by `Drop`, which ends the transaction before the connection goes back.
    client: Option<deadpool_postgres::Object>,
}

impl Drop for PgSnapshot {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            // The connection returns to the pool once the transaction is over.
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = client.batch_execute("ROLLBACK").await {
                        tracing::debug!(error = %e, "ending a read transaction failed");
                        drop(deadpool_postgres::Object::take(client));
                    }
                });
            }
            // No runtime to end it on: close the connection instead of pooling it.
            Err(_) => drop(deadpool_postgres::Object::take(client)),
        }
    }
}

impl PgSnapshot {
    /// Starts the transaction; fails with `FlowNotFound` when the flow does not exist.
    pub async fn open(shared: Arc<Shared>, flow: FlowId) -> Result<PgSnapshot, StoreError> {
        let client = shared.connection().await?;
        // The snapshot owns the connection before the transaction begins: if this future
        // is dropped (a client gone mid-request) once `BEGIN` is sent, its `Drop` still
        // rolls back, so the connection never returns to the pool inside a read-only
        // transaction where the next writer would fail.
        let snapshot = PgSnapshot {
            flow,
            shared,
            client: Some(client),
        };
        snapshot
            .client()?
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(pg_error)?;
        // The snapshot is taken at this first query.
        let exists = snapshot
            .client()?
            .query_opt("SELECT 1 FROM flows WHERE id = $1", &[&flow])
            .await
            .map_err(pg_error)?;
        if exists.is_none() {
            return Err(StoreError::FlowNotFound(flow));
        }
        Ok(snapshot)
    }

    fn client(&self) -> Result<&deadpool_postgres::Object, StoreError> {
        self.client
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("the read session has ended".into()))
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
        let client = self.client()?;
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
        let sql = format!(
            "SELECT {} FROM grains g LEFT JOIN objects o ON o.id = g.object_id
             WHERE g.flow_id = $1 AND g.ts_sec = $2 AND g.ts_nsec = $3",
            super::snapshot::grain_columns(with_payload)
        );
        let client = self.client()?;
        let statement = client.prepare_cached(&sql).await.map_err(pg_error)?;
        let (sec, nsec) = split(timestamp);
        let Some(row) = client
            .query_opt(&statement, &[&self.flow, &sec, &nsec])
            .await
            .map_err(pg_error)?
        else {
            return Ok(None);
        };
        let stored = StoredGrain::from_row(&row)?;
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
    ) -> Result<Vec<Grain>, StoreError> {
        let stored = self
            .stored_page(range, order, resume, limit, with_payload)
            .await?;
        if !with_payload {
            return stored.iter().map(StoredGrain::bare).collect();
        }
        let mut grains = Vec::with_capacity(stored.len());
        for loaded in load(&self.shared, &stored).await? {
            match loaded {
                Ok(grain) => grains.push(grain),
                // Hand out the good grains before a failing one: the next page starts
                // at it and reports the error.
                Err(_) if !grains.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok(grains)
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
        let stored = self.stored_page(range, order, resume, limit, true).await?;
        let payloads = load_payload_pieces(&self.shared, &stored).await?;
        let mut blocks = GsfBlocks::new(local_id);
        let mut last = None;
        for (s, pieces) in stored.iter().zip(payloads) {
            let added = pieces.and_then(|pieces| {
                s.verify_pieces(&pieces)?;
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
                Err(_) if !blocks.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok(GsfPage::new(blocks, last))
    }
}

impl PgSnapshot {
    /// The rows of the next page, cut at the byte limit (counting payloads only when
    /// `with_payload`), nothing fetched yet.
    async fn stored_page(
        &self,
        range: TimeRange,
        order: Order,
        resume: Option<Timestamp>,
        limit: PageLimit,
        with_payload: bool,
    ) -> Result<Vec<StoredGrain>, StoreError> {
        let Some((lo, hi)) = order.rest_of(&range, resume).bounds() else {
            return Ok(Vec::new());
        };
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(self.flow)];
        let mut conditions = vec!["g.flow_id = $1".to_owned()];
        conditions.extend(bound_sql(lo, true, &mut params));
        conditions.extend(bound_sql(hi, false, &mut params));
        let grains = i64::try_from(limit.grains.max(1)).unwrap_or(i64::MAX);
        params.push(Box::new(grains));
        let direction = match order {
            Order::Ascending => "ASC",
            Order::Descending => "DESC",
        };
        let sql = format!(
            "SELECT {} FROM grains g LEFT JOIN objects o ON o.id = g.object_id
             WHERE {} ORDER BY g.ts_sec {direction}, g.ts_nsec {direction} LIMIT ${}",
            grain_columns(with_payload),
            conditions.join(" AND "),
            params.len()
        );
        let client = self.client()?;
        let statement = client.prepare_cached(&sql).await.map_err(pg_error)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = client.query(&statement, &refs).await.map_err(pg_error)?;
        // Cut the page at the byte limit before fetching anything.
        let mut stored = Vec::with_capacity(rows.len());
        let mut bytes = 0usize;
        for row in &rows {
            let s = StoredGrain::from_row(row)?;
            if with_payload {
                bytes = bytes.saturating_add(usize::try_from(s.len).unwrap_or(usize::MAX));
            }
            stored.push(s);
            if bytes >= limit.bytes {
                break;
            }
        }
        Ok(stored)
    }
}
