//! `/events`: the TAMS event types, filters, resumption within the retained window, and
//! resets when the window no longer holds what a client asks for.

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

/// The next event: (SSE event type, id, JSON data).
async fn next_event(sse: &mut Sse) -> (String, String, Value) {
    let event = sse
        .next()
        .await
        .expect("an event, not the end of the stream");
    let data = serde_json::from_str(&event.data).expect("event data is JSON");
    (event.event, event.id, data)
}

/// The next `n` events' types.
async fn types(sse: &mut Sse, n: usize) -> Vec<String> {
    let mut types = Vec::with_capacity(n);
    for _ in 0..n {
        types.push(next_event(sse).await.0);
    }
    types
}

async fn delete(server: &TestServer, path: &str) -> StatusCode {
    server
        .client
        .delete(server.url(path))
        .send()
        .await
        .expect("delete")
        .status()
}

#[tokio::test]
async fn every_event_type_appears() {
    let server = spawn_server(|_| {}).await;
    let mut events = server.events("", None).await;
    assert!(
        events
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"))
    );
    let (flow, source) = server.create_flow().await;
    let (ty, _, data) = next_event(&mut events).await;
    assert_eq!(ty, "sources/created");
    assert_eq!(data["event"]["id"], source.to_string());
    let (ty, first_id, data) = next_event(&mut events).await;
    assert_eq!(ty, "flows/created");
    assert_eq!(data["event_type"], "flows/created");
    assert!(data["event_timestamp"].is_string(), "{data}");
    assert_eq!(data["event"]["id"], flow.to_string());

    let response = server
        .client
        .put(server.url(&format!("/flows/{flow}")))
        .json(
            &json!({"source_id": source, "format": "urn:x-nmos:format:video", "label": "renamed"}),
        )
        .send()
        .await
        .expect("update flow");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (ty, _, data) = next_event(&mut events).await;
    assert_eq!(ty, "flows/updated");
    assert_eq!(data["event"]["label"], "renamed");

    server.post(flow, &frames(flow, source, 0..4, 16)).await;
    let (ty, _, data) = next_event(&mut events).await;
    assert_eq!(ty, "flows/grains_added");
    assert_eq!(data["event"]["flow_id"], flow.to_string());
    let range: grainstore::time::TimeRange = data["event"]["timerange"]
        .as_str()
        .expect("timerange")
        .parse()
        .expect("a timerange");
    for n in 0..4 {
        assert!(range.contains(frame_time(n)), "{data}");
    }

    let path = format!(
        "/flows/{flow}/grains?timerange=[{}_{}]",
        frame_time(1),
        frame_time(2)
    );
    assert_eq!(delete(&server, &path).await, StatusCode::OK);
    let (ty, _, data) = next_event(&mut events).await;
    assert_eq!(ty, "flows/grains_deleted");
    assert_eq!(data["event"]["flow_id"], flow.to_string());

    assert_eq!(
        delete(&server, &format!("/flows/{flow}")).await,
        StatusCode::NO_CONTENT
    );
    let (ty, last_id, data) = next_event(&mut events).await;
    assert_eq!(ty, "flows/deleted");
    assert_eq!(data["event"]["flow_id"], flow.to_string());

    // Ids are `EPOCH-SEQ`, increasing.
    let seq = |id: &str| -> (u64, u64) {
        let (e, s) = id.split_once('-').expect("EPOCH-SEQ");
        (e.parse().expect("epoch"), s.parse().expect("seq"))
    };
    assert_eq!(seq(&first_id).0, seq(&last_id).0);
    assert!(seq(&first_id).1 < seq(&last_id).1);
}

#[tokio::test]
async fn filters_by_flow_source_and_type() {
    let server = spawn_server(|_| {}).await;
    let (a, a_source) = server.create_flow().await;
    let mut by_flow = server.events(&format!("flow_id={a}"), None).await;
    let mut by_source = server.events(&format!("source_id={a_source}"), None).await;
    let mut by_type = server
        .events("event_type=flows/created,flows/deleted", None)
        .await;
    let (b, b_source) = server.create_flow().await;
    server.post(b, &frames(b, b_source, 0..2, 8)).await;
    server.post(a, &frames(a, a_source, 0..2, 8)).await;
    assert_eq!(
        delete(&server, &format!("/flows/{b}")).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        delete(&server, &format!("/flows/{a}")).await,
        StatusCode::NO_CONTENT
    );

    for (ty, _, data) in [
        next_event(&mut by_flow).await,
        next_event(&mut by_flow).await,
    ] {
        assert!(
            ["flows/grains_added", "flows/deleted"].contains(&ty.as_str()),
            "{ty}"
        );
        assert_eq!(data["event"]["flow_id"], a.to_string());
    }
    assert_eq!(
        types(&mut by_type, 3).await,
        ["flows/created", "flows/deleted", "flows/deleted"]
    );
    // A new flow of source a: its creation is the first event of that source since
    // the subscription.
    let c = Uuid::new_v4();
    let response = server
        .client
        .put(server.url(&format!("/flows/{c}")))
        .json(&json!({"source_id": a_source, "format": "urn:x-nmos:format:video"}))
        .send()
        .await
        .expect("put flow");
    assert_eq!(response.status(), StatusCode::CREATED);
    // Events of source a since the subscription: the grains written to flow a (grain
    // events carry their flow's source), then the creation of c.
    let (ty, _, data) = loop {
        let (ty, id, data) = next_event(&mut by_source).await;
        if ty == "flows/created" {
            break (ty, id, data);
        }
        assert!(
            [
                "flows/grains_added",
                "flows/grains_deleted",
                "flows/deleted"
            ]
            .contains(&ty.as_str()),
            "{ty}"
        );
        assert_eq!(data["event"]["flow_id"], a.to_string());
    };
    assert_eq!(ty, "flows/created");
    assert_eq!(data["event"]["id"], c.to_string());

    for query in [
        "event_type=flows/renamed",
        "event_type=flows/created,",
        "flow_id=not-a-uuid",
        "source_id=1",
        "flow=1",
    ] {
        let response = server
            .get(&format!("/events?{query}"), "text/event-stream")
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
    }
}

/// Creates `n` flows; returns the ids of the `flows/created` events seen on `events`.
async fn created(server: &TestServer, events: &mut Sse, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        server.create_flow().await;
        loop {
            let (ty, id, _) = next_event(events).await;
            if ty == "flows/created" {
                ids.push(id);
                break;
            }
        }
    }
    ids
}

#[tokio::test]
async fn resumes_by_last_event_id_and_after_without_gaps_or_repeats() {
    let server = spawn_server(|_| {}).await;
    let mut all = server.events("event_type=flows/created", None).await;
    let ids = created(&server, &mut all, 6).await;
    let mut by_header = server
        .events("event_type=flows/created", Some(&ids[1]))
        .await;
    let mut by_after = server
        .events(&format!("event_type=flows/created&after={}", ids[1]), None)
        .await;
    // Unfiltered: the sources/created events between them come too.
    let mut unfiltered = server.events("", Some(&ids[1])).await;
    let later = created(&server, &mut all, 2).await;
    let want: Vec<String> = ids[2..].iter().chain(&later).cloned().collect();
    for sse in [&mut by_header, &mut by_after] {
        let mut got = Vec::new();
        for _ in 0..want.len() {
            got.push(next_event(sse).await.1);
        }
        assert_eq!(got, want);
    }
    let mut got = Vec::new();
    while got.len() < want.len() {
        let (ty, id, _) = next_event(&mut unfiltered).await;
        if ty == "flows/created" {
            got.push(id);
        } else {
            assert_eq!(ty, "sources/created");
        }
    }
    assert_eq!(got, want);
    // Resuming at the newest id: nothing is replayed, new events come.
    let newest = later.last().expect("an id").clone();
    let mut at_newest = server.events("", Some(&newest)).await;
    let next = created(&server, &mut all, 1).await;
    let (ty, _, _) = next_event(&mut at_newest).await;
    assert_eq!(ty, "sources/created");
    assert_eq!(next_event(&mut at_newest).await.1, next[0]);
}

#[tokio::test]
async fn an_id_outside_the_window_gets_a_reset_then_live_events() {
    let server = spawn_server(|c| c.live.event_retention = 4).await;
    let mut all = server.events("event_type=flows/created", None).await;
    let ids = created(&server, &mut all, 4).await;
    let (epoch, seq) = ids[0].split_once('-').expect("EPOCH-SEQ");
    let epoch: u64 = epoch.parse().expect("epoch");
    let seq: u64 = seq.parse().expect("seq");
    let too_old = ids[0].clone();
    let other_epoch_before = format!("{}-{seq}", epoch - 1);
    let other_epoch_after = format!("{}-1", epoch + 1);
    let from_the_future = format!("{epoch}-{}", seq + 1000);
    for id in [
        too_old,
        other_epoch_before,
        other_epoch_after,
        from_the_future,
    ] {
        let mut sse = server.events("event_type=flows/created", Some(&id)).await;
        let (ty, _, data) = next_event(&mut sse).await;
        assert_eq!(ty, "reset", "{id}");
        assert!(data["detail"].is_string());
        // After the reset the stream goes on live.
        let next = created(&server, &mut all, 1).await;
        assert_eq!(
            next_event(&mut sse).await.1,
            next[0],
            "live after a reset from {id}"
        );
    }
    for id in ["12", "a-b", "1-2-3", "-1"] {
        let response = server
            .client
            .get(server.url("/events"))
            .header("accept", "text/event-stream")
            .header("last-event-id", id)
            .send()
            .await
            .expect("request");
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "Last-Event-ID {id:?}"
        );
        let response = server
            .get(&format!("/events?after={id}"), "text/event-stream")
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "after={id:?}");
    }
}
