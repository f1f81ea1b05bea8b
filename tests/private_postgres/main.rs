//! The postgres backend against a PostgreSQL instance of the test's own ([`instance`]),
//! which a test may kill, freeze and restart or give a TLS certificate: the service
//! through a database outage and its recovery ([`outage`]), TLS in each `sslmode`
//! ([`tls`]), and no local data directory for this backend ([`data_dir`]).
//!
//! The tests need the PostgreSQL server binaries (see [`instance::find_bindir`]) and an
//! S3-compatible server: `GRAINSTORE_TEST_S3_ENDPOINT`, `GRAINSTORE_TEST_S3_BUCKET`,
//! `GRAINSTORE_TEST_S3_ACCESS_KEY` and `GRAINSTORE_TEST_S3_SECRET_KEY` (`.ci/run` sets
//! them; the TLS tests keep payloads in memory and need `openssl` instead). Without
//! them, each test says why and passes without running.

mod data_dir;
mod instance;
mod outage;
mod tls;

#[path = "../live/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::path::PathBuf;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

use grainstore::config::{Backend, Config};

use crate::helpers::{TestServer, spawn_server};

/// What the tests need from the machine.
pub struct Machine {
    pub bindir: PathBuf,
    pub s3_endpoint: String,
    pub s3_bucket: String,
    pub s3_access_key: String,
    pub s3_secret_key: String,
}

impl Machine {
    /// The binaries and the S3 server, or `None` after printing why the test skips.
    pub fn detect(test: &str) -> Option<Machine> {
        let skip = |why: String| {
            eprintln!("{test}: skipped: {why}");
            None
        };
        let bindir = match instance::find_bindir() {
            Ok(dir) => dir,
            Err(why) => return skip(why),
        };
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (Some(s3_endpoint), Some(s3_bucket), Some(s3_access_key), Some(s3_secret_key)) = (
            var("GRAINSTORE_TEST_S3_ENDPOINT"),
            var("GRAINSTORE_TEST_S3_BUCKET"),
            var("GRAINSTORE_TEST_S3_ACCESS_KEY"),
            var("GRAINSTORE_TEST_S3_SECRET_KEY"),
        ) else {
            return skip(
                "no S3-compatible server: GRAINSTORE_TEST_S3_ENDPOINT, _BUCKET, _ACCESS_KEY \
                 and _SECRET_KEY are not all set (.ci/run sets them)"
                    .into(),
            );
        };
        watch_panics();
        Some(Machine {
            bindir,
            s3_endpoint,
            s3_bucket,
            s3_access_key,
            s3_secret_key,
        })
    }

    /// Points `config` at the database `url` and a fresh prefix of the test bucket.
    pub fn configure(&self, config: &mut Config, url: &str, prefix: &str) {
        let s = &mut config.storage;
        s.backend = Backend::Postgres;
        s.postgres_url = url.to_owned();
        s.postgres_schema = "grainstore".into();
        s.object_store_url = format!("s3://{}/{prefix}", self.s3_bucket);
        s.s3_allow_http = self.s3_endpoint.starts_with("http://");
        s.s3_endpoint = self.s3_endpoint.clone();
        s.s3_region = "us-east-1".into();
        s.s3_access_key_id = self.s3_access_key.clone();
        s.s3_secret_access_key = self.s3_secret_key.clone();
        s.max_sessions = s.postgres_pool_size - 2;
        config.server.shutdown_deadline_ms = 5000;
    }

    /// A server on the database `url` and the bucket prefix `prefix`.
    pub async fn server(&self, url: &str, prefix: &str) -> TestServer {
        spawn_server(|config| self.configure(config, url, prefix)).await
    }
}

/// Panics on the runtime's worker threads, where the servers' tasks run (a test's own
/// assertions panic on its own thread).
static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);

fn watch_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|name| name.starts_with("tokio-runtime-worker"))
            {
                SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// How many server tasks have panicked so far.
pub fn server_panics() -> usize {
    SERVER_PANICS.load(Ordering::SeqCst)
}
