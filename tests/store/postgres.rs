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

use futures::StreamExt;
use grainstore::store::postgres::{ObjectStoreConfig, PostgresConfig, PostgresStore};
use grainstore::store::{GrainQuery, Store, StoreError};
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

/// Drops the test's schema (and so its tables) when the test ends.
pub struct SchemaGuard {
    url: String,
    schema: String,
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
    };
    let store = PostgresStore::open(config).await.expect("open the store");
    (store, guard)
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
    pg_memory_objects,
    crate::postgres::open_memory,
    ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"
);

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
    let schema = fresh_schema();
    let (store, _guard) = open_with(settings(
        StoreSetup::default(),
        &schema,
        s3_objects(&schema),
    ))
    .await;
    let db = sql(&schema).await;
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
    let schema = fresh_schema();
    let (store, _guard) = open_with(settings(
        StoreSetup::default(),
        &schema,
        s3_objects(&schema),
    ))
    .await;
    let db = sql(&schema).await;
    let flow = create(&store, video_flow()).await;
    let sent: Vec<_> = (0..3).map(|s| frame(&flow, secs(s), 100, 2)).collect();
    write(&store, flow.id, sent.clone()).await.unwrap();
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
}
