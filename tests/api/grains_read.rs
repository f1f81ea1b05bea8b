//! `GET /flows/{id}/grains`: GSF and NDJSON streams, every timerange form, `count`,
//! `reverse_order`, `payload=none`, continuation, and the flow's timerange.

use grainstore::grain::Grain;
use grainstore::time::TimeRange;
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{
    TestApp, content_type, json_body, problem, query, spawn_app, ts, without_creation,
};

/// The indexes of the grains a read returned.
fn indexes(grains: &[Grain]) -> Vec<u64> {
    grains
        .iter()
        .map(|g| {
            let offset = g
                .origin_timestamp()
                .checked_sub(ts(0))
                .expect("after ts(0)");
            let nanos = offset.to_std_duration().expect("positive").as_nanos();
            (nanos / 40_000_000) as u64
        })
        .collect()
}

async fn read_indexes(app: &TestApp, flow: Uuid, pairs: &[(&str, &str)]) -> Vec<u64> {
    indexes(&app.read_gsf(flow, &query(pairs)).await)
}

#[tokio::test]
async fn gsf_is_the_default_and_ndjson_is_offered() {
    let app = spawn_app().await;
    let (flow, _, sent) = app.flow_with_grains(10, 500).await;
    let stored = app.read_gsf(flow, "").await;
    assert_eq!(stored.len(), 10);
    assert!(
        stored.iter().all(|g| g.creation_timestamp().is_none()),
        "GSF has no creation time"
    );
    assert_eq!(stored, sent);

    for accept in [
        "application/x-gsf",
        "*/*",
        "application/*",
        "text/html, application/x-gsf;q=0.5",
    ] {
        let response = app.read_grains(flow, "", Some(accept)).await;
        assert_eq!(response.status(), StatusCode::OK, "{accept}");
        assert_eq!(content_type(&response), "application/x-gsf", "{accept}");
    }

    let lines = app.read_ndjson(flow, "").await;
    let rebuilt: Vec<Grain> = lines
        .iter()
        .map(|line| Grain::from_json(line.to_string().as_bytes()).expect("a JSON grain"))
        .collect();
    assert!(
        rebuilt.iter().all(|g| g.creation_timestamp().is_some()),
        "set at first write"
    );
    let rebuilt: Vec<_> = rebuilt.into_iter().map(without_creation).collect();
    assert_eq!(rebuilt, sent);
    assert_eq!(lines[0]["meta"]["@_ns"], "urn:x-ipstudio:ns:0.1");
    assert_eq!(lines[0]["meta"]["grain"]["flow_id"], flow.to_string());

    let response = app
        .read_grains(
            flow,
            "",
            Some("application/x-ndjson;q=0.9, application/x-gsf;q=0.1"),
        )
        .await;
    assert_eq!(content_type(&response), "application/x-ndjson");
}

#[tokio::test]
async fn every_timerange_form_selects_its_grains() {
    let app = spawn_app().await;
    let (flow, _, _) = app.flow_with_grains(10, 10).await;
    let t = |i: u64| ts(i).to_string();
    let cases: Vec<(String, Vec<u64>)> = vec![
        ("_".into(), (0..10).collect()),
        (format!("[{}_{})", t(2), t(5)), vec![2, 3, 4]),
        (format!("[{}_{}]", t(2), t(5)), vec![2, 3, 4, 5]),
        (format!("({}_{})", t(2), t(5)), vec![3, 4]),
        (format!("({}_{}]", t(2), t(5)), vec![3, 4, 5]),
        (format!("[{}_", t(7)), vec![7, 8, 9]),
        (format!("({}_", t(7)), vec![8, 9]),
        (format!("_{})", t(2)), vec![0, 1]),
        (format!("_{}]", t(2)), vec![0, 1, 2]),
        (format!("[{}]", t(3)), vec![3]),
        (t(3), vec![3]),
        // Without brackets both ends are inclusive, as in mediatimestamp.
        (format!("{}_{}", t(2), t(4)), vec![2, 3, 4]),
        ("()".into(), vec![]),
        (format!("[{}_{})", t(20), t(30)), vec![]),
        // Between grains.
        (
            format!("[{}_{})", "1700000000:10000000", "1700000000:30000000"),
            vec![],
        ),
    ];
    for (range, expected) in cases {
        assert_eq!(
            read_indexes(&app, flow, &[("timerange", &range)]).await,
            expected,
            "timerange={range}"
        );
    }
}

#[tokio::test]
async fn count_and_reverse_order_bound_and_order_a_read() {
    let app = spawn_app().await;
    let (flow, _, _) = app.flow_with_grains(10, 10).await;
    assert_eq!(
        read_indexes(&app, flow, &[("count", "3")]).await,
        vec![0, 1, 2]
    );
    assert_eq!(
        read_indexes(&app, flow, &[("count", "0")]).await,
        Vec::<u64>::new()
    );
    assert_eq!(
        read_indexes(&app, flow, &[("count", "100")]).await.len(),
        10
    );
    assert_eq!(
        read_indexes(&app, flow, &[("reverse_order", "true")]).await,
        (0..10).rev().collect::<Vec<_>>()
    );
    assert_eq!(
        read_indexes(&app, flow, &[("reverse_order", "false"), ("count", "2")]).await,
        vec![0, 1]
    );
    assert_eq!(
        read_indexes(&app, flow, &[("reverse_order", "true"), ("count", "2")]).await,
        vec![9, 8]
    );
    let range = format!("[{}_{})", ts(2), ts(6));
    assert_eq!(
        read_indexes(
            &app,
            flow,
            &[
                ("timerange", &range),
                ("reverse_order", "true"),
                ("count", "3")
            ]
        )
        .await,
        vec![5, 4, 3]
    );
}

#[tokio::test]
async fn payload_none_drops_data_from_ndjson_only() {
    let app = spawn_app().await;
    let (flow, _, sent) = app.flow_with_grains(3, 100).await;
    let lines = app.read_ndjson(flow, "payload=none").await;
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert!(line.get("data").is_none(), "{line}");
        assert!(line["meta"]["grain"].is_object(), "{line}");
    }
    let inline = app.read_ndjson(flow, "payload=inline").await;
    assert!(inline.iter().all(|l| l["data"].is_string()));
    // GSF always carries payloads.
    assert_eq!(app.read_gsf(flow, "payload=none").await, sent);
}

#[tokio::test]
async fn a_read_continues_after_its_last_grain() {
    let app = spawn_app().await;
    let (flow, _, sent) = app.flow_with_grains(10, 50).await;
    let mut got: Vec<Grain> = Vec::new();
    let mut range = "_".to_owned();
    for _ in 0..10 {
        let page = app
            .read_gsf(flow, &query(&[("timerange", &range), ("count", "4")]))
            .await;
        let Some(last) = page.last() else { break };
        range = format!("({}_", last.origin_timestamp());
        got.extend(page);
    }
    assert_eq!(got, sent);

    // The same over NDJSON, reading backwards with an exclusive end.
    let mut indexes_seen = Vec::new();
    let mut range = "_".to_owned();
    loop {
        let page = app
            .read_ndjson(
                flow,
                &query(&[
                    ("timerange", &range),
                    ("count", "3"),
                    ("reverse_order", "true"),
                ]),
            )
            .await;
        let Some(last) = page.last() else { break };
        let last_ts = last["meta"]["grain"]["origin_timestamp"]
            .as_str()
            .unwrap()
            .to_owned();
        range = format!("_{last_ts})");
        indexes_seen.extend(
            page.iter()
                .map(|l| l["meta"]["grain"]["origin_timestamp"].clone()),
        );
        assert!(indexes_seen.len() <= 10);
    }
    let expected: Vec<Value> = (0..10)
        .rev()
        .map(|i| Value::String(ts(i).to_string()))
        .collect();
    assert_eq!(indexes_seen, expected);
}

#[tokio::test]
async fn bad_read_parameters_are_400_naming_the_parameter() {
    let app = spawn_app().await;
    let (flow, _, _) = app.flow_with_grains(2, 10).await;
    for (q, name) in [
        (query(&[("timerange", "[1:0__2:0)")]), "timerange"),
        ("timerange=".to_owned(), "timerange"),
        (query(&[("timerange", "[1:0_2:0)x")]), "timerange"),
        (query(&[("timerange", "yesterday")]), "timerange"),
        (query(&[("timerange", "[2:0_1:0x")]), "timerange"),
        ("count=-1".into(), "count"),
        ("count=many".into(), "count"),
        ("reverse_order=yes".into(), "reverse_order"),
        ("payload=some".into(), "payload"),
        ("limit=3".into(), "limit"),
        ("count=1&count=2".into(), "count"),
    ] {
        let response = app.read_grains(flow, &q, None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{q}");
        let p = problem(response, StatusCode::BAD_REQUEST).await;
        assert!(p["detail"].as_str().unwrap().contains(name), "{q}: {p}");
    }
    problem(
        app.read_grains(Uuid::new_v4(), "", None).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let response = app.get("/flows/nope/grains").await;
    problem(response, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn an_unsupported_accept_is_406() {
    let app = spawn_app().await;
    let (flow, _, _) = app.flow_with_grains(1, 10).await;
    for accept in ["text/html", "application/json", "application/x-gsf;q=0"] {
        let p = problem(
            app.read_grains(flow, "", Some(accept)).await,
            StatusCode::NOT_ACCEPTABLE,
        )
        .await;
        assert!(
            p["detail"].as_str().unwrap().contains("application/x-gsf"),
            "{p}"
        );
    }
}

#[tokio::test]
async fn head_of_a_grain_read_has_the_headers_only() {
    let app = spawn_app().await;
    let (flow, _, _) = app.flow_with_grains(3, 1000).await;
    let url = app.url(&format!("/flows/{flow}/grains"));
    let response = app.client.head(&url).send().await.expect("HEAD");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(content_type(&response), "application/x-gsf");
    assert!(response.bytes().await.expect("body").is_empty());
    let response = app
        .client
        .head(&url)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .expect("HEAD");
    assert_eq!(content_type(&response), "application/x-ndjson");
    let response = app
        .client
        .head(format!("{url}?timerange=bad"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_flow_timerange_follows_its_grains() {
    let app = spawn_app().await;
    let (flow, _, _) = app.flow_with_grains(10, 10).await;
    let info = json_body(app.get_flow(flow).await, StatusCode::OK).await;
    // [first_last + its duration): the last grain is 9, of 1/25 s.
    assert_eq!(
        info["timerange"],
        TimeRange::half_open(ts(0), ts(10)).to_string()
    );
    assert_eq!(info["timerange"], "[1700000000:0_1700000000:400000000)");

    let deleted = app
        .delete_range(flow, &query(&[("timerange", &format!("_{})", ts(3)))]))
        .await;
    assert_eq!(deleted.status(), StatusCode::OK);
    let info = json_body(app.get_flow(flow).await, StatusCode::OK).await;
    assert_eq!(
        info["timerange"],
        TimeRange::half_open(ts(3), ts(10)).to_string()
    );
    // The listing shows the same timerange.
    let list = json_body(app.list_flows("").await, StatusCode::OK).await;
    assert_eq!(list[0]["timerange"], info["timerange"]);
}

#[tokio::test]
async fn a_last_grain_without_duration_ends_the_flow_timerange_inclusively() {
    let app = spawn_app().await;
    let (flow, source) = app.create_flow().await;
    let mut sent = crate::helpers::grains(flow, source, 0..3, 10);
    let (mut header, payload) = sent.pop().expect("a grain").into_parts();
    header.duration = grainstore::time::Rational::new(0, 1);
    sent.push(Grain::new(header, payload).expect("grain"));
    let response = app.post_grains_gsf(flow, crate::helpers::gsf(&sent)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let info = json_body(app.get_flow(flow).await, StatusCode::OK).await;
    assert_eq!(
        info["timerange"],
        TimeRange::inclusive(ts(0), ts(2)).to_string()
    );
}
