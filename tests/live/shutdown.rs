//! Graceful shutdown with live streams open: every SSE stream gets `event: shutdown` and
//! ends, follow reads end, and the server stops within its deadline.

use std::time::Duration;

use futures::StreamExt;
use futures::future::join_all;
use reqwest::StatusCode;

use crate::helpers::*;

/// Open file descriptors needed: client and server ends of every connection live in
/// this process.
fn ensure_fd_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(
        limit.rlim_cur >= wanted,
        "need {wanted} file descriptors, the hard limit is {}",
        limit.rlim_max
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_get_shutdown_and_the_server_stops_in_time() {
    const SUBSCRIBERS: usize = 1000;
    const EVENT_STREAMS: usize = 20;
    ensure_fd_limit(2 * (SUBSCRIBERS + EVENT_STREAMS) as u64 + 512);
    let mut server = spawn_server(|_| {}).await;
    let deadline = Duration::from_millis(server.state.config.server.shutdown_deadline_ms);
    let (flow, source) = server.create_flow().await;

    let opened = join_all((0..SUBSCRIBERS).map(|_| server.subscribe(flow, "", None))).await;
    let mut events = join_all((0..EVENT_STREAMS).map(|_| server.events("", None))).await;
    let mut streams: Vec<Sse> = opened;
    for sse in &streams {
        assert_eq!(sse.status, StatusCode::OK);
    }
    // Every subscription is live: each gets the next grain.
    let g = grain(flow, source, frame_time(0), 16);
    server.post(flow, std::slice::from_ref(&g)).await;
    let g = &g;
    join_all(streams.iter_mut().map(|sse| async move {
        assert_same_grains(&[sse.next_grain().await.1], std::slice::from_ref(g));
    }))
    .await;
    for sse in &mut events {
        assert_eq!(
            sse.next().await.expect("grains_added").event,
            "flows/grains_added"
        );
    }

    let stopped = tokio::spawn(server.shutdown());
    streams.extend(events);
    let ends = join_all(streams.iter_mut().map(|sse| async move {
        let last = sse.next().await.expect("a shutdown event, not a cut");
        let after = sse.next().await;
        (last.event, last.data, after.is_none())
    }))
    .await;
    for (event, data, ended) in ends {
        assert_eq!(event, "shutdown", "{data}");
        assert!(data.contains("Last-Event-ID"), "{data}");
        assert!(ended, "the stream ends after the shutdown event");
    }
    let took = stopped.await.expect("shutdown");
    println!(
        "graceful shutdown with {SUBSCRIBERS} SSE subscribers and {EVENT_STREAMS} /events streams: {took:?} (deadline {deadline:?})"
    );
    assert!(
        took < deadline,
        "the server stopped only at its deadline: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_replaying_a_backlog_ends_at_shutdown_with_a_resumable_position() {
    let mut server = spawn_server(|c| c.server.shutdown_deadline_ms = 5000).await;
    let (flow, source) = server.create_flow().await;
    // 32 MB of stored grains: more than the socket buffers hold while the client waits.
    const GRAINS: u64 = 2000;
    let written = frames(flow, source, 0..GRAINS, 16 << 10);
    for batch in written.chunks(100) {
        server.post(flow, batch).await;
    }
    let mut sse = server.subscribe(flow, "from=0:0", None).await;
    let (mut last, _) = sse.next_grain().await;
    let stopped = tokio::spawn(server.shutdown());
    // The client reads on only once the service is shutting down, so the feed is
    // still in the middle of the backlog when it learns of it.
    tokio::time::timeout(PATIENCE, server.state.shutdown.cancelled())
        .await
        .expect("shutdown begins");
    let mut received = 1;
    loop {
        let event = sse.next().await.expect("a shutdown event, not a cut");
        if event.event == "shutdown" {
            break;
        }
        assert_eq!(event.event, "grain");
        assert_eq!(
            event.id,
            frame_time(received).to_string(),
            "in order, none missed"
        );
        last = event.id;
        received += 1;
    }
    assert!(sse.next().await.is_none());
    assert!(
        received < GRAINS,
        "the stream should end at shutdown, not after replaying all {GRAINS} grains"
    );
    let took = stopped.await.expect("shutdown");
    println!(
        "a replaying stream ended at shutdown after {received} grains; server stopped in {took:?}"
    );
    assert!(
        took < Duration::from_millis(5000),
        "stopped only at the deadline: {took:?}"
    );
    assert_eq!(last, frame_time(received - 1).to_string());
}

#[tokio::test]
async fn follow_reads_end_at_shutdown() {
    let mut server = spawn_server(|_| {}).await;
    let deadline = Duration::from_millis(server.state.config.server.shutdown_deadline_ms);
    let (flow, source) = server.create_flow().await;
    server.post(flow, &frames(flow, source, 0..2, 16)).await;
    let response = server
        .get(
            &format!("/flows/{flow}/grains?follow=true"),
            "application/x-ndjson",
        )
        .await;
    let mut body = response.bytes_stream();
    let mut text = Vec::new();
    while text.iter().filter(|&&b| b == b'\n').count() < 2 {
        text.extend_from_slice(&body.next().await.expect("a chunk").expect("bytes"));
    }
    let stopped = tokio::spawn(server.shutdown());
    let end = tokio::time::timeout(PATIENCE, async {
        while let Some(chunk) = body.next().await {
            assert!(chunk.expect("a clean end").is_empty());
        }
    })
    .await;
    assert!(end.is_ok(), "the follow body ends at shutdown");
    let took = stopped.await.expect("shutdown");
    assert!(took < deadline, "stopped only at the deadline: {took:?}");
}
