//! SSE subscriptions to a flow's grains: the event form, headers, payload modes, start
//! points, backfill, flow deletion and keep-alives.

use std::time::Duration;

use grainstore::grain::Grain;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn headers_come_at_once_and_grains_carry_id_and_json_form() {
    let server = spawn_server(|_| {}).await;
    let (flow, source) = server.create_flow().await;
    // The flow is idle: `subscribe` returning at all means the headers came before any
    // grain was written.
    let mut sse = server.subscribe(flow, "", None).await;
    assert_eq!(sse.status, StatusCode::OK);
    let header = |name: &str| {
        sse.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert!(header("content-type").starts_with("text/event-stream"));
    assert_eq!(header("cache-control"), "no-cache");
    assert_eq!(header("x-accel-buffering"), "no");
    assert_eq!(
        header("content-encoding"),
        "",
        "event streams are not compressed"
    );

    let written = frames(flow, source, 0..3, 100);
    server.post(flow, &written).await;
    let mut got = Vec::new();
    for want in &written {
        let (id, grain) = sse.next_grain().await;
        assert_eq!(
            id,
            want.origin_timestamp().to_string(),
            "id is the origin timestamp"
        );
        got.push(grain);
    }
    assert_same_grains(&got, &written);
}

#[tokio::test]
async fn retry_is_the_first_field() {
    let server = spawn_server(|c| c.live.retry_ms = 2500).await;
    let (flow, _) = server.create_flow().await;
    let response = server
        .get(&format!("/flows/{flow}/grains"), "text/event-stream")
        .await;
    let text = read_raw_until(response, |t| t.contains("\n\n")).await;
    let first = text.lines().next().unwrap_or("");
    assert_eq!(first, "retry: 2500", "stream starts with: {text:?}");
}

#[tokio::test]
async fn idle_streams_get_keepalive_comments() {
    let server = spawn_server(|c| c.live.keepalive_secs = 1).await;
    let (flow, _) = server.create_flow().await;
    for path in [format!("/flows/{flow}/grains"), "/events".to_owned()] {
        let response = server.get(&path, "text/event-stream").await;
        // The greeting carries one comment; a keep-alive is another.
        let text = read_raw_until(response, |t| {
            t.lines().filter(|l| l.starts_with(':')).count() >= 2
        })
        .await;
        assert!(text.starts_with("retry:"), "{path}: {text:?}");
    }
}

/// The JSON data of the next grain event, and its id.
async fn next_grain_json(sse: &mut Sse) -> (String, Value) {
    let (id, data) = sse.next_of("grain").await;
    (id, data)
}

#[tokio::test]
async fn payload_modes_inline_url_and_none() {
    let server = spawn_server(|c| c.live.inline_max_bytes = 1024).await;
    let (flow, source) = server.create_flow().await;
    let small = grain(flow, source, frame_time(0), 1024);
    let large = grain(flow, source, frame_time(1), 1025);
    let mut inline = server.subscribe(flow, "", None).await;
    let mut explicit_inline = server.subscribe(flow, "payload=inline", None).await;
    let mut url = server.subscribe(flow, "payload=url", None).await;
    let mut none = server.subscribe(flow, "payload=none", None).await;
    server.post(flow, &[small.clone(), large.clone()]).await;

    for sse in [&mut inline, &mut explicit_inline] {
        // Up to the limit: inline.
        let (_, data) = next_grain_json(sse).await;
        assert!(data.get("data_url").is_none(), "{data}");
        let got = Grain::from_json(data.to_string().as_bytes()).expect("grain");
        assert_same_grains(&[got], std::slice::from_ref(&small));
        // Over it: a URL that serves the raw payload.
        let (_, data) = next_grain_json(sse).await;
        assert!(data.get("data").is_none(), "{data}");
        let data_url = data["data_url"].as_str().expect("data_url");
        assert_eq!(
            data_url,
            format!("/flows/{flow}/grains/{}", large.origin_timestamp())
        );
        let response = server.get(data_url, "application/octet-stream").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.bytes().await.expect("payload"), large.payload());
        let meta = Grain::from_json(data.to_string().as_bytes()).expect("grain meta");
        assert_eq!(meta.origin_timestamp(), large.origin_timestamp());
    }

    for want in [&small, &large] {
        let (_, data) = next_grain_json(&mut url).await;
        assert!(data.get("data").is_none(), "{data}");
        let data_url = data["data_url"].as_str().expect("data_url");
        let response = server.get(data_url, "application/octet-stream").await;
        assert_eq!(response.bytes().await.expect("payload"), want.payload());
    }

    for want in [&small, &large] {
        let (id, data) = next_grain_json(&mut none).await;
        assert_eq!(id, want.origin_timestamp().to_string());
        assert!(data.get("data").is_none(), "{data}");
        assert!(data.get("data_url").is_none(), "{data}");
        let got = Grain::from_json(data.to_string().as_bytes()).expect("grain meta");
        let mut header = got.header().clone();
        header.creation_timestamp = None;
        assert_eq!(&header, want.header(), "every header field but the payload");
    }

    let bad = server
        .get(
            &format!("/flows/{flow}/grains?payload=some"),
            "text/event-stream",
        )
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn start_points() {
    let server = spawn_server(|_| {}).await;
    let (flow, source) = server.create_flow().await;
    let written = frames(flow, source, 0..8, 64);
    server.post(flow, &written[..5]).await;
    let at = |n: u64| frame_time(n).to_string();

    let mut from_now = server.subscribe(flow, "", None).await;
    let mut by_header = server.subscribe(flow, "", Some(&at(2))).await;
    let mut by_after = server
        .subscribe(flow, &format!("after={}", at(2)), None)
        .await;
    let mut by_from = server
        .subscribe(flow, &format!("from={}", at(2)), None)
        .await;
    // The header wins over `after` and `from`: it is what a reconnecting client sends.
    let mut header_over_from = server
        .subscribe(flow, &format!("from={}", at(0)), Some(&at(3)))
        .await;
    // A position between grains.
    let between = ts(1000, 40_000_000 * 2 + 1).to_string();
    let mut by_between = server
        .subscribe(flow, &format!("from={between}"), None)
        .await;
    let mut from_earliest = server.subscribe(flow, "from=earliest", None).await;
    server.post(flow, &written[5..]).await;

    let cases: [(&str, &mut Sse, u64); 7] = [
        ("live from now", &mut from_now, 5),
        ("Last-Event-ID", &mut by_header, 3),
        ("after (exclusive)", &mut by_after, 3),
        ("from (inclusive)", &mut by_from, 2),
        ("Last-Event-ID over from", &mut header_over_from, 4),
        ("from between grains", &mut by_between, 3),
        ("from the first grain", &mut from_earliest, 0),
    ];
    for (name, sse, first) in cases {
        let mut got = Vec::new();
        for _ in first..8 {
            got.push(sse.next_grain().await.1);
        }
        let want = &written[first as usize..];
        let got_ts: Vec<_> = got.iter().map(Grain::origin_timestamp).collect();
        let want_ts: Vec<_> = want.iter().map(Grain::origin_timestamp).collect();
        assert_eq!(got_ts, want_ts, "{name}");
        assert_same_grains(&got, want);
    }

    let status = |path: String, last: Option<&'static str>| {
        let server = &server;
        async move {
            let mut request = server
                .client
                .get(server.url(&path))
                .header("accept", "text/event-stream");
            if let Some(last) = last {
                request = request.header("last-event-id", last);
            }
            request.send().await.expect("request").status()
        }
    };
    let grains = format!("/flows/{flow}/grains");
    for (path, last) in [
        (format!("{grains}?after=1:0&from=1:0"), None),
        (format!("{grains}?after=yesterday"), None),
        (format!("{grains}?from=1:0000000000"), None),
        (format!("{grains}?from=latest"), None),
        (format!("{grains}?after=earliest"), None),
        (grains.clone(), Some("not-a-timestamp")),
        (format!("{grains}?timerange=_"), None),
        (format!("{grains}?follow=true"), None),
        (format!("{grains}?count=3"), None),
    ] {
        assert_eq!(
            status(path.clone(), last).await,
            StatusCode::BAD_REQUEST,
            "{path} {last:?}"
        );
    }
    let unknown = uuid::Uuid::new_v4();
    for (path, last) in [
        (format!("/flows/{unknown}/grains"), None),
        (format!("/flows/{unknown}/grains?from=1:0"), None),
        (format!("/flows/{unknown}/grains"), Some("1:0")),
    ] {
        assert_eq!(
            status(path.clone(), last).await,
            StatusCode::NOT_FOUND,
            "{path} {last:?}"
        );
    }
}

#[tokio::test]
async fn live_from_now_on_an_empty_flow_gets_the_first_grain() {
    let server = spawn_server(|_| {}).await;
    let (flow, source) = server.create_flow().await;
    let mut sse = server.subscribe(flow, "", None).await;
    // Earlier than anything: an empty flow has no position yet.
    let first = grain(flow, source, ts(-5, 0), 8);
    server.post(flow, std::slice::from_ref(&first)).await;
    assert_same_grains(&[sse.next_grain().await.1], &[first]);
}

#[tokio::test]
async fn backfill_is_not_pushed_live_but_reported_on_events() {
    let server = spawn_server(|_| {}).await;
    let (flow, source) = server.create_flow().await;
    server.post(flow, &frames(flow, source, 0..5, 32)).await;
    let mut sse = server.subscribe(flow, "", None).await;
    let mut events = server
        .events(
            &format!("flow_id={flow}&event_type=flows/grains_added"),
            None,
        )
        .await;

    let ten = grain(flow, source, frame_time(10), 32);
    server.post(flow, std::slice::from_ref(&ten)).await;
    assert_same_grains(&[sse.next_grain().await.1], std::slice::from_ref(&ten));
    let (_, added) = events.next_of("flows/grains_added").await;
    assert!(added_range(&added).contains(frame_time(10)), "{added}");

    // Earlier than the subscriber's position: stored, reported, not pushed.
    let seven = grain(flow, source, frame_time(7), 32);
    server.post(flow, std::slice::from_ref(&seven)).await;
    let (_, added) = events.next_of("flows/grains_added").await;
    let range = added_range(&added);
    assert!(range.contains(frame_time(7)), "{added}");
    assert!(!range.contains(frame_time(10)), "{added}");
    // The next event of the subscription is the next grain after its position: seven
    // was skipped, not delayed.
    let eleven = grain(flow, source, frame_time(11), 32);
    server.post(flow, std::slice::from_ref(&eleven)).await;
    assert_same_grains(&[sse.next_grain().await.1], &[eleven]);
    // And it is stored: a resumption from before it gets it.
    let mut replay = server
        .subscribe(flow, &format!("after={}", frame_time(4)), None)
        .await;
    assert_eq!(replay.next_grain().await.0, frame_time(7).to_string());
}

/// The timerange of a `flows/grains_added` event.
fn added_range(event: &Value) -> grainstore::time::TimeRange {
    event["event"]["timerange"]
        .as_str()
        .expect("timerange")
        .parse()
        .expect("a timerange")
}

#[tokio::test]
async fn flow_deletion_ends_streams() {
    let server = spawn_server(|_| {}).await;
    let (flow, source) = server.create_flow().await;
    let mut live = server.subscribe(flow, "", None).await;
    let mut replay = server.subscribe(flow, "from=0:0", None).await;
    server.post(flow, &frames(flow, source, 0..2, 16)).await;
    for sse in [&mut live, &mut replay] {
        sse.next_grain().await;
        sse.next_grain().await;
    }
    let response = server
        .client
        .delete(server.url(&format!("/flows/{flow}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    for sse in [&mut live, &mut replay] {
        let (_, data) = sse.next_of("flow_deleted").await;
        assert_eq!(data["flow_id"], flow.to_string());
        assert!(
            sse.next().await.is_none(),
            "the stream ends after flow_deleted"
        );
    }
}

#[tokio::test]
async fn a_subscription_outlives_the_idle_timeouts() {
    let server = spawn_server(|c| {
        c.server.response_headers_timeout_ms = 300;
        c.server.body_idle_timeout_ms = 300;
        c.server.send_stall_timeout_ms = 300;
    })
    .await;
    let (flow, source) = server.create_flow().await;
    let mut sse = server.subscribe(flow, "", None).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let g = grain(flow, source, frame_time(0), 16);
    server.post(flow, std::slice::from_ref(&g)).await;
    assert_same_grains(&[sse.next_grain().await.1], &[g]);
}
