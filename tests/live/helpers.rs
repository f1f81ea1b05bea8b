//! A grainstore server on a free port with its own data, grain builders, and clients for
//! the live streams: an SSE client (`eventsource-stream` over reqwest), a raw-bytes
//! reader for what SSE parsers hide (`retry:`, comments), and writers.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use grainstore::api::AppState;
use grainstore::config::{Config, Overrides};
use grainstore::grain::{
    CogFrameFormat, CogFrameLayout, Grain, GrainHeader, GrainKind, VideoComponent, VideoHeader,
};
use grainstore::server::{Server, ServerError};
use grainstore::time::{Rational, Timestamp};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How long a test waits for something that must happen soon; a bound on a wait, never
/// a performance assertion.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A running server and what a test needs to talk to it and to stop it.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client with a pool big enough for many open streams.
    pub client: reqwest::Client,
    /// The server's shared state (configuration, event log).
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    running: Option<JoinHandle<Result<(), ServerError>>>,
    _data: tempfile::TempDir,
}

/// Starts a server on `127.0.0.1:0` with a fresh data directory and the default
/// configuration changed by `tweak`.
pub async fn spawn_server(tweak: impl FnOnce(&mut Config)) -> TestServer {
    init_tracing();
    let data = tempfile::tempdir().expect("temp dir");
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".parse().expect("address")),
        data_dir: Some(data.path().to_path_buf()),
    };
    let mut config =
        Config::load_from(None, Vec::<(String, String)>::new(), &overrides).expect("config");
    tweak(&mut config);
    let server = Server::bind(config).await.expect("bind");
    let base = format!("http://{}", server.local_addr());
    let state = server.state().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(2048)
        .build()
        .expect("client");
    TestServer {
        base,
        client,
        state,
        shutdown: Some(stop),
        running: Some(running),
        _data: data,
    }
}

/// Logs to the test output when `TEST_LOG` is set.
fn init_tracing() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

impl TestServer {
    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Starts a graceful shutdown; returns a future that completes when the server's run
    /// future has, with the time it took.
    pub fn shutdown(&mut self) -> impl Future<Output = Duration> + use<> {
        let started = Instant::now();
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        let running = self.running.take().expect("server still running");
        async move {
            running
                .await
                .expect("server task")
                .expect("server stopped cleanly");
            started.elapsed()
        }
    }

    /// Creates a video flow with a fresh id and source; returns (flow, source).
    pub async fn create_flow(&self) -> (Uuid, Uuid) {
        let (flow, source) = (Uuid::new_v4(), Uuid::new_v4());
        let response = self
            .client
            .put(self.url(&format!("/flows/{flow}")))
            .json(&json!({
                "source_id": source,
                "format": "urn:x-nmos:format:video",
                "label": "live test",
            }))
            .send()
            .await
            .expect("put flow");
        assert_eq!(response.status(), StatusCode::CREATED, "create flow");
        (flow, source)
    }

    /// Writes `grains` in one NDJSON POST and checks it succeeded.
    pub async fn post(&self, flow: Uuid, grains: &[Grain]) {
        let response = self.post_raw(flow, grains).await;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "POST grains: {status} {body}");
    }

    /// Writes `grains` in one NDJSON POST.
    pub async fn post_raw(&self, flow: Uuid, grains: &[Grain]) -> reqwest::Response {
        let mut body = Vec::new();
        for grain in grains {
            grain.write_json(true, &mut body);
            body.push(b'\n');
        }
        self.client
            .post(self.url(&format!("/flows/{flow}/grains")))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .expect("post grains")
    }

    /// Opens an SSE subscription to a flow's grains; `query` without the `?`.
    pub async fn subscribe(&self, flow: Uuid, query: &str, last_event_id: Option<&str>) -> Sse {
        let url = self.url(&format!("/flows/{flow}/grains?{query}"));
        Sse::open(&self.client, &url, last_event_id).await
    }

    /// Opens the `/events` stream; `query` without the `?`.
    pub async fn events(&self, query: &str, last_event_id: Option<&str>) -> Sse {
        Sse::open(
            &self.client,
            &self.url(&format!("/events?{query}")),
            last_event_id,
        )
        .await
    }

    /// A GET with an `Accept` header.
    pub async fn get(&self, path: &str, accept: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header("accept", accept)
            .send()
            .await
            .expect("get")
    }
}

type EventResult = Result<Event, EventStreamError<reqwest::Error>>;

/// One SSE subscription, parsed by `eventsource-stream` as a browser would.
pub struct Sse {
    /// The response status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    events: Pin<Box<dyn Stream<Item = EventResult> + Send>>,
}

impl Sse {
    /// Sends the request and returns once the response headers are in.
    pub async fn open(client: &reqwest::Client, url: &str, last_event_id: Option<&str>) -> Sse {
        let mut request = client.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = tokio::time::timeout(PATIENCE, request.send())
            .await
            .expect("response headers in time")
            .expect("subscribe");
        Sse {
            status: response.status(),
            headers: response.headers().clone(),
            events: Box::pin(response.bytes_stream().eventsource()),
        }
    }

    /// The next event; `None` when the stream ended. Panics if nothing comes in time.
    pub async fn next(&mut self) -> Option<Event> {
        self.next_within(PATIENCE)
            .await
            .expect("an event or the end of the stream in time")
    }

    /// The next event, or `Err(())` if none came within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Result<Option<Event>, ()> {
        match tokio::time::timeout(wait, self.events.next()).await {
            Err(_) => Err(()),
            Ok(None) => Ok(None),
            Ok(Some(Ok(event))) => Ok(Some(event)),
            // A connection cut by the server ends the stream as far as a client knows.
            Ok(Some(Err(EventStreamError::Transport(_)))) => Ok(None),
            Ok(Some(Err(e))) => panic!("malformed event stream: {e}"),
        }
    }

    /// The next event, which must be a grain; returns it with its event id.
    pub async fn next_grain(&mut self) -> (String, Grain) {
        let event = self
            .next()
            .await
            .expect("a grain, not the end of the stream");
        assert_eq!(event.event, "grain", "expected a grain event: {event:?}");
        let grain = Grain::from_json(event.data.as_bytes())
            .unwrap_or_else(|e| panic!("grain JSON does not parse ({e}): {}", event.data));
        (event.id, grain)
    }

    /// The next event's JSON data; the event type must be `event_type`.
    pub async fn next_of(&mut self, event_type: &str) -> (String, Value) {
        let event = self
            .next()
            .await
            .unwrap_or_else(|| panic!("expected an event {event_type:?}, the stream ended"));
        assert_eq!(event.event, event_type, "unexpected event: {event:?}");
        let data = serde_json::from_str(&event.data).expect("event data is JSON");
        (event.id, data)
    }
}

/// Reads a response's raw body until `done` says the text so far is enough; panics if
/// the body ends or stalls first.
pub async fn read_raw_until(response: reqwest::Response, done: impl Fn(&str) -> bool) -> String {
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done(&text) {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(other) => panic!("body ended ({other:?}) before the expected text: {text:?}"),
            Err(_) => panic!("body stalled before the expected text: {text:?}"),
        }
    }
    text
}

/// Whole seconds plus nanoseconds as a timestamp.
pub fn ts(secs: i64, nanos: i64) -> Timestamp {
    Timestamp::from_nanos(i128::from(secs) * 1_000_000_000 + i128::from(nanos))
        .expect("timestamp in range")
}

/// The `n`-th frame time of a 25 fps flow starting at 1000 s.
pub fn frame_time(n: u64) -> Timestamp {
    ts(1000, 40_000_000 * n as i64)
}

/// A raw video grain at `at` whose payload is `len` bytes derived from `at`.
pub fn grain(flow: Uuid, source: Uuid, at: Timestamp, len: usize) -> Grain {
    let seed = at.to_nanos() as u64;
    let payload: Vec<u8> = (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) >> 3) as u8)
        .collect();
    let kind = GrainKind::Video(VideoHeader {
        format: CogFrameFormat::UYVY,
        layout: CogFrameLayout::FULL_FRAME,
        width: 16,
        height: 16,
        extension: 0,
        source_aspect_ratio: Some(Rational::new(1, 1)),
        pixel_aspect_ratio: Some(Rational::new(1, 1)),
        components: vec![VideoComponent {
            stride: 32,
            offset: 0,
            width: 16,
            height: 16,
            length: u32::try_from(len).expect("small payload"),
        }],
    });
    let mut header = GrainHeader::new(source, flow, at, kind);
    header.rate = Rational::new(25, 1);
    header.duration = Rational::new(1, 25);
    Grain::new(header, Bytes::from(payload)).expect("valid grain")
}

/// Frames `range` of a flow, each with a payload of `len` bytes.
pub fn frames(flow: Uuid, source: Uuid, range: std::ops::Range<u64>, len: usize) -> Vec<Grain> {
    range
        .map(|n| grain(flow, source, frame_time(n), len))
        .collect()
}

/// Asserts that `got` is `want`, grain by grain, by identity (every header field and
/// the payload; the creation timestamp is the server's).
pub fn assert_same_grains(got: &[Grain], want: &[Grain]) {
    let got_ts: Vec<_> = got.iter().map(Grain::origin_timestamp).collect();
    let want_ts: Vec<_> = want.iter().map(Grain::origin_timestamp).collect();
    assert_eq!(got_ts, want_ts, "timestamps differ");
    for (g, w) in got.iter().zip(want) {
        assert!(g.same_identity(w), "grain {} differs", w.origin_timestamp());
    }
}
