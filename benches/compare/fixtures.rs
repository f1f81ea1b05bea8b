//! What the workloads are made of: grains and their GSF bodies, and the servers under
//! test — grainstore, a bare axum handler, nginx, redis-server — started on loopback.

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use grainstore::grain::{
    CodedAudioHeader, CogAudioFormat, CogFrameFormat, CogFrameLayout, Grain, GrainHeader,
    GrainKind, VideoComponent, VideoHeader,
};
use grainstore::gsf::{GsfDateTime, GsfEncoder};
use grainstore::time::{Rational, Timestamp};
use uuid::Uuid;

use crate::http::{self, Conn};
use crate::proc::{Server, free_port, wait_for_port};

/// Origin timestamps start here (TAI seconds).
pub const BASE_SECS: i128 = 1_700_000_000;

/// The payload of a small (coded audio) grain.
pub const SMALL_BYTES: usize = 200;

/// The origin timestamp of grain `index` of a flow at `rate` grains per second.
pub fn at(index: u64, rate: u64) -> Timestamp {
    Timestamp::from_nanos(
        BASE_SECS * 1_000_000_000 + index as i128 * (1_000_000_000 / rate as i128),
    )
    .expect("a valid timestamp")
}

/// The index of a grain from its `sec:nsec` origin timestamp.
pub fn index_of(timestamp: &str, rate: u64) -> Option<u64> {
    let (sec, nsec) = timestamp.trim().split_once(':')?;
    let nanos = sec.parse::<i128>().ok()? * 1_000_000_000 + nsec.parse::<i128>().ok()?;
    u64::try_from((nanos - BASE_SECS * 1_000_000_000) / (1_000_000_000 / rate as i128)).ok()
}

/// A ~200-byte coded audio grain at 1000 grains/s (or `rate`).
pub fn small_grain(flow: Uuid, source: Uuid, index: u64, rate: u64, payload: Bytes) -> Grain {
    let kind = GrainKind::CodedAudio(CodedAudioHeader {
        format: CogAudioFormat::AAC,
        channels: 2,
        samples: 1024,
        priming: 0,
        remainder: 0,
        sample_rate: 48_000,
    });
    let mut header = GrainHeader::new(source, flow, at(index, rate), kind);
    header.rate = Rational::new(rate as i64, 1);
    header.duration = Rational::new(1, rate as i64);
    Grain::new(header, payload).expect("a valid grain")
}

/// A 1 MiB UYVY video grain at 25 grains/s.
pub fn large_grain(flow: Uuid, source: Uuid, index: u64, payload: Bytes) -> Grain {
    let kind = GrainKind::Video(VideoHeader {
        format: CogFrameFormat::UYVY,
        layout: CogFrameLayout::FULL_FRAME,
        width: 1920,
        height: 1080,
        extension: 0,
        source_aspect_ratio: Some(Rational::new(16, 9)),
        pixel_aspect_ratio: Some(Rational::new(1, 1)),
        components: vec![VideoComponent {
            stride: 3840,
            offset: 0,
            width: 1920,
            height: 1080,
            length: payload.len() as u32,
        }],
    });
    let mut header = GrainHeader::new(source, flow, at(index, 25), kind);
    header.rate = Rational::new(25, 1);
    header.duration = Rational::new(1, 25);
    Grain::new(header, payload).expect("a valid grain")
}

/// Deterministic payload bytes.
pub fn payload(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u32 * 7 + seed as u32) as u8 % 251)
            .collect::<Vec<u8>>(),
    )
}

/// A GSF stream writer for one flow: the pieces of a body, payloads not copied.
pub struct GsfWriter {
    encoder: GsfEncoder,
    local_id: u16,
}

impl GsfWriter {
    pub fn new(flow: Uuid) -> GsfWriter {
        let mut encoder = GsfEncoder::new(Uuid::new_v4(), GsfDateTime::now());
        let local_id = encoder.add_flow_segment(flow).expect("segment");
        GsfWriter { encoder, local_id }
    }

    pub fn start(&mut self) -> Bytes {
        self.encoder.start().expect("gsf head")
    }

    pub fn grain(&self, grain: &Grain) -> [Bytes; 2] {
        let chunks = grainstore::gsf::encode_grain(self.local_id, grain);
        [chunks.header, chunks.payload]
    }

    pub fn finish(&self) -> Bytes {
        self.encoder.finish()
    }

    /// A whole GSF body of `grains`, in one buffer.
    pub fn body(flow: Uuid, grains: &[Grain]) -> Bytes {
        let mut writer = GsfWriter::new(flow);
        let mut out = Vec::new();
        out.extend_from_slice(&writer.start());
        for g in grains {
            for piece in writer.grain(g) {
                out.extend_from_slice(&piece);
            }
        }
        out.extend_from_slice(&writer.finish());
        Bytes::from(out)
    }
}

/// The grainstore service, started from the release binary with its own data dir.
pub struct Grainstore {
    pub server: Server,
    pub port: u16,
}

impl Grainstore {
    pub async fn start(dir: &Path) -> Grainstore {
        let port = free_port();
        let log = dir.join("grainstore.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_grainstore"));
        command
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.join("grainstore-data"))
            // Room for every subscriber of the idle-subscriber workload.
            .env("GRAINSTORE__SERVER__MAX_CONCURRENT_REQUESTS", "20000")
            .env("GRAINSTORE__STORAGE__MAX_SESSIONS", "20000")
            .env("GRAINSTORE__LIVE__MAX_STREAMS", "20000");
        let server = Server::spawn("grainstore", command, &log);
        wait_for_port(port, "grainstore").await;
        Grainstore { server, port }
    }

    /// Creates a flow; returns (flow id, source id).
    pub async fn create_flow(&self, format: &str) -> (Uuid, Uuid) {
        let (flow, source) = (Uuid::new_v4(), Uuid::new_v4());
        let body = serde_json::json!({
            "source_id": source,
            "format": format!("urn:x-nmos:format:{format}"),
            "label": "benchmark",
        });
        let mut conn = Conn::open(self.port).await;
        let (status, text) = conn
            .fetch(
                "PUT",
                &format!("/flows/{flow}"),
                &[("content-type", "application/json")],
                http::full(body.to_string()),
            )
            .await;
        assert!(
            status == 201,
            "PUT flow: {status} {}",
            String::from_utf8_lossy(&text)
        );
        (flow, source)
    }
}

/// A redis-server of the benchmark's own.
pub fn start_redis(dir: &Path, name: &'static str, durable: bool) -> (Server, u16) {
    let port = free_port();
    let data = dir.join(name);
    std::fs::create_dir_all(&data).expect("redis dir");
    let mut command = Command::new("redis-server");
    command
        .arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--dir")
        .arg(&data)
        .arg("--save")
        .arg("")
        .arg("--daemonize")
        .arg("no")
        .arg("--maxclients")
        .arg("15000");
    if durable {
        command
            .arg("--appendonly")
            .arg("yes")
            .arg("--appendfsync")
            .arg("always");
    } else {
        command.arg("--appendonly").arg("no");
    }
    let server = Server::spawn(name, command, &dir.join(format!("{name}.log")));
    (server, port)
}

/// nginx serving `root` with sendfile, as one process (no master), so its counters are
/// the whole server's.
pub fn start_nginx(dir: &Path, root: &Path) -> (Server, u16) {
    let port = free_port();
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).expect("nginx dir");
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  default_type application/x-gsf;\n\
             client_body_temp_path {p}/body; proxy_temp_path {p}/proxy; fastcgi_temp_path {p}/fastcgi;\n\
             uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;\n\
             server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
            p = prefix.display(),
            root = root.display(),
        ),
    )
    .expect("nginx conf");
    let mut command = Command::new("nginx");
    command.arg("-p").arg(&prefix).arg("-c").arg(&conf);
    let server = Server::spawn("nginx", command, &prefix.join("logs/stdout.log"));
    (server, port)
}

/// The bare axum peer: this benchmark binary again, in the `bare-axum` role, so its CPU
/// counters are its own. It answers `bytes` with `headers` (name, value) besides hyper's
/// own `date` and `content-length`.
pub fn start_bare_axum(dir: &Path, bytes: Bytes, headers: &[(String, String)]) -> (Server, u16) {
    let port = free_port();
    let body = dir.join("bare-axum.body");
    std::fs::write(&body, &bytes).expect("body file");
    let head = dir.join("bare-axum.headers");
    let lines: String = headers.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
    std::fs::write(&head, lines).expect("headers file");
    let mut command = Command::new(std::env::current_exe().expect("own path"));
    command
        .env("GS_COMPARE_ROLE", "bare-axum")
        .env("GS_COMPARE_BARE_PORT", port.to_string())
        .env("GS_COMPARE_BARE_BODY", &body)
        .env("GS_COMPARE_BARE_HEADERS", &head);
    let server = Server::spawn("bare axum", command, &dir.join("bare-axum.log"));
    (server, port)
}

/// The `bare-axum` role: `GET /flows/{id}/grains/{timestamp}` answers the given bytes
/// and headers, made once at start, with nothing else in the stack.
pub fn run_bare_axum() {
    use axum::extract::Path as AxumPath;
    use axum::http::{HeaderMap, HeaderName, HeaderValue};
    use axum::routing::get;
    let port: u16 = std::env::var("GS_COMPARE_BARE_PORT")
        .expect("port")
        .parse()
        .expect("port");
    let body = Bytes::from(
        std::fs::read(std::env::var("GS_COMPARE_BARE_BODY").expect("body file")).expect("body"),
    );
    let lines = std::fs::read_to_string(std::env::var("GS_COMPARE_BARE_HEADERS").expect("headers"))
        .expect("headers file");
    // Static values, so that the per-request copy of the map copies pointers only.
    let mut headers = HeaderMap::new();
    for line in lines.lines() {
        let (k, v) = line.split_once(": ").expect("a `name: value` line");
        headers.append(
            HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_static(String::leak(v.to_owned())),
        );
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let app = axum::Router::new().route(
            "/flows/{id}/grains/{timestamp}",
            get(move |AxumPath((_id, _ts)): AxumPath<(String, String)>| {
                let mut response =
                    axum::response::Response::new(axum::body::Body::from(body.clone()));
                *response.headers_mut() = headers.clone();
                async move { response }
            }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        axum::serve(listener, app).await.expect("serve");
    });
}
