//! Every refusal is an RFC 9457 problem document, including the router's own.

use reqwest::{Method, StatusCode};
use uuid::Uuid;

use crate::helpers::{problem, spawn_app};

#[tokio::test]
async fn an_unknown_route_is_a_404_problem() {
    let app = spawn_app().await;
    for path in ["/nothing", "/flows/a/b/c/d", "/flows/", "/sources/x/y"] {
        let p = problem(app.get(path).await, StatusCode::NOT_FOUND).await;
        assert!(p["detail"].as_str().unwrap().contains(path), "{path}: {p}");
    }
}

#[tokio::test]
async fn a_wrong_method_is_a_405_problem() {
    let app = spawn_app().await;
    let flow = Uuid::new_v4();
    for (method, path) in [
        (Method::POST, "/".to_owned()),
        (Method::DELETE, "/flows".to_owned()),
        (Method::PATCH, format!("/flows/{flow}")),
        (Method::POST, format!("/flows/{flow}")),
        (Method::PUT, format!("/flows/{flow}/grains")),
        (Method::POST, format!("/flows/{flow}/grains/1:0")),
        (Method::PUT, "/sources".to_owned()),
        (Method::DELETE, "/metrics".to_owned()),
    ] {
        let response = app
            .client
            .request(method.clone(), app.url(&path))
            .send()
            .await
            .expect("request");
        let p = problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
        assert!(
            p["detail"].as_str().unwrap().contains(method.as_str()),
            "{method} {path}: {p}"
        );
    }
}

#[tokio::test]
async fn responses_carry_a_request_id() {
    let app = spawn_app().await;
    let response = app.get("/nothing").await;
    assert!(response.headers().contains_key("x-request-id"));
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    // One that could read as more than an id in the log is replaced by a fresh UUID.
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "x} principal=admin")
        .send()
        .await
        .expect("GET");
    let id = response.headers()["x-request-id"].to_str().expect("text");
    assert!(Uuid::try_parse(id).is_ok(), "{id}");
}
