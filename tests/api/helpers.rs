//! The real server on a free port with its own data directory, a client with one helper
//! per endpoint, and builders for flows, grains and bodies.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use grainstore::config::{Config, Overrides};
use grainstore::grain::{
    CodedVideoHeader, CogFrameFormat, CogFrameLayout, Grain, GrainHeader, GrainKind,
};
use grainstore::gsf::{GsfDateTime, GsfDecoder, GsfEncoder, GsfEvent};
use grainstore::server::Server;
use grainstore::time::{Rational, TimeRange, Timestamp};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use uuid::Uuid;

/// The longest a test waits for something that must happen soon: a bound on a wait,
/// never a performance assertion.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// The origin timestamp of grain 0 of every test flow, in seconds.
pub const BASE_SECS: i64 = 1_700_000_000;

/// Test grains are 25 per second.
pub const RATE: Rational = Rational::new(25, 1);

/// A running server and a client for it; dropping it stops the server.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// A client that keeps no state between requests beyond its connection pool.
    pub client: reqwest::Client,
    /// The configuration the server runs with.
    pub config: Config,
    /// Dropping it starts the server's graceful shutdown.
    _shutdown: oneshot::Sender<()>,
    /// Kept so that the directory lives as long as the server.
    _data_dir: tempfile::TempDir,
}

/// Starts the server with the default configuration.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the server with the default configuration changed by `tweak`.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    init_tracing();
    let data_dir = tempfile::tempdir().expect("temp dir");
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".parse().expect("address")),
        data_dir: Some(data_dir.path().to_path_buf()),
    };
    let mut config =
        Config::load_from(None, Vec::<(String, String)>::new(), &overrides).expect("config");
    tweak(&mut config);
    let server = Server::bind(config.clone()).await.expect("bind");
    let address = format!("http://{}", server.local_addr());
    let (shutdown, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    TestApp {
        address,
        client,
        config,
        _shutdown: shutdown,
        _data_dir: data_dir,
    }
}

/// Logs to the test output only when `TEST_LOG` is set (filter from `RUST_LOG`).
fn init_tracing() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_test_writer()
            .try_init();
    }
}

/// A query string from pairs, each value percent-encoded.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        out.append_pair(name, value);
    }
    out.finish()
}

impl TestApp {
    /// `address` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    /// `PUT /flows/{id}` with a JSON body.
    pub async fn put_flow(&self, id: impl std::fmt::Display, flow: &Value) -> Response {
        self.put_flow_raw(id, "application/json", flow.to_string().into_bytes())
            .await
    }

    /// `PUT /flows/{id}` with any body and content type.
    pub async fn put_flow_raw(
        &self,
        id: impl std::fmt::Display,
        content_type: &str,
        body: Vec<u8>,
    ) -> Response {
        self.client
            .put(self.url(&format!("/flows/{id}")))
            .header(CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .expect("PUT flow")
    }

    /// `GET /flows/{id}`.
    pub async fn get_flow(&self, id: impl std::fmt::Display) -> Response {
        self.get(&format!("/flows/{id}")).await
    }

    /// `DELETE /flows/{id}`.
    pub async fn delete_flow(&self, id: impl std::fmt::Display) -> Response {
        self.client
            .delete(self.url(&format!("/flows/{id}")))
            .send()
            .await
            .expect("DELETE flow")
    }

    /// `GET /flows?query`.
    pub async fn list_flows(&self, query: &str) -> Response {
        self.get(&format!("/flows?{query}")).await
    }

    /// `GET /sources?query`.
    pub async fn list_sources(&self, query: &str) -> Response {
        self.get(&format!("/sources?{query}")).await
    }

    /// `GET /sources/{id}`.
    pub async fn get_source(&self, id: impl std::fmt::Display) -> Response {
        self.get(&format!("/sources/{id}")).await
    }

    /// Creates a video flow with a fresh id and source; returns (flow, source).
    pub async fn create_flow(&self) -> (Uuid, Uuid) {
        let (flow, source) = (Uuid::new_v4(), Uuid::new_v4());
        let response = self.put_flow(flow, &flow_body(source, "video")).await;
        assert_eq!(response.status(), StatusCode::CREATED, "creating a flow");
        (flow, source)
    }

    /// Creates a flow and writes `n` grains of `payload_len` bytes (grains 0..n).
    pub async fn flow_with_grains(&self, n: u64, payload_len: usize) -> (Uuid, Uuid, Vec<Grain>) {
        let (flow, source) = self.create_flow().await;
        let grains = grains(flow, source, 0..n, payload_len);
        let response = self.post_grains_gsf(flow, gsf(&grains)).await;
        assert_eq!(response.status(), StatusCode::CREATED, "writing grains");
        (flow, source, grains)
    }

    /// `POST /flows/{id}/grains` with a GSF body.
    pub async fn post_grains_gsf(&self, flow: Uuid, body: impl Into<reqwest::Body>) -> Response {
        self.post_grains(flow, "application/x-gsf", body).await
    }

    /// `POST /flows/{id}/grains` with an NDJSON body.
    pub async fn post_grains_ndjson(&self, flow: Uuid, body: impl Into<reqwest::Body>) -> Response {
        self.post_grains(flow, "application/x-ndjson", body).await
    }

    /// `POST /flows/{id}/grains` with any body and content type.
    pub async fn post_grains(
        &self,
        flow: Uuid,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        self.client
            .post(self.url(&format!("/flows/{flow}/grains")))
            .header(CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .expect("POST grains")
    }

    /// `GET /flows/{id}/grains?query`, with `Accept` when given.
    pub async fn read_grains(&self, flow: Uuid, query: &str, accept: Option<&str>) -> Response {
        let mut request = self
            .client
            .get(self.url(&format!("/flows/{flow}/grains?{query}")));
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        request.send().await.expect("GET grains")
    }

    /// Reads grains as GSF and decodes them.
    pub async fn read_gsf(&self, flow: Uuid, query: &str) -> Vec<Grain> {
        let response = self.read_grains(flow, query, None).await;
        assert_eq!(response.status(), StatusCode::OK, "{query}");
        assert_eq!(content_type(&response), "application/x-gsf");
        decode_gsf(response.bytes().await.expect("body"))
    }

    /// Reads grains as NDJSON and parses each line as a JSON value.
    pub async fn read_ndjson(&self, flow: Uuid, query: &str) -> Vec<Value> {
        let response = self
            .read_grains(flow, query, Some("application/x-ndjson"))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{query}");
        assert_eq!(content_type(&response), "application/x-ndjson");
        parse_ndjson(&response.bytes().await.expect("body"))
    }

    /// `GET /flows/{id}/grains/{timestamp}`, with `Accept` when given.
    pub async fn get_grain(&self, flow: Uuid, timestamp: &str, accept: Option<&str>) -> Response {
        let mut request = self
            .client
            .get(self.url(&format!("/flows/{flow}/grains/{timestamp}")));
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        request.send().await.expect("GET grain")
    }

    /// `PUT /flows/{id}/grains/{timestamp}`.
    pub async fn put_grain(
        &self,
        flow: Uuid,
        timestamp: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        self.client
            .put(self.url(&format!("/flows/{flow}/grains/{timestamp}")))
            .header(CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .expect("PUT grain")
    }

    /// `DELETE /flows/{id}/grains/{timestamp}`.
    pub async fn delete_grain(&self, flow: Uuid, timestamp: &str) -> Response {
        self.client
            .delete(self.url(&format!("/flows/{flow}/grains/{timestamp}")))
            .send()
            .await
            .expect("DELETE grain")
    }

    /// `DELETE /flows/{id}/grains?query`.
    pub async fn delete_range(&self, flow: Uuid, query: &str) -> Response {
        self.client
            .delete(self.url(&format!("/flows/{flow}/grains?{query}")))
            .send()
            .await
            .expect("DELETE grains")
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = self.get("/metrics").await;
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.expect("metrics text")
    }

    /// `grainstore_store_sessions_active` from `/metrics`.
    pub async fn sessions_active(&self) -> u64 {
        let text = self.metrics().await;
        metric(&text, "grainstore_store_sessions_active")
            .unwrap_or_else(|| panic!("no grainstore_store_sessions_active in\n{text}"))
    }
}

/// A sample's value (no labels) in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls `check` until it returns `Some`, for at most [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A flow resource body of a format (`video`, `audio`, `data`, `multi`).
pub fn flow_body(source: Uuid, format: &str) -> Value {
    json!({
        "source_id": source,
        "format": format!("urn:x-nmos:format:{format}"),
        "label": "test flow",
    })
}

/// The origin timestamp of grain `index` (25 per second from [`BASE_SECS`]).
pub fn ts(index: u64) -> Timestamp {
    Timestamp::from_nanos(i128::from(BASE_SECS) * 1_000_000_000 + i128::from(index) * 40_000_000)
        .expect("timestamp")
}

/// One coded video grain at `ts(index)` with the given payload.
pub fn grain(flow: Uuid, source: Uuid, index: u64, payload: Vec<u8>) -> Grain {
    let kind = GrainKind::CodedVideo(CodedVideoHeader {
        format: CogFrameFormat::H264,
        layout: CogFrameLayout::FULL_FRAME,
        origin_width: 1920,
        origin_height: 1080,
        coded_width: 1920,
        coded_height: 1088,
        is_key_frame: Some(index == 0),
        temporal_offset: Some(0),
        unit_offsets: Vec::new(),
        length: 0,
        source_aspect_ratio: None,
        pixel_aspect_ratio: None,
    });
    let mut header = GrainHeader::new(source, flow, ts(index), kind);
    header.rate = RATE;
    header.duration = Rational::new(1, 25);
    Grain::new(header, Bytes::from(payload)).expect("grain")
}

/// A payload of `len` bytes that differs per grain: a 251-byte pattern (prime, so that
/// it does not line up with block sizes) shifted by the index, repeated.
pub fn payload(index: u64, len: usize) -> Vec<u8> {
    let period: Vec<u8> = (0..251u64)
        .map(|i| ((i * 31 + index * 7) % 251) as u8)
        .collect();
    let mut out = Vec::with_capacity(len + period.len());
    while out.len() < len {
        out.extend_from_slice(&period);
    }
    out.truncate(len);
    out
}

/// Grains `range` of a flow, each with a payload of `payload_len` bytes.
pub fn grains(
    flow: Uuid,
    source: Uuid,
    range: std::ops::Range<u64>,
    payload_len: usize,
) -> Vec<Grain> {
    range
        .map(|i| grain(flow, source, i, payload(i, payload_len)))
        .collect()
}

/// The pieces of a GSF stream of `grains` (one flow): head, each grain, terminator.
pub fn gsf_pieces(grains: &[Grain]) -> (Bytes, Vec<Bytes>, Bytes) {
    let flow = grains.first().map_or_else(Uuid::new_v4, Grain::flow_id);
    let mut encoder = GsfEncoder::new(Uuid::new_v4(), GsfDateTime::now());
    let local_id = encoder.add_flow_segment(flow).expect("segment");
    let head = encoder.start().expect("head");
    let bodies = grains
        .iter()
        .map(|g| {
            let chunks = encoder.encode_grain_in(local_id, g).expect("encode");
            let mut one = chunks.header.to_vec();
            one.extend_from_slice(&chunks.payload);
            Bytes::from(one)
        })
        .collect();
    (head, bodies, encoder.finish())
}

/// A whole GSF file of `grains` (one flow), made with the crate's encoder.
pub fn gsf(grains: &[Grain]) -> Vec<u8> {
    let (head, bodies, end) = gsf_pieces(grains);
    let mut out = head.to_vec();
    for body in bodies {
        out.extend_from_slice(&body);
    }
    out.extend_from_slice(&end);
    out
}

/// NDJSON of `grains`, one `Grain::to_json` per line.
pub fn ndjson(grains: &[Grain]) -> Vec<u8> {
    let mut out = Vec::new();
    for grain in grains {
        out.extend_from_slice(&grain.to_json(true));
        out.push(b'\n');
    }
    out
}

/// The grains of a GSF body, decoded with the crate's decoder.
pub fn decode_gsf(body: Bytes) -> Vec<Grain> {
    GsfDecoder::decode_all(body)
        .expect("a valid GSF body")
        .into_iter()
        .filter_map(|event| match event {
            GsfEvent::Grain { grain, .. } => Some(grain),
            _ => None,
        })
        .collect()
}

/// Every line of an NDJSON body as a JSON value.
pub fn parse_ndjson(body: &[u8]) -> Vec<Value> {
    body.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).expect("a JSON line"))
        .collect()
}

/// A grain as the server has it, without the creation timestamp it sets, to compare
/// with what was sent.
pub fn without_creation(mut grain: Grain) -> Grain {
    grain.set_creation_timestamp(None);
    grain
}

/// The media type of a response, without parameters.
pub fn content_type(response: &Response) -> String {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_owned())
        .unwrap_or_default()
}

/// Checks that `response` is a problem document of `status` with a title and a detail,
/// and returns it.
pub async fn problem(response: Response, status: StatusCode) -> Value {
    let got = response.status();
    let media = content_type(&response);
    let text = response.text().await.expect("body");
    assert_eq!(got, status, "status of {text}");
    assert_eq!(media, "application/problem+json", "content type of {text}");
    let body: Value = serde_json::from_str(&text).expect("problem JSON");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    for field in ["type", "title", "detail"] {
        assert!(
            body[field].as_str().is_some_and(|s| !s.is_empty()),
            "`{field}` in {body}"
        );
    }
    body
}

/// The JSON body of a response with `status`.
pub async fn json_body(response: Response, status: StatusCode) -> Value {
    let got = response.status();
    let text = response.text().await.expect("body");
    assert_eq!(got, status, "status of {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The timerange `[ts(first)_ts(last)]` as the server prints it.
pub fn inclusive(first: u64, last: u64) -> String {
    TimeRange::inclusive(ts(first), ts(last)).to_string()
}
