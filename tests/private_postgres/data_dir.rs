//! The postgres backend stores nothing locally: starting a server with it makes no data
//! directory, whether the start succeeds or fails (the embedded backend's start makes
//! its directory).

use grainstore::config::{Backend, Config, Overrides};
use grainstore::server::Server;

use crate::instance::{PrivatePostgres, find_bindir};

/// The configuration of a postgres-backed server on `url`, with payloads in memory and
/// the data directory `data_dir`.
fn config(url: &str, data_dir: &std::path::Path) -> Config {
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".parse().expect("address")),
        data_dir: Some(data_dir.to_path_buf()),
    };
    let mut config =
        Config::load_from(None, Vec::<(String, String)>::new(), &overrides).expect("config");
    let s = &mut config.storage;
    s.backend = Backend::Postgres;
    s.postgres_url = url.to_owned();
    s.postgres_schema = "grainstore".into();
    s.object_store_url = "memory://".into();
    s.max_sessions = s.postgres_pool_size - 2;
    config
}

#[tokio::test]
async fn a_postgres_backed_start_that_fails_makes_no_data_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    // Nothing listens on port 1: the start fails when it connects.
    let result = Server::bind(config("postgres://postgres@127.0.0.1:1/postgres", &data)).await;
    assert!(result.is_err(), "no database there");
    assert!(!data.exists(), "{} was made", data.display());

    // The embedded backend's start does make it.
    let mut embedded = config("", &data);
    embedded.storage.backend = Backend::Embedded;
    let Ok(server) = Server::bind(embedded).await else {
        panic!("the embedded backend did not start");
    };
    drop(server);
    assert!(data.is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_backed_server_makes_no_data_directory() {
    let bindir = match find_bindir() {
        Ok(dir) => dir,
        Err(why) => return eprintln!("postgres data dir: skipped: {why}"),
    };
    let pg = tokio::task::block_in_place(|| PrivatePostgres::create(bindir, "", &[]));
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let Ok(server) = Server::bind(config(&pg.url(), &data)).await else {
        panic!("no start on the private instance");
    };
    assert_eq!(server.state().store.backend_name(), "postgres");
    assert!(!data.exists(), "{} was made", data.display());
}
