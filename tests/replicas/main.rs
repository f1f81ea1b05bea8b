//! Replicas over HTTP: two `Server`s with the postgres backend in one process, sharing
//! one PostgreSQL schema and one S3 bucket prefix. What is written through one replica
//! is read, streamed and reported through the other, and a client moves between them
//! with `Last-Event-ID` — after a disconnect or the graceful shutdown of its replica —
//! without missing or repeating anything. [`processes`] runs the replicas as
//! `grainstore serve` processes instead and kills one with SIGKILL mid-stream.
//!
//! The tests need `GRAINSTORE_TEST_POSTGRES_URL`, `GRAINSTORE_TEST_S3_ENDPOINT`,
//! `GRAINSTORE_TEST_S3_BUCKET`, `GRAINSTORE_TEST_S3_ACCESS_KEY` and
//! `GRAINSTORE_TEST_S3_SECRET_KEY`; `.ci/run` sets them. They are `#[ignore]`d so that a
//! plain `cargo test` reports them as not run.

mod cluster;
#[path = "../live/helpers.rs"]
#[allow(dead_code)]
mod helpers;
mod processes;

use std::time::Duration;

use grainstore::grain::Grain;
use grainstore::gsf::{GsfDecoder, GsfEvent};
use grainstore::time::TimeRange;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::cluster::replicas;
use crate::helpers::*;

/// Reads a flow's grains through `server` as GSF.
async fn read_gsf(server: &TestServer, flow: Uuid) -> Vec<Grain> {
    let response = server
        .get(&format!("/flows/{flow}/grains"), "application/x-gsf")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.bytes().await.expect("body");
    GsfDecoder::decode_all(body)
        .expect("a valid GSF body")
        .into_iter()
        .filter_map(|event| match event {
            GsfEvent::Grain { grain, .. } => Some(grain),
            _ => None,
        })
        .collect()
}

/// Reads a flow's grains through `server` as NDJSON.
async fn read_ndjson(server: &TestServer, flow: Uuid) -> Vec<Grain> {
    let response = server
        .get(&format!("/flows/{flow}/grains"), "application/x-ndjson")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.bytes().await.expect("body");
    body.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| Grain::from_json(line).expect("an NDJSON grain"))
        .collect()
}

/// The next event of an `/events` stream: (type, id, JSON data).
async fn next_event(sse: &mut Sse) -> (String, String, Value) {
    let event = sse
        .next()
        .await
        .expect("an event, not the end of the stream");
    let data = serde_json::from_str(&event.data).expect("event data is JSON");
    (event.event, event.id, data)
}

/// Reads `n` grain events and checks they are frames `first..first + n`, in order.
async fn expect_frames(sse: &mut Sse, written: &[Grain], first: u64, n: u64) -> String {
    let mut last = String::new();
    for k in first..first + n {
        let (id, got) = sse.next_grain().await;
        assert_eq!(
            id,
            frame_time(k).to_string(),
            "frame {k}: in order, none missed"
        );
        assert_same_grains(&[got], &written[k as usize..=k as usize]);
        last = id;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"]
async fn a_flow_and_grains_written_through_a_read_back_through_b() {
    let replicas = replicas().await;
    let (a, b) = (&replicas.a, &replicas.b);
    let (flow, source) = a.create_flow().await;

    let response = b.get(&format!("/flows/{flow}"), "application/json").await;
    assert_eq!(response.status(), StatusCode::OK, "the flow PUT through A");
    let got: Value = response.json().await.expect("flow JSON");
    assert_eq!(got["id"], flow.to_string());
    assert_eq!(got["source_id"], source.to_string());
    assert_eq!(got["label"], "live test");
    let response = b
        .get(&format!("/sources/{source}"), "application/json")
        .await;
    assert_eq!(response.status(), StatusCode::OK, "the flow's source");

    // Small payloads stay in PostgreSQL, large ones go to S3 objects.
    let mut written = frames(flow, source, 0..6, 300);
    written.extend(frames(flow, source, 6..12, 100_000));
    a.post(flow, &written[..4]).await;
    a.post(flow, &written[4..]).await;

    assert_same_grains(&read_gsf(b, flow).await, &written);
    assert_same_grains(&read_ndjson(b, flow).await, &written);

    // An update through B is seen by A.
    let response = b
        .client
        .put(b.url(&format!("/flows/{flow}")))
        .json(&json!({"source_id": source, "format": "urn:x-nmos:format:video", "label": "via B"}))
        .send()
        .await
        .expect("update flow");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let got: Value = a
        .get(&format!("/flows/{flow}"), "application/json")
        .await
        .json()
        .await
        .expect("flow JSON");
    assert_eq!(got["label"], "via B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"]
async fn an_sse_subscriber_on_b_gets_grains_written_through_a_in_order_once() {
    let replicas = replicas().await;
    let (a, b) = (&replicas.a, &replicas.b);
    let (flow, source) = a.create_flow().await;
    let written = frames(flow, source, 0..41, 20_000);

    let mut sse = b.subscribe(flow, "", None).await;
    assert_eq!(sse.status, StatusCode::OK);
    for batch in written[..30].chunks(10) {
        a.post(flow, batch).await;
    }
    // Writes through both replicas, one after the other.
    a.post(flow, &written[30..35]).await;
    b.post(flow, &written[35..40]).await;
    expect_frames(&mut sse, &written, 0, 40).await;
    // Nothing twice: the next event is the next grain written.
    assert!(
        sse.next_within(Duration::from_millis(500)).await.is_err(),
        "no event after the last grain"
    );
    a.post(flow, &written[40..]).await;
    expect_frames(&mut sse, &written, 40, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"]
async fn a_subscriber_resumes_on_a_where_it_left_b() {
    let replicas = replicas().await;
    let (a, b) = (&replicas.a, &replicas.b);
    let (flow, source) = a.create_flow().await;
    let written = frames(flow, source, 0..21, 2000);

    let mut sse = b.subscribe(flow, "", None).await;
    a.post(flow, &written[..10]).await;
    let last = expect_frames(&mut sse, &written, 0, 4).await;
    drop(sse);
    // Written while the client is away.
    a.post(flow, &written[10..20]).await;

    let mut sse = a.subscribe(flow, "", Some(&last)).await;
    assert_eq!(sse.status, StatusCode::OK);
    expect_frames(&mut sse, &written, 4, 16).await;
    assert!(
        sse.next_within(Duration::from_millis(500)).await.is_err(),
        "no event after the last grain"
    );
    b.post(flow, &written[20..]).await;
    expect_frames(&mut sse, &written, 20, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"]
async fn events_on_b_report_a_and_resume_on_a() {
    let replicas = replicas().await;
    let (a, b) = (&replicas.a, &replicas.b);
    let mut events = b.events("", None).await;
    assert_eq!(events.status, StatusCode::OK);
    let (flow, source) = a.create_flow().await;
    let (ty, _, data) = next_event(&mut events).await;
    assert_eq!(ty, "sources/created");
    assert_eq!(data["event"]["id"], source.to_string());
    let (ty, created_id, data) = next_event(&mut events).await;
    assert_eq!(ty, "flows/created");
    assert_eq!(data["event"]["id"], flow.to_string());

    a.post(flow, &frames(flow, source, 0..4, 100)).await;
    let (ty, added_id, data) = next_event(&mut events).await;
    assert_eq!(ty, "flows/grains_added");
    assert_eq!(data["event"]["flow_id"], flow.to_string());
    let range: TimeRange = data["event"]["timerange"]
        .as_str()
        .expect("timerange")
        .parse()
        .expect("a timerange");
    for n in 0..4 {
        assert!(range.contains(frame_time(n)), "{data}");
    }
    drop(events);

    // While the client is away: more grains, and a change to the flow.
    a.post(flow, &frames(flow, source, 4..8, 100)).await;
    let response = a
        .client
        .put(a.url(&format!("/flows/{flow}")))
        .json(
            &json!({"source_id": source, "format": "urn:x-nmos:format:video", "label": "renamed"}),
        )
        .send()
        .await
        .expect("update flow");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    // Resumed on A after B's `flows/created`: the same next event under the same id,
    // then the rest.
    let mut events = a.events("", Some(&created_id)).await;
    assert_eq!(events.status, StatusCode::OK);
    let (ty, id, data) = next_event(&mut events).await;
    assert_eq!(
        (ty.as_str(), id.as_str()),
        ("flows/grains_added", added_id.as_str())
    );
    assert_eq!(data["event"]["flow_id"], flow.to_string());
    let (ty, _, data) = next_event(&mut events).await;
    assert_eq!(ty, "flows/grains_added");
    let range: TimeRange = data["event"]["timerange"]
        .as_str()
        .expect("timerange")
        .parse()
        .expect("a timerange");
    for n in 4..8 {
        assert!(range.contains(frame_time(n)), "{data}");
    }
    assert!(!range.contains(frame_time(3)), "{data}");
    let (ty, _, data) = next_event(&mut events).await;
    assert_eq!(ty, "flows/updated");
    assert_eq!(data["event"]["label"], "renamed");
    assert!(
        events
            .next_within(Duration::from_millis(500))
            .await
            .is_err(),
        "nothing twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"]
async fn a_subscriber_of_a_replica_shut_down_mid_stream_resumes_on_the_other() {
    let mut replicas = replicas().await;
    let (flow, source) = replicas.b.create_flow().await;
    const GRAINS: u64 = 60;
    let written = frames(flow, source, 0..GRAINS, 20_000);

    let mut sse = replicas.a.subscribe(flow, "", None).await;
    assert_eq!(sse.status, StatusCode::OK);
    // Grains keep coming through B, one a POST, while A shuts down.
    let writer = {
        let (b, written) = (replicas.b.client.clone(), written.clone());
        let url = replicas.b.url(&format!("/flows/{flow}/grains"));
        tokio::spawn(async move {
            for grain in &written {
                let mut body = Vec::new();
                grain.write_json(true, &mut body);
                body.push(b'\n');
                let response = b
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .expect("post grain");
                assert!(response.status().is_success(), "{}", response.status());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut last = expect_frames(&mut sse, &written, 0, 10).await;
    let mut next = 10;

    let stopped = tokio::spawn(replicas.a.shutdown());
    loop {
        let event = sse.next().await.expect("a shutdown event, not a cut");
        if event.event == "shutdown" {
            assert!(event.data.contains("Last-Event-ID"), "{}", event.data);
            break;
        }
        assert_eq!(event.event, "grain");
        assert_eq!(
            event.id,
            frame_time(next).to_string(),
            "in order, none missed"
        );
        last = event.id;
        next += 1;
    }
    assert!(
        sse.next().await.is_none(),
        "the stream ends after `shutdown`"
    );
    let took = stopped.await.expect("A's run future");
    assert!(
        took < Duration::from_secs(5),
        "A stopped at its deadline: {took:?}"
    );
    assert!(next < GRAINS, "A's stream ended before the writer did");

    let mut sse = replicas.b.subscribe(flow, "", Some(&last)).await;
    assert_eq!(sse.status, StatusCode::OK);
    expect_frames(&mut sse, &written, next, GRAINS - next).await;
    writer.await.expect("writer");
    assert!(
        sse.next_within(Duration::from_millis(500)).await.is_err(),
        "nothing twice"
    );
}

/// A feed cancelled while it opens a read session (its client gone as A's commit wakes
/// it) must not give its connection back to B's pool inside a read-only transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT (set by .ci/run)"]
async fn subscribers_leaving_while_their_feeds_wake_leave_b_able_to_write() {
    let replicas = replicas().await;
    let (a, b) = (&replicas.a, &replicas.b);
    let (flow, source) = a.create_flow().await;
    const ROUNDS: u64 = 10;
    const SUBSCRIBERS: usize = 8;
    let written = frames(flow, source, 0..2 * ROUNDS, 2000);
    for round in 0..ROUNDS as usize {
        // Subscribers on B whose feeds A's commit wakes, gone as it does.
        let mut streams = Vec::with_capacity(SUBSCRIBERS);
        for _ in 0..SUBSCRIBERS {
            streams.push(b.subscribe(flow, "", None).await);
        }
        a.post(flow, &written[2 * round..2 * round + 1]).await;
        drop(streams);
        // Every pooled connection B writes on is out of any read transaction.
        b.post(flow, &written[2 * round + 1..2 * round + 2]).await;
    }
    assert_same_grains(&read_gsf(b, flow).await, &written);
}
