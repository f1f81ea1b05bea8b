//! `DELETE /flows/{id}/grains?timerange=`: deleting the grains of a range.

use reqwest::StatusCode;
use uuid::Uuid;

use crate::helpers::{gsf, json_body, problem, query, spawn_app, ts};

#[tokio::test]
async fn delete_range_removes_the_grains_inside_it() {
    let app = spawn_app().await;
    let (flow, source, sent) = app.flow_with_grains(10, 10).await;
    let range = format!("[{}_{})", ts(2), ts(5));
    let body = json_body(
        app.delete_range(flow, &query(&[("timerange", &range)]))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["deleted"], 3);
    assert_eq!(body["timerange"], range);
    let left = app.read_gsf(flow, "").await;
    let expected: Vec<_> = sent
        .iter()
        .filter(|g| !(2..5).any(|i| g.origin_timestamp() == ts(i)))
        .cloned()
        .collect();
    assert_eq!(left, expected);

    // Nothing there: 200 with 0.
    let body = json_body(
        app.delete_range(flow, &query(&[("timerange", &range)]))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["deleted"], 0);

    // Deleted timestamps can be written again, even with other grains.
    let again = crate::helpers::grains(flow, source, 2..5, 99);
    let response = app.post_grains_gsf(flow, gsf(&again)).await;
    assert_eq!(response.status(), StatusCode::CREATED);

    // `_` deletes every grain; the flow stays, with an empty timerange.
    let body = json_body(app.delete_range(flow, "timerange=_").await, StatusCode::OK).await;
    assert_eq!(body["deleted"], 10);
    assert!(app.read_gsf(flow, "").await.is_empty());
    let info = json_body(app.get_flow(flow).await, StatusCode::OK).await;
    assert_eq!(info["timerange"], "()");
}

#[tokio::test]
async fn delete_range_needs_a_valid_timerange() {
    let app = spawn_app().await;
    let (flow, _, _) = app.flow_with_grains(3, 10).await;
    let p = problem(app.delete_range(flow, "").await, StatusCode::BAD_REQUEST).await;
    assert!(p["detail"].as_str().unwrap().contains("timerange"), "{p}");
    problem(
        app.delete_range(flow, "timerange=").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        app.delete_range(flow, &query(&[("timerange", "[1:0__2:0)")]))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        app.delete_range(flow, "timerange=_&count=1").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        app.delete_range(Uuid::new_v4(), "timerange=_").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(app.read_gsf(flow, "").await.len(), 3);
}
