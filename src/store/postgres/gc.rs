//! The garbage collector of payload objects and old events.
//!
//! - An object whose grains were all deleted has `live = 0` and `released_at` set; it
//!   is deleted a grace period later, so read sessions opened before the delete can
//!   still read it.
//! - An object no `objects` row knows was left by a commit that failed or crashed
//!   between storing the object and committing its rows; it is deleted once older than
//!   the grace period (a writer never commits rows for an upload older than half of
//!   it).
//! - Events beyond twice the retention are deleted.
//!
//! One replica at a time does the work (a try-lock; the others skip the round).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use tokio_util::sync::CancellationToken;

use super::payloads::OBJECTS_PREFIX;
use super::{Shared, pg_error};
use crate::store::StoreError;

/// What one garbage collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Whether this instance held the collector's lock (else another replica did).
    pub ran: bool,
    /// Released objects deleted.
    pub released: u64,
    /// Orphan objects (no row) deleted.
    pub orphans: u64,
    /// Old events deleted.
    pub events: u64,
}

/// Runs the collector every `interval` until `stop`.
pub fn start(shared: Arc<Shared>, interval: Duration, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            match collect(&shared, shared.gc_grace).await {
                Ok(report) if report.ran => tracing::debug!(?report, "garbage collected"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
            }
        }
    });
}

const CHUNK: i64 = 500;

/// One collection with objects released (or orphaned) for longer than `grace`.
pub async fn collect(shared: &Shared, grace: Duration) -> Result<GcReport, StoreError> {
    let client = shared.connection().await?;
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&shared.gc_lock])
        .await
        .map_err(pg_error)?
        .get(0);
    if !locked {
        return Ok(GcReport::default());
    }
    let result = collect_locked(shared, &client, grace).await;
    if let Err(e) = client
        .execute("SELECT pg_advisory_unlock($1)", &[&shared.gc_lock])
        .await
    {
        // Closing the connection releases the lock.
        tracing::debug!(error = %e, "cannot unlock the collector's lock; closing its connection");
        drop(deadpool_postgres::Object::take(client));
    }
    result
}

async fn collect_locked(
    shared: &Shared,
    client: &deadpool_postgres::Object,
    grace: Duration,
) -> Result<GcReport, StoreError> {
    let mut report = GcReport {
        ran: true,
        ..Default::default()
    };
    let grace_secs = grace.as_secs_f64();

    // Objects whose grains are all deleted.
    loop {
        let rows = client
            .query(
                "SELECT id, key FROM objects
                 WHERE live <= 0 AND released_at < now() - make_interval(secs => $1)
                 ORDER BY id LIMIT $2",
                &[&grace_secs, &CHUNK],
            )
            .await
            .map_err(pg_error)?;
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let keys: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
        delete_objects(shared, &keys).await?;
        let deleted = client
            .execute(
                "DELETE FROM objects WHERE id = ANY($1) AND live <= 0",
                &[&ids],
            )
            .await
            .map_err(pg_error)?;
        report.released += deleted;
        if (rows.len() as i64) < CHUNK {
            break;
        }
    }

    // Objects no row knows, older than the grace period.
    let cutoff = SystemTime::now()
        .checked_sub(grace)
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let prefix = Path::from(OBJECTS_PREFIX);
    let mut listing = shared
        .payloads
        .store()
        .list(Some(&prefix))
        .try_filter(|meta| std::future::ready(meta.last_modified.timestamp() <= cutoff))
        .map_ok(|meta| meta.location.to_string())
        .chunks(CHUNK as usize);
    while let Some(chunk) = listing.next().await {
        let keys = chunk
            .into_iter()
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| StoreError::Unavailable(format!("object store: {e}")))?;
        let known: Vec<String> = client
            .query("SELECT key FROM objects WHERE key = ANY($1)", &[&keys])
            .await
            .map_err(pg_error)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let orphans: Vec<String> = keys.into_iter().filter(|k| !known.contains(k)).collect();
        delete_objects(shared, &orphans).await?;
        report.orphans += orphans.len() as u64;
    }

    // Events past twice the retention.
    let keep = i64::try_from(shared.event_retention.saturating_mul(2)).unwrap_or(i64::MAX);
    report.events = client
        .execute(
            "DELETE FROM events WHERE id <= (SELECT coalesce(max(id), 0) FROM events) - $1",
            &[&keep],
        )
        .await
        .map_err(pg_error)?;
    Ok(report)
}

async fn delete_objects(shared: &Shared, keys: &[String]) -> Result<(), StoreError> {
    futures::stream::iter(keys.iter().cloned())
        .map(|key| {
            let payloads = shared.payloads.clone();
            async move { payloads.delete(&key).await }
        })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await
}
