//! Storage faults against the real server on a small tmpfs: a full disk and a read-only
//! data directory make writes fail with a problem (507 or 503), reads go on working, and
//! writes succeed again once space (or write access) returns, without a restart.
//!
//! Mounting needs root, so these tests are ignored by default; `.ci/run` runs them.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::{App, ndjson, spawn_config};
use uuid::Uuid;

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        run(
            &[
                "mount",
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
            ],
            dir.path(),
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Makes the mount read-only (`ro`) or writable (`rw`) again. A file system with
    /// files open for writing cannot be remounted read-only, so this binds the mount
    /// onto itself once and flips the bind's flag: new files cannot be created and
    /// statvfs reports it read-only, as after an emergency remount by the kernel.
    fn remount(&self, mode: &str) {
        if !self.path().join(".bound").exists() {
            run(
                &["mount", "--bind", self.path().to_str().unwrap()],
                self.path(),
            );
            std::fs::write(self.path().join(".bound"), b"").unwrap();
        }
        run(
            &["mount", "-o", &format!("remount,bind,{mode}")],
            self.path(),
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // The bind, if any, then the tmpfs.
        for _ in 0..2 {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn run(args: &[&str], path: &Path) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .arg(path)
        .status()
        .expect("run mount");
    assert!(status.success(), "{args:?} {path:?} failed: run as root");
}

/// Fills the file system but `leave` bytes with a ballast file, returned for removal.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let ballast = dir.join("ballast");
    let stat = nix_statvfs(dir);
    let free = stat.saturating_sub(leave);
    std::fs::write(&ballast, vec![0u8; free as usize]).unwrap();
    ballast
}

fn nix_statvfs(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

async fn start(data: &Path, min_free_bytes: u64) -> App {
    let mut config = support::config(data);
    config.storage.min_free_bytes = min_free_bytes;
    // Payloads over 1 KiB go to segment files, smaller ones into the index.
    config.storage.inline_max_bytes = 1024;
    config.storage.segment_bytes = 1 << 20;
    spawn_config(config).await
}

async fn post(app: &App, flow: Uuid, body: Vec<u8>) -> (u16, Value) {
    let response = app
        .client
        .post(app.url(&format!("/flows/{flow}/grains")))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn count(app: &App, flow: Uuid) -> usize {
    let response = app
        .client
        .get(app.url(&format!("/flows/{flow}/grains?payload=none")))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap().lines().count()
}

fn assert_storage_problem(status: u16, problem: &Value) {
    assert!(
        status == 507 || status == 503,
        "a storage fault is 507 or 503, not {status}: {problem}"
    );
    assert!(problem["type"].is_string(), "{problem}");
}

/// Writes batches of `per` grains of `len` bytes until one fails; returns the index of
/// the next grain, the grains stored, and the failure.
async fn write_until_failure(
    app: &App,
    flow: Uuid,
    source: Uuid,
    per: u64,
    len: usize,
) -> (u64, u64, (u16, Value)) {
    let mut next = 0;
    let mut stored = 0;
    for _ in 0..10_000 {
        let (status, body) = post(app, flow, ndjson(flow, source, next..next + per, len)).await;
        if status != 201 {
            stored += body["committed"].as_u64().unwrap_or(0);
            return (next + per, stored, (status, body));
        }
        stored += per;
        next += per;
    }
    panic!("the disk never filled");
}

/// `min_free_bytes` 0 lets the disk fill up for real (ENOSPC on a segment append);
/// otherwise the reserve refuses writes before the index meets a full disk.
async fn disk_full(per: u64, len: usize, min_free_bytes: u64) {
    let fs = Tmpfs::mount("8m");
    let data = fs.path().join("data");
    let app = start(&data, min_free_bytes).await;
    let (flow, source) = app.create_flow(None).await;
    let ballast = fill(fs.path(), min_free_bytes + (1 << 20));

    let (next, stored, (status, problem)) = write_until_failure(&app, flow, source, per, len).await;
    assert_storage_problem(status, &problem);
    assert_eq!(status, 507, "{problem}");
    assert!(stored > 0);
    // Reads go on, and see exactly what was acknowledged.
    assert_eq!(count(&app, flow).await as u64, stored);
    assert_eq!(
        app.client
            .get(app.url(&format!("/flows/{flow}")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Still full: refused, still readable. What of the request still fits is committed
    // and reported (how much depends on where the server cut its batches).
    let (status, problem) = post(&app, flow, ndjson(flow, source, next..next + per, len)).await;
    assert_storage_problem(status, &problem);
    let partial = problem["committed"].as_u64().unwrap_or(0);
    assert!(partial < per, "{problem}");
    assert_eq!(count(&app, flow).await as u64, stored + partial);

    // Space returns: writes succeed again, without a restart.
    std::fs::remove_file(ballast).unwrap();
    let (status, body) = post(&app, flow, ndjson(flow, source, next..next + per, len)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(count(&app, flow).await as u64, stored + per);
    let (status, _) = post(
        &app,
        flow,
        ndjson(flow, source, next + per..next + 2 * per, len),
    )
    .await;
    assert_eq!(status, 201);
}

#[tokio::test]
#[ignore = "needs root for tmpfs"]
async fn disk_full_with_large_grains_in_segments() {
    disk_full(8, 64 << 10, 0).await;
}

#[tokio::test]
#[ignore = "needs root for tmpfs"]
async fn disk_below_the_reserve_with_large_grains() {
    disk_full(8, 64 << 10, 1 << 20).await;
}

#[tokio::test]
#[ignore = "needs root for tmpfs"]
async fn disk_below_the_reserve_with_small_grains_in_the_index() {
    disk_full(200, 200, 1 << 20).await;
}

#[tokio::test]
#[ignore = "needs root for tmpfs"]
async fn read_only_data_dir() {
    let fs = Tmpfs::mount("32m");
    let data = fs.path().join("data");
    let app = start(&data, 0).await;
    let (flow, source) = app.create_flow(None).await;
    let (status, _) = post(&app, flow, ndjson(flow, source, 0..10, 4096)).await;
    assert_eq!(status, 201);

    fs.remount("ro");
    for (range, len) in [(10..20, 4096), (20..30, 100)] {
        let (status, problem) = post(&app, flow, ndjson(flow, source, range, len)).await;
        assert_storage_problem(status, &problem);
        assert_eq!(status, 503, "{problem}");
    }
    assert_eq!(count(&app, flow).await, 10);

    fs.remount("rw");
    let (status, body) = post(&app, flow, ndjson(flow, source, 10..20, 4096)).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = post(&app, flow, ndjson(flow, source, 20..30, 100)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(count(&app, flow).await, 30);
}
