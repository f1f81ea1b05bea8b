//! `/sources` and `/sources/{id}`: sources are created by the flows that name them.

use reqwest::StatusCode;
use reqwest::header::LINK;
use uuid::Uuid;

use crate::flows::ids;
use crate::helpers::{flow_body, json_body, problem, query, spawn_app};

#[tokio::test]
async fn a_flow_put_creates_its_source() {
    let app = spawn_app().await;
    let (_, source) = app.create_flow().await;
    let got = json_body(app.get_source(source).await, StatusCode::OK).await;
    assert_eq!(got["id"], source.to_string());
    assert_eq!(got["format"], "urn:x-nmos:format:video");
    let all = json_body(app.list_sources("").await, StatusCode::OK).await;
    assert_eq!(ids(&all), [source.to_string()].into());

    // A second flow of the same source adds no source.
    let response = app
        .put_flow(Uuid::new_v4(), &flow_body(source, "video"))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let all = json_body(app.list_sources("").await, StatusCode::OK).await;
    assert_eq!(all.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn sources_list_filters_and_pages() {
    let app = spawn_app().await;
    let (video, audio, data) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for (source, format) in [(video, "video"), (audio, "audio"), (data, "data")] {
        let response = app
            .put_flow(Uuid::new_v4(), &flow_body(source, format))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let audio_only = json_body(
        app.list_sources(&query(&[("format", "urn:x-nmos:format:audio")]))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(&audio_only), [audio.to_string()].into());

    // Named by the flow that made it: found by that flow's label and tags.
    let named = Uuid::new_v4();
    let mut body = flow_body(named, "video");
    body["label"] = "camera 3".into();
    body["tags"] = serde_json::json!({"studio": "tc1"});
    let response = app.put_flow(Uuid::new_v4(), &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    for q in [
        query(&[("label", "camera 3")]),
        query(&[("tag.studio", "tc1")]),
    ] {
        let found = json_body(app.list_sources(&q).await, StatusCode::OK).await;
        assert_eq!(ids(&found), [named.to_string()].into(), "{q}");
    }

    let mut seen = std::collections::BTreeSet::new();
    let mut url = Some(app.url("/sources?limit=1"));
    let mut pages = 0;
    while let Some(next) = url.take() {
        pages += 1;
        assert!(pages <= 5, "paging does not end");
        let response = app.client.get(&next).send().await.expect("GET");
        assert_eq!(response.headers()["x-paging-limit"], "1");
        let link = response
            .headers()
            .get(LINK)
            .map(|v| v.to_str().unwrap().to_owned());
        let page = json_body(response, StatusCode::OK).await;
        seen.extend(ids(&page));
        if let Some(link) = link {
            let target = link.trim_start_matches('<').split('>').next().unwrap();
            assert!(target.starts_with("/sources?"), "{link}");
            url = Some(app.url(target));
        }
    }
    assert_eq!(
        seen,
        [video, audio, data, named]
            .iter()
            .map(Uuid::to_string)
            .collect()
    );
}

#[tokio::test]
async fn sources_refuse_bad_requests() {
    let app = spawn_app().await;
    problem(app.get_source(Uuid::new_v4()).await, StatusCode::NOT_FOUND).await;
    problem(app.get_source("source-1").await, StatusCode::BAD_REQUEST).await;
    for q in ["limit=0", "page=zzz", "source_id=1", "format=urn%3Ax"] {
        problem(app.list_sources(q).await, StatusCode::BAD_REQUEST).await;
    }
}
