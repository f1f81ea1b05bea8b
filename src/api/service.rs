//! The service's own endpoints: information, health, readiness, metrics, the API spec,
//! and the answers for unknown routes and wrong methods.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::metrics::Gauges;
use super::{ApiError, ApiResult, AppState};

/// The version of the HTTP API this server implements (the `info.version` of openapi.yaml).
pub const API_VERSION: &str = "1.0";

/// The API spec, served as written in the repository.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

/// `GET /`: name, version, API version, storage backend.
pub async fn info(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "name": "grainstore",
        "version": env!("CARGO_PKG_VERSION"),
        "api_version": API_VERSION,
        "storage_backend": state.store.backend_name(),
    }))
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: the store answers.
pub async fn readyz(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    state.store.ping().await.map_err(ApiError::from)?;
    Ok(Json(
        json!({"status": "ready", "storage_backend": state.store.backend_name()}),
    ))
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let sessions = state.store.sessions();
    let body = state.metrics.render(
        &Gauges {
            sessions_active: sessions.active(),
            sessions_max: sessions.capacity(),
            live_streams: state.streams.open(),
            live_fanouts: state.fanouts.count(),
        },
        &state.store.store_metrics(),
    );
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// `GET /openapi.yaml`: the spec this server implements.
pub async fn openapi() -> Response {
    let mut response = OPENAPI_YAML.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/yaml"),
    );
    response
}

/// Any route the service does not have.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no resource at {}; see /openapi.yaml for the API",
        uri.path()
    ))
}

/// A known route with a method it does not take.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "urn:grainstore:problem:method-not-allowed",
        "Method not allowed",
        format!(
            "{} does not take {method}; see /openapi.yaml for the API",
            uri.path()
        ),
    )
}
