//! The database schema and its migrations, applied at start-up under an advisory lock so
//! that replicas starting at once neither race nor fail.
//!
//! # Tables
//!
//! - `meta`: key/value facts about the database; `epoch` is drawn once, when the schema
//!   is created, and is the epoch of every event id (the same on every replica).
//! - `sources`, `flows`: the resources as JSON (`resource`), with the columns listings
//!   filter on.
//! - `objects`: payload objects in the object store. `live` counts the grains that
//!   reference the object; `released_at` is set when it drops to zero, and the garbage
//!   collector deletes the object a grace period later.
//! - `grains`: one row per grain or per run of small grains, keyed by (flow, origin
//!   timestamp as seconds and nanoseconds — a nanosecond count of 48-bit seconds does not
//!   fit in a `bigint`). A single grain's row holds the header in its binary form, the
//!   payload's crc32c and length, and either the payload itself (`inline_payload`) or
//!   where it is (`object_id`, `object_offset`). A run's row (see [`super::runs`]) holds
//!   its members in `run`, its last grain's timestamp in `last_sec`/`last_nsec`, and the
//!   number of its grains in `n_grains`; its `end_sec`/`end_nsec` are its last grain's
//!   end, its `header` is empty and its `len` the run's length. A run that leaves its
//!   payloads in an object has `object_id` and `object_offset` (where the first one
//!   starts), and counts `n_grains` grains in the object's `live`. The table's
//!   `toast_tuple_target` is 8160, so rows up to a page stay whole and uncompressed
//!   (inline payloads of single grains included).
//! - `events`: the service events, numbered by a `bigserial` that is the event id.

use deadpool_postgres::tokio_postgres::Client;
use deadpool_postgres::tokio_postgres::error::SqlState;

use super::pg_error;
use crate::store::StoreError;

/// How long a migration waits for a table lock before it gives up.
const MIGRATION_LOCK_WAIT: &str = "10s";

/// Each step brings the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO meta (key, value)
    VALUES ('epoch', (floor(extract(epoch from clock_timestamp()) * 1000000))::bigint::text);

CREATE TABLE sources (
    id uuid PRIMARY KEY,
    format text NOT NULL,
    label text,
    resource jsonb NOT NULL
);

CREATE TABLE flows (
    id uuid PRIMARY KEY,
    source_id uuid NOT NULL,
    format text NOT NULL,
    label text,
    read_only boolean NOT NULL,
    resource jsonb NOT NULL
);
CREATE INDEX flows_source ON flows (source_id);

CREATE TABLE objects (
    id bigserial PRIMARY KEY,
    key text NOT NULL UNIQUE,
    size bigint NOT NULL,
    live integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz
);
CREATE INDEX objects_released ON objects (released_at) WHERE released_at IS NOT NULL;

CREATE TABLE grains (
    flow_id uuid NOT NULL,
    ts_sec bigint NOT NULL,
    ts_nsec integer NOT NULL,
    end_sec bigint,
    end_nsec integer,
    header bytea NOT NULL,
    crc integer NOT NULL,
    len bigint NOT NULL,
    inline_payload bytea,
    object_id bigint REFERENCES objects (id),
    object_offset bigint,
    PRIMARY KEY (flow_id, ts_sec, ts_nsec)
);
CREATE INDEX grains_object ON grains (object_id) WHERE object_id IS NOT NULL;

CREATE TABLE events (
    id bigserial PRIMARY KEY,
    event_type text NOT NULL,
    flow_id uuid,
    source_id uuid,
    ts_sec bigint NOT NULL,
    ts_nsec integer NOT NULL,
    body jsonb NOT NULL,
    origin uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"#,
    r#"
ALTER TABLE grains
    ADD COLUMN last_sec bigint,
    ADD COLUMN last_nsec integer,
    ADD COLUMN n_grains integer NOT NULL DEFAULT 1,
    ADD COLUMN run bytea;
-- Runs are at most 7,800 bytes: kept in the row, uncompressed.
ALTER TABLE grains ALTER COLUMN run SET STORAGE EXTERNAL;
ALTER TABLE grains SET (toast_tuple_target = 8160);
"#,
    // Runs in their second encoding (headers as changes of the one before, payloads in
    // the batch's object for large batches), which replicas of schema version 2 can
    // neither read nor delete with their objects' counts kept: they refuse to start on
    // this schema, and the lock makes the migration wait for (and, past the lock wait,
    // give up on) the sessions of those still running.
    r#"
LOCK TABLE grains IN ACCESS EXCLUSIVE MODE;
COMMENT ON COLUMN grains.run IS
    'a run of grains in encoding 1 or 2 (src/store/postgres/runs.rs); with object_id, its payloads are in that object from object_offset on';
"#,
];

/// Creates `schema` if needed and applies the migrations it lacks; returns the epoch.
///
/// Runs on its own connection holding a session advisory lock, so concurrent start-ups
/// apply each migration once; every migration runs in one transaction with its version
/// bump, so a crash leaves the schema at a whole version.
pub async fn migrate(client: &mut Client, schema: &str) -> Result<u64, StoreError> {
    let lock = lock_key("migrate", schema);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&lock])
        .await
        .map_err(pg_error)?;
    let result = apply(client, schema).await;
    // Unlocked explicitly (the connection may be reused); closing it would also unlock.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&lock])
        .await
        .map_err(pg_error);
    let epoch = result?;
    unlocked?;
    Ok(epoch)
}

async fn apply(client: &mut Client, schema: &str) -> Result<u64, StoreError> {
    let quoted = quote_ident(schema);
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {quoted};
             CREATE TABLE IF NOT EXISTS {quoted}.schema_version (version integer NOT NULL);"
        ))
        .await
        .map_err(pg_error)?;
    let row = client
        .query_opt(&format!("SELECT version FROM {quoted}.schema_version"), &[])
        .await
        .map_err(pg_error)?;
    let mut version = match row {
        Some(row) => usize::try_from(row.get::<_, i32>(0)).unwrap_or(usize::MAX),
        None => {
            client
                .execute(
                    &format!("INSERT INTO {quoted}.schema_version (version) VALUES (0)"),
                    &[],
                )
                .await
                .map_err(pg_error)?;
            0
        }
    };
    if version > MIGRATIONS.len() {
        return Err(StoreError::Unavailable(format!(
            "the database schema {schema} is at version {version}, newer than this \
             grainstore knows ({}): upgrade grainstore",
            MIGRATIONS.len()
        )));
    }
    while version < MIGRATIONS.len() {
        let txn = client.transaction().await.map_err(pg_error)?;
        txn.batch_execute(&format!("SET LOCAL search_path TO {quoted}"))
            .await
            .map_err(pg_error)?;
        // A migration that must wait for a table (held by the read sessions of replicas
        // still running) gives up rather than queueing every other query behind it.
        txn.batch_execute(&format!("SET LOCAL lock_timeout = '{MIGRATION_LOCK_WAIT}'"))
            .await
            .map_err(pg_error)?;
        txn.batch_execute(MIGRATIONS[version]).await.map_err(|e| {
            if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
                StoreError::Unavailable(format!(
                    "migrating the database schema {schema} to version {}: its tables stayed \
                     in use for {MIGRATION_LOCK_WAIT}; stop the replicas of the older version \
                     (see docs/deployment.md, upgrades) and start again",
                    version + 1
                ))
            } else {
                pg_error(e)
            }
        })?;
        version += 1;
        let v = i32::try_from(version).unwrap_or(i32::MAX);
        txn.execute(
            &format!("UPDATE {quoted}.schema_version SET version = $1"),
            &[&v],
        )
        .await
        .map_err(pg_error)?;
        txn.commit().await.map_err(pg_error)?;
        tracing::info!(schema, version, "database schema migrated");
    }
    let epoch: String = client
        .query_one(
            &format!("SELECT value FROM {quoted}.meta WHERE key = 'epoch'"),
            &[],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    epoch
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("meta epoch {epoch:?} is not a number")))
}

/// An identifier quoted for SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A stable advisory-lock key for `what` in `schema` (two schemas sharing a key only
/// serialise a little more than needed).
pub fn lock_key(what: &str, schema: &str) -> i64 {
    let a = crc32c::crc32c(format!("grainstore:{what}").as_bytes());
    let b = crc32c::crc32c(schema.as_bytes());
    (i64::from(a) << 32) | i64::from(b)
}
