//! The service's own endpoints: `/`, `/healthz`, `/readyz`, `/metrics`, `/openapi.yaml`.

use reqwest::StatusCode;

use crate::helpers::{content_type, json_body, metric, spawn_app};

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
