//! Store sessions through HTTP: a response stream holds one, a client that goes away
//! releases it, and a full pool answers 503 with `Retry-After` instead of hanging.

use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;

use crate::helpers::{PATIENCE, TestApp, eventually, problem};

/// Grains of 256 KiB, 30 MiB in all: a read of them does not fit in socket buffers, so
/// the server is still sending when a client stops reading.
const BIG: usize = 256 << 10;
const GRAINS: u64 = 120;

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
    eventually("sessions released after the clients left", || async {
        (app.sessions_active().await == 0).then_some(())
    })
    .await;
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
