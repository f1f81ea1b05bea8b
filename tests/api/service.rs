//! The service's own endpoints: `/`, `/healthz`, `/readyz`, `/metrics`, `/openapi.yaml`.

use reqwest::StatusCode;

use crate::helpers::{content_type, decode_gsf, grains, gsf, json_body, metric, spawn_app, ts};

#[tokio::test]
async fn root_names_the_service_and_its_backend() {
    let app = spawn_app().await;
    let info = json_body(app.get("/").await, StatusCode::OK).await;
    assert_eq!(info["name"], "grainstore");
    assert_eq!(info["storage_backend"], "embedded");
    assert!(info["version"].is_string(), "{info}");
    assert!(info["api_version"].is_string(), "{info}");
}

#[tokio::test]
async fn health_and_readiness_answer_ok() {
    let app = spawn_app().await;
    let health = json_body(app.get("/healthz").await, StatusCode::OK).await;
    assert_eq!(health["status"], "ok");
    let ready = json_body(app.get("/readyz").await, StatusCode::OK).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["storage_backend"], "embedded");
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_the_session_gauge() {
    let app = spawn_app().await;
    app.get("/healthz").await;
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(content_type(&response), "text/plain");
    let text = response.text().await.expect("text");
    assert!(
        text.contains("# TYPE grainstore_store_sessions_active gauge"),
        "{text}"
    );
    assert_eq!(metric(&text, "grainstore_store_sessions_active"), Some(0));
    assert_eq!(
        metric(&text, "grainstore_store_sessions_max"),
        Some(app.config.storage.max_sessions as u64)
    );
    // No live stream open, so no fan-out either.
    assert_eq!(metric(&text, "grainstore_live_streams_open"), Some(0));
    assert_eq!(metric(&text, "grainstore_live_fanouts"), Some(0));
    assert!(
        text.contains(
            r#"grainstore_http_requests_total{route="/healthz",method="GET",status="200"} 1"#
        ),
        "{text}"
    );
}

/// A labelled or plain sample's value, as a float (sums are fractional).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Checks the latency histogram of one route and method: every bucket present and
/// cumulative, `+Inf` and `_count` equal to `requests`, a positive `_sum`.
fn assert_latency_histogram(text: &str, route: &str, method: &str, requests: u64) {
    let name = "grainstore_http_request_duration_seconds";
    let labels = format!(r#"route="{route}",method="{method}""#);
    let buckets: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{{labels},le=\"")))
        .map(|rest| {
            let (le, value) = rest.split_once("\"} ").expect("a bucket sample");
            (le.to_owned(), value.trim().parse().expect("a bucket count"))
        })
        .collect();
    assert!(
        buckets.len() >= 2,
        "no latency buckets for {method} {route} in\n{text}"
    );
    let (last, inf) = buckets.last().expect("buckets");
    assert_eq!(last, "+Inf", "{method} {route}: the last bucket is +Inf");
    assert_eq!(*inf, requests, "{method} {route}: +Inf bucket");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{method} {route}: buckets are cumulative: {buckets:?}"
    );
    let count = metric(text, &format!("{name}_count{{{labels}}}"));
    assert_eq!(count, Some(requests), "{method} {route}: _count in\n{text}");
    let sum = sample(text, &format!("{name}_sum{{{labels}}}"))
        .unwrap_or_else(|| panic!("no _sum for {method} {route} in\n{text}"));
    assert!(sum > 0.0 && sum < 60.0, "{method} {route}: _sum {sum}");
}

#[tokio::test]
async fn metrics_count_requests_latency_bytes_and_grains_by_route() {
    let app = spawn_app().await;
    let (flow, source) = app.create_flow().await;
    let posted = grains(flow, source, 0..5, 1000);
    let body = gsf(&posted);
    let response = app.post_grains_gsf(flow, body.clone()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    // An identical re-send stores nothing new: not counted as written.
    let response = app.post_grains_gsf(flow, body.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    // Three of the five read back.
    let response = app.read_grains(flow, "count=3", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let range = response.bytes().await.expect("body");
    assert_eq!(decode_gsf(range.clone()).len(), 3);
    // And one alone, by its timestamp (served beside the router, under its route).
    let response = app.get_grain(flow, &ts(4).to_string(), None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let one = response.bytes().await.expect("payload");
    assert_eq!(one, posted[4].payload());

    let text = app.metrics().await;
    for (route, method, status, n) in [
        ("/flows/{id}", "PUT", 201, 1),
        ("/flows/{id}/grains", "POST", 201, 1),
        ("/flows/{id}/grains", "POST", 200, 1),
        ("/flows/{id}/grains", "GET", 200, 1),
        ("/flows/{id}/grains/{timestamp}", "GET", 200, 1),
    ] {
        let series = format!(
            r#"grainstore_http_requests_total{{route="{route}",method="{method}",status="{status}"}}"#
        );
        assert_eq!(metric(&text, &series), Some(n), "{series} in\n{text}");
    }
    assert_latency_histogram(&text, "/flows/{id}", "PUT", 1);
    assert_latency_histogram(&text, "/flows/{id}/grains", "POST", 2);
    assert_latency_histogram(&text, "/flows/{id}/grains", "GET", 1);
    assert_latency_histogram(&text, "/flows/{id}/grains/{timestamp}", "GET", 1);

    for name in [
        "grainstore_http_received_bytes_total",
        "grainstore_http_sent_bytes_total",
        "grainstore_grains_written_total",
        "grainstore_grains_read_total",
    ] {
        assert!(text.contains(&format!("# TYPE {name} counter")), "{text}");
    }
    let received = metric(&text, "grainstore_http_received_bytes_total").expect("received");
    assert!(
        received >= 2 * body.len() as u64,
        "received {received} bytes, but two bodies of {} were posted",
        body.len()
    );
    let sent = metric(&text, "grainstore_http_sent_bytes_total").expect("sent");
    assert!(
        sent >= range.len() as u64,
        "sent {sent} bytes, but the range read alone was {}",
        range.len()
    );
    assert_eq!(
        metric(&text, "grainstore_grains_written_total"),
        Some(posted.len() as u64)
    );
    assert_eq!(metric(&text, "grainstore_grains_read_total"), Some(4));
}

/// Each body is counted once in `grainstore_http_sent_bytes_total`, as it is sent: a
/// `HEAD` answer not at all, a compressed JSON answer at its size before compression,
/// and one a client let go uncompressed (gzip accepted but identity preferred) once.
#[tokio::test]
async fn sent_bytes_count_each_body_once() {
    let app = spawn_app().await;
    // Flows enough for a listing over the 1 KiB below which JSON is not compressed.
    for _ in 0..8 {
        app.create_flow().await;
    }
    let sent = |text: &str| metric(text, "grainstore_http_sent_bytes_total").expect("sent");
    let before = app.metrics().await;
    let head = app
        .client
        .head(app.url("/flows"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), StatusCode::OK);
    let get = |encoding: &'static str| {
        let request = app
            .client
            .get(app.url("/flows"))
            .header("accept-encoding", encoding);
        async move {
            let response = request.send().await.expect("GET");
            let compressed = response.headers().contains_key("content-encoding");
            (compressed, response.bytes().await.expect("body"))
        }
    };
    let (compressed, plain) = get("identity").await;
    assert!(!compressed);
    let (compressed, _) = get("gzip;q=0.5, identity").await;
    assert!(!compressed, "identity preferred");
    let (compressed, _) = get("gzip").await;
    assert!(compressed, "gzip asked for");
    let after = app.metrics().await;
    // The first /metrics answer, then the listing three times, uncompressed.
    assert_eq!(
        sent(&after) - sent(&before),
        before.len() as u64 + 3 * plain.len() as u64,
        "{after}"
    );
}

#[tokio::test]
async fn the_api_spec_is_served() {
    let app = spawn_app().await;
    let response = app.get("/openapi.yaml").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(content_type(&response), "application/yaml");
    let text = response.text().await.expect("text");
    assert!(
        text.starts_with("openapi:") || text.contains("\nopenapi:"),
        "{text:.200}"
    );
}

#[tokio::test]
async fn head_requests_get_headers_without_a_body() {
    let app = spawn_app().await;
    let (flow, _) = app.create_flow().await;
    for path in [
        "/".to_owned(),
        "/healthz".into(),
        format!("/flows/{flow}"),
        "/flows".into(),
    ] {
        let response = app.client.head(app.url(&path)).send().await.expect("HEAD");
        assert_eq!(response.status(), StatusCode::OK, "HEAD {path}");
        assert_eq!(content_type(&response), "application/json", "HEAD {path}");
        assert!(
            response.bytes().await.expect("body").is_empty(),
            "HEAD {path}"
        );
    }
}
