//! The HTTP service: the router, its handlers grouped by resource, and its errors.

use axum::{Router, routing::get};

/// Builds the service's router.
pub fn router() -> Router {
    Router::new().route("/healthz", get(healthz))
}

/// Liveness: the process is up and serving requests.
async fn healthz() -> &'static str {
    "ok\n"
}
