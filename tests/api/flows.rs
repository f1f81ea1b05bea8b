//! `/flows` and `/flows/{id}`: create, update, validation, read, delete, list, filters
//! and paging.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use reqwest::header::{LINK, LOCATION};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    TestApp, flow_body, grains, gsf, json_body, problem, query, spawn_app, spawn_app_with, ts,
};

#[tokio::test]
async fn put_creates_a_flow_with_201_its_body_and_location() {
    let app = spawn_app().await;
    let (flow, source) = (Uuid::new_v4(), Uuid::new_v4());
    let mut body = flow_body(source, "video");
    body["id"] = json!(flow);
    body["tags"] = json!({"site": "studio"});
    body["essence_parameters"] = json!({"frame_rate": {"numerator": 25, "denominator": 1}});
    let response = app.put_flow(flow, &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response.headers()[LOCATION].to_str().expect("text"),
        format!("/flows/{flow}")
    );
    let created = json_body(response, StatusCode::CREATED).await;
    assert_eq!(created["id"], flow.to_string());
    assert_eq!(created["source_id"], source.to_string());
    assert_eq!(created["format"], "urn:x-nmos:format:video");
    assert_eq!(created["label"], "test flow");
    assert_eq!(created["tags"]["site"], "studio");
    assert_eq!(created["essence_parameters"]["frame_rate"]["numerator"], 25);
    assert_eq!(created["timerange"], "()");
    assert_eq!(created["read_only"], false);
    assert!(created["created"].is_string(), "{created}");

    let fetched = json_body(app.get_flow(flow).await, StatusCode::OK).await;
    assert_eq!(fetched, created);
}

#[tokio::test]
async fn put_of_an_existing_flow_updates_it_with_204() {
    let app = spawn_app().await;
    let (flow, source) = app.create_flow().await;
    let before = json_body(app.get_flow(flow).await, StatusCode::OK).await;
    let mut body = flow_body(source, "video");
    body["label"] = json!("renamed");
    // Computed fields a client sends are ignored.
    body["timerange"] = json!("[0:0_1:0)");
    body["created"] = json!("1970-01-01T00:00:00Z");
    let response = app.put_flow(flow, &body).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(response.bytes().await.expect("body").is_empty());
    let after = json_body(app.get_flow(flow).await, StatusCode::OK).await;
    assert_eq!(after["label"], "renamed");
    assert_eq!(after["created"], before["created"]);
    assert_eq!(after["timerange"], "()");
}

#[tokio::test]
async fn put_refuses_invalid_flows() {
    let app = spawn_app_with(|c| c.limits.max_json_body_bytes = 1024).await;
    let (flow, source) = (Uuid::new_v4(), Uuid::new_v4());
    let good = flow_body(source, "video");

    let p = problem(
        app.put_flow("not-a-uuid", &good).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("not-a-uuid"), "{p}");

    let mut mismatch = good.clone();
    mismatch["id"] = json!(Uuid::new_v4());
    let p = problem(app.put_flow(flow, &mismatch).await, StatusCode::BAD_REQUEST).await;
    assert!(
        p["detail"].as_str().unwrap().contains(&flow.to_string()),
        "{p}"
    );

    let mut bad_id = good.clone();
    bad_id["id"] = json!(42);
    problem(app.put_flow(flow, &bad_id).await, StatusCode::BAD_REQUEST).await;

    let mut format = good.clone();
    format["format"] = json!("urn:x-nmos:format:smell");
    problem(app.put_flow(flow, &format).await, StatusCode::BAD_REQUEST).await;

    let mut no_source = good.clone();
    no_source.as_object_mut().unwrap().remove("source_id");
    problem(
        app.put_flow(flow, &no_source).await,
        StatusCode::BAD_REQUEST,
    )
    .await;

    for rate in [
        json!({"numerator": 25, "denominator": 0}),
        json!({"numerator": 25.5, "denominator": 1}),
        json!({"numerator": "25", "denominator": 1}),
    ] {
        let mut essence = good.clone();
        essence["essence_parameters"] = json!({"frame_rate": rate});
        let p = problem(app.put_flow(flow, &essence).await, StatusCode::BAD_REQUEST).await;
        assert!(
            p["detail"]
                .as_str()
                .unwrap()
                .contains("essence_parameters.frame_rate"),
            "{p}"
        );
    }

    let p = problem(
        app.put_flow_raw(flow, "text/plain", good.to_string().into_bytes())
            .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("text/plain"), "{p}");

    let mut big = good.clone();
    big["description"] = json!("x".repeat(2048));
    let p = problem(
        app.put_flow(flow, &big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("limits.max_json_body_bytes"),
        "{p}"
    );

    problem(
        app.put_flow_raw(flow, "application/json", Vec::new()).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        app.put_flow_raw(flow, "application/json", b"{\"source_id\":".to_vec())
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        app.put_flow_raw(flow, "application/json", b"[1, 2]".to_vec())
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;

    // Nothing of the refused requests was stored.
    problem(app.get_flow(flow).await, StatusCode::NOT_FOUND).await;
}

/// Malformed `source_id` values in a flow body.
const BAD_SOURCE_IDS: [&str; 3] = [
    r#""not-a-uuid""#,
    r#""4ae0d1a2-0a3b-4d3f-9a3e-1c2b3d4e5f6""#,
    "42",
];

/// Asserts that a flow PUT with `source_id` set to the JSON `bad` is a 400 problem naming
/// the field.
async fn put_with_source_id(app: &TestApp, flow: Uuid, bad: &str) {
    let mut body = flow_body(Uuid::new_v4(), "video");
    body["source_id"] = serde_json::from_str(bad).expect("JSON");
    let p = problem(app.put_flow(flow, &body).await, StatusCode::BAD_REQUEST).await;
    assert_eq!(p["type"], "urn:grainstore:problem:bad-body", "{bad}: {p}");
    assert!(
        p["detail"].as_str().unwrap().contains("source_id"),
        "the problem for source_id {bad} does not name it: {p}"
    );
}

#[tokio::test]
async fn put_refuses_a_malformed_source_id() {
    let app = spawn_app().await;
    let flow = Uuid::new_v4();
    for bad in BAD_SOURCE_IDS {
        put_with_source_id(&app, flow, bad).await;
    }
    // Nothing was stored, and no source was made of the refused bodies.
    problem(app.get_flow(flow).await, StatusCode::NOT_FOUND).await;
    let sources = json_body(app.list_sources("").await, StatusCode::OK).await;
    assert_eq!(sources.as_array().map(Vec::len), Some(0), "{sources}");
}

#[tokio::test]
async fn get_of_an_unknown_or_malformed_flow_id() {
    let app = spawn_app().await;
    let p = problem(app.get_flow(Uuid::new_v4()).await, StatusCode::NOT_FOUND).await;
    assert_eq!(p["title"], "Not found");
    problem(app.get_flow("1234").await, StatusCode::BAD_REQUEST).await;
    problem(
        app.get(&format!("/flows/{}?verbose=true", Uuid::new_v4()))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn delete_removes_the_flow_and_its_grains() {
    let app = spawn_app().await;
    let (flow, source, _) = app.flow_with_grains(3, 100).await;
    let response = app.delete_flow(flow).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    problem(app.get_flow(flow).await, StatusCode::NOT_FOUND).await;
    problem(app.delete_flow(flow).await, StatusCode::NOT_FOUND).await;
    problem(app.read_grains(flow, "", None).await, StatusCode::NOT_FOUND).await;
    problem(
        app.get_grain(flow, &ts(0).to_string(), None).await,
        StatusCode::NOT_FOUND,
    )
    .await;

    // A flow created again under the same id starts without grains.
    let response = app.put_flow(flow, &flow_body(source, "video")).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(app.read_gsf(flow, "").await.is_empty());
    let info = json_body(app.get_flow(flow).await, StatusCode::OK).await;
    assert_eq!(info["timerange"], "()");
}

/// The ids of a listing's body.
pub fn ids(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|item| item["id"].as_str().expect("id").to_owned())
        .collect()
}

async fn list_ids(app: &TestApp, q: &str) -> BTreeSet<String> {
    ids(&json_body(app.list_flows(q).await, StatusCode::OK).await)
}

fn set(ids: &[Uuid]) -> BTreeSet<String> {
    ids.iter().map(Uuid::to_string).collect()
}

#[tokio::test]
async fn list_filters_by_source_format_label_tags_and_timerange() {
    let app = spawn_app().await;
    let (s1, s2) = (Uuid::new_v4(), Uuid::new_v4());
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut body = flow_body(s1, "video");
    body["label"] = json!("cam");
    body["tags"] = json!({"site": "studio"});
    assert_eq!(app.put_flow(a, &body).await.status(), StatusCode::CREATED);
    let mut body = flow_body(s1, "audio");
    body["label"] = json!("mic");
    body["tags"] = json!({"site": ["studio", "remote"], "lang": "en"});
    assert_eq!(app.put_flow(b, &body).await.status(), StatusCode::CREATED);
    let mut body = flow_body(s2, "data");
    body["label"] = json!("cam");
    assert_eq!(app.put_flow(c, &body).await.status(), StatusCode::CREATED);
    // a has grains 0..5, c has grains 100..105, b none.
    let written = app.post_grains_gsf(a, gsf(&grains(a, s1, 0..5, 10))).await;
    assert_eq!(written.status(), StatusCode::CREATED);
    let written = app
        .post_grains_gsf(c, gsf(&grains(c, s2, 100..105, 10)))
        .await;
    assert_eq!(written.status(), StatusCode::CREATED);

    assert_eq!(list_ids(&app, "").await, set(&[a, b, c]));
    let s1q = s1.to_string();
    assert_eq!(
        list_ids(&app, &query(&[("source_id", &s1q)])).await,
        set(&[a, b])
    );
    assert_eq!(
        list_ids(&app, &query(&[("format", "urn:x-nmos:format:audio")])).await,
        set(&[b])
    );
    assert_eq!(
        list_ids(&app, &query(&[("label", "cam")])).await,
        set(&[a, c])
    );
    assert_eq!(
        list_ids(&app, &query(&[("label", "nobody")])).await,
        set(&[])
    );
    assert_eq!(
        list_ids(&app, &query(&[("tag.site", "studio")])).await,
        set(&[a, b])
    );
    assert_eq!(
        list_ids(&app, &query(&[("tag.site", "remote")])).await,
        set(&[b])
    );
    assert_eq!(
        list_ids(&app, &query(&[("tag.site", "studio"), ("tag.lang", "en")])).await,
        set(&[b])
    );
    let early = format!("[{}_{})", ts(0), ts(3));
    assert_eq!(
        list_ids(&app, &query(&[("timerange", &early)])).await,
        set(&[a])
    );
    let late = format!("[{}_", ts(102));
    assert_eq!(
        list_ids(&app, &query(&[("timerange", &late)])).await,
        set(&[c])
    );
    // The overlap is with [first_last+duration): a's last grain (4) lasts until ts(5).
    let edge = format!("[{}_{}]", ts(4).checked_add_nanos(1).unwrap(), ts(6));
    assert_eq!(
        list_ids(&app, &query(&[("timerange", &edge)])).await,
        set(&[a])
    );
    let after_a = format!("[{}_{})", ts(5), ts(100));
    assert_eq!(
        list_ids(&app, &query(&[("timerange", &after_a)])).await,
        set(&[])
    );
    assert_eq!(
        list_ids(
            &app,
            &query(&[("source_id", &s1q), ("format", "urn:x-nmos:format:video")])
        )
        .await,
        set(&[a])
    );
}

#[tokio::test]
async fn list_pages_with_link_and_paging_headers() {
    let app = spawn_app().await;
    let mut created = BTreeSet::new();
    for _ in 0..5 {
        created.insert(app.create_flow().await.0.to_string());
    }
    let mut seen = BTreeSet::new();
    let mut pages = 0;
    let mut next = Some(app.url("/flows?limit=2"));
    while let Some(url) = next.take() {
        pages += 1;
        assert!(pages <= 5, "paging does not end");
        let response = app.client.get(&url).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-paging-limit"], "2");
        let link = response
            .headers()
            .get(LINK)
            .map(|v| v.to_str().expect("text").to_owned());
        let key = response
            .headers()
            .get("x-paging-nextkey")
            .map(|v| v.to_str().expect("text").to_owned());
        assert_eq!(
            link.is_some(),
            key.is_some(),
            "Link and X-Paging-NextKey go together"
        );
        let page = ids(&json_body(response, StatusCode::OK).await);
        assert!(page.len() <= 2);
        for id in page {
            assert!(seen.insert(id), "a flow on two pages");
        }
        if let Some(link) = link {
            let target = link
                .strip_prefix('<')
                .and_then(|l| l.split_once(">; rel=\"next\""))
                .map(|(target, _)| target)
                .unwrap_or_else(|| panic!("not a next link: {link}"));
            assert!(target.starts_with("/flows?"), "{target}");
            assert!(target.contains("limit=2"), "{target}");
            assert!(
                target.contains(&format!("page={}", key.unwrap())),
                "{target}"
            );
            next = Some(app.url(target));
        }
    }
    assert!(pages >= 3, "5 flows in pages of 2");
    assert_eq!(seen, created);

    // Filters are kept in the next link.
    let response = app
        .list_flows("limit=1&format=urn%3Ax-nmos%3Aformat%3Avideo")
        .await;
    let link = response.headers()[LINK].to_str().expect("text").to_owned();
    assert!(
        link.contains("format=urn%3Ax-nmos%3Aformat%3Avideo"),
        "{link}"
    );
}

#[tokio::test]
async fn list_refuses_bad_parameters() {
    let app = spawn_app().await;
    app.create_flow().await;
    for q in [
        "page=not-a-key",
        "page=",
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=ten",
        "colour=red",
        "limit=1&limit=2",
        "source_id=xyz",
        "format=video",
        "timerange=",
        "timerange=%5B1%3A0__2%3A0%29",
    ] {
        let p = problem(app.list_flows(q).await, StatusCode::BAD_REQUEST).await;
        let detail = p["detail"].as_str().unwrap();
        let name = q.split('=').next().unwrap();
        assert!(detail.contains(name), "{q}: {detail}");
    }
    // The largest limit is accepted.
    let response = app.list_flows("limit=1000").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-paging-limit"], "1000");
}
