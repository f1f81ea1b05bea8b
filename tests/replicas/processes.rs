//! Replicas as real processes: two `grainstore serve` processes with the postgres
//! backend, configured by environment variables, sharing one fresh schema and one
//! bucket prefix. One is killed with SIGKILL while a writer streams through it and
//! subscribers follow the flow on both; the writer and the subscriber it had move to
//! the other, and nothing acknowledged is lost, repeated or reordered.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use grainstore::grain::Grain;
use grainstore::gsf::{GsfDecoder, GsfEvent};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::cluster::SchemaGuard;
use crate::helpers::{PATIENCE, Sse, assert_same_grains, frame_time, grain};

/// What the test needs from the machine: PostgreSQL and an S3-compatible server.
struct Machine {
    postgres_url: String,
    s3_endpoint: String,
    s3_bucket: String,
    s3_access_key: String,
    s3_secret_key: String,
}

impl Machine {
    /// The environment `.ci/run` sets, or `None` after printing why the test skips.
    fn detect(test: &str) -> Option<Machine> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (
            Some(postgres_url),
            Some(s3_endpoint),
            Some(s3_bucket),
            Some(s3_access_key),
            Some(s3_secret_key),
        ) = (
            var("GRAINSTORE_TEST_POSTGRES_URL"),
            var("GRAINSTORE_TEST_S3_ENDPOINT"),
            var("GRAINSTORE_TEST_S3_BUCKET"),
            var("GRAINSTORE_TEST_S3_ACCESS_KEY"),
            var("GRAINSTORE_TEST_S3_SECRET_KEY"),
        )
        else {
            eprintln!(
                "{test}: skipped: GRAINSTORE_TEST_POSTGRES_URL, GRAINSTORE_TEST_S3_ENDPOINT, \
                 _BUCKET, _ACCESS_KEY and _SECRET_KEY are not all set (.ci/run sets them)"
            );
            return None;
        };
        Some(Machine {
            postgres_url,
            s3_endpoint,
            s3_bucket,
            s3_access_key,
            s3_secret_key,
        })
    }
}

/// A `grainstore serve` process on a port of its own; killed and reaped when dropped,
/// however the test ends.
struct Replica {
    name: &'static str,
    base: String,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Replica {
    /// Starts the binary with the postgres backend on `schema` and the bucket prefix of
    /// the same name, and waits until it is ready.
    /// Starts a replica; `object_cache` is its `storage.object_cache_bytes`.
    async fn start(
        name: &'static str,
        machine: &Machine,
        schema: &str,
        object_cache: u64,
    ) -> Replica {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("server.log");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_grainstore"));
        // Only what is set here configures the replica.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("GRAINSTORE__")) {
            command.env_remove(key);
        }
        let pool = 8;
        command
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("GRAINSTORE__LOG__FILTER", "warn")
            .env("GRAINSTORE__STORAGE__BACKEND", "postgres")
            .env("GRAINSTORE__STORAGE__POSTGRES_URL", &machine.postgres_url)
            .env("GRAINSTORE__STORAGE__POSTGRES_SCHEMA", schema)
            .env("GRAINSTORE__STORAGE__POSTGRES_POOL_SIZE", pool.to_string())
            .env("GRAINSTORE__STORAGE__MAX_SESSIONS", (pool - 2).to_string())
            .env(
                "GRAINSTORE__STORAGE__OBJECT_CACHE_BYTES",
                object_cache.to_string(),
            )
            .env(
                "GRAINSTORE__STORAGE__OBJECT_STORE_URL",
                format!("s3://{}/{schema}", machine.s3_bucket),
            )
            .env("GRAINSTORE__STORAGE__S3_ENDPOINT", &machine.s3_endpoint)
            .env(
                "GRAINSTORE__STORAGE__S3_ALLOW_HTTP",
                machine.s3_endpoint.starts_with("http://").to_string(),
            )
            .env("GRAINSTORE__STORAGE__S3_REGION", "us-east-1")
            .env(
                "GRAINSTORE__STORAGE__S3_ACCESS_KEY_ID",
                &machine.s3_access_key,
            )
            .env(
                "GRAINSTORE__STORAGE__S3_SECRET_ACCESS_KEY",
                &machine.s3_secret_key,
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = command.spawn().expect("start grainstore serve");
        let mut replica = Replica {
            name,
            base: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            log,
            _dir: dir,
        };
        replica.wait_ready().await;
        replica
    }

    async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = client
                .get(self.url("/readyz"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK);
            if ready {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "replica {} did not become ready ({exited:?}):\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no graceful shutdown, no flush, connections reset by the kernel.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if self.child.is_some() && std::thread::panicking() {
            eprintln!("replica {} log:\n{}", self.name, self.log_text());
        }
        self.kill();
    }
}

/// Grains written, in order of their timestamps; `n` with a payload above
/// `inline_max_bytes` (an S3 object) every third, small (a PostgreSQL row) otherwise.
fn grains(flow: Uuid, source: Uuid, n: u64) -> Vec<Grain> {
    (0..n)
        .map(|k| {
            let len = if k % 3 == 0 { 40_000 } else { 500 + k as usize };
            grain(flow, source, frame_time(k), len)
        })
        .collect()
}

/// Follows the flow until it has the grain at `last`: through `first`, then — when that
/// stream ends (its replica killed) — through `then`, resuming with `Last-Event-ID`.
/// Returns every grain event received, with its id, and how many streams it took.
async fn follow(
    client: reqwest::Client,
    first: Sse,
    then: String,
    last: String,
    seen: Arc<AtomicUsize>,
) -> (Vec<(String, Grain)>, usize) {
    let mut sse = first;
    let mut streams = 1;
    let mut got: Vec<(String, Grain)> = Vec::new();
    while got.last().is_none_or(|(id, _)| *id != last) {
        match sse.next().await {
            Some(event) if event.event == "grain" => {
                let grain = Grain::from_json(event.data.as_bytes())
                    .unwrap_or_else(|e| panic!("grain JSON ({e}): {}", event.data));
                got.push((event.id, grain));
                seen.fetch_add(1, Ordering::SeqCst);
            }
            // Keep-alives and other events carry no grain.
            Some(_) => {}
            None => {
                let (resume, _) = got.last().expect("a grain before the stream ended");
                assert!(streams < 2, "the stream on the surviving replica ended");
                sse = Sse::open(&client, &then, Some(resume)).await;
                assert_eq!(sse.status, StatusCode::OK, "resubscribe");
                streams += 1;
            }
        }
    }
    // Nothing after the last grain, in particular nothing twice.
    assert!(
        sse.next_within(Duration::from_millis(500)).await.is_err(),
        "an event after the last grain"
    );
    (got, streams)
}

/// How far the writer is: grains acknowledged, and grains of the POST in flight sent.
#[derive(Default)]
struct Progress {
    acked: AtomicUsize,
    sending: AtomicUsize,
}

/// Streams `grains` as NDJSON POSTs of a few grains each, one grain every few
/// milliseconds (the server commits them as they arrive), each POST acknowledged before
/// the next, to the first replica of `targets` that answers: when the connection fails
/// (the replica was killed), the whole unacknowledged POST is sent again to the next.
/// Grains from `hold` on wait for `killed` while the first replica is the target, so
/// the kill always falls before the end. Returns the POSTs each replica acknowledged
/// and how many grains of the re-sent POST were already stored.
async fn write(
    client: reqwest::Client,
    targets: [String; 2],
    grains: Vec<Grain>,
    progress: Arc<Progress>,
    hold: usize,
    killed: Arc<tokio::sync::Notify>,
) -> ([usize; 2], u64) {
    const PER_POST: usize = 10;
    let mut target = 0;
    let mut posts = [0; 2];
    let mut unchanged_on_resend = 0;
    let mut resending = false;
    for (n, batch) in grains.chunks(PER_POST).enumerate() {
        if target == 0 && n * PER_POST >= hold {
            killed.notified().await;
        }
        let lines: Vec<Bytes> = batch
            .iter()
            .map(|grain| {
                let mut line = Vec::new();
                grain.write_json(true, &mut line);
                line.push(b'\n');
                Bytes::from(line)
            })
            .collect();
        loop {
            progress.sending.store(0, Ordering::SeqCst);
            let body = futures::stream::iter(lines.clone()).then({
                let progress = progress.clone();
                move |line| {
                    let progress = progress.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(8)).await;
                        progress.sending.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, std::io::Error>(line)
                    }
                }
            });
            let sent = client
                .post(&targets[target])
                .header("content-type", "application/x-ndjson")
                .body(reqwest::Body::wrap_stream(body))
                .timeout(PATIENCE)
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(e) => {
                    assert_eq!(target, 0, "POST to the surviving replica: {e}");
                    target = 1;
                    resending = true;
                    continue;
                }
            };
            let status = response.status();
            let text = response.text().await;
            let Ok(text) = text else {
                // The replica died between the status line and the body.
                assert_eq!(target, 0, "POST to the surviving replica: {text:?}");
                target = 1;
                resending = true;
                continue;
            };
            assert!(status.is_success(), "POST grains: {status} {text}");
            if resending {
                let result: Value = serde_json::from_str(&text).expect("write result JSON");
                unchanged_on_resend = result["unchanged"].as_u64().expect("unchanged");
                resending = false;
            }
            posts[target] += 1;
            progress.acked.fetch_add(batch.len(), Ordering::SeqCst);
            break;
        }
    }
    (posts, unchanged_on_resend)
}

/// Waits until `counter` reaches `want`, or panics after a generous while.
async fn wait_for(counter: &AtomicUsize, want: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter.load(Ordering::SeqCst) < want {
        assert!(Instant::now() < deadline, "{what}: not {want} in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"]
async fn a_replica_process_killed_mid_stream_loses_and_repeats_nothing_acknowledged() {
    let Some(machine) = Machine::detect("replica processes, one killed") else {
        return;
    };
    let schema = format!("gs_test_{}", Uuid::new_v4().simple());
    // Declared first, dropped last: after both processes are gone.
    let _schema = SchemaGuard::new(&machine.postgres_url, &schema);
    // One after the other: the first makes the schema's tables.
    // B keeps the payload objects it reads in a cache of its own.
    let mut a = Replica::start("A", &machine, &schema, 0).await;
    let b = Replica::start("B", &machine, &schema, 64 << 20).await;
    let client = reqwest::Client::new();

    let (flow, source) = (Uuid::new_v4(), Uuid::new_v4());
    let response = client
        .put(a.url(&format!("/flows/{flow}")))
        .json(&json!({
            "source_id": source,
            "format": "urn:x-nmos:format:video",
            "label": "replica processes",
        }))
        .send()
        .await
        .expect("put flow");
    assert_eq!(response.status(), StatusCode::CREATED);
    const GRAINS: u64 = 150;
    let written = grains(flow, source, GRAINS);
    let last = frame_time(GRAINS - 1).to_string();
    let grains_path = format!("/flows/{flow}/grains");

    // Both subscribed before the first grain: each must get every one.
    let on_a = Sse::open(&client, &a.url(&grains_path), None).await;
    assert_eq!(on_a.status, StatusCode::OK);
    let on_b = Sse::open(&client, &b.url(&grains_path), None).await;
    assert_eq!(on_b.status, StatusCode::OK);
    let seen_on_a = Arc::new(AtomicUsize::new(0));
    let follower_a = tokio::spawn(follow(
        client.clone(),
        on_a,
        b.url(&grains_path),
        last.clone(),
        seen_on_a.clone(),
    ));
    let follower_b = tokio::spawn(follow(
        client.clone(),
        on_b,
        b.url(&grains_path),
        last.clone(),
        Arc::new(AtomicUsize::new(0)),
    ));

    let progress = Arc::new(Progress::default());
    let killed = Arc::new(tokio::sync::Notify::new());
    let writer = tokio::spawn(write(
        client.clone(),
        [a.url(&grains_path), b.url(&grains_path)],
        written.clone(),
        progress.clone(),
        120,
        killed.clone(),
    ));
    // Mid-stream: A has acknowledged some grains and delivered some to its subscriber,
    // and a POST to it is half sent.
    wait_for(&progress.acked, 40, "grains acknowledged by A").await;
    wait_for(&seen_on_a, 20, "grains delivered on A").await;
    wait_for(&progress.sending, 4, "grains of a POST sent").await;
    a.kill();
    // A permit for the writer if it is not waiting yet.
    killed.notify_one();
    let killed_at = progress.acked.load(Ordering::SeqCst);

    let (posts, unchanged) = writer.await.expect("writer");
    assert!(posts[0] > 0 && posts[1] > 0, "POSTs per replica: {posts:?}");
    eprintln!(
        "A killed after {killed_at} grains acknowledged; POSTs acknowledged by A, B: {posts:?}; \
         the re-sent POST found {unchanged} grain(s) already stored"
    );

    for (follower, name) in [
        (follower_a, "subscriber on A"),
        (follower_b, "subscriber on B"),
    ] {
        let (got, streams) = follower.await.expect(name);
        let ids: Vec<String> = got.iter().map(|(id, _)| id.clone()).collect();
        let want: Vec<String> = (0..GRAINS).map(|k| frame_time(k).to_string()).collect();
        assert_eq!(ids, want, "{name}: every grain once, in order");
        let grains: Vec<Grain> = got.into_iter().map(|(_, g)| g).collect();
        assert_same_grains(&grains, &written);
        let expected_streams = if name == "subscriber on A" { 2 } else { 1 };
        assert_eq!(streams, expected_streams, "{name}: streams used");
    }

    // The whole flow through B, byte for byte: twice, the second time from B's cache.
    let cache = |text: &str, name: &str| metric(text, &format!("grainstore_object_cache_{name}"));
    let mut misses = Vec::new();
    let mut hits = Vec::new();
    for _ in 0..2 {
        // The cache stores in the background: wait until what the reads before handed
        // it (before their responses ended) is written.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = metrics_text(&client, &b).await;
            if cache(&text, "pending_bytes") == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "B's cache never caught up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let response = client
            .get(b.url(&grains_path))
            .header("accept", "application/x-gsf")
            .send()
            .await
            .expect("read");
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.bytes().await.expect("body");
        let read: Vec<Grain> = GsfDecoder::decode_all(body)
            .expect("a valid GSF body")
            .into_iter()
            .filter_map(|event| match event {
                GsfEvent::Grain { grain, .. } => Some(grain),
                _ => None,
            })
            .collect();
        assert_same_grains(&read, &written);
        for (got, want) in read.iter().zip(&written) {
            assert_eq!(got.payload(), want.payload(), "{}", want.origin_timestamp());
        }
        let text = metrics_text(&client, &b).await;
        misses.push(cache(&text, "misses_total"));
        hits.push(cache(&text, "hits_total"));
    }
    eprintln!("B's object cache after each read: hits {hits:?}, misses {misses:?}");
    // A's uploads were read from the object store at least once; the second read found
    // everything in B's cache.
    assert!(misses[0] > 0, "misses {misses:?}");
    assert_eq!(
        misses[1], misses[0],
        "the second read went to the object store"
    );
    assert!(hits[1] > hits[0], "hits {hits:?}");
    drop(b);
}

/// `replica`'s `/metrics` text.
async fn metrics_text(client: &reqwest::Client, replica: &Replica) -> String {
    client
        .get(replica.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of the unlabelled metric `name` in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}
