//! Store sessions through HTTP: a response stream holds one, a client that goes away
//! releases it within a second, and a full pool answers 503 with `Retry-After` instead
//! of hanging (at the response deadline when that comes before the pool's wait).

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;

use crate::helpers::{PATIENCE, TestApp, eventually, problem};

/// Grains of 256 KiB, 30 MiB in all: a read of them does not fit in socket buffers, so
/// the server is still sending when a client stops reading.
const BIG: usize = 256 << 10;
const GRAINS: u64 = 120;

/// How soon the sessions of readers that went away must be free again.
const RELEASE: Duration = Duration::from_secs(1);

/// Starts a GSF read of `flow` and takes its first few KiB, leaving the rest unread.
async fn start_read(app: &TestApp, flow: uuid::Uuid) -> reqwest::Response {
    let mut response = app.read_grains(flow, "", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut taken = 0;
    while taken < 4096 {
        let chunk = response.chunk().await.expect("body").expect("more body");
        taken += chunk.len();
    }
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_readers_release_their_sessions() {
    let app = crate::helpers::spawn_app().await;
    let (flow, _, _) = app.flow_with_grains(GRAINS, BIG).await;
    let mut readers = Vec::new();
    for _ in 0..5 {
        readers.push(start_read(&app, flow).await);
    }
    assert!(
        app.sessions_active().await >= 5,
        "each open read holds a session"
    );
    drop(readers);
    // Back to 0 within a second of the last reader walking away.
    let left = Instant::now();
    loop {
        let active = app.sessions_active().await;
        if active == 0 {
            break;
        }
        assert!(
            left.elapsed() < RELEASE,
            "{active} sessions still held {:?} after the clients left",
            left.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_session_pool_answers_503_with_retry_after() {
    let app = crate::helpers::spawn_app_with(|c| {
        c.storage.max_sessions = 1;
        c.storage.session_wait_ms = 100;
    })
    .await;
    let (flow, _, _) = app.flow_with_grains(GRAINS, BIG).await;
    let held = start_read(&app, flow).await;
    assert_eq!(app.sessions_active().await, 1);

    // Reads and writes both need a session; neither waits longer than the pool allows.
    let refused = tokio::time::timeout(PATIENCE, app.read_grains(flow, "count=1", None))
        .await
        .expect("refused in time, not hanging");
    assert_eq!(refused.headers()[RETRY_AFTER], "1");
    let p = problem(refused, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(p["detail"].as_str().unwrap().contains("session"), "{p}");
    let refused = tokio::time::timeout(
        PATIENCE,
        app.get_grain(flow, &crate::helpers::ts(0).to_string(), None),
    )
    .await
    .expect("refused in time");
    assert!(refused.headers().contains_key(RETRY_AFTER));
    problem(refused, StatusCode::SERVICE_UNAVAILABLE).await;

    // Metadata needs no session.
    assert_eq!(app.get_flow(flow).await.status(), StatusCode::OK);

    // Reading the held stream to its end frees the session for the next client.
    let mut rest = held.bytes_stream();
    while let Some(chunk) = rest.next().await {
        chunk.expect("body");
    }
    drop(rest);
    eventually("the session is free again", || async {
        let response = app.read_grains(flow, "count=1", None).await;
        (response.status() == StatusCode::OK).then_some(())
    })
    .await;
}

/// A read that waits for a store session longer than `server.response_headers_timeout_ms`
/// (the pool's own wait being longer) is answered at the deadline with the timeout
/// problem, and its wait for a session ends with it: nothing is left holding one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_waiting_for_a_session_past_the_response_deadline_is_a_timeout_503() {
    const DEADLINE_MS: u64 = 600;
    let app = crate::helpers::spawn_app_with(|c| {
        c.storage.max_sessions = 1;
        c.storage.session_wait_ms = 20_000;
        c.server.response_headers_timeout_ms = DEADLINE_MS;
    })
    .await;
    let (flow, _, _) = app.flow_with_grains(GRAINS, BIG).await;
    let held = start_read(&app, flow).await;
    assert_eq!(app.sessions_active().await, 1);

    let started = Instant::now();
    let refused = tokio::time::timeout(PATIENCE, app.read_grains(flow, "count=1", None))
        .await
        .expect("answered at the deadline, not after the pool's wait");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(DEADLINE_MS),
        "answered after {waited:?}, before the deadline"
    );
    assert_eq!(refused.headers()[RETRY_AFTER], "1");
    let p = problem(refused, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(p["type"], "urn:grainstore:problem:timeout", "{p}");
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("server.response_headers_timeout_ms")
            && detail.contains(&DEADLINE_MS.to_string()),
        "{p}"
    );

    // The held read is untouched: it goes on to its end, and then its session is free
    // for the next read.
    let mut rest = held.bytes_stream();
    while let Some(chunk) = rest.next().await {
        chunk.expect("body");
    }
    drop(rest);
    eventually("the session is free again", || async {
        (app.sessions_active().await == 0).then_some(())
    })
    .await;
    let response = app.read_grains(flow, "count=1", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        crate::helpers::decode_gsf(response.bytes().await.expect("body")).len(),
        1
    );
}
