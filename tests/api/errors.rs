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

/// A path parameter whose percent-encoding is not UTF-8 is refused as a problem by every
/// route and method that takes one, as axum's own plain-text rejection would not be.
#[tokio::test]
async fn an_undecodable_path_parameter_is_a_400_problem() {
    let app = spawn_app().await;
    let flow = Uuid::new_v4();
    let cases = [
        (Method::GET, "/sources/%FF".to_owned()),
        (Method::GET, "/flows/%FF".to_owned()),
        (Method::PUT, "/flows/%FF".to_owned()),
        (Method::DELETE, "/flows/%FF".to_owned()),
        (Method::GET, "/flows/%FF/grains".to_owned()),
        (Method::POST, "/flows/%FF/grains".to_owned()),
        (Method::DELETE, "/flows/%FF/grains".to_owned()),
        (Method::GET, "/flows/%FF/grains/1:0".to_owned()),
        (Method::PUT, "/flows/%FF/grains/1:0".to_owned()),
        (Method::DELETE, "/flows/%FF/grains/1:0".to_owned()),
        (Method::GET, format!("/flows/{flow}/grains/%FF")),
        (Method::PUT, format!("/flows/{flow}/grains/%FF")),
        (Method::DELETE, format!("/flows/{flow}/grains/%FF")),
    ];
    for (method, path) in cases {
        let response = app
            .client
            .request(method.clone(), app.url(&path))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("request");
        let p = problem(response, StatusCode::BAD_REQUEST).await;
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.contains("path"), "{method} {path}: {p}");
    }
    // HEAD alike, without the body.
    let response = app
        .client
        .head(app.url("/flows/%FF"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
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
