//! What the hardening tests (auth, limits, faults) share: the real server on a free port
//! with its own data directory and a changed configuration, a log capture, and grains.

#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use grainstore::config::{Config, Overrides};
use grainstore::grain::{Grain, GrainHeader, GrainKind};
use grainstore::server::Server;
use grainstore::time::{Rational, Timestamp};
use serde_json::json;
use tokio::sync::oneshot;
use uuid::Uuid;

/// The longest a test waits for something that must happen soon.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A port free on the loopback interface a moment ago, for a server in another process.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// A running server; dropping it stops the server.
pub struct App {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// `127.0.0.1:PORT`.
    pub addr: std::net::SocketAddr,
    /// A plain client.
    pub client: reqwest::Client,
    _shutdown: oneshot::Sender<()>,
    _data_dir: Option<tempfile::TempDir>,
}

/// The default configuration on `127.0.0.1:0` with data in `data_dir`.
pub fn config(data_dir: &std::path::Path) -> Config {
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".parse().expect("address")),
        data_dir: Some(data_dir.to_path_buf()),
    };
    Config::load_from(None, Vec::<(String, String)>::new(), &overrides).expect("config")
}

/// Starts the server with the default configuration changed by `tweak`, in a temp dir.
pub async fn spawn(tweak: impl FnOnce(&mut Config)) -> App {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config(dir.path());
    tweak(&mut config);
    let mut app = spawn_config(config).await;
    app._data_dir = Some(dir);
    app
}

/// Starts the server with `config` as given.
pub async fn spawn_config(config: Config) -> App {
    capture_logs();
    let server = Server::bind(config).await.expect("bind");
    let addr = server.local_addr();
    let (shutdown, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    App {
        address: format!("http://{addr}"),
        addr,
        client: reqwest::Client::new(),
        _shutdown: shutdown,
        _data_dir: None,
    }
}

impl App {
    /// `address` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Creates a flow (and its source) with `token`, if any; returns (flow, source).
    pub async fn create_flow(&self, token: Option<&str>) -> (Uuid, Uuid) {
        let (flow, source) = (Uuid::new_v4(), Uuid::new_v4());
        let mut request = self
            .client
            .put(self.url(&format!("/flows/{flow}")))
            .json(&json!({"source_id": source, "format": "urn:x-nmos:format:data"}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("PUT flow");
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        (flow, source)
    }
}

/// Everything logged by the process, at every level, since the first server started.
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once) a subscriber that keeps every event of every level, spans included.
pub fn capture_logs() {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
            .with_ansi(false)
            .with_writer(move || Capture(writer.clone()))
            .try_init();
        buffer
    });
}

/// The captured log text.
pub fn logs() -> String {
    let buffer = LOGS.get().expect("logs captured");
    String::from_utf8_lossy(&buffer.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// Polls `check` until it is true, for at most [`PATIENCE`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < PATIENCE,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An event grain at `index` seconds past 1,700,000,000 with `payload`.
pub fn grain(flow: Uuid, source: Uuid, index: u64, payload: Vec<u8>) -> Grain {
    let origin = Timestamp::from_nanos(i128::from(1_700_000_000 + index as i64) * 1_000_000_000)
        .expect("timestamp");
    let mut header = GrainHeader::new(source, flow, origin, GrainKind::Empty);
    header.rate = Rational::new(1, 1);
    header.duration = Rational::new(1, 1);
    Grain::new(header, Bytes::from(payload)).expect("grain")
}

/// NDJSON of grains `range` of a flow, each with `len` payload bytes.
pub fn ndjson(flow: Uuid, source: Uuid, range: std::ops::Range<u64>, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in range {
        let payload = (0..len).map(|j| (i as usize * 7 + j) as u8).collect();
        out.extend_from_slice(&grain(flow, source, i, payload).to_json(true));
        out.push(b'\n');
    }
    out
}
