//! The Rust client (`grainstore::client`) against the real server on a free port with
//! its own data: bounded reads that continue, range reads, the live grain stream across
//! a server restart, writer close and drop, typed conflicts, backoff on 503, flows.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use grainstore::client::{
    ClientError, Flow, FlowProvider, FlowQuery, Format, ProviderOptions, ReadConfig, ReadStart,
    RetryPolicy, WriteConfig,
};
use grainstore::config::{Config, Overrides};
use grainstore::grain::{
    CogFrameFormat, CogFrameLayout, Grain, GrainHeader, GrainKind, VideoComponent, VideoHeader,
};
use grainstore::server::{Server, ServerError};
use grainstore::store::ReadSession;
use grainstore::time::{Bound, Rational, TimeRange, Timestamp};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// A bound on waits for what must happen soon; never a performance assertion.
const PATIENCE: Duration = Duration::from_secs(20);

/// A server on `127.0.0.1`, its data directory, and how to stop it.
struct TestServer {
    url: String,
    addr: std::net::SocketAddr,
    /// The server's state (its store); dropped by `stop` so that the store closes.
    server_state: Option<grainstore::api::AppState>,
    stop: Option<oneshot::Sender<()>>,
    running: Option<JoinHandle<Result<(), ServerError>>>,
    data: Arc<tempfile::TempDir>,
    tweak: fn(&mut Config),
}

/// Starts a server on a free port with a fresh data directory.
async fn spawn(tweak: fn(&mut Config)) -> TestServer {
    let data = Arc::new(tempfile::tempdir().expect("temp dir"));
    start(
        "127.0.0.1:0".parse().expect("address"),
        data,
        tweak,
        Duration::ZERO,
    )
    .await
}

/// Starts a server on `addr` with `data`, retrying the bind for up to `retry_for` (the
/// port and the store of a server just stopped may take a moment to be free).
async fn start(
    addr: std::net::SocketAddr,
    data: Arc<tempfile::TempDir>,
    tweak: fn(&mut Config),
    retry_for: Duration,
) -> TestServer {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let overrides = Overrides {
        listen: Some(addr),
        data_dir: Some(data.path().to_path_buf()),
    };
    let mut config =
        Config::load_from(None, Vec::<(String, String)>::new(), &overrides).expect("config");
    config.server.shutdown_deadline_ms = 2000;
    tweak(&mut config);
    let deadline = Instant::now() + retry_for;
    let server = loop {
        match Server::bind(config.clone()).await {
            Ok(server) => break server,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "bind failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    };
    let addr = server.local_addr();
    let server_state = server.state().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    TestServer {
        url: format!("http://{addr}"),
        addr,
        server_state: Some(server_state),
        stop: Some(stop),
        running: Some(running),
        data,
        tweak,
    }
}

impl TestServer {
    /// Stops the server and waits until it has.
    async fn stop(&mut self) {
        self.server_state = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(running) = self.running.take() {
            tokio::time::timeout(PATIENCE, running)
                .await
                .expect("server stops in time")
                .expect("server task")
                .expect("server stopped cleanly");
        }
    }

    /// A new server on the same port and data directory (after `stop`).
    async fn restart(&mut self) -> TestServer {
        start(self.addr, self.data.clone(), self.tweak, PATIENCE).await
    }

    fn provider(&self) -> FlowProvider {
        FlowProvider::connect(&self.url, fast_retries()).expect("provider")
    }

    /// Holds a store session (a read of `flow`) so that a pool of one is full.
    async fn hold_session(&self, flow: Uuid) -> ReadSession {
        self.server_state
            .as_ref()
            .expect("server running")
            .store
            .open_read(flow)
            .await
            .expect("a session")
    }
}

fn fast_retries() -> ProviderOptions {
    ProviderOptions::default().with_retry(RetryPolicy {
        max_attempts: 8,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(1500),
    })
}

fn no_change(_: &mut Config) {}

fn ts(n: u64) -> Timestamp {
    Timestamp::from_nanos(1_000_000_000_000 + i128::from(n) * 40_000_000).expect("timestamp")
}

/// A raw video frame `n` of a 25 fps flow; `seed` varies the payload.
fn frame(flow: Uuid, source: Uuid, n: u64, seed: u8, len: usize) -> Grain {
    let payload: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(7) ^ seed ^ n as u8)
        .collect();
    let kind = GrainKind::Video(VideoHeader {
        format: CogFrameFormat::UYVY,
        layout: CogFrameLayout::FULL_FRAME,
        width: 16,
        height: 16,
        extension: 0,
        source_aspect_ratio: None,
        pixel_aspect_ratio: None,
        components: vec![VideoComponent {
            stride: 32,
            offset: 0,
            width: 16,
            height: 16,
            length: len as u32,
        }],
    });
    let mut header = GrainHeader::new(source, flow, ts(n), kind);
    header.rate = Rational::new(25, 1);
    header.duration = Rational::new(1, 25);
    Grain::new(header, Bytes::from(payload)).expect("grain")
}

fn frames(flow: Uuid, source: Uuid, range: std::ops::Range<u64>) -> Vec<Grain> {
    range.map(|n| frame(flow, source, n, 0, 64)).collect()
}

fn video_flow(id: Uuid, source: Uuid) -> Flow {
    serde_json::from_value(serde_json::json!({
        "id": id,
        "source_id": source,
        "format": "urn:x-nmos:format:video",
        "label": "client test",
    }))
    .expect("flow")
}

/// Creates a flow; returns (flow, source).
async fn new_flow(provider: &FlowProvider) -> (Uuid, Uuid) {
    let (flow, source) = (Uuid::new_v4(), Uuid::new_v4());
    let info = provider
        .create_flow(&video_flow(flow, source))
        .await
        .expect("create flow");
    assert_eq!(info.flow.id, flow);
    assert!(info.timerange.is_empty());
    (flow, source)
}

async fn write_all(provider: &FlowProvider, flow: Uuid, grains: &[Grain]) -> u64 {
    let mut writer = provider
        .open_write(flow, WriteConfig::default())
        .expect("writer");
    for grain in grains {
        writer.write(grain).await.expect("write");
    }
    writer.close().await.expect("close").written
}

fn timestamps(grains: &[Grain]) -> Vec<Timestamp> {
    grains.iter().map(Grain::origin_timestamp).collect()
}

fn assert_same(got: &[Grain], want: &[Grain]) {
    assert_eq!(timestamps(got), timestamps(want));
    for (g, w) in got.iter().zip(want) {
        assert!(g.same_identity(w), "grain {} differs", w.origin_timestamp());
    }
}

#[tokio::test]
async fn read_continues_where_the_last_read_ended() {
    let server = spawn(no_change).await;
    let provider = server.provider();
    let (flow, source) = new_flow(&provider).await;
    let grains = frames(flow, source, 0..10);
    assert_eq!(write_all(&provider, flow, &grains).await, 10);

    let mut reader = provider
        .open_read(flow, ReadConfig::default())
        .await
        .expect("reader");
    assert_same(&reader.read(4).await.expect("read"), &grains[0..4]);
    assert_eq!(reader.position(), Bound::Exclusive(ts(3)));
    assert_same(&reader.read(4).await.expect("read"), &grains[4..8]);
    assert_same(&reader.read(4).await.expect("read"), &grains[8..10]);
    assert!(reader.read(4).await.expect("read").is_empty());

    // More grains: the next read picks them up after the last one read.
    assert_eq!(
        write_all(&provider, flow, &frames(flow, source, 10..12)).await,
        2
    );
    assert_eq!(
        timestamps(&reader.read(100).await.expect("read")),
        vec![ts(10), ts(11)]
    );

    let range = TimeRange::new(Bound::Inclusive(ts(2)), Bound::Exclusive(ts(5)));
    let ranged: Vec<Grain> = reader
        .read_range(&range)
        .await
        .expect("range")
        .map(|g| g.expect("grain"))
        .collect()
        .await;
    assert_same(&ranged, &grains[2..5]);

    // Headers only.
    let mut headers = provider
        .open_read(
            flow,
            ReadConfig {
                payload: false,
                start: ReadStart::After(ts(8)),
                ..ReadConfig::default()
            },
        )
        .await
        .expect("reader");
    let got = headers.read(10).await.expect("read");
    assert_eq!(timestamps(&got), vec![ts(9), ts(10), ts(11)]);
    assert!(got.iter().all(|g| g.payload().is_empty()));

    let missing = provider
        .open_read(Uuid::new_v4(), ReadConfig::default())
        .await;
    assert!(matches!(missing, Err(e) if e.is_not_found()));
    provider.close().await;
}

#[tokio::test]
async fn live_stream_resumes_across_a_server_restart_without_loss_or_repeat() {
    let mut server = spawn(no_change).await;
    let provider = server.provider();
    let (flow, source) = new_flow(&provider).await;
    assert_eq!(
        write_all(&provider, flow, &frames(flow, source, 0..5)).await,
        5
    );

    let reader = provider
        .open_read(flow, ReadConfig::default())
        .await
        .expect("reader");
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    let mut grains = reader.grains();
    let consumer = tokio::spawn(async move {
        while let Some(grain) = grains.next().await {
            if sender.send(grain).is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let mut take = async |n: usize, got: &mut Vec<Grain>| {
        while got.len() < n {
            let grain = tokio::time::timeout(PATIENCE, received.recv())
                .await
                .expect("a grain in time")
                .expect("the stream goes on");
            got.push(grain.expect("no error"));
        }
    };
    // Catch-up, then live.
    take(5, &mut got).await;
    assert_eq!(
        write_all(&provider, flow, &frames(flow, source, 5..8)).await,
        3
    );
    take(8, &mut got).await;

    // The server goes away (its live streams end with a `shutdown` event), grains are
    // written while it is down (the writer retries), and a new server comes up on the
    // same port and data.
    server.stop().await;
    let writer_provider = provider.clone();
    let writing = tokio::spawn(async move {
        write_all(&writer_provider, flow, &frames(flow, source, 8..11)).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut server = server.restart().await;
    assert_eq!(writing.await.expect("writer task"), 3);
    assert_eq!(
        write_all(&provider, flow, &frames(flow, source, 11..14)).await,
        3
    );
    take(14, &mut got).await;

    assert_same(&got, &frames(flow, source, 0..14));
    // Nothing more (no repeat) arrives.
    let extra = tokio::time::timeout(Duration::from_millis(300), received.recv()).await;
    assert!(extra.is_err(), "unexpected extra item: {extra:?}");

    provider.close().await;
    tokio::time::timeout(PATIENCE, consumer)
        .await
        .expect("the stream ends when the provider closes")
        .expect("consumer");
    server.stop().await;
}

impl TestServer {
    /// Waits until the server has `n` live streams open.
    async fn wait_live_streams(&self, n: usize) {
        let state = self.server_state.as_ref().expect("server running");
        let deadline = Instant::now() + PATIENCE;
        while state.streams.open() != n {
            assert!(
                Instant::now() < deadline,
                "live streams open: {}, expected {n}",
                state.streams.open()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The value of a `grainstore_http_requests_total` series on `/metrics`.
    async fn requests(&self, route: &str, method: &str, status: u16) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        let series = format!(
            "grainstore_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} "
        );
        text.lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .map_or(0, |n| n.parse().expect("a count"))
    }
}

#[tokio::test]
async fn live_stream_from_now_fetches_large_payloads_by_data_url() {
    fn small_inline(config: &mut Config) {
        config.live.inline_max_bytes = 100;
    }
    let server = spawn(small_inline).await;
    let provider = server.provider();
    let (flow, source) = new_flow(&provider).await;
    assert_eq!(
        write_all(&provider, flow, &frames(flow, source, 0..3)).await,
        3
    );
    let single_grain = "/flows/{id}/grains/{timestamp}";

    let reader = provider
        .open_read(flow, ReadConfig::default().starting(ReadStart::Now))
        .await
        .expect("reader");
    assert_eq!(reader.position(), Bound::Exclusive(ts(2)));
    // A second reader that takes what the live stream carries, without fetching.
    let no_fetch = ReadConfig {
        fetch_data_urls: false,
        ..ReadConfig::default().starting(ReadStart::Now)
    };
    let headers_only = provider.open_read(flow, no_fetch).await.expect("reader");
    let mut grains = reader.grains();
    let mut unfetched = headers_only.grains();
    // Both have caught up and subscribed once the server has their two live streams
    // (polling the streams drives them there); what is written next comes live.
    tokio::select! {
        () = server.wait_live_streams(2) => {}
        item = grains.next() => panic!("no grain is written yet: {item:?}"),
        item = unfetched.next() => panic!("no grain is written yet: {item:?}"),
    }
    assert_eq!(server.requests(single_grain, "GET", 200).await, 0);
    let want: Vec<Grain> = (3..6).map(|n| frame(flow, source, n, 9, 4096)).collect();
    for grain in &want {
        write_all(&provider, flow, std::slice::from_ref(grain)).await;
    }
    let mut got = Vec::new();
    let mut got_unfetched = Vec::new();
    while got.len() < 3 || got_unfetched.len() < 3 {
        tokio::select! {
            item = grains.next(), if got.len() < 3 => {
                got.push(item.expect("the stream goes on").expect("no error"));
            }
            item = unfetched.next(), if got_unfetched.len() < 3 => {
                got_unfetched.push(item.expect("the stream goes on").expect("no error"));
            }
            () = tokio::time::sleep(PATIENCE) => panic!("grains did not arrive in time"),
        }
    }
    assert_same(&got, &want);
    // The payloads came by their data_url, one fetch each, by the fetching reader only.
    assert_eq!(server.requests(single_grain, "GET", 200).await, 3);
    assert_eq!(timestamps(&got_unfetched), timestamps(&want));
    for grain in &got_unfetched {
        assert!(grain.payload().is_empty(), "{}", grain.origin_timestamp());
    }
    drop(unfetched);

    // A deleted flow ends the stream with a typed error.
    provider.delete_flow(flow).await.expect("delete");
    let last = tokio::time::timeout(PATIENCE, grains.next())
        .await
        .expect("an item in time");
    assert!(
        matches!(last, Some(Err(ClientError::FlowDeleted(id))) if id == flow),
        "{last:?}"
    );
    assert!(grains.next().await.is_none());
    provider.close().await;
}

#[tokio::test]
async fn live_stream_of_an_empty_flow_starts_at_its_first_grain() {
    let server = spawn(no_change).await;
    let provider = server.provider();
    let (flow, source) = new_flow(&provider).await;
    let reader = provider
        .open_read(flow, ReadConfig::default())
        .await
        .expect("reader");
    assert_eq!(reader.position(), Bound::Unbounded);
    let mut grains = reader.grains();
    tokio::select! {
        () = server.wait_live_streams(1) => {}
        item = grains.next() => panic!("no grain is written yet: {item:?}"),
    }
    // The subscription starts at the flow's first grain (`from=earliest`), whatever
    // its timestamp.
    let written = frames(flow, source, 0..4);
    write_all(&provider, flow, &[written[2].clone(), written[3].clone()]).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(
            tokio::time::timeout(PATIENCE, grains.next())
                .await
                .expect("a grain in time")
                .expect("the stream goes on")
                .expect("no error"),
        );
    }
    assert_same(&got, &written[2..]);
    provider.close().await;
}

/// Captures warnings logged on this thread.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message<'a>(&'a mut String);
        impl tracing::field::Visit for Message<'_> {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0.push_str(&format!("{value:?}"));
                }
            }
        }
        if *event.metadata().level() == tracing::Level::WARN {
            let mut text = String::new();
            event.record(&mut Message(&mut text));
            self.0.lock().expect("lock").push(text);
        }
    }
}

#[tokio::test]
async fn writer_close_reports_commits_and_drop_is_warned() {
    use tracing_subscriber::layer::SubscriberExt;
    let warnings = Warnings::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(warnings.clone()));

    let server = spawn(no_change).await;
    let provider = server.provider();
    let (flow, source) = new_flow(&provider).await;
    let grains = frames(flow, source, 0..6);

    // Batches of two grains: three requests, one summary.
    let mut writer = provider
        .open_write(
            flow,
            WriteConfig {
                batch_grains: Some(2),
                ..WriteConfig::default()
            },
        )
        .expect("writer");
    for grain in &grains[..5] {
        writer.write(grain).await.expect("write");
    }
    writer.flush().await.expect("flush");
    assert_eq!(writer.committed().written, 5);
    writer.write(&grains[5]).await.expect("write");
    let summary = writer.close().await.expect("close");
    assert_eq!((summary.written, summary.unchanged), (6, 0));
    assert_eq!(
        summary.timerange,
        TimeRange::new(Bound::Inclusive(ts(0)), Bound::Inclusive(ts(5)))
    );
    assert_eq!(
        provider.flow(flow).await.expect("flow").timerange,
        TimeRange::new(Bound::Inclusive(ts(0)), Bound::Exclusive(ts(6)))
    );

    // A re-send is safe: every grain unchanged.
    let mut writer = provider
        .open_write(flow, WriteConfig::default())
        .expect("writer");
    for grain in &grains {
        writer.write(grain).await.expect("write");
    }
    let summary = writer.close().await.expect("close");
    assert_eq!((summary.written, summary.unchanged), (0, 6));

    // A grain of another flow is refused before anything is sent.
    let mut writer = provider
        .open_write(flow, WriteConfig::default())
        .expect("writer");
    let stranger = frame(Uuid::new_v4(), source, 99, 0, 8);
    assert!(matches!(
        writer.write(&stranger).await,
        Err(ClientError::InvalidInput(_))
    ));
    writer.close().await.expect("close of an empty writer");

    // Dropped mid-request: a warning, and the provider still closes promptly.
    assert!(warnings.0.lock().expect("lock").is_empty());
    let mut writer = provider
        .open_write(flow, WriteConfig::default())
        .expect("writer");
    for grain in &frames(flow, source, 6..9) {
        writer.write(grain).await.expect("write");
    }
    drop(writer);
    let logged = warnings.0.lock().expect("lock").clone();
    assert!(
        logged.iter().any(|w| w.contains("dropped without close")),
        "{logged:?}"
    );
    tokio::time::timeout(PATIENCE, provider.close())
        .await
        .expect("close does not wait for an abandoned request");
}

#[tokio::test]
async fn conflicting_grain_is_a_typed_error_with_what_was_committed() {
    let server = spawn(no_change).await;
    let provider = server.provider();
    let (flow, source) = new_flow(&provider).await;
    assert_eq!(
        write_all(&provider, flow, &frames(flow, source, 0..5)).await,
        5
    );

    let mut writer = provider
        .open_write(flow, WriteConfig::default())
        .expect("writer");
    let batch = [
        frame(flow, source, 5, 0, 64),
        frame(flow, source, 6, 0, 64),
        frame(flow, source, 2, 1, 64), // a different grain at an occupied timestamp
        frame(flow, source, 7, 0, 64),
    ];
    let mut failure = None;
    for grain in &batch {
        if let Err(e) = writer.write(grain).await {
            failure = Some(e);
            break;
        }
    }
    let failure = match failure {
        Some(e) => e,
        None => writer.close().await.expect_err("a conflict"),
    };
    assert!(failure.is_conflict(), "{failure:?}");
    match &failure {
        ClientError::PartialWrite {
            committed,
            timestamp,
            problem,
            ..
        } => {
            assert_eq!(*committed, 2);
            assert_eq!(timestamp.as_deref(), Some(ts(2).to_string().as_str()));
            assert_eq!(problem.kind, "urn:grainstore:problem:conflict");
        }
        other => panic!("expected PartialWrite, got {other:?}"),
    }
    let mut reader = provider
        .open_read(flow, ReadConfig::default())
        .await
        .expect("reader");
    assert_eq!(
        timestamps(&reader.read(100).await.expect("read")),
        (0..7).map(ts).collect::<Vec<_>>()
    );
    provider.close().await;
}

#[tokio::test]
async fn busy_session_pool_is_waited_out_with_backoff() {
    fn one_session(config: &mut Config) {
        config.storage.max_sessions = 1;
        config.storage.session_wait_ms = 20;
    }
    let server = spawn(one_session).await;
    let provider = server.provider();
    let (flow, source) = new_flow(&provider).await;
    assert_eq!(
        write_all(&provider, flow, &frames(flow, source, 0..3)).await,
        3
    );

    // A read while the only session is held: 503 with Retry-After, retried until free.
    let held = server.hold_session(flow).await;
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        drop(held);
    });
    let started = Instant::now();
    let mut reader = provider
        .open_read(flow, ReadConfig::default())
        .await
        .expect("reader");
    assert_eq!(reader.read(10).await.expect("read after backoff").len(), 3);
    assert!(started.elapsed() >= Duration::from_millis(600));
    release.await.expect("release");

    // A write too: the refused request is sent again, whole.
    let held = server.hold_session(flow).await;
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        drop(held);
    });
    assert_eq!(
        write_all(&provider, flow, &frames(flow, source, 3..6)).await,
        3
    );
    release.await.expect("release");

    // Without retries the 503 is reported at once; with few, as Unavailable.
    let held = server.hold_session(flow).await;
    let impatient = FlowProvider::connect(
        &server.url,
        ProviderOptions::default().with_retry(RetryPolicy::none()),
    )
    .expect("provider");
    let refused = impatient
        .open_read(flow, ReadConfig::default().starting(ReadStart::Now))
        .await;
    assert!(
        matches!(&refused, Err(e) if e.status() == Some(503)),
        "{:?}",
        refused.err()
    );
    let two = FlowProvider::connect(
        &server.url,
        ProviderOptions::default().with_retry(RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        }),
    )
    .expect("provider");
    let refused = two
        .open_read(flow, ReadConfig::default().starting(ReadStart::Now))
        .await;
    assert!(
        matches!(&refused, Err(ClientError::Unavailable { attempts: 2, .. })),
        "{:?}",
        refused.err()
    );
    drop(held);
    provider.close().await;
}

#[tokio::test]
async fn flows_page_and_delete() {
    let server = spawn(no_change).await;
    let provider = server.provider();
    let source = Uuid::new_v4();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = Uuid::new_v4();
        provider
            .create_flow(&video_flow(id, source))
            .await
            .expect("create");
        ids.push(id);
    }
    let mut listed: Vec<Uuid> = provider
        .flows(FlowQuery {
            source_id: Some(source),
            page_size: Some(2),
            ..FlowQuery::default()
        })
        .map(|f| f.expect("flow").flow.id)
        .collect()
        .await;
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids);

    let audio = provider
        .flows(FlowQuery {
            format: Some(Format::Audio),
            ..FlowQuery::default()
        })
        .count()
        .await;
    assert_eq!(audio, 0);

    let source_info = provider.source(source).await.expect("source");
    assert_eq!(source_info.id, source);

    provider.delete_flow(ids[0]).await.expect("delete");
    let gone = provider.flow(ids[0]).await.expect_err("deleted");
    assert!(gone.is_not_found());
    assert_eq!(gone.problem().map(|p| p.status), Some(404));
    assert!(provider.find_flow(ids[0]).await.expect("find").is_none());

    provider.close().await;
    assert!(matches!(
        provider_after_close(&server).await,
        Err(ClientError::Closed)
    ));
}

async fn provider_after_close(server: &TestServer) -> Result<(), ClientError> {
    let provider = server.provider();
    let clone = provider.clone();
    provider.close().await;
    clone.flow(Uuid::new_v4()).await.map(|_| ())
}
