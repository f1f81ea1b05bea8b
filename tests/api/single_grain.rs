//! `/flows/{id}/grains/{timestamp}`: one grain as its raw payload with `Grain-*`
//! headers, as JSON or as GSF; written with PUT; deleted.

use bytes::Bytes;
use grainstore::grain::Grain;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use grainstore::config::{AuthMode, Secret, TokenConfig};

use crate::helpers::{
    content_type, decode_gsf, flow_body, grain, gsf, json_body, payload, problem, spawn_app,
    spawn_app_with, ts, without_creation,
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

/// The answer to a GET as compared below: status, headers (but `date` and the request
/// id), and the body (a GSF file's grains, since each file has an id of its own).
type Answer = (u16, Vec<(String, String)>, Bytes);

fn answer(status: u16, headers: &reqwest::header::HeaderMap, body: Bytes) -> Answer {
    let mut kept: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| *k != "date" && *k != "x-request-id")
        .map(|(k, v)| (k.to_string(), v.to_str().expect("text").to_owned()))
        .collect();
    kept.sort();
    let gsf = headers
        .get("content-type")
        .is_some_and(|v| v == "application/x-gsf");
    let body = if gsf && status == 200 {
        Bytes::from(format!("{:?}", decode_gsf(body)))
    } else {
        body
    };
    (status, kept, body)
}

/// A request of the comparison: flow id, timestamp, query, headers, expected status.
type Case<'a> = (String, &'a str, &'a str, Vec<(&'a str, &'a str)>, u16);

/// A GET over HTTP/2 (prior knowledge, as the server speaks both).
async fn get_h2(address: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    use http_body_util::{BodyExt, Empty};
    let authority = address.trim_start_matches("http://");
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);
    let mut request = hyper::Request::get(format!("{address}{path}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new()).expect("request"))
        .await
        .expect("h2 GET");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("h2 body").to_bytes();
    answer(parts.status.as_u16(), &parts.headers, body)
}

/// A plain `GET /flows/{id}/grains/{timestamp}` is served beside the router; the same
/// request with a percent-encoded character goes through the router (a unit test in
/// `src/api/direct.rs` checks which requests take which way). Both must answer alike
/// over HTTP/1.1 and HTTP/2, errors, access control and CORS included, and count under
/// the same route.
#[tokio::test]
async fn the_direct_read_and_the_router_answer_alike() {
    let reader = "reader-0123456789abcdef";
    let writer = "writer-0123456789abcdef";
    let app = spawn_app_with(|config| {
        config.auth.mode = AuthMode::Token;
        config.auth.tokens = [(reader, vec!["read", "write"]), (writer, vec!["write"])]
            .into_iter()
            .map(|(token, scopes)| TokenConfig {
                name: token[..6].into(),
                token: Secret::new(token),
                token_sha256: String::new(),
                scopes: scopes.into_iter().map(String::from).collect(),
            })
            .collect();
        config.cors.allowed_origins = vec!["http://allowed.example".into()];
    })
    .await;
    let (flow, source) = (Uuid::new_v4(), Uuid::new_v4());
    let response = app
        .client
        .put(app.url(&format!("/flows/{flow}")))
        .bearer_auth(reader)
        .json(&flow_body(source, "video"))
        .send()
        .await
        .expect("PUT flow");
    assert!(response.status().is_success(), "{}", response.status());
    // An empty payload (HTTP/2 sends no length for an empty body unless told) and a
    // larger one.
    let grains = [
        grain(flow, source, 0, Vec::new()),
        grain(flow, source, 1, payload(1, 3000)),
    ];
    let response = app
        .client
        .post(app.url(&format!("/flows/{flow}/grains")))
        .bearer_auth(reader)
        .header("content-type", "application/x-gsf")
        .body(gsf(&grains))
        .send()
        .await
        .expect("POST grains");
    assert_eq!(response.status(), StatusCode::CREATED);

    let (empty, full) = (ts(0).to_string(), ts(1).to_string());
    let id = flow.to_string();
    let bearer = format!("Bearer {reader}");
    let writer_only = format!("Bearer {writer}");
    let auth = ("authorization", bearer.as_str());
    let token_query = format!("?access_token={reader}");
    let cases: Vec<Case> = vec![
        (id.clone(), &empty, "", vec![auth], 200),
        (id.clone(), &full, "", vec![auth], 200),
        (
            id.clone(),
            &full,
            "",
            vec![
                auth,
                ("accept", "application/json"),
                ("accept-encoding", "gzip"),
            ],
            200,
        ),
        (
            id.clone(),
            &full,
            "",
            vec![auth, ("accept", "application/x-ndjson")],
            200,
        ),
        (
            id.clone(),
            &full,
            "",
            vec![auth, ("accept", "application/x-gsf")],
            200,
        ),
        (
            id.clone(),
            &full,
            "",
            vec![auth, ("origin", "http://allowed.example")],
            200,
        ),
        (
            id.clone(),
            &full,
            "",
            vec![auth, ("origin", "http://elsewhere.example")],
            200,
        ),
        (
            id.clone(),
            &full,
            "",
            vec![auth, ("accept", "text/html")],
            406,
        ),
        (id.clone(), &full, "?bogus=1", vec![auth], 400),
        (id.clone(), &full, "", vec![], 401),
        (
            id.clone(),
            &full,
            "",
            vec![("authorization", "Bearer wrong-token")],
            401,
        ),
        (
            id.clone(),
            &full,
            "",
            vec![("authorization", writer_only.as_str())],
            403,
        ),
        (id.clone(), &full, &token_query, vec![], 400),
        (id.clone(), "1700000000:20000000", "", vec![auth], 404),
        (id.clone(), "noon", "", vec![auth], 400),
        (Uuid::new_v4().to_string(), &full, "", vec![auth], 404),
        (
            "not-a-uuid".into(),
            "noon",
            "?bogus=1",
            vec![auth, ("accept", "text/html")],
            400,
        ),
    ];
    let count = cases.len();
    for (flow_id, timestamp, query, headers, status) in cases {
        // The second spelling percent-encodes the first character of the timestamp.
        let encoded = format!("%{:02X}{}", timestamp.as_bytes()[0], &timestamp[1..]);
        let what = format!("GET /flows/{flow_id}/grains/{timestamp}{query} {headers:?}");
        let mut h1 = Vec::new();
        let mut h2 = Vec::new();
        for spelled in [timestamp, encoded.as_str()] {
            let path = format!("/flows/{flow_id}/grains/{spelled}{query}");
            let mut request = app.client.get(app.url(&path));
            for (k, v) in &headers {
                request = request.header(*k, *v);
            }
            let response = request.send().await.expect("GET");
            let (code, head) = (response.status().as_u16(), response.headers().clone());
            h1.push(answer(code, &head, response.bytes().await.expect("body")));
            h2.push(get_h2(&app.address, &path, &headers).await);
        }
        assert_eq!(h1[0].0, status, "{what}: {:?}", h1[0]);
        assert_eq!(h1[0], h1[1], "HTTP/1.1 {what}");
        assert_eq!(h2[0], h2[1], "HTTP/2 {what}");
    }
    assert_eq!(count, 17);
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(reader)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                r#"grainstore_http_requests_total{route="/flows/{id}/grains/{timestamp}",method="GET",status="200"}"#,
            )
        })
        .unwrap_or_else(|| panic!("no count of the route's GETs in {metrics}"));
    // Seven 200s, each by both paths over both protocols.
    assert!(line.ends_with(" 28"), "{line}");
}
