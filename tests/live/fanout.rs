//! The per-flow fan-out: one reader per flow for all its SSE subscribers, whatever their
//! payload mode; subscribers that fall behind its ring of recent grains catch up from
//! the store without a gap or a repeat; it stops with its last subscriber.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use grainstore::grain::Grain;
use serde_json::Value;

use crate::helpers::*;

/// Waits until `running()` fan-outs are `want`; panics after [`PATIENCE`].
async fn wait_running(server: &TestServer, want: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.state.fanouts.count() != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fan-outs running: {}, expected {want}",
            server.state.fanouts.count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_of_every_payload_mode_share_one_fanout_and_get_every_grain() {
    const SUBSCRIBERS: usize = 60;
    const GRAINS: u64 = 300;
    let server = Arc::new(spawn_server(|c| c.live.inline_max_bytes = 100).await);
    let (flow, source) = server.create_flow().await;
    let (other, other_source) = server.create_flow().await;
    let modes = ["", "payload=url", "payload=none"];
    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        subscribers.push((i % 3, server.subscribe(flow, modes[i % 3], None).await));
    }
    let mut elsewhere = server.subscribe(other, "", None).await;
    // One fan-out per flow with subscribers, not one per subscriber.
    wait_running(&server, 2).await;

    // Payloads on both sides of the inline limit (100 bytes).
    let written: Vec<Grain> = (0..GRAINS)
        .map(|n| {
            grain(
                flow,
                source,
                frame_time(n),
                if n % 2 == 0 { 64 } else { 512 },
            )
        })
        .collect();
    for batch in written.chunks(7) {
        server.post(flow, batch).await;
    }
    let other_grain = grain(other, other_source, frame_time(0), 8);
    server.post(other, std::slice::from_ref(&other_grain)).await;

    let checks = subscribers.into_iter().map(|(mode, mut sse)| {
        let written = written.clone();
        tokio::spawn(async move {
            for want in &written {
                let event = sse.next().await.expect("a grain event");
                assert_eq!(event.event, "grain");
                assert_eq!(event.id, want.origin_timestamp().to_string());
                let json: Value = serde_json::from_str(&event.data).expect("JSON");
                let url = format!(
                    "/flows/{}/grains/{}",
                    want.flow_id(),
                    want.origin_timestamp()
                );
                let inline = mode == 0 && want.payload().len() <= 100;
                assert_eq!(json.get("data").is_some(), inline, "mode {mode}: {json}");
                let want_url = mode == 1 || (mode == 0 && !inline);
                assert_eq!(
                    json.get("data_url").and_then(Value::as_str),
                    want_url.then_some(url.as_str()),
                    "mode {mode}: {json}"
                );
                if inline {
                    let got = Grain::from_json(event.data.as_bytes()).expect("grain JSON");
                    assert_same_grains(&[got], std::slice::from_ref(want));
                }
            }
        })
    });
    for check in join_all(checks).await {
        check.expect("subscriber");
    }
    // The flow's subscribers have gone, and its fan-out with them; the other stays.
    wait_running(&server, 1).await;
    assert_same_grains(&[elsewhere.next_grain().await.1], &[other_grain]);
    drop(elsewhere);
    wait_running(&server, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_behind_the_ring_catch_up_from_the_store_exactly() {
    // A ring of two grains: any subscriber that is not reading at once falls behind it.
    let server = Arc::new(spawn_server(|c| c.live.fanout_capacity = 2).await);
    let (flow, source) = server.create_flow().await;
    let mut prompt = server.subscribe(flow, "payload=none", None).await;
    let mut stalled = server.subscribe(flow, "", None).await;
    const GRAINS: u64 = 600;
    let written = frames(flow, source, 0..GRAINS, 4 << 10);
    let writer = {
        let server = server.clone();
        let written = written.clone();
        tokio::spawn(async move {
            for batch in written.chunks(3) {
                server.post(flow, batch).await;
            }
        })
    };
    let mut got = Vec::new();
    for n in 0..GRAINS {
        let (id, _) = prompt.next_grain().await;
        assert_eq!(id, frame_time(n).to_string());
        // Read the stalled one in bursts, so it lags behind the ring again and again.
        if n % 150 == 149 {
            for _ in 0..100 {
                got.push(stalled.next_grain().await.1);
            }
        }
    }
    writer.await.expect("writer");
    while got.len() < GRAINS as usize {
        got.push(stalled.next_grain().await.1);
    }
    assert_same_grains(&got, &written);
    // Both are live again: the next grain reaches them once.
    let next = grain(flow, source, frame_time(GRAINS), 8);
    server.post(flow, std::slice::from_ref(&next)).await;
    assert_eq!(prompt.next_grain().await.0, frame_time(GRAINS).to_string());
    assert_same_grains(&[stalled.next_grain().await.1], &[next]);
    assert!(
        stalled
            .next_within(Duration::from_millis(200))
            .await
            .is_err(),
        "nothing after the last grain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanout_restarts_for_a_flow_subscribed_again() {
    let server = spawn_server(|_| {}).await;
    let (flow, source) = server.create_flow().await;
    for round in 0..3u64 {
        let mut sse = server.subscribe(flow, "", None).await;
        wait_running(&server, 1).await;
        let g = grain(flow, source, frame_time(round), 16);
        server.post(flow, std::slice::from_ref(&g)).await;
        assert_same_grains(&[sse.next_grain().await.1], &[g]);
        drop(sse);
        wait_running(&server, 0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stays_behind_is_closed_and_resumes_exactly() {
    let server = Arc::new(
        spawn_server(|c| {
            c.live.fanout_capacity = 2;
            c.live.max_lag_secs = 1;
        })
        .await,
    );
    let (flow, source) = server.create_flow().await;
    let mut slow = server.subscribe(flow, "", None).await;
    // 2,400 events of ~11 KB: far more than the socket buffers hold, written faster
    // than the subscriber below reads them.
    const GRAINS: u64 = 2400;
    let written = frames(flow, source, 0..GRAINS, 8 << 10);
    let writer = {
        let server = server.clone();
        let written = written.clone();
        tokio::spawn(async move {
            for batch in written.chunks(40) {
                server.post(flow, batch).await;
            }
        })
    };
    let mut got = Vec::new();
    while let Some(event) = slow
        .next_within(PATIENCE)
        .await
        .expect("an event or the end in time")
    {
        assert_eq!(event.event, "grain");
        got.push(event.id);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer.await.expect("writer");
    assert!(
        got.len() < GRAINS as usize,
        "the slow subscriber was never closed ({} events)",
        got.len()
    );
    // Resuming from the last event received gets the rest, once each, in order.
    let last = got.last().expect("some events before the close").clone();
    let mut resumed = server.subscribe(flow, "", Some(&last)).await;
    while got.len() < GRAINS as usize {
        got.push(resumed.next_grain().await.0);
    }
    let want: Vec<String> = written
        .iter()
        .map(|g| g.origin_timestamp().to_string())
        .collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grain_committed_right_after_subscribing_reaches_every_new_fanout() {
    // Many flows at once, each with a fresh fan-out and a grain written as soon as its
    // subscriber has its response headers: the fan-out's start must not land after it.
    const FLOWS: usize = 100;
    let server = Arc::new(spawn_server(|_| {}).await);
    let runs = (0..FLOWS).map(|_| {
        let server = server.clone();
        tokio::spawn(async move {
            let (flow, source) = server.create_flow().await;
            let mut sse = server.subscribe(flow, "", None).await;
            let g = grain(flow, source, frame_time(0), 16);
            server.post(flow, std::slice::from_ref(&g)).await;
            assert_same_grains(&[sse.next_grain().await.1], &[g]);
        })
    });
    for run in join_all(runs).await {
        run.expect("flow");
    }
}
