//! `/flows/{id}/grains/{timestamp}`: one grain as its raw payload with `Grain-*`
//! headers, as JSON or as GSF; written with PUT; deleted.

use bytes::Bytes;
use grainstore::grain::Grain;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{
    content_type, decode_gsf, grain, gsf, json_body, payload, problem, spawn_app, ts,
    without_creation,
};

#[tokio::test]
async fn get_serves_the_raw_payload_with_grain_headers() {
    let app = spawn_app().await;
    let (flow, source, sent) = app.flow_with_grains(3, 777).await;
    let response = app.get_grain(flow, &ts(1).to_string(), None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(content_type(&response), "application/octet-stream");
    let headers = response.headers().clone();
    let header = |name: &str| {
        headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .expect("text")
            .to_owned()
    };
    assert_eq!(header("grain-type"), "coded_video");
    assert_eq!(header("grain-flow-id"), flow.to_string());
    assert_eq!(header("grain-source-id"), source.to_string());
    assert_eq!(header("grain-origin-timestamp"), ts(1).to_string());
    assert_eq!(header("grain-sync-timestamp"), ts(1).to_string());
    assert_eq!(header("grain-rate"), "25/1");
    assert_eq!(header("grain-duration"), "1/25");
    assert!(headers.contains_key("grain-creation-timestamp"));
    assert_eq!(response.bytes().await.expect("body"), sent[1].payload());

    // `*/*` gets the raw payload too.
    let response = app.get_grain(flow, &ts(2).to_string(), Some("*/*")).await;
    assert_eq!(content_type(&response), "application/octet-stream");
    assert_eq!(response.bytes().await.expect("body"), sent[2].payload());
}

#[tokio::test]
async fn get_serves_json_or_gsf_by_accept() {
    let app = spawn_app().await;
    let (flow, _, sent) = app.flow_with_grains(2, 300).await;
    let response = app
        .get_grain(flow, &ts(1).to_string(), Some("application/json"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(content_type(&response), "application/json");
    let body = response.bytes().await.expect("body");
    let rebuilt = Grain::from_json(&body).expect("a JSON grain");
    assert_eq!(without_creation(rebuilt), sent[1]);

    let response = app
        .get_grain(flow, &ts(0).to_string(), Some("application/x-gsf"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(content_type(&response), "application/x-gsf");
    let grains = decode_gsf(response.bytes().await.expect("body"));
    assert_eq!(grains, vec![sent[0].clone()]);

    problem(
        app.get_grain(flow, &ts(0).to_string(), Some("text/html"))
            .await,
        StatusCode::NOT_ACCEPTABLE,
    )
    .await;
}

#[tokio::test]
async fn get_of_a_missing_or_malformed_grain() {
    let app = spawn_app().await;
    let (flow, _, _) = app.flow_with_grains(2, 10).await;
    // Between two grains: no grain there.
    problem(
        app.get_grain(flow, "1700000000:20000000", None).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.get_grain(Uuid::new_v4(), &ts(0).to_string(), None)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    for bad in ["noon", "1700000000", "1700000000:1000000000", "1:2:3"] {
        let p = problem(
            app.get_grain(flow, bad, None).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(
            p["detail"].as_str().unwrap().contains("timestamp"),
            "{bad}: {p}"
        );
    }
}

#[tokio::test]
async fn put_stores_one_grain_and_is_safe_to_retry() {
    let app = spawn_app().await;
    let (flow, source) = app.create_flow().await;
    let one = grain(flow, source, 4, payload(4, 200));
    let at = ts(4).to_string();

    let summary = json_body(
        app.put_grain(flow, &at, "application/json", one.to_json(true))
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(summary["written"], 1);
    let summary = json_body(
        app.put_grain(flow, &at, "application/json", one.to_json(true))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        summary,
        json!({"written": 0, "unchanged": 1, "timerange": "()"})
    );
    // The same grain as GSF is identical.
    let response = app
        .put_grain(
            flow,
            &at,
            "application/x-gsf",
            gsf(std::slice::from_ref(&one)),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    let other = grain(flow, source, 4, payload(40, 200));
    let p = problem(
        app.put_grain(flow, &at, "application/json", other.to_json(true))
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(p["timestamp"], at);

    // A GSF grain at a new timestamp.
    let next = grain(flow, source, 5, payload(5, 200));
    let response = app
        .put_grain(
            flow,
            &ts(5).to_string(),
            "application/x-gsf",
            gsf(std::slice::from_ref(&next)),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);

    let stored: Vec<_> = app
        .read_gsf(flow, "")
        .await
        .into_iter()
        .map(without_creation)
        .collect();
    assert_eq!(stored, vec![one, next]);
}

#[tokio::test]
async fn put_refuses_bodies_that_do_not_fit_the_path() {
    let app = spawn_app().await;
    let (flow, source) = app.create_flow().await;
    let one = grain(flow, source, 1, payload(1, 20));
    let at = ts(1).to_string();
    let p = problem(
        app.put_grain(
            flow,
            &ts(2).to_string(),
            "application/json",
            one.to_json(true),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(
        p["detail"].as_str().unwrap().contains(&ts(2).to_string()),
        "{p}"
    );
    let two = [one.clone(), grain(flow, source, 2, payload(2, 20))];
    problem(
        app.put_grain(flow, &at, "application/x-gsf", gsf(&two))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        app.put_grain(flow, &at, "application/x-gsf", gsf(&[]))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        app.put_grain(flow, &at, "application/json", Bytes::new())
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        app.put_grain(flow, &at, "application/json", b"{\"meta\":{}}".to_vec())
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        app.put_grain(flow, &at, "application/octet-stream", one.payload().clone())
            .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    let stray = grain(Uuid::new_v4(), source, 1, payload(1, 20));
    problem(
        app.put_grain(flow, &at, "application/json", stray.to_json(true))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        app.put_grain(Uuid::new_v4(), &at, "application/json", one.to_json(true))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.put_grain(flow, "later", "application/json", one.to_json(true))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(app.read_gsf(flow, "").await.is_empty());
}

#[tokio::test]
async fn delete_removes_one_grain() {
    let app = spawn_app().await;
    let (flow, _, sent) = app.flow_with_grains(3, 10).await;
    let at = ts(1).to_string();
    let response = app.delete_grain(flow, &at).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    problem(app.delete_grain(flow, &at).await, StatusCode::NOT_FOUND).await;
    problem(app.get_grain(flow, &at, None).await, StatusCode::NOT_FOUND).await;
    assert_eq!(
        app.read_gsf(flow, "").await,
        vec![sent[0].clone(), sent[2].clone()]
    );
    problem(
        app.delete_grain(flow, "soon").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
}

/// A plain `GET /flows/{id}/grains/{timestamp}` is served beside the router; the same
/// request with a percent-encoded character goes through the router. Both must answer
/// alike, errors included, and count under the same route.
#[tokio::test]
async fn the_direct_read_and_the_router_answer_alike() {
    let app = spawn_app().await;
    let (flow, _, _) = app.flow_with_grains(3, 50).await;
    let at = ts(1).to_string();
    let id = flow.to_string();
    // (flow id, timestamp, query, Accept)
    let cases: Vec<(String, String, &str, Option<&str>)> = vec![
        (id.clone(), at.clone(), "", None),
        (id.clone(), at.clone(), "", Some("application/json")),
        (id.clone(), at.clone(), "", Some("application/x-ndjson")),
        (id.clone(), at.clone(), "", Some("application/x-gsf")),
        (id.clone(), at.clone(), "", Some("text/html")),
        (id.clone(), at.clone(), "?bogus=1", None),
        (id.clone(), "1700000000:20000000".into(), "", None),
        (id.clone(), "noon".into(), "", None),
        (Uuid::new_v4().to_string(), at.clone(), "", None),
        ("not-a-uuid".into(), at.clone(), "", None),
        (
            "not-a-uuid".into(),
            "noon".into(),
            "?bogus=1",
            Some("text/html"),
        ),
    ];
    let mut compared = 0;
    for (flow_id, timestamp, query, accept) in cases {
        let mut answers = Vec::new();
        // The second spelling percent-encodes the first character of the timestamp.
        let first = timestamp.chars().next().expect("a timestamp");
        let encoded = format!("%{:02X}{}", first as u32, &timestamp[1..]);
        for spelled in [&timestamp, &encoded] {
            let mut request = app
                .client
                .get(app.url(&format!("/flows/{flow_id}/grains/{spelled}{query}")));
            if let Some(accept) = accept {
                request = request.header("accept", accept);
            }
            let response = request.send().await.expect("GET");
            let status = response.status();
            let mut headers: Vec<(String, String)> = response
                .headers()
                .iter()
                .filter(|(k, _)| *k != "date" && *k != "x-request-id")
                .map(|(k, v)| (k.to_string(), v.to_str().expect("text").to_owned()))
                .collect();
            headers.sort();
            let gsf = content_type(&response) == "application/x-gsf";
            let mut body = response.bytes().await.expect("body");
            if gsf && status == StatusCode::OK {
                // A GSF file has an id and segment id of its own: compare its grains.
                body = Bytes::from(format!("{:?}", decode_gsf(body)));
            }
            answers.push((status, headers, body));
        }
        assert_eq!(
            answers[0], answers[1],
            "GET /flows/{flow_id}/grains/{timestamp}{query} with Accept {accept:?}"
        );
        compared += 1;
    }
    assert_eq!(compared, 11);
    let metrics = app.metrics().await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                r#"grainstore_http_requests_total{route="/flows/{id}/grains/{timestamp}",method="GET",status="200"}"#,
            )
        })
        .unwrap_or_else(|| panic!("no count of the route's GETs in {metrics}"));
    // Four 200s by each path (raw, JSON, NDJSON, GSF).
    assert!(line.ends_with(" 8"), "{line}");
}
