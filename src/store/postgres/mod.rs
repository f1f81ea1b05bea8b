//! The scale-out store: PostgreSQL for the index, the resources and live notifications,
//! an object store (S3, or a directory or memory for development) for payloads. Any
//! number of grainstore replicas share one database schema and one bucket prefix.
//!
//! # Layout
//!
//! See [`schema`] for the tables. A committed batch's payloads larger than `inline_max`
//! become one object (`grains/<flow>/<uuid>`), the grains referencing it by (object,
//! offset, length); smaller payloads live in the grain row (`bytea`). An appending batch's
//! small grains are kept together, up to 256 in one row of at most a page ([`runs`]):
//! PostgreSQL's cost is per row and per byte. When such a batch's payloads add up to
//! more than `inline_batch_max` (64 KiB), they all go to its object and its runs hold
//! only keys and headers.
//! Every payload has its crc32c in the row and is checked on read
//! ([`StoreError::Corrupt`]).
//!
//! # Writes and durability
//!
//! A batch is planned against the rows already stored (identical re-sends are no-ops, a
//! different grain at an occupied timestamp stops the batch there), its object is
//! stored, and then one transaction checks the flow, takes the flow's advisory lock,
//! inserts the object row and the grain rows (`ON CONFLICT DO NOTHING`), records the
//! events and notifies. A batch of small grains is first tried without the plan, as
//! runs, where its span meets no stored row. A concurrent
//! writer that took one of the planned timestamps in between makes the insert come up
//! short: the transaction is rolled back and the batch planned again. A commit returns
//! only after the object is stored and the transaction committed, so a crash between
//! the two leaves at most an object no row references, which the garbage collector
//! removes ([`gc`]).
//!
//! # Reads
//!
//! A read session holds a pooled connection with a `REPEATABLE READ`, read-only
//! transaction: a snapshot later commits do not change. Pages are keyset queries inside
//! it; the payloads of one object are fetched with ranged requests of at most 2 MiB
//! each (one larger grain alone), concurrently ([`payloads`]). A GSF page passes the
//! pieces in which each answer arrived straight on; other reads get each payload as
//! one buffer.
//!
//! # Live
//!
//! Every change that wakes readers records an event row and `NOTIFY`s the schema's
//! channel. Each store instance runs one `LISTEN` connection ([`listener`]) that feeds
//! its [`EventLog`] (ids are the rows' ids, the epoch a constant of the schema, so an id
//! means the same on every replica) and wakes its [`Notifier`] for changes made through
//! other replicas. Event ids are handed out under an advisory lock held to the commit,
//! so ids grow in commit order, which is the order notifications arrive in.

mod cache;
mod gc;
mod listener;
mod payloads;
mod runs;
mod schema;
mod snapshot;
mod tls;
mod txn;
mod writable;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::tokio_postgres;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{
    CommitWatch, EventLog, Flow, FlowFilter, FlowId, FlowInfo, Notifier, Page, PageKey,
    PageRequest, PutOutcome, ReadSession, SessionPool, Source, SourceFilter, SourceId, Store,
    StoreError, WriteSession, now_rfc3339,
};
use crate::time::{Bound, TimeRange, Timestamp};

pub use gc::GcReport;
pub use payloads::{ObjectStoreConfig, PayloadSigning, UrlError};
pub use tls::SslMode;

/// Settings of the PostgreSQL store.
#[derive(Clone, Debug)]
pub struct PostgresConfig {
    /// A libpq-style URL or key/value string, e.g. `postgres://user@host/db`; TLS is
    /// set by `ssl_mode` and `ssl_root_cert`, not in it.
    pub url: String,
    /// TLS to the server, in libpq's `sslmode` words.
    pub ssl_mode: SslMode,
    /// A PEM file of the CA certificates the server's certificate must lead to.
    pub ssl_root_cert: Option<std::path::PathBuf>,
    /// The schema holding the tables (created if absent).
    pub schema: String,
    /// Connections in the pool (read sessions hold one each while open).
    pub pool_size: usize,
    /// Where payload objects are stored.
    pub objects: ObjectStoreConfig,
    /// This replica's cache of objects' bytes on local disk: its directory (emptied at
    /// start) and the most bytes it holds; `None` for none.
    pub object_cache: Option<(std::path::PathBuf, u64)>,
    /// Whether the cache also keeps the bytes this replica uploads, not only those it
    /// reads.
    pub object_cache_uploads: bool,
    /// How many sessions may be open at once.
    pub max_sessions: usize,
    /// How long opening a session waits for a free place (and for a connection).
    pub session_wait: Duration,
    /// Payloads up to this size are kept in the grain row.
    pub inline_max: usize,
    /// An appending batch whose payloads (each at most `inline_max`) add up to more
    /// than this keeps them in its object, its runs only keys and headers ([`runs`]).
    pub inline_batch_max: u64,
    /// How many service events are retained for resumption.
    pub event_retention: usize,
    /// How long an unreferenced object is kept before it is deleted (it must exceed
    /// the longest read session and the longest upload-to-commit time).
    pub gc_grace: Duration,
    /// How often the garbage collector runs; zero disables the periodic run.
    pub gc_interval: Duration,
    /// How long PostgreSQL may take to hand over a working connection (connect, or
    /// check an idle one) or to answer a readiness check before it counts as
    /// unavailable: a database that stopped answering without closing its connections
    /// (a frozen host, a network partition) then fails requests with 503 in bounded
    /// time instead of holding them.
    pub answer_within: Duration,
}

impl PostgresConfig {
    /// Defaults for a database at `url` and objects at `object_store_url`.
    pub fn new(url: impl Into<String>, object_store_url: impl Into<String>) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            ssl_mode: SslMode::Prefer,
            ssl_root_cert: None,
            schema: "public".into(),
            pool_size: 32,
            objects: ObjectStoreConfig {
                url: object_store_url.into(),
                ..Default::default()
            },
            object_cache: None,
            object_cache_uploads: false,
            max_sessions: 24,
            session_wait: Duration::from_millis(500),
            inline_max: 16 << 10,
            inline_batch_max: 64 << 10,
            event_retention: 10_000,
            gc_grace: Duration::from_secs(3600),
            gc_interval: Duration::from_secs(300),
            answer_within: Duration::from_secs(5),
        }
    }
}

/// Connections a pool must hold beyond `max_sessions`. An open read session holds a
/// pooled connection for its life, so sessions alone could take every connection; the
/// work outside them (flow lookups and updates, listings, readiness checks, the garbage
/// collector, a request's lookups while it holds a session) must still get one, or it
/// waits for a session to end and fails with 503: one for that work, one for the
/// collector, which holds its connection for a whole round.
pub const CONNECTIONS_BEYOND_SESSIONS: usize = 2;

/// Why the PostgreSQL store's settings are refused, naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct SettingError {
    /// Which setting (`url`, `schema`, `object_store_url`, `sslmode`, `sslrootcert`).
    pub setting: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// Checks the settings that can be checked without connecting.
pub fn check_settings(config: &PostgresConfig) -> Result<(), SettingError> {
    if config.answer_within < Duration::from_millis(100) {
        return Err(SettingError {
            setting: "answer_within",
            reason: "must be at least 100 ms (a healthy database answers well within it)".into(),
        });
    }
    pg_config(config)?;
    tls::connector(config.ssl_mode, config.ssl_root_cert.as_deref())?;
    payloads::open(&config.objects).map_err(|e| SettingError {
        setting: "object_store_url",
        reason: e.0,
    })?;
    Ok(())
}

fn valid_schema(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 48
}

fn pg_config(config: &PostgresConfig) -> Result<tokio_postgres::Config, SettingError> {
    if config.url.trim().is_empty() {
        return Err(SettingError {
            setting: "url",
            reason: "required for the postgres backend".into(),
        });
    }
    // One place for TLS settings, and libpq's verify modes, which tokio-postgres does
    // not parse.
    for key in ["sslmode", "sslrootcert"] {
        if tls::url_sets(&config.url, key) {
            return Err(SettingError {
                setting: "url",
                reason: format!(
                    "sets {key}: give it as the setting postgres_{key} instead, not in the URL"
                ),
            });
        }
    }
    let mut pg: tokio_postgres::Config = config.url.parse().map_err(|e| SettingError {
        setting: "url",
        reason: format!("not a PostgreSQL connection string: {e}"),
    })?;
    if !valid_schema(&config.schema) {
        return Err(SettingError {
            setting: "schema",
            reason: format!(
                "{:?} is not a plain lowercase identifier of at most 48 characters",
                config.schema
            ),
        });
    }
    let mut options = pg.get_options().unwrap_or_default().to_owned();
    if !options.is_empty() {
        options.push(' ');
    }
    options.push_str(&format!("-c search_path={}", config.schema));
    pg.options(options);
    if pg.get_application_name().is_none() {
        pg.application_name("grainstore");
    }
    pg.ssl_mode(config.ssl_mode.negotiation());
    pg.connect_timeout(config.answer_within);
    pg.keepalives_idle(Duration::from_secs(30));
    Ok(pg)
}

/// A PostgreSQL or pool error as a store error: the backend is unavailable.
fn pg_error(e: tokio_postgres::Error) -> StoreError {
    // A server's error displays as a bare "db error"; its message says what failed.
    match e.as_db_error() {
        Some(db) => {
            StoreError::Unavailable(format!("postgres: {} ({})", db.message(), db.code().code()))
        }
        None => StoreError::Unavailable(format!("postgres: {}", with_causes(&e))),
    }
}

/// An error's text followed by its causes': tokio-postgres shows only its own kind
/// ("error performing TLS handshake"), the reason is in its source.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// The first connection's failure; a failed TLS handshake names the settings behind it,
/// since a wrong CA file or mode is the likely cause.
fn connect_error(config: &PostgresConfig, e: tokio_postgres::Error) -> StoreError {
    let text = with_causes(&e);
    if config.ssl_mode == SslMode::Disable || !text.contains("TLS") {
        return pg_error(e);
    }
    let ca = config
        .ssl_root_cert
        .as_ref()
        .map(|path| format!(" and storage.postgres_sslrootcert = {}", path.display()))
        .unwrap_or_default();
    StoreError::Unavailable(format!(
        "postgres: TLS with the server failed under storage.postgres_sslmode = \"{}\"{ca}: {text}",
        config.ssl_mode
    ))
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(format!("postgres pool: {e}"))
}

/// A pooled connection idle for longer than this is checked with an empty query before
/// it is handed out, since its server may have gone away without closing it; one used
/// just before is trusted, which spares busy connections the round trip.
const CHECK_IDLE_AFTER: Duration = Duration::from_millis(500);

/// The `pre_recycle` hook that checks a connection idle for longer than
/// [`CHECK_IDLE_AFTER`]; a connection that fails the check is discarded and the pool
/// moves on to another one or connects anew.
fn check_idle_connection(answer_within: Duration) -> deadpool_postgres::Hook {
    deadpool_postgres::Hook::async_fn(move |client, metrics| {
        Box::pin(async move {
            if metrics.last_used() < CHECK_IDLE_AFTER {
                return Ok(());
            }
            match tokio::time::timeout(answer_within, client.simple_query("")).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(deadpool_postgres::HookError::Backend(e)),
                Err(_) => Err(deadpool_postgres::HookError::message(
                    "an idle connection did not answer its check",
                )),
            }
        })
    })
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// A timestamp as its (seconds, nanoseconds) key, seconds floored so that the pair
/// orders as the timestamp does.
fn split(t: Timestamp) -> (i64, i32) {
    let n = t.to_nanos();
    // 48-bit seconds always fit.
    (
        n.div_euclid(1_000_000_000) as i64,
        n.rem_euclid(1_000_000_000) as i32,
    )
}

fn join(sec: i64, nsec: i32) -> Result<Timestamp, StoreError> {
    Timestamp::from_nanos(i128::from(sec) * 1_000_000_000 + i128::from(nsec)).map_err(corrupt)
}

/// The end of a grain's duration, rounded to the nearest nanosecond; `None` when the
/// grain has no (positive) duration (as the embedded store computes it).
fn grain_end(grain: &crate::grain::Grain) -> Option<Timestamp> {
    let duration = grain.duration();
    if duration.numerator <= 0 || duration.denominator <= 0 {
        return None;
    }
    let num = i128::from(duration.numerator) * 1_000_000_000;
    let den = i128::from(duration.denominator);
    let nanos = (2 * num + den) / (2 * den);
    grain.origin_timestamp().checked_add_nanos(nanos)
}

/// The flow's extent from its first grain and its last grain's end.
fn extent(
    first: Option<(i64, i32)>,
    last: Option<(i64, i32)>,
    end: Option<(i64, i32)>,
) -> Result<TimeRange, StoreError> {
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(TimeRange::empty());
    };
    let start = join(first.0, first.1)?;
    let last = join(last.0, last.1)?;
    Ok(match end.map(|(s, n)| join(s, n)).transpose()? {
        Some(end) if end > last => TimeRange::new(Bound::Inclusive(start), Bound::Exclusive(end)),
        _ => TimeRange::new(Bound::Inclusive(start), Bound::Inclusive(last)),
    })
}

/// The columns giving a flow's extent (six of them), from [`extent_join`]'s joins.
fn extent_sql() -> &'static str {
    "x0.ts_sec, x0.ts_nsec, x1.ts_sec, x1.ts_nsec, x1.end_sec, x1.end_nsec"
}

/// Joins the first and last grain of the flow whose id is the SQL expression `id` (the
/// last row's last grain: see [`runs`]).
fn extent_join(id: &str) -> String {
    format!(
        "LEFT JOIN LATERAL (SELECT ts_sec, ts_nsec FROM grains
           WHERE flow_id = {id} ORDER BY ts_sec, ts_nsec LIMIT 1) x0 ON true
         LEFT JOIN LATERAL (SELECT COALESCE(l.last_sec, l.ts_sec) AS ts_sec,
             COALESCE(l.last_nsec, l.ts_nsec) AS ts_nsec, l.end_sec, l.end_nsec FROM grains l
           WHERE l.flow_id = {id} ORDER BY l.ts_sec DESC, l.ts_nsec DESC LIMIT 1) x1 ON true"
    )
}

fn extent_of(row: &tokio_postgres::Row, at: usize) -> Result<TimeRange, StoreError> {
    let pair = |s: usize| -> Option<(i64, i32)> {
        match (
            row.get::<_, Option<i64>>(s),
            row.get::<_, Option<i32>>(s + 1),
        ) {
            (Some(a), Some(b)) => Some((a, b)),
            _ => None,
        }
    };
    extent(pair(at), pair(at + 2), pair(at + 4))
}

/// An event to record in the transaction that causes it.
#[derive(Debug)]
struct PendingEvent {
    event_type: &'static str,
    flow: Option<FlowId>,
    source: Option<SourceId>,
    body: Value,
}

/// What the store's parts share.
struct Shared {
    pool: Pool,
    /// Connection settings, for the listener's own connection.
    pg: tokio_postgres::Config,
    /// TLS for every connection (unused with `sslmode = disable`).
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// Cancels a connection's running statement (for transactions dropped unfinished).
    cancel: txn::Cancel,
    payloads: payloads::Payloads,
    notifier: Notifier,
    events: EventLog,
    inline_max: usize,
    inline_batch_max: u64,
    /// Identifies this instance in the events it records, so the listener does not wake
    /// local watchers a second time for local commits.
    origin: uuid::Uuid,
    /// The `NOTIFY` channel of the schema.
    channel: String,
    /// The advisory lock under which event ids are handed out.
    event_lock: i64,
    /// The advisory lock that lets one replica at a time collect garbage.
    gc_lock: i64,
    /// The database schema (for the per-flow advisory locks, [`Shared::lock_flow`]).
    schema: String,
    gc_grace: Duration,
    event_retention: usize,
    /// See [`PostgresConfig::answer_within`].
    answer_within: Duration,
    /// Flows recently seen writable (see [`writable`]).
    writable: writable::Writable,
}

/// Whether `flow` takes writes now: [`StoreError::FlowNotFound`] or
/// [`StoreError::ReadOnly`] if not.
async fn check_writable(
    client: &deadpool_postgres::Object,
    flow: FlowId,
) -> Result<(), StoreError> {
    let check = client
        .prepare_cached("SELECT read_only FROM flows WHERE id = $1")
        .await
        .map_err(pg_error)?;
    let row = client.query_opt(&check, &[&flow]).await.map_err(pg_error)?;
    writable_from(flow, row.as_ref())
}

/// The answer for `flow` from its `SELECT read_only FROM flows` row, if any.
fn writable_from(flow: FlowId, row: Option<&tokio_postgres::Row>) -> Result<(), StoreError> {
    match row.map(|r| r.get::<_, bool>(0)) {
        None => Err(StoreError::FlowNotFound(flow)),
        Some(true) => Err(StoreError::ReadOnly(flow)),
        Some(false) => Ok(()),
    }
}

/// Takes a flow's lock ([`Shared::lock_flow`]); parameters from [`Shared::flow_lock_key`].
const LOCK_FLOW: &str = "SELECT pg_advisory_xact_lock($1::int4, $2::int4)";

impl Shared {
    /// Takes the advisory lock on the grains of `flow` until `txn` ends: every
    /// transaction that adds or removes grains holds it, so that they keep the layout's
    /// invariant (see [`runs`]) one after the other.
    async fn lock_flow(
        &self,
        txn: &impl deadpool_postgres::GenericClient,
        flow: FlowId,
    ) -> Result<(), StoreError> {
        let lock = txn.prepare_cached(LOCK_FLOW).await.map_err(pg_error)?;
        let (schema, flow) = self.flow_lock_key(flow);
        txn.execute(&lock, &[&schema, &flow])
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    /// The parameters of [`LOCK_FLOW`] for `flow`: the two-key form, a lock space apart
    /// from the single-key locks of the schema (events, garbage collection), so no flow's
    /// key can meet theirs.
    fn flow_lock_key(&self, flow: FlowId) -> (i32, i32) {
        (
            crc32c::crc32c(self.schema.as_bytes()) as i32,
            crc32c::crc32c(flow.as_bytes()) as i32,
        )
    }

    /// A pooled connection, in bounded time: waiting for a free one ends in
    /// [`StoreError::Busy`], a database that cannot hand over a working one in
    /// [`StoreError::Unavailable`].
    async fn connection(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let wait = self.pool.timeouts().wait.unwrap_or(Duration::ZERO);
        let deadline = wait + self.answer_within;
        match tokio::time::timeout(deadline, self.pool.get()).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(deadpool_postgres::PoolError::Timeout(
                deadpool_postgres::TimeoutType::Wait,
            ))) => Err(StoreError::Busy {
                capacity: self.pool.status().max_size,
                waited: wait,
            }),
            Ok(Err(e)) => Err(pool_error(e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "postgres: no working connection within {} ms",
                deadline.as_millis()
            ))),
        }
    }

    /// A pooled connection for a transaction (see [`Shared::connection`]); dropped
    /// unfinished, its rollback waits `answer_within` before it cancels what is in its
    /// way (the cancel given as long again) and closes the connection ([`txn`]).
    async fn transaction(&self) -> Result<txn::Txn, StoreError> {
        Ok(txn::Txn::new(
            self.connection().await?,
            self.answer_within,
            Some(Arc::clone(&self.cancel)),
        ))
    }

    /// Runs a read-only query function, retrying when the database is unreachable (a
    /// failover, a restart): reads are safe to repeat. Only a failure that came at once
    /// is retried: one that took its time (a database that does not answer) would only
    /// make the request wait that long again.
    async fn read<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn(deadpool_postgres::Object) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut delay = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            let started = std::time::Instant::now();
            let result = match self.connection().await {
                Ok(client) => f(client).await,
                Err(e) => Err(e),
            };
            match result {
                Err(StoreError::Unavailable(e))
                    if attempt < 2 && started.elapsed() < Duration::from_secs(1) =>
                {
                    tracing::debug!(error = %e, attempt, "postgres read failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// The PostgreSQL + object store [`Store`].
///
/// Dropping it stops its listener and garbage-collector tasks.
pub struct PostgresStore {
    shared: Arc<Shared>,
    sessions: SessionPool,
    /// Cancelled on drop: ends the background tasks.
    stop: CancellationToken,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl PostgresStore {
    /// Connects, applies the migrations, and starts the listener and the garbage
    /// collector. Fails when PostgreSQL or the object store cannot be reached.
    pub async fn open(config: PostgresConfig) -> Result<PostgresStore, StoreError> {
        let refused = |e: SettingError| StoreError::Unavailable(format!("storage settings: {e}"));
        if config.pool_size < config.max_sessions + CONNECTIONS_BEYOND_SESSIONS {
            return Err(refused(SettingError {
                setting: "pool_size",
                reason: format!(
                    "must be at least max_sessions + {CONNECTIONS_BEYOND_SESSIONS} ({})",
                    config.max_sessions + CONNECTIONS_BEYOND_SESSIONS
                ),
            }));
        }
        let pg = pg_config(&config).map_err(refused)?;
        let tls =
            tls::connector(config.ssl_mode, config.ssl_root_cert.as_deref()).map_err(refused)?;
        let object_store = payloads::open(&config.objects).map_err(|e| {
            refused(SettingError {
                setting: "object_store_url",
                reason: e.0,
            })
        })?;
        let payloads = match &config.object_cache {
            Some((dir, bytes)) => {
                let (path, max) = (dir.clone(), *bytes);
                let opened =
                    tokio::task::spawn_blocking(move || cache::ObjectCache::open(&path, max))
                        .await
                        .map_err(std::io::Error::other)
                        .and_then(|opened| opened);
                let cache = opened.map_err(|e| {
                    refused(SettingError {
                        setting: "object_cache_bytes",
                        reason: format!("cannot use {}: {e}", dir.display()),
                    })
                })?;
                tracing::info!(dir = %dir.display(), bytes, "object cache");
                payloads::Payloads::with_cache(
                    object_store,
                    Arc::new(cache),
                    config.object_cache_uploads,
                )
            }
            None => payloads::Payloads::new(object_store),
        };
        payloads.ping().await?;

        let epoch = {
            let (mut client, connection) = pg
                .connect(tls.clone())
                .await
                .map_err(|e| connect_error(&config, e))?;
            let task = tokio::spawn(connection);
            let epoch = schema::migrate(&mut client, &config.schema).await;
            drop(client);
            let _ = task.await;
            epoch?
        };

        let manager = Manager::from_config(
            pg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // The connection used last is handed out first: a steady load keeps to the few
        // connections it needs, whose prepared statements are ready and which need no
        // idle check, instead of going round them all.
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .queue_mode(deadpool_postgres::QueueMode::Lifo)
            .wait_timeout(Some(config.session_wait.max(Duration::from_millis(100))))
            .create_timeout(Some(config.answer_within))
            .pre_recycle(check_idle_connection(config.answer_within))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("postgres pool: {e}")))?;
        // Fail at start when the pool cannot connect.
        drop(pool.get().await.map_err(pool_error)?);

        let cancel_tls = tls.clone();
        let cancel: txn::Cancel = Arc::new(move |token: tokio_postgres::CancelToken| {
            let tls = cancel_tls.clone();
            Box::pin(async move { token.cancel_query(tls).await })
        });
        let shared = Arc::new(Shared {
            pool,
            pg,
            tls,
            cancel,
            payloads,
            notifier: Notifier::default(),
            events: EventLog::with_epoch(config.event_retention, epoch),
            inline_max: config.inline_max,
            inline_batch_max: config.inline_batch_max,
            origin: uuid::Uuid::new_v4(),
            channel: format!("grainstore_{}", config.schema),
            event_lock: schema::lock_key("events", &config.schema),
            gc_lock: schema::lock_key("gc", &config.schema),
            schema: config.schema.clone(),
            gc_grace: config.gc_grace,
            event_retention: config.event_retention,
            answer_within: config.answer_within,
            writable: writable::Writable::default(),
        });
        let stop = CancellationToken::new();
        let ready = listener::start(shared.clone(), stop.clone());
        // Wait (briefly) until the listener has caught up, so the event log starts
        // with the retained events and no commit made from now on is missed.
        if tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .is_err()
        {
            tracing::warn!("the postgres listener is not connected yet; continuing");
        }
        if !config.gc_interval.is_zero() {
            gc::start(shared.clone(), config.gc_interval, stop.clone());
        }
        Ok(PostgresStore {
            shared,
            sessions: SessionPool::new(config.max_sessions, config.session_wait),
            stop,
        })
    }

    /// Runs the garbage collector once: deletes objects unreferenced for longer than
    /// `grace`, objects no row knows that are older than `grace`, and events past the
    /// retention. Safe to run on several replicas at once (one does the work).
    pub async fn collect_garbage(&self, grace: Duration) -> Result<GcReport, StoreError> {
        gc::collect(&self.shared, grace).await
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.shared.connection().await
    }

    /// [`Shared::read`].
    async fn read<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn(deadpool_postgres::Object) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        self.shared.read(f).await
    }
}

/// Creates a flow, or replaces what a `PUT` gives of it.
const UPSERT_FLOW: &str = "INSERT INTO flows (id, source_id, format, label, read_only, resource)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (id) DO UPDATE SET source_id = EXCLUDED.source_id,
       format = EXCLUDED.format, label = EXCLUDED.label,
       read_only = EXCLUDED.read_only, resource = EXCLUDED.resource";

/// Creates the source a flow names, unless it exists.
const INSERT_SOURCE: &str = "INSERT INTO sources (id, format, label, resource)
     VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING";

/// Records `events` in `txn` and notifies the schema's channel of each (delivered when
/// the caller commits).
///
/// Ids are taken under a transaction advisory lock, released by the commit: a later id
/// is thus always committed after an earlier one, and listeners, which receive
/// notifications in commit order, see ids only grow. The lock and the inserts go to the
/// server together, in one round trip; they run in order.
async fn record_events(
    shared: &Shared,
    txn: &impl deadpool_postgres::GenericClient,
    events: &[PendingEvent],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let lock = txn
        .prepare_cached("SELECT pg_advisory_xact_lock($1)")
        .await
        .map_err(pg_error)?;
    let insert = txn.prepare_cached(INSERT_EVENT).await.map_err(pg_error)?;
    let (sec, nsec) = split(Timestamp::now());
    let bodies: Vec<String> = events.iter().map(|e| e.body.to_string()).collect();
    let max_inline = listener::MAX_INLINE as i32;
    let (lock, insert) = (&lock, &insert);
    let inserts = events.iter().zip(&bodies).map(|(e, body)| async move {
        txn.query_one(
            insert,
            &[
                &e.event_type,
                &e.flow,
                &e.source,
                &sec,
                &nsec,
                &e.body,
                &shared.origin,
                &shared.channel,
                body,
                &max_inline,
            ],
        )
        .await
    });
    let locked = async move { txn.execute(lock, &[&shared.event_lock]).await };
    let (locked, rows) = futures::join!(locked, futures::future::join_all(inserts));
    locked.map_err(pg_error)?;
    for row in rows {
        row.map_err(pg_error)?;
    }
    Ok(())
}

/// Inserts an event and notifies channel `$8` of it, in the listeners' form
/// (`listener::Note`): the event itself when the payload takes at most `$10` bytes
/// (`$9` is the body as JSON text, passed on as it was written), else its id for them to
/// read from the table.
const INSERT_EVENT: &str = "WITH e AS (
       INSERT INTO events (event_type, flow_id, source_id, ts_sec, ts_nsec, body, origin)
       VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id),
     n AS (SELECT id, json_build_object('o', $7::uuid, 'e', json_build_array(
       json_build_object('id', id, 't', $1::text, 'f', $2::uuid, 's', $3::uuid,
         'ts', json_build_array($4::int8, $5::int4), 'b', $9::text::json)))::text AS inline
       FROM e)
     SELECT id, pg_notify($8, CASE WHEN octet_length(inline) <= $10::int4 THEN inline
       ELSE json_build_object('o', $7::uuid, 'r', json_build_array(id, id))::text END)
     FROM n";

fn flow_from_json(value: Value) -> Result<Flow, StoreError> {
    serde_json::from_value(value).map_err(corrupt)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Value, StoreError> {
    serde_json::to_value(value).map_err(corrupt)
}

#[async_trait]
impl Store for PostgresStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let check = async {
            let client = self.client().await?;
            client.simple_query("SELECT 1").await.map_err(pg_error)?;
            Ok::<_, StoreError>(())
        };
        let within = self.shared.answer_within;
        tokio::time::timeout(within, check).await.map_err(|_| {
            StoreError::Unavailable(format!(
                "postgres: no answer to a readiness check within {} ms",
                within.as_millis()
            ))
        })??;
        self.shared.payloads.ping().await
    }

    fn sessions(&self) -> &SessionPool {
        &self.sessions
    }

    fn store_metrics(&self) -> Vec<crate::store::StoreMetric> {
        self.shared
            .payloads
            .cache()
            .map(|cache| cache.stats().metrics())
            .unwrap_or_default()
    }

    async fn put_flow(&self, flow: Flow) -> Result<PutOutcome, StoreError> {
        let txn = self.shared.transaction().await?;
        let client = txn.client();
        let now = now_rfc3339();
        let mut flow = flow;
        // Prepared first (once per connection), so that `BEGIN` and the lock on the
        // flow's row go to the server together.
        let select = client
            .prepare_cached("SELECT resource FROM flows WHERE id = $1 FOR UPDATE")
            .await
            .map_err(pg_error)?;
        let upsert = client.prepare_cached(UPSERT_FLOW).await.map_err(pg_error)?;
        let insert_source = client
            .prepare_cached(INSERT_SOURCE)
            .await
            .map_err(pg_error)?;
        let (begun, previous) = futures::join!(txn.begin("BEGIN"), async {
            client.query_opt(&select, &[&flow.id]).await
        });
        begun.map_err(pg_error)?;
        let previous = previous
            .map_err(pg_error)?
            .map(|row| flow_from_json(row.get(0)))
            .transpose()?;
        flow.created = Some(
            previous
                .as_ref()
                .and_then(|p| p.created.clone())
                .unwrap_or_else(|| now.clone()),
        );
        flow.metadata_updated = Some(now.clone());
        let resource = to_json(&flow)?;
        let inserted = client
            .execute(
                &upsert,
                &[
                    &flow.id,
                    &flow.source_id,
                    &flow.format.as_urn(),
                    &flow.label,
                    &flow.read_only,
                    &resource,
                ],
            )
            .await
            .map_err(pg_error)?;
        debug_assert_eq!(inserted, 1);
        let mut events = Vec::new();
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
        let source_json = to_json(&source)?;
        let created_source = client
            .execute(
                &insert_source,
                &[
                    &source.id,
                    &source.format.as_urn(),
                    &source.label,
                    &source_json,
                ],
            )
            .await
            .map_err(pg_error)?;
        if created_source == 1 {
            events.push(PendingEvent {
                event_type: "sources/created",
                flow: None,
                source: Some(source.id),
                body: source_json,
            });
        }
        events.push(PendingEvent {
            event_type: if previous.is_some() {
                "flows/updated"
            } else {
                "flows/created"
            },
            flow: Some(flow.id),
            source: Some(flow.source_id),
            body: resource,
        });
        record_events(&self.shared, client, &events).await?;
        // Forgotten whether or not the commit's answer arrives: it may have committed.
        let committed = txn.commit().await;
        self.shared.writable.changed(flow.id);
        committed.map_err(pg_error)?;
        Ok(if previous.is_some() {
            PutOutcome::Updated
        } else {
            PutOutcome::Created
        })
    }

    async fn get_flow(&self, id: FlowId) -> Result<Option<FlowInfo>, StoreError> {
        let sql = format!(
            "SELECT f.resource, {} FROM flows f {} WHERE f.id = $1",
            extent_sql(),
            extent_join("f.id")
        );
        self.read(|client| {
            let sql = &sql;
            async move {
                let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
                let Some(row) = client
                    .query_opt(&statement, &[&id])
                    .await
                    .map_err(pg_error)?
                else {
                    return Ok(None);
                };
                let flow = flow_from_json(row.get(0))?;
                let timerange = extent_of(&row, 1)?;
                Ok(Some(FlowInfo { flow, timerange }))
            }
        })
        .await
    }

    async fn delete_flow(&self, id: FlowId) -> Result<bool, StoreError> {
        let txn = self.shared.transaction().await?;
        let client = txn.client();
        let delete = client
            .prepare_cached("DELETE FROM flows WHERE id = $1")
            .await
            .map_err(pg_error)?;
        // Not sent with `BEGIN`: behind a `BEGIN` that failed, it would commit on its own.
        txn.begin("BEGIN").await.map_err(pg_error)?;
        let deleted = client.execute(&delete, &[&id]).await.map_err(pg_error)?;
        if deleted == 0 {
            return Ok(false);
        }
        writer::delete_range(&self.shared, client, id, &TimeRange::eternity()).await?;
        let events = [PendingEvent {
            event_type: "flows/deleted",
            flow: Some(id),
            source: None,
            body: serde_json::json!({ "flow_id": id }),
        }];
        record_events(&self.shared, client, &events).await?;
        let committed = txn.commit().await;
        self.shared.writable.changed(id);
        committed.map_err(pg_error)?;
        // Live readers of the flow must learn that it is gone.
        self.shared.notifier.notify(id);
        Ok(true)
    }

    async fn list_flows(
        &self,
        filter: &FlowFilter,
        page: &PageRequest,
    ) -> Result<Page<FlowInfo>, StoreError> {
        // Source, format and label filter in SQL; tags and the timerange here.
        let sql = format!(
            "SELECT f.id, f.resource, {} FROM flows f {}
             WHERE ($1::uuid IS NULL OR f.id > $1) AND ($2::uuid IS NULL OR f.source_id = $2)
               AND ($3::text IS NULL OR f.format = $3) AND ($4::text IS NULL OR f.label = $4)
             ORDER BY f.id LIMIT $5",
            extent_sql(),
            extent_join("f.id")
        );
        let limit = page.limit.max(1);
        let format = filter.format.map(|f| f.as_urn());
        self.read(|client| {
            let sql = &sql;
            async move {
                let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
                let mut after = page.after.map(|k| k.0);
                let mut items = Vec::new();
                let chunk = i64::try_from(limit.max(64)).unwrap_or(1000);
                loop {
                    let rows = client
                        .query(
                            &statement,
                            &[&after, &filter.source_id, &format, &filter.label, &chunk],
                        )
                        .await
                        .map_err(pg_error)?;
                    let exhausted = (rows.len() as i64) < chunk;
                    for row in &rows {
                        let id: uuid::Uuid = row.get(0);
                        after = Some(id);
                        let flow = flow_from_json(row.get(1))?;
                        if !flow.matches(filter) {
                            continue;
                        }
                        let timerange = extent_of(row, 2)?;
                        if !filter
                            .timerange
                            .as_ref()
                            .is_none_or(|wanted| wanted.overlaps(&timerange))
                        {
                            continue;
                        }
                        if items.len() == limit {
                            let next = items.last().map(|i: &FlowInfo| PageKey(i.flow.id));
                            return Ok(Page { items, next });
                        }
                        items.push(FlowInfo { flow, timerange });
                    }
                    if exhausted {
                        return Ok(Page { items, next: None });
                    }
                }
            }
        })
        .await
    }

    async fn get_source(&self, id: SourceId) -> Result<Option<Source>, StoreError> {
        self.read(|client| async move {
            let row = client
                .query_opt("SELECT resource FROM sources WHERE id = $1", &[&id])
                .await
                .map_err(pg_error)?;
            row.map(|row| serde_json::from_value(row.get(0)).map_err(corrupt))
                .transpose()
        })
        .await
    }

    async fn list_sources(
        &self,
        filter: &SourceFilter,
        page: &PageRequest,
    ) -> Result<Page<Source>, StoreError> {
        let limit = page.limit.max(1);
        let format = filter.format.map(|f| f.as_urn());
        self.read(|client| async move {
            let mut after = page.after.map(|k| k.0);
            let mut items: Vec<Source> = Vec::new();
            let chunk = i64::try_from(limit.max(64)).unwrap_or(1000);
            loop {
                let rows = client
                    .query(
                        "SELECT id, resource FROM sources
                         WHERE ($1::uuid IS NULL OR id > $1) AND ($2::text IS NULL OR format = $2)
                         ORDER BY id LIMIT $3",
                        &[&after, &format, &chunk],
                    )
                    .await
                    .map_err(pg_error)?;
                let exhausted = (rows.len() as i64) < chunk;
                for row in &rows {
                    let id: uuid::Uuid = row.get(0);
                    after = Some(id);
                    let source: Source = serde_json::from_value(row.get(1)).map_err(corrupt)?;
                    if !source.matches(filter) {
                        continue;
                    }
                    if items.len() == limit {
                        let next = items.last().map(|s| PageKey(s.id));
                        return Ok(Page { items, next });
                    }
                    items.push(source);
                }
                if exhausted {
                    return Ok(Page { items, next: None });
                }
            }
        })
        .await
    }

    async fn open_read(&self, flow: FlowId) -> Result<ReadSession, StoreError> {
        let permit = self.sessions.acquire().await?;
        let snapshot = snapshot::PgSnapshot::open(self.shared.clone(), flow).await?;
        Ok(ReadSession::new(flow, Arc::new(snapshot), permit))
    }

    /// The flow is checked here so that an upload to an unknown or read-only flow is
    /// refused before its body is read, unless it was seen writable a moment ago (see
    /// [`writable`]); every commit checks it again in its transaction, and that decides.
    async fn open_write(&self, flow: FlowId) -> Result<WriteSession, StoreError> {
        let permit = self.sessions.acquire().await?;
        let checked = !self.shared.writable.recently(flow);
        if checked {
            let generation = self.shared.writable.generation();
            self.read(|client| async move { check_writable(&client, flow).await })
                .await?;
            self.shared.writable.saw(flow, generation);
        }
        let writer = writer::PgWriter::new(self.shared.clone(), flow, checked);
        Ok(WriteSession::new(flow, Arc::new(writer), permit))
    }

    async fn delete_grains(&self, flow: FlowId, range: &TimeRange) -> Result<u64, StoreError> {
        let txn = self.shared.transaction().await?;
        let client = txn.client();
        let writable = client
            .prepare_cached(writer::FLOW_WRITABLE)
            .await
            .map_err(pg_error)?;
        let (begun, row) = futures::join!(txn.begin("BEGIN"), async {
            client.query_opt(&writable, &[&flow]).await
        });
        begun.map_err(pg_error)?;
        writable_from(flow, row.map_err(pg_error)?.as_ref())?;
        let deleted = writer::delete_range(&self.shared, client, flow, range).await?;
        if deleted == 0 {
            return Ok(0);
        }
        let events = [PendingEvent {
            event_type: "flows/grains_deleted",
            flow: Some(flow),
            source: None,
            body: serde_json::json!({ "flow_id": flow, "timerange": range.to_string() }),
        }];
        record_events(&self.shared, client, &events).await?;
        txn.commit().await.map_err(pg_error)?;
        self.shared.notifier.notify(flow);
        Ok(deleted)
    }

    fn watch(&self, flow: FlowId) -> CommitWatch {
        self.shared.notifier.watch(flow)
    }

    fn events(&self) -> &super::EventLog {
        &self.shared.events
    }
}
