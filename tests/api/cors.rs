//! CORS as `cors.allowed_origins` configures it: the allowed origin is answered with
//! `Access-Control-Allow-Origin`, preflights with the methods and headers allowed,
//! another origin with nothing that lets a browser read the answer, and with CORS off (the
//! default) no `Access-Control-*` header at all.

use reqwest::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, HeaderMap, ORIGIN, VARY,
};
use reqwest::{Method, Response, StatusCode};
use uuid::Uuid;

use crate::helpers::{TestApp, flow_body, json_body, spawn_app, spawn_app_with};

const ALLOWED: &str = "https://allowed.example";
const OTHER: &str = "https://other.example";

async fn cors_app() -> TestApp {
    spawn_app_with(|c| c.cors.allowed_origins = vec![ALLOWED.to_owned()]).await
}

/// `GET path` with `Origin: origin`.
async fn get_from(app: &TestApp, path: &str, origin: &str) -> Response {
    app.client
        .get(app.url(path))
        .header(ORIGIN, origin)
        .send()
        .await
        .expect("GET")
}

/// A preflight for a `PUT` of JSON to `path` from `origin`.
async fn preflight(app: &TestApp, path: &str, origin: &str) -> Response {
    app.client
        .request(Method::OPTIONS, app.url(path))
        .header(ORIGIN, origin)
        .header(ACCESS_CONTROL_REQUEST_METHOD, "PUT")
        .header(ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
        .send()
        .await
        .expect("OPTIONS")
}

/// A header's values, lowercased, split at commas.
fn list(headers: &HeaderMap, name: &reqwest::header::HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The names of the `Access-Control-*` headers present.
fn access_control(headers: &HeaderMap) -> Vec<String> {
    headers
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

#[tokio::test]
async fn the_allowed_origin_may_read_the_answers() {
    let app = cors_app().await;
    let (flow, _) = app.create_flow().await;
    for path in [
        "/flows".to_owned(),
        format!("/flows/{flow}"),
        "/healthz".into(),
    ] {
        let response = get_from(&app, &path, ALLOWED).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_ORIGIN], ALLOWED, "{path}");
        // The answer depends on the origin, so caches must key on it.
        assert!(list(headers, &VARY).contains(&"origin".into()), "{path}");
        // A script may read the request id and the paging headers.
        let exposed = list(headers, &ACCESS_CONTROL_EXPOSE_HEADERS);
        for name in ["x-request-id", "link", "x-paging-nextkey"] {
            assert!(exposed.contains(&name.into()), "{path}: {exposed:?}");
        }
    }
    // An error answer too: a browser must be able to read a problem.
    let response = get_from(&app, &format!("/flows/{}", Uuid::new_v4()), ALLOWED).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], ALLOWED);
}

#[tokio::test]
async fn another_origin_gets_no_allow_origin() {
    let app = cors_app().await;
    let (flow, _) = app.create_flow().await;
    for origin in [
        OTHER,
        "https://allowed.example.evil",
        "http://allowed.example",
    ] {
        let response = get_from(&app, &format!("/flows/{flow}"), origin).await;
        // The request itself is served: CORS is enforced by the browser, not here.
        assert_eq!(response.status(), StatusCode::OK, "{origin}");
        assert!(
            !response.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN),
            "{origin}: {:?}",
            response.headers()
        );
        let response = preflight(&app, &format!("/flows/{flow}"), origin).await;
        assert!(
            !response.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN),
            "preflight from {origin}: {:?}",
            response.headers()
        );
    }
}

#[tokio::test]
async fn a_preflight_from_the_allowed_origin_is_answered_with_the_allow_headers() {
    let app = cors_app().await;
    let flow = Uuid::new_v4();
    let response = preflight(&app, &format!("/flows/{flow}"), ALLOWED).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers[ACCESS_CONTROL_ALLOW_ORIGIN], ALLOWED, "{headers:?}");
    let methods = list(headers, &ACCESS_CONTROL_ALLOW_METHODS);
    for method in ["put", "post", "get", "delete"] {
        assert!(methods.contains(&method.into()), "{methods:?}");
    }
    let allowed = list(headers, &ACCESS_CONTROL_ALLOW_HEADERS);
    for name in ["content-type", "authorization"] {
        assert!(allowed.contains(&name.into()), "{allowed:?}");
    }
    // A preflight is answered by the CORS layer without a body, and runs no handler:
    // the flow was not created.
    assert!(response.bytes().await.expect("body").is_empty());
    assert_eq!(app.get_flow(flow).await.status(), StatusCode::NOT_FOUND);

    // The PUT the preflight was for is then served, readable by the origin.
    let response = app
        .client
        .put(app.url(&format!("/flows/{flow}")))
        .header(ORIGIN, ALLOWED)
        .json(&flow_body(Uuid::new_v4(), "video"))
        .send()
        .await
        .expect("PUT");
    assert_eq!(response.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], ALLOWED);
    json_body(response, StatusCode::CREATED).await;
}

/// With CORS off, the `Access-Control-*` headers of every answer: to a plain `GET`, to
/// a `GET` from each of two origins, and to a preflight from each.
async fn answers_with_cors_off(app: &TestApp) -> Vec<(String, HeaderMap)> {
    assert!(
        app.config.cors.allowed_origins.is_empty(),
        "CORS is off by default"
    );
    let (flow, _) = app.create_flow().await;
    let path = format!("/flows/{flow}");
    let plain = app.get(&path).await;
    assert_eq!(plain.status(), StatusCode::OK);
    let mut answers = vec![("GET without Origin".to_owned(), plain.headers().clone())];
    for origin in [ALLOWED, OTHER] {
        let response = get_from(app, &path, origin).await;
        assert_eq!(response.status(), StatusCode::OK);
        answers.push((format!("GET from {origin}"), response.headers().clone()));
        let response = preflight(app, &path, origin).await;
        answers.push((
            format!("preflight from {origin}"),
            response.headers().clone(),
        ));
    }
    answers
}

/// With CORS off no origin is ever allowed to read an answer.
#[tokio::test]
async fn with_cors_off_no_origin_is_allowed() {
    let app = spawn_app().await;
    for (what, headers) in answers_with_cors_off(&app).await {
        for name in [
            ACCESS_CONTROL_ALLOW_ORIGIN,
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
        ] {
            assert!(!headers.contains_key(&name), "{what}: {headers:?}");
        }
    }
}

/// With CORS off there is no `Access-Control-*` header at all.
#[tokio::test]
async fn with_cors_off_no_access_control_header_is_sent() {
    let app = spawn_app().await;
    for (what, headers) in answers_with_cors_off(&app).await {
        assert_eq!(access_control(&headers), Vec::<String>::new(), "{what}");
    }
}
