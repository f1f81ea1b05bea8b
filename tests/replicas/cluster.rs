//! Two replicas of the service, A and B, each a `Server` on a free port with the
//! postgres backend, sharing one fresh PostgreSQL schema (dropped when the test ends)
//! and one prefix of the test S3 bucket.

use grainstore::config::Backend;
use tokio_postgres::NoTls;

use crate::helpers::{TestServer, spawn_server};

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

impl SchemaGuard {
    /// Drops `schema` of the database at `url` when dropped.
    pub fn new(url: &str, schema: &str) -> SchemaGuard {
        SchemaGuard {
            url: url.to_owned(),
            schema: schema.to_owned(),
        }
    }
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let url = self.url.clone();
        let schema = self.schema.clone();
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
            eprintln!("could not drop the test schema {}", self.schema);
        }
    }
}

/// Replicas A and B of one service.
pub struct Replicas {
    pub a: TestServer,
    pub b: TestServer,
    // Last: the schema is dropped after both servers are.
    _schema: SchemaGuard,
}

/// Starts A, then B, on one fresh schema and one bucket prefix.
pub async fn replicas() -> Replicas {
    let url = var("GRAINSTORE_TEST_POSTGRES_URL");
    let schema = format!("gs_test_{}", uuid::Uuid::new_v4().simple());
    let guard = SchemaGuard {
        url: url.clone(),
        schema: schema.clone(),
    };
    let endpoint = var("GRAINSTORE_TEST_S3_ENDPOINT");
    let object_store_url = format!("s3://{}/{schema}", var("GRAINSTORE_TEST_S3_BUCKET"));
    let (access_key, secret_key) = (
        var("GRAINSTORE_TEST_S3_ACCESS_KEY"),
        var("GRAINSTORE_TEST_S3_SECRET_KEY"),
    );
    let replica = || {
        let (url, schema, endpoint, object_store_url, access_key, secret_key) = (
            url.clone(),
            schema.clone(),
            endpoint.clone(),
            object_store_url.clone(),
            access_key.clone(),
            secret_key.clone(),
        );
        spawn_server(move |config| {
            let s = &mut config.storage;
            s.backend = Backend::Postgres;
            s.postgres_url = url;
            s.postgres_schema = schema;
            s.object_store_url = object_store_url;
            s.s3_allow_http = endpoint.starts_with("http://");
            s.s3_endpoint = endpoint;
            s.s3_region = "us-east-1".into();
            s.s3_access_key_id = access_key;
            s.s3_secret_access_key = secret_key;
            s.max_sessions = s.postgres_pool_size - 2;
            config.server.shutdown_deadline_ms = 5000;
        })
    };
    // One after the other: the first makes the schema's tables.
    let a = replica().await;
    let b = replica().await;
    assert_eq!(a.state.store.backend_name(), "postgres");
    Replicas {
        a,
        b,
        _schema: guard,
    }
}
