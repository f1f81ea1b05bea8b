//! The `grainstore serve` command line: a configuration file, environment variables and
//! the `--listen`/`--data-dir` flags, each over the one before, and a bad configuration
//! that stops the service at start naming its key; and the memory a large upload takes.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;

mod support;

use support::{PATIENCE, free_port};

/// `grainstore serve --config FILE --listen 127.0.0.1:PORT --data-dir DIR` with `env`, its
/// output (both streams) in `log`.
fn serve(config: &Path, port: u16, data: &Path, env: &[(&str, &str)], log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_grainstore"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn()
        .expect("start grainstore")
}

/// Kills the server when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_file_the_environment_and_the_flags_apply_in_turn() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("grainstore.toml");
    // The file: a small grain limit, pretty logs, and a listen address and data dir that
    // the flags replace.
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:1\"\n\
         [storage]\ndata_dir = \"/nonexistent/grainstore\"\n\
         [limits]\nmax_grain_bytes = 100\n\
         [log]\nformat = \"pretty\"\nfilter = \"info\"\n",
    )
    .expect("config file");
    let (port, log) = (free_port(), dir.path().join("server.log"));
    // The environment: JSON logs over the file's, and a listen address the flag beats.
    let env = [
        ("GRAINSTORE__LOG__FORMAT", "json"),
        ("GRAINSTORE__SERVER__LISTEN", "127.0.0.1:2"),
    ];
    let mut server = Running(serve(&config, port, &dir.path().join("data"), &env, &log));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Some(status) = server.0.try_wait().expect("wait") {
            panic!(
                "the server stopped ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "not ready on the flag's port");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dir.path().join("data").is_dir(), "the flag's data dir");

    // The file's grain limit.
    let (flow, source) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let put = http
        .put(format!("{base}/flows/{flow}"))
        .json(&serde_json::json!({"source_id": source, "format": "urn:x-nmos:format:data"}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(put.status(), 201);
    let posted = http
        .post(format!("{base}/flows/{flow}/grains"))
        .header("content-type", "application/x-ndjson")
        .body(support::ndjson(flow, source, 0..1, 200))
        .send()
        .await
        .expect("POST");
    let status = posted.status();
    let problem: serde_json::Value = posted.json().await.expect("problem");
    assert_eq!(status, 413, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("limits.max_grain_bytes")),
        "{problem}"
    );

    // The environment's log format: every line the server wrote is a JSON object.
    drop(server);
    let written = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<&str> = written.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the server logged");
    for line in lines {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(
            parsed.is_ok_and(|v| v.is_object()),
            "not a JSON line: {line}"
        );
    }
}

/// Runs `grainstore serve` with `config` and `env` and returns what it said, asserting
/// that it stopped with a failure.
fn refused(dir: &Path, name: &str, config: &str, env: &[(&str, &str)]) -> String {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, config).expect("config file");
    let log = dir.join(format!("{name}.log"));
    let mut child = Running(serve(&file, free_port(), &dir.join("data"), env, &log));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{name}: the service started with a bad configuration"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "{name}: {status}");
    std::fs::read_to_string(&log).expect("log")
}

#[test]
fn a_bad_configuration_stops_the_service_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let said = refused(
        dir.path(),
        "file",
        "[limits]\nmax_grain_bytes = \"lots\"\n",
        &[],
    );
    assert!(said.contains("limits.max_grain_bytes"), "{said}");
    let said = refused(
        dir.path(),
        "environment",
        "[log]\nformat = \"json\"\n",
        &[("GRAINSTORE__SERVER__SHUTDOWN_DEADLINE_MS", "soon")],
    );
    assert!(said.contains("server.shutdown_deadline_ms"), "{said}");
}

/// A large upload streams through the server: 256 grains of 1 MiB in one POST, sent as
/// they are encoded, are stored while the server's peak resident memory stays under
/// 100 MB, the pages of its own (debug) executable, some 27 MB, included. (Larger uploads
/// of release builds: BENCHMARKS.md.)
#[tokio::test]
async fn a_large_upload_is_stored_in_bounded_memory() {
    use grainstore::grain::{CodedVideoHeader, CogFrameFormat, CogFrameLayout, Grain};
    use grainstore::grain::{GrainHeader, GrainKind};
    use grainstore::gsf::{GsfDateTime, GsfEncoder};
    use grainstore::time::{Rational, Timestamp};

    const GRAINS: u64 = 256;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("grainstore.toml");
    std::fs::write(&config, "[log]\nfilter = \"warn\"\n").expect("config file");
    let (port, log) = (free_port(), dir.path().join("server.log"));
    let server = Running(serve(&config, port, &dir.path().join("data"), &[], &log));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    support::eventually("the server is ready", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    let (flow, source) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let put = http
        .put(format!("{base}/flows/{flow}"))
        .json(&serde_json::json!({"source_id": source, "format": "urn:x-nmos:format:video"}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(put.status(), 201);

    let mut encoder = GsfEncoder::new(uuid::Uuid::new_v4(), GsfDateTime::now());
    encoder.add_flow_segment(flow).expect("segment");
    let start = encoder.start().expect("start");
    let end = encoder.finish();
    let payload = bytes::Bytes::from(vec![0x5a; 1 << 20]);
    let grains = futures::stream::iter(0..GRAINS).map(move |i| {
        let kind = GrainKind::CodedVideo(CodedVideoHeader {
            format: CogFrameFormat::H264,
            layout: CogFrameLayout::FULL_FRAME,
            origin_width: 1920,
            origin_height: 1080,
            coded_width: 1920,
            coded_height: 1088,
            is_key_frame: Some(i % 25 == 0),
            temporal_offset: None,
            unit_offsets: Vec::new(),
            length: 0,
            source_aspect_ratio: None,
            pixel_aspect_ratio: None,
        });
        let at = Timestamp::from_nanos(i128::from(i) * 40_000_000).expect("timestamp");
        let mut header = GrainHeader::new(source, flow, at, kind);
        header.rate = Rational::new(25, 1);
        header.duration = Rational::new(1, 25);
        let grain = Grain::new(header, payload.clone()).expect("grain");
        let chunks = encoder.encode_grain(&grain).expect("encode");
        futures::stream::iter([chunks.header, chunks.payload])
    });
    let body = futures::stream::once(async move { start })
        .chain(grains.flatten())
        .chain(futures::stream::once(async move { end }))
        .map(Ok::<_, std::io::Error>);
    let posted = http
        .post(format!("{base}/flows/{flow}/grains"))
        .header("content-type", "application/x-gsf")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("POST");
    let status = posted.status();
    let answer: serde_json::Value = posted.json().await.expect("answer");
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["written"], GRAINS, "{answer}");

    let status = std::fs::read_to_string(format!("/proc/{}/status", server.0.id()))
        .expect("the server's /proc status");
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    eprintln!(
        "uploaded {GRAINS} MiB; the server's peak resident set: {:.1} MiB",
        peak_kib as f64 / 1024.0
    );
    assert!(
        peak_kib < 100_000,
        "peak resident {peak_kib} KiB for a {GRAINS} MiB upload"
    );
}
