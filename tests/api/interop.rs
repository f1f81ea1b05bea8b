//! Interoperability with BBC's mediagrains 5.1.0 through HTTP: GSF files mediagrains
//! writes are uploaded, read back as GSF and decoded by mediagrains; NDJSON grains made
//! by mediagrains are uploaded and rebuilt from what the server sends with
//! `GrainFactory(meta, b64decode(data))`. The ignored tests need `GRAINSTORE_PYTHON`:
//!
//! ```sh
//! GRAINSTORE_PYTHON=~/.cache/grainstore/venv/bin/python \
//!     cargo test --test api -- --include-ignored interop
//! ```

use std::path::Path;
use std::process::Command;

use grainstore::grain::Grain;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, json_body, problem, spawn_app, without_creation};

fn python() -> String {
    std::env::var("GRAINSTORE_PYTHON")
        .expect("set GRAINSTORE_PYTHON to a python with mediagrains 5.1.0 installed")
}

/// Runs a script of `tests/interop` and returns its standard output; fails the test
/// with its output when it fails.
fn script(name: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name);
    let out = Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// Creates the flow a manifest entry or a grain describes.
async fn create_flow(app: &TestApp, flow: &str, source: &str, format: &str) {
    let response = app
        .put_flow(
            flow,
            &json!({"source_id": source, "format": format, "label": "interop"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED, "creating {flow}");
}

fn format_of(grain_type: &str) -> &'static str {
    match grain_type {
        "video" | "coded_video" => "urn:x-nmos:format:video",
        "audio" | "coded_audio" => "urn:x-nmos:format:audio",
        _ => "urn:x-nmos:format:data",
    }
}

#[tokio::test]
#[ignore = "needs GRAINSTORE_PYTHON with mediagrains 5.1.0"]
async fn interop_gsf_written_by_mediagrains_reads_back_equal_in_mediagrains() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().expect("temp dir");
    // (read back, expected) file pairs, checked by one run of the script each.
    let mut gsf_checks: Vec<String> = vec!["check-gsf".into()];
    let mut ndjson_checks: Vec<String> = vec!["check-ndjson".into()];
    for version in ["7", "8", "9"] {
        let out = dir.path().join(format!("v{version}"));
        let manifest: Value = serde_json::from_str(&script(
            "mediagrains_http.py",
            &["split", version, path_str(&out)],
        ))
        .expect("manifest");
        for entry in manifest.as_array().expect("a list") {
            let flow: Uuid = entry["flow_id"].as_str().unwrap().parse().expect("flow id");
            let expected = entry["grains"].as_array().expect("grains");
            if version == "7" {
                create_flow(
                    &app,
                    &flow.to_string(),
                    entry["source_id"].as_str().unwrap(),
                    entry["format"].as_str().unwrap(),
                )
                .await;
            } else {
                // Later versions of the same grains replace the earlier ones.
                let deleted = app.delete_range(flow, "timerange=_").await;
                assert_eq!(deleted.status(), StatusCode::OK);
            }
            let body = std::fs::read(entry["file"].as_str().unwrap()).expect("read gsf");
            let summary =
                json_body(app.post_grains_gsf(flow, body).await, StatusCode::CREATED).await;
            assert_eq!(summary["written"], expected.len(), "v{version} {flow}");
            let want = out.join(format!("{flow}.expected.json"));
            std::fs::write(&want, serde_json::to_vec(expected).expect("json")).expect("write");

            // Read back as GSF: mediagrains decodes grains equal to what it wrote.
            let response = app.read_grains(flow, "", None).await;
            assert_eq!(response.status(), StatusCode::OK);
            let gsf = out.join(format!("{flow}.read.gsf"));
            std::fs::write(&gsf, response.bytes().await.expect("body")).expect("write");
            gsf_checks.extend([path_str(&gsf).to_owned(), path_str(&want).to_owned()]);

            // Read back as NDJSON: GrainFactory rebuilds the same grains.
            let response = app
                .read_grains(flow, "", Some("application/x-ndjson"))
                .await;
            assert_eq!(response.status(), StatusCode::OK);
            let lines = out.join(format!("{flow}.read.ndjson"));
            std::fs::write(&lines, response.bytes().await.expect("body")).expect("write");
            ndjson_checks.extend([path_str(&lines).to_owned(), path_str(&want).to_owned()]);
        }
    }
    for checks in [gsf_checks, ndjson_checks] {
        let args: Vec<&str> = checks.iter().map(String::as_str).collect();
        script("mediagrains_http.py", &args);
    }
}

#[tokio::test]
#[ignore = "needs GRAINSTORE_PYTHON with mediagrains 5.1.0"]
async fn interop_ndjson_made_by_mediagrains_is_rebuilt_equal_by_grain_factory() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let made = dir.path().join("made.ndjson");
    script("mediagrains_gsf.py", &["json-make", path_str(&made)]);
    let text = std::fs::read_to_string(&made).expect("read");

    // One upload per flow, in the order the flows first appear.
    let mut flows: Vec<(String, Vec<&str>)> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line).expect("JSON");
        let grain = &value["meta"]["grain"];
        let flow = grain["flow_id"].as_str().unwrap().to_owned();
        match flows.iter_mut().find(|(f, _)| *f == flow) {
            Some((_, lines)) => lines.push(line),
            None => {
                let source = grain["source_id"].as_str().unwrap();
                create_flow(
                    &app,
                    &flow,
                    source,
                    format_of(grain["grain_type"].as_str().unwrap()),
                )
                .await;
                flows.push((flow, vec![line]));
            }
        }
    }
    let mut read_back = Vec::new();
    for (flow, lines) in &flows {
        let flow: Uuid = flow.parse().expect("flow id");
        let body = lines.join("\n") + "\n";
        let summary = json_body(
            app.post_grains_ndjson(flow, body).await,
            StatusCode::CREATED,
        )
        .await;
        assert_eq!(summary["written"], lines.len());
        let response = app
            .read_grains(flow, "", Some("application/x-ndjson"))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        read_back.extend_from_slice(&response.bytes().await.expect("body"));
    }
    let got = dir.path().join("read.ndjson");
    std::fs::write(&got, &read_back).expect("write");
    // Creation timestamps included, and mediagrains' own equality.
    script("mediagrains_gsf.py", &["json-check", path_str(&got)]);
}

/// The grains of a fixture's expected JSON.
fn fixture_grains(name: &str) -> Vec<Grain> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/gsf")
        .join(name);
    let value: Value =
        serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("JSON");
    value["grains"]
        .as_array()
        .expect("grains")
        .iter()
        .map(|g| Grain::from_json(g.to_string().as_bytes()).expect("grain"))
        .collect()
}

/// The mediagrains fixtures hold several flows: an upload to the first keeps its grains
/// and stops, with 400, at the first grain of another flow.
#[tokio::test]
async fn interop_multi_flow_mediagrains_files_stop_at_the_first_other_flow() {
    let app = spawn_app().await;
    for version in [7, 8, 9] {
        let expected = fixture_grains(&format!("mediagrains_v{version}.json"));
        let first = &expected[0];
        let flow = first.flow_id();
        let ours = expected.iter().take_while(|g| g.flow_id() == flow).count();
        if version == 7 {
            create_flow(
                &app,
                &flow.to_string(),
                &first.source_id().to_string(),
                "urn:x-nmos:format:video",
            )
            .await;
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/data/gsf/mediagrains_v{version}.gsf"));
        let body = std::fs::read(path).expect("fixture");
        let p = problem(
            app.post_grains_gsf(flow, body).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(p["committed"], ours, "v{version}: {p}");
        let stored: Vec<_> = app
            .read_gsf(flow, "")
            .await
            .into_iter()
            .map(without_creation)
            .collect();
        let want: Vec<_> = expected[..ours]
            .iter()
            .cloned()
            .map(without_creation)
            .collect();
        assert_eq!(stored, want, "v{version}");
    }
}
