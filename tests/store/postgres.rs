//! The postgres backend against the real engines: the conformance suite with payload
//! objects in an S3-compatible server (default and all-objects configurations) and in
//! memory, and what only this backend has — garbage collection of objects, checksums of
//! inline payloads, and replicas sharing one database and bucket.
//!
//! The tests need `GRAINSTORE_TEST_POSTGRES_URL` (a database where schemas may be
//! created) and, for S3, `GRAINSTORE_TEST_S3_ENDPOINT`, `GRAINSTORE_TEST_S3_BUCKET`,
//! `GRAINSTORE_TEST_S3_ACCESS_KEY` and `GRAINSTORE_TEST_S3_SECRET_KEY`; `.ci/run` sets
//! them. They are `#[ignore]`d so that a plain `cargo test` reports them as not run;
//! each test works in a schema of its own, dropped afterwards.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use grainstore::grain::Grain;
use grainstore::store::postgres::{ObjectStoreConfig, PostgresConfig, PostgresStore};
use grainstore::store::{FlowId, GrainQuery, Order, Store, StoreError};
use grainstore::time::{Bound, TimeRange, Timestamp};
use tokio_postgres::NoTls;

use crate::helpers::*;

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need GRAINSTORE_TEST_POSTGRES_URL, \
             GRAINSTORE_TEST_S3_ENDPOINT, GRAINSTORE_TEST_S3_BUCKET, \
             GRAINSTORE_TEST_S3_ACCESS_KEY and GRAINSTORE_TEST_S3_SECRET_KEY (.ci/run \
             sets them)"
        )
    })
}

/// Drops the test's schema (and so its tables) when the test ends, and the directory
/// of the store's object cache, if it has one.
pub struct SchemaGuard {
    url: String,
    schema: String,
    cache_dir: Option<tempfile::TempDir>,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let url = self.url.clone();
        let schema = self.schema.clone();
        let name = schema.clone();
        // A runtime of its own: the test's may be shutting down.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test schema {name}");
        }
    }
}

/// A fresh schema name.
fn fresh_schema() -> String {
    format!("gs_test_{}", uuid::Uuid::new_v4().simple())
}

/// The settings of a store in `schema` with payload objects at `objects`.
pub fn settings(setup: StoreSetup, schema: &str, objects: ObjectStoreConfig) -> PostgresConfig {
    let mut config = PostgresConfig::new(var("GRAINSTORE_TEST_POSTGRES_URL"), "");
    config.objects = objects;
    config.schema = schema.to_owned();
    config.max_sessions = setup.max_sessions;
    config.session_wait = setup.session_wait;
    config.pool_size = setup.max_sessions + 8;
    config.gc_interval = Duration::ZERO;
    config
}

/// Objects in the test S3 server, under a prefix of their own.
pub fn s3_objects(prefix: &str) -> ObjectStoreConfig {
    let endpoint = var("GRAINSTORE_TEST_S3_ENDPOINT");
    ObjectStoreConfig {
        url: format!("s3://{}/{prefix}", var("GRAINSTORE_TEST_S3_BUCKET")),
        s3_allow_http: endpoint.starts_with("http://"),
        // The conformance suite uploads unsigned (what `auto` does over HTTPS); the
        // replica tests take `auto`, signed over the test server's plain HTTP.
        s3_payload_signing: grainstore::store::postgres::PayloadSigning::Unsigned,
        s3_endpoint: endpoint,
        s3_region: "us-east-1".into(),
        s3_access_key_id: var("GRAINSTORE_TEST_S3_ACCESS_KEY"),
        s3_secret_access_key: var("GRAINSTORE_TEST_S3_SECRET_KEY"),
    }
}

async fn open_with(config: PostgresConfig) -> (PostgresStore, SchemaGuard) {
    let guard = SchemaGuard {
        url: config.url.clone(),
        schema: config.schema.clone(),
        cache_dir: None,
    };
    let store = PostgresStore::open(config).await.expect("open the store");
    (store, guard)
}

/// As [`open_with`], with an object cache of `bytes` in a directory of its own.
async fn open_cached(mut config: PostgresConfig, bytes: u64) -> (PostgresStore, SchemaGuard) {
    let dir = tempfile::tempdir().expect("cache directory");
    config.object_cache = Some((dir.path().join("object-cache"), bytes));
    let (store, mut guard) = open_with(config).await;
    guard.cache_dir = Some(dir);
    (store, guard)
}

/// Every payload in an S3 object, read through an object cache of 4 MiB that keeps
/// uploads too (an object takes at most an eighth: larger ones go past it, and the
/// suite's writes make it drop objects for room).
pub async fn open_s3_cached(setup: StoreSetup) -> (PostgresStore, SchemaGuard) {
    let schema = fresh_schema();
    let mut config = settings(setup, &schema, s3_objects(&schema));
    config.inline_max = 0;
    config.object_cache_uploads = true;
    open_cached(config, 4 << 20).await
}

/// As [`open_s3_cached`], the cache keeping only what is read (the default).
pub async fn open_s3_read_cached(setup: StoreSetup) -> (PostgresStore, SchemaGuard) {
    let schema = fresh_schema();
    let mut config = settings(setup, &schema, s3_objects(&schema));
    config.inline_max = 0;
    config.object_cache_uploads = false;
    open_cached(config, 4 << 20).await
}

/// The default configuration with objects in S3.
pub async fn open_s3(setup: StoreSetup) -> (PostgresStore, SchemaGuard) {
    let schema = fresh_schema();
    open_with(settings(setup, &schema, s3_objects(&schema))).await
}

/// Every payload in an S3 object (nothing inline).
pub async fn open_s3_objects_only(setup: StoreSetup) -> (PostgresStore, SchemaGuard) {
    let schema = fresh_schema();
    let mut config = settings(setup, &schema, s3_objects(&schema));
    config.inline_max = 0;
    open_with(config).await
}

/// Every appending batch of small grains with its payloads in an S3 object, its runs
/// holding only keys and headers (`inline_batch_max` 0).
pub async fn open_s3_runs_in_objects(setup: StoreSetup) -> (PostgresStore, SchemaGuard) {
    let schema = fresh_schema();
    let mut config = settings(setup, &schema, s3_objects(&schema));
    config.inline_batch_max = 0;
    open_with(config).await
}

/// Objects in memory (PostgreSQL only).
pub async fn open_memory(setup: StoreSetup) -> (PostgresStore, SchemaGuard) {
    let schema = fresh_schema();
    let objects = ObjectStoreConfig {
        url: "memory://".into(),
        ..Default::default()
    };
    open_with(settings(setup, &schema, objects)).await
}

crate::store_conformance!(
    pg_s3,
    crate::postgres::open_s3,
    ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"
);
crate::store_conformance!(
    pg_s3_objects_only,
    crate::postgres::open_s3_objects_only,
    ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"
);
crate::store_conformance!(
    pg_s3_runs_in_objects,
    crate::postgres::open_s3_runs_in_objects,
    ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"
);
crate::store_conformance!(
    pg_s3_cached,
    crate::postgres::open_s3_cached,
    ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"
);
crate::store_conformance!(
    pg_s3_read_cached,
    crate::postgres::open_s3_read_cached,
    ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"
);
crate::store_conformance!(
    pg_memory_objects,
    crate::postgres::open_memory,
    ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"
);

/// A store in a fresh schema with payloads in S3, and a plain connection to its schema.
async fn s3_store_and_sql() -> (PostgresStore, SchemaGuard, tokio_postgres::Client, String) {
    let schema = fresh_schema();
    let (store, guard) = open_with(settings(
        StoreSetup::default(),
        &schema,
        s3_objects(&schema),
    ))
    .await;
    let db = sql(&schema).await;
    (store, guard, db, schema)
}

/// A plain connection to the test database, in `schema`.
async fn sql(schema: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&var("GRAINSTORE_TEST_POSTGRES_URL"), NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("SET search_path TO {schema}"))
        .await
        .expect("search path");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"]
async fn deleted_grains_free_their_objects_after_the_grace_period() {
    let (store, _guard, db, schema) = s3_store_and_sql().await;
    let objects = || async {
        db.query_one("SELECT count(*) FROM objects", &[])
            .await
            .expect("count")
            .get::<_, i64>(0)
    };
    let flow = create(&store, video_flow()).await;
    // Two batches, two objects.
    write(
        &store,
        flow.id,
        (0..3).map(|s| frame(&flow, secs(s), 40_000, 1)),
    )
    .await
    .unwrap();
    write(
        &store,
        flow.id,
        (3..6).map(|s| frame(&flow, secs(s), 40_000, 1)),
    )
    .await
    .unwrap();
    assert_eq!(objects().await, 2);

    // Half of the first object's grains: it stays.
    store
        .delete_grains(flow.id, &tr("[0:0_1:0]"))
        .await
        .unwrap();
    let report = store.collect_garbage(Duration::ZERO).await.unwrap();
    assert!(report.ran);
    assert_eq!(report.released, 0);
    assert_eq!(objects().await, 2);

    // A session opened before the rest of it is deleted can read it within the grace.
    let early = store.open_read(flow.id).await.unwrap();
    store.delete_grains(flow.id, &tr("[2:0]")).await.unwrap();
    let report = store
        .collect_garbage(Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(report.released, 0, "within the grace period");
    let seen = collect(&early, GrainQuery::all()).await.unwrap();
    assert_eq!(stamps(&seen), [2, 3, 4, 5].map(secs));
    drop(early);

    let report = store.collect_garbage(Duration::ZERO).await.unwrap();
    assert_eq!(report.released, 1);
    assert_eq!(objects().await, 1);
    assert_eq!(
        stamps(&read_all(&store, flow.id).await),
        [3, 4, 5].map(secs)
    );

    // An object no row references (a commit that died after its upload) is an orphan.
    let config = s3_objects(&schema);
    let raw = raw_objects(&config);
    let orphan = object_store::path::Path::from("grains/orphan/left-by-a-crash");
    object_store::ObjectStoreExt::put(&*raw, &orphan, bytes::Bytes::from_static(b"x").into())
        .await
        .unwrap();
    let report = store
        .collect_garbage(Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(report.orphans, 0, "too young");
    let report = store.collect_garbage(Duration::ZERO).await.unwrap();
    assert_eq!(report.orphans, 1);
    assert!(
        object_store::ObjectStoreExt::head(&*raw, &orphan)
            .await
            .is_err()
    );

    // Deleting the flow releases the last object.
    assert!(store.delete_flow(flow.id).await.unwrap());
    let report = store.collect_garbage(Duration::ZERO).await.unwrap();
    assert_eq!((report.released, report.orphans), (1, 0));
    assert_eq!(objects().await, 0);
}

/// A client of the test bucket under the prefix `config` names.
fn raw_objects(config: &ObjectStoreConfig) -> std::sync::Arc<dyn object_store::ObjectStore> {
    let url = url::Url::parse(&config.url).expect("url");
    let bucket = url.host_str().expect("bucket");
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_endpoint(&config.s3_endpoint)
        .with_allow_http(true)
        .with_region(&config.s3_region)
        .with_access_key_id(&config.s3_access_key_id)
        .with_secret_access_key(&config.s3_secret_access_key)
        .build()
        .expect("s3 client");
    std::sync::Arc::new(object_store::prefix::PrefixStore::new(
        store,
        url.path().trim_matches('/'),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"]
async fn corrupt_payloads_fail_the_read() {
    let (store, _guard, db, schema) = s3_store_and_sql().await;
    let flow = create(&store, video_flow()).await;
    let sent: Vec<_> = (0..3).map(|s| frame(&flow, secs(s), 100, 2)).collect();
    // One batch each: single rows (a batch's small grains become a run, tested below).
    for grain in &sent {
        write(&store, flow.id, [grain.clone()]).await.unwrap();
    }
    db.execute(
        "UPDATE grains SET inline_payload = set_byte(inline_payload, 5, get_byte(inline_payload, 5) # 1)
         WHERE ts_sec = 1",
        &[],
    )
    .await
    .unwrap();
    let session = store.open_read(flow.id).await.unwrap();
    assert!(matches!(
        session.get(secs(1), true).await,
        Err(StoreError::Corrupt(_))
    ));
    // Without the payload the grain still reads.
    assert!(session.get(secs(1), false).await.unwrap().is_some());
    // A stream delivers the grains before the damage, then the error.
    let mut stream = session.grains(GrainQuery::all());
    assert_stored(&stream.next().await.unwrap().unwrap(), &sent[0]);
    assert!(matches!(
        stream.next().await,
        Some(Err(StoreError::Corrupt(_)))
    ));
    assert_pages_stop_at_damage(&session, tr("_"), Order::Ascending, 1).await;
    assert_pages_stop_at_damage(&session, tr("_"), Order::Descending, 1).await;

    // A missing object is corrupt data too.
    let big = frame(&flow, secs(10), 50_000, 2);
    write(&store, flow.id, [big]).await.unwrap();
    let key: String = db
        .query_one("SELECT key FROM objects", &[])
        .await
        .unwrap()
        .get(0);
    let raw = raw_objects(&s3_objects(&schema));
    object_store::ObjectStoreExt::delete(&*raw, &object_store::path::Path::from(key))
        .await
        .unwrap();
    let session = store.open_read(flow.id).await.unwrap();
    assert!(matches!(
        session.get(secs(10), true).await,
        Err(StoreError::Corrupt(_))
    ));
    assert_gsf_fails_at(&session, secs(10)).await;

    // A payload object changed or cut short after it was stored: its grain's GSF fails.
    for (at, damage) in [(20, "a flipped byte"), (21, "cut short")] {
        let sent = frame(&flow, secs(at), 50_000, 2);
        write(&store, flow.id, [sent]).await.unwrap();
        let key: String = db
            .query_one(
                "SELECT o.key FROM grains g JOIN objects o ON o.id = g.object_id
                 WHERE g.ts_sec = $1",
                &[&at],
            )
            .await
            .unwrap()
            .get(0);
        let path = object_store::path::Path::from(key);
        let mut bytes = object_store::ObjectStoreExt::get(&*raw, &path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec();
        if damage == "cut short" {
            bytes.truncate(bytes.len() - 100);
        } else {
            bytes[30_000] ^= 1;
        }
        object_store::ObjectStoreExt::put(&*raw, &path, bytes.into())
            .await
            .unwrap();
        let session = store.open_read(flow.id).await.unwrap();
        assert_gsf_fails_at(&session, secs(at)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"]
async fn small_grains_are_stored_as_runs_split_where_writes_and_deletes_land() {
    // 300 grains of 150 bytes: 45,000 bytes of payloads, kept in the runs.
    runs_split_where_writes_and_deletes_land(150).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"]
async fn a_large_batch_of_small_grains_keeps_its_payloads_in_an_object_beside_its_runs() {
    // 300 grains of 250 bytes: 75,000 bytes of payloads, more than inline_batch_max
    // (64 KiB).
    runs_split_where_writes_and_deletes_land(250).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"]
async fn empty_payloads_in_a_batch_object_are_read_split_and_deleted_through_the_cache() {
    let schema = fresh_schema();
    let mut config = settings(StoreSetup::default(), &schema, s3_objects(&schema));
    config.object_cache_uploads = true;
    let (store, _guard) = open_cached(config, 64 << 20).await;
    let db = sql(&schema).await;
    let flow = create(&store, video_flow()).await;
    // 300 grains, every seventh with an empty payload: 76,800 bytes in all, so the
    // batch's payloads go to its object.
    let mut model: std::collections::BTreeMap<i64, grainstore::grain::Grain> = (0..300)
        .map(|n| {
            let len = if n % 7 == 0 { 0 } else { 300 };
            (n * 2, frame(&flow, tenth(n * 2), len, 2))
        })
        .collect();
    write(&store, flow.id, model.values().cloned())
        .await
        .unwrap();
    let (all, runs, grains) = grain_rows(&db).await;
    assert_eq!((runs, grains), (all, 300));
    assert_eq!(object_references(&db).await, (all, 300, 300));
    // Read from the cache, which kept the upload (in the background; without its
    // empty parts): no request to the object store.
    let bytes: usize = model.values().map(|g| g.payload().len()).sum();
    cache_holds(&store, 1, bytes as u64).await;
    let misses = store_metric(&store, "grainstore_object_cache_misses_total");
    check_runs(&store, flow.id, &model).await;
    assert_eq!(
        store_metric(&store, "grainstore_object_cache_misses_total"),
        misses
    );
    assert!(store_metric(&store, "grainstore_object_cache_hits_total") > 0);
    // A grain written inside a run splits it, empty payloads included; a delete cuts
    // through what is left.
    let inside = frame(&flow, tenth(101), 0, 3);
    write(&store, flow.id, [inside.clone()]).await.unwrap();
    model.insert(101, inside);
    check_runs(&store, flow.id, &model).await;
    let range = TimeRange::new(Bound::Inclusive(tenth(301)), Bound::Exclusive(tenth(451)));
    delete_from(&store, flow.id, &mut model, &range).await;
    check_runs(&store, flow.id, &model).await;
    let (_, referenced, live) = object_references(&db).await;
    assert_eq!(
        (referenced, live),
        (model.len() as i64 - 1, model.len() as i64 - 1)
    );
    store
        .delete_grains(flow.id, &TimeRange::eternity())
        .await
        .unwrap();
    assert_eq!(object_references(&db).await, (0, 0, 0));
}

/// The grains rows that reference an object, the grains in them, and the sum of the
/// objects' counts of grains (equal while the accounting holds).
async fn object_references(db: &tokio_postgres::Client) -> (i64, i64, i64) {
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM grains WHERE object_id IS NOT NULL),
                    (SELECT COALESCE(sum(n_grains), 0)::int8 FROM grains
                      WHERE object_id IS NOT NULL),
                    (SELECT COALESCE(sum(live), 0)::int8 FROM objects)",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

async fn runs_split_where_writes_and_deletes_land(payload: usize) {
    let in_object = 300 * payload > 64 << 10;
    let (store, _guard, db, _) = s3_store_and_sql().await;
    let flow = create(&store, video_flow()).await;
    // Every tenth of a second for 30 s, in one batch (shuffled), in runs.
    let mut model: std::collections::BTreeMap<i64, grainstore::grain::Grain> = (0..300)
        .map(|n| (n * 2, frame(&flow, tenth(n * 2), payload, 1)))
        .collect();
    let mut batch: Vec<_> = model.values().cloned().collect();
    batch.reverse();
    write(&store, flow.id, batch).await.unwrap();
    let (all, runs, grains) = grain_rows(&db).await;
    assert_eq!(grains, 300);
    assert!(
        runs > 0 && all < 300 / 10,
        "{all} rows, {runs} of them runs"
    );
    let (rows, referenced, live) = object_references(&db).await;
    if in_object {
        // Every row a run whose payloads are in the batch's one object.
        assert_eq!((rows, referenced, live), (all, 300, 300));
        let objects: i64 = db
            .query_one("SELECT count(*) FROM objects", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(objects, 1);
    } else {
        assert_eq!((rows, live), (0, 0));
    }

    check_runs(&store, flow.id, &model).await;

    // New grains between the stored ones split the runs around them.
    let odd: Vec<_> = [101, 103, 351]
        .map(|n| frame(&flow, tenth(n), 150, 3))
        .into();
    let outcome = write(&store, flow.id, odd.clone()).await.unwrap();
    assert_eq!(outcome.written, 3);
    for (n, g) in [101, 103, 351].into_iter().zip(odd) {
        model.insert(n, g);
    }
    let (after, _, grains) = grain_rows(&db).await;
    assert_eq!(grains, 303);
    assert!(
        after > all + 3,
        "the runs holding 10.1 s and 35.1 s are single rows now"
    );
    check_runs(&store, flow.id, &model).await;
    // A re-sent grain from the middle of a run is unchanged; a changed one conflicts.
    let outcome = write(&store, flow.id, [model[&200].clone()]).await.unwrap();
    assert_eq!((outcome.written, outcome.unchanged), (0, 1));
    assert!(matches!(
        write(&store, flow.id, [frame(&flow, tenth(200), 150, 9)]).await,
        Err(StoreError::Conflict { .. })
    ));

    // A delete cutting through runs at both ends.
    let range = TimeRange::new(Bound::Exclusive(tenth(203)), Bound::Inclusive(tenth(447)));
    delete_from(&store, flow.id, &mut model, &range).await;
    assert_eq!(grain_rows(&db).await.2, model.len() as i64);
    check_runs(&store, flow.id, &model).await;
    // The object counts the grains that still reference it (the three written after the
    // batch, one at a time, hold their payloads).
    let (_, referenced, live) = object_references(&db).await;
    assert_eq!(referenced, live);
    if in_object {
        let inline = [101, 103, 351]
            .iter()
            .filter(|n| model.contains_key(n))
            .count() as i64;
        assert_eq!(live, model.len() as i64 - inline);
    }
    assert_eq!(
        store
            .open_read(flow.id)
            .await
            .unwrap()
            .timerange()
            .await
            .unwrap(),
        // From the first grain to the end of the last (a 25 Hz frame).
        TimeRange::new(
            Bound::Inclusive(tenth(0)),
            Bound::Exclusive(Timestamp::from_nanos(tenth(598).to_nanos() + 40_000_000).unwrap())
        )
    );
    // With payloads in an object, the batch's runs are long and the writes above split
    // them before the delete came: another batch after the last grain gives a delete
    // through runs whose payloads are in an object, and the damage below such a run.
    if in_object {
        let more: Vec<_> = (300..600)
            .map(|n| (n * 2, frame(&flow, tenth(n * 2), payload, 1)))
            .collect();
        write(&store, flow.id, more.iter().map(|(_, g)| g.clone()))
            .await
            .unwrap();
        model.extend(more);
        let (_, runs_before, _) = grain_rows(&db).await;
        let range = TimeRange::new(Bound::Exclusive(tenth(700)), Bound::Inclusive(tenth(760)));
        delete_from(&store, flow.id, &mut model, &range).await;
        let (_, runs_after, grains) = grain_rows(&db).await;
        assert_eq!(grains, model.len() as i64);
        assert_eq!(
            runs_after,
            runs_before - 1,
            "the run holding 70 s was split"
        );
        let (_, referenced, live) = object_references(&db).await;
        assert_eq!(referenced, live);
        check_runs(&store, flow.id, &model).await;
    }
    let last = *model.keys().next_back().unwrap();

    // A damaged payload in a run fails its own grain; a run cut short fails its grains,
    // and neither is served nor crashes the read.
    let (last_run, intact): ((i64, i32), Vec<u8>) = {
        let row = db
            .query_one(
                "SELECT ts_sec, ts_nsec, run FROM grains WHERE run IS NOT NULL
                 ORDER BY ts_sec DESC, ts_nsec DESC LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        ((row.get(0), row.get(1)), row.get(2))
    };
    for damage in [
        "set_byte($3::bytea, length($3::bytea) - 1, get_byte($3::bytea, length($3::bytea) - 1) # 1)",
        "substring($3::bytea from 1 for 40)",
    ] {
        db.execute(
            &format!("UPDATE grains SET run = {damage} WHERE ts_sec = $1 AND ts_nsec = $2"),
            &[&last_run.0, &last_run.1, &intact],
        )
        .await
        .unwrap();
        let session = store.open_read(flow.id).await.unwrap();
        assert!(matches!(
            session.get(tenth(last), true).await,
            Err(StoreError::Corrupt(_))
        ));
        let got = collect(&session, GrainQuery::all()).await;
        assert!(
            matches!(got, Err(StoreError::Corrupt(_))),
            "{damage}: {got:?}"
        );
        assert_gsf_fails_at(&session, tenth(last)).await;
        // A flipped payload byte fails only its own grain.
        let flipped = damage.starts_with("set_byte");
        assert_eq!(session.get(tenth(last - 2), true).await.is_ok(), flipped);
        // Grains in other rows are untouched: read, paged up to the damage, deleted,
        // written after it.
        let n0 = *model.keys().next().unwrap();
        assert!(session.get(tenth(n0), true).await.unwrap().is_some());
        let first_damaged = if flipped {
            tenth(last)
        } else {
            join_key(last_run)
        };
        let before = model
            .range(..)
            .filter(|(_, g)| g.origin_timestamp() < first_damaged);
        let mut stream = session.grains(GrainQuery::all());
        for (_, sent) in before {
            assert_stored(&stream.next().await.unwrap().unwrap(), sent);
        }
        assert!(matches!(
            stream.next().await,
            Some(Err(StoreError::Corrupt(_)))
        ));
        drop(stream);
        // In pages: the grains before the damage (one page holds them all), then the
        // error, without the page saying the range ended.
        let good = model
            .values()
            .filter(|g| g.origin_timestamp() < first_damaged);
        let good = good.count();
        assert_pages_stop_at_damage(&session, TimeRange::eternity(), Order::Ascending, good).await;
        drop(session);
        let range = TimeRange::new(Bound::Inclusive(tenth(n0)), Bound::Inclusive(tenth(n0)));
        assert_eq!(store.delete_grains(flow.id, &range).await.unwrap(), 1);
        model.remove(&n0);
        // Right after the damaged run: a grain planned against the stored rows (too
        // large to be inline), one appended, then both deleted.
        let big = frame(&flow, tenth(last + 1), 40_000, 1);
        let past = frame(&flow, tenth(last + 2), 100, 1);
        for grain in [big, past] {
            let outcome = write(&store, flow.id, [grain]).await.unwrap();
            assert_eq!(outcome.written, 1, "{damage}");
        }
        let after = TimeRange::new(Bound::Inclusive(tenth(last + 1)), Bound::Unbounded);
        assert_eq!(store.delete_grains(flow.id, &after).await.unwrap(), 2);
    }
    // Deleting the rest releases every object, the batch's included.
    store
        .delete_grains(flow.id, &TimeRange::eternity())
        .await
        .unwrap();
    let (rows, _, live) = object_references(&db).await;
    assert_eq!((rows, live), (0, 0));
    let held: i64 = db
        .query_one(
            "SELECT count(*) FROM objects WHERE released_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"]
async fn runs_in_the_first_encoding_are_still_read_split_and_deleted() {
    let (store, _guard, db, _) = s3_store_and_sql().await;
    let flow = create(&store, video_flow()).await;
    // Two batches of 20, each a run.
    let mut model: std::collections::BTreeMap<i64, grainstore::grain::Grain> = (0..20)
        .chain(50..70)
        .map(|n| (n * 2, frame(&flow, tenth(n * 2), 120, 5)))
        .collect();
    let batches: [Vec<_>; 2] = [
        model.range(..100).map(|(_, g)| g.clone()).collect(),
        model.range(100..).map(|(_, g)| g.clone()).collect(),
    ];
    for batch in &batches {
        write(&store, flow.id, batch.iter().cloned()).await.unwrap();
    }
    assert_eq!(grain_rows(&db).await, (2, 2, 40));
    // Each run rewritten as the first encoding wrote runs (whole headers, the end's
    // twelve bytes even when there is none), as a database of an earlier version holds.
    for batch in &batches {
        let mut run = vec![1u8];
        run.extend_from_slice(&(batch.len() as u16).to_le_bytes());
        for grain in batch {
            let nanos = grain.origin_timestamp().to_nanos();
            let end = nanos + 40_000_000;
            for (t, flag) in [(nanos, None), (end, Some(1u8))] {
                if let Some(flag) = flag {
                    run.push(flag);
                }
                run.extend_from_slice(&(t.div_euclid(1_000_000_000) as i64).to_le_bytes());
                run.extend_from_slice(&(t.rem_euclid(1_000_000_000) as i32).to_le_bytes());
            }
            let mut header = Vec::new();
            grain.encode_header(&mut header);
            run.extend_from_slice(&(header.len() as u32).to_le_bytes());
            run.extend_from_slice(&header);
            run.extend_from_slice(&crc32c::crc32c(grain.payload()).to_le_bytes());
            run.extend_from_slice(&(grain.payload().len() as u32).to_le_bytes());
            run.extend_from_slice(grain.payload());
        }
        let first = batch[0].origin_timestamp().to_nanos();
        let (sec, nsec) = (
            first.div_euclid(1_000_000_000) as i64,
            first.rem_euclid(1_000_000_000) as i32,
        );
        let updated = db
            .execute(
                "UPDATE grains SET run = $1, len = $2 WHERE ts_sec = $3 AND ts_nsec = $4",
                &[&run, &(run.len() as i64), &sec, &nsec],
            )
            .await
            .unwrap();
        assert_eq!(updated, 1);
    }
    check_runs(&store, flow.id, &model).await;
    // A delete cuts through the first; a grain written inside the second splits it.
    let range = TimeRange::new(Bound::Inclusive(tenth(10)), Bound::Exclusive(tenth(30)));
    delete_from(&store, flow.id, &mut model, &range).await;
    assert_eq!(grain_rows(&db).await, (11, 1, 30));
    check_runs(&store, flow.id, &model).await;
    let inside = frame(&flow, tenth(111), 120, 6);
    assert_eq!(
        write(&store, flow.id, [inside.clone()])
            .await
            .unwrap()
            .written,
        1
    );
    model.insert(111, inside);
    assert_eq!(grain_rows(&db).await, (31, 0, 31));
    check_runs(&store, flow.id, &model).await;
}

/// The timestamp of a row's key.
fn join_key((sec, nsec): (i64, i32)) -> Timestamp {
    Timestamp::from_nanos(i128::from(sec) * 1_000_000_000 + i128::from(nsec)).unwrap()
}

/// The rows of the grains table: all, runs, grains in them.
async fn grain_rows(db: &tokio_postgres::Client) -> (i64, i64, i64) {
    let row = db
        .query_one(
            "SELECT count(*), count(run), COALESCE(sum(n_grains), 0)::int8 FROM grains",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Deletes `range` of `flow` and the grains in it from `model` (grains by tenth),
/// checking that the store deleted as many.
async fn delete_from(
    store: &PostgresStore,
    flow: FlowId,
    model: &mut std::collections::BTreeMap<i64, grainstore::grain::Grain>,
    range: &TimeRange,
) {
    let doomed = model.keys().filter(|&&n| range.contains(tenth(n))).count();
    assert_eq!(
        store.delete_grains(flow, range).await.unwrap(),
        doomed as u64
    );
    model.retain(|&n, _| !range.contains(tenth(n)));
}

/// Tenth of a second `n` after a fixed start.
fn tenth(n: i64) -> Timestamp {
    Timestamp::from_nanos(1_700_000_000_000_000_000 + i128::from(n) * 100_000_000).unwrap()
}

/// Reads of the flow agree with `model` (grains by tenth): all of it, a range backwards
/// in small pages, single grains.
async fn check_runs(
    store: &PostgresStore,
    flow: grainstore::store::FlowId,
    model: &std::collections::BTreeMap<i64, grainstore::grain::Grain>,
) {
    let want: Vec<_> = model.values().cloned().collect();
    let got = read_all(store, flow).await;
    assert_eq!(stamps(&got), stamps(&want));
    for (got, sent) in got.iter().zip(&want) {
        assert_stored(got, sent);
    }
    // Backwards, in small pages, from the middle of a run.
    let session =
        store
            .open_read(flow)
            .await
            .unwrap()
            .with_page_limit(grainstore::store::PageLimit {
                grains: 7,
                bytes: usize::MAX,
            });
    let range = TimeRange::new(Bound::Exclusive(tenth(101)), Bound::Inclusive(tenth(499)));
    let mut within: Vec<_> = stamps(&want)
        .into_iter()
        .filter(|t| range.contains(*t))
        .collect();
    within.reverse();
    let got = collect(
        &session,
        query(range, grainstore::store::Order::Descending, None),
    )
    .await
    .unwrap();
    assert_eq!(stamps(&got), within);
    for n in [100, 101, 102, 103, 598] {
        let got = session.get(tenth(n), true).await.unwrap();
        assert_eq!(got.is_some(), model.contains_key(&n), "tenth {n}");
    }
}

/// A GSF read of the grains from `at` on gives no block and the error `Corrupt`.
async fn assert_gsf_fails_at(session: &grainstore::store::ReadSession, at: Timestamp) {
    let query = GrainQuery {
        range: TimeRange::new(Bound::Inclusive(at), Bound::Inclusive(at)),
        ..GrainQuery::all()
    };
    let mut pages = session.gsf_pages(query, 1);
    match pages.next().await {
        Some(Err(StoreError::Corrupt(_))) => {}
        Some(Ok(page)) => panic!("{} grains of GSF from a damaged object", page.grains),
        other => panic!("{other:?} from a damaged object"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"]
async fn concurrent_writers_of_one_flow_neither_duplicate_nor_lose() {
    let schema = fresh_schema();
    let (store, _guard) = open_with(settings(
        StoreSetup::default(),
        &schema,
        s3_objects(&schema),
    ))
    .await;
    let store = std::sync::Arc::new(store);
    let flow = create(&*store, video_flow()).await;
    // Four writers send overlapping, identical grains (every timestamp by two writers).
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            let flow = flow.clone();
            tokio::spawn(async move {
                let mut totals = (0, 0);
                for round in 0..5 {
                    let start = (w / 2) * 50 + round * 10;
                    let grains = (start..start + 10).map(|s| frame(&flow, secs(s), 30_000, 3));
                    let outcome = write(&*store, flow.id, grains).await.unwrap();
                    totals.0 += outcome.written;
                    totals.1 += outcome.unchanged;
                }
                totals
            })
        })
        .collect();
    let mut written = 0;
    let mut unchanged = 0;
    for writer in writers {
        let (w, u) = writer.await.unwrap();
        written += w;
        unchanged += u;
    }
    assert_eq!(written, 100, "each timestamp written once");
    assert_eq!(unchanged, 100, "and found unchanged once");
    let stored = read_all(&*store, flow.id).await;
    assert_eq!(stored.len(), 100);
    for grain in &stored {
        let s = grain.origin_timestamp().to_nanos() / 1_000_000_000;
        assert_stored(grain, &frame(&flow, secs(s as i64), 30_000, 3));
    }
}

/// A flow the replica found writable a moment ago opens for writing without a lookup, and
/// the commit still decides: changed behind the service's back (no event tells the
/// replica), its writes are refused by the commit's own check, small grains, grains for
/// the object store and a commit of nothing alike, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"]
async fn a_flow_taken_as_writable_is_still_checked_by_the_commit() {
    let (store, _guard, db, _) = s3_store_and_sql().await;
    let (_, _, mut events) = store.events().subscribe(None);
    // Shows the replica `flow` writable once its own events up to `last` have come back
    // through the listener (which forgets a flow at each flows/created, flows/updated
    // and flows/deleted event).
    let mut seen_writable = async |flow: &grainstore::store::Flow, last: &str| {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let event = events.recv().await.expect("the log goes on");
                if event.event_type == last && event.flow_id == Some(flow.id) {
                    break;
                }
            }
        })
        .await
        .expect("the flow's events came back");
        drop(store.open_write(flow.id).await.unwrap());
    };
    let flow = create(&store, video_flow()).await;
    write(&store, flow.id, [frame(&flow, secs(0), 100, 1)])
        .await
        .unwrap();
    seen_writable(&flow, "flows/grains_added").await;
    db.execute(
        "UPDATE flows SET read_only = true WHERE id = $1",
        &[&flow.id],
    )
    .await
    .unwrap();
    for grain in [Some((1, 100)), Some((2, 50_000)), None] {
        let grain = grain.map(|(s, len)| frame(&flow, secs(s), len, 1));
        let refused = refused_commit(&store, flow.id, grain).await;
        assert!(matches!(refused, StoreError::ReadOnly(_)), "{refused:?}");
        seen_writable_again(&store, &db, flow.id).await;
    }
    for s in [Some(0), None] {
        let other = create(&store, video_flow()).await;
        seen_writable(&other, "flows/created").await;
        db.execute("DELETE FROM flows WHERE id = $1", &[&other.id])
            .await
            .unwrap();
        let grain = s.map(|s| frame(&other, secs(s), 100, 1));
        let refused = refused_commit(&store, other.id, grain).await;
        assert!(
            matches!(refused, StoreError::FlowNotFound(_)),
            "{refused:?}"
        );
    }
    db.execute(
        "UPDATE flows SET read_only = false WHERE id = $1",
        &[&flow.id],
    )
    .await
    .unwrap();
    assert_eq!(stamps(&read_all(&store, flow.id).await), [secs(0)]);
}

/// A commit dropped while its transaction waits on the server (a client gone, a request
/// cancelled) ends that transaction: the connection does not go back to the pool inside
/// it, holding the flow's locks, and the next commit goes through. Both sizes of grain:
/// inline, and in an object whose row the transaction had inserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"]
async fn a_commit_dropped_inside_its_transaction_rolls_it_back() {
    let (store, _guard, blocker, schema) = s3_store_and_sql().await;
    let store = std::sync::Arc::new(store);
    let watcher = sql(&schema).await;
    let flow = create(&*store, video_flow()).await;
    let blocker_pid: i32 = blocker
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    for (s, len) in [(0, 100), (2, 50_000)] {
        // The flow's row locked behind the service's back: the commit's transaction
        // waits for it at its first statement.
        blocker.batch_execute("BEGIN").await.unwrap();
        blocker
            .execute("SELECT 1 FROM flows WHERE id = $1 FOR UPDATE", &[&flow.id])
            .await
            .unwrap();
        let commit = {
            let store = store.clone();
            let grain = frame(&flow, secs(s), len, 1);
            tokio::spawn(async move { write(&*store, flow.id, [grain]).await })
        };
        let waiting = "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))";
        tokio::time::timeout(Duration::from_secs(10), async {
            while watcher
                .query_one(waiting, &[&blocker_pid])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 0
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the commit waits for the row");
        commit.abort();
        assert!(commit.await.unwrap_err().is_cancelled());
        blocker.batch_execute("ROLLBACK").await.unwrap();
        // Once the statements it had sent have run, the dropped transaction ends: nothing
        // holds the flow's row any more.
        let free = "SELECT 1 FROM flows WHERE id = $1 FOR UPDATE NOWAIT";
        tokio::time::timeout(Duration::from_secs(10), async {
            while watcher.execute(free, &[&flow.id]).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the dropped commit's transaction ended");
        let grain = frame(&flow, secs(s + 1), len, 1);
        tokio::time::timeout(Duration::from_secs(10), write(&*store, flow.id, [grain]))
            .await
            .expect("the next commit is not held up")
            .unwrap();
    }
    assert_eq!(
        stamps(&read_all(&*store, flow.id).await),
        [secs(1), secs(3)]
    );
    let objects: i64 = watcher
        .query_one("SELECT count(*) FROM objects", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        objects, 1,
        "the dropped commit's object row was rolled back"
    );
}

/// Opens a write session on `flow` from what `store` saw (the open must not refuse it),
/// commits `grain` or nothing, and returns the commit's refusal; the next open, which
/// looks the flow up again, must refuse it alike.
async fn refused_commit(
    store: &PostgresStore,
    flow: FlowId,
    grain: Option<grainstore::grain::Grain>,
) -> StoreError {
    let mut session = store
        .open_write(flow)
        .await
        .expect("opened on what the replica saw");
    if let Some(grain) = grain {
        session.stage(grain).unwrap();
    }
    let refused = session.commit().await.expect_err("the commit refuses");
    let again = store
        .open_write(flow)
        .await
        .err()
        .expect("the next open refuses");
    assert_eq!(
        std::mem::discriminant(&again),
        std::mem::discriminant(&refused),
        "{again:?} after {refused:?}"
    );
    refused
}

/// Shows `store` the flow writable (a session opened while `read_only` is off), then makes
/// it read-only again behind the service's back.
async fn seen_writable_again(store: &PostgresStore, db: &tokio_postgres::Client, flow: FlowId) {
    let update = "UPDATE flows SET read_only = $2 WHERE id = $1";
    db.execute(update, &[&flow, &false]).await.unwrap();
    drop(store.open_write(flow).await.unwrap());
    db.execute(update, &[&flow, &true]).await.unwrap();
}

/// A replica remembers the flows it saw writable, so that opening a write session needs no
/// query; a flow made read-only or deleted through any replica is refused all the same
/// (at the commit's own check until the change's notification arrives, at the open
/// after), and through the replica itself at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"]
async fn flows_changed_on_any_replica_are_checked_again_before_writes() {
    let schema = fresh_schema();
    let open = || {
        open_with(settings(
            StoreSetup::default(),
            &schema,
            s3_objects(&schema),
        ))
    };
    let ((a, _guard), (b, _same)) = (open().await, open().await);
    let flow = create(&a, video_flow()).await;
    let with_read_only = |read_only| {
        let mut flow = flow.clone();
        flow.read_only = read_only;
        flow
    };
    let grain = |s| [frame(&flow, secs(s), 100, 1)];
    // A has seen the flow writable.
    write(&a, flow.id, grain(0)).await.unwrap();

    // Read-only through B: A's writes are refused at once, soon at the open.
    b.put_flow(with_read_only(true)).await.unwrap();
    let refused = write(&a, flow.id, grain(1)).await;
    assert!(
        matches!(refused, Err(StoreError::ReadOnly(_))),
        "{refused:?}"
    );
    // (Well inside the time after which A would look the flow up again anyway.)
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while a.open_write(flow.id).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "A opens writes to a read-only flow"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Writable again through B: A writes (and remembers the flow again).
    b.put_flow(with_read_only(false)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while write(&a, flow.id, grain(2)).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "A still refuses a writable flow"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Read-only through A itself: refused at the open, at once.
    a.put_flow(with_read_only(true)).await.unwrap();
    assert!(matches!(
        a.open_write(flow.id).await,
        Err(StoreError::ReadOnly(_))
    ));
    a.put_flow(with_read_only(false)).await.unwrap();
    write(&a, flow.id, grain(3)).await.unwrap();

    // Deleted through B: A's writes find no flow.
    assert!(b.delete_flow(flow.id).await.unwrap());
    let refused = write(&a, flow.id, grain(4)).await;
    assert!(
        matches!(refused, Err(StoreError::FlowNotFound(_))),
        "{refused:?}"
    );
    // Deleted through A: refused at the open, at once.
    let again = create(&a, with_read_only(false)).await;
    write(&a, again.id, grain(5)).await.unwrap();
    assert!(a.delete_flow(again.id).await.unwrap());
    assert!(matches!(
        a.open_write(again.id).await,
        Err(StoreError::FlowNotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"]
async fn replicas_share_grains_watches_and_events() {
    let schema = fresh_schema();
    let (a, _guard) = open_with(settings(
        StoreSetup::default(),
        &schema,
        s3_objects(&schema),
    ))
    .await;
    let (b, _same) = open_with(settings(
        StoreSetup::default(),
        &schema,
        s3_objects(&schema),
    ))
    .await;
    assert_eq!(
        a.events().epoch(),
        b.events().epoch(),
        "one epoch per database"
    );

    let flow = create(&a, video_flow()).await;
    let mut watch = b.watch(flow.id);
    let sent: Vec<_> = (0..4).map(|s| frame(&flow, secs(s), 30_000, 4)).collect();
    write(&a, flow.id, sent.clone()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), watch.changed())
        .await
        .expect("B's watcher woken by A's commit")
        .unwrap();
    let got = read_all(&b, flow.id).await;
    assert_eq!(got.len(), 4);
    for (got, sent) in got.iter().zip(&sent) {
        assert_stored(got, sent);
    }
    // Both logs reach the same newest event, under the same id.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (x, y) = (a.events().last_id(), b.events().last_id());
            if x.is_some() && x == y {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both replicas' logs reach A's last event");
    // A flow created through B is seen by A.
    let other = create(&b, video_flow()).await;
    assert!(a.get_flow(other.id).await.unwrap().is_some());

    // Events reach B as A recorded them: small ones inside the notification, one too
    // large for it (a flow with a 10,000-byte tag) read from the table by its id.
    let (_, _, on_a) = a.events().subscribe(None);
    let (_, _, on_b) = b.events().subscribe(None);
    let mut large = video_flow();
    large.tags.insert("notes".into(), tag(&"n".repeat(10_000)));
    let large = create(&a, large).await;
    write(&a, large.id, vec![frame(&large, secs(0), 30_000, 4)])
        .await
        .unwrap();
    let until_grains = |mut receiver: tokio::sync::broadcast::Receiver<_>| async move {
        let mut seen: Vec<grainstore::store::StoreEvent> = Vec::new();
        while seen
            .last()
            .is_none_or(|e| e.event_type != "flows/grains_added")
        {
            seen.push(receiver.recv().await.expect("the log goes on"));
        }
        seen
    };
    let wait = |events| tokio::time::timeout(Duration::from_secs(10), events);
    let (from_a, from_b) = (until_grains(on_a), until_grains(on_b));
    let (from_a, from_b) = (wait(from_a).await.unwrap(), wait(from_b).await.unwrap());
    // From the large flow's creation on: an event of the steps above may still have been
    // on its way to B when both subscribed.
    let summary = |events: &[grainstore::store::StoreEvent]| {
        events
            .iter()
            .skip_while(|e| e.event_type != "flows/created" || e.flow_id != Some(large.id))
            .map(|e| (e.id, e.event_type, e.flow_id, e.source_id, e.body.clone()))
            .collect::<Vec<_>>()
    };
    assert!(!summary(&from_a).is_empty(), "flows/created reached A");
    assert_eq!(summary(&from_a), summary(&from_b));
    let created = from_b
        .iter()
        .find(|e| e.event_type == "flows/created" && e.flow_id == Some(large.id))
        .expect("flows/created reached B");
    assert_eq!(created.body["tags"]["notes"], "n".repeat(10_000));
    assert_eq!(
        from_b.last().map(|e| e.body.clone()),
        Some(serde_json::json!({
            "flow_id": large.id,
            "timerange": TimeRange::new(Bound::Inclusive(secs(0)), Bound::Inclusive(secs(0))).to_string(),
        }))
    );
}

/// The value of the store's own metric `name`.
fn store_metric(store: &PostgresStore, name: &str) -> u64 {
    store
        .store_metrics()
        .into_iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no metric {name}"))
        .value
}

/// Waits until the cache holds `bytes` of `objects` objects (it stores in the
/// background).
async fn cache_holds(store: &PostgresStore, objects: u64, bytes: u64) {
    let held = || {
        (
            store_metric(store, "grainstore_object_cache_objects"),
            store_metric(store, "grainstore_object_cache_bytes"),
        )
    };
    for _ in 0..500 {
        if held() == (objects, bytes) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the cache holds {:?}, not {objects} objects of {bytes} bytes",
        held()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"]
async fn a_replica_serves_what_it_read_once_from_its_object_cache() {
    let schema = fresh_schema();
    let config = || {
        let mut config = settings(StoreSetup::default(), &schema, s3_objects(&schema));
        config.inline_max = 0;
        config
    };
    // A writes without a cache; B reads with one.
    let (a, _guard_a) = open_with(config()).await;
    let (b, _guard_b) = open_cached(config(), 64 << 20).await;
    let flow = create(&a, video_flow()).await;
    let sent: Vec<Grain> = (0..8).map(|s| frame(&flow, secs(s), 50_000, 3)).collect();
    write(&a, flow.id, sent[..4].to_vec()).await.unwrap();
    write(&a, flow.id, sent[4..].to_vec()).await.unwrap();
    let hits = || store_metric(&b, "grainstore_object_cache_hits_total");
    let misses = || store_metric(&b, "grainstore_object_cache_misses_total");
    assert_eq!((hits(), misses()), (0, 0));
    // B's cache keeps only what B reads (the default): not B's own uploads, or it
    // would hold three objects below.
    let other = create(&b, video_flow()).await;
    let own = frame(&other, secs(0), 50_000, 4);
    write(&b, other.id, vec![own]).await.unwrap();

    // The first read goes to the object store, and keeps what it fetched.
    for (got, sent) in read_all(&b, flow.id).await.iter().zip(&sent) {
        assert_stored(got, sent);
    }
    assert_eq!(hits(), 0);
    assert!(misses() > 0);
    cache_holds(&b, 2, 8 * 50_000).await;
    // The second is served from the cache, grains and GSF pages alike.
    let missed = misses();
    for (got, sent) in read_all(&b, flow.id).await.iter().zip(&sent) {
        assert_stored(got, sent);
    }
    let session = b.open_read(flow.id).await.unwrap();
    let mut pages = session.gsf_pages(GrainQuery::all(), 1);
    let mut grains = 0;
    while let Some(page) = pages.next().await {
        grains += page.unwrap().grains;
    }
    drop(pages);
    drop(session);
    assert_eq!(grains, 8);
    assert!(hits() > 0);
    assert_eq!(misses(), missed, "nothing read from the object store");

    // Deleted objects leave the cache of the replica that collects them.
    b.delete_grains(flow.id, &TimeRange::eternity())
        .await
        .unwrap();
    let report = b.collect_garbage(Duration::ZERO).await.unwrap();
    assert_eq!(report.released, 2);
    cache_holds(&b, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"]
async fn damaged_cache_files_are_dropped_and_their_grains_read_from_the_object_store() {
    let schema = fresh_schema();
    let mut config = settings(StoreSetup::default(), &schema, s3_objects(&schema));
    config.inline_max = 0;
    config.object_cache_uploads = true;
    let (store, guard) = open_cached(config, 64 << 20).await;
    let dir = guard
        .cache_dir
        .as_ref()
        .unwrap()
        .path()
        .join("object-cache");
    // The objects' files: all but the lock.
    let files = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().is_some_and(|n| n != ".lock"))
            .collect::<Vec<_>>()
    };
    let flow = create(&store, video_flow()).await;
    let sent: Vec<Grain> = (0..6).map(|s| frame(&flow, secs(s), 30_000, 5)).collect();
    write(&store, flow.id, sent[..3].to_vec()).await.unwrap();
    write(&store, flow.id, sent[3..].to_vec()).await.unwrap();
    // The uploads were kept.
    cache_holds(&store, 2, 6 * 30_000).await;

    // One byte of every grain changed in the cache's files.
    assert_eq!(files().len(), 2);
    for path in files() {
        let mut bytes = std::fs::read(&path).unwrap();
        for grain in 0..3 {
            bytes[grain * 30_000 + 17] ^= 0x40;
        }
        std::fs::write(&path, bytes).unwrap();
    }

    let dropped = || store_metric(&store, "grainstore_object_cache_dropped_total");
    assert_eq!(dropped(), 0);
    for (got, sent) in read_all(&store, flow.id).await.iter().zip(&sent) {
        assert_stored(got, sent);
    }
    assert_eq!(dropped(), 2);
    // Fetched again, kept again: damage them again, and read GSF pages this time.
    cache_holds(&store, 2, 6 * 30_000).await;
    for path in files() {
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30_000 + 5] ^= 1;
        std::fs::write(&path, bytes).unwrap();
    }
    let session = store.open_read(flow.id).await.unwrap();
    let mut pages = session.gsf_pages(GrainQuery::all(), 1);
    let mut grains = 0;
    while let Some(page) = pages.next().await {
        grains += page.unwrap().grains;
    }
    assert_eq!(grains, 6);
    assert_eq!(dropped(), 4);
    drop(pages);
    drop(session);
    // The grains themselves are intact.
    for (got, sent) in read_all(&store, flow.id).await.iter().zip(&sent) {
        assert_stored(got, sent);
    }

    // Damaged in the object store as well as in the cache: reported as corrupt, never
    // served, by grain and by GSF page.
    let raw = raw_objects(&s3_objects(&schema));
    let listed: Vec<object_store::ObjectMeta> = object_store::ObjectStore::list(&*raw, None)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    for meta in listed {
        let got = object_store::ObjectStoreExt::get(&*raw, &meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let mut bytes = got.to_vec();
        for grain in 0..3 {
            bytes[grain * 30_000 + 9] ^= 0x10;
        }
        object_store::ObjectStoreExt::put(&*raw, &meta.location, bytes.into())
            .await
            .unwrap();
    }
    cache_holds(&store, 2, 6 * 30_000).await;
    for path in files() {
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[11] ^= 1;
        std::fs::write(&path, bytes).unwrap();
    }
    let session = store.open_read(flow.id).await.unwrap();
    let mut grains = session.grains(GrainQuery::all());
    assert!(matches!(
        grains.next().await,
        Some(Err(StoreError::Corrupt(_)))
    ));
    drop(grains);
    let mut pages = session.gsf_pages(GrainQuery::all(), 1);
    assert!(matches!(
        pages.next().await,
        Some(Err(StoreError::Corrupt(_)))
    ));
}
