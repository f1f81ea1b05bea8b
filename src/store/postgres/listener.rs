//! The `LISTEN` task: one connection per store instance that receives the schema's
//! notifications, feeds the local [`EventLog`](crate::store::EventLog) in id order and
//! wakes local watchers of flows changed through other replicas.
//!
//! A notification carries its events inline when they fit in `NOTIFY`'s payload limit,
//! else the range of their ids, which are then read from the `events` table. After a
//! (re)connection the task reads every event past the last one it delivered, so a
//! disconnection loses nothing that is still retained; it reconnects with backoff.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::tokio_postgres::{AsyncMessage, Client};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::schema::quote_ident;
use super::{Shared, join, pg_error};
use crate::store::StoreError;

/// `NOTIFY` payloads must stay under 8000 bytes.
pub const MAX_INLINE: usize = 7800;

/// The event types a replica may receive, as the `'static` names the log uses.
const EVENT_TYPES: &[&str] = &[
    "flows/created",
    "flows/updated",
    "flows/deleted",
    "flows/grains_added",
    "flows/grains_deleted",
    "sources/created",
    "sources/updated",
    "sources/deleted",
];

/// An event as recorded and sent in notifications (built in SQL by the event's insert,
/// read here).
#[derive(Clone, Debug, Deserialize)]
pub struct Wire {
    /// The event id (the `events` row id).
    pub id: i64,
    /// The TAMS event type.
    #[serde(rename = "t")]
    pub event_type: String,
    /// The flow concerned.
    #[serde(rename = "f", default)]
    pub flow: Option<Uuid>,
    /// The source concerned.
    #[serde(rename = "s", default)]
    pub source: Option<Uuid>,
    /// When it happened (TAI seconds, nanoseconds).
    pub ts: (i64, i32),
    /// The event body.
    #[serde(rename = "b")]
    pub body: Value,
}

/// A notification's payload.
#[derive(Debug, Deserialize)]
struct Note {
    /// The instance that committed.
    o: Uuid,
    /// The events, when they fit.
    #[serde(default)]
    e: Vec<Wire>,
    /// Else the first and last id to read from the table.
    #[serde(default)]
    r: Option<(i64, i64)>,
}

/// Starts the task; the future completes once it has first caught up.
pub fn start(
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> {
    let (ready, caught_up) = oneshot::channel();
    tokio::spawn(run(shared, stop, ready));
    async move {
        let _ = caught_up.await;
    }
}

async fn run(shared: Arc<Shared>, stop: CancellationToken, ready: oneshot::Sender<()>) {
    let mut ready = Some(ready);
    let mut last: Option<i64> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut connected = false;
        let ended = session(&shared, &stop, &mut last, &mut ready, &mut connected).await;
        match ended {
            Ok(()) => return,
            Err(e) => {
                if connected {
                    backoff = Duration::from_millis(100);
                }
                tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "postgres listener disconnected; reconnecting");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection's life: listen, catch up, deliver notifications until it fails
/// (`Err`) or the store stops (`Ok`).
async fn session(
    shared: &Shared,
    stop: &CancellationToken,
    last: &mut Option<i64>,
    ready: &mut Option<oneshot::Sender<()>>,
    connected: &mut bool,
) -> Result<(), StoreError> {
    let (client, mut connection) = shared
        .pg
        .connect(shared.tls.clone())
        .await
        .map_err(pg_error)?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Drives the connection and hands notifications over; ends with it.
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(Ok(n.payload().to_owned())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
        let _ = tx.send(Err("connection closed".into()));
    });
    let _abort = AbortOnDrop(driver);
    client
        .batch_execute(&format!("LISTEN {}", quote_ident(&shared.channel)))
        .await
        .map_err(pg_error)?;
    *connected = true;
    catch_up(shared, &client, last).await?;
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            message = rx.recv() => message,
        };
        match message {
            Some(Ok(payload)) => handle(shared, &client, &payload, last).await?,
            Some(Err(e)) => return Err(StoreError::Unavailable(format!("postgres listener: {e}"))),
            None => return Err(StoreError::Unavailable("postgres listener ended".into())),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const EVENT_COLUMNS: &str = "id, event_type, flow_id, source_id, ts_sec, ts_nsec, body, origin";

fn from_row(row: &deadpool_postgres::tokio_postgres::Row) -> (Wire, Uuid) {
    (
        Wire {
            id: row.get(0),
            event_type: row.get(1),
            flow: row.get(2),
            source: row.get(3),
            ts: (row.get(4), row.get(5)),
            body: row.get(6),
        },
        row.get(7),
    )
}

/// Delivers the events recorded since `last` (at first: the retained window).
async fn catch_up(
    shared: &Shared,
    client: &Client,
    last: &mut Option<i64>,
) -> Result<(), StoreError> {
    let rows = match *last {
        Some(after) => client
            .query(
                &format!("SELECT {EVENT_COLUMNS} FROM events WHERE id > $1 ORDER BY id"),
                &[&after],
            )
            .await
            .map_err(pg_error)?,
        None => {
            let retain = i64::try_from(shared.event_retention).unwrap_or(i64::MAX);
            client
                .query(
                    &format!(
                        "SELECT {EVENT_COLUMNS} FROM events
                         WHERE id > (SELECT coalesce(max(id), 0) FROM events) - $1 ORDER BY id"
                    ),
                    &[&retain],
                )
                .await
                .map_err(pg_error)?
        }
    };
    let first_time = last.is_none();
    for row in &rows {
        let (wire, origin) = from_row(row);
        // Watchers exist only once the store is open; on a reconnection they are woken
        // for what they missed.
        deliver(shared, wire, origin, last, !first_time);
    }
    if last.is_none() {
        // Nothing retained: later notifications start the log.
        *last = Some(0);
    }
    Ok(())
}

async fn handle(
    shared: &Shared,
    client: &Client,
    payload: &str,
    last: &mut Option<i64>,
) -> Result<(), StoreError> {
    let note: Note = match serde_json::from_str(payload) {
        Ok(note) => note,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a notification that does not parse");
            return Ok(());
        }
    };
    if let Some((first, end)) = note.r {
        let rows = client
            .query(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE id >= $1 AND id <= $2 ORDER BY id"
                ),
                &[&first, &end],
            )
            .await
            .map_err(pg_error)?;
        for row in &rows {
            let (wire, origin) = from_row(row);
            deliver(shared, wire, origin, last, true);
        }
    }
    for wire in note.e {
        deliver(shared, wire, note.o, last, true);
    }
    Ok(())
}

/// Publishes one event to the local log and wakes watchers of its flow when it comes
/// from another instance (local commits woke them already).
fn deliver(shared: &Shared, wire: Wire, origin: Uuid, last: &mut Option<i64>, wake: bool) {
    if last.is_some_and(|l| wire.id <= l) {
        return;
    }
    *last = Some(wire.id);
    let Some(event_type) = EVENT_TYPES.iter().find(|t| **t == wire.event_type) else {
        tracing::warn!(
            event_type = wire.event_type,
            id = wire.id,
            "ignoring an event of an unknown type"
        );
        return;
    };
    let timestamp = match join(wire.ts.0, wire.ts.1) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, id = wire.id, "ignoring an event with a bad timestamp");
            return;
        }
    };
    let Ok(seq) = u64::try_from(wire.id) else {
        return;
    };
    let changes_flow = matches!(
        *event_type,
        "flows/created" | "flows/updated" | "flows/deleted"
    );
    if let Some(flow) = wire.flow.filter(|_| changes_flow) {
        // From any replica: a write session opened from now on looks the flow up again.
        shared.writable.changed(flow);
    }
    shared.events.publish_with_id(
        seq,
        timestamp,
        event_type,
        wire.flow,
        wire.source,
        wire.body,
    );
    let changes_grains = !matches!(*event_type, "flows/created" | "flows/updated");
    if let Some(flow) = wire
        .flow
        .filter(|_| wake && origin != shared.origin && changes_grains)
    {
        shared.notifier.notify(flow);
    }
}
